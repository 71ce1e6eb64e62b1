"""FIRE: functional interpolation for relative positions (Li et al. 2023, arXiv 2310.04418).

Notation: B = batch (B' = 1 when positions are shared), H = heads, T = length, W = 32 the MLP
width, p_i = position of query i, p_j of key j.

    ψ(x)        = ln(|c x| + 1)
    L_thr       = |L_multiplier * L_init|
    x_ij        = ψ(p_i - p_j) / (ψ(max(p_i, L_thr)) + eps)            (a scalar per pair)
    bias(i, j)  = MLP(x_ij) in R^H,  MLP = Linear(1, W) -> ReLU -> Linear(W, H)

Parameters, one set per layer (the source builds one FIRE per attention layer): the MLP, c (init
0.1) and L_multiplier (init 1); L_init = 512 and eps = 1e-6 are constants. The MLP has torch's
default ``nn.Linear`` init (U(±1/sqrt(fan_in)) for weights and biases), so the bias is not zero
at init. Source: mcleish7/arithmetic ``cramming/architectures/embeddings.py`` class ``FIRE``.

Progressive interpolation: the normalizer goes by the *query's* position. For queries below
L_thr the input is ψ(p_i - p_j) / ψ(L_thr), a function of the distance only (so the bias is
shift invariant while every query position stays below L_thr); above it the input is
ψ(p_i - p_j) / ψ(p_i), which stays in [0, 1] for keys j <= i at any length. The source takes
|c (p_i - p_j)|, so keys to the right get the same input as keys as far to the left; in a
bidirectional model the input can then exceed 1 (when p_j - p_i > max(p_i, L_thr)). We keep
the source's form.

Randomized form: the positions passed in (sampled, possibly floats) feed both the distance and
the normalizer, as the source's "randomised FIRE" does with its own sorted draw. There is no
distance reading (``uses_distances`` False): the normalizer needs the query's absolute position,
which a distance table does not carry.

Memory: the MLP hidden layer would be (B', T, T, W); it is evaluated in slices of query rows so
that no slice exceeds ``CHUNK_ELEMENTS`` hidden values, each written into one preallocated
(B', H, T, T) bias, which is then the largest tensor. Sharing positions across the batch
(B' = 1) computes the bias once for all rows. Under autograd every slice's hidden layer is kept
for the backward pass, as it must be (training lengths are short).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from randpos.encodings.base import EncodingShape, PositionalEncoding, pair_offsets, register

MLP_WIDTH = 32
INIT_C = 0.1
INIT_L = 512.0
EPS = 1e-6
#: hidden values (B' x rows x T x W) evaluated at once: 2^24 float32 = 64 MiB
CHUNK_ELEMENTS = 2**24


@register("fire")
class FireEncoding(PositionalEncoding):
    """FIRE (arXiv 2310.04418): a small MLP of the log-transformed relative distance, normalized by
    the query's position, as a per-head attention bias (``bias``, (B', H, T, T))."""

    float_positions = True
    relative_below = int(INIT_L)  # max(L, p_i) is constant below the (initial) threshold

    def __init__(self, shape: EncodingShape, options=None) -> None:
        super().__init__(shape, options)
        n, h, w = shape.num_layers, shape.num_heads, MLP_WIDTH
        # stacked per layer, indexed by ``layer``; zeros until reset_parameters(generator)
        self.w1 = nn.Parameter(torch.zeros(n, w))  # Linear(1, W).weight, its input axis dropped
        self.b1 = nn.Parameter(torch.zeros(n, w))
        self.w2 = nn.Parameter(torch.zeros(n, h, w))  # Linear(W, H).weight
        self.b2 = nn.Parameter(torch.zeros(n, h))
        self.c = nn.Parameter(torch.full((n,), INIT_C))
        self.l_multiplier = nn.Parameter(torch.ones(n))
        # a constant, not trainable (the source's frozen Parameter): a buffer, not a parameter
        self.register_buffer("l_init", torch.tensor(INIT_L), persistent=False)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        with torch.no_grad():
            # torch's nn.Linear default: weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in))
            for param, fan_in in ((self.w1, 1), (self.b1, 1), (self.w2, MLP_WIDTH)):
                bound = 1.0 / math.sqrt(fan_in)
                nn.init.uniform_(param, -bound, bound, generator=generator)
            bound = 1.0 / math.sqrt(MLP_WIDTH)
            nn.init.uniform_(self.b2, -bound, bound, generator=generator)
            self.c.fill_(INIT_C)
            self.l_multiplier.fill_(1.0)

    def mlp_input(
        self,
        positions: torch.Tensor,
        layer: int,
        dtype: torch.dtype,
        key_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x_ij for every pair: (B', Tq, Tk), row = query, in ``dtype`` (keys: the queries'
        positions unless ``key_positions`` are given, as under a KV cache)."""
        pos = positions.to(dtype)  # (B', Tq)
        keys = pos if key_positions is None else key_positions.to(dtype)  # (B', Tk)
        c = self.c[layer].to(dtype)
        threshold = (self.l_multiplier[layer] * self.l_init).abs().to(dtype)
        # log1p(|c x|) is ψ(x) = ln(|c x| + 1), accurate for small |c x|
        distance = torch.log1p((c * pair_offsets(pos, keys)).abs())  # (B', Tq, Tk)
        normalizer = torch.log1p((c * torch.maximum(pos, threshold)).abs()) + EPS  # (B', Tq)
        return distance / normalizer.unsqueeze(-1)

    def bias(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        positions: torch.Tensor,
        layer: int,
        distances: torch.Tensor | None = None,
        key_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # at least float32: bf16 cannot even represent positions ~2048 exactly
        work = torch.promote_types(q.dtype, torch.float32)
        x = self.mlp_input(positions, layer, work, key_positions)  # (B', Tq, Tk)
        w1, b1 = self.w1[layer].to(work), self.b1[layer].to(work)  # (W,)
        w2, b2 = self.w2[layer].to(work), self.b2[layer].to(work)  # (H, W), (H,)
        batch, length, keys = x.shape[0], x.shape[-2], x.shape[-1]
        rows = max(1, CHUNK_ELEMENTS // (batch * keys * MLP_WIDTH))

        def mlp(rows_x: torch.Tensor) -> torch.Tensor:
            # keys last throughout: the (W x T) hidden block of each query row feeds one
            # (H x W) @ (W x T) product, ~5x faster on CPU than a width-last layout
            hidden = torch.addcmul(b1[:, None], rows_x.unsqueeze(-2), w1[:, None]).relu_()
            out = w2 @ hidden + b2[:, None]  # (B', t, W, T) -> (B', t, H, T)
            return out.transpose(1, 2)  # (B', H, t, T)

        if rows >= length:
            return mlp(x).to(q.dtype)
        # Slices are written into one preallocated result rather than concatenated, which would
        # hold the bias twice at its peak. ``new_empty`` of x follows x under vmap (batched when
        # x is) and autograd records the slice copies; the loop depends on shapes only.
        bias = x.new_empty(batch, self.num_heads, length, keys)  # (B', H, Tq, Tk)
        for start in range(0, length, rows):
            bias[:, :, start : start + rows] = mlp(x[:, start : start + rows])
        return bias.to(q.dtype)
