"""Configuration of the reference encoder (SPEC §3); defaults are the reference architecture."""

from __future__ import annotations

from dataclasses import asdict, dataclass


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
    max_position: int = 2048
    causal: bool = False
    attention: str = "fast"  # "fast" (scaled_dot_product_attention) | "math" (reference)

    def to_dict(self) -> dict:
        return asdict(self)
