"""Configuration values as data: coercion of CLI/YAML values to typed fields, and one-line errors.

A leaf module: it imports nothing of randpos, so every layer (positions, encodings, workloads,
the loop, the CLI) parses its own dataclasses with the same rules and the same messages.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and what is allowed."""


def unknown_fields_error(unknown: Iterable[str], known: Iterable[str], what: str) -> ConfigError:
    """The message for ``unknown`` keys: each named, with a close match, then the allowed names."""
    known = sorted(known)
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=1)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return ConfigError(f"unknown {what}: {', '.join(hints)}; allowed: {', '.join(known)}")


def check_choice(name: str, value: Any, allowed: Iterable[str]) -> None:
    """``ConfigError`` naming the field unless ``value`` is one of ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ConfigError(f"unknown {name} {value!r}; valid: {', '.join(allowed)}")


def check_positive(name: str, value: int) -> None:
    """``ConfigError`` naming the field unless ``value >= 1``."""
    if value < 1:
        raise ConfigError(f"{name} must be >= 1, got {value}")


def coerce_value(name: str, value: Any, kind: Any) -> Any:
    """Convert a CLI/YAML value to the type ``kind``, rejecting (naming ``name``) what does
    not fit. Strings from the command line become booleans, numbers or None."""
    args = typing.get_args(kind)
    if type(None) in args:  # an optional field: None (also "none"/"null" from the CLI) or a value
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        kind = next(a for a in args if a is not type(None))
    if typing.get_origin(kind) is dict or kind is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping, got {value!r}")
        return dict(value)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if kind is float:
        if isinstance(value, bool):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return value
    return value  # pragma: no cover


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The resolved type hints of a dataclass's fields."""
    return typing.get_type_hints(cls)


def parse_dataclass(cls: type[T], data: Mapping[str, Any], what: str, prefix: str = "") -> T:
    """An instance of the dataclass ``cls`` from ``data`` (YAML or CLI values): unknown keys and
    values of the wrong type raise a one-line ``ConfigError`` that names ``prefix + field``
    (``what`` names the whole, e.g. "option(s) of workload 'dit'"). Checks in the dataclass's
    ``__post_init__`` that raise ``ValueError`` are turned into ``ConfigError`` too."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or what} must be a mapping, got {data!r}")
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in known]
    if unknown:
        raise unknown_fields_error(unknown, known, what)
    hints = field_types(cls)
    values = {k: coerce_value(f"{prefix}{k}", v, hints[k]) for k, v in data.items()}
    try:
        return cls(**values)
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def non_default(instance: Any) -> dict[str, Any]:
    """The fields of a dataclass instance that differ from the class's defaults."""
    default = type(instance)()
    return {
        f.name: getattr(instance, f.name)
        for f in dataclasses.fields(instance)
        if getattr(instance, f.name) != getattr(default, f.name)
    }


__all__ = [
    "ConfigError",
    "check_choice",
    "check_positive",
    "coerce_value",
    "field_types",
    "non_default",
    "parse_dataclass",
    "unknown_fields_error",
]
