"""Sweeps: a grid of configs, expanded into runs, executed by local processes or a Ray cluster.

A sweep file (YAML; presets in ``configs/sweeps/``)::

    name: small                      # default: the file's stem
    preset: quick                    # optional: a config preset (configs/NAME.yaml or a path)
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

Each run is identified by the hash of its resolved config (:func:`randpos.store.config_hash`),
so a sweep is idempotent: re-running it skips finished runs, re-runs runs whose owner died
(resuming from their checkpoint in ``<runs_dir>/<run_id>/``) and retries failed runs only with
``retry_failed``.

Runs that differ only in seed and learning rate can train together as one ensemble (K models
stepped as one batched computation, :mod:`randpos.ensemble`): the leader groups them into jobs
of up to ``ensemble_size`` runs, by default 32 on GPUs and 1 on CPUs (where separate
single-thread processes are faster; docs/performance.md).

The sweep process (the leader) is the only one that writes to the store; workers train and
return their summaries. That keeps the store on the leader's disk, so a Ray cluster needs no
shared filesystem for results (only for resuming checkpoints across nodes).
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.util
import itertools
import json
import math
import os
import random
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from randpos.config import ConfigError, ensemble_key, find_preset
from randpos.store import STALE_AFTER_S, ResultsStore, config_hash, default_store_path

SWEEP_KEYS = ("name", "description", "preset", "base", "grid", "exclude", "include")
SUMMARY = "summary.json"
CHECKPOINT = "checkpoint.pt"

RunFn = Callable[[dict, Path, bool], dict]  # (resolved config, run dir, resume) -> summary
# (resolved configs, run dirs, resume) -> per run: its summary, or the exception that ended it
GroupFn = Callable[[list[dict], list[Path], bool], list]


class SweepError(ValueError):
    """A sweep file or request is invalid; the message says what and what is allowed."""


# ====================================================================================== spec
@dataclass
class SweepSpec:
    name: str
    grid: dict[str, list]
    base: dict[str, Any] = field(default_factory=dict)
    exclude: list[dict[str, Any]] = field(default_factory=list)
    include: list[dict[str, Any]] = field(default_factory=list)
    description: str = ""
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("source")
        return out


def config_fields() -> list[str]:
    from randpos.config import TrainConfig

    return TrainConfig.field_names()


def resolve_config(data: dict[str, Any]) -> dict[str, Any]:
    """Defaults filled in and every value checked (TrainConfig.from_dict), as a plain dict."""
    from randpos.config import TrainConfig

    return TrainConfig.from_dict(data).to_dict()


def find_spec(name_or_path: str | os.PathLike) -> Path:
    """A sweep file path, or the name of a preset in ``configs/sweeps/``."""
    try:
        return find_preset(name_or_path, sub="sweeps", kind="sweep")
    except ConfigError as exc:
        raise SweepError(str(exc)) from None


def load_spec(name_or_path: str | os.PathLike) -> SweepSpec:
    path = find_spec(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SweepError(f"cannot parse {path}: {exc}") from None
    return parse_spec(data, source=str(path), default_name=path.stem)


def _unknown(kind: str, keys: Iterable[str], allowed: Iterable[str]) -> SweepError:
    allowed = sorted(allowed)
    hints = []
    for key in keys:
        close = difflib.get_close_matches(str(key), allowed, n=1)
        hints.append(repr(key) + (f" (did you mean {close[0]!r}?)" if close else ""))
    return SweepError(f"unknown {kind}: {', '.join(hints)}; allowed: {', '.join(allowed)}")


def parse_spec(
    data: Any, *, source: str | None = None, default_name: str | None = None
) -> SweepSpec:
    """Check a sweep mapping's structure and field names (values are checked by expand)."""
    where = f"{source}: " if source else ""
    if not isinstance(data, dict):
        raise SweepError(
            f"{where}a sweep must be a mapping with a 'grid', got {type(data).__name__}"
        )
    unknown = [k for k in data if k not in SWEEP_KEYS]
    if unknown:
        raise SweepError(where + str(_unknown("sweep key(s)", unknown, SWEEP_KEYS)))
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name.strip():
        raise SweepError(f"{where}'name' must be a non-empty string, got {name!r}")
    fields_ = config_fields()

    def check_fields(section: str, mapping: Any) -> dict:
        if mapping is None:
            return {}
        if not isinstance(mapping, dict):
            raise SweepError(
                f"{where}{section!r} must be a mapping of config fields, "
                f"got {type(mapping).__name__}"
            )
        bad = [k for k in mapping if k not in fields_]
        if bad:
            raise SweepError(where + str(_unknown(f"config field(s) in {section!r}", bad, fields_)))
        return dict(mapping)

    base = check_fields("base", data.get("base"))
    preset = data.get("preset")
    if preset is not None:
        base = {**check_fields(f"preset {preset!r}", _load_preset(preset, source)), **base}
    if "grid" not in data:
        raise SweepError(f"{where}no 'grid': list at least one config field with its values")
    grid = check_fields("grid", data["grid"])
    for key, values in grid.items():
        if not isinstance(values, list):
            raise SweepError(
                f"{where}grid.{key} must be a list of values, got {values!r} "
                f"(put a single fixed value under 'base')"
            )
        if not values:
            raise SweepError(f"{where}grid.{key} is empty: the grid would expand to no runs")
    rules: dict[str, list[dict]] = {}
    for section in ("exclude", "include"):
        items = data.get(section) or []
        if not isinstance(items, list):
            raise SweepError(f"{where}{section!r} must be a list of mappings")
        rules[section] = [check_fields(f"{section}[{i}]", item) for i, item in enumerate(items)]
    if not grid and not rules["include"]:
        raise SweepError(f"{where}empty grid: no axes and no 'include' runs")
    description = data.get("description") or ""
    return SweepSpec(
        name=name.strip(),
        grid=grid,
        base=base,
        exclude=rules["exclude"],
        include=rules["include"],
        description=str(description),
        source=source,
    )


def _load_preset(preset: Any, source: str | None) -> dict:
    """A TrainConfig preset: a path (relative to the sweep file) or a name in configs/."""
    where = f"{source}: " if source else ""
    if not isinstance(preset, str) or not preset:
        raise SweepError(f"{where}'preset' must be a config name or path, got {preset!r}")
    try:
        path = find_preset(preset, kind="preset", near=Path(source).parent if source else None)
    except ConfigError as exc:
        raise SweepError(f"{where}{exc}") from None
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise SweepError(f"{where}preset {path} is not a mapping of config fields")
    return data


def _matches(config: dict, rule: dict) -> bool:
    for key, wanted in rule.items():
        options = wanted if isinstance(wanted, list) else [wanted]
        if config.get(key) not in options:
            return False
    return True


def expand(
    spec: SweepSpec, *, resolve: Callable[[dict], dict] = resolve_config
) -> dict[str, dict[str, Any]]:
    """The sweep's runs: ``{run_id: resolved config}`` in grid order, duplicates merged.

    Every config is resolved and validated before anything is returned, so a bad value stops
    the sweep before it writes anything; the error names the run's grid values.
    """
    keys = list(spec.grid)
    combos = [
        dict(zip(keys, values, strict=True)) for values in itertools.product(*spec.grid.values())
    ]
    candidates = [{**spec.base, **combo} for combo in combos] if keys else []
    candidates += [{**spec.base, **extra} for extra in spec.include]
    runs: dict[str, dict[str, Any]] = {}
    excluded = 0
    for raw in candidates:
        try:
            config = resolve(raw)
        except ValueError as exc:
            shown = {k: raw[k] for k in keys if k in raw} or raw
            detail = ", ".join(f"{k}={v!r}" for k, v in shown.items())
            where = f"{spec.source}: " if spec.source else ""
            raise SweepError(f"{where}run ({detail}): {exc}") from None
        if any(_matches(config, rule) for rule in spec.exclude):
            excluded += 1
            continue
        runs.setdefault(config_hash(config), config)
    if not runs:
        raise SweepError(
            f"sweep {spec.name!r}: empty grid ({len(candidates)} combinations, {excluded} excluded)"
        )
    return runs


# ================================================================================ run functions
def train_run(config: dict, out_dir: Path, resume: bool) -> dict:
    """The default run function: :func:`randpos.training.train` on one resolved config."""
    from randpos.config import TrainConfig
    from randpos.training import train

    return train(TrainConfig.from_dict(config), out_dir, resume=resume, progress=False)


def train_group(configs: list[dict], out_dirs: list[Path], resume: bool) -> list:
    """The default group function: compatible runs trained as one ensemble
    (:func:`randpos.ensemble.ensemble_run`); one summary or exception per run."""
    from randpos.ensemble import ensemble_run

    return ensemble_run(configs, out_dirs, resume)


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
        _atomic_write(checkpoint, json.dumps({"seconds_done": done}))
    rid = config_hash(config)
    rng = random.Random(rid)
    n, m = config["max_train_length"], config["eval_max_length"]
    # Randomized runs extrapolate (slow decay); learning rate and seed add spread.
    decay = 150.0 if config.get("randomized") else 8.0
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
        "randomized": config["randomized"],
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
    _atomic_write(out_dir / SUMMARY, json.dumps(summary))
    return summary


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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


# ================================================================================ worker side
@dataclass
class Job:
    """Runs that one worker trains in one go: a single run, or an ensemble of compatible runs."""

    run_ids: list[str]
    configs: list[dict]
    out_dirs: list[str]
    resume: bool


@dataclass
class Outcome:
    run_id: str
    ok: bool
    summary: dict | None = None
    error: str | None = None
    interrupted: bool = False
    seconds: float = 0.0


_WORKER: dict[str, Any] = {}


def _init_worker(parent_pid: int, threads: int, gpu_queue) -> None:
    """Pool worker set-up: thread count, a GPU of its own, and death with its parent."""
    _WORKER["threads"] = threads
    _WORKER["gpu"] = gpu_queue.get() if gpu_queue is not None else None

    # A pool worker outlives a SIGKILLed leader (nothing tells it); it must not keep training
    # a run the next sweep will restart, so it exits as soon as it is orphaned.
    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True, name="randpos-orphan-watch").start()
    # The leader handles Ctrl-C; a worker's run stops through SIGTERM (checkpoint first).
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _interrupted(exc: BaseException) -> bool:
    # by name: the sweep module does not import torch (randpos.training)
    return type(exc).__name__ == "TrainingInterrupted"


def _error_text(exc: BaseException) -> str:
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    if exc.__traceback__ is not None:
        text += "\n" + "".join(traceback.format_tb(exc.__traceback__)[-3:])
    return text


def _outcome(run_id: str, result: dict | BaseException, seconds: float) -> Outcome:
    """A run's outcome from its summary or from the exception that ended it."""
    if not isinstance(result, BaseException):
        return Outcome(run_id, True, summary=_plain(result), seconds=seconds)
    if _interrupted(result):
        return Outcome(run_id, False, error=str(result), interrupted=True, seconds=seconds)
    return Outcome(run_id, False, error=_error_text(result), seconds=seconds)


def _lost(run_ids: list[str], exc: BaseException) -> list[Outcome]:
    """Failed outcomes for a job whose worker died (the pool or Ray lost it)."""
    error = f"{type(exc).__name__}: {exc}"
    return [Outcome(rid, False, error=error) for rid in run_ids]


def execute(
    job: Job,
    run_fn: RunFn,
    group_fn: GroupFn | None = None,
    threads: int | None = None,
    gpu: int | None = None,
) -> list[Outcome]:
    """Run one job in this process; one outcome per run (never raises for run errors).

    A job of one run goes to ``run_fn``, a larger one to ``group_fn`` (default: the members
    one after another through ``run_fn``)."""
    threads = threads if threads is not None else _WORKER.get("threads")
    gpu = gpu if gpu is not None else _WORKER.get("gpu")
    configs = []
    for job_config in job.configs:
        config = dict(job_config)
        # Run-time fields only (excluded from the run id): place the run and size its threads.
        if gpu is not None and str(config.get("device", "auto")) in ("auto", "cuda"):
            config["device"] = f"cuda:{gpu}"
        if threads and "threads" in config and not config["threads"]:
            config["threads"] = threads
        configs.append(config)
    if threads:
        try:
            import torch

            torch.set_num_threads(threads)
        except ImportError:  # pragma: no cover - torch is a dependency
            pass
    started = time.perf_counter()
    try:
        if len(configs) == 1:
            results = [run_fn(configs[0], Path(job.out_dirs[0]), job.resume)]
        else:
            group = group_fn or EachRun(run_fn)
            results = list(group(configs, [Path(d) for d in job.out_dirs], job.resume))
            if len(results) != len(configs):
                raise RuntimeError(
                    f"group function returned {len(results)} outcomes for {len(configs)} runs"
                )
    except Exception as exc:  # the whole job ended: every run shares its fate
        results = [exc] * len(job.run_ids)
    seconds = time.perf_counter() - started
    return [
        _outcome(rid, result, seconds) for rid, result in zip(job.run_ids, results, strict=True)
    ]


def _plain(summary: dict) -> dict:
    return json.loads(
        json.dumps(summary, default=lambda o: o.item() if hasattr(o, "item") else str(o))
    )


# ================================================================================ executors
class LocalExecutor:
    """A pool of spawned worker processes on this machine: one per GPU, else one per core."""

    name = "local"

    def __init__(self, workers: int | None = None, *, device: str = "auto") -> None:
        self.requested = workers
        self.device = device
        self.pool = None
        self.futures: dict[Any, list[str]] = {}  # future -> the job's run ids
        self.gpus = 0

    def _gpus(self) -> int:
        if self.device == "cpu":
            return 0
        try:
            import torch

            return torch.cuda.device_count() if torch.cuda.is_available() else 0
        except ImportError:  # pragma: no cover
            return 0

    def start(self, run_fn: RunFn, group_fn: GroupFn | None = None) -> int:
        import concurrent.futures
        import multiprocessing

        self.run_fn, self.group_fn = run_fn, group_fn
        ctx = multiprocessing.get_context("spawn")  # no forked torch/CUDA/SQLite state
        gpus = self.gpus = self._gpus()
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        cores = cores or 1
        if gpus:
            self.capacity = self.requested or gpus
            gpu_queue = ctx.Queue()
            for i in range(self.capacity):
                gpu_queue.put(i % gpus)
            threads = max(1, cores // self.capacity)
        else:
            # One single-threaded process per core beats fewer multi-threaded ones for models
            # this small (no intra-op parallelism to exploit at width 64).
            self.capacity = self.requested or cores
            gpu_queue = None
            threads = max(1, cores // self.capacity)
        self.pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=self.capacity,
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(os.getpid(), threads, gpu_queue),
        )
        self.describe = f"{self.capacity} local process(es), " + (
            f"{gpus} GPU(s)" if gpus else f"{threads} thread(s) each"
        )
        return self.capacity

    def submit(self, job: Job) -> None:
        future = self.pool.submit(execute, job, self.run_fn, self.group_fn)
        self.futures[future] = job.run_ids

    def poll(self, timeout: float) -> list[Outcome]:
        import concurrent.futures

        if not self.futures:
            time.sleep(timeout)
            return []
        done, _ = concurrent.futures.wait(
            list(self.futures), timeout=timeout, return_when=concurrent.futures.FIRST_COMPLETED
        )
        outcomes = []
        for future in done:
            run_ids = self.futures.pop(future)
            try:
                outcomes.extend(future.result())
            except Exception as exc:  # the worker process died (BrokenProcessPool, OOM kill)
                outcomes.extend(_lost(run_ids, exc))
        return outcomes

    def close(self, cancel: bool = False) -> None:
        if self.pool is None:
            return
        if cancel:
            # SIGTERM lets each run checkpoint before it stops (the trainer handles it).
            for proc in list(getattr(self.pool, "_processes", {}).values()):
                if proc.is_alive():
                    proc.terminate()
            self.pool.shutdown(wait=True, cancel_futures=True)
        else:
            self.pool.shutdown(wait=True)
        self.pool = None


class RayExecutor:
    """Ray tasks (one CPU, or one GPU, each) on a cluster (``address``) or a local instance."""

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus: int | None = None,
        gpus_per_run: float | None = None,
        init_kwargs: dict | None = None,
    ) -> None:
        self.address = address
        self.num_cpus = num_cpus
        self.gpus_per_run = gpus_per_run
        self.init_kwargs = init_kwargs or {}
        self.refs: dict[Any, list[str]] = {}  # object ref -> the job's run ids
        self.started_ray = False
        self.gpus = 0
        if importlib.util.find_spec("ray") is None:
            raise SweepError(
                "the ray executor needs Ray: pip install -e '.[ray]' (or pip install ray)"
            )

    def start(self, run_fn: RunFn, group_fn: GroupFn | None = None) -> int:
        try:
            import ray
        except ImportError:
            raise SweepError(
                "the ray executor needs Ray: pip install -e '.[ray]' (or pip install ray)"
            ) from None
        self.ray = ray
        if not ray.is_initialized():
            kwargs = {"include_dashboard": False, "log_to_driver": False, **self.init_kwargs}
            if self.address:
                kwargs["address"] = self.address
            elif self.num_cpus:
                kwargs["num_cpus"] = self.num_cpus
            ray.init(**kwargs)
            self.started_ray = True
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        if self.gpus_per_run is None:
            self.gpus_per_run = 1 if gpus else 0
        options: dict[str, Any] = {"num_cpus": 1, "max_retries": 0}
        if self.gpus_per_run:
            options["num_gpus"] = self.gpus_per_run
        self.remote = ray.remote(_ray_execute).options(**options)
        self.fns_ref = ray.put((run_fn, group_fn))
        if self.gpus_per_run:
            self.gpus = gpus
            self.capacity = max(1, int(gpus / self.gpus_per_run))
        else:
            self.capacity = max(1, int(resources.get("CPU", 1)))
        where = self.address or "a local Ray instance"
        self.describe = f"Ray at {where}: {self.capacity} concurrent run(s)"
        return self.capacity

    def submit(self, job: Job) -> None:
        self.refs[self.remote.remote(job, self.fns_ref)] = job.run_ids

    def poll(self, timeout: float) -> list[Outcome]:
        if not self.refs:
            time.sleep(timeout)
            return []
        ray = self.ray
        ready, _ = ray.wait(list(self.refs), num_returns=1, timeout=timeout)
        if ready:
            ready, _ = ray.wait(list(self.refs), num_returns=len(self.refs), timeout=0)
        outcomes = []
        for ref in ready:
            run_ids = self.refs.pop(ref)
            try:
                outcomes.extend(ray.get(ref))
            except Exception as exc:  # the task's worker died or Ray lost the node
                outcomes.extend(_lost(run_ids, exc))
        return outcomes

    def close(self, cancel: bool = False) -> None:
        if cancel:
            for ref in list(self.refs):
                try:
                    self.ray.cancel(ref, force=False)
                except Exception:  # noqa: BLE001 - best effort on the way out
                    pass
        self.refs.clear()
        if self.started_ray:
            self.ray.shutdown()
            self.started_ray = False


def _ray_execute(job: Job, fns: tuple[RunFn, GroupFn | None]) -> list[Outcome]:
    # Ray already pins the task to its GPU through CUDA_VISIBLE_DEVICES.
    run_fn, group_fn = fns
    gpu = 0 if os.environ.get("CUDA_VISIBLE_DEVICES") else None
    return execute(job, run_fn, group_fn, threads=1, gpu=gpu)


def make_executor(
    kind: str = "local", *, workers: int | None = None, address: str | None = None
) -> LocalExecutor | RayExecutor:
    if kind == "local":
        return LocalExecutor(workers)
    if kind == "ray":
        return RayExecutor(address, num_cpus=workers)
    raise SweepError(f"unknown executor {kind!r}; valid: local, ray")


# ================================================================================ the leader
@dataclass
class SweepResult:
    name: str
    total: int
    done: int = 0
    failed: int = 0
    skipped: int = 0  # already done before this invocation
    executed: int = 0  # runs this invocation trained
    recovered: int = 0  # finished on disk (summary.json) but not yet in the store
    failed_runs: dict[str, str] = field(default_factory=dict)
    interrupted: bool = False


def run_sweep(
    spec: SweepSpec | str | os.PathLike,
    store: ResultsStore | str | os.PathLike | None = None,
    executor: LocalExecutor | RayExecutor | str | None = None,
    *,
    run_fn: RunFn | None = None,
    group_fn: GroupFn | None = None,
    ensemble_size: int | None = None,
    runs_dir: str | os.PathLike | None = None,
    retry_failed: bool = False,
    progress: bool = True,
    stale_after: float = STALE_AFTER_S,
    poll_interval: float = 0.5,
    heartbeat_every: float = 10.0,
) -> SweepResult:
    """Run every unfinished run of a sweep; returns counts. Safe to interrupt and re-run.

    ``ensemble_size``: up to this many compatible runs (:func:`randpos.config.ensemble_key`:
    they differ only in seed and learning rate) form one job, trained by ``group_fn`` (default
    :func:`train_group`, one ensemble; with a custom ``run_fn`` and no ``group_fn``, the members
    one after another through ``run_fn``). ``None`` picks by device once the executor started:
    :func:`default_ensemble_size`.
    """
    if ensemble_size is not None and (isinstance(ensemble_size, bool) or ensemble_size < 1):
        raise SweepError(f"ensemble size must be an integer >= 1, got {ensemble_size!r}")
    if not isinstance(spec, SweepSpec):
        spec = load_spec(spec)
    plan = expand(spec)  # validates everything before the store is touched
    if not isinstance(store, ResultsStore):
        store = ResultsStore(store if store is not None else default_store_path())
    if executor is None or isinstance(executor, str):
        executor = make_executor(executor or "local")
    if group_fn is None:
        group_fn = train_group if run_fn is None else EachRun(run_fn)
    run_fn = run_fn or train_run
    runs_dir = Path(runs_dir) if runs_dir else store.path.parent / "sweeps" / spec.name

    result = SweepResult(spec.name, len(plan))
    queue: list[str] = []
    for rid in plan:
        status = store.status(rid)
        if status == "done":
            result.done += 1
            result.skipped += 1
        elif status == "failed" and not retry_failed:
            result.failed += 1
            result.failed_runs[rid] = (store.get_run(rid) or {}).get("error") or ""
        else:
            queue.append(rid)
    store.register_sweep(spec.name, spec.to_dict(), plan)
    waiting: set[str] = set()  # owned by another live process: watched until done or stale
    in_flight: dict[str, int] = {}  # run id -> number of the job it is part of
    jobs = 0
    durations: list[float] = []
    view = _SweepProgress(spec.name, result, enabled=progress)

    if not queue:
        view.message(
            f"sweep {spec.name}: nothing to do ({result.done} done, {result.failed} failed"
            + (", retry with --retry-failed" if result.failed else "")
            + ")"
        )
        return result

    capacity = executor.start(run_fn, group_fn)  # in jobs
    if ensemble_size is None:
        ensemble_size = default_ensemble_size(getattr(executor, "gpus", 0), plan.values())
    keys = {rid: ensemble_key(config) for rid, config in plan.items()}
    view.message(
        f"sweep {spec.name}: {len(plan)} runs, {result.done} done, {len(queue)} to run on "
        f"{executor.describe}"
        + (f", ensembles of up to {ensemble_size} runs" if ensemble_size > 1 else "")
        + f"; store {store.path}, run dirs {runs_dir}"
    )
    last_beat = last_check = time.monotonic()
    try:
        with view:
            while queue or in_flight or waiting:
                while queue and len(set(in_flight.values())) < capacity:
                    claimed = []
                    for rid in _take_group(queue, keys, ensemble_size):
                        state = _claim(
                            store,
                            rid,
                            plan[rid],
                            spec.name,
                            runs_dir,
                            retry_failed,
                            stale_after,
                            result,
                            view,
                        )
                        if state == "claimed":
                            claimed.append(rid)
                        elif state == "busy":
                            waiting.add(rid)
                    if not claimed:
                        continue
                    jobs += 1
                    out_dirs = [runs_dir / rid for rid in claimed]
                    resume = any(d.is_dir() and any(d.iterdir()) for d in out_dirs)
                    for rid in claimed:
                        in_flight[rid] = jobs  # first: released if submit fails
                    job = Job(
                        claimed, [plan[r] for r in claimed], [str(d) for d in out_dirs], resume
                    )
                    executor.submit(job)
                for outcome in executor.poll(poll_interval):
                    in_flight.pop(outcome.run_id, None)
                    _record(store, outcome, result, view)
                    if outcome.ok:
                        durations.append(outcome.seconds)
                now = time.monotonic()
                if in_flight and now - last_beat >= heartbeat_every:
                    store.heartbeat(in_flight)
                    last_beat = now
                if waiting and now - last_check >= max(poll_interval, 1.0):
                    last_check = now
                    for rid in sorted(waiting):
                        status = store.status(rid)
                        if status == "done":
                            waiting.discard(rid)
                            result.done += 1
                            result.skipped += 1
                        elif status == "failed" and not retry_failed:
                            waiting.discard(rid)
                            result.failed += 1
                        elif status != "running" or store.is_stale(rid, stale_after):
                            waiting.discard(rid)
                            queue.append(rid)
                slots = capacity * ensemble_size  # runs training at once
                view.update(len(in_flight), len(waiting), len(queue), durations, slots)
    except BaseException:
        # Ctrl-C / SIGTERM / an error in the leader: stop the workers (they checkpoint on
        # SIGTERM) and release our claims so the next invocation takes them over at once.
        result.interrupted = True
        executor.close(cancel=True)
        for rid in in_flight:
            store.release_run(rid)
        raise
    executor.close()
    view.message(
        f"sweep {spec.name}: {result.done}/{result.total} done, {result.failed} failed, "
        f"{result.executed} trained now"
    )
    return result


def default_ensemble_size(gpus: int, configs: Iterable[dict] = ()) -> int:
    """Runs per job when the sweep is not told: one on CPUs (separate single-thread processes
    are fastest there), the ensemble size of :func:`randpos.ensemble.best_strategy` on GPUs,
    unless the runs are pinned to the CPU."""
    if not gpus or any(str(c.get("device", "auto")) == "cpu" for c in configs):
        return 1
    from randpos.ensemble import GPU_ENSEMBLE_SIZE

    return GPU_ENSEMBLE_SIZE


def _take_group(queue: list[str], keys: dict[str, str], size: int) -> list[str]:
    """Pop the queue's first run and up to ``size - 1`` later runs it can ensemble with."""
    first = queue.pop(0)
    group = [first]
    if size > 1:
        i = 0
        while i < len(queue) and len(group) < size:
            if keys[queue[i]] == keys[first]:
                group.append(queue.pop(i))
            else:
                i += 1
    return group


def _claim(store, rid, config, sweep, runs_dir, retry_failed, stale_after, result, view) -> str:
    """'claimed' (ours to run), 'busy' (a live process owns it) or 'settled' (counted)."""
    out_dir = runs_dir / rid
    summary = _finished_on_disk(out_dir, rid)
    if summary is not None:
        # Trained, but the leader died before recording it: record it, do not train again.
        if store.claim_run(
            rid,
            config,
            sweep=sweep,
            out_dir=str(out_dir),
            retry_failed=True,
            stale_after=stale_after,
        ):
            store.finish_run(rid, summary, _per_length(summary), summary.get("timings") or {})
            result.done += 1
            result.recovered += 1
            view.finished(rid, summary, None)
            return "settled"
    if store.claim_run(
        rid,
        config,
        sweep=sweep,
        out_dir=str(out_dir),
        retry_failed=retry_failed,
        stale_after=stale_after,
    ):
        return "claimed"
    status = store.status(rid)
    if status == "done":
        result.done += 1
        result.skipped += 1
        return "settled"
    if status == "failed":
        result.failed += 1
        return "settled"
    return "busy"


def _finished_on_disk(out_dir: Path, rid: str) -> dict | None:
    try:
        summary = json.loads((out_dir / SUMMARY).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or "per_length" not in summary:
        return None
    if summary.get("run_id") != rid and config_hash(summary.get("config") or {}) != rid:
        return None
    return summary


def _per_length(summary: dict) -> dict[int, float]:
    return {int(k): float(v) for k, v in summary["per_length"].items()}


def _record(store: ResultsStore, outcome: Outcome, result: SweepResult, view) -> None:
    if outcome.ok:
        summary = outcome.summary or {}
        timings = dict(summary.get("timings") or {})
        timings.setdefault("wall_seconds", round(outcome.seconds, 3))
        store.finish_run(outcome.run_id, summary, _per_length(summary), timings)
        result.done += 1
        result.executed += 1
        view.finished(outcome.run_id, summary, None)
    elif outcome.interrupted:
        # Stopped by a signal with a checkpoint on disk: the next invocation resumes it.
        store.release_run(outcome.run_id)
        view.message(f"run {outcome.run_id} interrupted: {outcome.error}")
    else:
        store.fail_run(outcome.run_id, outcome.error or "unknown error")
        result.failed += 1
        result.failed_runs[outcome.run_id] = outcome.error or ""
        view.finished(outcome.run_id, None, outcome.error)


# ================================================================================ progress
class _SweepProgress:
    """One bar for the whole sweep (done / failed / running, ETA) plus a line per finished run."""

    def __init__(self, name: str, result: SweepResult, *, enabled: bool) -> None:
        self.name = name
        self.result = result
        self.enabled = enabled
        self.progress = None
        self.started = time.monotonic()

    def __enter__(self):
        if not self.enabled:
            return self
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[eta]}"),
            transient=False,
        )
        self.progress.__enter__()
        self.task = self.progress.add_task(
            f"sweep {self.name}",
            total=self.result.total,
            completed=self.result.done + self.result.failed,
            counts="",
            eta="",
        )
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)
            self.progress = None

    def update(self, running, waiting, queued, durations, capacity) -> None:
        if self.progress is None:
            return
        r = self.result
        remaining = r.total - r.done - r.failed
        eta = "ETA ?"
        if durations:
            mean = sum(durations) / len(durations)
            eta = "ETA " + _fmt_seconds(remaining * mean / max(1, capacity))
        counts = f"done {r.done} failed {r.failed} running {running}"
        if waiting:
            counts += f" elsewhere {waiting}"
        self.progress.update(self.task, completed=r.done + r.failed, counts=counts, eta=eta)

    def finished(self, rid: str, summary: dict | None, error: str | None) -> None:
        if not self.enabled:
            return
        if summary is not None:
            text = (
                f"[green]done[/green] {rid} {summary.get('task')} {summary.get('pe')}"
                f"{' randomized' if summary.get('randomized') else ''} "
                f"lr={summary.get('learning_rate')} seed={summary.get('seed')}: "
                f"unseen {float(summary.get('ood_accuracy') or 0):.1%}"
            )
        else:
            text = f"[red]failed[/red] {rid}: {(error or '').splitlines()[0] if error else ''}"
        self.message(text)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.progress is not None:
            self.progress.console.print(text, highlight=False)
        else:
            from rich.console import Console

            Console(stderr=True).print(text, highlight=False)


def _fmt_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


# ================================================================================ status
def sweep_status(
    store: ResultsStore, name: str, *, stale_after: float = STALE_AFTER_S
) -> dict[str, Any]:
    """Counts (done / failed / running / stale / pending), per-task breakdown and an ETA."""
    plan = store.sweep_plan(name)
    if not plan:
        known = store.sweeps()
        raise SweepError(
            f"no sweep named {name!r} in {store.path}; known: {', '.join(known) or '(none)'}"
        )
    frame = store.runs(sweep=name)
    records = {r["run_id"]: r for r in frame.to_dict("records")} if not frame.empty else {}
    now = time.time()
    counts = {"done": 0, "failed": 0, "running": 0, "stale": 0, "pending": 0}
    per_task: dict[str, dict[str, int]] = {}
    durations, running_since = [], []
    failures = {}
    for rid, config in plan.items():
        rec = records.get(rid)
        if rec is None:
            state = "pending"
        elif rec["status"] == "running":
            live = not store.is_stale(rid, stale_after)
            state = "running" if live else "stale"
            if live:
                running_since.append(now - (rec.get("started_at") or now))
        else:
            state = rec["status"]
            if state == "failed":
                failures[rid] = (rec.get("error") or "").splitlines()[0] if rec.get("error") else ""
            elif rec.get("finished_at") and rec.get("started_at"):
                durations.append(rec["finished_at"] - rec["started_at"])
        counts[state] += 1
        row = per_task.setdefault(config.get("task", "?"), dict.fromkeys(counts, 0))
        row[state] += 1
    remaining = counts["running"] + counts["pending"] + counts["stale"]
    eta = 0.0 if remaining == 0 else None
    if durations and counts["running"]:
        mean = sum(durations) / len(durations)
        in_progress_left = sum(max(0.0, mean - t) for t in running_since)
        eta = (in_progress_left + (remaining - counts["running"]) * mean) / counts["running"]
    return {
        "sweep": name,
        "total": len(plan),
        **counts,
        "eta_seconds": eta,
        "mean_run_seconds": sum(durations) / len(durations) if durations else None,
        "per_task": per_task,
        "failures": failures,
        "host": socket.gethostname(),
    }


# ================================================================================ CLI
def sweep_command(
    spec: str,
    store: Path | None = None,
    executor: str = "local",
    address: str | None = None,
    workers: int | None = None,
    runs_dir: Path | None = None,
    retry_failed: bool = False,
    run_fn: str | None = None,
    dry_run: bool = False,
    quiet: bool = False,
    ensemble_size: int | None = None,
) -> SweepResult | None:
    """Body of ``randpos sweep``; errors raise SweepError/ValueError (one line each)."""
    loaded = load_spec(spec)
    plan = expand(loaded)
    if dry_run:
        from rich.console import Console

        console = Console()
        console.print(f"sweep {loaded.name}: {len(plan)} runs")
        for rid, cfg in plan.items():
            shown = " ".join(f"{k}={cfg[k]}" for k in loaded.grid)
            console.print(f"  {rid}  {shown}", highlight=False)
        return None
    if executor == "local" and address:
        raise SweepError("--address is for --executor ray")
    fn = load_run_fn(run_fn)
    ex = make_executor(executor, workers=workers, address=address)
    results_store = ResultsStore(store or default_store_path())

    def on_term(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        result = run_sweep(
            loaded,
            results_store,
            ex,
            run_fn=fn,
            ensemble_size=ensemble_size,
            runs_dir=runs_dir,
            retry_failed=retry_failed,
            progress=not quiet,
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    return result


def status_command(name: str | None = None, store: Path | None = None) -> dict[str, Any]:
    """Body of ``randpos sweep-status``: prints and returns :func:`sweep_status`."""
    from rich.console import Console
    from rich.table import Table

    path = Path(store or default_store_path())
    if not path.is_file():  # a status query must not create an empty store
        raise FileNotFoundError(f"no results store at {path}")
    results_store = ResultsStore(path)
    if name is None:
        names = results_store.sweeps()
        if len(names) != 1:
            raise SweepError(
                "name the sweep; sweeps in this store: " + (", ".join(names) or "(none)")
            )
        name = names[0]
    info = sweep_status(results_store, name)
    console = Console()
    eta = _fmt_seconds(info["eta_seconds"]) if info["eta_seconds"] is not None else "?"
    console.print(
        f"sweep [bold]{name}[/bold]: {info['done']}/{info['total']} done, "
        f"{info['failed']} failed, {info['running']} running, {info['stale']} stale "
        f"(owner died; resumed by the next `randpos sweep`), {info['pending']} pending; "
        f"ETA {eta}",
        highlight=False,
    )
    table = Table("task", "done", "failed", "running", "stale", "pending")
    for task, row in info["per_task"].items():
        table.add_row(
            task, *(str(row[k]) for k in ("done", "failed", "running", "stale", "pending"))
        )
    console.print(table)
    for rid, error in list(info["failures"].items())[:20]:
        console.print(f"[red]failed[/red] {rid}: {error}", highlight=False)
    return info


def _cli_errors(func):
    """Expected failures end as one ``error: ...`` line and exit code 2, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from randpos.store import StoreError

        try:
            return func(*args, **kwargs)
        except KeyboardInterrupt:
            typer.echo("interrupted; re-run the same command to resume", err=True)
            raise typer.Exit(130) from None
        except (ValueError, StoreError, FileNotFoundError) as exc:
            typer.echo(f"error: {str(exc).splitlines()[0]}", err=True)
            raise typer.Exit(2) from None

    return wrapper


_StoreOpt = Annotated[
    Path | None,
    typer.Option("--store", help="Results store (default $RANDPOS_STORE or runs/randpos.sqlite)."),
]


@_cli_errors
def sweep_cli(
    spec: Annotated[str, typer.Argument(help="Sweep file, or a preset in configs/sweeps/.")],
    store: _StoreOpt = None,
    executor: Annotated[
        str, typer.Option("--executor", "-e", help="local (processes) | ray.")
    ] = "local",
    address: Annotated[
        str | None, typer.Option("--address", help="Ray cluster address (ray executor).")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", "-j", help="Concurrent jobs (default: cores, or GPUs)."),
    ] = None,
    ensemble_size: Annotated[
        int | None,
        typer.Option(
            "--ensemble-size",
            "-k",
            min=1,
            help="Train up to K runs that differ only in seed and learning rate as one "
            "ensemble job (default: 32 on GPUs, 1 on CPUs).",
        ),
    ] = None,
    runs_dir: Annotated[
        Path | None,
        typer.Option("--runs-dir", help="Run folders (default: <store dir>/sweeps/NAME)."),
    ] = None,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Run failed runs again.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List the runs; train nothing.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    run_fn: Annotated[
        str | None, typer.Option("--run-fn", hidden=True, help="module:function to run.")
    ] = None,
) -> None:
    """Run every unfinished run of a sweep (idempotent: interrupt and re-run to resume)."""
    result = sweep_command(
        spec,
        store=store,
        executor=executor,
        address=address,
        workers=workers,
        runs_dir=runs_dir,
        retry_failed=retry_failed,
        run_fn=run_fn,
        dry_run=dry_run,
        quiet=quiet,
        ensemble_size=ensemble_size,
    )
    if result is not None and result.failed:
        raise typer.Exit(1)


@_cli_errors
def sweep_status_cli(
    name: Annotated[
        str | None, typer.Argument(help="Sweep name (default: the store's only sweep).")
    ] = None,
    store: _StoreOpt = None,
) -> None:
    """Progress of a sweep, from the store: done / failed / running / pending, ETA."""
    status_command(name, store=store)


@_cli_errors
def report_cli(
    store: _StoreOpt = None,
    sweep: Annotated[
        str | None, typer.Option("--sweep", help="Only this sweep's runs (default: all runs).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("report"),
    figures: Annotated[
        bool, typer.Option("--figures/--no-figures", help="Draw the PNG figures.")
    ] = True,
) -> None:
    """Table 1, mean ± std over seeds, the headline gain and figures, from the store alone."""
    from randpos.report import report_command

    report_command(store=store, sweep=sweep, out=out, figures=figures)


def register_commands(app: typer.Typer) -> None:
    """Add ``sweep``, ``sweep-status`` and ``report`` to a typer app (``randpos.cli.app``)."""
    app.command("sweep")(sweep_cli)
    app.command("sweep-status")(sweep_status_cli)
    app.command("report")(report_cli)


__all__ = [
    "EachRun",
    "Job",
    "LocalExecutor",
    "Outcome",
    "RayExecutor",
    "SweepError",
    "SweepResult",
    "SweepSpec",
    "default_ensemble_size",
    "expand",
    "fake_run",
    "load_spec",
    "parse_spec",
    "register_commands",
    "report_cli",
    "sweep_cli",
    "sweep_status_cli",
    "run_sweep",
    "sweep_status",
    "train_group",
    "train_run",
]
