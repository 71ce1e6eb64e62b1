"""The workload registry: ``TrainConfig.workload`` names a registered workload, or gives an
importable ``module:attribute`` path (a workload defined outside the package, e.g. in a test;
sweep workers import it by that path)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from randpos.core.fields import ConfigError
from randpos.workloads.base import Workload
from randpos.workloads.config import TrainConfig

#: name -> Workload subclass, filled by :func:`register_workload`.
WORKLOADS: dict[str, type[Workload]] = {}


def register_workload(name: str) -> Callable[[type[Workload]], type[Workload]]:
    """Class decorator: make a workload available as ``TrainConfig.workload = name``."""

    def decorator(cls: type[Workload]) -> type[Workload]:
        if WORKLOADS.get(name, cls) is not cls:
            raise ValueError(f"workload {name!r} is registered twice")
        cls.name = name
        WORKLOADS[name] = cls
        return cls

    return decorator


def get_workload(name: str) -> type[Workload]:
    """The workload class for ``name``; ``ValueError`` listing the valid names otherwise."""
    if name in WORKLOADS:
        return WORKLOADS[name]
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"cannot import workload {name!r}: {exc}") from None
        if not (isinstance(cls, type) and issubclass(cls, Workload)):
            raise ValueError(f"workload {name!r} is not a randpos Workload subclass")
        cls.name = name
        WORKLOADS[name] = cls
        return cls
    raise ValueError(
        f"unknown workload {name!r}; valid: {', '.join(WORKLOADS)} "
        "(or an importable module:Class path)"
    )


def workload_class(config: TrainConfig | dict[str, Any]) -> type[Workload]:
    """The workload class a config (or a mapping with a ``workload`` key) names; a bad name is
    a one-line ``ConfigError``."""
    name = config.get("workload", "encoder") if isinstance(config, dict) else config.workload
    try:
        return get_workload(name)
    except ValueError as exc:
        raise ConfigError(f"workload: {exc}") from None


def resolve_config(*layers: dict[str, Any] | None, **overrides: Any) -> TrainConfig:
    """The config that ``layers`` (then ``overrides``) describe, checked in full: the named
    workload's own defaults (:attr:`Workload.defaults`), then each layer over the last, the
    workload's options in their stored form (defaults dropped), and the workload's checks.
    This is how a preset, a sweep run or a command line becomes a config.

    A later layer wins field by field whatever spelling either uses (a flat ``max_position``
    over an earlier ``positions.max_position``, or the reverse), and a ``positions``,
    ``pe_options`` or ``options`` mapping completes the earlier ones instead of replacing them.
    """
    given = [layer for layer in (*layers, overrides) if layer]
    cls = workload_class({key: value for layer in given for key, value in layer.items()})
    config = TrainConfig.from_dict(cls.defaults, check=False) if cls.defaults else TrainConfig()
    for layer in given:
        config = TrainConfig.from_dict(layer, base=config, check=False)
    config.validate()
    config.options = cls.normalize_options(config.options)
    cls.validate(config)
    return config


def build_workload(config: TrainConfig) -> Workload:
    """The workload a config names, built (and so checked) for that config."""
    return workload_class(config)(config)


__all__ = [
    "WORKLOADS",
    "build_workload",
    "get_workload",
    "register_workload",
    "resolve_config",
    "workload_class",
]
