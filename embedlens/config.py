"""Load and validate the workflow configuration against ``embedlens/config.schema.yaml``.

Validation fills in every default the schema declares, so the rest of embedlens reads complete
settings, and it reports every problem at once, each naming the key and what is allowed there.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parent / "config.schema.yaml"  # package data: installs validate too


class ConfigError(ValueError):
    """The configuration breaks the schema; the message lists each offending key."""


def _with_defaults(validator_class: type) -> type:
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, subschema in properties.items():
                if isinstance(subschema, Mapping) and "default" in subschema:
                    instance.setdefault(key, copy.deepcopy(subschema["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _key_path(path: Iterable[Any]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _describe(error: jsonschema.ValidationError) -> str:
    where = _key_path(error.absolute_path)
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    if error.validator == "additionalProperties":
        allowed = ", ".join(sorted(schema.get("properties", {})))
        extra = sorted(set(error.instance) - set(schema.get("properties", {})))
        return f"{where}: unknown key(s) {', '.join(map(repr, extra))}; allowed keys: {allowed}"
    if error.validator in ("enum", "const"):
        allowed = error.validator_value if error.validator == "enum" else [error.validator_value]
        return f"{where}: {error.instance!r} is not allowed; allowed values: {', '.join(map(str, allowed))}"
    if error.validator == "required":
        return f"{where}: {error.message}"
    return f"{where}: {error.message}"


def _is_kind_key_error(error: jsonschema.ValidationError) -> bool:
    """Whether ``error`` is a key that the entry's kind does not take (a ``propertyNames`` rule)."""
    return "propertyNames" in error.schema_path


def _describe_kind_keys(config: dict, errors: list[jsonschema.ValidationError]) -> list[str]:
    """One line per entry holding keys that its kind does not take, listing only that kind's keys."""
    by_entry: dict[tuple, list[jsonschema.ValidationError]] = {}
    for error in errors:
        if _is_kind_key_error(error):
            by_entry.setdefault(tuple(error.absolute_path), []).append(error)
    lines = []
    for path, entry_errors in by_entry.items():
        item = config
        for part in path:
            item = item[part]
        keys = sorted({error.instance for error in entry_errors})
        allowed = ", ".join(sorted(entry_errors[0].validator_value))
        lines.append(f"{_key_path(path)}: unknown key(s) {', '.join(map(repr, keys))} for kind "
                     f"{item.get('kind')}; allowed keys: {allowed}")
    return lines


def load_schema(schema_path: str | Path = SCHEMA_PATH) -> dict:
    """Read the YAML schema at ``schema_path``."""
    with open(schema_path) as handle:
        return yaml.safe_load(handle)


def validate_config(config: dict, schema_path: str | Path = SCHEMA_PATH) -> dict:
    """Validate ``config`` in place against the schema, filling in defaults, and return it.

    Raises ConfigError listing every violation, each as ``key.path: what is wrong; what is allowed``.
    Names of datasets and of backbones must also be unique, since they become folder names.
    """
    schema = load_schema(schema_path)
    validator_class = _with_defaults(jsonschema.validators.validator_for(schema))
    validator = validator_class(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    problems = _describe_kind_keys(config, errors)
    kind_checked = {tuple(error.absolute_path) for error in errors if _is_kind_key_error(error)}
    problems += [_describe(error) for error in errors if not _is_kind_key_error(error)
                 # the kind's own list of keys says more than the list of every kind's keys
                 and not (error.validator == "additionalProperties" and tuple(error.absolute_path) in kind_checked)]
    if not problems:
        problems += _override_problems(config, schema, validator_class)
    for section in ("datasets", "backbones"):
        names = [entry.get("name") for entry in config.get(section, []) if isinstance(entry, dict)]
        duplicated = sorted({n for n in names if names.count(n) > 1 and n is not None})
        if duplicated:
            problems.append(f"{section}: names must be unique; repeated: {', '.join(duplicated)}")
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    return config


def _override_problems(config: dict, schema: dict, validator_class: type) -> list[str]:
    """Problems of the stage sections under dataset entries (``datasets[i].audit: {...}``): each is
    merged over the stage's own section and the result checked against that section's schema, so a
    key or value is refused there exactly as it would be at the top level."""
    from embedlens.roles import STAGES, merged

    problems = []
    for index, dataset in enumerate(config["datasets"]):
        for stage in STAGES:
            if stage not in dataset:
                continue
            section = validator_class(schema["properties"][stage])
            for error in section.iter_errors(merged(config[stage], dataset[stage])):
                where, _, what = _describe(error).partition(": ")
                key = f"datasets[{index}].{stage}" + ("" if where == "(top level)" else f".{where}")
                problems.append(f"{key}: {what}")
    return problems


def canonical(value: Any) -> Any:
    """``value`` with every mapping's keys in sorted order, recursively. Snakemake compares a rule's
    params by their text, so settings in canonical order rerun nothing when a user reorders keys."""
    if isinstance(value, Mapping):
        return {key: canonical(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [canonical(item) for item in value]
    return value


def load_config(path: str | Path, schema_path: str | Path = SCHEMA_PATH) -> dict:
    """Read the YAML config at ``path`` and validate it; the error names the file."""
    with open(path) as handle:
        config = yaml.safe_load(handle) or {}
    try:
        return validate_config(config, schema_path)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def entry(config: dict, section: str, name: str) -> dict:
    """Return the entry called ``name`` from the list ``config[section]`` (datasets or backbones)."""
    for item in config[section]:
        if item["name"] == name:
            return item
    known = ", ".join(item["name"] for item in config[section])
    raise KeyError(f"no {section} entry named {name!r}; configured: {known}")


def section_defaults(section: str, schema_path: str | Path = SCHEMA_PATH) -> dict:
    """The schema's defaults of the top-level ``section`` (e.g. ``classify``): what a validated
    config holds there when the user sets nothing, for code that runs outside the workflow
    (benchmarks, notebooks) and must not repeat the defaults."""
    properties = load_schema(schema_path)["properties"]
    if section not in properties:
        raise KeyError(f"the config schema has no section {section!r}; sections: {', '.join(properties)}")
    return _object_defaults(properties[section])


def entry_defaults(section: str, kind: str, schema_path: str | Path = SCHEMA_PATH) -> dict:
    """The schema's defaults of an entry of the list ``section`` (``datasets`` or ``backbones``) whose
    kind is ``kind``: the entry's own and its kind's (e.g. a folder's extensions), what validation fills
    in, for code that builds a dataset or a backbone from an entry that was not validated."""
    return copy.deepcopy(_entry_defaults(section, kind, str(schema_path)))


@functools.lru_cache(maxsize=None)  # a scan's worker processes each open the dataset again
def _entry_defaults(section: str, kind: str, schema_path: str) -> dict:
    items = load_schema(schema_path)["properties"][section]["items"]
    values = _object_defaults(items)
    for branch in items.get("allOf", []):
        condition = branch.get("if", {}).get("properties", {}).get("kind", {})
        if kind == condition.get("const") or kind in condition.get("enum", ()):
            values.update(_object_defaults(branch["then"]))
    return values


def _object_defaults(spec: Mapping) -> dict:
    """The defaults of an object's properties; a nested object whose default is ``{}`` gets its own
    properties' defaults, as validation fills them in."""
    values = {}
    for key, inner in spec.get("properties", {}).items():
        if "default" not in inner:
            continue
        if inner["default"] == {} and "properties" in inner:
            values[key] = _object_defaults(inner)
        else:
            values[key] = copy.deepcopy(inner["default"])
    return values


def settings_values(section: str, values: Mapping, settings_class: type) -> dict:
    """``values`` (a validated config's ``section``, e.g. ``cluster.temi``) as a new dict, once its keys
    are exactly the fields of the dataclass ``settings_class``: every settings class takes its defaults
    from the schema, never from its own fields. The error names the unknown and the missing keys."""
    known = {field.name for field in fields(settings_class)}
    unknown, missing = sorted(set(values) - known), sorted(known - set(values))
    if unknown or missing:
        raise ValueError(f"{section}: unknown key(s) {unknown}, missing key(s) {missing}; validate the config "
                         f"against embedlens/config.schema.yaml (it fills in the defaults; "
                         f"embedlens.config.section_defaults gives them outside the workflow)")
    return dict(values)
