"""PaTH attention, reference form (Yang, Shen, Wen, Tan, Mishra, Ren, Panda, Kim 2025, arXiv
2505.16381): accumulated data-dependent Householder-like transforms in place of RoPE's
rotations, and no positional encoding.

Notation: B = batch, H = heads, T = length, D = width, d = head width; query i, key j <= i.

    w_t = normalize(W_w x_t) (per head, unit length),  beta_t = 2 sigmoid(u . x_t + c) in (0, 2)
    H_t = I - beta_t w_t w_t^T                        from the layer input x_t (B, T, D)
    logits_ij = q_i^T H_i H_{i-1} ... H_{j+1} k_j / sqrt(d)

A key is seen through every transform between it and the query (none for j = i); with
beta in (0, 2) a transform may reflect (negative eigenvalue), which is what lets PaTH track
state. Position values are never read (``reads_positions = False``); causal only.

How it fits the model's one attention function (docs/design.md §6): ``features`` returns
(w_t, beta_t) per token (B, H, T, d + 1), cached next to the keys; ``bias`` returns the
difference to the plain logit, computed directly (not as a difference of two logits):

    bias_ij = (u_ij - q_i) . k_j / sqrt(d),  u_ij = H_{j+1} ... H_i q_i  (the H are symmetric)

by one backward sweep over the keys that carries delta_i = u_i - q_i for every query row at
once: at key j, bias_ij = delta_i . k_j / sqrt(d), then delta_i <- delta_i - beta_j w_j
(w_j . (q_i + delta_i)) for the rows i >= j. That is O(T^2 d) work in T sequential steps: a
reference form for short sequences on a CPU, not the paper's blockwise kernel (the UT
transform in fla-org/flash-linear-attention ``fla/ops/path_attn``). Left out: the short causal
convolution over w (the public layer's ``use_w_shortconv``; it would make w_t depend on the two
previous inputs), the low-rank w projection and the PaTH-FoX variant with a forget gate. w is a
full (D -> H d) projection per layer, beta a (D -> H) one with a bias, both initialized like the
model's projections (truncated normal, std 1/sqrt(D); the bias 0, so beta starts near 1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from randpos.encodings.base import EncodingShape, register
from randpos.encodings.data_dependent import PositionFreeAttention, projection_init_


@register("path")
class PathAttention(PositionFreeAttention):
    """PaTH, reference form: each key seen through the product of the data-dependent
    Householder-like transforms between it and its query (this module's docstring), as an
    additive bias; O(T^2 d) in T sequential steps. No position values are read. Causal only."""

    causal_reason = "a key is seen through the transforms of the tokens after it"

    def __init__(self, shape: EncodingShape, options=None) -> None:
        super().__init__(shape, options)
        L, H, D, d = self.num_layers, self.num_heads, self.width, self.head_width
        # zeros until reset_parameters
        self.w_weight = nn.Parameter(torch.zeros(L, H * d, D))  # W_w
        self.beta_weight = nn.Parameter(torch.zeros(L, H, D))  # u
        self.beta_bias = nn.Parameter(torch.zeros(L, H))  # c

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        for weight in (self.w_weight, self.beta_weight):
            projection_init_(weight, self.width, generator)
        with torch.no_grad():
            self.beta_bias.zero_()

    def features(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """(w_t, beta_t) per head and token: (B, H, T, d + 1)."""
        w = (x @ self.w_weight[layer].transpose(0, 1)).unflatten(-1, (self.num_heads, -1))
        w = F.normalize(w, dim=-1)  # (B, T, H, d), unit rows
        beta = 2.0 * torch.sigmoid(
            x @ self.beta_weight[layer].transpose(0, 1) + self.beta_bias[layer]
        )
        return torch.cat([w, beta.unsqueeze(-1)], dim=-1).transpose(1, 2)  # (B, H, T, d + 1)

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
        """bias_ij = (u_ij - q_i) . k_j / sqrt(d) (B, H, Tq, Tk); 0 for keys after the query."""
        if features is None:
            raise ValueError("path: the bias needs the transforms (the features hook's output)")
        rows, keys = q.shape[-2], k.shape[-2]
        w, beta = features[..., :-1].to(q.dtype), features[..., -1].to(q.dtype)  # (B, H, Tk, .)
        index = torch.arange(keys - rows, keys, device=q.device)  # each query's own key
        delta = torch.zeros_like(q)  # (B, H, Tq, d): u - q for every row
        columns = []
        for j in range(keys - 1, -1, -1):
            columns.append((delta * k[..., j : j + 1, :]).sum(-1))  # (B, H, Tq)
            # H_j joins the product of the rows that see key j - 1 through it (i >= j)
            seen = (index >= j).to(q.dtype).unsqueeze(-1)  # (Tq, 1)
            w_j = w[..., j : j + 1, :]  # (B, H, 1, d)
            along = ((q + delta) * w_j).sum(-1, keepdim=True)  # (B, H, Tq, 1)
            delta = delta - seen * beta[..., j : j + 1, None] * along * w_j
        return torch.stack(columns[::-1], dim=-1) / math.sqrt(q.shape[-1])
