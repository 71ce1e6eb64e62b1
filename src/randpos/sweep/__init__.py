"""Sweeps: a grid of configs, expanded into runs, executed by local processes or a Ray cluster.

A sweep file (YAML; the ones that ship with randpos are in ``randpos/sweep/presets/``, a user's
own in ``./configs/sweeps/``, looked up first)::

    name: small                      # default: the file's stem
    preset: quick                    # optional: a config preset (a name or a path)
    base: {steps: 200, ...}          # TrainConfig overrides shared by every run (over preset)
    grid:                            # each axis a list; the runs are the cartesian product
      task: [parity_check, reverse_string]
      pe: [none, rope]
      randomized: [false, true]
      seed: [0, 1]
    exclude:                         # optional: drop combinations matching every key of a rule
      - {pe: none, randomized: true}
    include:                         # optional: extra runs (base + these fields)
      - {task: parity_check, pe: alibi}

Each run is identified by the hash of its resolved config
(:func:`randpos.results.store.config_hash`), so a sweep is idempotent: re-running it skips finished
runs, re-runs runs whose owner died (resuming from their checkpoint in ``<runs_dir>/<run_id>/``)
and retries failed runs only with ``retry_failed``.

Runs that differ only in seed and learning rate can train together as one ensemble (K models
stepped as one batched computation, :mod:`randpos.loop.ensemble`): the leader groups them into jobs
of up to ``ensemble_size`` runs, by default 32 on GPUs and 1 on CPUs (where separate
single-thread processes are faster; docs/performance.md).

The sweep process (the leader) is the only one that writes to the store; workers train and
return their summaries. That keeps the store on the leader's disk, so a Ray cluster needs no
shared filesystem for results (only for resuming checkpoints across nodes).

The package, by seam: :mod:`~randpos.sweep.plan` (sweep files, grids, expansion into runs),
:mod:`~randpos.sweep.jobs` (what a worker runs), :mod:`~randpos.sweep.executors` (local
processes, Ray), :mod:`~randpos.sweep.run` (the leader: claiming, grouping, recording),
:mod:`~randpos.sweep.status`; the commands are :mod:`randpos.cli.sweeps`.
"""

from randpos.sweep.executors import (
    Job,
    LocalExecutor,
    Outcome,
    RayExecutor,
    execute,
    make_executor,
)
from randpos.sweep.jobs import (
    CHECKPOINT,
    SUMMARY,
    EachRun,
    GroupFn,
    RunFn,
    fake_run,
    load_run_fn,
    train_group,
    train_run,
)
from randpos.sweep.plan import (
    SWEEP_KEYS,
    SweepError,
    SweepSpec,
    config_fields,
    expand,
    find_spec,
    load_spec,
    parse_spec,
    resolve_config,
)
from randpos.sweep.run import (
    SweepResult,
    default_ensemble_size,
    run_sweep,
)
from randpos.sweep.status import (
    sweep_status,
)

__all__ = [
    "execute",
    "load_run_fn",
    "CHECKPOINT",
    "EachRun",
    "GroupFn",
    "Job",
    "LocalExecutor",
    "Outcome",
    "RayExecutor",
    "RunFn",
    "SUMMARY",
    "SWEEP_KEYS",
    "SweepError",
    "SweepResult",
    "SweepSpec",
    "config_fields",
    "default_ensemble_size",
    "expand",
    "fake_run",
    "find_spec",
    "load_spec",
    "make_executor",
    "parse_spec",
    "resolve_config",
    "run_sweep",
    "sweep_status",
    "train_group",
    "train_run",
]
