"""Statistics over seeds that the report states next to the paper's max-over-runs reading.

Length generalization is fragile across seeds (Zhou et al. 2024 report a large variance over
initialization and data order), so a cell's best run says little about a typical one. Per cell
(a group of runs that differ only in seed and learning rate):

* the learning rate is the one whose mean score over seeds is best (the seed table's rule; ties
  go to the lowest), and the statistics below run over that learning rate's seeds;
* **median** and **interquartile range** (q1 = 25th, q3 = 75th percentile) of the score, from
  ``numpy.quantile`` with ``method="linear"`` (numpy's default: linear interpolation between
  order statistics, Hyndman and Fan's type 7);
* **success rate**: the fraction of those seeds whose score is at least the threshold tau (a
  report option, default 0.9).

A run's score is its ``ood_accuracy``, the mean accuracy over the unseen lengths N+1..M.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

QUANTILE_METHOD = "linear"
DEFAULT_SUCCESS_THRESHOLD = 0.9
#: the keys of :func:`seed_statistics`, in the order the report's tables use
STATISTICS = ("median", "q1", "q3", "iqr", "success_rate")


def check_threshold(threshold: float) -> float:
    """The success threshold as a float; a ``ValueError`` unless it is an accuracy in [0, 1]."""
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"the success threshold is an accuracy in [0, 1], got {threshold}")
    return threshold


def summarize(scores, threshold: float = DEFAULT_SUCCESS_THRESHOLD) -> dict:
    """seeds, median, q1, q3, iqr and success_rate of the scores of one cell's seeds."""
    values = np.asarray([v for v in scores if pd.notna(v)], dtype=float)
    if values.size == 0:
        return {"seeds": 0, **{k: float("nan") for k in STATISTICS}}
    q1, median, q3 = np.quantile(values, [0.25, 0.5, 0.75], method=QUANTILE_METHOD)
    return {
        "seeds": int(values.size),
        "median": float(median),
        "q1": float(q1),
        "q3": float(q3),
        "iqr": float(q3 - q1),
        "success_rate": float(np.mean(values >= threshold)),
    }


def _learning_rates(runs: pd.DataFrame) -> pd.Series:
    if "learning_rate" not in runs:
        return pd.Series(-1.0, index=runs.index)
    return runs["learning_rate"].astype(float).fillna(-1.0)


def best_lr_runs(runs: pd.DataFrame, score: str = "ood_accuracy") -> pd.DataFrame:
    """The runs of one cell at its learning rate with the best mean score over seeds."""
    scored = runs[runs[score].notna()]
    if scored.empty:
        return scored
    lr = _learning_rates(scored)
    chosen = scored[score].astype(float).groupby(lr).mean().idxmax()
    return scored[lr == chosen]


def seed_statistics(
    runs: pd.DataFrame, threshold: float = DEFAULT_SUCCESS_THRESHOLD, score: str = "ood_accuracy"
) -> dict:
    """:func:`summarize` of one cell's runs at its best-mean learning rate, with that rate
    (NaN when the runs have none)."""
    chosen = best_lr_runs(runs, score)
    lr = _learning_rates(chosen)
    rate = float(lr.iloc[0]) if len(chosen) and lr.iloc[0] != -1.0 else float("nan")
    return {"learning_rate": rate, **summarize(chosen[score], threshold)}


def length_band(per_length: pd.DataFrame, run_ids) -> pd.DataFrame:
    """Per length, q1 and q3 (:data:`QUANTILE_METHOD`) of the accuracy over ``run_ids`` and how
    many of them have that length: the band the per-length figures draw over seeds."""
    rows = per_length[per_length["run_id"].isin(list(run_ids))]
    by_length = rows.groupby("length")["accuracy"]
    return pd.DataFrame(
        {
            "q1": by_length.quantile(0.25, interpolation=QUANTILE_METHOD),
            "q3": by_length.quantile(0.75, interpolation=QUANTILE_METHOD),
            "count": by_length.size(),
        }
    )


__all__ = [
    "DEFAULT_SUCCESS_THRESHOLD",
    "QUANTILE_METHOD",
    "STATISTICS",
    "best_lr_runs",
    "check_threshold",
    "length_band",
    "seed_statistics",
    "summarize",
]
