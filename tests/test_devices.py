"""Device choice and the GPU claim that keeps concurrent shard jobs on different GPUs (no GPU needed)."""

from __future__ import annotations

import multiprocessing
import os
import time

import pytest
import torch

from embedlens import devices
from embedlens.devices import acquire_device, claim_gpu, physical_gpu_ids, resolve_device


def test_auto_takes_the_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto", "extract.device").type == "cpu"
    assert resolve_device("cpu", "extract.device").type == "cpu"
    with pytest.raises(RuntimeError, match="extract.device is cuda but no CUDA device"):
        resolve_device("cuda", "extract.device")


def test_auto_takes_cuda_when_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto", "extract.device").type == "cuda"
    assert resolve_device("cpu", "extract.device").type == "cpu"


@pytest.mark.parametrize("key", ["cluster.device", "classify.device", "distill.device"])
def test_errors_name_the_stage_setting_not_extract(monkeypatch, key):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError) as no_gpu:
        acquire_device("cuda", key)
    assert str(no_gpu.value) == f"{key} is cuda but no CUDA device is available; set {key} to auto or cpu"
    with pytest.raises(ValueError) as bad:
        resolve_device("gpu", key)
    assert str(bad.value) == f"{key} is 'gpu'; allowed values: auto, cpu, cuda"
    assert "extract" not in str(no_gpu.value) + str(bad.value)


def test_gpus_are_named_by_uuid_else_by_cuda_visible_devices(monkeypatch):
    monkeypatch.setattr(devices, "device_uuid", lambda index: f"GPU-{index}aaa")
    assert physical_gpu_ids(2, "5,7") == ["GPU-0aaa", "GPU-1aaa"]
    monkeypatch.setattr(devices, "device_uuid", lambda index: None)
    assert physical_gpu_ids(3, None) == ["0", "1", "2"]
    assert physical_gpu_ids(2, "5,7") == ["5", "7"]
    assert physical_gpu_ids(2, "GPU-aaaa, GPU-bbbb") == ["GPU-aaaa", "GPU-bbbb"]


def node_job_claims(monkeypatch, uuid: str, lock_dir, timeout: float = 0.3):
    """What a job that a scheduler isolated to one GPU claims: it sees that GPU as device 0."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setattr(devices, "device_uuid", lambda index: uuid)
    return claim_gpu(physical_gpu_ids(1, "0"), lock_dir, timeout=timeout, poll=0.05)


def test_jobs_isolated_to_different_gpus_of_one_node_do_not_wait_for_each_other(tmp_path, monkeypatch):
    first = node_job_claims(monkeypatch, "GPU-1111", tmp_path)
    second = node_job_claims(monkeypatch, "GPU-2222", tmp_path)  # would time out if keyed by "0"
    assert (first.name, second.name) == ("GPU-1111", "GPU-2222") and first.index == second.index == 0
    with pytest.raises(TimeoutError, match="stayed taken"):
        node_job_claims(monkeypatch, "GPU-1111", tmp_path)  # the same physical GPU is still taken
    first.release()
    second.release()


def test_a_waiting_job_leaves_the_holders_lock_file_intact(tmp_path):
    holder = claim_gpu(["GPU-1111"], tmp_path, timeout=1, poll=0.05)
    with pytest.raises(TimeoutError):
        claim_gpu(["GPU-1111"], tmp_path, timeout=0.2, poll=0.05)
    assert (tmp_path / "gpu-GPU-1111.lock").read_text() == f"{os.getpid()}\n"
    holder.release()


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
