"""Stick-breaking attention (Tan, Yang, Courville, Panda, Shen, ICLR 2025, arXiv 2410.17980): a
stick-breaking process over the preceding tokens in place of softmax, and no positional
encoding.

Notation: B = batch, H = heads, T = length, d = head width; query i, keys j < i (j <= i with
``pe.attend_current``), z_ij = q_i . k_j / sqrt(d), beta_ij = sigmoid(z_ij).

    a_ij = beta_ij * prod_{j < m < i, m visible} (1 - beta_im)       the weight of key j
    out_i = sum_j a_ij v_j                                            no normalization

The nearest key breaks off its share of the stick first and each earlier key a share of what is
left, so attention is biased to recent keys by the content, with no position values
(``reads_positions = False``). The weights sum to 1 - prod_m (1 - beta_im) <= 1; the rest of
the stick goes to no value (the reference layer of fla-org/flash-linear-attention drops the
remainder ``rem``; IBM's dolomite-engine adds ``rem`` times a learned per-head vector instead:
not done here).

In log space, with log beta = z - softplus(z) and log(1 - beta) = -softplus(z),

    log a_ij = z_ij + b_ij,   b_ij = -sum_{m = j..i, m visible} softplus(z_im)

an additive bias on the usual logits: a reverse cumulative sum over keys, like CoPE's. And
since sum_j a_ij + prod_m (1 - beta_im) = 1 exactly, the weights are a softmax over the keys and
a *sink* whose logit is s_i = log prod_m (1 - beta_im) = -sum_m softplus(z_im) and whose value is
zero. So the hook returns :class:`randpos.encodings.base.BiasWithSink` and the model's one
attention function computes it (docs/design.md §6); invisible keys (j >= i without
``attend_current``) get a bias of -inf. A query with no visible key (the first token) gives all
of its stick to the sink: output 0. Causal only; a KV cache needs nothing more than the keys
(b and s for a new row read its own z against every key).

Source of the formulas: arXiv 2410.17980 §2; the convention that a query does not attend to
itself by default (``attend_current=False``) is that of the public reference implementation
(fla-org/flash-linear-attention ``fla/ops/stickbreaking_attn/naive.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from randpos.encodings.base import BiasWithSink, register
from randpos.encodings.data_dependent import PositionFreeAttention


@dataclass(frozen=True)
class StickBreakingOptions:
    """attend_current: whether a query's own key takes part in its stick-breaking (the
    reference implementation's default: no)."""

    attend_current: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.attend_current, bool):
            raise ValueError(f"pe.attend_current={self.attend_current!r}: must be true or false")


#: elements of one chunk's (B, H, rows, Tk) temporaries in :meth:`bias` (64 MiB of fp32)
STICK_CHUNK_ELEMENTS = 1 << 24


@register("stick_breaking")
class StickBreakingAttention(PositionFreeAttention):
    """Stick-breaking attention: sigmoid shares broken off from the nearest key backwards,
    unnormalized (the rest goes to a zero-valued sink, :class:`BiasWithSink`); this module's
    docstring has the formulas. No position values are read. Causal only."""

    causal_reason = "a query breaks its stick over the keys before it"
    Options = StickBreakingOptions

    def visible(self, rows: int, keys: int, device: torch.device) -> torch.Tensor:
        """(Tq, Tk) bool: the keys a query's stick is broken over (the queries are the last Tq
        of the Tk keys): j < i, or j <= i with ``attend_current``."""
        diagonal = keys - rows - (0 if self.options.attend_current else 1)
        return torch.ones(rows, keys, dtype=torch.bool, device=device).tril(diagonal)

    def bias(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        positions: torch.Tensor,
        layer: int,
        distances: torch.Tensor | None = None,
        key_positions: torch.Tensor | None = None,
    ) -> BiasWithSink:
        """b (B, H, Tq, Tk), -inf on invisible keys, and the sink s (B, H, Tq)."""
        rows, keys = q.shape[-2], k.shape[-2]
        dtype = torch.promote_types(q.dtype, torch.float32)
        # query rows in chunks, so that the (B, H, rows, Tk) temporaries stay small; rows are
        # independent
        per_row = max(1, q.shape[0] * q.shape[1] * keys)
        step = max(1, STICK_CHUNK_ELEMENTS // per_row)
        biases, sinks = [], []
        for lo in range(0, rows, step):
            hi = min(rows, lo + step)
            visible = self.visible(rows, keys, q.device)[lo:hi]  # (r, Tk)
            z = q[..., lo:hi, :] @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, r, Tk)
            # -log(1 - beta) = softplus(z), as -logsigmoid(-z): torch's softplus is linear
            # past z = 20 (an error of e^-20); at least float32, so that sums of many small
            # terms stay accurate under bf16
            breaks = -F.logsigmoid(-z.to(dtype))
            breaks = breaks.masked_fill(~visible, 0.0)
            # sum over m = j..Tk-1 of the visible breaks = sum over visible m >= j
            after = breaks.flip(-1).cumsum(-1).flip(-1)
            biases.append((-after).masked_fill(~visible, float("-inf")))
            sinks.append(-breaks.sum(-1))  # (B, H, r)
        bias = biases[0] if len(biases) == 1 else torch.cat(biases, dim=-2)
        sink = sinks[0] if len(sinks) == 1 else torch.cat(sinks, dim=-1)
        return BiasWithSink(bias.to(q.dtype), sink.to(q.dtype))
