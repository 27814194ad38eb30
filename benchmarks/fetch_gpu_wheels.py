"""Download into .whl/ the wheels that benchmarks/gpu_check.sh installs on a GPU machine without network.

The GPU machine has Python 3.12 and PyTorch (with torchvision, hence numpy and pillow) but may lack
the project's other packages, or hold other versions. Run this where pip reaches the registry, with
the Python environment the project's tests pass in (its package versions are the ones pinned):

    .venv/bin/python benchmarks/fetch_gpu_wheels.py                 # the needed wheels
    .venv/bin/python benchmarks/fetch_gpu_wheels.py --also torchvision==0.26.0 scikit-learn

Which packages: the check's Python files (ENTRY_FILES) are imported in a child process, and the
distributions they load that pyproject.toml declares (dependencies, the test extra) are the roots;
optional imports of those packages (pandas loads pyarrow when it finds it) are left out. The roots
and everything they require (for CPython 3.12 on x86-64 Linux, no extras) are pinned to the versions
installed here, except what the GPU machine has in builds that match its PyTorch (PRESENT: torch,
torchvision, and the binary packages torchvision needs) and what only those require. ``--also``
adds packages, with their requirements, even from PRESENT; ``NAME==VERSION`` there pins another
version than the one installed here: torchvision must be the release made for the machine's torch
(0.26 for torch 2.11), not the one for this environment's.

One ``pip download --no-deps`` for the exact list fetches manylinux/pure wheels for CPython 3.12; the
folder is emptied first, since two versions of one package stop the offline install. Exits non-zero
when a package is not installed here, a wheel is missing, or the total exceeds --max-mib (the device
tool carries at most 64 MiB with the working tree).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
# The Python files gpu_check.sh runs; knn.py is imported only when it exists.
ENTRY_FILES = ("tests/conftest.py", "tests/test_gpu.py", "tests/test_extract.py", "tests/test_devices.py",
               "benchmarks/extract_throughput.py", "benchmarks/knn.py")
PRESENT = ("torch", "torchvision", "numpy", "pillow")
TARGET_PYTHON = "3.12"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")
# Markers are evaluated for the GPU machine, not for this interpreter.
TARGET_ENVIRONMENT = {**default_environment(), "python_version": TARGET_PYTHON,
                      "python_full_version": f"{TARGET_PYTHON}.3", "implementation_name": "cpython",
                      "platform_python_implementation": "CPython", "sys_platform": "linux",
                      "platform_system": "Linux", "os_name": "posix", "platform_machine": "x86_64"}

TRACE = """
import importlib.util, json, sys
for number, path in enumerate(sys.argv[1:]):
    spec = importlib.util.spec_from_file_location(f"_entry_{number}", path)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
from importlib.metadata import packages_distributions
owners = packages_distributions()
print(json.dumps(sorted({d for name in list(sys.modules) for d in owners.get(name.partition('.')[0], [])})))
"""


def imported_distributions(files: list[Path]) -> set[str]:
    """Canonical names of the distributions whose modules ``files`` import (run in a child process,
    with this checkout on the path, so this script's own imports do not count)."""
    result = subprocess.run([sys.executable, "-c", TRACE, *map(str, files)], capture_output=True, text=True,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    if result.returncode != 0:
        raise SystemExit(f"importing {[str(f) for f in files]} failed:\n{result.stderr}")
    return {canonicalize_name(name) for name in json.loads(result.stdout.strip().splitlines()[-1])}


def declared_distributions(pyproject: Path) -> set[str]:
    """Canonical names of pyproject.toml's dependencies and its test extra."""
    project = tomllib.loads(pyproject.read_text())["project"]
    declared = project["dependencies"] + project.get("optional-dependencies", {}).get("test", [])
    return {canonicalize_name(Requirement(line).name) for line in declared}


def requirements(name: str, extras: frozenset[str] = frozenset()) -> set[tuple[str, frozenset[str]]]:
    """What installed distribution ``name`` requires on the GPU machine: (canonical name, extras) pairs,
    its own ``extras`` included."""
    needed = set()
    for line in metadata.requires(name) or []:
        requirement = Requirement(line)
        if requirement.marker is None or any(requirement.marker.evaluate({**TARGET_ENVIRONMENT, "extra": extra})
                                             for extra in {"", *extras}):
            needed.add((canonicalize_name(requirement.name), frozenset(requirement.extras)))
    return needed


def closure(roots: set[str], present: set[str]) -> set[str]:
    """``roots`` and every distribution they require, transitively, short of those in ``present``
    (not included, and their requirements not followed)."""
    seen: set[tuple[str, frozenset[str]]] = set()
    pending = [(name, frozenset()) for name in roots - present]
    while pending:
        item = pending.pop()
        if item in seen or item[0] in present:
            continue
        seen.add(item)
        try:
            pending.extend(requirements(*item))
        except metadata.PackageNotFoundError:
            pass  # reported by the caller, which pins versions
    return {name for name, _ in seen}


def wheel_list(also: list[str]) -> dict[str, str]:
    """The distributions to carry, each with the version installed here or the one ``also`` names."""
    entry_files = [REPO / path for path in ENTRY_FILES if (REPO / path).is_file()]
    roots = imported_distributions(entry_files) & declared_distributions(REPO / "pyproject.toml")
    asked = {canonicalize_name(Requirement(line).name): Requirement(line) for line in also}
    pinned, missing = {}, []
    for name in sorted(closure(roots | set(asked), set(PRESENT) - set(asked))):
        exact = [spec.version for spec in asked[name].specifier if spec.operator == "=="] if name in asked else []
        try:
            pinned[name] = exact[0] if exact else metadata.version(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
    if missing:
        raise SystemExit(f"required but not installed here, so no version to pin: {', '.join(missing)}")
    return pinned


def download(pinned: dict[str, str], folder: Path) -> None:
    """``pip download`` exactly ``pinned`` as CPython 3.12 x86-64 Linux wheels into an emptied ``folder``."""
    folder.mkdir(exist_ok=True)
    for old in folder.glob("*.whl"):
        old.unlink()
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--python-version", TARGET_PYTHON, "--implementation", "cp",
               *[arg for platform in PLATFORMS for arg in ("--platform", platform)],
               "--dest", str(folder), *[f"{name}=={version}" for name, version in pinned.items()]]
    subprocess.run(command, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--also", nargs="*", default=[], metavar="NAME[==VERSION]",
                        help="more distributions to carry, e.g. torchvision==0.26.0 or scikit-learn")
    parser.add_argument("--dest", type=Path, default=REPO / ".whl")
    parser.add_argument("--max-mib", type=float, default=50.0, help="fail above this total size")
    parser.add_argument("--list", action="store_true", help="print the pinned list, download nothing")
    args = parser.parse_args()

    pinned = wheel_list(args.also)
    print(" ".join(f"{name}=={version}" for name, version in pinned.items()))
    if args.list:
        return 0
    download(pinned, args.dest)
    wheels = sorted(args.dest.glob("*.whl"))
    fetched = {canonicalize_name(wheel.name.split("-")[0]) for wheel in wheels}
    total = sum(wheel.stat().st_size for wheel in wheels) / 2**20
    for wheel in sorted(wheels, key=lambda w: -w.stat().st_size):
        print(f"{wheel.stat().st_size / 2**20:6.1f} MiB  {wheel.name}")
    print(f"{len(wheels)} wheels, {total:.1f} MiB in {args.dest}")
    if set(pinned) - fetched:
        print(f"FAIL: no wheel for {', '.join(sorted(set(pinned) - fetched))}")
        return 1
    if total > args.max_mib:
        print(f"FAIL: {total:.1f} MiB is over --max-mib {args.max_mib}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
