"""What the data-dependent attentions (FoX, stick-breaking, PaTH; docs/design.md §6) share: they
read no positions, exist only for causal attention, and their per-layer projections start as the
model's own do.

Notation: D = width, H = heads, L = layers.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from randpos.encodings.base import EncodingShape, PositionalEncoding


class PositionFreeAttention(PositionalEncoding):
    """Base of the encodings whose attention depends on the content only: ``causal_only``,
    ``reads_positions = False``, nothing to randomize (``randomizable = False``), any
    position dtype accepted (``float_positions``, the values are never read). A subclass states
    in ``causal_reason`` why it needs causal attention (the one-line error says it)."""

    causal_only = True
    randomizable = False  # no positions: nothing to randomize
    float_positions = True  # positions are ignored, whatever their dtype
    reads_positions = False
    causal_reason: ClassVar[str] = ""

    def __init__(self, shape: EncodingShape, options=None) -> None:
        if not shape.causal:
            raise ValueError(f"{self.name} is causal-only: set causal=true ({self.causal_reason})")
        super().__init__(shape, options)


def projection_init_(weight: torch.Tensor, fan_in: int, generator: torch.Generator | None) -> None:
    """Haiku's Linear init, as the model's projections: truncated normal, std 1/sqrt(fan_in),
    cut at two std, from ``generator``."""
    std = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std, generator=generator)


__all__ = ["PositionFreeAttention", "projection_init_"]
