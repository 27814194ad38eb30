"""The shared out-of-fold pipeline: every row predicted once by a model that did not see it, float32 on
disk, resumed after a kill at the first fold not done; the softmax probe gives what the scikit-learn
logistic regression it replaces gives, and sees through flipped labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from embedlens.probe import PROBABILITIES_FILE, ProbeSettings, out_of_fold, softmax_probe

CPU = torch.device("cpu")


def planted(classes: int = 10, per_class: int = 100, dim: int = 32, flipped: int = 50, seed: int = 0):
    """Overlapping Gaussian classes on a common offset; ``flipped`` rows get the next class as label."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    labels = np.repeat(np.arange(classes), per_class)
    features = (0.6 * centres[labels] + rng.normal(size=(len(labels), dim)) + 3).astype(np.float32)
    given = labels.copy()
    rows = rng.choice(len(labels), flipped, replace=False)
    given[rows] = (labels[rows] + 1) % classes
    return features, labels, given, rows


def probe(**changes) -> ProbeSettings:
    return ProbeSettings(**{"regularization": 1.0, "epochs": 10, "min_steps": 300, "batch_size": 1024,
                            "learning_rate": 0.05, "seed": 0, "hidden": 0, "dropout": 0.0,
                            "ensemble": 1, **changes})


def recording_fit(seen: list):
    """A fit_fold that predicts each row's own target with certainty and records the rows it trained on."""
    def fit_fold(fold, train_rows):
        seen.append((fold, set(train_rows.tolist())))
        return (lambda rows: np.eye(3, dtype=np.float32)[rows % 3]), {"fold": fold}
    return fit_fold


def test_every_row_is_predicted_once_by_a_fold_that_did_not_train_on_it(tmp_path):
    targets = np.arange(30) % 3
    seen = []
    found = out_of_fold(targets, 3, 5, 0, recording_fit(seen), folder=tmp_path, key="a")
    assert sorted(np.unique(found.folds)) == [1, 2, 3, 4, 5] and [fold for fold, _ in seen] == [1, 2, 3, 4, 5]
    for fold, trained in seen:
        held_out = set(np.flatnonzero(found.folds == fold).tolist())
        assert not held_out & trained and held_out | trained == set(range(30))
    on_disk = np.load(tmp_path / PROBABILITIES_FILE)
    assert on_disk.dtype == np.float32
    np.testing.assert_array_equal(on_disk, np.eye(3)[np.arange(30) % 3])
    np.testing.assert_array_equal(found.probabilities, on_disk)


def test_a_killed_run_resumes_at_the_first_fold_not_done(tmp_path):
    targets = np.arange(40) % 4
    whole = out_of_fold(targets, 4, 4, 1, lambda fold, rows: ((lambda part: np.full((len(part), 4), fold / 10,
                                                                                     np.float32)), {"fold": fold}))

    def killed_in_fold_3(fold, rows):
        if fold == 3:
            raise KeyboardInterrupt("killed")
        return (lambda part: np.full((len(part), 4), fold / 10, np.float32)), {"fold": fold}

    with pytest.raises(KeyboardInterrupt):
        out_of_fold(targets, 4, 4, 1, killed_in_fold_3, folder=tmp_path, key="k")
    fitted = []

    def remaining(fold, rows):
        fitted.append(fold)
        return (lambda part: np.full((len(part), 4), fold / 10, np.float32)), {"fold": fold}

    resumed = out_of_fold(targets, 4, 4, 1, remaining, folder=tmp_path, key="k")
    assert fitted == [3, 4] and resumed.resumed_folds == 2
    np.testing.assert_array_equal(resumed.probabilities, whole.probabilities)
    assert [detail["fold"] for detail in resumed.details] == [1, 2, 3, 4]
    fitted.clear()  # another key (other data or settings): every fold again
    out_of_fold(targets, 4, 4, 1, remaining, folder=tmp_path, key="other")
    assert fitted == [1, 2, 3, 4]


def test_the_softmax_probe_gives_what_scikit_learns_logistic_regression_gives():
    features, labels, given, _ = planted()
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    reference = cross_val_predict(make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000)),
                                  features / norms, given, cv=StratifiedKFold(5, shuffle=True, random_state=0),
                                  method="predict_proba")
    found = out_of_fold(given, 10, 5, 0, softmax_probe(features, given, 10, probe(), CPU))
    assert found.probabilities.dtype == np.float32
    np.testing.assert_allclose(found.probabilities.sum(axis=1), 1, atol=1e-5)
    assert np.abs(found.probabilities - reference).mean() < 0.01
    accuracy, reference_accuracy = [(p.argmax(axis=1) == labels).mean() for p in (found.probabilities, reference)]
    assert accuracy >= reference_accuracy - 0.02
    assert accuracy > 0.8  # chance is 0.1; the true labels, although 5% of the given ones are flipped


def test_the_probe_sees_through_flipped_labels_and_uses_rows_by_position():
    features, labels, given, flipped = planted(classes=4, per_class=60, dim=16, flipped=12, seed=1)
    features = features * 0.3 + np.random.default_rng(1).normal(size=(4, 16)).astype(np.float32)[labels] * 3
    padded = np.concatenate([np.zeros((7, 16), np.float32), features])  # the probe reads rows 7.. by position
    found = out_of_fold(given, 4, 5, 0, softmax_probe(padded, given, 4, probe(), CPU,
                                                      positions=np.arange(7, 7 + len(given))))
    suggested = found.probabilities.argmax(axis=1)
    assert (suggested[flipped] == labels[flipped]).mean() >= 0.9  # the true class, not the given one
    self_confidence = found.probabilities[np.arange(len(given)), given]
    assert set(np.argsort(self_confidence)[:12]) == set(flipped.tolist())


def checkerboard(rows: int = 800, noise_dims: int = 6, flipped: int = 40, seed: int = 0):
    """Two classes no line separates: the class is whether the first two coordinates share a sign (XOR),
    beside ``noise_dims`` uninformative ones; ``flipped`` rows get the other class as label."""
    rng = np.random.default_rng(seed)
    points = rng.uniform(-1, 1, size=(rows, 2 + noise_dims)).astype(np.float32)
    labels = ((points[:, 0] > 0) == (points[:, 1] > 0)).astype(np.int64)
    given = labels.copy()
    rows_flipped = rng.choice(rows, flipped, replace=False)
    given[rows_flipped] = 1 - labels[rows_flipped]
    return points, labels, given, rows_flipped


def test_a_hidden_layer_learns_the_class_boundary_a_linear_probe_cannot_and_ranks_the_flips_first():
    features, labels, given, flipped = checkerboard()
    linear = out_of_fold(given, 2, 4, 0, softmax_probe(features, given, 2, probe(min_steps=100), CPU)).probabilities
    mlp = out_of_fold(given, 2, 4, 0, softmax_probe(features, given, 2, probe(hidden=32, learning_rate=0.02,
                                                                             min_steps=250), CPU)).probabilities
    linear_accuracy, mlp_accuracy = [(p.argmax(axis=1) == labels).mean() for p in (linear, mlp)]
    print(f"accuracy linear {linear_accuracy:.3f}, mlp {mlp_accuracy:.3f}")
    assert linear_accuracy < 0.65  # XOR: no linear boundary beats chance by much
    assert mlp_accuracy > 0.85 and mlp.dtype == np.float32
    is_flipped = np.isin(np.arange(len(given)), flipped)

    def flips_among_lowest(probabilities):  # rows whose given label gets the least probability
        self_confidence = probabilities[np.arange(len(given)), given]
        return is_flipped[np.argsort(self_confidence, kind="stable")[:len(flipped)]].mean()

    print(f"flips among the lowest 40: mlp {flips_among_lowest(mlp):.2f}, linear {flips_among_lowest(linear):.2f}")
    assert flips_among_lowest(mlp) >= 0.5 and flips_among_lowest(linear) < 0.25  # 40 flips of 800: chance 0.05


def test_an_ensemble_averages_members_of_their_own_seeds():
    features, _, given, _ = checkerboard(rows=200, noise_dims=2, flipped=10, seed=1)
    member = {"hidden": 16, "learning_rate": 0.01, "dropout": 0.2, "min_steps": 30}
    first = out_of_fold(given, 2, 4, 0, softmax_probe(features, given, 2, probe(**member), CPU)).probabilities
    # member m of fold k is seeded seed + k + 1000 m: seed 1000 gives the second member of every fold
    second = out_of_fold(given, 2, 4, 0, softmax_probe(features, given, 2, probe(**member, seed=1000),
                                                       CPU)).probabilities
    both = out_of_fold(given, 2, 4, 0, softmax_probe(features, given, 2, probe(**member, ensemble=2),
                                                     CPU)).probabilities
    assert np.abs(first - second).max() > 0.01  # other seeds, other members
    np.testing.assert_allclose(both, (first + second) / 2, atol=1e-5)
