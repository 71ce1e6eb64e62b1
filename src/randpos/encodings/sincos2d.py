"""DiT's 2D sin-cos encoding (facebookresearch/DiT ``get_2d_sincos_pos_embed``), on grid
positions.

Notation: B = batch, N = patches, D = width (divisible by 4), E = D / 2 channels per axis.
PE(y, x) = concat(s(x), s(y)) with s the 1D encoding of docs/reference-system.md §4.1 at width E
(:func:`randpos.encodings.base.sinusoid`: E/2 sines then E/2 cosines, w_k = 10000^(-2k/E)).
The first half encodes x (the column) although DiT's code names it ``emb_h``: its meshgrid puts
the column index first (a quirk inherited from MAE, invisible on square grids, kept here).
Computed from the values, so float positions (position interpolation, Random Float Sampling)
work.
"""

from __future__ import annotations

import torch

from randpos.encodings.base import EncodingShape, PositionalEncoding, register, sinusoid


@register("sincos2d")
class SinCos2DEncoding(PositionalEncoding):
    """DiT's fixed 2D sin-cos embedding of grid positions (B, N, 2): half the width for x, half for
    y, added to the patch embeddings (``embed``)."""

    float_positions = True
    position_dims = 2

    def __init__(self, shape: EncodingShape, options=None) -> None:
        super().__init__(shape, options)
        if shape.width % 4:
            raise ValueError(f"sincos2d needs width divisible by 4, got width={shape.width}")

    def embed(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        half = self.width // 2
        emb = torch.cat(
            [
                sinusoid(positions[..., 1], half, x.dtype),
                sinusoid(positions[..., 0], half, x.dtype),
            ],
            dim=-1,
        )  # (B, N, D): x channels first
        return x + emb
