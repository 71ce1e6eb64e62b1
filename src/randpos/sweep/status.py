"""A sweep's status from the results store it is handed: done, failed, running, queued, ETA."""

from __future__ import annotations

import socket
import time
from typing import Any

from randpos.sweep.plan import SweepError


def sweep_status(store, name: str, *, stale_after: float | None = None) -> dict[str, Any]:
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
