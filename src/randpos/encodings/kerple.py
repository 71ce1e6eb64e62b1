"""KERPLE: kernelized relative positional bias (Chi et al. 2022, arXiv 2205.09921).

Notation: B = batch (B' = 1 when positions are shared), H = heads, T = length, δ_ij = the
distance of key j from query i, r1, r2 = learnable per-head parameters (H,).

    kerple_log:    bias_h(i, j) = -r1_h * ln(1 + r2_h * δ_ij)     r1, r2 > 0
    kerple_power:  bias_h(i, j) = -r1_h * δ_ij ** r2_h             r1 > 0, 0 < r2 <= 2

(-δ^p for 0 < p <= 2 and -ln(1 + a δ) are conditionally positive definite kernels, the paper's
requirement.) One parameter set serves every layer, as in chijames/KERPLE, which passes a single
module to all layers. Init as there: log r1 = 2 U(0, 1), r2 = U(0, 1); power r1 = U(0, 1),
r2 = 2 U(0, 1) (code names: log bias_p = r1, bias_a = r2; power bias_a = r1, bias_p = r2).

Distance and direction. The reference is causal (j <= i, δ = i - j). For a bidirectional encoder
the kernels are symmetric and would not tell left from right, so we follow this repository's
ALiBi convention (``alibi.py``): with ``causal=False`` a key to the left of its query is treated
as half a unit closer, δ_ij = |p_j - p_i| - 0.5 [p_j < p_i] (floored at 0, which only float
positions closer than 0.5 reach). Then ``kerple_power`` with r2 = 1 and r1 = ALiBi's slopes *is*
``alibi``, in both readings. With ``causal=True`` δ = |p_j - p_i| exactly as in the paper (our
``alibi`` keeps its offset there; this equals the original causal ALiBi instead).

Constraints. The reference clamps ``param.data`` in place at every forward. Here the forward
uses ``bounded(raw)``: the clamped value with the identity gradient (straight-through), which
keeps the forward free of in-place side effects (so torch.func/vmap and torch.compile work) and,
like the reference, lets a parameter sitting on its bound move back off it. Bounds: r2 >= 1e-2
(log) and r2 in [1e-2, 2] (power) as in the reference; r1 >= 1e-3 in both, not the reference's
1e-2, because 1e-2 would clamp ALiBi's two gentlest slopes for H = 8 (2^-7, 2^-8), and every
ALiBi slope (>= 2^-8 for any H) must be reachable for the power kernel to contain ALiBi.

Randomized form: δ from the positions passed in (R-pos), or, with ``uses_distances``, from a
distance table (R-dist): +a to the right, b (with the left offset) to the left, 0 on the diagonal.
Both kernels are continuous in δ, so float positions work too.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from randpos.encodings.base import (
    EncodingShape,
    PositionalEncoding,
    check_no_cache,
    layer_table,
    pair_offsets,
    register,
    signed_offsets,
    toeplitz_index,
)

#: lower bound of the scale r1 (both kernels); admits every ALiBi slope (see module docstring)
SCALE_MIN = 1e-3
#: the reference's eps for r2
SHAPE_MIN = 1e-2
#: the power kernel's exponent bound: -δ^p is conditionally positive definite for p <= 2
POWER_MAX = 2.0
#: the ALiBi convention for bidirectional attention: keys to the left are this much closer
LEFT_OFFSET = 0.5


def bounded(raw: torch.Tensor, low: float, high: float | None = None) -> torch.Tensor:
    """``raw`` clamped to [low, high] in value, with the identity gradient (straight-through).

    A plain clamp would give a zero gradient outside the bounds and freeze a parameter there for
    good; the identity gradient lets it return, as the reference's in-place clamp does. Written
    as clamp + (raw - raw) so that the value is exactly the clamped one (raw - raw is exactly 0).
    """
    return raw.detach().clamp(low, high) + (raw - raw.detach())


class _Kerple(PositionalEncoding):
    """Shared machinery: the distance of every pair, for both readings, then ``kernel``."""

    uses_distances = True
    float_positions = True
    #: (r1 init, r2 init) as multiples of U(0, 1), and the r2 bounds
    init_scales: ClassVar[tuple[float, float]] = (1.0, 1.0)
    shape_bounds: ClassVar[tuple[float, float | None]] = (SHAPE_MIN, None)

    def __init__(self, shape: EncodingShape, options=None) -> None:
        super().__init__(shape, options)
        self.bidirectional = not shape.causal
        # placeholders until reset_parameters(generator) (the model calls it): no global RNG
        self.r1 = nn.Parameter(torch.ones(shape.num_heads))  # (H,)
        self.r2 = nn.Parameter(torch.ones(shape.num_heads))  # (H,)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        with torch.no_grad():
            for param, scale in zip((self.r1, self.r2), self.init_scales, strict=True):
                param.copy_(scale * torch.rand(param.shape, generator=generator))
            # start inside the constraints, as the reference does after its first forward clamp
            self.r1.clamp_(min=SCALE_MIN)
            self.r2.clamp_(*self.shape_bounds)

    def constrained(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(r1, r2) as the forward uses them: clamped into their bounds, each (H,)."""
        return bounded(self.r1, SCALE_MIN), bounded(self.r2, *self.shape_bounds)

    def kernel(self, distance: torch.Tensor, r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
        """Bias for non-negative distances; r1, r2 broadcast against ``distance``."""
        raise NotImplementedError

    def _distance(self, magnitude: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
        """|p_j - p_i|, minus the left offset in a bidirectional model (see module docstring)."""
        if not self.bidirectional:
            return magnitude
        return (magnitude - LEFT_OFFSET * left.to(magnitude.dtype)).clamp(min=0)

    def bias(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        positions: torch.Tensor,
        layer: int,
        distances: torch.Tensor | None = None,
        key_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # at least float32: a bf16 distance of ~2048 would be off by up to 8
        work = torch.promote_types(q.dtype, torch.float32)
        r1, r2 = (t.to(work) for t in self.constrained())
        check_no_cache(self.name, distances, key_positions)
        if distances is not None:
            length = q.shape[-2]
            offsets = signed_offsets(layer_table(distances, layer), length)  # (2T-1,)
            # the side goes by the offset, not by the sign of the table value (as in alibi)
            left = torch.arange(2 * length - 1, device=q.device) < length - 1  # (2T-1,)
            distance = self._distance(offsets.abs().to(work), left)  # (2T-1,)
            per_offset = self.kernel(distance, r1.unsqueeze(-1), r2.unsqueeze(-1))  # (H, 2T-1)
            return per_offset[:, toeplitz_index(length, q.device)].unsqueeze(0).to(q.dtype)
        keys = None if key_positions is None else key_positions.to(work)
        diff = pair_offsets(positions.to(work), keys)  # (B', Tq, Tk): [b, i, j] = p_j - p_i
        distance = self._distance(diff.abs(), diff < 0).unsqueeze(1)  # (B', 1, Tq, Tk)
        view = (1, -1, 1, 1)
        return self.kernel(distance, r1.view(view), r2.view(view)).to(q.dtype)  # (B', H, Tq, Tk)


@register("kerple_log")
class KerpleLogEncoding(_Kerple):
    """-r1 ln(1 + r2 δ): logarithmic decay, ≈ ALiBi with slope r1 r2 while r2 δ << 1."""

    init_scales = (2.0, 1.0)
    shape_bounds = (SHAPE_MIN, None)

    def kernel(self, distance: torch.Tensor, r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
        return -r1 * torch.log1p(r2 * distance)


@register("kerple_power")
class KerplePowerEncoding(_Kerple):
    """-r1 δ^r2, 0 < r2 <= 2: r2 = 1 is ALiBi with slopes r1."""

    init_scales = (1.0, 2.0)
    shape_bounds = (SHAPE_MIN, POWER_MAX)

    def kernel(self, distance: torch.Tensor, r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
        # d/dr2 of 0^r2 is defined as 0 by torch (no 0 * log 0 = nan on the diagonal)
        return -(r1 * distance.pow(r2))
