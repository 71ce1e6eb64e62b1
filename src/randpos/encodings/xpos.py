"""xPos (Sun et al. 2022, arXiv 2212.10554): RoPE with a per-pair exponential decay.

Notation: B = batch, H = heads, T = length, d = head width, K = d / 2 rotary pairs (index m),
p = positions (data), c = a fixed centre, S = ``scale_base`` (512), gamma = 0.4.

    zeta_m = (m / K + gamma) / (1 + gamma)          in [gamma / (1 + gamma), 1)
    q~_i = R(p_i) q_i * zeta^(+(p_i - c) / S),     k~_j = R(p_j) k_j * zeta^(-(p_j - c) / S)

(pairwise: pair m of q is scaled by zeta_m^(...)), so the score of pair m is its RoPE term times
zeta_m^((p_i - p_j) / S): relative, and decaying with the distance to past keys. For keys after
the query the factor grows without bound, hence causal only. The centre c = max_position // 2 is
fixed at construction (never recomputed from a batch): it cancels in q . k and keeps the two
scales near 1 in floating point. The rotation is the ``rope`` encoding's, including
its options (:class:`~randpos.encodings.rope.RotaryOptions`); with S = inf
(``XPosEncoding(shape, scale_base=math.inf)``)
every scale is exactly 1 and xPos is ``rope`` bit for bit. No parameters. Source: microsoft/
torchscale ``XPOS`` (``torchscale/component/xpos_relative_position.py``).
"""

from __future__ import annotations

import math

import torch

from randpos.encodings.base import EncodingShape, register
from randpos.encodings.rope import RotaryEncoding, RotaryOptions, _rotate_pairs

SCALE_BASE = 512.0
GAMMA = 0.4


@register("xpos")
class XPosEncoding(RotaryEncoding):
    """xPos (arXiv 2212.10554): RoPE whose queries and keys are also scaled by a per-pair
    exponential decay in the position, so that the score decays with the distance; causal only."""

    causal_only = True
    float_positions = True  # angles and decay exponents are continuous in the positions

    def __init__(
        self,
        shape: EncodingShape,
        options: RotaryOptions | None = None,
        *,
        scale_base: float = SCALE_BASE,
        gamma: float = GAMMA,
    ) -> None:
        if not shape.causal:
            raise ValueError(
                "xpos is causal-only: set causal=true (the model is bidirectional; its scores "
                "grow without bound for keys after the query)"
            )
        if not scale_base > 0:
            raise ValueError(f"xpos scale_base={scale_base!r}: must be > 0 (math.inf: no decay)")
        if not (math.isfinite(gamma) and gamma > 0):
            raise ValueError(f"xpos gamma={gamma!r}: must be a positive number")
        super().__init__(shape, options)
        self.scale_base = float(scale_base)
        self.gamma = float(gamma)
        self.center = float(shape.max_position // 2)

    def zeta(self, device: torch.device | None = None) -> torch.Tensor:
        """Per-pair decay bases (K,) float64."""
        m = torch.arange(self.head_width // 2, device=device, dtype=torch.float64)
        return (m / (self.head_width // 2) + self.gamma) / (1.0 + self.gamma)

    def scales(self, positions: torch.Tensor) -> torch.Tensor:
        """zeta^((p - c) / S): (B, T, K) float64, the query scale (keys take its reciprocal)."""
        power = (positions.to(torch.float64) - self.center) / self.scale_base  # (B, T)
        return torch.pow(self.zeta(positions.device), power.unsqueeze(-1))

    def rotate(
        self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, layer: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = self.angles(positions)  # (B, T, K) float64
        scale = self.scales(positions)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.to(q.dtype).unsqueeze(1)  # (B, 1, T, K): shared by all heads

        # fold the scales into cos and sin: one rotation each, and exactly rope when scale == 1
        rq = _rotate_pairs(q, heads(cos * scale), heads(sin * scale))
        rk = _rotate_pairs(k, heads(cos / scale), heads(sin / scale))
        return rq, rk  # (B, H, T, d)
