"""Relative encoding, Transformer-XL style, non-causal (the reference's ``RELATIVE``;
docs/reference-system.md §4.1).

Notation: B = batch, H = heads, T = length, D = width, d = D / H, K = D / 2, L = max_position,
R(x) = the sin/cos vector of a (signed) relative position x (width D, see ``base.sinusoid``),
W_R = a per-layer bias-free D x D projection split into heads, u, v = per-layer, per-head vectors.

    logit(i, j) = [ (q_i + u) . k_j + (q_i + v) . (W_R R(x_ij))_head ] / sqrt(d)

so the bias hook returns [u . k_j + (q_i + v) . (W_R R(x_ij))_head] / sqrt(d). The relative index
is key minus query, as in the reference. Two readings of x_ij (docs/encodings.md):

* positions: x_ij = p_j - p_i. Never materializes (T, T, D): since R is sinusoidal,
  sin/cos((p_j - p_i) w) expand by the angle-difference identity, and the term becomes a
  (T x 2K) @ (2K x T) product per head.
* distances: x_ij = the signed distance of offset j - i from a table (+a right, -b left; the
  reference's randomized relative). W_R R is computed for the 2T-1 offsets and gathered.

``relative_reference_bug`` reproduces the released code's clamped lookup (docs/reference-system.md
§4.2) under an explicit name; it is never the default.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from randpos.encodings.base import (
    EncodingShape,
    PositionalEncoding,
    check_no_cache,
    inverse_frequencies,
    layer_table,
    register,
    signed_offsets,
    sinusoid,
    toeplitz_index,
)
from randpos.positions import contiguous_distances


@register("relative")
class RelativeEncoding(PositionalEncoding):
    """Transformer-XL relative encoding (non-causal): sinusoids of the signed relative position,
    projected per layer, scored against queries and the learned ``u``, ``v`` vectors as an
    attention bias (B, H, T, T)."""

    float_positions = True  # its formula is continuous in the positions
    uses_distances = True
    #: read a distance table even when none is given (the identity table then)
    requires_distances = False

    def __init__(self, shape: EncodingShape, options=None) -> None:
        super().__init__(shape, options)
        n, h, d, w = shape.num_layers, self.num_heads, self.head_width, shape.width
        # zeros until reset_parameters(generator) (the model calls it): no global RNG use here
        self.w_r = nn.Parameter(torch.zeros(n, w, w))  # (layers, D out, D in), like Linear.weight
        self.u = nn.Parameter(torch.zeros(n, h, d))  # (layers, H, d)
        self.v = nn.Parameter(torch.zeros(n, h, d))  # (layers, H, d)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        # W_R: Haiku Linear default (truncated normal, std 1/sqrt(fan_in), cut at 2 std);
        # u, v: N(0, 0.02) as in the reference
        std = 1.0 / math.sqrt(self.width)
        nn.init.trunc_normal_(self.w_r, std=std, a=-2 * std, b=2 * std, generator=generator)
        nn.init.normal_(self.u, std=0.02, generator=generator)
        nn.init.normal_(self.v, std=0.02, generator=generator)

    def offset_values(self, table: torch.Tensor, length: int) -> torch.Tensor:
        """Relative position used for each offset -(T-1)..T-1 under a distance table: (2T-1,)."""
        return signed_offsets(table, length)

    def bias(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        positions: torch.Tensor,
        layer: int,
        distances: torch.Tensor | None = None,
        key_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        check_no_cache(self.name, distances, key_positions)
        batch, heads, length, d = q.shape
        scale = 1.0 / math.sqrt(d)  # folded into the small factors, not the (T, T) result
        w = self.w_r[layer].to(q.dtype).view(heads, d, self.width)  # (H, d, D): head h's rows
        u = self.u[layer].to(q.dtype) * scale
        qv = (q + self.v[layer].to(q.dtype).unsqueeze(1)) * scale  # (B, H, T, d)
        content = (k @ u.unsqueeze(-1)).transpose(-1, -2)  # (B, H, 1, Tk): u . k_j

        if distances is None and self.requires_distances:
            distances = contiguous_distances(1, length, device=q.device)
        if distances is not None:
            values = self.offset_values(layer_table(distances, layer), length)  # (2T-1,)
            proj = sinusoid(values, self.width, q.dtype) @ w.transpose(-1, -2)  # (H, 2T-1, d)
            per_offset = qv @ proj.transpose(-1, -2)  # (B, H, T, 2T-1)
            index = toeplitz_index(length, q.device).expand(batch, heads, length, length)
            return content + per_offset.gather(-1, index)  # (B, H, T, T)

        # the position reading: x_ij = p_j - p_i for arbitrary positions (B or 1, T)
        a = qv @ w  # (B, H, Tq, D): (q_i + v) W_R per head, [sin half | cos half]

        def sin_cos(pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            angles = pos.to(torch.float64).unsqueeze(-1) * inverse_frequencies(
                self.width // 2, self.width, pos.device
            )  # (B', T, K)
            return angles.sin().to(q.dtype), angles.cos().to(q.dtype)

        s, c = sin_cos(positions)  # the queries' (B', Tq, K)
        sk, ck = (s, c) if key_positions is None else sin_cos(key_positions)  # (B', Tk, K)
        # sin(x_j - x_i) = s_j c_i - c_j s_i and cos(x_j - x_i) = c_j c_i + s_j s_i, so
        # a_sin . sin(..) + a_cos . cos(..)
        #     = [a_sin c_i + a_cos s_i, a_cos c_i - a_sin s_i] . [s_j, c_j]
        a_sin, a_cos = a.chunk(2, dim=-1)  # (B, H, T, K) each
        ss = torch.cat([s, s], dim=-1).unsqueeze(1)  # (B', 1, T, D)
        cc = torch.cat([c, c], dim=-1).unsqueeze(1)
        query_features = a * cc + torch.cat([a_cos, -a_sin], dim=-1) * ss  # (B, H, Tq, D)
        key_features = torch.cat([sk, ck], dim=-1)  # (B', Tk, D)
        # one (H Tq x D) @ (D x Tk) product per batch row: the keys are not copied per head
        position = query_features.flatten(1, 2) @ key_features.transpose(-1, -2)  # (B, H Tq, Tk)
        return content + position.view(batch, heads, length, -1)  # (B, H, Tq, Tk)


@register("relative_reference_bug")
class RelativeReferenceBugEncoding(RelativeEncoding):
    """The released NOISY_RELATIVE lookup, kept only to compare against (docs/reference-system.md
    §4.2, §8).

    The released code builds the sinusoid table for positions 0..L-1 but indexes it at L + x, and
    JAX clamps out-of-range gathers: every key at or to the right of the query gets R(L-1), and a
    key |delta| places to the left gets R(L - b_|delta|). It always reads a distance table (the
    identity table when none is given) and ignores positions.
    """

    float_positions = False  # reads the distance tables, not positions

    requires_distances = True
    supports_cache = False

    def offset_values(self, table: torch.Tensor, length: int) -> torch.Tensor:
        last = self.max_position - 1
        right = torch.full((length,), last, dtype=table.dtype, device=table.device)  # delta >= 0
        left = self.max_position - table[1, 1:length].flip(0)  # delta = -(T-1)..-1
        return torch.cat([left, right])
