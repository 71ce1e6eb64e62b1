"""Executing jobs: the worker-side wrapper, local processes and a Ray cluster."""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib
import importlib.util
import json
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from randpos.sweep.jobs import EachRun, GroupFn, RunFn, _interrupted
from randpos.sweep.plan import SweepError


@dataclass
class Job:
    """Runs that one worker trains in one go: a single run, or an ensemble of compatible runs."""

    run_ids: list[str]
    configs: list[dict]
    out_dirs: list[str]
    resume: bool


@dataclass
class Outcome:
    """What became of one run of a job: ``ok`` with its summary, or the error text (``interrupted``
    when a signal stopped it), and the job's seconds."""

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
        torch.set_num_threads(threads)
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
        return torch.cuda.device_count() if torch.cuda.is_available() else 0

    def start(self, run_fn: RunFn, group_fn: GroupFn | None = None) -> int:
        """Start the worker pool (one process per GPU, else per core, or ``workers``) with the run
        and group functions; returns how many jobs run at once."""
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
            f"{gpus} GPU(s)" if gpus else f"{threads} thread(s) each unless a run sets `threads`"
        )
        return self.capacity

    def submit(self, job: Job) -> None:
        """Queue a job on the pool."""
        future = self.pool.submit(execute, job, self.run_fn, self.group_fn)
        self.futures[future] = job.run_ids

    def poll(self, timeout: float) -> list[Outcome]:
        """Wait up to ``timeout`` seconds for jobs to end; the outcomes of those that did (a worker
        that died fails its runs)."""
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
        """Shut the pool down; ``cancel`` sends SIGTERM to the workers first (each run checkpoints
        and stops)."""
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
        """Connect to the cluster at ``address`` (one line naming the fix when that fails:
        :func:`connection_error`) or start a local Ray instance; returns how many jobs run at
        once (GPUs, else CPUs)."""
        try:
            import ray  # optional extra: pip install 'randpos[ray]'
        except ImportError:
            raise SweepError(
                "the ray executor needs Ray: pip install -e '.[ray]' (or pip install ray)"
            ) from None
        self.ray = ray
        if not ray.is_initialized():
            kwargs = {"include_dashboard": False, "log_to_driver": False, **self.init_kwargs}
            if self.address:
                kwargs["address"] = self.address
                connect_to_cluster(ray, self.address, kwargs)
            else:
                if self.num_cpus:
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
        """Send a job to the cluster as a Ray task, with its run directories made absolute."""
        # a worker's working directory is not the leader's: run directories go out absolute
        job = replace(job, out_dirs=[str(Path(d).resolve()) for d in job.out_dirs])
        self.refs[self.remote.remote(job, self.fns_ref)] = job.run_ids

    def poll(self, timeout: float) -> list[Outcome]:
        """Wait up to ``timeout`` seconds for tasks to end; the outcomes of those that did (a lost
        task fails its runs)."""
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
        """Cancel the running tasks when ``cancel``; shut down a Ray instance this executor
        started."""
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


#: what a client without the cluster's token, or with a wrong one, finds in Ray's error
_AUTH_FAILURES = ("InvalidAuthToken", "AuthenticationError", "Unauthenticated")
_NO_TOKEN = "no authentication token was found"


def connect_to_cluster(ray, address: str, init_kwargs: dict[str, Any]) -> None:
    """``ray.init`` to an existing cluster at ``address``. A failure becomes one
    ``SweepError`` line that names the fix (the token, the address); what Ray prints while it
    retries (a warning a second, then a traceback) is kept out of the way, and shown again
    only when the connection succeeds."""
    with _captured_stderr() as captured:
        try:
            ray.init(**init_kwargs)
        except Exception as exc:  # noqa: BLE001 - any failure to connect is explained below
            raise SweepError(connection_error(address, exc)) from None
        output = captured()
    os.write(2, output)


def connection_error(address: str, exc: BaseException) -> str:
    """The one-line message for a failed connection to the Ray cluster at ``address``."""
    chain, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    text = "\n".join(chain)
    mode = (os.environ.get("RAY_AUTH_MODE") or "").lower()
    token = "`ray get-auth-token` on the head prints it"
    if _NO_TOKEN in text:
        return (
            f"RAY_AUTH_MODE=token but this machine has no Ray token for {address}: set "
            f"RAY_AUTH_TOKEN to the cluster's token ({token}), or RAY_AUTH_TOKEN_PATH to a file "
            "holding it, or put it in ~/.ray/auth_token"
        )
    if any(marker in text for marker in _AUTH_FAILURES):
        if mode != "token":
            return (
                f"the Ray cluster at {address} requires token authentication "
                f"(InvalidAuthToken): set RAY_AUTH_MODE=token and give this machine the "
                f"cluster's token in RAY_AUTH_TOKEN ({token}) or in ~/.ray/auth_token "
                "(RAY_AUTH_TOKEN_PATH names another file), then run again"
            )
        return (
            f"the Ray cluster at {address} refused this machine's token (InvalidAuthToken): "
            f"set RAY_AUTH_TOKEN to the cluster's token ({token}) or fix the file "
            "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token names"
        )
    first = chain[0].splitlines()[0] if chain else "no detail"  # Ray's outermost error
    return (
        f"cannot connect to a Ray cluster at {address} ({first}): start one with "
        "`ray start --head --port=PORT` and pass --address HOST:PORT as `ray start` printed it, "
        "and check that this machine reaches that port"
    )


@contextlib.contextmanager
def _captured_stderr():
    """Collect what this process (Python and Ray's C++ core alike) writes to file descriptor 2
    inside the block; yields a function that returns it."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lambda: (sink.seek(0), sink.read())[1]
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def _ray_execute(job: Job, fns: tuple[RunFn, GroupFn | None]) -> list[Outcome]:
    # Ray already pins the task to its GPU through CUDA_VISIBLE_DEVICES.
    run_fn, group_fn = fns
    gpu = 0 if os.environ.get("CUDA_VISIBLE_DEVICES") else None
    return execute(job, run_fn, group_fn, threads=1, gpu=gpu)


def make_executor(
    kind: str = "local", *, workers: int | None = None, address: str | None = None
) -> LocalExecutor | RayExecutor:
    """The executor of a kind: ``local`` (processes) or ``ray``; another name raises a
    ``SweepError`` listing them."""
    if kind == "local":
        return LocalExecutor(workers)
    if kind == "ray":
        return RayExecutor(address, num_cpus=workers)
    raise SweepError(f"unknown executor {kind!r}; valid: local, ray")
