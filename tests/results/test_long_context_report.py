"""The report's long-context section: effective lengths by hand, the tables and the heat map
from a small store of long_context runs whose metrics are known."""

from __future__ import annotations

import pandas as pd
import pytest

from randpos.loop.identity import config_hash
from randpos.results.report import write_report
from randpos.results.report.long_context import (
    accuracy_table,
    arm_label,
    depth_frame,
    effective_length,
    effective_table,
    length_metrics,
    success_table,
)
from randpos.results.store import ResultsStore
from randpos.workloads import resolve_config

N = 16
LENGTHS = (16, 32, 64, 128)


def series(values) -> pd.Series:
    return pd.Series(dict(zip(LENGTHS, values, strict=True)))


@pytest.mark.parametrize(
    "values,threshold,want",
    [
        ((1.0, 0.95, 0.89, 0.99), None, 32),  # 0.89 < 0.9 x 1.0: stops before 64, never resumes
        ((0.5, 0.46, 0.45, 0.44), None, 64),  # 0.9 x 0.5 = 0.45
        ((0.5, 0.46, 0.45, 0.44), 0.85, 0),  # RULER's fixed form: below it at N already
        ((1.0, 1.0, 1.0, 1.0), 0.85, 128),
        ((0.0, 0.0, 0.0, 0.0), None, 0),  # nothing learned: no effective length
    ],
)
def test_effective_length_by_hand(values, threshold, want):
    assert effective_length(series(values), N, threshold) == want


def test_arm_labels_name_the_sampler_and_the_scaling():
    assert arm_label({"pe": "rope", "positions": {"sampler": "contiguous"}}) == "rope"
    assert arm_label({"pe": "rope", "positions": {"sampler": "random"}}) == "rope randomized"
    yarn = {"scaling": "yarn", "factor": 16.0, "original_max_position_embeddings": 128}
    label = arm_label({"pe": "rope", "pe_options": {**yarn, "train_scaling": False}})
    assert label == "rope yarn x16 at test"
    assert arm_label({"pe": "fox", "pe_options": {"forget_bias": 2.0}}) == "fox forget_bias=2.0"


#: (pe, sampler) -> per seed, the accuracy per length and per depth bin at each length
ARMS = {
    ("rope", "contiguous"): [(1.0, 0.5, 0.1, 0.0), (0.9, 0.9, 0.2, 0.0)],
    ("rope", "random"): [(1.0, 1.0, 0.95, 0.7), (1.0, 0.95, 0.9, 0.91)],
}


def build_store(path) -> ResultsStore:
    store = ResultsStore(path)
    for (pe, sampler), seeds in ARMS.items():
        for seed, values in enumerate(seeds):
            config = resolve_config(
                {
                    "workload": "long_context",
                    "task": "passkey",
                    "pe": pe,
                    "positions": {"sampler": sampler, "max_position": 256},
                    "max_train_length": N,
                    "eval_max_length": 128,
                    "seed": seed,
                }
            ).to_dict()
            rid = config_hash(config)
            metrics = {
                str(n): {"accuracy": a, **{f"depth_{b}": min(1.0, a + 0.1 * b) for b in range(5)}}
                for n, a in zip(LENGTHS, values, strict=True)
            }
            summary = {
                "config": config,
                "workload": "long_context",
                "id_accuracy": values[0],
                "ood_accuracy": sum(values[1:]) / 3,
                "per_length": {str(n): a for n, a in zip(LENGTHS, values, strict=True)},
                "size_metrics": metrics,
            }
            store.start_run(rid, config)
            store.finish_run(rid, summary, dict(zip(LENGTHS, values, strict=True)))
    return store


def test_the_tables_from_a_store(tmp_path):
    store = build_store(tmp_path / "store.sqlite")
    frame = length_metrics(store, store.runs(status="done"))
    accuracy = accuracy_table(frame).set_index("arm")
    assert accuracy.loc["rope", "1x"] == "95.0 ± 7.1" and accuracy.loc["rope", "8x"] == "0.0 ± 0.0"
    effective = effective_table(frame).set_index("arm")
    # rope: seed 0 stops at 1x (0.5 < 0.9), seed 1 reaches 2x; randomized: 4x (0.7 < 0.9) and 8x
    assert effective.loc["rope", "per seed"] == "1x, 2x"
    assert effective.loc["rope randomized", "per seed"] == "4x, 8x"
    assert effective.loc["rope randomized", "median effective length"] == "6x"
    fixed = effective_table(frame, threshold=0.95).set_index("arm")
    assert fixed.loc["rope", "per seed"] == "1x, 0x"
    success = success_table(frame, 0.9).set_index("arm")
    assert success.loc["rope randomized", "4x"] == "2/2" and success.loc["rope", "2x"] == "1/2"
    depth = depth_frame(frame)
    row = depth[(depth["arm"] == "rope") & (depth["length"] == 32) & (depth["depth"] == 2)]
    assert float(row["accuracy"].iloc[0]) == pytest.approx((0.7 + 1.0) / 2)


def test_the_report_writes_the_section_and_its_files(tmp_path):
    store = build_store(tmp_path / "store.sqlite")
    paths = write_report(store, tmp_path / "report")
    text = paths["markdown"].read_text()
    assert "## Long context" in text and "### Effective length" in text
    assert "heatmap_passkey" in text and paths["figure_heatmap_passkey"].is_file()
    tables = pd.read_csv(paths["long_context_tables_csv"])
    assert set(tables["table"]) == {"accuracy", "effective_length", "success"}
    again = write_report(store, tmp_path / "again", figures=False)
    for name in ("long_context_tables_csv", "long_context_depth_csv", "long_context_metrics_csv"):
        assert again[name].read_bytes() == paths[name].read_bytes()  # a pure function of the store
    with pytest.raises(ValueError, match="effective-length threshold"):
        write_report(store, tmp_path / "bad", effective_threshold=0.0)
