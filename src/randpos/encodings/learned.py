"""Learned absolute encoding (the reference's ``LEARNT``; docs/reference-system.md §4.1).

Notation: B = batch, T = length, D = width, L = max_position.
A trainable table of L rows; row p is added at position p. Unlike the reference (which silently
reuses the last row beyond the table), out-of-range positions are rejected by the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from randpos.encodings.base import EncodingShape, PositionalEncoding, register


@register("learned")
class LearnedEncoding(PositionalEncoding):
    """A trainable table of L rows (L, D); row p is added to the token embedding at position p
    (``embed``). Positions must lie in [0, L)."""

    def __init__(self, shape: EncodingShape, options=None) -> None:
        super().__init__(shape, options)
        # zeros until reset_parameters(generator) (the model calls it): no global RNG use here
        self.table = nn.Parameter(torch.zeros(shape.max_position, shape.width))  # (L, D)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        # Haiku's Embed default: truncated normal, std 1, cut at two standard deviations
        nn.init.trunc_normal_(self.table, std=1.0, a=-2.0, b=2.0, generator=generator)

    def embed(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return x + F.embedding(positions, self.table).to(x.dtype)  # (B, T, D)
