"""Reports from a deterministic fixture store, checked against hand-computed aggregates."""

from __future__ import annotations

import random
import re
import statistics
from pathlib import Path

import pandas as pd
import pytest
from report_fixture import GOLDEN_FILES, build_small_store

from randpos.report import build_report, write_report
from randpos.report.compare import compare_reports
from randpos.report.tables import headline_gain
from randpos.store import ResultsStore, StoreError, config_hash

N, M = 10, 20
TASKS = {"parity_check": "regular", "reverse_string": "dcf", "duplicate_string": "cs"}
PES = ["none", "rope", "alibi"]
LRS = [1e-4, 3e-4]
SEEDS = [0, 1, 2]


def fixture_configs():
    for task in TASKS:
        for pe in PES:
            for randomized in (False, True):
                if pe == "none" and randomized:
                    continue
                for lr in LRS:
                    for seed in SEEDS:
                        yield {
                            "task": task,
                            "pe": pe,
                            "randomized": randomized,
                            "learning_rate": lr,
                            "seed": seed,
                            "steps": 100,
                            "max_train_length": N,
                            "eval_max_length": M,
                            "max_position": 64,
                        }


def build_fixture_store(path):
    """Runs with made-up but fixed scores; returns {config key: ood accuracy}."""
    rng = random.Random(1234)
    store = ResultsStore(path)
    plan, scores = {}, {}
    for config in fixture_configs():
        rid = config_hash(config)
        plan[rid] = config
        ood = round(rng.uniform(0.45, 0.75) + (0.2 if config["randomized"] else 0.0), 4)
        key = (
            config["task"],
            config["pe"],
            config["randomized"],
            config["learning_rate"],
            config["seed"],
        )
        scores[key] = ood
        per_length = {n: 1.0 for n in range(1, N + 1)} | {n: ood for n in range(N + 1, M + 1)}
        store.start_run(rid, config, sweep="fixture")
        store.finish_run(
            rid,
            {"id_accuracy": 1.0, "ood_accuracy": ood, "config": config},
            per_length,
            {"train_seconds": 1.0},
        )
    store.register_sweep("fixture", {"grid": "fixture"}, plan)
    # Noise the report must ignore: a failed run, a running one, another sweep's run.
    extra = {
        "task": "parity_check",
        "pe": "rope",
        "randomized": True,
        "learning_rate": 1e-4,
        "seed": 99,
        "steps": 100,
        "max_train_length": N,
        "eval_max_length": M,
    }
    store.start_run(config_hash(extra), extra, sweep="fixture")
    store.fail_run(config_hash(extra), "boom")
    running = {**extra, "seed": 98}
    store.start_run(config_hash(running), running, sweep="fixture")
    other = {**extra, "seed": 97}
    store.start_run(config_hash(other), other, sweep="other")
    store.finish_run(
        config_hash(other),
        {"id_accuracy": 1.0, "ood_accuracy": 1.0},
        {n: 1.0 for n in range(1, M + 1)},
    )
    return store, scores


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "fixture.sqlite"
    return build_fixture_store(path)


def expected_cells(scores):
    best, mean, std = {}, {}, {}
    for task in TASKS:
        for pe in PES:
            for randomized in (False, True):
                if pe == "none" and randomized:
                    continue
                by_lr = {lr: [scores[(task, pe, randomized, lr, s)] for s in SEEDS] for lr in LRS}
                best[(task, pe, randomized)] = max(max(v) for v in by_lr.values())
                lr = max(LRS, key=lambda lr: statistics.mean(by_lr[lr]))
                mean[(task, pe, randomized)] = statistics.mean(by_lr[lr])
                std[(task, pe, randomized)] = statistics.stdev(by_lr[lr])
    return best, mean, std


def test_table_cells_and_headline_match_hand_computation(fixture):
    store, scores = fixture
    report = build_report(store, sweep="fixture")
    t = report.table
    best, mean, std = expected_cells(scores)
    # docs/reference-system.md §1 order, by level
    assert [task for _, task in t.best.index] == list(TASKS)
    assert [level for level, _ in t.best.index] == list(TASKS.values())
    assert list(t.best.columns) == [
        (False, "none"),
        (False, "alibi"),
        (False, "rope"),
        (True, "alibi"),
        (True, "rope"),
    ]  # the paper's order
    for (task, pe, randomized), value in best.items():
        level = TASKS[task]
        assert t.best.loc[(level, task), (randomized, pe)] == pytest.approx(value)
        assert t.mean.loc[(level, task), (randomized, pe)] == pytest.approx(
            mean[(task, pe, randomized)]
        )
        assert t.std.loc[(level, task), (randomized, pe)] == pytest.approx(
            std[(task, pe, randomized)]
        )
        assert t.counts.loc[(level, task), (randomized, pe)] == len(LRS) * len(SEEDS)
    gains = [
        100 * (best[(task, pe, True)] - best[(task, pe, False)])
        for task in TASKS
        for pe in ("rope", "alibi")
    ]
    assert t.headline["cells"] == 6
    assert t.headline["mean_gain"] == pytest.approx(statistics.mean(gains))
    assert "maximum over 3 seeds" in t.caption and "2 learning rates" in t.caption
    assert "41" not in t.caption and "11..20" in t.caption  # unseen lengths N+1..M


def test_headline_skips_cells_without_both_forms():
    columns = pd.MultiIndex.from_tuples(
        [(False, "none"), (False, "rope"), (True, "rope")], names=["randomized", "pe"]
    )
    index = pd.MultiIndex.from_tuples([("cs", "a"), ("cs", "b")], names=["level", "task"])
    table = pd.DataFrame([[0.5, 0.5, 0.9], [0.5, 0.6, float("nan")]], index=index, columns=columns)
    h = headline_gain(table)
    assert h["cells"] == 1 and h["mean_gain"] == pytest.approx(40.0)


def test_all_outputs_are_written_and_self_contained(fixture, tmp_path):
    store, scores = fixture
    out = tmp_path / "report"
    paths = write_report(store.path, out, sweep="fixture")
    for name in (
        "report.md",
        "report.html",
        "table1.tex",
        "table1.csv",
        "table1_seeds.csv",
        "per_length.csv",
        "per_length.parquet",
        "runs.csv",
        "headline.json",
        "figures/table1_heatmap.png",
    ):
        assert (out / name).is_file(), name
    for task in TASKS:
        assert (out / "figures" / f"accuracy_{task}.png").stat().st_size > 1000
    assert paths["html"] == out / "report.html"

    html = (out / "report.html").read_text()
    sources = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]+)""", html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<script" not in html and "<link" not in html
    assert "max" in html.lower() and "percentage points" in html

    raw = pd.read_parquet(out / "per_length.parquet")
    runs = len(scores)
    assert len(raw) == runs * M and set(raw["length"]) == set(range(1, M + 1))
    assert {"run_id", "length", "accuracy", "task", "pe", "randomized", "seed"} <= set(raw)
    assert len(pd.read_csv(out / "per_length.csv")) == runs * M

    md = (out / "report.md").read_text()
    best, _, _ = expected_cells(scores)
    assert f"{100 * best[('duplicate_string', 'rope', True)]:.1f}" in md
    tex = (out / "table1.tex").read_text()
    assert r"\begin{tabular}" in tex and r"\toprule" in tex and "Randomized" in tex
    assert r"parity\_check" in tex


def test_report_of_whole_store_and_bad_inputs(fixture, tmp_path):
    store, scores = fixture
    everything = build_report(store)  # no sweep filter: includes the other sweep's run
    assert len(everything.runs) == len(scores) + 1
    with pytest.raises(ValueError, match="no sweep named 'nope'.*known: fixture, other"):
        write_report(store, tmp_path / "a", sweep="nope")
    empty = ResultsStore(tmp_path / "empty.sqlite")
    with pytest.raises(ValueError, match="no finished runs"):
        write_report(empty, tmp_path / "b")
    with pytest.raises(FileNotFoundError, match="no results store"):
        write_report(tmp_path / "missing.sqlite", tmp_path / "c")
    old = tmp_path / "old.sqlite"
    ResultsStore(old).close()
    import sqlite3

    with sqlite3.connect(old) as conn:
        conn.execute("UPDATE meta SET value = '0' WHERE key = 'store_version'")
    with pytest.raises(StoreError, match="version 0"):
        write_report(old, tmp_path / "d")
    for name in "abcd":
        assert not (tmp_path / name).exists()  # nothing written on bad input


GOLDEN = Path(__file__).with_name("data") / "report_golden"


def test_a_regenerated_report_keeps_every_recorded_column_byte_identical(tmp_path):
    """The CSV columns and JSON keys written by the report code before the seed statistics
    (tests/data/report_golden) come out byte for byte the same; new ones may only be added."""
    store, _ = build_small_store(tmp_path / "store.sqlite")
    write_report(store, tmp_path / "report", sweep="small", figures=False)
    checks = {c.name: c for c in compare_reports(GOLDEN, tmp_path / "report")}
    assert set(GOLDEN_FILES) <= set(checks)
    for name in GOLDEN_FILES:
        assert checks[name].ok, checks[name].line()
        assert checks[name].kept, name


def test_the_column_comparison_catches_a_changed_cell_and_a_dropped_key(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    (old / "t.csv").write_text("a,b\n1,0.1\n2,0.2\n")
    (new / "t.csv").write_text("a,c,b\n1,x,0.1\n2,y,0.20\n")  # same number, other text
    (old / "h.json").write_text('{"k": 1.0, "j": [1, 2]}')
    (new / "h.json").write_text('{"k": 1.0, "extra": 3}')
    checks = {c.name: c for c in compare_reports(old, new)}
    assert checks["t.csv"].kept == ["a"] and checks["t.csv"].added == ["c"]
    assert "column 'b' differs (first at row 2)" in checks["t.csv"].problems
    assert checks["h.json"].problems == ["key 'j' missing"] and checks["h.json"].added == ["extra"]
