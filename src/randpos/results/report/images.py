"""The report's images section (workloads ``vit``, ``dit`` and ``arpg``; docs/images.md).

Every number comes from the store: the per-side metrics are the runs' ``size_metrics``
(summary JSON). Runs are grouped into *arms* (every config field that varies between the runs
of one workload, seed aside); a table per workload and metric gives, per arm and canvas side,
the mean ± sample std (ddof=1) over the arm's seeds; a figure plots the metrics against the
side; sample grids are read from the runs' ``samples.npz`` where their directories still exist.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from randpos.results.report.workloads import group_columns

IMAGE_WORKLOADS = ("vit", "dit", "arpg")
#: the metrics shown per workload, first the workload's own; lower is better for all but
#: the accuracies
METRICS = {
    "vit": ("accuracy", "loss"),
    "dit": ("sample_accuracy", "fd", "kid", "denoise", "components_gap", "ink_gap"),
    "arpg": ("sample_accuracy", "fd", "kid", "nll_random", "nll_raster", "components_gap"),
}
#: the workloads that generate samples (samples.npz in their run directories)
GENERATIVE = ("dit", "arpg")
TITLES = {"vit": "ViT", "dit": "DiT", "arpg": "ARPG"}
HIGHER_IS_BETTER = {"accuracy", "sample_accuracy"}


def image_runs(runs: pd.DataFrame) -> pd.DataFrame:
    if "workload" not in runs:
        return runs.iloc[0:0].assign(workload=pd.Series(dtype=object))
    return runs[runs["workload"].isin(IMAGE_WORKLOADS)]


def _short(key: str, value) -> str | None:
    """A compact label part for one varying field (None: leave it out)."""
    name = key.removeprefix("options.")
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if name == "pe":
        return str(value)
    if name == "randomized":
        return "randomized" if value in (True, "True", "true") else None
    if isinstance(value, (bool, np.bool_)):
        return name if value else None
    if value in ("none", "", "nan"):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # a column with gaps holds integers as floats
    return f"{name}={value}"


def arm_labels(runs: pd.DataFrame) -> dict[str, str]:
    """run_id -> its arm's label (pe, then the other varying fields, seed aside)."""
    keys = [k for k in group_columns(runs) if k not in ("workload", "pe")]
    keys = ["pe"] * ("pe" in runs) + sorted(keys, key=lambda k: (k != "randomized", k))
    labels = {}
    for row in runs[["run_id", *keys]].itertuples(index=False):
        parts = [_short(k, v) for k, v in zip(keys, row[1:], strict=True)]
        labels[row[0]] = " ".join(p for p in parts if p) or "all runs"
    return labels


def size_metrics(store, runs: pd.DataFrame) -> pd.DataFrame:
    """Long format: workload, arm, run_id, seed, side, metric, value (done image runs)."""
    records = []
    for workload, mine in image_runs(runs).groupby("workload", sort=False):
        labels = arm_labels(mine)
        for rid, seed in mine[["run_id", "seed"]].itertuples(index=False):
            record = store.get_run(rid) or {}
            summary = record.get("summary") or {}
            for side, metrics in (summary.get("size_metrics") or {}).items():
                for name, value in metrics.items():
                    records.append(
                        {
                            "workload": workload,
                            "arm": labels[rid],
                            "run_id": rid,
                            "seed": seed,
                            "side": int(side),
                            "metric": name,
                            "value": float(value),
                            "out_dir": record.get("out_dir"),
                        }
                    )
    columns = ["workload", "arm", "run_id", "seed", "side", "metric", "value", "out_dir"]
    return pd.DataFrame.from_records(records, columns=columns)


def metric_table(frame: pd.DataFrame, workload: str, metric: str) -> pd.DataFrame:
    """Rows = arms, columns = sides: 'mean ± std (n)' over seeds."""
    rows = frame[(frame["workload"] == workload) & (frame["metric"] == metric)]
    if rows.empty:
        return pd.DataFrame()
    stats = rows.groupby(["arm", "side"])["value"].agg(["mean", "std", "count"]).reset_index()
    scale = 100.0 if metric in HIGHER_IS_BETTER else 1.0

    def cell(r) -> str:
        std = "" if np.isnan(r["std"]) else f" ± {scale * r['std']:.{_digits(metric)}f}"
        return f"{scale * r['mean']:.{_digits(metric)}f}{std}"

    stats["cell"] = stats.apply(cell, axis=1)
    table = stats.pivot(index="arm", columns="side", values="cell")
    table.columns = [f"S={c}" for c in table.columns]
    counts = rows.groupby("arm")["seed"].nunique()
    table.insert(0, "seeds", counts)
    return table.reset_index()


def _digits(metric: str) -> int:
    return 1 if metric in HIGHER_IS_BETTER or metric == "fd" else 3


def to_markdown(table: pd.DataFrame) -> str:
    head = list(table.columns)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


def metrics_figure(frame: pd.DataFrame, workload: str, train_side: int, path: Path) -> Path:
    """One panel per metric: the arm means (over seeds) against the canvas side."""
    import matplotlib  # heavy: imported only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy: imported only when a figure is drawn

    names = [m for m in METRICS[workload] if m in set(frame["metric"])]
    mine = frame[frame["workload"] == workload]
    cols = min(3, len(names))
    rows_n = -(-len(names) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.2 * rows_n), squeeze=False)
    for ax, metric in zip(axes.flat, names, strict=False):
        data = mine[mine["metric"] == metric]
        for arm, group in data.groupby("arm", sort=True):
            stats = group.groupby("side")["value"].agg(["mean", "std"])
            ax.errorbar(
                stats.index,
                stats["mean"],
                yerr=stats["std"].fillna(0),
                lw=1.2,
                marker="o",
                ms=3,
                capsize=2,
                label=arm,
            )
        ax.axvline(train_side, color="0.6", ls="--", lw=1)
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel("canvas side S (training: dashed)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.04 + 0.035 * (-(-len(labels) // 3)), 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def sample_figures(frame: pd.DataFrame, out: Path, workload: str = "dit") -> dict[str, Path]:
    """Per canvas side, one PNG with a row of generated samples per arm of ``workload`` (its
    lowest seed whose run directory still holds samples.npz): ``samples_S{side}.png`` for the
    DiT, ``{workload}_samples_S{side}.png`` for the others. Returns name -> path."""
    import matplotlib  # heavy: imported only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy: imported only when a figure is drawn

    mine = frame[frame["workload"] == workload][["arm", "run_id", "seed", "out_dir"]]
    arrays: dict[str, dict[str, np.ndarray]] = {}
    for arm, group in mine.drop_duplicates("run_id").sort_values("seed").groupby("arm"):
        for out_dir in group["out_dir"]:
            path = Path(str(out_dir)) / "samples.npz"
            if out_dir and path.is_file():
                try:  # a store's run directories may come from others: arrays only, no pickles
                    with np.load(path, allow_pickle=False) as data:
                        arrays[arm] = {
                            k: data[k] for k in data.files if re.fullmatch(r"side_\d+", k)
                        }
                except (OSError, ValueError, EOFError, zipfile.BadZipFile):
                    continue  # unreadable, or holding pickled objects: the next seed's
                break
    paths = {}
    sides = sorted({int(k.split("_")[-1]) for a in arrays.values() for k in a})
    for side in sides:
        arms = [a for a in sorted(arrays) if f"side_{side}" in arrays[a]]
        columns = max(len(arrays[a][f"side_{side}"]) for a in arms)
        fig, axes = plt.subplots(
            len(arms),
            columns,
            figsize=(0.45 * columns + 2.2, 0.5 * len(arms) + 0.4),
            squeeze=False,
        )
        for r, arm in enumerate(arms):
            images = arrays[arm][f"side_{side}"]
            for c in range(columns):
                ax = axes[r][c]
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_visible(False)
                if c < len(images):
                    ax.imshow(images[c], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            axes[r][0].set_ylabel(arm, rotation=0, ha="right", va="center", fontsize=6)
        title = f"{TITLES[workload]} samples at S={side} (two per class, first seed of each arm)"
        fig.suptitle(title, fontsize=8)
        fig.tight_layout(pad=0.2)
        prefix = "" if workload == "dit" else f"{workload}_"
        path = out / f"{prefix}samples_S{side}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths[path.stem] = path
    return paths


CAPTION = (
    "Per arm (the config fields that vary, seed aside) and canvas side S: mean ± sample std "
    "(ddof=1) over the arm's seeds. Accuracies in %; fd = Fréchet distance and kid = kernel "
    "distance of the project's own feature network (trained on real canvases at that S), "
    "denoise = flow-matching MSE averaged over t in {0.1, 0.3, 0.5, 0.7, 0.9} on the held-out "
    "digits, components_gap / ink_gap = |generated - real| of the mean number of ink "
    "components / of the mean intensity, nll_random / nll_raster = teacher-forced negative "
    "log-likelihood (nats per token) of the held-out canvases, binarized, in random / raster "
    "order (arpg). Training side marked in the figures."
)


def write_images_section(store, runs: pd.DataFrame, out: Path, figures: bool) -> tuple:
    """Writes images_metrics.csv (+ figures); returns (markdown lines, paths)."""
    frame = size_metrics(store, runs)
    paths: dict[str, Path] = {}
    if frame.empty:
        return [], paths
    csv = out / "images_metrics.csv"
    frame.drop(columns=["out_dir"]).to_csv(csv, index=False)
    paths["images_metrics_csv"] = csv
    lines = ["", "## Images", "", CAPTION]
    mine = image_runs(runs)
    for workload in [w for w in IMAGE_WORKLOADS if w in set(frame["workload"])]:
        train_side = int(mine[mine["workload"] == workload]["max_train_length"].iloc[0])
        lines += ["", f"### {workload} (trained at S={train_side})"]
        for metric in METRICS[workload]:
            table = metric_table(frame, workload, metric)
            if not table.empty:
                lines += ["", f"**{metric}**", "", to_markdown(table)]
        if figures:
            path = metrics_figure(
                frame, workload, train_side, out / "figures" / f"images_{workload}.png"
            )
            paths[f"figure_images_{workload}"] = path
            lines += ["", f"![{workload} metrics](figures/{path.name})"]
    for workload in [w for w in GENERATIVE if figures and w in set(frame["workload"])]:
        samples = sample_figures(frame, out / "figures", workload)
        paths.update({f"figure_{k}": v for k, v in samples.items()})
        lines += ["", f"### {TITLES[workload]} samples", ""]
        if samples:
            lines += [f"![{k}](figures/{v.name})" for k, v in samples.items()]
        else:
            lines.append(
                "Not drawn: none of the runs' folders holds samples.npz here (run folders are "
                "not part of a store; re-running the sweep writes them)."
            )
    return lines, paths


__all__ = ["arm_labels", "metric_table", "size_metrics", "write_images_section"]
