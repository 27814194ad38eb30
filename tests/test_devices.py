"""Device choice and the GPU claim that keeps concurrent shard jobs on different GPUs (no GPU needed)."""

from __future__ import annotations

import multiprocessing
import time

import pytest
import torch

from embedlens.devices import claim_gpu, resolve_device, visible_gpu_ids


def test_auto_takes_the_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(RuntimeError, match="no CUDA device"):
        resolve_device("cuda")


def test_auto_takes_cuda_when_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto").type == "cuda"
    assert resolve_device("cpu").type == "cpu"


def test_visible_gpu_names_follow_cuda_visible_devices():
    assert visible_gpu_ids(3, None) == ["0", "1", "2"]
    assert visible_gpu_ids(2, "5,7") == ["5", "7"]
    assert visible_gpu_ids(2, "GPU-aaaa, GPU-bbbb") == ["GPU-aaaa", "GPU-bbbb"]


def _hold_claim(names, lock_dir, queue, hold_seconds):
    claim = claim_gpu(names, lock_dir, timeout=30, poll=0.05)
    queue.put(claim.name)
    time.sleep(hold_seconds)
    claim.release()


def test_concurrent_jobs_take_different_gpus(tmp_path):
    names = ["0", "1", "2"]
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    jobs = [context.Process(target=_hold_claim, args=(names, tmp_path, queue, 3.0)) for _ in names]
    for job in jobs:
        job.start()
    taken = sorted(queue.get(timeout=60) for _ in names)
    for job in jobs:
        job.join(timeout=60)
    assert taken == names


def test_a_job_waits_for_a_free_gpu_and_a_killed_job_frees_its_gpu(tmp_path):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    holder = context.Process(target=_hold_claim, args=(["0"], tmp_path, queue, 60.0))
    holder.start()
    assert queue.get(timeout=60) == "0"
    with pytest.raises(TimeoutError, match="stayed taken"):
        claim_gpu(["0"], tmp_path, timeout=0.3, poll=0.05)
    holder.kill()
    holder.join(timeout=30)
    claim = claim_gpu(["0"], tmp_path, timeout=10, poll=0.05)
    assert (claim.index, claim.name) == (0, "0")
    claim.release()
