"""Workloads: the kinds of model the one training loop trains (docs/workloads.md).

``get_workload(name)`` returns the class registered as ``name`` (``TrainConfig.workload``);
``encoder`` (the algorithmic tasks on the reference encoder) is the default.
``resolve_config(data)`` turns a preset, a sweep run or a command line into a checked
:class:`TrainConfig` (the workload's own defaults under the given values);
``build_workload(config)`` builds the workload a config names.
"""

from randpos.workloads import (  # noqa: F401 (registers them)
    arithmetic,
    arpg,
    decoder,
    encoder,
    images,
    long_context,
)
from randpos.workloads.base import Batch, Models, Workload
from randpos.workloads.config import TrainConfig
from randpos.workloads.registry import (
    WORKLOADS,
    build_workload,
    get_workload,
    register_workload,
    resolve_config,
    workload_class,
)

DEFAULT_WORKLOAD = "encoder"

__all__ = [
    "DEFAULT_WORKLOAD",
    "WORKLOADS",
    "Batch",
    "Models",
    "TrainConfig",
    "Workload",
    "build_workload",
    "get_workload",
    "register_workload",
    "resolve_config",
    "workload_class",
]
