"""FoX, the Forgetting Transformer's attention (Lin, Nikishin, He, Courville, ICLR 2025,
arXiv 2503.02130): softmax attention with a forget gate, and no positional encoding.

Notation: B = batch, H = heads, T = length, D = width; query i, key j <= i (causal).

    f_t = sigmoid(w_h . x_t + b_h)                   one forget gate per head and token, from
                                                     the layer input x_t (B, T, D)
    c_t = sum_{l <= t} log f_l                       cumulative log gates (B, H, T)
    bias_ij = c_i - c_j = sum_{l = j+1..i} log f_l   <= 0, the log of the gates' product
    logits_ij = q_i . k_j / sqrt(d) + bias_ij

So a key's weight decays by every gate between it and the query; with gates of 1 (w = 0,
b -> inf) the bias vanishes and FoX is NoPE. The decay depends on the content, never on the
position values: ``reads_positions = False``, ``randomizable = False``. Causal only: the gates
between j and i are those after the key, up to the query.

It is this module's two hooks (docs/design.md §6): ``features`` computes log f_t (B, H, T, 1)
from the layer input, a KV cache stores them next to the keys, and ``bias`` turns the gates of
every key into c_i - c_j (the queries are the last Tq of the Tk keys). Parameters: per layer a
(D -> H) projection with a bias, ``w`` (layers, H, D) initialized like the model's other
projections (truncated normal, std 1/sqrt(D)) and ``b`` (layers, H) to ``pe.forget_bias``
(0 by default, as the official code's default: it leaves the gate bias at its linear layer's
initialization near 0, ``fgate_bias_init=False``). The gates are computed in float32 at
least.

What is not here: the paper's "Pro" block (output gate, QK-norm, key/value shift); the
official Triton kernel (this is the O(T^2) reference form, through the model's one attention
function). Source of the formulas: arXiv 2503.02130 §2 (eq. for D_ij and f_t); the public
implementation in fla-org/flash-linear-attention ``fla/layers/forgetting_attn.py`` (logsigmoid
of a per-head projection with a bias, cached next to k and v).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from randpos.encodings.base import EncodingShape, register
from randpos.encodings.data_dependent import PositionFreeAttention, projection_init_


@dataclass(frozen=True)
class FoxOptions:
    """forget_bias: the initial bias b of every forget gate (sigmoid(b) is the gate at x = 0;
    larger values forget more slowly at the start of training)."""

    forget_bias: float = 0.0

    def __post_init__(self) -> None:
        value = self.forget_bias
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not math.isfinite(value):
            raise ValueError(f"pe.forget_bias={value!r}: must be a finite number")


@register("fox")
class ForgettingAttention(PositionFreeAttention):
    """FoX: softmax attention biased by the cumulative log forget gates between a key and its
    query (this module's docstring); no position values are read. Causal only."""

    causal_reason = "its forget gates act between a key and a later query"
    Options = FoxOptions

    def __init__(self, shape: EncodingShape, options: FoxOptions | None = None) -> None:
        super().__init__(shape, options)
        # w: (layers, H, D), b: (layers, H); zeros until reset_parameters
        self.gate_weight = nn.Parameter(torch.zeros(self.num_layers, self.num_heads, self.width))
        self.gate_bias = nn.Parameter(torch.zeros(self.num_layers, self.num_heads))

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """w: truncated normal std 1/sqrt(D) (the model's Linear init) from ``generator``; b:
        ``forget_bias``."""
        projection_init_(self.gate_weight, self.width, generator)
        with torch.no_grad():
            self.gate_bias.fill_(float(self.options.forget_bias))

    def features(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """log f_t (B, H, T, 1), in float32 at least (bf16 inputs are promoted)."""
        dtype = torch.promote_types(x.dtype, torch.float32)
        weight, bias = self.gate_weight[layer].to(dtype), self.gate_bias[layer].to(dtype)
        logits = x.to(dtype) @ weight.transpose(0, 1) + bias  # (B, T, H)
        return F.logsigmoid(logits).transpose(1, 2).unsqueeze(-1)  # (B, H, T, 1)

    def bias(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        positions: torch.Tensor,
        layer: int,
        distances: torch.Tensor | None = None,
        key_positions: torch.Tensor | None = None,
        features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """c_i - c_j (B, H, Tq, Tk) from the log gates of every key (``features``)."""
        if features is None:
            raise ValueError("fox: the bias needs the forget gates (the features hook's output)")
        rows = q.shape[-2]
        c = features[..., 0].cumsum(dim=-1)  # (B, H, Tk)
        return (c[..., -rows:].unsqueeze(-1) - c.unsqueeze(-2)).to(q.dtype)  # (B, H, Tq, Tk)
