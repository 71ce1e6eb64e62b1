"""The results store: run ids, the run lifecycle, version checks and concurrent writers."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from randpos.loop.identity import NON_RESULT_FIELDS, config_hash
from randpos.results.store import STORE_VERSION, ResultsStore, StoreError, default_store_path

CONFIG = {
    "task": "parity_check",
    "pe": "rope",
    "randomized": True,
    "seed": 3,
    "learning_rate": 3e-4,
    "steps": 100,
    "device": "cpu",
    "threads": 1,
}


def summary_for(config, ood=0.5, n=4, m=8):
    per_length = {str(i): (1.0 if i <= n else ood) for i in range(1, m + 1)}
    return {
        "task": config["task"],
        "pe": config["pe"],
        "randomized": config["randomized"],
        "seed": config["seed"],
        "steps": config["steps"],
        "id_accuracy": 1.0,
        "ood_accuracy": ood,
        "per_length": per_length,
        "config": config,
        "timings": {"train_seconds": 1.5},
    }


def per_length_of(summary):
    return {int(k): v for k, v in summary["per_length"].items()}


def test_config_hash_is_stable_and_ignores_key_order_and_runtime_fields():
    h = config_hash(CONFIG)
    assert len(h) == 16 and int(h, 16) >= 0
    assert config_hash(dict(reversed(list(CONFIG.items())))) == h
    assert config_hash({**CONFIG, "device": "cuda:1", "threads": 8}) == h
    assert {"device", "threads", "log_every", "checkpoint_every"} <= NON_RESULT_FIELDS
    assert config_hash({**CONFIG, "seed": 4}) != h
    assert config_hash({**CONFIG, "steps": 100.0}) == h  # YAML 100.0 and 100 are one setting
    # An independent oracle: sha256 of the sorted-key JSON without the runtime fields.
    kept = {k: v for k, v in CONFIG.items() if k not in NON_RESULT_FIELDS}
    text = json.dumps(kept, sort_keys=True, separators=(",", ":"))
    assert h == hashlib.sha256(text.encode()).hexdigest()[:16]


def test_default_store_path_honours_env(monkeypatch, tmp_path):
    monkeypatch.delenv("RANDPOS_STORE", raising=False)
    assert str(default_store_path()).endswith("runs/randpos.sqlite")
    monkeypatch.setenv("RANDPOS_STORE", str(tmp_path / "x.sqlite"))
    assert default_store_path() == tmp_path / "x.sqlite"


def test_run_lifecycle(tmp_path):
    store = ResultsStore(tmp_path / "deep" / "store.sqlite")
    rid = config_hash(CONFIG)
    assert store.status(rid) is None and store.get_run(rid) is None
    store.start_run(rid, CONFIG, sweep="s", out_dir=str(tmp_path / "run"))
    assert store.status(rid) == "running"
    summary = summary_for(CONFIG, ood=0.625)
    store.finish_run(rid, summary, per_length_of(summary), summary["timings"])
    assert store.status(rid) == "done"
    record = store.get_run(rid)
    assert record["per_length"] == per_length_of(summary)
    assert record["ood_accuracy"] == 0.625 and record["config"]["seed"] == 3
    assert record["code_version"] and record["host"] and record["pid"]

    runs = store.runs()
    assert list(runs["run_id"]) == [rid]
    row = runs.iloc[0]
    assert row["task"] == "parity_check" and row["pe"] == "rope" and bool(row["randomized"])
    assert row["status"] == "done" and row["time_train_seconds"] == 1.5
    assert len(store.runs(sweep="s")) == 1 and store.runs(sweep="other").empty
    assert store.runs(status="failed").empty

    long = store.per_length(sweep="s")
    assert len(long) == 8 and set(long.columns) >= {"run_id", "length", "accuracy", "task"}
    assert long.set_index("length")["accuracy"].to_dict() == per_length_of(summary)

    # Restarting drops the old result (per-length rows exist only for done runs)...
    store.start_run(rid, CONFIG)
    assert store.per_length().empty and store.get_run(rid)["attempts"] == 2
    # ...and a failure is recorded with its error.
    store.fail_run(rid, "RuntimeError: boom")
    assert store.status(rid) == "failed" and store.get_run(rid)["error"] == "RuntimeError: boom"
    with pytest.raises(ValueError, match="unknown status"):
        store.runs(status="finished")


def test_claims_respect_done_failed_and_live_owners(tmp_path):
    store = ResultsStore(tmp_path / "s.sqlite")
    rid = config_hash(CONFIG)
    assert store.claim_run(rid, CONFIG)
    assert not store.claim_run(rid, CONFIG)  # live owner: this process
    store.release_run(rid)  # e.g. interrupted: claimable at once
    assert store.is_stale(rid) and store.claim_run(rid, CONFIG)
    store.fail_run(rid, "x")
    assert not store.claim_run(rid, CONFIG)
    assert store.claim_run(rid, CONFIG, retry_failed=True)
    summary = summary_for(CONFIG)
    store.finish_run(rid, summary, per_length_of(summary))
    assert not store.claim_run(rid, CONFIG, retry_failed=True)


def test_run_owned_by_a_dead_process_is_stale(tmp_path):
    store = ResultsStore(tmp_path / "s.sqlite")
    rid = config_hash(CONFIG)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store.start_run(rid, CONFIG)
    with sqlite3.connect(store.path) as conn:
        conn.execute("UPDATE runs SET pid = ? WHERE run_id = ?", (dead.pid, rid))
    assert store.is_stale(rid)
    assert store.claim_run(rid, CONFIG)
    # Another host's run is judged by its heartbeat only.
    with sqlite3.connect(store.path) as conn:
        conn.execute("UPDATE runs SET host = 'elsewhere', pid = 1 WHERE run_id = ?", (rid,))
    assert not store.is_stale(rid)
    assert store.is_stale(rid, stale_after=-1.0)


def test_incompatible_or_foreign_store_is_refused_without_writing(tmp_path):
    path = tmp_path / "old.sqlite"
    ResultsStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute(
            "UPDATE meta SET value = ? WHERE key = 'store_version'", (str(STORE_VERSION + 1),)
        )
        conn.commit()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # so the main file holds everything
    before = path.read_bytes()
    with pytest.raises(StoreError, match=f"version {STORE_VERSION + 1}.*reads version"):
        ResultsStore(path)
    assert path.read_bytes() == before

    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(StoreError, match="not a randpos results store"):
        ResultsStore(foreign)
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(StoreError):
        ResultsStore(garbage)


WRITER = textwrap.dedent(
    """
    import sys
    from randpos.results.store import ResultsStore
    path, worker, runs, lengths = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    store = ResultsStore(path, timeout=120)
    claimed = 0
    for i in range(runs):
        rid = f"run{i:04d}"
        config = {"task": "parity_check", "seed": i}
        if store.claim_run(rid, config, sweep="concurrent"):
            claimed += 1
            store.heartbeat([rid])
            summary = {"id_accuracy": 1.0, "ood_accuracy": worker / 10, "config": config,
                       "worker": worker}
            store.finish_run(rid, summary, {n: n / lengths for n in range(1, lengths + 1)},
                             {"worker": worker})
        # Unrelated rows written concurrently too (a single `randpos train` beside a sweep).
        own = f"w{worker}-{i}"
        store.start_run(own, {"seed": i})
        store.fail_run(own, "ok")
    print(claimed)
    """
)


def test_concurrent_writers(tmp_path):
    path = tmp_path / "shared.sqlite"
    runs, lengths, workers = 40, 50, 4
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(w), str(runs), str(lengths)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(workers)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outputs]
    claimed = sum(int(out.strip()) for out, _ in outputs)
    assert claimed == runs  # every shared run was claimed by exactly one writer
    store = ResultsStore(path)
    frame = store.runs(sweep="concurrent")
    assert len(frame) == runs and set(frame["status"]) == {"done"}
    assert set(frame["attempts"]) == {1}
    long = store.per_length(sweep="concurrent")
    assert len(long) == runs * lengths
    assert not long.duplicated(["run_id", "length"]).any()
    assert len(store.runs(status="failed")) == workers * runs
