"""NoPE: no positional information at all (the reference's ``NONE``)."""

from __future__ import annotations

from randpos.encodings.base import PositionalEncoding, register


@register("none")
class NoEncoding(PositionalEncoding):
    """Overrides no hook: the encoder sees token embeddings only (and, being bidirectional, is
    then equivariant to permutations of its input)."""

    float_positions = True  # its formula is continuous in the positions
    position_dims = None  # sequences and image grids alike
    reads_positions = False
