"""Rotary encoding (the reference's ``ROTARY``; SPEC §4.1).

Notation: B = batch, H = heads, T = length, d = head width, theta_m = 10000^(-m / (d/2)).
The interleaved pair (2m, 2m+1) of every query and key is rotated by the angle p * theta_m:
(a, b) -> (a cos - b sin, b cos + a sin). Then q_i . k_j depends on positions only through
p_j - p_i.
"""

from __future__ import annotations

import torch

from randpos.encodings.base import PositionalEncoding, inverse_frequencies, register


def _rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    pairs = x.unflatten(-1, (-1, 2))  # (B, H, T, d/2, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    out = torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1)
    return out.flatten(-2)  # (B, H, T, d)


@register("rope")
class RotaryEncoding(PositionalEncoding):
    def rotate(
        self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, layer: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        d = q.shape[-1]
        # theta_m = 10000^(-m/(d/2)) = 10000^(-2m/d), computed in float64 (see inverse_frequencies)
        angles = positions.to(torch.float64).unsqueeze(-1) * inverse_frequencies(
            d // 2, d, positions.device
        )  # (B, T, d/2)
        cos = angles.cos().to(q.dtype).unsqueeze(1)  # (B, 1, T, d/2): shared by all heads
        sin = angles.sin().to(q.dtype).unsqueeze(1)
        return _rotate_pairs(q, cos, sin), _rotate_pairs(k, cos, sin)
