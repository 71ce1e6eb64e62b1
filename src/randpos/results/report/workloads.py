"""The report's section for runs of workloads other than the paper's encoder.

Table 1 is the paper's layout (task x encoding) and holds ``encoder`` runs only; every other
workload gets one table: a row per group of runs that agree on every config field but seed and
learning rate, with the run count, the best and the mean ± sample std (ddof=1) over the group of
the unseen-size score (``ood_accuracy``) and the mean in-distribution score, and one figure of
the per-size metric (mean over each group's runs).
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from randpos.loop.identity import ENSEMBLE_VARYING_FIELDS, RUNTIME_FIELDS
from randpos.results.report.stats import (
    DEFAULT_SUCCESS_THRESHOLD,
    QUANTILE_METHOD,
    best_lr_runs,
    length_band,
    seed_statistics,
)
from randpos.workloads.compat import FLAT_FIELDS

DEFAULT = "encoder"


def is_encoder(runs: pd.DataFrame) -> pd.Series:
    """Rows of the paper's workload (stores written before workloads existed have no column)."""
    if "workload" not in runs:
        return pd.Series(True, index=runs.index)
    return runs["workload"].isna() | (runs["workload"] == DEFAULT)


def group_columns(runs: pd.DataFrame) -> list[str]:
    """The config columns that vary between these runs, seed and learning rate aside."""
    fields = [f for f in FLAT_FIELDS if f != "options"] + ["pe_options"]
    fields += sorted(c for c in runs.columns if c.startswith("options."))
    skip = set(ENSEMBLE_VARYING_FIELDS) | set(RUNTIME_FIELDS)
    return [
        f
        for f in fields
        if f in runs and f not in skip and runs[f].astype(str).nunique(dropna=False) > 1
    ]


def seed_columns(
    group: pd.DataFrame, threshold: float, chance: pd.Series | None = None
) -> dict[str, float]:
    """The seed-statistics columns of a group of runs (randpos.results.report.stats): median, q1, q3
    and success rate of the unseen score over the seeds at the group's best-mean learning rate;
    with ``chance`` (per run, index of the runs), the group's mean chance level."""
    stats = seed_statistics(group, threshold)
    columns = {
        "median unseen": stats["median"],
        "q1 unseen": stats["q1"],
        "q3 unseen": stats["q3"],
        "success rate unseen": stats["success_rate"],
    }
    if chance is not None:
        columns["chance unseen"] = chance.reindex(group.index).mean()
    return columns


def workload_tables(
    runs: pd.DataFrame,
    threshold: float = DEFAULT_SUCCESS_THRESHOLD,
    chance: pd.Series | None = None,
) -> dict[str, pd.DataFrame]:
    """Per workload name (in order of appearance), its table of run groups. ``chance`` is each
    run's chance level (index of ``runs``); a workload whose runs have none gets no column."""
    tables: dict[str, pd.DataFrame] = {}
    if runs.empty:
        return tables
    for name in dict.fromkeys(runs["workload"]):
        mine = runs[runs["workload"] == name]
        keys = group_columns(mine)
        # options without a flat name stay a mapping (pe_options): group on its JSON text
        mine = mine.assign(**{k: mine[k].map(_hashable) for k in keys})
        groups = mine.groupby(keys, sort=True, dropna=False) if keys else [((), mine)]
        levels = chance.reindex(mine.index) if chance is not None else None
        if levels is not None and levels.isna().all():
            levels = None
        rows = []
        for key, group in groups:
            key = key if isinstance(key, tuple) else (key,)
            ood = group["ood_accuracy"].astype(float)
            rows.append(
                {
                    **dict(zip(keys, key, strict=True)),
                    "runs": len(group),
                    "best unseen": ood.max(),
                    "mean unseen": ood.mean(),
                    "std unseen": ood.std(ddof=1) if len(group) > 1 else np.nan,
                    "mean in-distribution": group["id_accuracy"].astype(float).mean(),
                    **seed_columns(group, threshold, levels),
                }
            )
        tables[name] = pd.DataFrame(rows)
    return tables


def _hashable(value):
    return json.dumps(value, sort_keys=True) if isinstance(value, dict) else value


def _cell(value, score: bool = True) -> str:
    """A score in % with one decimal; a config value as it is (a float column of a config
    field, e.g. ``options.loops`` with gaps, without the % scaling and without ``.0``)."""
    if isinstance(value, float):
        if np.isnan(value):
            return ""
        if not score:
            return str(int(value)) if value.is_integer() else f"{value:g}"
        return f"{100 * value:.1f}"
    return str(value)


def _score_columns(frame: pd.DataFrame) -> set[str]:
    return {c for c in frame.columns if "unseen" in c or "in-distribution" in c}


def to_markdown(frame: pd.DataFrame) -> str:
    scores = _score_columns(frame)
    head = [c + (" (%)" if c in scores else "") for c in frame.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in frame.itertuples(index=False):
        cells = (_cell(v, c in scores) for c, v in zip(frame.columns, row, strict=True))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def to_html(frame: pd.DataFrame) -> str:
    scores = _score_columns(frame)
    head = "".join(f"<th>{html.escape(c + (' (%)' if c in scores else ''))}</th>" for c in frame)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(_cell(v, c in scores))}</td>"
            for c, v in zip(frame.columns, row, strict=True)
        )
        + "</tr>"
        for row in frame.itertuples(index=False)
    )
    return f"<table><tr>{head}</tr>{body}</table>"


CAPTION = (
    "Runs grouped by every config field that varies except seed and learning rate. Unseen: "
    "mean metric over sizes N+1..M per run; best = max over the group's runs, mean ± sample "
    "std (ddof=1) over them; in-distribution: mean over sizes 1..N."
)


def seed_caption(threshold: float, chance: bool = False) -> str:
    """The sentence on the seed-statistics columns (and the chance column, when shown)."""
    text = (
        "Median, q1 and q3 (25th and 75th percentiles, numpy.quantile with "
        f"method={QUANTILE_METHOD!r}, numpy's default linear interpolation) and success rate "
        f"(fraction of seeds with an unseen score of at least tau = {threshold:g}) run over the "
        "seeds at the group's learning rate with the best mean (all of its runs when it has one)."
    )
    if chance:
        text += (
            " Chance: accuracy of the best answer that ignores the order of the output "
            "positions, on the runs' evaluation sequences and over the same unseen sizes."
        )
    return text


def figure_name(workload: str) -> str:
    return "workload_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", workload)


def metric_vs_size(per_length: pd.DataFrame, runs: pd.DataFrame, path: Path) -> Path:
    """The per-size metric of a workload's run groups: the mean over each group's runs, and the
    interquartile range over the seeds at its best-mean learning rate as a band (2+ seeds)."""
    import matplotlib  # heavy: imported only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy: imported only when a figure is drawn

    keys = group_columns(runs)
    label_of = {
        rid: ", ".join(f"{k}={v}" for k, v in zip(keys, values, strict=True)) or "all runs"
        for rid, *values in runs[["run_id", *keys]].itertuples(index=False)
    }
    rows = per_length[per_length["run_id"].isin(label_of)].copy()
    rows["group"] = rows["run_id"].map(label_of)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    n_train = int(runs["max_train_length"].max())
    ax.axvspan(0.5, n_train + 0.5, color="0.92", label=f"training sizes 1..{n_train}")
    for group, frame in rows.groupby("group", sort=True):
        mean = frame.groupby("length")["accuracy"].mean()
        (line,) = ax.plot(mean.index, mean.to_numpy(), lw=1.4, label=group)
        members = runs[runs["run_id"].isin(frame["run_id"])]
        seeds = best_lr_runs(members)["run_id"]
        if len(seeds) > 1:
            band = length_band(frame, seeds)
            ax.fill_between(
                band.index, band["q1"], band["q3"], color=line.get_color(), alpha=0.15, lw=0
            )
    ax.set_xlabel("size")
    ax.set_ylabel("metric")
    ax.set_title(
        f"{runs['workload'].iloc[0]}: metric per size (mean over seeds; band: interquartile "
        "range over the seeds at the best-mean learning rate)",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


__all__ = ["is_encoder", "metric_vs_size", "workload_tables"]
