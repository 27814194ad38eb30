"""Crash safety of atomic writes: data on disk before the rename, stale temporaries cleaned up."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from embedlens.atomic import atomic_directory, atomic_path


@pytest.fixture
def recorded_calls(monkeypatch) -> list[tuple[str, object]]:
    """os.fsync and os.replace, recorded in call order: ("fsync", inode) and ("replace", final name).
    Renames keep inodes, so an fsynced inode can be found again under its final name."""
    calls: list[tuple[str, object]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor):
        calls.append(("fsync", os.fstat(descriptor).st_ino))
        real_fsync(descriptor)

    def replace(source, destination):
        calls.append(("replace", Path(destination).name))
        real_replace(source, destination)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return calls


def test_a_file_written_by_another_library_is_fsynced_before_the_rename(tmp_path, recorded_calls):
    final = tmp_path / "out" / "table.csv"
    with atomic_path(final) as tmp:
        pd.DataFrame({"a": [1, 2]}).to_csv(tmp, index=False)
    assert recorded_calls == [("fsync", final.stat().st_ino), ("replace", "table.csv"),
                              ("fsync", final.parent.stat().st_ino)]
    assert final.read_text() == "a\n1\n2\n"


def test_every_file_of_a_directory_is_fsynced_before_the_swap(tmp_path, recorded_calls):
    final = tmp_path / "subset"
    final.mkdir()
    (final / "stale.txt").write_text("previous result")
    with atomic_directory(final) as tmp:
        (tmp / "train" / "cat").mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(tmp / "train" / "cat" / "0.png")
        (tmp / "metadata.csv").write_text("path\ntrain/cat/0.png\n")
    first_replace = next(i for i, (kind, _) in enumerate(recorded_calls) if kind == "replace")
    synced_before = {inode for kind, inode in recorded_calls[:first_replace] if kind == "fsync"}
    tree = [final, final / "train", final / "train" / "cat", final / "train" / "cat" / "0.png",
            final / "metadata.csv"]
    assert {path.stat().st_ino for path in tree} <= synced_before
    assert recorded_calls[-2:] == [("replace", "subset"), ("fsync", tmp_path.stat().st_ino)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["subset"]
    assert not (final / "stale.txt").exists()


def write_file(tmp: Path, text: str) -> None:
    tmp.write_text(text)


def read_file(final: Path) -> str:
    return final.read_text()


def write_tree(tmp: Path, text: str) -> None:
    (tmp / "part").write_text(text)


def read_tree(final: Path) -> str:
    return (final / "part").read_text()


WRITERS = [pytest.param(atomic_path, write_file, read_file, id="atomic_path"),
           pytest.param(atomic_directory, write_tree, read_tree, id="atomic_directory")]


@pytest.mark.parametrize("atomic, write, read", WRITERS)
def test_temporaries_of_a_killed_run_are_removed_and_those_of_other_names_stay(tmp_path, atomic, write, read):
    stale_file = tmp_path / ".a.csv.k3j_x9q2.tmp"
    stale_folder = tmp_path / ".a.csv.ab12cd34.tmp"
    swapped_out = tmp_path / ".a.csv.old-0123abcd"
    for folder in (stale_folder, swapped_out):
        (folder / "inner").mkdir(parents=True)
        (folder / "inner" / "half.png").write_bytes(b"\x89PNG")
    stale_file.write_text("half")
    kept = [".a.csv.bak.k3j_x9q2.tmp",   # a temporary of a.csv.bak
            ".a.csv.bak.old-0123abcd",   # a swapped-out a.csv.bak
            ".b.csv.k3j_x9q2.tmp",       # a temporary of b.csv
            ".a.csv.k3j_x9q.tmp",        # 7 characters: not a mkstemp name
            ".a.csv.K3J_X9Q2.tmp",       # mkstemp draws lowercase only
            ".a.csv.old-0123abcz",       # not hexadecimal
            "a.csv.k3j_x9q2.tmp"]        # no leading dot
    for name in kept:
        (tmp_path / name).write_text("someone else's")
    with atomic(tmp_path / "a.csv") as tmp:
        write(tmp, "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + ["a.csv"])
    assert read(tmp_path / "a.csv") == "new"


@pytest.mark.parametrize("atomic, write, read", WRITERS)
def test_a_failed_block_leaves_the_previous_result_and_no_temporary(tmp_path, atomic, write, read):
    final = tmp_path / "a.csv"
    with atomic(final) as tmp:
        write(tmp, "complete")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(RuntimeError, match="killed"):
        with atomic(final) as tmp:
            write(tmp, "half")
            raise RuntimeError("killed")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert read(final) == "complete"
