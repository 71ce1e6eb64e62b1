"""Sandwich: the parameter-free sinusoidal bias (Chi et al. 2023, arXiv 2212.10356).

Notation: B = batch (B' = 1 when positions are shared), H = heads, T = length, d' = the
sinusoid width (here the head width d, NeMo's per-head ``hidden_size``), K' = d' / 2,
r = p_j - p_i.

    ω_k = 10000^(-2k/d'),  k = 1..K'          (k starts at 1, as in NeMo: ω = 1 is skipped)
    bias_h(i, j) = ( Σ_k cos(ω_k r_ij) - K' ) / (8h / H),   h = 1..H

Σ_k cos(ω_k (p_j - p_i)) is the dot product of the sin/cos embeddings of p_i and p_j (this is
how it is computed: a (T x 2K') @ (2K' x T) product, never a (T, T, K') tensor). Subtracting K'
makes bias(0) = 0 and bias <= 0; dividing by 8h/H spreads the heads geometrically like ALiBi
(head 1 decays fastest). Even in r, so it cannot tell left from right; causal models mask the
future anyway. Source of the exact constants: NVIDIA/NeMo
``SandwichRelativePositionEmbedding`` (the paper's reference implementation is that code).

Randomized form: r from the positions passed in (R-pos) or, with ``uses_distances``, the signed
distance of each offset from a distance table (R-dist). Continuous in r: float positions work.
"""

from __future__ import annotations

import torch

from randpos.encodings.base import (
    EncodingShape,
    PositionalEncoding,
    check_no_cache,
    layer_table,
    register,
    signed_offsets,
    toeplitz_index,
)


@register("sandwich")
class SandwichEncoding(PositionalEncoding):
    """Sandwich (arXiv 2212.10356): the parameter-free sinusoidal bias, the dot product of the
    sinusoids of two positions, added to the logits per head (``bias``)."""

    uses_distances = True
    float_positions = True

    def __init__(self, shape: EncodingShape, options=None) -> None:
        super().__init__(shape, options)
        width = self.head_width  # d'
        k = torch.arange(1, width // 2 + 1, dtype=torch.float64)
        # float64: angles p * ω at p ~ 2048 (buffers are not persistent: architecture constants)
        self.register_buffer("frequencies", 10000.0 ** (-2.0 * k / width), persistent=False)
        heads = torch.arange(1, shape.num_heads + 1, dtype=torch.float64)
        self.register_buffer("head_scales", shape.num_heads / (8.0 * heads), persistent=False)

    def bias(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        positions: torch.Tensor,
        layer: int,
        distances: torch.Tensor | None = None,
        key_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        num = self.frequencies.shape[-1]  # K'
        scales = self.head_scales.to(q.dtype)  # (H,)
        check_no_cache(self.name, distances, key_positions)
        if distances is not None:
            length = q.shape[-2]
            offsets = signed_offsets(layer_table(distances, layer), length)  # (2T-1,)
            angles = offsets.to(torch.float64).unsqueeze(-1) * self.frequencies  # (2T-1, K')
            base = (angles.cos().sum(-1) - num).to(q.dtype)  # (2T-1,)
            per_offset = scales.unsqueeze(-1) * base  # (H, 2T-1)
            return per_offset[:, toeplitz_index(length, q.device)].unsqueeze(0)  # (1, H, T, T)

        def embedding(pos: torch.Tensor) -> torch.Tensor:
            angles = pos.to(torch.float64).unsqueeze(-1) * self.frequencies  # (B', T, K')
            return torch.cat([angles.cos(), angles.sin()], dim=-1)  # (B', T, 2K')

        queries = embedding(positions)
        keys = queries if key_positions is None else embedding(key_positions)
        # cos(a - b) = cos a cos b + sin a sin b: the sum over k is one inner product per pair
        base = (queries @ keys.transpose(-1, -2) - num).to(q.dtype)  # (B', Tq, Tk)
        return scales.view(1, -1, 1, 1) * base.unsqueeze(1)  # (B', H, Tq, Tk)
