"""Dataset distillation in feature space by matching training trajectories (Cazenavette et al., CVPR
2022, "Dataset Distillation by Matching Training Trajectories"), measured against honest baselines.

What goes in: the frozen features of a train split and a label per row (the dataset's true labels,
or pseudo labels from the clustering stage, aligned to the store's rows by ``index``). What comes out:
``per_class`` synthetic feature vectors per class and a learned learning rate.

1. **Experts.** ``experts`` copies of a small classifier (linear, or an MLP with one hidden layer)
   are trained on the real features with plain minibatch SGD (``expert_lr``, ``batch_size``) for
   ``expert_epochs`` epochs, each from its own seeded initialisation; their parameters are recorded
   after every epoch (the *trajectories*).
2. **Matching.** The synthetic vectors start as random real vectors of their class (seeded) and the
   synthetic learning rate as ``expert_lr``. Each iteration draws an expert and a start epoch ``t <=
   max_start_epoch``, takes ``syn_steps`` gradient steps on random minibatches of ``syn_batch``
   synthetic vectors from the expert's parameters at ``t``, and measures how far they land from the
   expert's parameters at ``t + expert_epochs_to_match``, relative to how far the expert itself moved:
   ``||theta_N - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2``. That loss is differentiated through
   the unrolled steps and the synthetic vectors and learning rate follow SGD with momentum 0.5 (the
   paper's optimiser; ``lr_features``, ``lr_lr``). A classifier's parameters are handled as one flat
   vector (:class:`FlatClassifier`), so the unrolled steps stay differentiable.
3. **Evaluation.** The same classifier is trained from scratch with the same plain SGD on (a) the
   distilled set (at its learned rate), (b) a random real subset of ``per_class`` vectors per class,
   (c) the class centroids (:func:`embedlens.geometry.class_centroids`, one per class), each for
   ``eval_epochs`` epochs (the baselines at ``eval_lr``), and (d) the full train split for
   ``full_epochs`` at ``full_lr``, over ``eval_seeds`` seeds; each set's test accuracy (true labels of the test
   split) is reported as mean and standard deviation. The distilled set is worth having only when (a)
   beats (b) beyond the seeds' spread: ``mean_a - std_a > mean_b + std_b``. One distillation is
   evaluated: the seeds vary the classifiers trained on it, not the distillation.

The experts' trajectories and the matching state are checkpointed (:mod:`embedlens.checkpoint`); the
experts' checkpoint depends on the data and the expert settings only, so a run with another
``per_class`` or other matching settings reuses it.

All classifiers see the features standardised with the mean and standard deviation of the real train
split (part of the classifier, the same for every set); the synthetic vectors are stored back in the
store's feature space, so they can be compared with real images' features directly.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
from torch import nn

from embedlens.atomic import atomic_path
from embedlens.checkpoint import fingerprint, load_checkpoint, save_checkpoint
from embedlens.datasets import ImageDataset
from embedlens.classify.training import build_mlp
from embedlens.geometry import class_centroids
from embedlens.knn import cosine_topk
from embedlens.pseudo_labels import PSEUDO, read_pseudo_labels
from embedlens.roles import stratified_holdout
from embedlens.store import FeatureStore
from embedlens.summary import Artifact, StageSummary

CLASSIFIERS = ("linear", "mlp")
SETS = (("distilled", "(a) distilled"), ("random", "(b) random real subset"), ("centroids", "(c) class centroids"),
        ("full", "(d) full train split"))
EVALUATION_COLUMNS = ["set", "seed", "vectors", "learning_rate", "epochs", "accuracy"]
HISTORY_COLUMNS = ["iteration", "matching_loss", "learning_rate"]
# The settings that change what the distillation computes; a checkpoint made with other values is not resumed.
EXPERT_KEYS = ("classifier", "hidden", "seed", "experts", "expert_epochs", "expert_lr", "batch_size")
DISTILL_KEYS = (*EXPERT_KEYS, "per_class", "syn_batch", "syn_steps", "expert_epochs_to_match", "max_start_epoch",
                "iterations", "lr_features", "lr_lr")
DISTILLED_FORMAT = 1


class DistillInputError(ValueError):
    """The data or settings cannot support a distillation; the message names the file or key and what would work."""


@dataclass(frozen=True)
class DistillSettings:
    """Every key of the schema's ``distill`` section but ``enabled`` (which only the workflow reads); see
    ``embedlens/config.schema.yaml`` for each one."""

    labels: bool | str
    cluster_method: str
    train_split: str
    test_split: str
    holdout_fraction: float
    per_class: int
    classifier: str
    hidden: int
    seed: int
    device: str
    experts: int
    expert_epochs: int
    expert_lr: float
    batch_size: int
    syn_batch: int
    syn_steps: int
    expert_epochs_to_match: int
    max_start_epoch: int
    iterations: int
    lr_features: float
    lr_lr: float
    eval_seeds: int
    eval_epochs: int
    eval_lr: float
    full_epochs: int
    full_lr: float
    checkpoint_seconds: float
    neighbours: int
    grid_rows: int

    def __post_init__(self):
        if self.labels is not True and self.labels != PSEUDO:
            raise ValueError(f"distill.labels is {self.labels!r}; allowed values: true (the dataset's labels), "
                             f"{PSEUDO} (the clustering stage's pseudo labels)")
        if self.classifier not in CLASSIFIERS:
            raise ValueError(f"distill.classifier is {self.classifier!r}; allowed values: {', '.join(CLASSIFIERS)}")
        if self.max_start_epoch + self.expert_epochs_to_match > self.expert_epochs:
            raise ValueError(
                f"distill.max_start_epoch ({self.max_start_epoch}) + distill.expert_epochs_to_match "
                f"({self.expert_epochs_to_match}) exceeds distill.expert_epochs ({self.expert_epochs}): the target "
                f"checkpoint would lie past the experts' last epoch; lower max_start_epoch to at most "
                f"{self.expert_epochs - self.expert_epochs_to_match}")

    @classmethod
    def from_config(cls, section: Mapping) -> DistillSettings:
        """Build from a validated config's ``distill`` section (every key present: validation fills in
        the schema's defaults; :func:`embedlens.config.section_defaults` gives them outside the
        workflow; ``enabled`` may be there or not). The error names unknown and missing keys."""
        values = {key: value for key, value in section.items() if key != "enabled"}
        known = {field.name for field in fields(cls)}
        unknown, missing = sorted(set(values) - known), sorted(known - set(values))
        if unknown or missing:
            raise ValueError(f"distill: unknown key(s) {unknown}, missing key(s) {missing}; validate the config "
                             f"against embedlens/config.schema.yaml (it fills in the defaults)")
        return cls(**values)

    def as_dict(self) -> dict:
        return asdict(self)

    def key(self, names: Sequence[str]) -> dict:
        """The values of the settings ``names`` (:data:`EXPERT_KEYS`: what decides the experts,
        :data:`DISTILL_KEYS`: what decides the distilled set)."""
        values = self.as_dict()
        return {name: values[name] for name in names}


# --------------------------------------------------------------------------------------------------
# labels and features


def label_source(settings: DistillSettings, pseudo_labels: str | Path | None = None) -> str:
    """How the labels the distillation learned from are described in its outputs."""
    if settings.labels == PSEUDO:
        return f"pseudo labels of clustering method {settings.cluster_method} ({pseudo_labels})"
    return "true labels"


@dataclass
class LabelledFeatures:
    """Rows of one split: features (N, D) float32 in the store's space, labels (N,), index_in_split (N,)."""

    features: np.ndarray
    labels: np.ndarray
    index: np.ndarray


def read_rows(store: FeatureStore, settings: DistillSettings, pseudo_labels: str | Path | None = None
              ) -> tuple[LabelledFeatures, LabelledFeatures]:
    """The train rows (with the label source's labels; rows without a class are left out) and the test
    rows with a true label. When the test split is the train split (a dataset without an evaluation
    split), the test rows are a seeded, stratified hold-out of ``settings.holdout_fraction`` of it by
    true label, which the train rows leave out. The errors name the split, the file or the setting
    that would work."""
    for key in ("train_split", "test_split"):
        split = getattr(settings, key)
        if split not in store.splits:
            raise DistillInputError(f"distill.{key}: {store.path} has no split {split!r}; it has "
                                    f"{', '.join(store.splits)}")
    train = store.read_split(settings.train_split)
    labels = train.labels
    if settings.labels == PSEUDO:
        if pseudo_labels is None:
            raise DistillInputError("distill.labels is pseudo but no pseudo_labels.json was given")
        labels = read_pseudo_labels(pseudo_labels, settings.train_split, train.index, len(store.class_names))
    keep = labels >= 0
    test = store.read_split(settings.test_split)
    tested = test.labels >= 0
    if settings.test_split == settings.train_split:
        held, _ = stratified_holdout(train.labels, settings.holdout_fraction, settings.seed)
        keep, tested = keep & ~held, held
    if keep.sum() == 0:
        raise DistillInputError(f"{store.path}: split {settings.train_split!r} has no labelled rows; distillation "
                                f"learns vectors per class (use distill.labels: {PSEUDO} with the clustering stage)")
    if tested.sum() == 0:
        raise DistillInputError(f"{store.path}: split {settings.test_split!r} has no labelled rows to test on; "
                                "set distill.test_split to a labelled split")
    return (LabelledFeatures(train.features[keep], labels[keep], train.index[keep]),
            LabelledFeatures(test.features[tested], test.labels[tested], test.index[tested]))


@dataclass(frozen=True)
class Standardizer:
    """Per-dimension mean and standard deviation of the real train features (a zero deviation counts as 1)."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, features: np.ndarray) -> Standardizer:
        features = np.asarray(features, dtype=np.float64)
        std = features.std(axis=0)
        return cls(features.mean(axis=0).astype(np.float32), np.where(std > 0, std, 1.0).astype(np.float32))

    def forward(self, features: np.ndarray) -> np.ndarray:
        return ((np.asarray(features, dtype=np.float32) - self.mean) / self.std).astype(np.float32)

    def inverse(self, standardized: np.ndarray) -> np.ndarray:
        return (np.asarray(standardized, dtype=np.float32) * self.std + self.mean).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# the classifier, as a module and as a function of one flat parameter vector


def build_classifier(dim: int, num_classes: int, settings: DistillSettings) -> nn.Sequential:
    """The small classifier: a linear layer, or ``Linear -> ReLU -> Linear`` with ``hidden`` units
    (:func:`embedlens.classify.training.build_mlp` without dropout, which would make trajectories random)."""
    return build_mlp(dim, [settings.hidden] if settings.classifier == "mlp" else [], num_classes, 0.0)


class FlatClassifier:
    """A classifier evaluated as a function of one flat parameter vector, so that training steps on
    it stay differentiable (the unrolled steps of trajectory matching)."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.names = [name for name, _ in module.named_parameters()]
        self.shapes = [parameter.shape for _, parameter in module.named_parameters()]
        self.sizes = [parameter.numel() for _, parameter in module.named_parameters()]

    def flat(self) -> torch.Tensor:
        """The module's current parameters as one vector (a detached copy)."""
        return torch.cat([parameter.detach().reshape(-1) for parameter in self.module.parameters()]).clone()

    def __call__(self, flat: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        parts = torch.split(flat, self.sizes)
        parameters = {name: part.view(shape) for name, part, shape in zip(self.names, parts, self.shapes)}
        return torch.func.functional_call(self.module, parameters, (features,))


def sgd_train(features: torch.Tensor, labels: torch.Tensor, num_classes: int, settings: DistillSettings, *,
              lr: float, epochs: int, seed: int, record: bool = False) -> tuple[nn.Module, list[torch.Tensor]]:
    """The classifier trained from scratch (initialisation and shuffling seeded by ``seed``) with plain
    minibatch SGD (``settings.batch_size``, no momentum or weight decay) on standardised ``features``.
    With ``record``, the flat parameters after each epoch (epoch 0 = the initialisation) are returned too."""
    torch.manual_seed(seed)
    model = build_classifier(features.shape[1], num_classes, settings).to(features.device)
    flat = FlatClassifier(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    shuffle = torch.Generator().manual_seed(seed)
    trajectory = [flat.flat()] if record else []
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=shuffle).to(features.device)
        for start in range(0, len(order), settings.batch_size):
            batch = order[start:start + settings.batch_size]
            loss = nn.functional.cross_entropy(model(features[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if record:
            trajectory.append(flat.flat())
    return model, trajectory


def accuracy(model: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of rows whose highest logit is their label."""
    model.eval()
    with torch.no_grad():
        return float((model(features).argmax(dim=1) == labels).float().mean())


# --------------------------------------------------------------------------------------------------
# distillation


def initial_positions(labels: np.ndarray, classes: np.ndarray, per_class: int, rng: np.random.Generator
                      ) -> np.ndarray:
    """``per_class`` random rows of each class of ``classes`` (class by class, seeded by ``rng``):
    without replacement, or with it for a class that has fewer rows."""
    chosen = []
    for label in classes.tolist():
        rows = np.flatnonzero(labels == label)
        chosen.append(rng.choice(rows, per_class, replace=len(rows) < per_class))
    return np.concatenate(chosen)


@dataclass
class Distilled:
    """A distilled set: ``features`` (K, D) in the store's feature space, their ``labels`` (K,), the
    learned learning rate, the standardisation the classifier applies, the matching loss per iteration
    and the seconds it took (experts and matching)."""

    features: np.ndarray
    labels: np.ndarray
    learned_lr: float
    standardizer: Standardizer
    history: pd.DataFrame
    seconds: float
    resumed_at_iteration: int = 0

    def save(self, path: str | Path, *, class_names: Sequence[str], info: Mapping) -> None:
        """Write as plain HDF5, atomically: ``features`` (K, D) float32, ``labels`` (K,) int64, ``mean``
        and ``std`` (D,) of the standardisation; attrs ``learned_lr``, ``seconds``, ``format`` and, as
        JSON, ``class_names`` and every entry of ``info`` (the settings, the label source, ...)."""
        with atomic_path(path) as tmp, h5py.File(tmp, "w") as handle:
            handle.create_dataset("features", data=self.features.astype(np.float32))
            handle.create_dataset("labels", data=self.labels.astype(np.int64))
            handle.create_dataset("mean", data=self.standardizer.mean)
            handle.create_dataset("std", data=self.standardizer.std)
            handle.create_dataset("history/matching_loss", data=self.history["matching_loss"].to_numpy(np.float64))
            handle.create_dataset("history/learning_rate", data=self.history["learning_rate"].to_numpy(np.float64))
            handle.attrs["format"] = DISTILLED_FORMAT
            handle.attrs["learned_lr"] = float(self.learned_lr)
            handle.attrs["seconds"] = float(self.seconds)
            handle.attrs["class_names"] = json.dumps(list(class_names))
            for key, value in info.items():
                handle.attrs[key] = json.dumps(value)

    @classmethod
    def load(cls, path: str | Path) -> tuple[Distilled, dict]:
        """A saved set and its attributes (JSON ones decoded)."""
        with h5py.File(path, "r") as handle:
            attrs = {key: handle.attrs[key] for key in handle.attrs}
            losses = handle["history/matching_loss"][:]
            history = pd.DataFrame({"iteration": np.arange(1, len(losses) + 1), "matching_loss": losses,
                                    "learning_rate": handle["history/learning_rate"][:]}, columns=HISTORY_COLUMNS)
            distilled = cls(handle["features"][:], handle["labels"][:], float(attrs["learned_lr"]),
                            Standardizer(handle["mean"][:], handle["std"][:]), history, float(attrs["seconds"]))
        decoded = {key: json.loads(value) if isinstance(value, str) else value.item() if hasattr(value, "item")
                   else value for key, value in attrs.items()}
        return distilled, decoded


class Diverged(DistillInputError):
    """The matching diverged (a non-finite loss, or the learned learning rate fell to zero or below)."""


# Each retry of a diverged distillation lowers both matching rates this many times; the rates that work
# scale with the data (a few dozen images diverged at the CIFAR-100 defaults, and at a tenth of them).
BACKOFF_FACTOR = 10.0
BACKOFF_TRIES = 4


def distill_backing_off(features: np.ndarray, labels: np.ndarray, num_classes: int, settings: DistillSettings,
                        device: torch.device, *, checkpoint_dir: str | Path | None = None,
                        progress: Callable[[dict], None] | None = None) -> tuple[Distilled, DistillSettings, list[str]]:
    """:func:`distill`, again with ``lr_features`` and ``lr_lr`` :data:`BACKOFF_FACTOR` times lower each
    time it diverges, :data:`BACKOFF_TRIES` tries in all. Returns the set, the settings that worked and a
    note per back-off; raises :class:`Diverged` when every try diverged."""
    notes = []
    for _ in range(BACKOFF_TRIES):
        try:
            return distill(features, labels, num_classes, settings, device, checkpoint_dir=checkpoint_dir,
                           progress=progress), settings, notes
        except Diverged as error:
            lower = replace(settings, lr_features=settings.lr_features / BACKOFF_FACTOR,
                            lr_lr=settings.lr_lr / BACKOFF_FACTOR)
            notes.append(f"{str(error).split(';')[0].capitalize()} at distill.lr_features "
                         f"{settings.lr_features:g} and lr_lr {settings.lr_lr:g}; retried with {lower.lr_features:g} "
                         f"and {lower.lr_lr:g}.")
            settings = lower
    raise Diverged(" ".join(notes) + " Every try diverged; set distill.lr_features and lr_lr lower still")


def train_experts(features: torch.Tensor, labels: torch.Tensor, num_classes: int, settings: DistillSettings
                  ) -> torch.Tensor:
    """The experts' trajectories: (experts, expert_epochs + 1, parameters), expert ``e`` seeded by
    ``seed + e``, trained on the standardised real ``features`` (:func:`sgd_train`)."""
    return torch.stack([torch.stack(sgd_train(features, labels, num_classes, settings, lr=settings.expert_lr,
                                              epochs=settings.expert_epochs, seed=settings.seed + expert,
                                              record=True)[1])
                        for expert in range(settings.experts)])


def distill(features: np.ndarray, labels: np.ndarray, num_classes: int, settings: DistillSettings,
            device: torch.device, *, checkpoint_dir: str | Path | None = None,
            progress: Callable[[dict], None] | None = None) -> Distilled:
    """Distil ``features`` (N, D, the store's space) with ``labels`` (N,) into ``per_class`` vectors of
    every class present (see the module docstring). ``checkpoint_dir``: where the experts'
    trajectories (``experts.pt``, once) and the matching state (``matching.pt``, every
    ``checkpoint_seconds``) are saved and resumed from, so a killed run ends as an uninterrupted one
    (on the CPU). ``progress`` gets each iteration's history row (plus ``phase``), and one row when the
    experts are done."""
    started = time.monotonic()
    labels = np.asarray(labels, dtype=np.int64)
    standardizer = Standardizer.fit(features)
    x_real = torch.as_tensor(standardizer.forward(features), device=device)
    y_real = torch.as_tensor(labels, device=device)
    classes = np.unique(labels)
    rng = np.random.default_rng(settings.seed)
    start_rows = initial_positions(labels, classes, settings.per_class, rng)
    experts_key = fingerprint([settings.key(EXPERT_KEYS), num_classes], features, labels)
    key = fingerprint([settings.key(DISTILL_KEYS), num_classes], features, labels)
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None

    experts_file = checkpoint_dir / "experts.pt" if checkpoint_dir is not None else None
    saved = load_checkpoint(experts_file, experts_key, device)
    if saved is not None:
        trajectories, expert_seconds = saved["trajectories"].to(device), saved["seconds"]
    else:
        trajectories = train_experts(x_real, y_real, num_classes, settings)
        expert_seconds = time.monotonic() - started
        if experts_file is not None:
            save_checkpoint(experts_file, experts_key, device, trajectories=trajectories.cpu(), seconds=expert_seconds)
    if progress is not None:
        progress({"phase": "experts", "experts": settings.experts, "seconds": expert_seconds})

    torch.manual_seed(settings.seed)
    synthetic = x_real[torch.as_tensor(start_rows, device=device)].clone().requires_grad_(True)
    synthetic_labels = torch.as_tensor(labels[start_rows], device=device)
    lr = torch.tensor(settings.expert_lr, device=device, requires_grad=True)
    optimize_features = torch.optim.SGD([synthetic], lr=settings.lr_features, momentum=0.5)
    optimize_lr = torch.optim.SGD([lr], lr=settings.lr_lr, momentum=0.5)
    draws = torch.Generator().manual_seed(settings.seed)
    state = {"iteration": 0, "history": [], "seconds": expert_seconds}
    matching_file = checkpoint_dir / "matching.pt" if checkpoint_dir is not None else None
    saved = load_checkpoint(matching_file, key, device)
    if saved is not None:
        with torch.no_grad():
            synthetic.copy_(saved["synthetic"].to(device))
            lr.copy_(saved["lr"].to(device))
        optimize_features.load_state_dict(saved["optimize_features"])
        optimize_lr.load_state_dict(saved["optimize_lr"])
        draws.set_state(saved["draws"])
        state = saved["state"]
    resumed_at = state["iteration"]
    flat = FlatClassifier(build_classifier(x_real.shape[1], num_classes, settings).to(device))
    last_checkpoint, resumed_clock = time.monotonic(), time.monotonic() - state["seconds"]
    while state["iteration"] < settings.iterations:
        expert = int(torch.randint(settings.experts, (1,), generator=draws))
        epoch = int(torch.randint(settings.max_start_epoch + 1, (1,), generator=draws))
        start = trajectories[expert, epoch]
        target = trajectories[expert, epoch + settings.expert_epochs_to_match]
        parameters = start.clone().requires_grad_(True)
        for _ in range(settings.syn_steps):
            batch = torch.randperm(len(synthetic_labels), generator=draws)[:settings.syn_batch].to(device)
            loss = nn.functional.cross_entropy(flat(parameters, synthetic[batch]), synthetic_labels[batch])
            gradient, = torch.autograd.grad(loss, parameters, create_graph=True)
            parameters = parameters - lr * gradient
        matching = ((parameters - target) ** 2).sum() / ((start - target) ** 2).sum()
        optimize_features.zero_grad(set_to_none=True)
        optimize_lr.zero_grad(set_to_none=True)
        matching.backward()
        optimize_features.step()
        optimize_lr.step()
        state["iteration"] += 1
        row = {"iteration": state["iteration"], "matching_loss": float(matching.detach()), "learning_rate": float(lr.detach())}
        state["history"].append(row)
        state["seconds"] = time.monotonic() - resumed_clock
        if not np.isfinite(row["matching_loss"]) or row["learning_rate"] <= 0:
            raise Diverged(
                f"the distillation diverged at iteration {state['iteration']} (matching loss {row['matching_loss']:.4g}, "
                f"learning rate {row['learning_rate']:.4g}); lower distill.lr_features or distill.lr_lr")
        if matching_file is not None and (state["iteration"] == settings.iterations or
                                          time.monotonic() - last_checkpoint >= settings.checkpoint_seconds):
            save_checkpoint(matching_file, key, device, synthetic=synthetic.detach().cpu(), lr=lr.detach().cpu(),
                            optimize_features=optimize_features.state_dict(), optimize_lr=optimize_lr.state_dict(),
                            draws=draws.get_state(), state=state)
            last_checkpoint = time.monotonic()
        if progress is not None:
            progress({"phase": "matching", **row})
    return Distilled(standardizer.inverse(synthetic.detach().cpu().numpy()), labels[start_rows], float(lr.detach()),
                     standardizer, pd.DataFrame(state["history"], columns=HISTORY_COLUMNS), state["seconds"],
                     resumed_at)


# --------------------------------------------------------------------------------------------------
# evaluation: the distilled set against a random real subset, the centroids and the full train split


def evaluate(distilled: Distilled, train: LabelledFeatures, test: LabelledFeatures, num_classes: int,
             settings: DistillSettings, device: torch.device, *, sets: Sequence[str] = tuple(dict(SETS)),
             progress: Callable[[dict], None] | None = None) -> pd.DataFrame:
    """Test accuracy of the classifier trained from scratch on each of ``sets`` (default: all of
    :data:`SETS`), one row per set and seed (:data:`EVALUATION_COLUMNS`; ``eval_seeds`` seeds, ``seed +
    s``). The seed draws the initialisation and the shuffling, and for the random subset also which
    ``per_class`` real vectors of each class it holds. ``progress`` gets each row."""
    standardizer = distilled.standardizer
    x_test = torch.as_tensor(standardizer.forward(test.features), device=device)
    y_test = torch.as_tensor(test.labels, device=device)
    centroids = class_centroids(train.features, train.labels)
    classes = np.unique(train.labels)
    rows = []
    for offset in range(settings.eval_seeds):
        seed = settings.seed + offset
        subset = initial_positions(train.labels, classes, settings.per_class,
                                   np.random.default_rng([settings.seed, offset]))
        data = {"distilled": (distilled.features, distilled.labels, distilled.learned_lr, settings.eval_epochs),
                "random": (train.features[subset], train.labels[subset], settings.eval_lr, settings.eval_epochs),
                "centroids": (centroids.vectors, centroids.labels, settings.eval_lr, settings.eval_epochs),
                "full": (train.features, train.labels, settings.full_lr, settings.full_epochs)}
        for name in sets:
            features, labels, lr, epochs = data[name]
            model, _ = sgd_train(torch.as_tensor(standardizer.forward(features), device=device),
                                 torch.as_tensor(labels, dtype=torch.int64, device=device), num_classes, settings,
                                 lr=lr, epochs=epochs, seed=seed)
            row = {"set": name, "seed": seed, "vectors": len(labels), "learning_rate": lr, "epochs": epochs,
                   "accuracy": accuracy(model, x_test, y_test)}
            rows.append(row)
            if progress is not None:
                progress(row)
    return pd.DataFrame(rows, columns=EVALUATION_COLUMNS)


def summarize_evaluation(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Per set (in :data:`SETS` order): ``set, description, vectors, learning_rate, epochs,
    accuracy_mean, accuracy_std`` (ddof 1; 0 for one seed) and ``seeds``."""
    grouped = per_seed.groupby("set", sort=False)
    table = pd.DataFrame({"vectors": grouped["vectors"].first(), "learning_rate": grouped["learning_rate"].first(),
                          "epochs": grouped["epochs"].first(), "accuracy_mean": grouped["accuracy"].mean(),
                          "accuracy_std": grouped["accuracy"].std().fillna(0.0), "seeds": grouped["seed"].nunique()})
    descriptions = dict(SETS)
    table = table.reindex([name for name, _ in SETS if name in table.index])
    table.insert(0, "description", [descriptions[name] for name in table.index])
    return table.rename_axis("set").reset_index()


def beats_random(table: pd.DataFrame) -> bool:
    """Whether the distilled set beats the random real subset beyond the seeds' spread: its mean less
    its std lies above the subset's mean plus its std."""
    by_set = table.set_index("set")
    distilled, random = by_set.loc["distilled"], by_set.loc["random"]
    return bool(distilled["accuracy_mean"] - distilled["accuracy_std"] > random["accuracy_mean"] + random["accuracy_std"])


def distill_document(distilled: Distilled, table: pd.DataFrame, settings: DistillSettings, *, train_images: int,
                     classes: int, label_source: str, evaluation_seconds: float) -> dict:
    """What ``distill.json`` records: the settings, the label source, each set's test accuracy (mean,
    std, seeds), the compression ratio (real train vectors per distilled vector), the share of the full
    split's accuracy the distilled set keeps, whether it beats the random subset, and the run times."""
    by_set = table.set_index("set")
    full = by_set.loc["full", "accuracy_mean"]
    return {"label_source": label_source, "classes": classes, "per_class": settings.per_class,
            "vectors": int(len(distilled.labels)), "train_images": int(train_images),
            "compression_ratio": round(train_images / len(distilled.labels), 2),
            "learned_lr": distilled.learned_lr,
            "accuracy": {name: {"description": row["description"], "mean": row["accuracy_mean"],
                                "std": row["accuracy_std"], "seeds": int(row["seeds"]), "vectors": int(row["vectors"]),
                                "learning_rate": row["learning_rate"], "epochs": int(row["epochs"])}
                         for name, row in by_set.iterrows()},
            "accuracy_kept": round(float(by_set.loc["distilled", "accuracy_mean"] / full), 4) if full > 0 else None,
            "beats_random": beats_random(table),
            "seconds": {"distillation": round(distilled.seconds, 1), "evaluation": round(evaluation_seconds, 1)},
            "settings": settings.as_dict()}


# --------------------------------------------------------------------------------------------------
# what each synthetic vector looks like: its nearest real images

NEIGHBOUR_COLUMNS = ["vector", "vector_label", "vector_class", "rank", "similarity", "split", "index_in_split",
                     "source", "label", "class_name", "same_class"]


def nearest_real(distilled: Distilled, real_features: np.ndarray, rows: pd.DataFrame, class_names: Sequence[str],
                 k: int, device: str | torch.device = "auto") -> pd.DataFrame:
    """The ``k`` real images most cosine-similar to each synthetic vector (:func:`embedlens.knn.cosine_topk`
    in the store's feature space), one row per vector and rank (:data:`NEIGHBOUR_COLUMNS`). ``rows``:
    the manifest rows of ``real_features`` (split, index_in_split, source, label, class_name), in the
    same order. ``same_class``: the real image's true label is the vector's class."""
    k = min(k, len(real_features))
    found = cosine_topk(distilled.features, real_features, k, device=device)
    positions, similarities = found.indices.reshape(-1), found.similarities.reshape(-1)
    real = rows.iloc[positions].reset_index(drop=True)
    vector_labels = np.repeat(distilled.labels, k)
    return pd.DataFrame({
        "vector": np.repeat(np.arange(len(distilled.labels)), k), "vector_label": vector_labels,
        "vector_class": [class_names[label] for label in vector_labels.tolist()],
        "rank": np.tile(np.arange(1, k + 1), len(distilled.labels)), "similarity": np.round(similarities, 4),
        "split": real["split"].to_numpy(), "index_in_split": real["index_in_split"].to_numpy(),
        "source": real["source"].to_numpy(), "label": real["label"].to_numpy(),
        "class_name": real["class_name"].to_numpy(), "same_class": real["label"].to_numpy() == vector_labels},
        columns=NEIGHBOUR_COLUMNS)


def grid_vectors(labels: np.ndarray, count: int) -> list[int]:
    """At most ``count`` synthetic vectors to draw, covering as many classes as there is room for: the
    first vector of every class (in label order), then the second of every class, and so on."""
    labels = np.asarray(labels)
    order = sorted(range(len(labels)), key=lambda i: (int(np.sum(labels[:i] == labels[i])), int(labels[i]), i))
    return order[:count]


def neighbour_rows(dataset: ImageDataset, table: pd.DataFrame, vectors: Sequence[int]
                   ) -> list[tuple[str, list[np.ndarray], list[str]]]:
    """Rows for :func:`embedlens.plots.image_rows`: per synthetic vector its class and number, then its
    nearest real images (drawn through ``dataset.read_image``; one that cannot be read is left out of
    the row, the table still lists it) captioned with their class and cosine similarity."""
    rows = []
    for vector in vectors:
        found = table[table["vector"] == vector].sort_values("rank")
        images, captions = [], []
        for row in found.itertuples():
            try:
                images.append(dataset.read_image(row.split, row.source))
            except Exception:  # an unreadable image is left out; the table still lists it
                continue
            name = str(row.class_name)
            captions.append(f"{name if len(name) <= 14 else name[:13] + '…'}\ncos {row.similarity:.2f}")
        title = f"{found['vector_class'].iloc[0]}\nvector {vector}" if len(found) else f"vector {vector}"
        rows.append((title, images, captions))
    return rows


# --------------------------------------------------------------------------------------------------
# the stage's summary


def distill_summary(document: Mapping, neighbours: Mapping, *, dataset: str, backbone: str) -> StageSummary:
    """The stage's ``summary.json`` from ``distill.json`` (:func:`distill_document`) and the nearest-image
    figures (``neighbours``: ``{"k", "same_class", "vectors_drawn"}``)."""
    accuracy_of = document["accuracy"]
    distilled, random = accuracy_of["distilled"], accuracy_of["random"]
    centroids, full = accuracy_of["centroids"], accuracy_of["full"]
    headline = {"per_class": document["per_class"], "vectors": document["vectors"],
                "compression_ratio": document["compression_ratio"], "accuracy": round(distilled["mean"], 4),
                "random_accuracy": round(random["mean"], 4), "centroid_accuracy": round(centroids["mean"], 4),
                "full_accuracy": round(full["mean"], 4), "accuracy_kept": document["accuracy_kept"],
                "beats_random": document["beats_random"]}

    def figure(entry: Mapping) -> str:
        return f"{entry['mean']:.4f} ± {entry['std']:.4f}"

    margin = distilled["mean"] - random["mean"]
    verdict = ("beats the random real subset beyond the seeds' spread, so the distilled set is worth using"
               if document["beats_random"] else
               "does NOT beat the random real subset beyond the seeds' spread (mean ± std overlap or lie below), "
               "so at these settings a random real subset of the same size serves as well")
    notes = [
        *document.get("notes", []),
        f"Labels: {document['label_source']}. {document['per_class']} synthetic vector(s) per class for "
        f"{document['classes']} classes ({document['vectors']} vectors) stand for {document['train_images']} "
        f"real train images: {document['compression_ratio']:g}x compression.",
        f"Test accuracy over {distilled['seeds']} seeds (mean ± std): distilled {figure(distilled)}, random real "
        f"subset of the same size {figure(random)}, class centroids {figure(centroids)}, full train split "
        f"{figure(full)}.",
        f"The distilled set {verdict} (difference of the means {margin:+.4f}).",
        f"It keeps {document['accuracy_kept']:.1%} of the full split's accuracy (the replaced repo claimed "
        "50-100x compression with 80-95% of the accuracy kept, without evidence)." if document["accuracy_kept"]
        is not None else "The full split's accuracy is 0, so no share of it is kept.",
        f"The distilled set was trained at its learned learning rate {document['learned_lr']:.4g}; the random subset "
        f"and the centroids at {random['learning_rate']:.4g}, each for {random['epochs']} epochs; the full split for "
        f"{full['epochs']} epochs at {full['learning_rate']:.4g}.",
        f"Of each synthetic vector's {neighbours['k']} nearest real train images, {neighbours['same_class']:.1%} "
        "have the vector's class as their true label.",
        f"Distillation took {document['seconds']['distillation']:.0f} s, the evaluation "
        f"{document['seconds']['evaluation']:.0f} s.",
    ]
    tables = [
        Artifact("evaluation.csv", "Test accuracy of the classifier trained from scratch on each set, mean and std "
                 "over seeds: (a) the distilled set, (b) a random real subset with as many vectors per class, (c) "
                 "the class centroids, (d) the full train split; with each set's size, learning rate and epochs."),
        Artifact("evaluation_seeds.csv", "The same per seed."),
        Artifact("neighbours.csv", f"The {neighbours['k']} nearest real train images of every synthetic vector "
                 "(cosine in the store's feature space), with their true class and whether it is the vector's."),
    ]
    figures = [
        Artifact("neighbours.png", f"{neighbours['vectors_drawn']} synthetic vectors (one per class first) and "
                 f"their {neighbours['k']} nearest real train images: what each class was compressed to."),
        Artifact("matching_loss.png", "The trajectory-matching loss per iteration (parameter distance after the "
                 "synthetic steps over the expert's own distance; below 1 the synthetic steps get closer to the "
                 "expert than standing still)."),
    ]
    return StageSummary(stage="distill", title="Distillation", dataset=dataset, backbone=backbone,
                        headline=headline, tables=tables, figures=figures, notes=notes, settings=document["settings"])
