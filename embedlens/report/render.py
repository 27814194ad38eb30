"""The Jinja2 environment of the report and explore pages (templates ship in this package) and the
few formatting rules they share."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from functools import cache

import jinja2


def number(value) -> str:
    """A headline figure as a reader wants it: integers with thousands separators, fractions with four
    significant digits, large floats rounded; a mapping as ``key value`` parts and a list as its items,
    each formatted so (never a Python repr); anything else as text."""
    if isinstance(value, Mapping):
        return "; ".join(f"{label(key)} {number(item)}" for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(map(number, value))
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "no", None: "—"}[value]
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def label(key: str) -> str:
    """A JSON key as a heading: ``images_per_second`` -> ``images per second``."""
    return str(key).replace("_", " ")


def script_json(value) -> str:
    """``value`` as JSON that is safe inside a ``<script>`` element (no ``</`` can close it early)."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("embedlens.report", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters.update(number=number, label=label)
    return env


def render(template: str, **context) -> str:
    """Render one of the package's templates."""
    return environment().get_template(template).render(**context)
