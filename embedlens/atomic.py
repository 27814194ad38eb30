"""Atomic file writes: a result either appears complete under its final name or not at all.

The content reaches the disk (fsync) before the rename and the rename before the context exits
(fsync of the folder), so a crash or power loss never leaves a renamed but empty or truncated file.
Temporaries that a killed job left beside its output are removed by the next write of the same
output.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` when the block succeeds.

    The temporary file lives in the same folder so the rename is atomic on POSIX file systems. The
    file is fsynced before the rename and the folder after it. If the block raises, the temporary file
    is removed and ``final`` is left as it was. Temporaries of ``final`` left by a killed run are
    removed first, so two writers of the same ``final`` must not run at once (Snakemake never runs
    two jobs for one output). The result gets the permissions of an ordinary new file (0666 less the
    umask), not mkstemp's private 0600, so results stay readable by a group on shared clusters.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(final)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, 0o666 & ~_current_umask())
            # Whoever wrote the file (h5py, pandas, PIL) has closed it, but its data may still sit in
            # the page cache; renaming before it is on disk could leave an empty file after a crash.
            _fsync(tmp)
        os.replace(tmp, final)
        _fsync(final.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def _remove_stale_temporaries(final: Path) -> None:
    """Remove the temporaries of ``final`` that a killed :func:`atomic_path` or
    :func:`atomic_directory` left beside it: ``.{name}.XXXXXXXX.tmp`` files and folders (XXXXXXXX
    as mkstemp draws them) and ``.{name}.old-XXXXXXXX`` folders (a replaced result not yet deleted).
    Temporaries of other names, such as ``.{name}.bak.XXXXXXXX.tmp`` of ``{name}.bak``, stay."""
    stale = re.compile(rf"\.{re.escape(final.name)}\.(?:[a-z0-9_]{{8}}\.tmp|old-[0-9a-f]{{8}})")
    for entry in final.parent.iterdir():
        if not stale.fullmatch(entry.name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    """Flush a file's data, or a folder's entries, from the page cache to the disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_tree(root: Path) -> None:
    """:func:`_fsync` every file and folder under ``root``, ``root`` included (symbolic links are
    left alone: their targets are not part of the tree)."""
    paths = []
    for folder, _, files in os.walk(root):
        paths += [path for path in (Path(folder, name) for name in files) if not path.is_symlink()]
        paths.append(Path(folder))
    # Concurrent fsyncs share the file system's journal commits: 3,000 small files take 0.4 s from
    # 8 threads against 10 s one after the other (ext4), which matters for the PNG subsets.
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(_fsync, paths))


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(final: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``final`` atomically."""
    with atomic_path(final) as tmp:
        tmp.write_text(text)


@contextmanager
def atomic_directory(final: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``final``; when the block succeeds it replaces
    ``final`` (an existing one is moved aside, then deleted). On error the temporary folder goes.

    Every file and folder of the tree is fsynced before the rename, and the parent folder after it.
    Temporaries of ``final`` left by a killed run are removed first, as in :func:`atomic_path`."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    tmp.chmod(0o777 & ~_current_umask())
    try:
        yield tmp
        _fsync_tree(tmp)
        if final.exists():
            old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(final, old)
            os.replace(tmp, final)
            _fsync(final.parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
            _fsync(final.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
