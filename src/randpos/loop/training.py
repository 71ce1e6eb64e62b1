"""Training runs: ``train(config, out_dir) -> summary`` and ``train_runs`` for K at once.

Every run, of every workload, goes through the one loop of :class:`randpos.loop.trainer.Trainer`; a
single run is a trainer of one member. Read top to bottom, a step of a member is: the
curriculum picks a size; the workload draws the member's batch from its own streams; the loss
and its gradient are the workload's; gradients are clipped to global norm ``grad_clip``; Adam
steps (:mod:`randpos.loop.trainer`). Then every size 1..M is evaluated, and the run's files and
store row are written (:mod:`randpos.loop.runs`).

Robustness: SIGINT/SIGTERM stop at the next step boundary and leave a checkpoint holding the
model, the optimizer and every random stream, so ``resume=True`` continues bit-for-bit; every
file of a run is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from randpos.core.fields import ConfigError
from randpos.core.files import atomic_write_text
from randpos.core.seeding import resolve_device
from randpos.loop.identity import run_id
from randpos.loop.loggers import Evaluation, RunLoggers, on_log_callback
from randpos.loop.runs import (
    CHECKPOINT,
    PLOT,
    SUMMARY,
    StopFlag,
    TrainingInterrupted,
    load_checkpoint,
    make_summary,
    prepare_out_dir,
    read_model_file,
    write_run_files,
)
from randpos.loop.trainer import Trainer, check_compatible
from randpos.loop.trust import check_weights, config_from_file, read_summary
from randpos.workloads import build_workload
from randpos.workloads.config import TrainConfig
from randpos.workloads.evaluation import EvalResult


# ----------------------------------------------------------------------------- entry points
def train(
    config: TrainConfig,
    out_dir: str | Path | None = None,
    *,
    store=None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    sweep: str | None = None,
) -> dict[str, Any]:
    """Train, evaluate every size 1..M and write the run's files; returns the summary.

    Files in ``out_dir``: config.json, checkpoint.pt (resumable), model.safetensors,
    per_length.csv, accuracy.png, what the config's loggers write (``history.jsonl`` by
    default; :mod:`randpos.loop.loggers`) and summary.json (written last: its presence means the
    run is complete). ``store`` (a :class:`randpos.results.store.ResultsStore`) records the run;
    ``sweep`` names the sweep it belongs to (the store's and the loggers' group).
    """
    (outcome,) = train_runs(
        [config],
        None if out_dir is None else [out_dir],
        store=store,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
        sweep=sweep,
    )
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def train_runs(
    configs: Sequence[TrainConfig],
    out_dirs: Sequence[str | Path | None] | None = None,
    *,
    store=None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    sweep: str | None = None,
    compile: bool | str | None = None,
) -> list[dict[str, Any] | BaseException]:
    """:func:`train` for K compatible configs at once; one outcome per config, in order.

    An outcome is the run's summary (with ``timings["ensemble_size"]`` when K > 1), or the
    exception that ended that run alone (a diverged loss, a run directory holding a different
    finished run); the store records either. Runs already finished in their directory are
    returned as they are. Members resumed from checkpoints at different steps train as
    separate trainers. A signal stops all members at the next step boundary with their
    checkpoints on disk (``TrainingInterrupted``).
    """
    configs = list(configs)
    for config in configs:
        config.validate()
    check_compatible(configs)
    # the workload checks the configs and is handed to the trainer; options are recorded in
    # their stored form (defaults left out), so a run's id does not depend on how they were spelled
    workload = build_workload(configs[0])
    configs = [
        dataclasses.replace(c, options=workload.normalize_options(c.options)) for c in configs
    ]
    outs = [None if o is None else Path(o) for o in (out_dirs or [None] * len(configs))]
    if len(outs) != len(configs):
        raise ConfigError(f"{len(configs)} configs but {len(outs)} output directories")
    outcomes: list[dict[str, Any] | BaseException | None] = [None] * len(configs)
    states: dict[int, dict[str, Any] | None] = {}
    for i, (config, out) in enumerate(zip(configs, outs, strict=True)):
        states[i] = None
        if out is None:
            continue
        prepare_out_dir(out, resume=resume, overwrite=overwrite)
        if resume and (out / SUMMARY).exists():
            summary = read_summary(out / SUMMARY)
            if summary["run_id"] == run_id(config):
                outcomes[i] = summary  # already complete: resuming a finished run is a no-op
            else:
                outcomes[i] = ConfigError(f"{out} holds a finished run with a different config")
            continue
        atomic_write_text(out / "config.json", json.dumps(config.to_dict(), indent=2))
        if resume and (out / CHECKPOINT).exists():
            states[i] = load_checkpoint(out / CHECKPOINT)
    todo = [i for i in range(len(configs)) if outcomes[i] is None]
    by_step: dict[int, list[int]] = {}
    for i in todo:
        by_step.setdefault(states[i]["step"] if states[i] else 0, []).append(i)
    for members in by_step.values():
        results = _train_members(
            workload,
            [configs[i] for i in members],
            [outs[i] for i in members],
            [states[i] for i in members],
            store=store,
            progress=progress,
            sweep=sweep,
            compile=compile,
        )
        for i, result in zip(members, results, strict=True):
            outcomes[i] = result
    return outcomes  # type: ignore[return-value]


def _train_members(workload, configs, outs, states, *, store, progress, sweep, compile):
    rids = [run_id(c) for c in configs]
    trainer = Trainer(configs, workload=workload, compile=compile)
    trainer.load_states(states, [out / CHECKPOINT if out is not None else None for out in outs])
    loggers = open_loggers(trainer, rids, outs, sweep)
    if store is not None:
        for rid, config, out in zip(rids, configs, outs, strict=True):
            store.start_run(rid, config.to_dict(), sweep=sweep, out_dir=str(out) if out else None)
    checkpoints = [out / CHECKPOINT if out is not None else None for out in outs]
    try:
        stop = StopFlag()
        with stop.installed():
            trainer.fit(
                checkpoints=checkpoints,
                stop=stop,
                progress=progress,
                on_log=on_log_callback(loggers, heartbeat(store, rids)),
            )
            eval_started = time.perf_counter()
            results = trainer.evaluate(progress=progress, stop=stop)
            eval_seconds = time.perf_counter() - eval_started
    except TrainingInterrupted:
        close_loggers(loggers)
        raise
    except BaseException as exc:
        close_loggers(loggers)
        if store is not None and not isinstance(exc, KeyboardInterrupt):
            for rid in rids:
                store.fail_run(rid, f"{type(exc).__name__}: {exc}")
        raise
    outcomes: list[dict[str, Any] | BaseException] = []
    for i, (member, result, rid, out) in enumerate(
        zip(trainer.members, results, rids, outs, strict=True)
    ):
        if i in trainer.failed:
            error = trainer.failed[i]
            if store is not None:
                store.fail_run(rid, f"{type(error).__name__}: {error}")
            outcomes.append(error)
            continue
        summary = make_summary(trainer, i, result, rid, eval_seconds)
        if trainer.size > 1:
            summary["timings"]["ensemble_size"] = trainer.size
        if out is not None:
            write_run_files(out, member, result, summary, trainer.workload, i)
            loggers[i].log_evaluation(
                Evaluation(
                    trainer.workload.size_name,
                    trainer.workload.metric,
                    dict(result.per_length),
                    summary,
                    dict(result.metrics or {}),
                    out / PLOT,
                )
            )
        if store is not None:
            store.finish_run(rid, summary, result.per_length, summary["timings"])
        outcomes.append(summary)
    close_loggers(loggers)
    return outcomes


def open_loggers(trainer, rids, outs, sweep) -> list[RunLoggers | None]:
    """Each member's loggers (those its config's run-time field ``logger`` names; None for a
    member without a run directory), its id and config logged; ``sweep`` is their group."""
    loggers: list[RunLoggers | None] = []
    try:
        for member, rid, out in zip(trainer.members, rids, outs, strict=True):
            if out is None:
                loggers.append(None)
                continue
            loggers.append(RunLoggers(member.config.logger, out, sweep, member.history))
            loggers[-1].log_config(rid, member.config.to_dict())
    except BaseException:
        close_loggers(loggers)
        raise
    return loggers


def close_loggers(loggers: Sequence[RunLoggers | None]) -> None:
    """Close every member's loggers (a W&B run is finished, event files flushed)."""
    for run_loggers in loggers:
        if run_loggers is not None:
            run_loggers.close()


def heartbeat(store, rids: str | list[str], every_s: float = 10.0):
    """A log callback telling the store (at most every ``every_s``) that the runs are alive."""
    if store is None:
        return None
    last = [0.0]

    def beat(*_record) -> None:
        now = time.monotonic()
        if now - last[0] >= every_s:
            last[0] = now
            store.heartbeat(rids)

    return beat


# ----------------------------------------------------------------------------- finished runs
def evaluate_run(
    run_dir: str | Path,
    *,
    device: str = "auto",
    eval_max_length: int | None = None,
    eval_positions: str | None = None,
    progress: bool = True,
    trust_workload: str | Sequence[str] | None = None,
) -> tuple[EvalResult, TrainConfig]:
    """Evaluate a finished (or checkpointed) run of any workload again, on sizes
    1..``eval_max_length`` with the position mode ``eval_positions`` (default: the run's),
    through the same loop that evaluated it first (``randpos evaluate``). Returns the result
    and the run's config with those two settings applied. ``trust_workload``: the
    ``module:Class`` workload the run may name (:func:`load_model`)."""
    model, config = load_model(run_dir, device, trust_workload=trust_workload)
    trainer = Trainer(config)
    trainer.load_weights([model.state_dict()])
    changes = {"eval_max_length": eval_max_length, "positions.eval": eval_positions}
    config = config.replace(**{k: v for k, v in changes.items() if v is not None})
    stop = StopFlag()
    with stop.installed():
        (result,) = trainer.evaluate(
            progress=progress,
            mode=config.positions.eval,
            lengths=trainer.workload.sizes_up_to(config.eval_max_length),
            stop=stop,
        )
    return result, config


def predict_run(
    run_dir: str | Path,
    length: int,
    *,
    count: int = 3,
    seed: int = 0,
    eval_positions: str | None = None,
    decode_positions: str | None = None,
    device: str = "auto",
    trust_workload: str | Sequence[str] | None = None,
) -> tuple[list[dict[str, Any]], TrainConfig]:
    """``count`` fresh examples of the run's task at ``length`` with the model's outputs
    (``randpos generate``), as the run's workload writes them
    (:meth:`randpos.workloads.base.Workload.examples`): for each its input, target and output
    tokens, the positions it was given and the count of correct answer tokens. A decoder
    generates token by token with its KV cache; an encoder answers in one pass. Positions follow
    the run's evaluation mode (``eval_positions``) and, for a decoder, ``decode_positions``.
    ``trust_workload``: the ``module:Class`` workload the run may name (:func:`load_model`)."""

    if not isinstance(length, int) or length < 1:
        raise ConfigError(f"--length must be a positive integer, got {length!r}")
    model, config = load_model(run_dir, device, trust_workload=trust_workload)
    changes = {"positions.eval": eval_positions}
    if decode_positions is not None:
        changes["options"] = {**config.options, "decode_positions": decode_positions}
    config = config.replace(**{k: v for k, v in changes.items() if v is not None})
    workload = build_workload(config)
    model.eval()
    with torch.inference_mode():
        rows = workload.examples(model, length, count, seed)
    return rows, config


def load_model(
    run_dir: str | Path,
    device: str = "auto",
    *,
    trust_workload: str | Sequence[str] | None = None,
) -> tuple[torch.nn.Module, TrainConfig]:
    """Load a finished run's model (model.safetensors) or a checkpoint.pt, without running
    anything the files hold (:mod:`randpos.loop.trust`): a config naming a ``module:Class``
    workload is refused unless that path is in ``trust_workload``, and files that are not what
    randpos writes, or do not fit the model their config describes, give a one-line
    ``ConfigError``."""
    run_dir = Path(run_dir)
    weights_path = run_dir / "model.safetensors"
    dev = resolve_device(device)
    if weights_path.exists():
        source = weights_path
        weights, raw = read_model_file(weights_path)
    elif (run_dir / CHECKPOINT).exists():
        source = run_dir / CHECKPOINT
        state = load_checkpoint(source)
        weights, raw = state["model"], state["config"]
    else:
        raise ConfigError(f"no model.safetensors or {CHECKPOINT} in {run_dir}")
    config = config_from_file(raw, source, trust_workload).replace(device=str(dev))
    workload = build_workload(config)
    model = workload.build_model(torch.Generator())
    check_weights(model, weights, source)
    model.load_state_dict(weights)
    return model.to(dev), config


__all__ = [
    "CHECKPOINT",
    "SUMMARY",
    "StopFlag",
    "Trainer",
    "TrainConfig",
    "TrainingInterrupted",
    "evaluate_run",
    "load_model",
    "predict_run",
    "run_id",
    "train",
    "train_runs",
]
