"""Running a sweep: claim runs in the store, group them into jobs, record the outcomes."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from randpos.loop.ensemble import GPU_ENSEMBLE_SIZE
from randpos.loop.identity import ensemble_key
from randpos.loop.trust import check_summary
from randpos.sweep.executors import Job, LocalExecutor, Outcome, RayExecutor, make_executor
from randpos.sweep.jobs import SUMMARY, EachRun, GroupFn, RunFn, train_group, train_run
from randpos.sweep.plan import SweepError, SweepSpec, expand, load_spec

if TYPE_CHECKING:  # the sweep writes into the store it is handed; it never opens one
    from randpos.results.store import ResultsStore


@dataclass
class SweepResult:
    """Counts of one ``randpos sweep`` invocation: runs in the sweep, done, failed (with their
    errors), skipped as already done, executed now, recovered from disk, and whether it was
    interrupted."""

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
    store: ResultsStore,
    executor: LocalExecutor | RayExecutor | str | None = None,
    *,
    run_fn: RunFn | None = None,
    group_fn: GroupFn | None = None,
    ensemble_size: int | None = None,
    runs_dir: str | os.PathLike | None = None,
    retry_failed: bool = False,
    progress: bool = True,
    stale_after: float | None = None,
    poll_interval: float = 0.5,
    heartbeat_every: float = 10.0,
) -> SweepResult:
    """Run every unfinished run of a sweep; returns counts. Safe to interrupt and re-run.

    ``store`` is the results store (a :class:`randpos.results.store.ResultsStore`) the leader
    claims runs in and records them to; ``stale_after`` (default: the store's) is how long a
    running run may go without a heartbeat before it counts as abandoned.

    ``ensemble_size``: up to this many compatible runs (:func:`randpos.loop.identity.ensemble_key`:
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
    if stale_after is None:
        stale_after = store.stale_after
    if executor is None or isinstance(executor, str):
        executor = make_executor(executor or "local")
    # the default functions log each run in the sweep's group (picklable: module-level partials)
    if group_fn is None:
        group_fn = partial(train_group, sweep=spec.name) if run_fn is None else EachRun(run_fn)
    run_fn = run_fn or partial(train_run, sweep=spec.name)
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
    are fastest there), the ensemble size of :func:`randpos.loop.ensemble.best_strategy` on GPUs,
    unless the runs are pinned to the CPU."""
    if not gpus or any(str(c.get("device", "auto")) == "cpu" for c in configs):
        return 1

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
    """The run's summary.json when it is a well-formed summary of run ``rid``
    (:func:`randpos.loop.trust.check_summary`), else None: the run is trained (or resumed) again."""
    try:
        summary = check_summary(json.loads((out_dir / SUMMARY).read_text()), out_dir / SUMMARY)
    except (OSError, ValueError):  # ConfigError is a ValueError
        return None
    return summary if summary["run_id"] == rid else None


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
            eta = "ETA " + fmt_seconds(remaining * mean / max(1, capacity))
        counts = f"done {r.done} failed {r.failed} running {running}"
        if waiting:
            counts += f" elsewhere {waiting}"
        self.progress.update(self.task, completed=r.done + r.failed, counts=counts, eta=eta)

    def finished(self, rid: str, summary: dict | None, error: str | None) -> None:
        if not self.enabled:
            return
        if summary is not None:
            what = str(summary["task"] if "task" in summary else summary.get("workload"))
            if "pe" in summary:  # the encoder's task, or another workload's name, then the PE
                what += f" {summary['pe']}{' randomized' if summary.get('randomized') else ''}"
            text = (
                f"[green]done[/green] {rid} {what} "
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
            Console(stderr=True).print(text, highlight=False)


def fmt_seconds(seconds: float) -> str:
    """A duration in seconds as ``1h02m``, ``3m05s`` or ``42s``."""
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
