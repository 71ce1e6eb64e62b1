"""Multi-head self-attention: one implementation, two numerically equivalent backends.

Notation: B = batch, T = length, D = width, H = heads, d = D / H.

``attend`` computes softmax(q k^T / sqrt(d) + bias [+ causal mask]) v either explicitly
(``"math"``, the reference path, easy to read and to check) or with
``torch.nn.functional.scaled_dot_product_attention`` (``"fast"``, the fused kernels, bias passed as
``attn_mask``). The positional encoding enters only through its hooks (rotate, bias); this module
never asks which encoding it is.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from randpos.encodings.base import PositionalEncoding
from randpos.model.layers import Linear

ATTENTION_BACKENDS = ("fast", "math")


def _causal_mask(length: int, device: torch.device) -> torch.Tensor:
    """(T, T) bool, True where key j may be seen by query i (j <= i)."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


def _is_vmapped(t: torch.Tensor) -> bool:
    """Whether ``t`` is a tensor batched by ``torch.vmap`` (a private but long-stable check)."""
    is_batched = getattr(getattr(torch._C, "_functorch", None), "is_batchedtensor", None)
    return bool(is_batched(t)) if is_batched is not None else False


#: Largest (B, H, T, T) logit tensor the explicit path materializes to save time on CPU
#: (256 MiB of fp32); past it the fused kernel's memory saving wins.
MATH_TRAINING_MAX_LOGITS = 2**26


def _prefer_math_on_cpu(q: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """CPU cases where SDPA does not help:

    * a gradient through a short sequence: for this model's narrow heads (d = 8) the CPU flash
      kernel's backward is slower than the explicit product (a training step at n = 20..40,
      B = 128 was 16-27% faster with 2 threads, ~7% with 1; docs/encodings.md); evaluation
      keeps SDPA, which is faster there;
    * a gradient for attn_mask, which the CPU flash kernel does not have (SDPA would pick its
      math kernel anyway);
    * vmap, for which SDPA's CPU kernel has no batching rule (it would loop, or fail when the
      mask needs a gradient).

    The explicit path computes the same numbers (tests/test_model.py)."""
    if q.device.type != "cpu" or torch.compiler.is_compiling():
        return False
    if _is_vmapped(q) or (bias is not None and bias.requires_grad):
        return True
    B, H, T, _ = q.shape
    return torch.is_grad_enabled() and q.requires_grad and B * H * T * T <= MATH_TRAINING_MAX_LOGITS


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    causal: bool = False,
    backend: str = "fast",
) -> torch.Tensor:
    """Attention of q, k, v (B, H, T, d) with an optional additive logit bias
    broadcastable to (B, H, T, T); returns (B, H, T, d)."""
    length = q.shape[-2]
    if backend == "fast" and _prefer_math_on_cpu(q, bias):
        backend = "math"
    if backend == "math":
        logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, T, T)
        if bias is not None:
            logits = logits + bias
        if causal:
            logits = logits.masked_fill(~_causal_mask(length, q.device), float("-inf"))
        return torch.softmax(logits, dim=-1) @ v
    if backend == "fast":
        if bias is not None and causal:
            # SDPA refuses is_causal together with attn_mask: fold the mask into the bias
            bias = bias.masked_fill(~_causal_mask(length, q.device), float("-inf"))
        if bias is not None:
            bias = bias.to(q.dtype)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, is_causal=causal and bias is None
        )
    raise ValueError(
        f"unknown attention backend {backend!r}; valid: {', '.join(ATTENTION_BACKENDS)}"
    )


class MultiHeadAttention(nn.Module):
    """Bias-free q, k, v, o projections (D -> D), as in the reference."""

    def __init__(self, width: int, num_heads: int, *, causal: bool, backend: str) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.causal = causal
        self.backend = backend
        self.query = Linear(width, width, bias=False)
        self.key = Linear(width, width, bias=False)
        self.value = Linear(width, width, bias=False)
        self.output = Linear(width, width, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        pe: PositionalEncoding,
        layer: int,
        distances: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x`` (B, T, D) -> (B, T, D); ``pe`` is the model's encoding, ``layer`` this layer's
        index (for per-layer encoding state and distance tables)."""

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # (B, H, T, d)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        if pe.has_rotate:
            q, k = pe.rotate(q, k, positions, layer)
        bias = pe.bias(q, k, positions, layer, distances) if pe.has_bias else None
        out = attend(q, k, v, bias, causal=self.causal, backend=self.backend)  # (B, H, T, d)
        return self.output(out.transpose(1, 2).flatten(2))  # (B, T, D)
