"""Pictures of generated images: sample grids (one row per canvas side)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def sample_rows(arrays: dict[str, np.ndarray], path: str | Path, *, title: str = "") -> None:
    """One row per ``side_S`` entry of ``arrays`` (uint8 (n, S, S)), images at their own
    resolution (nearest-neighbour, so an 8x8 canvas shows its 8x8 pixels), written to ``path``."""
    import matplotlib  # heavy: imported only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy: imported only when a figure is drawn

    rows = sorted(arrays.items(), key=lambda kv: int(kv[0].split("_")[-1]))
    columns = max(len(a) for _, a in rows)
    fig, axes = plt.subplots(
        len(rows), columns, figsize=(0.5 * columns, 0.55 * len(rows) + 0.3), squeeze=False
    )
    for r, (name, images) in enumerate(rows):
        for c in range(columns):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < len(images):
                ax.imshow(images[c], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        axes[r][0].set_ylabel(
            f"S={name.split('_')[-1]}", rotation=0, ha="right", va="center", fontsize=7
        )
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout(pad=0.2)
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["sample_rows"]
