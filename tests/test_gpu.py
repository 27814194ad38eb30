"""The CUDA path on a real GPU: its features against the CPU's, bf16 against fp32, and the GPU claim.

Skipped without CUDA. ``bash benchmarks/gpu_check.sh`` runs them on a GPU machine (``pytest -m gpu``).
The model is the DINO ViT-S/16 architecture with random weights (no download), on synthetic images.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import time

import numpy as np
import pytest
import torch

from embedlens.backbones import load_backbone
from embedlens.datasets import open_dataset
from embedlens.devices import acquire_device, claim_gpu, physical_gpu_ids
from embedlens.extract import extract_features

from conftest import extract_options

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="needs a CUDA device (torch.cuda.is_available() is False)")]

# fp32 on CUDA differs from the CPU in summation order and in cuDNN's TF32 default for convolutions
# (the ViT's patch embedding): about 3e-4 relative error when TF32 rounding is simulated on a CPU.
FP32_MIN_COSINE = 0.9999
FP32_MAX_RELATIVE_ERROR = 5e-3
# bfloat16 keeps 8 bits of mantissa; CPU bf16 autocast gave a mean cosine of 0.99998 on this model.
BF16_MIN_MEAN_COSINE = 0.995
BF16_MIN_COSINE = 0.99


@pytest.fixture(scope="module")
def images():
    """40 synthetic 64x64 images (10 classes x 4): the dataset and its manifest rows."""
    dataset = open_dataset({"name": "synthetic", "kind": "synthetic", "num_classes": 10, "image_size": 64,
                            "images_per_class": {"test": 4}, "overlapping_pairs": 2, "seed": 0,
                            "splits": ["test"]})
    return dataset, dataset.scan().manifest


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return load_backbone({"name": "dino", "kind": "timm", "model": "vit_small_patch16_224.dino",
                          "pretrained": False})


def extract(backbone, images, device: str, amp: bool) -> np.ndarray:
    """Features through embedlens's extraction: batches of 16 (the last one partial), 2 workers, and on
    CUDA pinned memory, as the workflow runs it."""
    dataset, rows = images
    features, failed = extract_features(backbone, dataset, rows, device=torch.device(device),
                                        **extract_options(batch_size=16, num_workers=2, amp=amp))
    assert not failed
    return features


@pytest.fixture(scope="module")
def cpu_fp32(backbone, images) -> np.ndarray:
    return extract(backbone, images, "cpu", amp=False)


@pytest.fixture(scope="module")
def cuda_fp32(backbone, images) -> np.ndarray:
    return extract(backbone, images, "cuda", amp=False)


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``a`` with the same row of ``b``."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_cuda_fp32_features_equal_the_cpu_features(cpu_fp32, cuda_fp32):
    assert cuda_fp32.shape == cpu_fp32.shape == (40, 384)
    # The images' features differ from one another by more than the tolerance, so rows that were
    # mixed up, or a batch that was dropped or repeated, fail the comparison below.
    unit = cpu_fp32 / np.linalg.norm(cpu_fp32, axis=1, keepdims=True)
    between_images = unit @ unit.T
    assert between_images[~np.eye(len(unit), dtype=bool)].max() < FP32_MIN_COSINE
    assert row_cosines(cuda_fp32, cpu_fp32).min() >= FP32_MIN_COSINE
    relative_error = np.linalg.norm(cuda_fp32 - cpu_fp32, axis=1) / np.linalg.norm(cpu_fp32, axis=1)
    assert relative_error.max() <= FP32_MAX_RELATIVE_ERROR


def test_bf16_autocast_features_agree_with_fp32(backbone, images, cuda_fp32):
    bf16 = extract(backbone, images, "cuda", amp=True)
    assert bf16.dtype == np.float32
    assert not np.array_equal(bf16, cuda_fp32), "amp=True changed nothing: the model did not run in bf16"
    cosines = row_cosines(bf16, cuda_fp32)
    assert cosines.mean() >= BF16_MIN_MEAN_COSINE
    assert cosines.min() >= BF16_MIN_COSINE


def _claim_and_report(messages) -> None:
    """A second model job: says it started, claims a GPU (waiting while none is free), reports it."""
    messages.put(("started", time.time()))
    device, claim = acquire_device("cuda", "extract.device")
    messages.put(("claimed", time.time(), str(device), claim.index, claim.name, torch.cuda.current_device()))
    claim.release()


def test_the_claim_gives_a_real_gpu_and_a_second_job_waits_until_it_is_free(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDLENS_GPU_LOCK_DIR", str(tmp_path))
    device, claim = acquire_device("cuda", "extract.device")
    names = physical_gpu_ids(torch.cuda.device_count(), os.environ.get("CUDA_VISIBLE_DEVICES"))
    # Hold the other visible GPUs too, so that the second job finds none free however many there are.
    others = [claim_gpu(names, tmp_path, timeout=10, poll=0.05) for _ in names[1:]]
    child = None
    try:
        assert device == torch.device("cuda", claim.index)
        assert torch.cuda.current_device() == claim.index
        torch.ones(1, device=device)  # the claimed index is a usable device
        assert (tmp_path / f"gpu-{claim.name}.lock").read_text().strip() == str(os.getpid())

        context = multiprocessing.get_context("spawn")
        messages = context.Queue()
        child = context.Process(target=_claim_and_report, args=(messages,))
        child.start()
        assert messages.get(timeout=120)[0] == "started"
        with pytest.raises(queue.Empty):  # every GPU is held: the second job waits
            messages.get(timeout=5)
        released_at = time.time()
        claim.release()
        kind, claimed_at, child_device, index, name, current = messages.get(timeout=60)
        assert kind == "claimed" and claimed_at >= released_at
        assert (index, name, child_device, current) == (claim.index, claim.name, f"cuda:{claim.index}", claim.index)
        child.join(timeout=60)
        assert child.exitcode == 0
    finally:
        claim.release()
        for other in others:
            other.release()
        if child is not None and child.is_alive():
            child.kill()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_a_second_job_takes_another_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDLENS_GPU_LOCK_DIR", str(tmp_path))
    device, claim = acquire_device("cuda", "extract.device")
    try:
        context = multiprocessing.get_context("spawn")
        messages = context.Queue()
        child = context.Process(target=_claim_and_report, args=(messages,))
        child.start()
        assert messages.get(timeout=120)[0] == "started"
        kind, _, child_device, index, name, current = messages.get(timeout=60)
        child.join(timeout=60)
        assert kind == "claimed" and index != claim.index and name != claim.name
        assert child_device == f"cuda:{index}" and current == index
    finally:
        claim.release()
