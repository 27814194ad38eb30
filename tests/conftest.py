"""Shared fixtures: paths of the checkout and of the genuine data in ../shared when present."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from embedlens.config import section_defaults
from embedlens.overlap import OverlapSettings, RefineSettings
from embedlens.roles import merged

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"
CIFAR100_ROOT = SHARED_DATASETS
RNG = np.random.default_rng(0)


@pytest.fixture(scope="session")
def cifar100_root() -> Path:
    """The folder holding the genuine cifar-100-python/; the test is skipped when it is absent."""
    if not (CIFAR100_ROOT / "cifar-100-python" / "test").is_file():
        pytest.skip("the genuine CIFAR-100 is not in ../shared/datasets")
    return CIFAR100_ROOT


def artifacts_problems(folder: Path, summary) -> list[str]:
    """What is wrong with the files a stage's summary lists (``summary.tables`` and ``summary.figures``,
    relative to ``folder``): a table that is not a CSV with a header row, a figure that does not decode
    or is one flat colour (a blank drawn in place of a picture)."""
    problems = []
    for table in summary.tables:
        if len(pd.read_csv(folder / table.path).columns) < 2:
            problems.append(f"{table.path}: fewer than two columns")
    problems += [problem for figure in summary.figures if (problem := picture_problem(folder / figure.path))]
    return problems


def picture_problem(path: Path) -> str | None:
    """Why the image at ``path`` is no picture (it does not decode, is under 50 pixels a side, or is one
    flat colour: a blank drawn in place of a figure); None for a real picture."""
    with Image.open(path) as image:
        darkest, lightest = image.convert("L").getextrema()
        if min(image.size) < 50 or darkest == lightest:
            return f"{path.name}: {image.size[0]} x {image.size[1]} pixels, grey levels {darkest}..{lightest}"
    return None


@pytest.fixture
def check_artifacts():
    """Asserts that every table and figure a stage summary lists is a real one (:func:`artifacts_problems`);
    a fixture, so that test modules whose imports other work moves need no new import."""
    def check(folder: Path, summary) -> None:
        problems = artifacts_problems(folder, summary)
        assert not problems, problems
    return check


def overlap_settings(**changes) -> OverlapSettings:
    """The schema's ``overlap`` settings with ``changes`` (a ``refine`` dict merged key by key)."""
    return OverlapSettings.from_config(merged(section_defaults("overlap"), changes))


def extract_options(**changes) -> dict:
    """The schema's ``extract`` settings that :func:`embedlens.extract.extract_features` takes, with ``changes``."""
    defaults = section_defaults("extract")
    return {key: defaults[key] for key in ("batch_size", "num_workers", "amp", "preprocess", "compile")} | changes


def refine_settings(**changes) -> RefineSettings:
    """The schema's ``overlap.refine`` settings with ``changes``."""
    return overlap_settings(refine=changes).refine


def run_snakemake(workdir: Path, *args: str, config: dict | None = None) -> subprocess.CompletedProcess:
    """Run this checkout's Snakefile inside ``workdir`` (with ``config`` written there as its config
    file, when given), as a user would: ``args`` are targets and flags. GPU locks stay in ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "snakemake", *args, "--snakefile", str(REPO / "Snakefile"),
               "--directory", str(workdir), "--cores", "2", "--resources", "gpu=1"]
    if config is not None:
        path = workdir / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        command += ["--configfile", str(path)]
    env = {**os.environ, "EMBEDLENS_GPU_LOCK_DIR": str(workdir / "gpu-locks")}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)


def pixels(h: int = 6, w: int = 5, channels: int = 3) -> np.ndarray:
    """Random uint8 pixels, (h, w, channels) or (h, w) for one channel."""
    shape = (h, w, channels) if channels > 1 else (h, w)
    return RNG.integers(0, 256, shape, dtype=np.uint8)


def save(path: Path, image: Image.Image, **kwargs) -> Path:
    """Save ``image`` at ``path``, making its folder; returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def garbled_jpeg(jpeg: bytes) -> bytes:
    """``jpeg`` with every header intact and its compressed pixel data replaced by stray SOF markers,
    which libjpeg rejects (plain random bytes there decode to noise without an error)."""
    scan = jpeg.index(b"\xff\xda")  # start of scan: its header, then the compressed data
    data = scan + 2 + int.from_bytes(jpeg[scan + 2:scan + 4], "big")
    return jpeg[:data] + b"\xff\xc0" * ((len(jpeg) - data) // 2) + b"\xff\xd9"
