"""Report figures: accuracy against length per task (plain vs randomized), Table 1 heatmap."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from randpos.results.report.stats import length_band  # noqa: E402
from randpos.results.report.tables import Table1, column_label, pe_order  # noqa: E402

PLAIN_STYLE = {"color": "tab:red", "linestyle": "--", "label": "plain"}
RANDOM_STYLE = {"color": "tab:blue", "linestyle": "-", "label": "randomized"}


def best_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The run behind each Table 1 cell (highest unseen-length accuracy)."""
    order = runs.sort_values("ood_accuracy", ascending=False, kind="mergesort")
    return order.drop_duplicates(["task", "pe", "randomized"])


def accuracy_vs_length(
    per_length: pd.DataFrame,
    runs: pd.DataFrame,
    task: str,
    path: str | Path,
    *,
    seed_runs: dict | None = None,
    chance: pd.Series | None = None,
) -> Path:
    """One panel per PE: the best plain and best randomized run's accuracy at each length; the
    interquartile range over the seeds of the cell's learning rate with the best mean
    (``seed_runs``: (task, randomized, pe) -> run ids, the seed table's runs) as a dark band
    where there are two or more seeds, and the min-max over all runs of the cell (seeds x
    learning rates) as a light one; the task's ``chance`` level per length (dotted), the
    training lengths shaded."""
    path = Path(path)
    cell_runs = runs[runs["task"] == task]
    pes = pe_order(cell_runs["pe"].unique())
    cols = min(3, len(pes))
    rows = math.ceil(len(pes) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.2 * cols, 3.0 * rows), dpi=110, squeeze=False, sharey=True
    )
    best = best_runs(cell_runs).set_index(["pe", "randomized"])["run_id"]
    data = per_length[per_length["run_id"].isin(cell_runs["run_id"])]
    n_train = int(cell_runs["max_train_length"].max()) if "max_train_length" in cell_runs else None
    for ax, pe in zip(axes.flat, pes, strict=False):
        if n_train:
            ax.axvspan(0.5, n_train + 0.5, color="0.92", zorder=0)
        for randomized, style in ((False, PLAIN_STYLE), (True, RANDOM_STYLE)):
            ids = cell_runs[(cell_runs["pe"] == pe) & (cell_runs["randomized"] == randomized)]
            if ids.empty:
                continue
            cell = data[data["run_id"].isin(ids["run_id"])]
            band = cell.groupby("length")["accuracy"].agg(["min", "max"])
            ax.fill_between(
                band.index, band["min"], band["max"], color=style["color"], alpha=0.1, linewidth=0
            )
            seeds = (seed_runs or {}).get((task, randomized, pe), [])
            if len(seeds) > 1:
                iqr = length_band(cell, seeds)
                ax.fill_between(
                    iqr.index, iqr["q1"], iqr["q3"], color=style["color"], alpha=0.3, linewidth=0
                )
            top = cell[cell["run_id"] == best[(pe, randomized)]].sort_values("length")
            ax.plot(top["length"], top["accuracy"], lw=1.2, **style)
        if chance is not None and not chance.empty:
            ax.plot(chance.index, chance.to_numpy(), color="0.35", ls=":", lw=1.1, label="chance")
        ax.set_title(pe, fontsize=10)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.set_xlabel("length")
    for ax in list(axes.flat)[len(pes) :]:
        ax.axis("off")
    for row in axes:
        row[0].set_ylabel("accuracy")
    seen: dict[str, object] = {}
    for ax in axes.flat:  # a panel may lack one kind (e.g. none has no randomized form)
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    labels, handles = list(seen), list(seen.values())
    if n_train:
        handles.append(plt.Rectangle((0, 0), 1, 1, color="0.92"))
        labels.append(f"training lengths 1..{n_train}")
    fig.legend(handles, labels, loc="lower center", ncol=4, frameon=False, fontsize=9)
    title = (
        f"{task}: best run per cell (line); interquartile range over the seeds at the learning "
        "rate with the best mean (dark band, 2+ seeds); min-max over all seeds and learning "
        "rates (light band); chance: best order-free answer (dotted)"
    )
    fig.suptitle(textwrap.fill(title, width=int(62 * cols)), fontsize=8)
    lines = title.count("\n") + len(textwrap.wrap(title, width=int(62 * cols)))
    top = 1 - 0.045 * lines / rows
    fig.tight_layout(rect=(0, 0.09 / rows**0.5, 1, top))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def heatmap(table: Table1, path: str | Path) -> Path:
    """Table 1 as a colour grid (tasks x encodings, plain then randomized)."""
    path = Path(path)
    values = table.best.to_numpy(dtype=float)
    labels = [column_label(pe, r) for r, pe in table.best.columns]
    tasks = [task for _, task in table.best.index]
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(labels), 1.2 + 0.38 * len(tasks)), dpi=110)
    image = ax.imshow(
        np.ma.masked_invalid(values), vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto"
    )
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(tasks)), tasks, fontsize=8)
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if not np.isnan(values[i, j]):
                ax.text(
                    j,
                    i,
                    f"{100 * values[i, j]:.0f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if values[i, j] < 0.6 else "black",
                )
    plain = sum(1 for r, _ in table.best.columns if not r)
    if 0 < plain < len(labels):
        ax.axvline(plain - 0.5, color="white", lw=2)
    levels = [level for level, _ in table.best.index]
    for i in range(1, len(levels)):
        if levels[i] != levels[i - 1]:
            ax.axhline(i - 0.5, color="white", lw=2)
    fig.colorbar(image, ax=ax, fraction=0.04, label="accuracy")
    ax.set_title(
        "Table 1: mean accuracy over unseen lengths, max over seeds and learning rates", fontsize=9
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


__all__ = ["accuracy_vs_length", "best_runs", "heatmap"]
