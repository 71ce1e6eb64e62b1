"""Moved: the run configuration is :mod:`randpos.workloads.config`, field coercion
:mod:`randpos.core.fields`, run identity :mod:`randpos.loop.identity` (kept importable until the
tests move with the package tree)."""

from randpos.core.fields import ConfigError, check_choice, coerce_value, unknown_fields_error
from randpos.loop.identity import ENSEMBLE_VARYING_FIELDS, RUNTIME_FIELDS, ensemble_key
from randpos.workloads.config import (
    CONFIG_DIR,
    CURRICULA,
    PRECISIONS,
    TrainConfig,
    find_preset,
    load_yaml,
)

__all__ = [
    "CONFIG_DIR",
    "CURRICULA",
    "ENSEMBLE_VARYING_FIELDS",
    "PRECISIONS",
    "RUNTIME_FIELDS",
    "ConfigError",
    "TrainConfig",
    "check_choice",
    "coerce_value",
    "ensemble_key",
    "find_preset",
    "load_yaml",
    "unknown_fields_error",
]
