"""Absolute sinusoidal encoding (the reference's ``SIN_COS``; docs/reference-system.md §4.1).

Notation: B = batch, T = length, D = width, K = D / 2, w_k = 10000^(-2k/D).
PE[p, k] = sin(p w_k), PE[p, K + k] = cos(p w_k), added to the sqrt(D)-scaled embeddings.
"""

from __future__ import annotations

import torch

from randpos.encodings.base import PositionalEncoding, register, sinusoid


@register("sincos")
class SinCosEncoding(PositionalEncoding):
    """Computed from the position values, so any position works; the model still rejects
    positions outside ``[0, max_position)`` so that every PE shares one contract."""

    float_positions = True  # its formula is continuous in the positions

    def embed(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return x + sinusoid(positions, self.width, x.dtype)  # (B, T, D)
