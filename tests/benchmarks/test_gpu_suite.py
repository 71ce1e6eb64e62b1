"""benchmarks/gpu_suite.py: the dry run (``--device cpu --tiny``) goes through every stage the
GPU run has, a cut-off keeps what finished, and the protocol's sizing fits its time."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SUITE = BENCHMARKS / "gpu_suite.py"
sys.path.insert(0, str(BENCHMARKS))
from gpu_suite import EXECUTIONS, PRECISIONS, size_protocol  # noqa: E402


def run_suite(out: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SUITE), "--device", "cpu", "--tiny", "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_dry_run_goes_through_every_stage(tmp_path):
    # the budget is a ceiling: an idle 2-core CPU needs well under a minute, a loaded one more
    proc = run_suite(tmp_path, "--budget", "300")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = read_records(tmp_path)
    by_stage: dict[str, list[dict]] = {}
    for r in records:
        by_stage.setdefault(r["stage"], []).append(r)
    assert set(by_stage) == {"machine", "tests", "throughput", "eval", "protocol"}

    (machine,) = by_stage["machine"]
    assert machine["status"] == "ok" and machine["apis"]["torch.compile"]

    # the cuda-marked tests ran through pytest: every one skipped without CUDA, none failed
    (tests,) = by_stage["tests"]
    assert tests["status"] == "ok" and tests["exit_status"] == 0
    assert tests["tests"] > 0 and tests["skipped"] == tests["tests"]
    assert tests["failures"] == tests["errors"] == 0

    # the whole grid K x execution x precision: fp32 measured, bf16 refused off CUDA
    cells = {
        (r["cell"]["k"], r["cell"]["execution"], r["cell"]["precision"]): r
        for r in by_stage["throughput"]
        if "cell" in r
    }
    assert set(cells) == {(k, e, p) for k in (1, 2) for e in EXECUTIONS for p in PRECISIONS}
    for (_, execution, precision), r in cells.items():
        if precision == "bf16":
            assert r["status"] == "skipped" and "CUDA" in r["reason"]
            continue
        assert r["status"] == "ok", r
        assert r["model_steps_per_s"] > 0 and len(r["lengths"]) == len(r["step_s"]) == 2
        assert 0 < r["fraction_of_measured_peak"] < 1
        assert (r["graphs"] > 0) == (execution != "eager")
        assert r["compiled_in_timed_steps"] == 0  # the warm-up passes compiled every graph

    evals = [r for r in by_stage["eval"] if r["status"] == "ok"]
    assert {r["cell"]["k"] for r in evals} == {1, 2}
    for r in evals:
        assert set(r["s_per_model"]) == {"1", "4", "8"} and r["s_per_model_1_to_8"] > 0

    sizing = next(r for r in by_stage["protocol"] if r["name"] == "sizing")
    assert sizing["status"] == "ok" and sizing["cells"] == 2 and sizing["reduced"]
    done = next(r for r in by_stage["protocol"] if r["name"] == "cells")
    assert done["status"] == "ok" and done["runs_done"] == done["runs_planned"] == 4
    assert Path(done["report"]).is_file()
    with sqlite3.connect(done["store"]) as db:
        statuses = [s for (s,) in db.execute("SELECT status FROM runs")]
    assert statuses == ["done"] * 4

    summary = (tmp_path / "summary.txt").read_text()
    assert summary.strip() in proc.stdout  # printed, and saved
    lines = summary.splitlines()
    assert len(lines) <= 40 and "tiny dry run" in lines[0]  # one screen
    stages = json.loads((tmp_path / "summary.json").read_text())["stages"]
    assert all(stages[s]["status"] == "ok" for s in ("machine", "tests", "protocol")), stages


def test_a_cut_off_keeps_what_finished_and_marks_the_rest(tmp_path):
    """A budget too small for the stage: the worker is stopped at the stage's end, the
    measurements it finished stay in results.jsonl and every other one is marked not run."""
    started = time.monotonic()
    proc = run_suite(tmp_path, "--stages", "throughput", "--budget", "6")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert time.monotonic() - started < 6 + 10 + 15  # budget, SIGKILL grace, start-up
    cells = [r for r in read_records(tmp_path) if "cell" in r]
    assert len(cells) == 2 * len(EXECUTIONS) * len(PRECISIONS)  # each cell exactly once
    assert {r["status"] for r in cells} <= {"ok", "skipped", "not run", "error"}
    assert any(r["status"] == "not run" and r["reason"] == "budget" for r in cells)
    assert "throughput" in (tmp_path / "summary.txt").read_text()


def test_sigterm_stops_the_suite_and_keeps_what_it_saved(tmp_path):
    command = [sys.executable, str(SUITE), "--device", "cpu", "--tiny", "--out", str(tmp_path)]
    proc = subprocess.Popen(
        [*command, "--stages", "machine", "throughput"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    results = tmp_path / "results.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (
        results.exists() and '"measured peak"' in results.read_text()
    ):
        time.sleep(0.2)  # until the throughput worker has saved its first record
    proc.terminate()
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    names = [r["name"] for r in read_records(tmp_path)]
    assert names[:2] == ["machine", "measured peak"]
    summary = (tmp_path / "summary.txt").read_text()
    assert "interrupted" in summary and summary.strip() in output


@pytest.mark.parametrize("seconds", [10.0, 600.0, 5_000.0, 1e6, 1e9])
@pytest.mark.parametrize("rate", [50.0, 5_000.0])
def test_protocol_sizing_fits_the_time(seconds, rate):
    plan = size_protocol(
        seconds, rate, 2.0, 30, cells_available=50, min_cells=2, overhead_s=30.0, min_steps=100
    )

    def cost(steps: float) -> float:  # the cost model, written out: one cell, 30 runs
        return 30.0 + 30 * (steps / rate + 2.0)

    if plan["cells"]:
        assert plan["cells"] * cost(plan["steps"]) <= seconds
        assert plan["steps"] >= 100 and plan["reduced"] == (plan["steps"] < 1_000_000)
        if not plan["reduced"]:  # at the paper's steps: as many cells as fit (or all 50)
            assert plan["cells"] == min(50, int(seconds // cost(1_000_000)))
        elif plan["cells"] == 2:  # cut steps: 100 more would not fit two cells
            assert 2 * cost(plan["steps"] + 100) > seconds
    else:  # not even one cell of min_steps fits
        assert cost(100) > seconds
    assert plan["full_cell_seconds"] == pytest.approx(cost(1_000_000))
