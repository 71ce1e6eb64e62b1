"""The report's comparison of architectures on the algorithmic tasks (docs/decoder.md).

A run's architecture is derived from its config: ``decoder`` (the decoder workload: tasks posed
autoregressively, greedy decoding), ``encoder (causal)`` (the encoder with ``causal=true``) or
``encoder``. When a store holds task runs of more than one architecture, the report adds a table
with one row per (task, encoding, architecture, plain | randomized): the run count, the mean ±
sample std (ddof=1) over seeds of the unseen-length score (``ood_accuracy``, lengths N+1..M)
and the mean in-distribution score (lengths 1..N), then the seed statistics (median, quartiles,
success rate; randpos.results.report.stats) and the task's chance level
(randpos.results.report.chance); and a figure of accuracy per length per task.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from randpos.results.report.stats import DEFAULT_SUCCESS_THRESHOLD, best_lr_runs, length_band
from randpos.results.report.workloads import seed_columns

TASK_WORKLOADS = ("encoder", "decoder")

CAPTION = (
    "Architectures compared on the same tasks, evaluation sequences and protocol. Unseen: mean "
    "per-token accuracy over lengths N+1..M per run, then mean ± sample std (ddof=1) over the "
    "runs (seeds) of the row; in-distribution: mean over lengths 1..N. The decoder's accuracy "
    "is that of its greedy generation (each generated symbol fed back), the encoder's that of "
    "its one-pass answer at the blanks."
)


def _workloads(runs: pd.DataFrame) -> pd.Series:
    """Each run's workload name; stores written before workloads existed hold encoder runs."""
    if "workload" not in runs:
        return pd.Series("encoder", index=runs.index)
    return runs["workload"].fillna("encoder").astype(str)


def task_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs of the task workloads (encoder, decoder): those this comparison covers."""
    return runs[_workloads(runs).isin(TASK_WORKLOADS)]


def architecture(runs: pd.DataFrame) -> pd.Series:
    """Each run's architecture label (index of ``runs``)."""
    workload = _workloads(runs)
    causal = runs["causal"].fillna(False).astype(bool) if "causal" in runs else False
    out = workload.copy()
    out[(workload == "encoder") & causal] = "encoder (causal)"
    return out


def architecture_table(
    runs: pd.DataFrame,
    threshold: float = DEFAULT_SUCCESS_THRESHOLD,
    chance: pd.Series | None = None,
) -> pd.DataFrame | None:
    """The comparison table, or None when the task runs have a single architecture. The seed
    statistics and ``chance`` (each run's chance level, index of ``runs``) follow the columns
    of the mean (randpos.results.report.workloads.seed_columns)."""
    if "task" not in runs or runs.empty:
        return None
    mine = task_runs(runs).copy()
    if mine.empty:
        return None
    mine["architecture"] = architecture(mine)
    if mine["architecture"].nunique() < 2:
        return None
    rows = []
    keys = ["task", "pe", "architecture", "randomized"]
    for key, group in mine.groupby(keys, sort=True):
        ood = group["ood_accuracy"].astype(float)
        rows.append(
            {
                **dict(zip(keys, key, strict=True)),
                "runs": len(group),
                "mean unseen": ood.mean(),
                "std unseen": ood.std(ddof=1) if len(group) > 1 else np.nan,
                "mean in-distribution": group["id_accuracy"].astype(float).mean(),
                **seed_columns(group, threshold, chance),
            }
        )
    return pd.DataFrame(rows)


def accuracy_by_architecture(per_length: pd.DataFrame, runs: pd.DataFrame, path: Path) -> Path:
    """Accuracy per length, one panel per task, a line per (architecture, encoding, plain |
    randomized): the mean over the runs (seeds), with the interquartile range over the seeds at
    the row's learning rate with the best mean as a band where there are two or more."""
    import matplotlib  # heavy: imported only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy: imported only when a figure is drawn

    runs = runs.copy()
    runs["architecture"] = architecture(runs)
    tasks = sorted(runs["task"].dropna().unique())
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), dpi=110, squeeze=False)
    n_train = int(runs["max_train_length"].max())
    for ax, task in zip(axes[0], tasks, strict=True):
        mine = runs[runs["task"] == task]
        ax.axvspan(0.5, n_train + 0.5, color="0.92")
        for (arch, pe, randomized), group in mine.groupby(
            ["architecture", "pe", "randomized"], sort=True
        ):
            rows = per_length[per_length["run_id"].isin(group["run_id"])]
            mean = rows.groupby("length")["accuracy"].mean()
            label = f"{arch}, {pe}{' randomized' if randomized else ''}"
            style = "-" if arch == "decoder" else "--"
            (line,) = ax.plot(mean.index, mean.to_numpy(), style, lw=1.3, label=label)
            seeds = best_lr_runs(group)["run_id"]
            if len(seeds) > 1:
                band = length_band(rows, seeds)
                ax.fill_between(
                    band.index, band["q1"], band["q3"], color=line.get_color(), alpha=0.15, lw=0
                )
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("length")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (mean over seeds)")
    fig.suptitle(
        "mean over seeds (line), interquartile range over the seeds at the best-mean learning "
        "rate (band, 2+ seeds)",
        fontsize=9,
    )
    axes[0][-1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


__all__ = ["CAPTION", "accuracy_by_architecture", "architecture", "architecture_table", "task_runs"]
