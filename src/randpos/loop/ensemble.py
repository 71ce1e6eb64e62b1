"""Many runs per device: grouping compatible runs into ensembles, and the default strategy.

An *ensemble* is a :class:`randpos.loop.trainer.Trainer` with K > 1 members: K runs whose configs
differ only in ``seed`` and ``learning_rate`` (:func:`ensemble_key`), stepped as one batched
computation with the numbers of K separate runs, to float rounding (the loop is the same one
every run goes through; :mod:`randpos.loop.trainer` explains how and how exactly). This module
groups runs into such ensembles (:func:`group_compatible`, used by the sweep), runs a group
from a sweep worker (:func:`ensemble_run`), and says how to run many models on a device
(:func:`best_strategy`; docs/performance.md has the measurements).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from randpos.core.seeding import resolve_device
from randpos.loop.identity import ENSEMBLE_VARYING_FIELDS, ensemble_key
from randpos.loop.trainer import EXECUTIONS
from randpos.loop.training import train_runs
from randpos.workloads import resolve_config
from randpos.workloads.config import TrainConfig

#: The config fields in which the members of one ensemble may differ.
VARYING_FIELDS = ENSEMBLE_VARYING_FIELDS


# ----------------------------------------------------------------------------- grouping
def group_compatible(
    configs: Sequence[TrainConfig], max_size: int | None = None
) -> list[list[int]]:
    """Indices of ``configs`` grouped into ensembles, in order of first appearance.

    Configs with the same :func:`ensemble_key` share a group; groups larger than ``max_size``
    are split into consecutive chunks. Every index appears exactly once.
    """
    if max_size is not None and max_size < 1:
        raise ValueError(f"max_size must be >= 1, got {max_size}")
    groups: dict[str, list[int]] = {}
    for index, config in enumerate(configs):
        groups.setdefault(ensemble_key(config), []).append(index)
    out: list[list[int]] = []
    for members in groups.values():
        size = max_size or len(members)
        out.extend(members[i : i + size] for i in range(0, len(members), size))
    return out


def ensemble_run(
    configs: Sequence[dict[str, Any]],
    out_dirs: Sequence[str | Path],
    resume: bool,
    sweep: str | None = None,
) -> list[dict[str, Any] | BaseException]:
    """The ensemble counterpart of the sweep's per-run function: resolved config dicts and run
    directories in, one outcome per run out (its summary, or the exception that ended it);
    ``sweep`` groups the runs in their loggers."""
    return train_runs(
        [resolve_config(c) for c in configs], out_dirs, resume=resume, progress=False, sweep=sweep
    )


# ----------------------------------------------------------------------------- strategy
#: Runs per ensemble on one GPU (best_strategy; reasoned, not measured: docs/performance.md).
GPU_ENSEMBLE_SIZE = 32


@dataclass(frozen=True)
class Strategy:
    """How to run many independent models on one device (docs/performance.md).

    kind: "ensemble": groups of up to ``ensemble_size`` compatible runs
          (:func:`group_compatible`), each group one :func:`randpos.loop.training.train_runs`
          call with the given ``execution``, ``workers`` such calls at a time (one per GPU);
          "processes": ``workers`` processes, one single-member run each.
    threads: torch intra-op threads per process (0: torch's default).
    """

    kind: str
    workers: int
    threads: int
    ensemble_size: int
    execution: str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """The strategy as a plain dict (for a benchmark's record)."""
        return asdict(self)


def best_strategy(device: str | torch.device = "auto") -> Strategy:
    """The default way to run many models of the paper's configuration on ``device``.

    CPU (measured, benchmarks/throughput.py, docs/performance.md): one process per core, one
    thread each, one single-member run each. One model's step already keeps a core busy; batching
    models in one process buys nothing there (vmapped attention even loses the fused kernel),
    and intra-op threads scale worse than processes (badly so on a shared machine).

    CUDA (not measured: no GPU was available when this was written): vmapped ensembles of 32
    runs per GPU. A single small model leaves a GPU mostly idle (its step is a few hundred
    tiny kernels); K members batched under vmap do K times the work per kernel.
    """

    dev = resolve_device(str(device))
    if dev.type == "cuda":
        return Strategy(
            kind="ensemble",
            workers=max(1, torch.cuda.device_count()),
            threads=0,
            ensemble_size=GPU_ENSEMBLE_SIZE,
            execution="vmap",
            reason="GPU: batching members multiplies the work per kernel (unmeasured here)",
        )
    return Strategy(
        kind="processes",
        workers=max(1, os.cpu_count() or 1),
        threads=1,
        ensemble_size=1,
        execution=None,
        reason="CPU: processes x 1 thread measured fastest (docs/performance.md)",
    )


__all__ = [
    "EXECUTIONS",
    "GPU_ENSEMBLE_SIZE",
    "VARYING_FIELDS",
    "Strategy",
    "best_strategy",
    "ensemble_key",
    "ensemble_run",
    "group_compatible",
]
