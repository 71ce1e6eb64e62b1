"""Factorized learned 2D encoding: one trainable table per axis, summed.

Notation: B = batch, N = patches, D = width, L = max_position (per axis).
PE(y, x) = T_y[y] + T_x[x]. Float positions read the tables by linear interpolation between
the two neighbouring rows, so position interpolation (``options.pi``: positions i * s_train / s)
is exactly the baseline that resizes each table linearly to the larger grid; integer positions
read their rows exactly. Rows never reached in training keep their initialisation (a plain model
evaluated on a larger grid meets them: the extrapolation failure this baseline shows).
"""

from __future__ import annotations

import torch
from torch import nn

from randpos.encodings.base import EncodingShape, PositionalEncoding, register


def _lookup(table: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Rows of ``table`` (L, D) at ``values`` (...,): exact for integers, linear in between."""
    if not values.is_floating_point():
        return table[values]
    lo = values.floor().clamp(0, table.shape[0] - 1)
    frac = (values - lo).unsqueeze(-1).to(table.dtype)  # (..., 1)
    lo = lo.long()
    hi = (lo + 1).clamp(max=table.shape[0] - 1)
    return table[lo] * (1 - frac) + table[hi] * frac


@register("learned2d")
class Learned2DEncoding(PositionalEncoding):
    """One trainable table per axis, summed: ``T_y[y] + T_x[x]`` for grid positions (B, N, 2); float
    positions interpolate linearly between rows."""

    float_positions = True  # linear interpolation between rows
    position_dims = 2

    def __init__(self, shape: EncodingShape, options=None) -> None:
        super().__init__(shape, options)
        # zeros until reset_parameters(generator): construction draws nothing
        self.table_y = nn.Parameter(torch.zeros(shape.max_position, shape.width))  # (L, D)
        self.table_x = nn.Parameter(torch.zeros(shape.max_position, shape.width))

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        # ViT's position-table init: truncated normal, std 0.02
        for table in (self.table_y, self.table_x):
            nn.init.trunc_normal_(table, std=0.02, a=-0.04, b=0.04, generator=generator)

    def embed(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        emb = _lookup(self.table_y, positions[..., 0]) + _lookup(self.table_x, positions[..., 1])
        return x + emb.to(x.dtype)  # (B, N, D)
