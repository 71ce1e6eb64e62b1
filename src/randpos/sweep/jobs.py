"""What a worker runs for a job: one run, a group as one ensemble, or a test stand-in."""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import random
import time
from collections.abc import Callable
from pathlib import Path

from randpos.core.files import atomic_write_text
from randpos.loop.ensemble import ensemble_run
from randpos.loop.identity import config_hash
from randpos.loop.training import train
from randpos.sweep.plan import SweepError
from randpos.workloads import resolve_config
from randpos.workloads.compat import config_value

SUMMARY = "summary.json"
CHECKPOINT = "checkpoint.pt"

RunFn = Callable[[dict, Path, bool], dict]  # (resolved config, run dir, resume) -> summary
# (resolved configs, run dirs, resume) -> per run: its summary, or the exception that ended it
GroupFn = Callable[[list[dict], list[Path], bool], list]


def train_run(config: dict, out_dir: Path, resume: bool, sweep: str | None = None) -> dict:
    """The default run function: :func:`randpos.loop.training.train` on one resolved config;
    ``sweep`` (bound by the leader) groups the run in its loggers."""

    return train(resolve_config(config), out_dir, resume=resume, progress=False, sweep=sweep)


def train_group(
    configs: list[dict], out_dirs: list[Path], resume: bool, sweep: str | None = None
) -> list:
    """The default group function: compatible runs trained as one ensemble
    (:func:`randpos.loop.ensemble.ensemble_run`); one summary or exception per run."""

    return ensemble_run(configs, out_dirs, resume, sweep=sweep)


class EachRun:
    """A group function that runs the members one after another with a run function: what a
    sweep with a custom ``run_fn`` (tests, demos) does with a group. Picklable for workers."""

    def __init__(self, run_fn: RunFn) -> None:
        self.run_fn = run_fn

    def __call__(self, configs: list[dict], out_dirs: list[Path], resume: bool) -> list:
        outcomes: list = []
        for config, out_dir in zip(configs, out_dirs, strict=True):
            try:
                outcomes.append(self.run_fn(config, Path(out_dir), resume))
            except Exception as exc:
                if _interrupted(exc):
                    raise  # a signal stops the whole job; unstarted members are released
                outcomes.append(exc)
        return outcomes


def fake_run(
    config: dict,
    out_dir: Path,
    resume: bool,
    *,
    seconds: float = 0.0,
    fail_tasks: tuple[str, ...] = (),
) -> dict:
    """A stand-in trainer for tests and demos: deterministic made-up accuracies, no torch.

    Mimics the real trainer's contract: a checkpoint while "training" (``seconds`` long), then
    ``summary.json`` written atomically; plain PEs fall to chance past N, randomized ones decay
    slowly. Fails (raises) for tasks in ``fail_tasks``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if config["task"] in fail_tasks:
        raise RuntimeError(f"fake failure for task {config['task']}")
    checkpoint = out_dir / "checkpoint.json"
    done = 0.0
    if resume and checkpoint.exists():
        done = json.loads(checkpoint.read_text())["seconds_done"]
    while done < seconds:
        chunk = min(0.05, seconds - done)
        time.sleep(chunk)
        done += chunk
        atomic_write_text(checkpoint, json.dumps({"seconds_done": done}))
    rid = config_hash(config)
    rng = random.Random(rid)
    n, m = config["max_train_length"], config["eval_max_length"]
    # Randomized runs extrapolate (slow decay); learning rate and seed add spread.
    randomized = config_value(config, "randomized")
    decay = 150.0 if randomized else 8.0
    skill = 0.75 + 0.25 * rng.random()
    per_length = {}
    for length in range(1, m + 1):
        over = max(0, length - n)
        acc = 0.5 + 0.5 * skill * math.exp(-over / decay) + rng.uniform(-0.02, 0.02)
        per_length[str(length)] = min(1.0, max(0.0, acc))
    id_acc = sum(per_length[str(i)] for i in range(1, n + 1)) / n
    ood_acc = sum(per_length[str(i)] for i in range(n + 1, m + 1)) / (m - n)
    summary = {
        "run_id": rid,
        "task": config["task"],
        "pe": config["pe"],
        "randomized": randomized,
        "steps": config["steps"],
        "seed": config["seed"],
        "learning_rate": config["learning_rate"],
        "max_train_length": n,
        "eval_max_length": m,
        "id_accuracy": id_acc,
        "ood_accuracy": ood_acc,
        "per_length": per_length,
        "resumed": bool(resume and done > 0),
        "timings": {"train_seconds": round(time.perf_counter() - started, 3), "eval_seconds": 0},
        "config": config,
    }
    atomic_write_text(out_dir / SUMMARY, json.dumps(summary))
    return summary


def load_run_fn(spec: str | None) -> RunFn:
    """``module:function`` (a run function), or None for the real trainer."""
    if not spec:
        return train_run
    module, sep, attr = spec.partition(":")
    if not sep:
        raise SweepError(f"--run-fn expects module:function, got {spec!r}")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise SweepError(f"cannot load run function {spec!r}: {exc}") from None


def _interrupted(exc: BaseException) -> bool:
    # by name: the sweep module does not import torch (randpos.loop.training)
    return type(exc).__name__ == "TrainingInterrupted"
