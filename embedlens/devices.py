"""Which device a model job runs on, and which GPU it takes when several jobs share a workstation.

Snakemake counts GPUs (``--resources gpu=N``) but does not say which GPU a job should use. Each model
job therefore claims one GPU itself: it takes an exclusive ``flock`` on ``gpu-<id>.lock`` in a lock
folder shared by the jobs of one machine, trying the GPUs in order. The lock belongs to the process, so
it is released when the job ends, also when it is killed.

``<id>`` is the physical GPU's UUID. A scheduler that isolates GPUs (SLURM, Kubernetes) shows every
job its own GPU as device 0, so a name taken from the index or from ``CUDA_VISIBLE_DEVICES`` would
make two jobs of one user on one node wait for each other while each holds an idle GPU; their UUIDs
differ, so each takes its own at once.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(preference: str, key: str) -> torch.device:
    """``auto``: CUDA when available, else CPU; ``cuda`` without a GPU is an error; ``cpu`` is CPU.
    ``key`` is the setting that holds ``preference`` (``cluster.device``), which the errors name."""
    if preference not in DEVICE_CHOICES:
        raise ValueError(f"{key} is {preference!r}; allowed values: {', '.join(DEVICE_CHOICES)}")
    if preference == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if preference == "cuda":
        raise RuntimeError(f"{key} is cuda but no CUDA device is available; set {key} to auto or cpu")
    return torch.device("cpu")


def default_lock_dir() -> Path:
    """``$EMBEDLENS_GPU_LOCK_DIR``, else a per-user folder in the system's temp directory."""
    configured = os.environ.get("EMBEDLENS_GPU_LOCK_DIR")
    return Path(configured) if configured else Path(tempfile.gettempdir()) / f"embedlens-gpu-locks-{os.getuid()}"


def device_uuid(index: int) -> str | None:
    """The UUID of visible CUDA device ``index`` as torch reports it (None where it cannot)."""
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    return f"GPU-{uuid}" if uuid is not None else None


def physical_gpu_ids(count: int, cuda_visible_devices: str | None) -> list[str]:
    """Stable names for the ``count`` visible GPUs, the same whichever index a job sees a GPU under:
    their UUIDs; where torch does not report them, the entries of CUDA_VISIBLE_DEVICES when it is set,
    else "0", "1", ..."""
    uuids = [device_uuid(i) for i in range(count)]
    if all(uuids):
        return uuids
    if cuda_visible_devices:
        names = [name.strip() for name in cuda_visible_devices.split(",") if name.strip()]
        if len(names) >= count:
            return names[:count]
    return [str(i) for i in range(count)]


@dataclass
class GpuClaim:
    """A GPU held by this process: ``index`` is the torch device index; keep the object alive."""

    index: int
    name: str
    _handle: object

    def release(self) -> None:
        self._handle.close()


def claim_gpu(gpu_names: list[str], lock_dir: str | Path | None = None,
              timeout: float = 24 * 3600.0, poll: float = 1.0) -> GpuClaim:
    """Take the first free GPU among ``gpu_names`` (see :func:`physical_gpu_ids`), waiting while all are
    taken. Raises TimeoutError after ``timeout`` seconds."""
    if not gpu_names:
        raise ValueError("no GPUs to claim")
    lock_dir = Path(lock_dir) if lock_dir is not None else default_lock_dir()
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    while True:
        for index, name in enumerate(gpu_names):
            # "a", not "w": opening must not empty the file of the job that holds the lock.
            handle = open(lock_dir / f"gpu-{name}.lock", "a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            handle.truncate(0)
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            return GpuClaim(index, name, handle)
        if time.monotonic() > deadline:
            raise TimeoutError(f"all GPUs {gpu_names} stayed taken (locks in {lock_dir}) for {timeout:.0f} s")
        time.sleep(poll)


def acquire_device(preference: str, key: str) -> tuple[torch.device, GpuClaim | None]:
    """The device a model job should use: on CUDA, a claimed GPU of its own; else the CPU. ``key`` is
    the setting that holds ``preference`` (``classify.device``), which the errors name."""
    device = resolve_device(preference, key)
    if device.type != "cuda":
        return device, None
    names = physical_gpu_ids(torch.cuda.device_count(), os.environ.get("CUDA_VISIBLE_DEVICES"))
    claim = claim_gpu(names)
    torch.cuda.set_device(claim.index)
    return torch.device("cuda", claim.index), claim
