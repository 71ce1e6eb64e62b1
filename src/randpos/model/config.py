"""Configuration of the reference encoder (docs/reference-system.md §3); defaults are the reference
architecture."""

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
    # Rotary encodings (rope, xpos): base and RoPE scaling for context extension, the last six
    # named as in Hugging Face's rope_parameters (randpos.encodings.rope, docs/encodings.md).
    rope_theta: float = 10000.0
    rope_scaling: str = "none"  # none | linear | ntk | dynamic | yarn | llama3
    rope_scaling_factor: float = 1.0
    original_max_position_embeddings: int | None = None  # pre-extension length; None: max_position
    beta_fast: float = 32.0  # yarn
    beta_slow: float = 1.0  # yarn
    low_freq_factor: float = 1.0  # llama3 (Llama 3.1's value)
    high_freq_factor: float = 4.0  # llama3 (Llama 3.1's value)
    attention_factor: float | None = None  # yarn; None: 0.1 ln(factor) + 1, as HF derives it
    # CoPE: size of its position table (positions clamped to cope_npos - 1); None: max_position + 1
    cope_npos: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)
