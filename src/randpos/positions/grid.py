"""Grid positions for patch grids: the 1D samplers of :mod:`randpos.positions`, per axis.

Notation: B = batch, h x w = the patch grid, N = h * w tokens in row-major order (token
r * w + c is row r, column c), L = ``max_position`` per axis. Grid positions are (B, N, 2) with
the last axis (y, x). Rows share their y and columns their x, so order is kept along both axes:
a randomized grid is a sorted random subset of [0, L) for the rows and another for the columns
(RPE-2D's per-axis sampling), never a shuffle of the patches.
"""

from __future__ import annotations

import torch

from randpos.positions.samplers import sample_positions
from randpos.positions.spec import GRID_MODES  # the 1D modes per axis, and interpolation (PI)


def combine_axes(ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """Token (r, c) gets (ys[:, r], xs[:, c]): ys (B, h), xs (B, w) -> (B, h * w, 2), float64 if
    either is floating, else long."""
    if ys.dim() != 2 or xs.dim() != 2 or ys.shape[0] != xs.shape[0]:
        raise ValueError(
            f"ys and xs must be (B, h) and (B, w) with one B, got {tuple(ys.shape)}, "
            f"{tuple(xs.shape)}"
        )
    if ys.is_floating_point() or xs.is_floating_point():
        ys, xs = ys.to(torch.float64), xs.to(torch.float64)
    B, h, w = ys.shape[0], ys.shape[1], xs.shape[1]
    grid_y = ys.unsqueeze(2).expand(B, h, w)  # (B, h, w)
    grid_x = xs.unsqueeze(1).expand(B, h, w)
    return torch.stack([grid_y, grid_x], dim=-1).reshape(B, h * w, 2)


def grid_positions(
    batch_size: int, h: int, w: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Contiguous grid positions: (r, c) for every token, LongTensor (B, h * w, 2)."""
    ys = torch.arange(h, device=device).expand(batch_size, h)
    xs = torch.arange(w, device=device).expand(batch_size, w)
    return combine_axes(ys, xs)


def _axis(name: str, side: int, max_position: int) -> None:
    if not isinstance(side, int) or isinstance(side, bool) or side <= 0:
        raise ValueError(f"grid {name} must be a positive integer, got {side!r}")
    if side > max_position:
        raise ValueError(
            f"grid {name} {side} exceeds max_position={max_position} (L): an axis holds at most "
            f"L distinct positions; raise max_position to at least {side}"
        )


def sample_grid_positions(
    mode: str,
    batch_size: int,
    h: int,
    w: int,
    max_position: int,
    generator: torch.Generator | None = None,
    *,
    sampler: str = "random",
    per_sample: bool = True,
    train_side: int | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(B, h * w, 2) grid positions in ``mode`` (:data:`GRID_MODES`).

    random: per axis a sorted draw from [0, L) with ``sampler`` (random | float | pose), the
    rows' ys first, then the columns' xs, one draw per sample unless ``per_sample=False`` (one
    for the batch); contiguous: 0..h-1, 0..w-1; spread: floor(i L / side) per axis;
    interpolate: position interpolation for grids larger than the training grid of side
    ``train_side``, float64 i * min(1, train_side / side) per axis (so a larger grid spans the
    trained range [0, train_side) and a smaller one keeps its integer positions).
    """
    if mode not in GRID_MODES:
        raise ValueError(f"unknown grid position mode {mode!r}; valid: {', '.join(GRID_MODES)}")
    _axis("height h", h, max_position)
    _axis("width w", w, max_position)
    if mode == "interpolate":
        if not isinstance(train_side, int) or train_side <= 0:
            raise ValueError(
                f"train_side must be the training grid's side for mode 'interpolate', "
                f"got {train_side!r}"
            )
        axes = [
            torch.arange(side, device=device, dtype=torch.float64) * min(1.0, train_side / side)
            for side in (h, w)
        ]
        return combine_axes(axes[0].expand(batch_size, h), axes[1].expand(batch_size, w))
    ys, xs = (
        sample_positions(
            mode,
            batch_size,
            side,
            max_position,
            generator,
            per_sequence=per_sample,
            device=device,
            sampler=sampler,
        )
        for side in (h, w)
    )
    return combine_axes(ys, xs)


def check_grid_positions(positions: torch.Tensor, h: int, w: int, max_position: int) -> None:
    """``ValueError`` naming ``positions`` unless (B or 1, h * w, 2) within [0, L)."""
    if not isinstance(positions, torch.Tensor):
        raise ValueError(f"positions must be a tensor, got {type(positions).__name__}")
    if positions.dim() != 3 or positions.shape[1] != h * w or positions.shape[2] != 2:
        raise ValueError(
            f"positions must have shape (B, N={h * w}, 2) for a {h}x{w} grid, "
            f"got {tuple(positions.shape)}"
        )
    if positions.numel() == 0:
        return
    lo, hi = torch.stack([positions.min(), positions.max()]).tolist()
    if lo < 0 or hi >= max_position:
        raise ValueError(
            f"positions must lie in [0, max_position={max_position}), got values in [{lo}, {hi}]"
        )


__all__ = [
    "GRID_MODES",
    "check_grid_positions",
    "combine_axes",
    "grid_positions",
    "sample_grid_positions",
]
