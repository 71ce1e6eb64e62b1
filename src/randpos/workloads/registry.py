"""The workload registry: ``TrainConfig.workload`` names a registered workload, or gives an
importable ``module:attribute`` path (a workload defined outside the package, e.g. in a test;
sweep workers import it by that path)."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from randpos.workloads.base import Workload

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


__all__ = ["WORKLOADS", "get_workload", "register_workload"]
