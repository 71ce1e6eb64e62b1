"""Reports from a deterministic fixture store, checked against hand-computed aggregates."""

from __future__ import annotations

import random
import re
import statistics
from pathlib import Path

import pandas as pd
import pytest
from report_fixture import GOLDEN_FILES, build_small_store

from randpos.loop.identity import config_hash
from randpos.results.report import build_report, write_report
from randpos.results.report.compare import compare_reports
from randpos.results.report.tables import headline_gain
from randpos.results.store import ResultsStore, StoreError

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


GOLDEN = Path(__file__).resolve().parents[1] / "data" / "report_golden"


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


def _quantile(values, p):
    """Linear interpolation between order statistics (numpy's default, type 7), by hand."""
    x = sorted(values)
    h = (len(x) - 1) * p
    lo = int(h)
    return x[lo] + (h - lo) * (x[min(lo + 1, len(x) - 1)] - x[lo])


def _hand_cells(runs, threshold):
    """Per encoder cell of the small store: the seed statistics, computed from the raw scores."""
    cells: dict[tuple, dict[float, list[float]]] = {}
    for run in runs.values():
        c = run["config"]
        if c["workload"] == "encoder":
            key = (c["task"], c["pe"], c["randomized"])
            cells.setdefault(key, {}).setdefault(c["learning_rate"], []).append(run["ood"])
    out = {}
    for key, by_lr in cells.items():
        lr = max(sorted(by_lr), key=lambda r: statistics.mean(by_lr[r]))  # ties: lowest
        x = by_lr[lr]
        out[key] = {
            "learning_rate": lr,
            "seeds": len(x),
            "median": statistics.median(x),
            "q1": _quantile(x, 0.25),
            "q3": _quantile(x, 0.75),
            "success_rate": sum(v >= threshold for v in x) / len(x),
            "best": max(v for vs in by_lr.values() for v in vs),
        }
    return out


# Scores are in [0, 1]: numpy's interpolation and the hand one differ by a few ulp (< 1e-15);
# the headline's mean of a handful of 100x differences stays within 1e-12.
TIGHT = 1e-12


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    path = tmp_path_factory.mktemp("small") / "store.sqlite"
    return build_small_store(path)


def test_median_iqr_and_success_rate_match_hand_computation(small, tmp_path):
    from report_fixture import EVAL, M, N

    from randpos.results.report.chance import chance_at_length

    store, runs = small
    tau = 0.7  # the fixture's scores straddle it, so the success rates are not all 0 or 1
    report = build_report(store, sweep="small", success_threshold=tau)
    t = report.table
    hand = _hand_cells(runs, tau)
    levels = {"parity_check": "regular", "reverse_string": "dcf"}
    assert {v["success_rate"] for v in hand.values()} - {0.0, 1.0}  # a non-trivial rate
    for (task, pe, randomized), want in hand.items():
        key, col = (levels[task], task), (randomized, pe)
        assert t.median.loc[key, col] == pytest.approx(want["median"], abs=TIGHT)
        assert t.q1.loc[key, col] == pytest.approx(want["q1"], abs=TIGHT)
        assert t.q3.loc[key, col] == pytest.approx(want["q3"], abs=TIGHT)
        assert t.success.loc[key, col] == want["success_rate"]  # k / 3, the same division
        assert t.seeds.loc[key, col] == want["seeds"]
        assert t.best.loc[key, col] == want["best"]
    # the chance column: the task's chance over the cells' unseen lengths N+1..M
    seed, sequences, sub = EVAL["eval_seed"], EVAL["eval_batch_size"], EVAL["eval_sub_batch_size"]
    for task, level in levels.items():
        per = [chance_at_length(task, n, seed, sequences, sub) for n in range(N + 1, M + 1)]
        # a mean of 10 values, then a mean of 3 equal ones: within 1e-15
        assert t.chance_row[(level, task)] == pytest.approx(statistics.mean(per), abs=TIGHT)

    # the median-based headline: the same pairs as the max-based one
    pairs = [(task, "rope") for task in levels]
    gains = [
        100 * (hand[(task, pe, True)]["median"] - hand[(task, pe, False)]["median"])
        for task, pe in pairs
    ]
    m = t.median_headline
    assert m["median_cells"] == t.headline["cells"] == 2
    assert m["median_gain"] == pytest.approx(statistics.mean(gains), abs=TIGHT)
    assert set(m["median_gains"]) == set(t.headline["gains"])
    for r, name in ((False, "success_rate_plain"), (True, "success_rate_randomized")):
        want = statistics.mean(hand[(task, pe, r)]["success_rate"] for task, pe in pairs)
        assert m[name] == pytest.approx(want, abs=TIGHT)

    # the files: table1_stats.csv row by row, the new headline keys, the tables' text
    out = tmp_path / "report"
    write_report(store, out, sweep="small", figures=False, success_threshold=tau)
    stats = pd.read_csv(out / "table1_stats.csv")
    assert len(stats) == len(hand)
    for row in stats.itertuples(index=False):
        want = hand[(row.task, row.pe, bool(row.randomized))]
        assert row.learning_rate == want["learning_rate"] and row.seeds == want["seeds"]
        assert row.median == pytest.approx(want["median"], abs=TIGHT)
        assert row.iqr == pytest.approx(want["q3"] - want["q1"], abs=TIGHT)
        assert row.success_threshold == tau
    seeds = pd.read_csv(out / "table1_seeds.csv").set_index("task")
    want = hand[("reverse_string", "rope", True)]
    assert seeds.loc["reverse_string", "rope_randomized_median"] == pytest.approx(
        want["median"], abs=TIGHT
    )
    assert seeds.loc["reverse_string", "rope_randomized_success_rate"] == want["success_rate"]
    assert "chance" in pd.read_csv(out / "table1.csv").columns
    import json

    headline = json.loads((out / "headline.json").read_text())
    assert headline["median_gain"] == pytest.approx(m["median_gain"], abs=TIGHT)
    assert headline["seed_statistics"]["success_threshold"] == tau
    assert set(headline["chance"]) == set(levels)
    md = (out / "report.md").read_text()
    assert "## Median [q1, q3] over seeds" in md and "## Success rate over seeds (τ = 0.7)" in md
    k = round(want["success_rate"] * 3)
    assert f" {k}/3 |" in md
    assert f"{100 * want['median']:.1f} [{100 * want['q1']:.1f}, {100 * want['q3']:.1f}]" in md
    assert "From the medians over seeds" in md and "| level | task | chance |" in md
    assert "method='linear'" in md
    chance = pd.read_csv(out / "chance.csv")
    assert set(chance["task"]) == set(levels)


def test_the_architecture_and_workload_tables_gain_the_seed_columns(small):
    store, runs = small
    report = build_report(store, sweep="small", success_threshold=0.7)
    arch = report.architectures.set_index(["task", "pe", "architecture", "randomized"])
    decoder = [
        r["ood"]
        for r in runs.values()
        if r["config"]["workload"] == "decoder" and r["config"]["randomized"]
    ]
    row = arch.loc[("reverse_string", "rope", "decoder", True)]
    assert row["median unseen"] == pytest.approx(statistics.median(decoder), abs=TIGHT)
    assert row["q1 unseen"] == pytest.approx(_quantile(decoder, 0.25), abs=TIGHT)
    assert row["success rate unseen"] == sum(v >= 0.7 for v in decoder) / len(decoder)
    encoder = arch.loc[("reverse_string", "rope", "encoder", True)]
    assert encoder["chance unseen"] == pytest.approx(row["chance unseen"], abs=TIGHT)
    assert report.workloads["decoder"]["chance unseen"].notna().all()
    vit = report.workloads["vit"]  # no task of its own: no chance column
    assert "chance unseen" not in vit.columns and "median unseen" in vit.columns
    scores = [r["ood"] for r in runs.values() if r["config"]["workload"] == "vit"]
    assert vit["median unseen"].iloc[0] == pytest.approx(statistics.median(scores), abs=TIGHT)


def test_the_cli_passes_the_success_threshold(small, tmp_path):
    import json

    from typer.testing import CliRunner

    from randpos.cli import app

    store, _ = small
    out = tmp_path / "cli"
    args = ["report", "--store", str(store.path), "--sweep", "small", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--no-figures", "--success-threshold", "0.75"])
    assert result.exit_code == 0, result.output
    assert "From the medians over seeds" in result.output
    headline = json.loads((out / "headline.json").read_text())
    assert headline["seed_statistics"]["success_threshold"] == 0.75
    bad = CliRunner().invoke(app, [*args, "--success-threshold", "1.5"])
    assert bad.exit_code != 0
