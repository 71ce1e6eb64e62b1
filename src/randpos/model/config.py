"""Configuration of the reference encoder (docs/reference-system.md §3); defaults are the reference
architecture."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from randpos.encodings.base import EncodingShape
from randpos.model.attention import DEFAULT_BACKEND
from randpos.positions.spec import PositionSpec


@dataclass
class ModelConfig:
    """Architecture of :class:`randpos.model.Transformer`.

    ``vocab_size`` counts every token id the model embeds (the task's input vocabulary plus the
    blank), ``num_classes`` the output classes. ``pe`` is a registry name of
    :mod:`randpos.encodings`; ``max_position`` is the position range the PE must cover: positions
    fed to the model must lie in ``[0, max_position)`` (L when randomized, else the longest
    sequence). With the defaults, ``pe="none"``, ``vocab_size=3`` and ``num_classes=2`` the
    parameter count is the reference's 248,962.
    """

    vocab_size: int = 3
    num_classes: int = 2
    num_layers: int = 5
    width: int = 64
    num_heads: int = 8
    ff_width: int = 256
    dropout: float = 0.1
    pe: str = "none"
    max_position: int = PositionSpec.max_position  # L, the position samplers' range
    causal: bool = False
    attention: str = DEFAULT_BACKEND  # one of ATTENTION_BACKENDS
    # The encoding's own parameters (``randpos.encodings``: e.g. the rotary base ``theta``);
    # names of other encodings' options are ignored by this one.
    pe_options: dict[str, Any] = field(default_factory=dict)
    # A second, embed-only encoding fed by its own positions (``forward(embed_positions=)``,
    # e.g. Abacus digit indices read from the tokens) over [0, embed_max_position); "none": off.
    embed_pe: str = "none"
    embed_max_position: int = 1
    # Looped model: the layers are one weight-tied block applied ``loops`` times, the embedded
    # input added again before every pass after the first (1: the plain model).
    loops: int = 1

    def encoding_shape(self) -> EncodingShape:
        """What the positional encoding knows of this model."""
        return EncodingShape(
            width=self.width,
            num_heads=self.num_heads,
            num_layers=self.num_layers,
            max_position=self.max_position,
            causal=self.causal,
        )

    def embed_shape(self) -> EncodingShape:
        """What the embed-only encoding knows of this model (its own position range)."""
        return replace(self.encoding_shape(), max_position=self.embed_max_position)

    def to_dict(self) -> dict:
        """The config as a plain dict."""
        return asdict(self)
