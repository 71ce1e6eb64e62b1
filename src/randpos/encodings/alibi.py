"""ALiBi, bidirectional form (the reference's ``ALIBI`` / ``NOISY_ALIBI``; docs/reference-system.md
§4.1, §4.2).

Notation: B = batch, H = heads, T = length, m_h = the head's slope, L = max_position.

Position reading:  bias_h(i, j) = m_h * (-|p_j - p_i| + 0.5 * [p_j < p_i]).
Distance reading:  bias_h(i, j) = -m_h * a_{j-i} to the right, m_h * (-b_{i-j} + 0.5) to the left,
0 on the diagonal (a, b = the right/left rows of a distance table).
Keys to the left of the query are penalized half a unit less than keys equally far to the right,
which breaks the left/right symmetry a bidirectional encoder would otherwise have.
"""

from __future__ import annotations

import math

import torch

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


def alibi_slopes(num_heads: int) -> list[float]:
    """The official ALiBi slopes.

    For H a power of two, the geometric sequence m_h = 2^(-8h/H), h = 1..H (H = 8: 1/2 .. 1/256).
    Otherwise the slopes of the largest power of two P < H, followed by every other slope of
    2P (h = 1, 3, 5, ...) until there are H.
    """
    if num_heads <= 0:
        raise ValueError(f"num_heads must be positive, got {num_heads}")

    def geometric(n: int) -> list[float]:
        return [2.0 ** (-8.0 * h / n) for h in range(1, n + 1)]

    power = 2 ** math.floor(math.log2(num_heads))
    if power == num_heads:
        return geometric(num_heads)
    return geometric(power) + geometric(2 * power)[0::2][: num_heads - power]


@register("alibi")
class AlibiEncoding(PositionalEncoding):
    """ALiBi in its bidirectional form: a fixed per-head linear penalty on the distance, added to
    the attention logits (``bias``, (B, H, T, T)); reads positions or, in the reference's
    reading, a sorted table of distances."""

    float_positions = True  # its formula is continuous in the positions
    uses_distances = True

    def __init__(self, shape: EncodingShape, options=None) -> None:
        super().__init__(shape, options)
        # not persistent: a constant of the architecture, not state to checkpoint
        self.register_buffer(
            "slopes", torch.tensor(alibi_slopes(shape.num_heads)), persistent=False
        )  # (H,)

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
        slopes = self.slopes.to(q.dtype)
        if distances is not None:
            length = q.shape[-2]
            offsets = signed_offsets(layer_table(distances, layer), length)  # (2T-1,)
            # the left bonus goes by the offset's side, not by the sign of the table value
            left = torch.arange(2 * length - 1, device=q.device) < length - 1  # (2T-1,)
            penalty = -offsets.abs().to(q.dtype) + 0.5 * left.to(q.dtype)
            per_offset = slopes.unsqueeze(-1) * penalty  # (H, 2T-1)
            return per_offset[:, toeplitz_index(length, q.device)].unsqueeze(0)  # (1, H, T, T)
        diff = pair_offsets(positions, key_positions)  # (B', Tq, Tk): [b, i, j] = p_j - p_i
        penalty = -diff.abs().to(q.dtype) + 0.5 * (diff < 0).to(q.dtype)
        return slopes.view(1, -1, 1, 1) * penalty.unsqueeze(1)  # (B', H, Tq, Tk)
