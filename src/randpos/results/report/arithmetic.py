"""The report's arithmetic section (workload ``arithmetic``; docs/arithmetic.md).

Every number comes from the store: a run's grid cells are its ``size_metrics`` (the summary
JSON), ``cell_n_m`` = the exact-match rate on the S examples with operands of n and m digits.
Per run, three bands, each the mean over its cells:

* **in-distribution**: both operands of at most N digits (the training range);
* **out-of-distribution**: at least one operand longer than N;
* **beyond 2N**: both operands of 2N + 1 .. M digits (e.g. 21..40 for N = 10, M = 40), the
  band of the question "does it generalize to at least twice the training length".

Runs are grouped into arms (:func:`randpos.workloads.arithmetic.arm_label`: the attention
encoding, randomized or not, the digit positions, the format, the loops); the table gives per arm
the mean ± sample std (ddof=1) of each band over the seeds, the median and quartiles of the
beyond-2N band (numpy.quantile, method "linear") and its success rate: the fraction of seeds
whose beyond-2N band reaches tau (the report's success threshold). The heat maps show each arm's
cells averaged over its seeds, and every run's own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from randpos.results.report.images import to_markdown
from randpos.results.report.stats import QUANTILE_METHOD, summarize
from randpos.workloads.arithmetic import arm_label, plot_grids

WORKLOAD = "arithmetic"
BANDS = ("in-distribution", "out-of-distribution", "beyond 2N")


def arithmetic_runs(runs: pd.DataFrame) -> pd.DataFrame:
    if "workload" not in runs:
        return runs.iloc[0:0]
    return runs[runs["workload"] == WORKLOAD]


def cell_frame(store, runs: pd.DataFrame) -> pd.DataFrame:
    """Long format: arm, run_id, seed, N, M, n, m, exact (the done arithmetic runs' cells)."""
    mine = arithmetic_runs(runs)
    records = []
    summaries = {rid: (store.get_run(rid) or {}).get("summary") or {} for rid in mine["run_id"]}
    tasks = {s.get("task") for s in summaries.values()}
    for rid, seed, N, M in mine[
        ["run_id", "seed", "max_train_length", "eval_max_length"]
    ].itertuples(index=False):
        summary = summaries[rid]
        label = arm_label(summary["config"]) if summary.get("config") else str(rid)
        if len(tasks) > 1:
            label = f"{summary.get('task')}: {label}"
        for metrics in (summary.get("size_metrics") or {}).values():
            for name, value in metrics.items():
                if not name.startswith("cell_"):
                    continue
                _, n, m = name.split("_")
                records.append(
                    {
                        "arm": label,
                        "run_id": rid,
                        "seed": int(seed),
                        "N": int(N),
                        "M": int(M),
                        "n": int(n),
                        "m": int(m),
                        "exact": float(value),
                    }
                )
    columns = ["arm", "run_id", "seed", "N", "M", "n", "m", "exact"]
    return pd.DataFrame.from_records(records, columns=columns)


def band_of(n: pd.Series, m: pd.Series, N: pd.Series) -> dict[str, pd.Series]:
    """Each band's cells (bool per row)."""
    return {
        "in-distribution": (n <= N) & (m <= N),
        "out-of-distribution": (n > N) | (m > N),
        "beyond 2N": (n > 2 * N) & (m > 2 * N),
    }


def run_bands(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per run: arm, seed and each band's mean over its cells (NaN when empty)."""
    rows = []
    for (arm, rid, seed), frame in cells.groupby(["arm", "run_id", "seed"], sort=True):
        masks = band_of(frame["n"], frame["m"], frame["N"])
        row = {"arm": arm, "run_id": rid, "seed": seed}
        for band, mask in masks.items():
            row[band] = float(frame.loc[mask, "exact"].mean()) if mask.any() else np.nan
        rows.append(row)
    return pd.DataFrame(rows, columns=["arm", "run_id", "seed", *BANDS])


def arm_table(bands: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Per arm: seeds, mean ± std of each band, the beyond-2N median [q1, q3] and success."""
    rows = []
    for arm, frame in bands.groupby("arm", sort=True):
        row = {"arm": arm, "seeds": len(frame)}
        for band in BANDS:
            values = frame[band].astype(float)
            std = values.std(ddof=1) if len(values) > 1 else np.nan
            row[band] = _pm(values.mean(), std)
        stats = summarize(frame["beyond 2N"], threshold)
        row["beyond 2N median [q1, q3]"] = (
            f"{100 * stats['median']:.1f} [{100 * stats['q1']:.1f}, {100 * stats['q3']:.1f}]"
            if stats["seeds"]
            else ""
        )
        row[f"success (beyond 2N >= {threshold:g})"] = (
            f"{round(stats['success_rate'] * stats['seeds'])}/{stats['seeds']}"
            if stats["seeds"]
            else ""
        )
        rows.append(row)
    return pd.DataFrame(rows)


def _pm(mean: float, std: float) -> str:
    if np.isnan(mean):
        return ""
    return f"{100 * mean:.1f}" + ("" if np.isnan(std) else f" ± {100 * std:.1f}")


def mean_cells(cells: pd.DataFrame) -> dict[str, dict[tuple[int, int], float]]:
    """Arm -> cell -> exact match averaged over the arm's seeds."""
    means = cells.groupby(["arm", "n", "m"])["exact"].mean()
    out: dict[str, dict[tuple[int, int], float]] = {}
    for (arm, n, m), value in means.items():
        out.setdefault(arm, {})[(int(n), int(m))] = float(value)
    return out


def caption(cells: pd.DataFrame, threshold: float) -> str:
    N = sorted(cells["N"].unique())
    M = sorted(cells["M"].unique())
    per_cell = cells.groupby("run_id").size()
    return (
        f"Exact match of the whole answer (and EOS) on the operand-length grid, greedy decoding "
        f"with the KV cache; training operands of 1..N digits (N = {', '.join(map(str, N))}), "
        f"grid [1, M]^2 (M = {', '.join(map(str, M))}), {int(per_cell.max())} cells per run. "
        "Bands per run (mean over their cells): in-distribution = both operands <= N; "
        "out-of-distribution = at least one > N; beyond 2N = both > 2N. Per arm: mean ± sample "
        "std (ddof=1) over seeds, in %; median [q1, q3] over seeds (numpy.quantile, method "
        f"{QUANTILE_METHOD!r}); success = seeds whose beyond-2N band >= tau = {threshold:g}."
    )


def write_arithmetic_section(store, runs: pd.DataFrame, out: Path, figures: bool, threshold):
    """Writes arithmetic_cells.csv, arithmetic_bands.csv (+ heat maps); returns (markdown
    lines, paths)."""
    cells = cell_frame(store, runs)
    paths: dict[str, Path] = {}
    if cells.empty:
        return [], paths
    cells.to_csv(out / "arithmetic_cells.csv", index=False)
    paths["arithmetic_cells_csv"] = out / "arithmetic_cells.csv"
    bands = run_bands(cells)
    bands.to_csv(out / "arithmetic_bands.csv", index=False)
    paths["arithmetic_bands_csv"] = out / "arithmetic_bands.csv"
    table = arm_table(bands, threshold)
    lines = ["", "## Arithmetic", "", caption(cells, threshold), "", to_markdown(table)]
    if figures:
        N = int(cells["N"].max())
        means = plot_grids(mean_cells(cells), out / "figures" / "arithmetic_heatmaps.png", N)
        paths["figure_arithmetic_heatmaps"] = means
        panels = {
            f"{arm} (seed {seed})": {
                (int(n), int(m)): float(v)
                for n, m, v in frame[["n", "m", "exact"]].itertuples(index=False)
            }
            for (arm, seed), frame in cells.groupby(["arm", "seed"], sort=True)
        }
        seeds = int(cells.groupby("arm")["seed"].nunique().max())
        every = plot_grids(panels, out / "figures" / "arithmetic_runs.png", N, columns=seeds)
        paths["figure_arithmetic_runs"] = every
        lines += [
            "",
            "Heat maps: each arm's cells averaged over its seeds (training square outlined).",
            "",
            f"![arithmetic heat maps](figures/{means.name})",
            "",
            "Every run (one row per arm, one column per seed):",
            "",
            f"![arithmetic runs](figures/{every.name})",
        ]
    return lines, paths


__all__ = [
    "BANDS",
    "arm_table",
    "cell_frame",
    "mean_cells",
    "run_bands",
    "write_arithmetic_section",
]
