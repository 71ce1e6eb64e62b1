"""Accuracy-against-length figures for single runs and side-by-side comparisons."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402


def run_label(summary: dict) -> str:
    """The label of a run in tables and figures: the encoding, ``randomized`` and L when randomized
    (or the workload and seed when it has no encoding)."""
    if "pe" not in summary:  # a workload without positional encodings to compare
        return f"{summary.get('workload', 'run')} seed {summary.get('seed')}"
    label = summary["pe"] + (" randomized" if summary.get("randomized") else "")
    if summary.get("randomized") and summary.get("max_position"):
        label += f" (L={summary['max_position']})"
    return label


def plot_runs(summaries: Sequence[dict], path: str | Path, title: str | None = None) -> Path:
    """Per-length accuracy of each run, with the training range 1..N shaded; written as PNG."""
    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    n_train = max(s["max_train_length"] for s in summaries)
    ax.axvspan(0.5, n_train + 0.5, color="0.9", label=f"training lengths 1..{n_train}")
    for summary in summaries:
        lengths = sorted(int(n) for n in summary["per_length"])
        accs = [summary["per_length"][str(n)] for n in lengths]
        ax.plot(
            lengths,
            accs,
            lw=1.4,
            label=f"{run_label(summary)}: unseen {summary['ood_accuracy']:.1%}",
        )
    ax.set_xlabel("sequence length" if "task" in summaries[0] else "size")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(0.5, max(max(int(n) for n in s["per_length"]) for s in summaries) + 0.5)
    first = summaries[0]
    what = first.get("task", first.get("workload"))
    ax.set_title(title or f"{what} ({first['steps']} steps, seed {first['seed']})")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path
