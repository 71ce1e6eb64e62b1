"""Run identity, in one place: which fields count, the run id, the ensemble key.

A run's id is a 16-hex hash of its resolved config in the flat form of earlier versions
(:func:`randpos.workloads.compat.legacy_flat`), without the fields that never change its numbers
and without fields added later while they hold their defaults. So a config spelled today
(``positions:``, ``pe_options:``) and the same run spelled in an earlier flat config have one id,
and every run recorded before a field existed keeps its id.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from randpos.workloads.compat import legacy_flat, legacy_pe_defaults

#: Fields that never change a run's numbers: left out of the run id, so that moving a run to
#: another device, logging more often or to another tracker still finds the same result.
RUNTIME_FIELDS = frozenset(
    {"device", "threads", "log_every", "checkpoint_every", "compile", "logger"}
)
NON_RESULT_FIELDS = RUNTIME_FIELDS | {"progress", "out_dir", "resume"}

#: The fields in which runs that train together as one ensemble may differ.
ENSEMBLE_VARYING_FIELDS = ("seed", "learning_rate")


def hashed_unless_default() -> dict[str, Any]:
    """Fields added after runs were first recorded, with the value for which they are left out
    of the run id (so that every earlier run keeps its id): the workload and its options, the
    causal flag, the encoding options (their defaults, from the options' own dataclasses)."""
    return {
        "workload": "encoder",
        "options": {},
        "causal": False,
        "pe_options": {},
        **legacy_pe_defaults(),
    }


def canonical(value: Any) -> Any:
    """JSON-ready form whose serialization does not depend on key order or container type."""
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and value.is_integer() and not math.isinf(value):
        # 1.0 and 1 are the same setting whether YAML or a dataclass produced it.
        return int(value)
    return value


def counted_fields(config: dict[str, Any]) -> dict[str, Any]:
    """The fields of a resolved config mapping that decide its id, in the flat form."""
    skip = hashed_unless_default()
    return {
        k: v
        for k, v in legacy_flat(config).items()
        if k not in NON_RESULT_FIELDS and not (k in skip and v == skip[k])
    }


def config_hash(config: dict[str, Any]) -> str:
    """Stable 16-hex id of a resolved config mapping (sha256 of its canonical JSON)."""
    text = json.dumps(canonical(counted_fields(config)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_id(config) -> str:
    """The id of a run of ``config`` (a :class:`TrainConfig` or a resolved config mapping)."""
    return config_hash(config if isinstance(config, dict) else config.to_dict())


def ensemble_key(config) -> str:
    """Configs (or resolved config mappings) with equal keys can train as one ensemble:
    everything but seed and learning rate agrees, run-time fields included (the members share a
    device, a log and a checkpoint schedule)."""
    data = config if isinstance(config, dict) else config.to_dict()
    same = {k: v for k, v in legacy_flat(data).items() if k not in ENSEMBLE_VARYING_FIELDS}
    return json.dumps(same, sort_keys=True, default=str)


__all__ = [
    "canonical",
    "ENSEMBLE_VARYING_FIELDS",
    "NON_RESULT_FIELDS",
    "RUNTIME_FIELDS",
    "config_hash",
    "counted_fields",
    "ensemble_key",
    "hashed_unless_default",
    "run_id",
]
