"""Workloads: the kinds of model the one training loop trains (docs/workloads.md).

``get_workload(name)`` returns the class registered as ``name`` (``TrainConfig.workload``);
``encoder`` (the algorithmic tasks on the reference encoder) is the default.
"""

from randpos.workloads import arpg, decoder, encoder, vision  # noqa: F401 (registers them)
from randpos.workloads.base import Batch, Models, Workload
from randpos.workloads.registry import WORKLOADS, get_workload, register_workload

DEFAULT_WORKLOAD = "encoder"

__all__ = [
    "DEFAULT_WORKLOAD",
    "WORKLOADS",
    "Batch",
    "Models",
    "Workload",
    "get_workload",
    "register_workload",
]
