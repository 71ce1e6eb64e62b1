"""The reference encoder (docs/reference-system.md §3) and its configuration."""

from randpos.model.attention import ATTENTION_BACKENDS, KVCache, MultiHeadAttention, attend
from randpos.model.config import ModelConfig
from randpos.model.transformer import Transformer, check_config

__all__ = [
    "ATTENTION_BACKENDS",
    "KVCache",
    "ModelConfig",
    "MultiHeadAttention",
    "Transformer",
    "attend",
    "check_config",
]
