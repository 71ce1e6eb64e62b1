"""A sweep's status from the store: done, failed, running, queued, ETA."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from randpos.results.store import STALE_AFTER_S, ResultsStore, default_store_path
from randpos.sweep.plan import SweepError
from randpos.sweep.run import _fmt_seconds


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
        # encoder runs by task; runs of another workload under the workload's name
        workload = config.get("workload", "encoder")
        key = config.get("task", "?") if workload == "encoder" else workload
        row = per_task.setdefault(key, dict.fromkeys(counts, 0))
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


def status_command(name: str | None = None, store: Path | None = None) -> dict[str, Any]:
    """Body of ``randpos sweep-status``: prints and returns :func:`sweep_status`."""

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
