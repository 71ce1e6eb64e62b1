"""Multi-head self-attention: one implementation, two numerically equivalent backends.

Notation: B = batch, T = length, D = width, H = heads, d = D / H; under a KV cache Tq = the new
query rows, Tk = every key (cached + new), the queries being the last Tq of the keys.

``attend`` computes softmax(q k^T / sqrt(d) + bias [+ causal mask]) v either explicitly
(``"math"``, the reference path, easy to read and to check) or with
``torch.nn.functional.scaled_dot_product_attention`` (``"fast"``, the fused kernels, bias passed as
``attn_mask``). The positional encoding enters only through its hooks (rotate, bias, features);
this module never asks which encoding it is.

Data-dependent attention needs two more things, both general (docs/design.md §6): per-token
``features`` computed from the layer input (FoX's forget gates), which the KV cache stores next
to the keys, and a *sink* (:class:`randpos.encodings.base.BiasWithSink`): one more key whose
value is zero, so that the keys' weights sum to at most one (stick-breaking). Both backends run
the sink as an appended zero key and value, so there is still one attention function.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from randpos.encodings.base import BiasWithSink, PositionalEncoding
from randpos.model.layers import Linear


class KVCache:
    """Keys and values of the tokens decoded so far, per layer, with their positions.

    ``keys[l]`` and ``values[l]`` are (B, H, Tc, d): rotary encodings' keys are stored already
    rotated (and xPos-scaled) at their own positions, so a cached key is never recomputed;
    ``positions`` (B or 1, Tc) are the cached tokens' positions, which the bias encodings need
    for the new rows (``p_new - p_cached``); ``features[l]`` (B, H, Tc, F) the per-token values
    of an encoding with a ``features`` hook (FoX's log forget gates), None for the others.
    Memory is O(Tc) per layer. A cache belongs to one batch of sequences;
    :meth:`randpos.model.Transformer.forward` fills it (``cache=``).
    """

    def __init__(self, num_layers: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.features: list[torch.Tensor | None] = [None] * num_layers
        self.positions: torch.Tensor | None = None

    @property
    def length(self) -> int:
        """Tc, the number of cached tokens."""
        return 0 if self.positions is None else self.positions.shape[-1]

    def extend(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new keys and values (B, H, T, d) of ``layer``; returns all of them."""
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=-2)
            v = torch.cat([self.values[layer], v], dim=-2)
        self.keys[layer], self.values[layer] = k, v
        return k, v

    def extend_features(self, layer: int, features: torch.Tensor) -> torch.Tensor:
        """Append the new tokens' features (B, H, T, F) of ``layer``; returns all of them."""
        if self.features[layer] is not None:
            features = torch.cat([self.features[layer], features], dim=-2)
        self.features[layer] = features
        return features

    def nbytes(self) -> int:
        """Bytes held by the cached keys, values, features and positions."""
        held = (*self.keys, *self.values, *self.features, self.positions)
        return sum(t.numel() * t.element_size() for t in held if t is not None)


#: "fast": scaled_dot_product_attention (math on CPU where it is quicker); "math": the reference
ATTENTION_BACKENDS = ("fast", "math")
DEFAULT_BACKEND = ATTENTION_BACKENDS[0]


def _causal_mask(rows: int, keys: int, device: torch.device) -> torch.Tensor:
    """(Tq, Tk) bool, True where key j may be seen by query row i, the rows being the last Tq
    of the Tk positions (j <= i + Tk - Tq; the square lower triangle when Tq = Tk)."""
    return torch.ones(rows, keys, dtype=torch.bool, device=device).tril(keys - rows)


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

    The explicit path computes the same numbers (tests/model/test_transformer.py)."""
    if q.device.type != "cpu" or torch.compiler.is_compiling():
        return False
    if _is_vmapped(q) or (bias is not None and bias.requires_grad):
        return True
    B, H, T, _ = q.shape
    return torch.is_grad_enabled() and q.requires_grad and B * H * T * T <= MATH_TRAINING_MAX_LOGITS


def _append_sink(
    rows: int,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None,
    sink: torch.Tensor,
    causal: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """k, v (B, H, Tk + 1, d) with a zero key and a zero value last, and the bias (B', H',
    Tq, Tk + 1), Tq = ``rows``, whose last column is ``sink`` (the zero key's logit is
    q . 0 = 0 plus its bias), the causal mask folded in: the sink form as plain attention, for
    either backend."""
    keys = k.shape[-2]
    zero = k.new_zeros(*k.shape[:-2], 1, k.shape[-1])
    k, v = torch.cat([k, zero], dim=-2), torch.cat([v, zero.to(v.dtype)], dim=-2)
    if bias is None:
        bias = sink.new_zeros(rows, keys)
    if causal:
        bias = bias.masked_fill(~_causal_mask(rows, keys, sink.device), float("-inf"))
    lead = torch.broadcast_shapes(bias.shape[:-1], sink.shape)  # (B', H', Tq)
    bias = torch.cat([bias.expand(*lead, keys), sink.expand(lead).unsqueeze(-1)], dim=-1)
    return k, v, bias


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    sink: torch.Tensor | None = None,
    causal: bool = False,
    backend: str = DEFAULT_BACKEND,
) -> torch.Tensor:
    """Attention of q (B, H, Tq, d) over k, v (B, H, Tk, d) with an optional additive logit
    bias broadcastable to (B, H, Tq, Tk); returns (B, H, Tq, d). Tq = Tk = T without a cache;
    with one, the causal mask treats the queries as the last Tq of the Tk positions.

    ``sink`` (B, H, Tq) or broadcastable: the logit of one more key whose value is zero
    (:class:`randpos.encodings.base.BiasWithSink`): the weights of the Tk keys are then those of
    a softmax over the keys and the sink, and sum to at most one."""
    if sink is not None:
        k, v, bias = _append_sink(q.shape[-2], k, v, bias, sink, causal)
        causal = False  # folded into the bias
    rows, keys = q.shape[-2], k.shape[-2]
    if backend == "fast" and _prefer_math_on_cpu(q, bias):
        backend = "math"
    if backend == "math":
        # the 1/sqrt(d) scale on q (B, H, Tq, d), not on the Tq x Tk logits: d times fewer
        # elements, forward and backward (a training step at n = 40 spent ~14% there)
        logits = (q / math.sqrt(q.shape[-1])) @ k.transpose(-1, -2)  # (B, H, Tq, Tk)
        if bias is not None:
            logits = logits + bias
        if causal:
            logits = logits.masked_fill(~_causal_mask(rows, keys, q.device), float("-inf"))
        return torch.softmax(logits, dim=-1) @ v
    if backend == "fast":
        if causal and rows == 1:
            causal = False  # the one new row sees every key
        if causal and (bias is not None or rows != keys):
            # SDPA refuses is_causal together with attn_mask, and aligns its causal mask to the
            # top left when Tq != Tk: fold our (bottom-right aligned) mask into the bias
            mask = _causal_mask(rows, keys, q.device)
            if bias is None:
                bias = torch.zeros(rows, keys, dtype=q.dtype, device=q.device)
            bias = bias.masked_fill(~mask, float("-inf"))
            causal = False
        if bias is not None:
            bias = bias.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, is_causal=causal)
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
        cache: KVCache | None = None,
        key_positions: torch.Tensor | None = None,
        *,
        logit_scale: float | None = None,
    ) -> torch.Tensor:
        """``x`` (B, T, D) -> (B, T, D); ``pe`` is the model's encoding, ``layer`` this layer's
        index (for per-layer encoding state and distance tables).

        With a ``cache`` the T tokens of ``x`` come after the cached ones: their keys and values
        (rotated at ``positions``) are appended to the cache's layer ``layer`` and the queries
        attend to every cached key; ``key_positions`` (B or 1, Tk) are the positions of all of
        them, for the bias encodings.

        ``logit_scale`` (a python float; None: 1) multiplies the queries after the rotate hook,
        so the ``q . k / sqrt(d)`` logits scale by it (the attention-logit scaling at larger
        grids, log N_test / log N_train). An encoding's bias is computed from the unscaled
        queries and is not scaled."""

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # (B, H, T, d)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        if pe.has_rotate:
            q, k = pe.rotate(q, k, positions, layer)
        kwargs = {}
        if pe.has_features:  # data-dependent attention: per-token values of this layer's input
            kwargs["features"] = pe.features(x, layer)  # (B, H, T, F)
        if cache is not None:
            k, v = cache.extend(layer, k, v)  # (B, H, Tk, d)
            kwargs["key_positions"] = key_positions
            if "features" in kwargs:
                kwargs["features"] = cache.extend_features(layer, kwargs["features"])
        bias = pe.bias(q, k, positions, layer, distances, **kwargs) if pe.has_bias else None
        sink = None
        if isinstance(bias, BiasWithSink):
            bias, sink = bias
        if logit_scale is not None:
            q = q * logit_scale
        out = attend(q, k, v, bias, sink=sink, causal=self.causal, backend=self.backend)
        return self.output(out.transpose(1, 2).flatten(2))  # (B, T, D)
