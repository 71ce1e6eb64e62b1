"""Sweeps: grid expansion, bad sweep files, idempotence, kill -9 and resume, executors."""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from inline_executor import InlineExecutor

from randpos.loop.identity import config_hash, ensemble_key
from randpos.results.store import ResultsStore
from randpos.sweep import (
    LocalExecutor,
    SweepError,
    default_ensemble_size,
    expand,
    fake_run,
    load_spec,
    parse_spec,
    run_sweep,
    sweep_status,
)
from randpos.workloads import resolve_config

# A short evaluation keeps the fake results small: N = 10, lengths 1..20.
BASE = {"steps": 10, "max_train_length": 10, "eval_max_length": 20, "max_position": 64}
GRID = {
    "task": ["parity_check", "reverse_string"],
    "pe": ["none", "rope"],
    "randomized": [False, True],
    "seed": [0, 1],
}


def spec(**changes):
    data = {"name": "t", "base": dict(BASE), "grid": dict(GRID)}
    data.update(changes)
    return parse_spec(data)


def write_spec(path, **changes):
    data = {"name": "t", "base": dict(BASE), "grid": dict(GRID)}
    data.update(changes)
    path.write_text(yaml.safe_dump(data))
    return path


# ------------------------------------------------------------------------------ expansion
def randomized(config: dict) -> bool:
    """Whether a resolved config's positions are randomized."""
    return config["positions"]["sampler"] != "contiguous"


def test_grid_expands_to_the_cartesian_product_with_stable_ids():
    runs = expand(spec())
    assert len(runs) == 2 * 2 * 2 * 2
    for rid, config in runs.items():
        assert rid == config_hash(config)
        assert config["steps"] == 10 and config["eval_max_length"] == 20
    combos = {(c["task"], c["pe"], randomized(c), c["seed"]) for c in runs.values()}
    assert len(combos) == 16
    # Key order in the file changes nothing; ids are those of the resolved configs.
    reordered = spec(grid=dict(reversed(list(GRID.items()))), base=dict(reversed(BASE.items())))
    assert set(expand(reordered)) == set(runs)


def test_duplicates_are_merged_and_rules_apply():
    dup = spec(grid={**GRID, "seed": [0, 0, 1]})
    assert len(expand(dup)) == 16
    # A base value equal to the default gives the same run as leaving it out.
    assert set(expand(spec(base={**BASE, "batch_size": 128}))) == set(expand(spec()))
    ruled = spec(
        exclude=[{"pe": "none", "randomized": True}],
        include=[
            {"task": "parity_check", "pe": "alibi", "seed": 7},
            {"task": "parity_check", "pe": "rope", "seed": 0},
        ],  # already in the grid
    )
    runs = expand(ruled)
    assert len(runs) == 16 - 4 + 1
    assert not any(c["pe"] == "none" and randomized(c) for c in runs.values())
    assert any(c["pe"] == "alibi" and c["seed"] == 7 for c in runs.values())


def test_arms_are_crossed_with_the_grid():
    arms = [
        {"pe": "none"},
        {"pe": "rope", "randomized": True},
        {"pe": "rope", "randomized": True, "learning_rate": 3e-4},
    ]
    runs = expand(
        spec(arms=arms, grid={"task": ["parity_check", "reverse_string"], "seed": [0, 1]})
    )
    assert len(runs) == 3 * 2 * 2
    got = {
        (c["pe"], randomized(c), c["learning_rate"], c["task"], c["seed"]) for c in runs.values()
    }
    assert ("none", False, 1e-3, "parity_check", 0) in got
    assert ("rope", True, 3e-4, "reverse_string", 1) in got
    # arms alone, without a grid, are runs too
    assert len(expand(spec(arms=arms, grid={}, base={**BASE, "task": "parity_check"}))) == 3


def test_presets_load():
    tiny, small = load_spec("tiny"), load_spec("small")
    assert len(expand(tiny)) == 12
    assert len(expand(small)) == 4 * 11 * 3
    paper = load_spec("paper")
    assert len(paper.grid["task"]) == 15 and paper.grid["learning_rate"] == [1e-4, 3e-4, 5e-4]
    assert paper.grid["seed"] == list(range(10)) and paper.preset["eval_max_length"] == 500


@pytest.mark.slow
def test_paper_preset_expands_to_4950_runs():
    assert len(expand(load_spec("paper"))) == 15 * 11 * 3 * 10


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"gird": GRID}, r"unknown sweep key\(s\): 'gird' \(did you mean 'grid'\?\)"),
        ({"grid": {**GRID, "sed": [0]}}, r"'sed' \(did you mean 'seed'\?\); allowed: .*task"),
        ({"base": {"stepz": 3}}, r"in 'base': 'stepz' \(did you mean 'steps'\?\)"),
        ({"grid": {**GRID, "pe": ["rope", "rop"]}}, r"pe='rop'.*unknown pe 'rop'; valid: .*rope"),
        ({"grid": {**GRID, "seed": []}}, r"grid.seed is empty"),
        ({"grid": {**GRID, "seed": 3}}, r"grid.seed must be a list"),
        ({"grid": {}}, r"empty grid"),
        ({"exclude": [{"task": ["parity_check", "reverse_string"]}]}, r"empty grid \(16 .*16 excl"),
        ({"base": {**BASE, "eval_max_length": 5}}, r"eval_max_length .* must be greater"),
        ({"arms": [{"pe": "rope"}]}, r"arms\[0\] sets pe, which the grid varies"),
        ({"arms": [{"pe": "rop"}], "grid": {"seed": [0]}}, r"run \(seed=0, pe='rop'\)"),
    ],
)
def test_bad_sweep_files_fail_clearly_and_write_nothing(tmp_path, changes, message):
    path = write_spec(tmp_path / "bad.yaml", **changes)
    store = tmp_path / "store" / "r.sqlite"
    with pytest.raises(SweepError, match=message):
        run_sweep(path, store, LocalExecutor(1), run_fn=fake_run, progress=False)
    assert not store.parent.exists()


def test_missing_spec_lists_presets(tmp_path):
    with pytest.raises(SweepError, match="presets: .*tiny"):
        load_spec(tmp_path / "nope.yaml")


# ------------------------------------------------------------------------------ execution
def test_sweep_runs_everything_once_and_is_idempotent(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    first = run_sweep(spec(), store, LocalExecutor(2), run_fn=fake_run, progress=False)
    assert (first.total, first.done, first.executed, first.failed) == (16, 16, 16, 0)
    frame = store.runs(sweep="t")
    assert len(frame) == 16 and set(frame["status"]) == {"done"}
    assert len(store.per_length(sweep="t")) == 16 * 20
    assert (tmp_path / "sweeps" / "t" / frame["run_id"].iloc[0] / "summary.json").is_file()

    class Unused:  # a second run must not even start an executor
        def start(self, run_fn, group_fn=None):
            raise AssertionError("nothing should run")

    second = run_sweep(spec(), store, Unused(), run_fn=fake_run, progress=False)
    assert (second.done, second.skipped, second.executed) == (16, 16, 0)
    assert set(store.runs(sweep="t")["attempts"]) == {1}
    info = sweep_status(store, "t")
    assert (info["total"], info["done"], info["pending"], info["eta_seconds"]) == (16, 16, 0, 0)


def test_failed_runs_are_recorded_and_retried_only_on_request(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    failing = functools.partial(fake_run, fail_tasks=("reverse_string",))
    result = run_sweep(spec(), store, LocalExecutor(2), run_fn=failing, progress=False)
    assert (result.done, result.failed) == (8, 8)
    failed = store.runs(status="failed")
    assert len(failed) == 8 and failed["error"].str.contains("fake failure").all()
    again = run_sweep(spec(), store, LocalExecutor(2), run_fn=fake_run, progress=False)
    assert (again.executed, again.failed) == (0, 8)
    retried = run_sweep(
        spec(), store, LocalExecutor(2), run_fn=fake_run, progress=False, retry_failed=True
    )
    assert (retried.executed, retried.done, retried.failed) == (8, 16, 0)
    assert set(store.runs(status="done")["attempts"]) == {1, 2}
    assert sweep_status(store, "t")["failed"] == 0


def test_status_of_a_sweep_in_progress(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    s = spec()
    plan = expand(s)
    store.register_sweep("t", s.to_dict(), plan)
    ids = list(plan)
    store.claim_run(ids[0], plan[ids[0]], sweep="t")
    store.start_run(ids[1], plan[ids[1]], sweep="t")
    store.release_run(ids[1])  # its owner went away
    summary = fake_run(plan[ids[2]], tmp_path / "x", False)
    store.start_run(ids[2], plan[ids[2]])
    store.finish_run(ids[2], summary, {int(k): v for k, v in summary["per_length"].items()})
    store.start_run(ids[3], plan[ids[3]])
    store.fail_run(ids[3], "ValueError: bad\ntraceback")
    info = sweep_status(store, "t")
    assert (info["done"], info["failed"], info["running"], info["stale"], info["pending"]) == (
        1,
        1,
        1,
        1,
        12,
    )
    assert info["failures"] == {ids[3]: "ValueError: bad"}
    with pytest.raises(SweepError, match="no sweep named 'x'.*known: t"):
        sweep_status(store, "x")


KILLABLE = textwrap.dedent(
    """
    import functools, sys
    from randpos import sweep
    from randpos.results.store import ResultsStore
    spec, store = sys.argv[1], ResultsStore(sys.argv[2])
    seconds, k = float(sys.argv[3]), int(sys.argv[4])
    sweep.run_sweep(spec, store, sweep.LocalExecutor(2), progress=False, ensemble_size=k,
                    run_fn=functools.partial(sweep.fake_run, seconds=seconds))
    """
)


def _count(path, status):
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as conn:
        try:
            query = "SELECT COUNT(*) FROM runs WHERE status = ?"
            return conn.execute(query, (status,)).fetchone()[0]
        except sqlite3.OperationalError as exc:  # polled before the schema was committed
            if "no such table" in str(exc):
                return 0
            raise


def _mid_run(root: Path, most_done: float = math.inf) -> set[str]:
    """Run ids with a checkpoint, no summary yet and at most ``most_done`` seconds trained."""
    found = set()
    for path in root.glob("**/checkpoint.json"):
        if (path.parent / "summary.json").exists():
            continue
        try:
            done = json.loads(path.read_text())["seconds_done"]
        except (OSError, ValueError):
            continue
        if done <= most_done:
            found.add(path.parent.name)
    return found


@pytest.mark.parametrize("k", [1, 2], ids=["single-runs", "groups-of-2"])
def test_sigkill_mid_sweep_then_resume_loses_and_duplicates_nothing(tmp_path, k):
    path = write_spec(tmp_path / "s.yaml", grid={**GRID, "randomized": [False]})  # 8 runs
    store_path = tmp_path / "r.sqlite"
    leader = subprocess.Popen(
        [sys.executable, "-c", KILLABLE, str(path), str(store_path), "1.5", str(k)],
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            if store_path.exists() and _count(store_path, "done") >= 2:
                # kill while a run is mid-way: running, with a checkpoint and more than the
                # orphaned workers' 0.5 s to live left to train (1.5 s in all)
                if _count(store_path, "running") >= 1 and _mid_run(tmp_path, most_done=0.5):
                    break
            assert leader.poll() is None, leader.stderr.read().decode()[-2000:]
            time.sleep(0.05)
        else:
            pytest.fail("the sweep made no progress")
        os.kill(leader.pid, signal.SIGKILL)
    finally:
        leader.kill()
        leader.wait()
    killed_running, done_before = _count(store_path, "running"), _count(store_path, "done")
    assert killed_running >= 1 and done_before < 8
    time.sleep(1.0)  # the orphaned workers notice (every 0.5 s) and exit
    cut = _mid_run(tmp_path)
    assert cut  # runs stopped mid-way, their checkpoints on disk

    store = ResultsStore(store_path)
    result = run_sweep(
        load_spec(path),
        store,
        LocalExecutor(2),
        progress=False,
        ensemble_size=k,
        run_fn=functools.partial(fake_run, seconds=1.5),
    )
    assert result.done == 8 and result.failed == 0
    assert result.skipped == done_before
    assert result.executed + result.recovered == 8 - done_before
    frame = store.runs(sweep="t")
    assert len(frame) == 8 and set(frame["status"]) == {"done"}
    # Runs cut by the kill were taken a second time (recorded from their summary, or resumed
    # from their checkpoint); no other run was.
    assert (frame["attempts"] == 2).sum() == killed_running
    assert set(frame["attempts"]) <= {1, 2}
    long = store.per_length(sweep="t")
    assert len(long) == 8 * 20 and not long.duplicated(["run_id", "length"]).any()
    assert set(long.groupby("run_id").size()) == {20}
    # those stopped mid-way picked up their checkpoints rather than starting over
    assert all(store.get_run(rid)["summary"]["resumed"] for rid in cut)


def test_interrupted_run_is_released_not_failed(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")

    class Interrupting:
        describe = "test"

        def start(self, run_fn, group_fn=None):
            return 1

        def submit(self, job):
            raise KeyboardInterrupt

        def close(self, cancel=False):
            self.cancelled = cancel

    ex = Interrupting()
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec(), store, ex, run_fn=fake_run, progress=False)
    assert ex.cancelled
    running = store.runs(status="running")
    assert len(running) == 1 and store.is_stale(running["run_id"].iloc[0])
    result = run_sweep(spec(), store, LocalExecutor(2), run_fn=fake_run, progress=False)
    assert result.done == 16 and set(store.runs()["status"]) == {"done"}


# ------------------------------------------------------------------------------ ensembles
LR_GRID = {**GRID, "learning_rate": [1e-3, 5e-4]}  # 32 runs, 8 classes of 4 compatible runs


def inline_sweep(store, grid=LR_GRID, executor=None, **options):
    """The test sweep over ``grid`` on an InlineExecutor; returns the result and the executor."""
    executor = executor or InlineExecutor()
    return run_sweep(spec(grid=grid), store, executor, progress=False, **options), executor


def test_compatible_runs_are_grouped_into_ensemble_jobs(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    result, executor = inline_sweep(store, run_fn=fake_run, ensemble_size=3)
    assert (result.total, result.done, result.executed, result.failed) == (32, 32, 32, 0)
    assert sorted(len(job.run_ids) for job in executor.jobs) == [1] * 8 + [3] * 8
    seen = [rid for job in executor.jobs for rid in job.run_ids]
    assert sorted(seen) == sorted(expand(spec(grid=LR_GRID)))  # each run once
    for job in executor.jobs:
        assert len({ensemble_key(c) for c in job.configs}) == 1  # only seed / lr differ
        assert [config_hash(c) for c in job.configs] == job.run_ids
    assert set(store.runs(sweep="t")["status"]) == {"done"}
    # a second pass has nothing left to group
    again, _ = inline_sweep(store, run_fn=fake_run, ensemble_size=3)
    assert (again.skipped, again.executed) == (32, 0)


def test_ensemble_size_defaults_by_device(tmp_path):
    assert default_ensemble_size(0) == 1  # CPU: separate processes (measured faster)
    assert default_ensemble_size(1) == 32  # GPU: best_strategy's ensemble size
    assert default_ensemble_size(2, [{"device": "auto"}, {"device": "cpu"}]) == 1
    for gpus, largest in ((0, 1), (1, 4)):
        store = ResultsStore(tmp_path / f"gpus{gpus}" / "r.sqlite")  # own run dirs too
        _, executor = inline_sweep(store, executor=InlineExecutor(gpus=gpus), run_fn=fake_run)
        assert max(len(job.run_ids) for job in executor.jobs) == largest
    with pytest.raises(SweepError, match="ensemble size must be an integer >= 1"):
        inline_sweep(tmp_path / "x.sqlite", ensemble_size=0)


def test_a_failing_member_fails_alone_and_an_interrupted_group_is_released(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    grid = {"task": ["parity_check"], "pe": ["rope"], "seed": [0, 1, 2]}

    def group(configs, out_dirs, resume):  # member seed=1 diverges
        return [
            FloatingPointError("loss became nan at step 3")
            if c["seed"] == 1
            else fake_run(c, d, resume)
            for c, d in zip(configs, out_dirs, strict=True)
        ]

    result, _ = inline_sweep(store, grid, group_fn=group, ensemble_size=3)
    assert (result.done, result.failed) == (2, 1)
    (error,) = result.failed_runs.values()
    assert error.startswith("FloatingPointError: loss became nan at step 3")
    failed = store.runs(status="failed")
    assert list(failed["seed"]) == [1]

    class TrainingInterrupted(Exception):  # what a signal raises in the trainer (by name)
        pass

    def interrupted(configs, out_dirs, resume):
        raise TrainingInterrupted("interrupted at step 2")

    store2 = ResultsStore(tmp_path / "second" / "r.sqlite")  # its own run dirs
    cut, _ = inline_sweep(store2, grid, group_fn=interrupted, ensemble_size=3)
    assert (cut.done, cut.failed) == (0, 0)
    assert len(store2.runs(status="running")) == 3  # released: stale, resumed next time
    assert all(store2.is_stale(rid) for rid in store2.runs()["run_id"])
    resumed, _ = inline_sweep(store2, grid, run_fn=fake_run)
    assert resumed.done == 3


def test_a_sweep_trains_real_ensembles_equal_to_separate_runs(tmp_path):
    """The default group function: compatible runs of a sweep train as one ensemble (one
    the trainer, its CPU execution) and give the numbers separate runs give."""
    from tiny import TINY_BASE

    from randpos.loop.training import train

    base = dict(
        TINY_BASE, steps=4, batch_size=8, log_every=2, pe="rope", randomized=True, max_position=64
    )
    grid = {"seed": [0, 1], "learning_rate": [1e-3, 3e-3]}
    sweep_spec = parse_spec({"name": "e", "base": base, "grid": grid})
    store = ResultsStore(tmp_path / "r.sqlite")
    executor = InlineExecutor()
    result = run_sweep(sweep_spec, store, executor, ensemble_size=4, progress=False)
    assert (result.done, result.failed) == (4, 0)
    assert [len(job.run_ids) for job in executor.jobs] == [4]
    for rid, config in expand(sweep_spec).items():
        summary = store.get_run(rid)["summary"]
        assert summary["timings"]["ensemble_size"] == 4
        alone = train(resolve_config(config), tmp_path / "alone" / rid, progress=False)
        assert summary["run_id"] == alone["run_id"] == rid
        assert summary["per_length"] == pytest.approx(alone["per_length"], abs=1e-9)
        assert summary["final_loss"] == pytest.approx(alone["final_loss"], rel=1e-5)
        assert (tmp_path / "sweeps" / "e" / rid / "model.safetensors").is_file()


@pytest.mark.ray
def test_ray_executor_on_a_local_instance(tmp_path):
    pytest.importorskip("ray")
    from randpos.sweep import RayExecutor

    small = spec(grid={"task": ["parity_check"], "pe": ["none", "rope"], "seed": [0, 1]})
    store = ResultsStore(tmp_path / "r.sqlite")
    executor = RayExecutor(num_cpus=2)
    result = run_sweep(small, store, executor, run_fn=fake_run, ensemble_size=2, progress=False)
    assert (result.done, result.executed, result.failed) == (4, 4, 0)  # in 2 jobs of 2
    assert set(store.runs(sweep="t")["status"]) == {"done"}
    assert len(store.per_length(sweep="t")) == 4 * 20
    assert not executor.started_ray  # the instance it started is shut down again


def ray_like_failure(inner: BaseException) -> ConnectionError:
    """The chain ray.init raises: ConnectionError from a RuntimeError holding the
    traceback text of the last attempt."""
    try:
        try:
            raise RuntimeError(f"Failed to connect to GCS. Last connection error: {inner!r}")
        except RuntimeError as exc:
            raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379") from exc
    except ConnectionError as exc:
        return exc


@pytest.mark.parametrize(
    "mode, inner, expected",
    [
        (None, "AuthenticationError('RPC error: InvalidAuthToken: missing')",
         "requires token authentication (InvalidAuthToken): set RAY_AUTH_MODE=token"),
        ("token", "AuthenticationError('RPC error: InvalidAuthToken: incorrect')",
         "refused this machine's token (InvalidAuthToken): set RAY_AUTH_TOKEN"),
        ("token", "AuthenticationError('Token authentication is enabled but no authentication "
         "token was found')", "RAY_AUTH_MODE=token but this machine has no Ray token"),
        (None, "TimedOut('Timed out while waiting for GCS to become available.')",
         "cannot connect to a Ray cluster at 10.0.0.1:6379 (ConnectionError: Failed to connect"),
    ],
)  # fmt: skip
def test_a_failed_ray_connection_is_one_line_naming_the_fix(mode, inner, expected, monkeypatch):
    from randpos.sweep.executors import connection_error

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    if mode:
        monkeypatch.setenv("RAY_AUTH_MODE", mode)
    message = connection_error("10.0.0.1:6379", ray_like_failure(RuntimeError(inner)))
    assert expected in message and "\n" not in message
    assert message.count("10.0.0.1:6379") >= 1


# ------------------------------------------------------------------------------ CLI
def test_cli_commands(tmp_path):
    typer = pytest.importorskip("typer")
    from typer.testing import CliRunner

    from randpos.cli.sweeps import register_commands

    app = typer.Typer()
    register_commands(app)
    runner = CliRunner()
    store = tmp_path / "r.sqlite"
    dry = runner.invoke(app, ["sweep", "tiny", "--dry-run", "--store", str(store)])
    assert dry.exit_code == 0 and "12 runs" in dry.output and not store.exists()

    missing = runner.invoke(app, ["sweep-status", "t", "--store", str(store)])
    assert missing.exit_code == 2 and "no results store" in missing.output
    assert not store.exists()

    bad = write_spec(tmp_path / "bad.yaml", grid={**GRID, "pe": ["rop"]})
    out = runner.invoke(app, ["sweep", str(bad), "--store", str(store)])
    assert out.exit_code == 2 and "unknown pe 'rop'" in out.output and not store.exists()

    good = write_spec(
        tmp_path / "good.yaml",
        grid={"task": ["parity_check"], "pe": ["rope"], "randomized": [False, True]},
    )
    ok = runner.invoke(
        app,
        [
            "sweep",
            str(good),
            "--store",
            str(store),
            "-j",
            "2",
            "-k",
            "2",
            "-q",
            "--run-fn",
            "randpos.sweep:fake_run",
        ],
    )
    assert ok.exit_code == 0, ok.output
    zero = runner.invoke(app, ["sweep", str(good), "--store", str(store), "-k", "0"])
    assert zero.exit_code == 2 and "ensemble-size" in zero.output
    status = runner.invoke(app, ["sweep-status", "t", "--store", str(store)])
    assert status.exit_code == 0 and "2/2 done" in status.output
    report = runner.invoke(
        app,
        [
            "report",
            "--store",
            str(store),
            "--sweep",
            "t",
            "--out",
            str(tmp_path / "rep"),
            "--no-figures",
        ],
    )
    assert report.exit_code == 0, report.output
    assert (tmp_path / "rep" / "report.html").is_file()
