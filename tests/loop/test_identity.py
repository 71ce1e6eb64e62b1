"""Run identity (randpos.loop.identity): a config spelled today and the same run spelled in an
earlier flat config have one id; every preset, sweep file and committed store keeps the ids it
had before configs held a position spec and encoding options."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import pytest

from randpos.loop.identity import config_hash, counted_fields, ensemble_key, run_id
from randpos.sweep.plan import expand, load_spec
from randpos.workloads import resolve_config
from randpos.workloads.compat import legacy_flat

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
sys.path.insert(0, str(DATA))
from record_run_ids import record  # noqa: E402 (the script that recorded run_ids.json)

#: each committed study's store and the sweeps whose runs it holds
STUDIES = {
    "reproduction": ["repro_cpu"],
    "zoo": ["zoo", "decoder"],
    "images": ["images"],
    "arpg": ["arpg"],
    "arithmetic": ["arithmetic"],
    "long_context": ["long_context"],
}


def test_presets_and_sweep_files_keep_their_run_ids(monkeypatch):
    monkeypatch.chdir(ROOT)
    recorded = json.loads((DATA / "run_ids.json").read_text())
    package = ROOT / "src" / "randpos"
    assert record(package / "workloads" / "presets", package / "sweep" / "presets") == recorded


@pytest.mark.parametrize("study", list(STUDIES))
def test_committed_stores_resolve_to_their_ids(study, monkeypatch):
    monkeypatch.chdir(ROOT)
    store = sqlite3.connect(ROOT / "results" / study / "store.sqlite")
    rows = store.execute("SELECT run_id, config FROM runs")
    stored = {rid: json.loads(config) for rid, config in rows}
    assert all(config_hash(config) == rid for rid, config in stored.items())
    for name in STUDIES[study]:
        members = {rid for (rid,) in store.execute(
            "SELECT run_id FROM sweep_runs WHERE sweep = ?", (name,))}  # fmt: skip
        assert set(expand(load_spec(name))) == members


def test_the_two_spellings_of_a_run_have_one_id():
    flat = {"task": "parity_check", "pe": "rope", "randomized": True, "max_position": 256,
            "randomize": "distances", "eval_positions": "spread", "rope_theta": 500.0}  # fmt: skip
    nested = {"task": "parity_check", "pe": "rope", "pe_options": {"theta": 500.0},
              "positions": {"sampler": "random", "max_position": 256, "reading": "distances",
                            "eval": "spread"}}  # fmt: skip
    dotted = {"task": "parity_check", "pe": "rope", "pe.theta": 500, "positions.sampler": "random",
              "positions.max_position": "256", "positions.reading": "distances",
              "positions.eval": "spread"}  # fmt: skip
    ids = {run_id(resolve_config(data)) for data in (flat, nested, dotted)}
    assert len(ids) == 1
    config = resolve_config(nested)
    # the stored (nested) form and its flat form hash alike; run-time fields do not count
    assert config_hash(config.to_dict()) == config_hash(legacy_flat(config.to_dict()))
    assert run_id(config.replace(device="cpu", threads=1, log_every=7)) == run_id(config)
    assert run_id(config.replace(seed=1)) != run_id(config)


def test_fields_added_later_count_only_away_from_their_defaults():
    config = resolve_config(task="parity_check")
    fields = counted_fields(config.to_dict())
    for later in ("workload", "options", "causal", "pe_options", "rope_theta", "cope_npos"):
        assert later not in fields
    assert "rope_theta" in counted_fields(config.replace(**{"pe.theta": 100}).to_dict())
    assert "causal" in counted_fields(config.replace(causal=True).to_dict())


def test_the_ensemble_key_ignores_only_seed_and_learning_rate():
    config = resolve_config(task="parity_check")
    key = ensemble_key(config)
    assert ensemble_key(config.replace(seed=3, learning_rate=5e-4)) == key
    assert ensemble_key(config.replace(**{"positions.max_position": 512})) != key
    assert ensemble_key(config.to_dict()) == key  # a resolved mapping, as the sweep leader has
