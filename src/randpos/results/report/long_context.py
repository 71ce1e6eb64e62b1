"""The report's long-context section (workload ``long_context``; docs/long-context.md).

Every number comes from the store: the per-length metrics are the runs' ``size_metrics``
(summary JSON, :mod:`randpos.workloads.long_context`). Runs are grouped into *arms*, named from
their config (the encoding, the position sampler when not contiguous, the RoPE scaling and
whether it applies at test time only, any other encoding option), and a (task, arm) cell holds
its seeds. The section gives:

* **accuracy per length**: mean ± sample std (ddof=1) over the cell's seeds at each evaluated
  length, as a multiple of the training length N (1x = N);
* **effective length** (Hsieh et al. 2024, arXiv 2404.06654: the longest length whose score
  stays above a threshold): per run, the largest evaluated length l such that the accuracy
  at every evaluated length from N up to l is at least the threshold; 0 when the accuracy at N
  is already below it (or is 0). The threshold is ``RELATIVE`` x the run's own accuracy at N
  by default, or a fixed accuracy (RULER's form, ``effective_threshold``). A cell shows the
  median over its seeds and every seed's value;
* **success rate over seeds**: per length, the seeds whose accuracy is at least tau (the
  report's success threshold), as k/n;
* the **depth x length heat map** of the tasks with depth strata (passkey, niah_multikey): the
  exact-match accuracy per depth bin and length, mean over seeds, one panel per arm;
* a figure of accuracy against length per task, one line per arm (mean over seeds).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from randpos.results.report.stats import DEFAULT_SUCCESS_THRESHOLD, QUANTILE_METHOD

WORKLOAD = "long_context"
#: the default threshold of the effective length: this fraction of a run's accuracy at N
RELATIVE = 0.9
SAMPLER_WORDS = {"random": "randomized", "float": "float", "pose": "pose"}


def arm_label(config: dict) -> str:
    """A short, stable name of a run's arm from its stored (nested) config: e.g. ``rope``,
    ``rope randomized``, ``rope yarn x16 at test``, ``fox``."""
    parts = [str(config.get("pe", "?"))]
    positions = config.get("positions") or {}
    sampler = positions.get("sampler", "contiguous")
    if sampler != "contiguous":
        parts.append(SAMPLER_WORDS.get(sampler, sampler))
    options = dict(config.get("pe_options") or {})
    scaling = options.pop("scaling", "none")
    factor = options.pop("factor", 1.0)
    at_test = options.pop("train_scaling", True) is False
    if scaling != "none":
        parts.append(f"{scaling} x{factor:g}" + (" at test" if at_test else ""))
    options.pop("original_max_position_embeddings", None)  # part of the scaling's setting
    parts += [f"{k}={v}" for k, v in sorted(options.items())]
    return " ".join(parts)


def context_runs(runs: pd.DataFrame) -> pd.DataFrame:
    if "workload" not in runs:
        return runs.iloc[0:0]
    return runs[runs["workload"] == WORKLOAD]


def length_metrics(store, runs: pd.DataFrame) -> pd.DataFrame:
    """Long format: task, arm, run_id, seed, train_length, length, factor, metric, value."""
    records = []
    for rid in context_runs(runs)["run_id"]:
        record = store.get_run(rid) or {}
        config = record.get("config") or {}
        summary = record.get("summary") or {}
        n = int(config.get("max_train_length", 0)) or 1
        for length, metrics in (summary.get("size_metrics") or {}).items():
            for name, value in metrics.items():
                records.append(
                    {
                        "task": config.get("task"),
                        "arm": arm_label(config),
                        "run_id": rid,
                        "seed": config.get("seed"),
                        "train_length": n,
                        "length": int(length),
                        "factor": int(length) / n,
                        "metric": name,
                        "value": float(value),
                    }
                )
    columns = ["task", "arm", "run_id", "seed", "train_length", "length", "factor"]
    frame = pd.DataFrame.from_records(records, columns=[*columns, "metric", "value"])
    return frame.sort_values(["task", "arm", "seed", "length", "metric"], kind="mergesort")


def _factor(value: float) -> str:
    return f"{value:g}x"


def effective_length(accuracy: pd.Series, train_length: int, threshold: float | None = None) -> int:
    """The effective length of one run from its accuracy per length (index: lengths): the
    largest evaluated length l >= N with every accuracy from N up to l at least the threshold
    (``threshold`` or, when None, ``RELATIVE`` x the accuracy at N); 0 when none."""
    accuracy = accuracy.sort_index()
    accuracy = accuracy[accuracy.index >= train_length]
    if accuracy.empty:
        return 0
    first = float(accuracy.iloc[0])
    bound = RELATIVE * first if threshold is None else threshold
    if first <= 0.0:
        return 0
    effective = 0
    for length, value in accuracy.items():
        if value < bound:
            break
        effective = int(length)
    return effective


def _cells(frame: pd.DataFrame):
    acc = frame[frame["metric"] == "accuracy"]
    return acc.groupby(["task", "arm"], sort=True)


def accuracy_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows (task, arm), columns the length factors: 'mean ± std' (%) over seeds."""
    rows = []
    for (task, arm), cell in _cells(frame):
        row = {"task": task, "arm": arm, "seeds": cell["seed"].nunique()}
        for factor, group in cell.groupby("factor", sort=True):
            values = group["value"]
            std = values.std(ddof=1) if len(values) > 1 else float("nan")
            text = f"{100 * values.mean():.1f}"
            row[_factor(factor)] = text + ("" if math.isnan(std) else f" ± {100 * std:.1f}")
        rows.append(row)
    return pd.DataFrame(rows)


def effective_table(frame: pd.DataFrame, threshold: float | None = None) -> pd.DataFrame:
    """Rows (task, arm): the mean accuracy at N, the median effective length over seeds (as a
    multiple of N) and every seed's."""
    rows = []
    for (task, arm), cell in _cells(frame):
        per_seed = {}
        for seed, run in cell.groupby("seed", sort=True):
            n = int(run["train_length"].iloc[0])
            per_seed[seed] = effective_length(run.set_index("length")["value"], n, threshold) / n
        at_n = cell[cell["factor"] == 1.0]["value"]
        values = list(per_seed.values())
        median = float(np.quantile(values, 0.5, method=QUANTILE_METHOD)) if values else math.nan
        rows.append(
            {
                "task": task,
                "arm": arm,
                "seeds": len(values),
                "accuracy at N (%)": f"{100 * at_n.mean():.1f}" if len(at_n) else "",
                "median effective length": _factor(median) if values else "",
                "per seed": ", ".join(_factor(v) for v in values),
            }
        )
    return pd.DataFrame(rows)


def success_table(frame: pd.DataFrame, tau: float = DEFAULT_SUCCESS_THRESHOLD) -> pd.DataFrame:
    """Rows (task, arm), columns the length factors: seeds with accuracy >= tau, as k/n."""
    rows = []
    for (task, arm), cell in _cells(frame):
        row = {"task": task, "arm": arm}
        for factor, group in cell.groupby("factor", sort=True):
            row[_factor(factor)] = f"{int((group['value'] >= tau).sum())}/{len(group)}"
        rows.append(row)
    return pd.DataFrame(rows)


def depth_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """task, arm, length, factor, depth bin, accuracy (mean over seeds), seeds."""
    depth = frame[frame["metric"].str.startswith("depth_")].copy()
    if depth.empty:
        return pd.DataFrame(columns=["task", "arm", "length", "factor", "depth", "accuracy"])
    depth["depth"] = depth["metric"].str.removeprefix("depth_").astype(int)
    keys = ["task", "arm", "length", "factor", "depth"]
    out = depth.groupby(keys, sort=True)["value"].agg(["mean", "count"]).reset_index()
    return out.rename(columns={"mean": "accuracy", "count": "seeds"})


def to_markdown(table: pd.DataFrame) -> str:
    head = list(table.columns)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join("" if pd.isna(v) else str(v) for v in row) + " |")
    return "\n".join(lines)


def heatmap_figure(depth: pd.DataFrame, task: str, path: Path) -> Path:
    """One panel per arm: accuracy (mean over seeds) per depth bin (rows, 0 = start of the
    context) and length (columns)."""
    import matplotlib  # heavy: imported only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy: imported only when a figure is drawn

    mine = depth[depth["task"] == task]
    arms = sorted(mine["arm"].unique())
    cols = min(4, len(arms))
    rows_n = -(-len(arms) // cols)
    fig, axes = plt.subplots(
        rows_n, cols, figsize=(3.2 * cols, 2.8 * rows_n), squeeze=False, dpi=110
    )
    fig.subplots_adjust(hspace=0.5, wspace=0.35)
    image = None
    for ax, arm in zip(axes.flat, arms, strict=False):
        grid = mine[mine["arm"] == arm].pivot(index="depth", columns="factor", values="accuracy")
        image = ax.imshow(grid.to_numpy(), vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        for (row, col), value in np.ndenumerate(grid.to_numpy()):
            ax.text(col, row, f"{100 * value:.0f}", ha="center", va="center", fontsize=6)
        ax.set_xticks(range(grid.shape[1]), [_factor(f) for f in grid.columns], fontsize=7)
        bins = grid.shape[0]
        ax.set_yticks(range(bins), [f"{100 * b // bins}%" for b in grid.index], fontsize=7)
        ax.set_title(arm, fontsize=8)
    for ax in list(axes.flat)[len(arms) :]:
        ax.axis("off")
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, label="exact match")
    fig.suptitle(
        f"{task}: accuracy by needle depth (rows, start of the bin) and length (x N)",
        fontsize=9,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def accuracy_figure(frame: pd.DataFrame, task: str, path: Path) -> Path:
    """Accuracy (mean over seeds) against length, one line per arm, log2 x axis."""
    import matplotlib  # heavy: imported only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy: imported only when a figure is drawn

    acc = frame[(frame["metric"] == "accuracy") & (frame["task"] == task)]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for arm, cell in acc.groupby("arm", sort=True):
        mean = cell.groupby("factor")["value"].mean()
        ax.plot(mean.index, mean.to_numpy(), marker="o", lw=1.3, label=arm)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("length (x training length N)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{task}: accuracy per length (mean over seeds)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _threshold_text(threshold: float | None) -> str:
    if threshold is None:
        return f"{RELATIVE:g} x the run's own accuracy at N"
    return f"a fixed accuracy of {threshold:g} (RULER's form)"


def caption(frame: pd.DataFrame, threshold: float | None, tau: float) -> str:
    n = sorted(frame["train_length"].unique().tolist())
    lengths = sorted(frame["length"].unique().tolist())
    return (
        f"Workload long_context: training length N = {', '.join(map(str, n))}; evaluated "
        f"lengths {', '.join(map(str, lengths))}. Accuracy: exact match of the answer "
        "(passkey, niah_multikey, variable_tracking) or accuracy over the reads (flip_flop), "
        "per length the mean over the length's evaluation sequences. Effective length: per "
        "run, the largest evaluated length up to which every accuracy from N on is at least "
        f"the threshold, {_threshold_text(threshold)}; 0x when the accuracy at N is below it. "
        f"Success: seeds whose accuracy at that length is at least tau = {tau:g}."
    )


def write_long_context_section(
    store,
    runs: pd.DataFrame,
    out: Path,
    figures: bool,
    *,
    threshold: float | None = None,
    tau: float = DEFAULT_SUCCESS_THRESHOLD,
) -> tuple[list[str], dict[str, Path]]:
    """Writes long_context_metrics.csv, long_context_tables.csv, long_context_depth.csv (and
    figures); returns (markdown lines, paths)."""
    if threshold is not None and not 0.0 < threshold <= 1.0:
        raise ValueError(
            f"the effective-length threshold is an accuracy in (0, 1], got {threshold}"
        )
    frame = length_metrics(store, runs)
    paths: dict[str, Path] = {}
    if frame.empty:
        return [], paths
    paths["long_context_metrics_csv"] = out / "long_context_metrics.csv"
    frame.to_csv(paths["long_context_metrics_csv"], index=False)
    accuracy, effective = accuracy_table(frame), effective_table(frame, threshold)
    success, depth = success_table(frame, tau), depth_frame(frame)
    tables = pd.concat(
        {"accuracy": accuracy, "effective_length": effective, "success": success}, names=["table"]
    ).reset_index(level=0)
    paths["long_context_tables_csv"] = out / "long_context_tables.csv"
    tables.to_csv(paths["long_context_tables_csv"], index=False)
    paths["long_context_depth_csv"] = out / "long_context_depth.csv"
    depth.to_csv(paths["long_context_depth_csv"], index=False)
    lines = ["", "## Long context", "", caption(frame, threshold, tau)]
    lines += ["", "### Accuracy per length (%, mean ± std over seeds)", "", to_markdown(accuracy)]
    lines += ["", "### Effective length", "", to_markdown(effective)]
    lines += [
        "",
        f"### Success rate over seeds (accuracy >= {tau:g})",
        "",
        to_markdown(success),
    ]
    if figures:
        for task in sorted(frame["task"].unique()):
            key = f"long_context_{task}"
            paths[f"figure_{key}"] = accuracy_figure(frame, task, out / "figures" / f"{key}.png")
            lines += ["", f"![{key}](figures/{key}.png)"]
            if task in set(depth["task"]):
                name = f"heatmap_{task}"
                paths[f"figure_{name}"] = heatmap_figure(
                    depth, task, out / "figures" / f"{name}.png"
                )
                lines += ["", f"![{name}](figures/{name}.png)"]
    return lines, paths


__all__ = [
    "RELATIVE",
    "accuracy_table",
    "arm_label",
    "depth_frame",
    "effective_length",
    "effective_table",
    "length_metrics",
    "success_table",
    "write_long_context_section",
]
