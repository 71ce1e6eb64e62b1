"""T5's bucketed relative attention bias (Raffel et al. 2020; HF ``T5Attention``).

Notation: B = batch (B' = 1 when positions are shared by the batch), H = heads, T = length,
L = max_position, r = p_j - p_i (key minus query, the T5/HF convention), nb = 32 buckets,
md = 128 the max distance.

    bias_h(i, j) = E[bucket(p_j - p_i), h],   E: (nb, H), ONE table shared by every layer

Bucket function (``relative_position_bucket``), n = the distance that is bucketed:

* bidirectional (``causal=False``): nb' = nb / 2 buckets per side, keys to the right
  (r > 0) use buckets nb'..nb-1, keys to the left or the query itself 0..nb'-1; n = |r|;
* causal (``causal=True``): nb' = nb buckets, all for the past; n = max(-r, 0), so every
  future key falls into bucket 0 (masked anyway).

With max_exact = nb' / 2: n < max_exact gets its own bucket; larger n are log-spaced,
max_exact + floor(ln(n / max_exact) / ln(md / max_exact) * (nb' - max_exact)), capped at
nb' - 1: every n >= md shares the last bucket of its side.

Init: E ~ N(0, d_model^-1), i.e. std = width^-1/2, T5's ``initializer_factor * d_model**-0.5``.
T5 itself does not divide q.k by sqrt(d) and adds E unscaled; here the bias is added after that
scaling (our hook's units), which only changes the parametrization, not the function class.

Randomized positions: the buckets are of p_j - p_i for the sampled positions, one sample shared
by queries and keys (so r_ii = 0). With L >> md most sampled distances saturate into the last
bucket of their side; that is a property of T5 under randomization, not a bug here.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from randpos.encodings.base import EncodingShape, PositionalEncoding, pair_offsets, register

#: T5Config defaults (``relative_attention_num_buckets``, ``relative_attention_max_distance``)
NUM_BUCKETS = 32
MAX_DISTANCE = 128


def relative_position_bucket(
    relative: torch.Tensor,
    *,
    bidirectional: bool,
    num_buckets: int = NUM_BUCKETS,
    max_distance: int = MAX_DISTANCE,
) -> torch.Tensor:
    """T5 bucket (long, same shape) of each integer relative position ``relative`` = key - query.

    The log is taken in float32 on purpose: T5 (Mesh TF) and HF compute it that way, and at the
    distances where the exact log ratio is an integer (bidirectional n = 16, 32, 64) the float32
    result decides the bucket; matching it keeps pretrained-T5 semantics bit for bit.
    """
    relative = relative.long()
    if bidirectional:
        num_buckets //= 2
        offset = (relative > 0).long() * num_buckets  # keys to the right: the upper half
        distance = relative.abs()
    else:
        offset = torch.zeros_like(relative)
        distance = (-relative).clamp(min=0)  # future keys -> 0
    max_exact = num_buckets // 2
    # clamp before the log only to avoid log(0) = -inf; those entries take the exact branch
    ratio = distance.clamp(min=max_exact).float() / max_exact
    log_bucket = (
        torch.log(ratio) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    ).long()  # non-negative, so truncation is floor
    large = (max_exact + log_bucket).clamp(max=num_buckets - 1)
    return offset + torch.where(distance < max_exact, distance, large)


@register("t5")
class T5Encoding(PositionalEncoding):
    """Bucketed relative bias; the bucket side is chosen by ``ModelConfig.causal``."""

    # buckets index a table: non-integer positions have no bucket
    float_positions = False

    def __init__(self, shape: EncodingShape, options=None) -> None:
        super().__init__(shape, options)
        self.bidirectional = not shape.causal
        self.num_buckets = NUM_BUCKETS
        self.max_distance = MAX_DISTANCE
        # zeros until reset_parameters(generator) (the model calls it): no global RNG here
        self.table = nn.Parameter(torch.zeros(NUM_BUCKETS, shape.num_heads))  # (nb, H)
        # Positions are integers in [0, L), so r takes only the 2L-1 values -(L-1)..L-1: bucket
        # them once here, and the forward is one gather per pair instead of a log per pair.
        # Not persistent: a pure function of the architecture.
        last = shape.max_position - 1
        offsets = torch.arange(-last, last + 1)  # (2L-1,)
        self.register_buffer(
            "buckets",
            relative_position_bucket(offsets, bidirectional=self.bidirectional),
            persistent=False,
        )  # (2L-1,): bucket of r at index r + L - 1

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        nn.init.normal_(self.table, std=self.width**-0.5, generator=generator)

    def bias(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        positions: torch.Tensor,
        layer: int,
        distances: torch.Tensor | None = None,
        key_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if positions.is_floating_point():
            raise ValueError(
                f"t5 buckets integer positions only, got dtype {positions.dtype}"
                " (float_positions is False)"
            )
        relative = pair_offsets(positions, key_positions)  # (B', Tq, Tk): p_j - p_i
        bucket = self.buckets[relative + (self.max_position - 1)]  # (B', Tq, Tk)
        # (H, nb)[:, (B', T, T)] -> (H, B', T, T): one gather, then heads to the second axis
        return self.table.to(q.dtype).t()[:, bucket].transpose(0, 1)  # (B', H, Tq, Tk)
