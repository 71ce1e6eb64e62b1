"""The reference encoder (docs/reference-system.md §3): post-LN, bidirectional, positions fed in as
data.

Notation: B = batch, T = length, D = width, V = vocab_size, C = num_classes, L = max_position,
G = number of distance tables (1 or num_layers).

    h = Embed(tokens) * sqrt(D)            (+ pe.embed(positions), then dropout, absolute PEs only)
    every layer:  h = LN(h + Dropout(Attention(h)));  h = LN(h + Dropout(FFN(h)))
    logits = Linear(h)                      on every position, (B, T, C)

Two extensions, both off by default (docs/design.md §6): a second, embed-only encoding
(``embed_pe``) adds ``embed_pe.embed(embed_positions)`` to the embedded tokens, its positions
given separately from the attention's (Abacus digit indices, coupled ids); and a looped model
(``loops`` = r) applies the layers as one weight-tied block r times, adding the embedded input
e again before every pass after the first (input injection): h_1 = block(e),
h_p = block(h_{p-1} + e). Under a KV cache every pass keeps its own keys and values
(``KVCache(num_layers * r)``, pass p's layer l in slot p * num_layers + l).

Randomness is explicit (docs/design.md §4): ``Transformer(config, generator=g)`` initializes from
``g`` and ``forward(..., generator=g)`` draws every dropout mask from ``g``, in one call
(:meth:`Transformer.draw_dropout_noise`, S = :attr:`Transformer.dropout_sites` uniform (B, T, D)
slices, one per dropout site in forward order). Passing that tensor as ``dropout_noise`` instead
gives the same masks, which is how a vmapped ensemble (``randpos.loop.ensemble``) reproduces each
model's single-run dropout exactly: generators cannot cross vmap, tensors can. The forward has no
data-dependent Python control flow, no in-place ops on activations and no ``.item()`` beyond the
optional input validation (``validate=False`` skips the checks that need a device sync), so it
stays friendly to ``torch.func`` (functional_call + vmap) and ``torch.compile``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from randpos.encodings import PE_NAMES, build_encoding, check_position_dims, get_encoding
from randpos.encodings.base import PositionalEncoding
from randpos.model.attention import ATTENTION_BACKENDS, KVCache, MultiHeadAttention
from randpos.model.config import ModelConfig
from randpos.model.layers import Linear, dropout, truncated_normal_


def check_config(config: ModelConfig) -> None:
    """``ValueError`` naming the field, its value and what is allowed."""

    def fail(field: str, allowed: str) -> None:
        raise ValueError(f"ModelConfig.{field}={getattr(config, field)!r}: must be {allowed}")

    for field in ("vocab_size", "num_classes", "num_layers", "width", "num_heads", "ff_width"):
        value = getattr(config, field)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            fail(field, "a positive integer")
    if not isinstance(config.max_position, int) or config.max_position <= 0:
        fail("max_position", "a positive integer")
    if config.width % config.num_heads:
        fail("width", f"divisible by num_heads={config.num_heads}")
    if config.width % 2:
        fail("width", "even (sinusoids pair sin and cos)")
    if (config.width // config.num_heads) % 2:
        fail("num_heads", "such that width // num_heads is even (rotary pairs dimensions)")
    if not 0.0 <= config.dropout < 1.0:
        fail("dropout", "in [0, 1)")
    if config.attention not in ATTENTION_BACKENDS:
        fail("attention", f"one of {', '.join(ATTENTION_BACKENDS)}")
    if config.pe not in PE_NAMES:
        get_encoding(config.pe)  # raises the registry's error, listing the valid names
    check_position_dims(config.pe, 1)  # an image encoding on the sequence model
    if not isinstance(config.loops, int) or isinstance(config.loops, bool) or config.loops < 1:
        fail("loops", "a positive integer")
    if config.embed_pe != "none":
        if config.embed_pe not in PE_NAMES:
            get_encoding(config.embed_pe)
        if get_encoding(config.embed_pe).overridden_hooks() != ("embed",):
            fail("embed_pe", "an embed-only encoding (one that overrides embed alone)")
        if not isinstance(config.embed_max_position, int) or config.embed_max_position < 1:
            fail("embed_max_position", "a positive integer")


def _is_integer(t: torch.Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


def _slice(noise: torch.Tensor | None, start: int, count: int) -> torch.Tensor | None:
    """Sites start..start+count-1 of (S, B, T, D) noise; a single site drops the leading axis."""
    if noise is None:
        return None
    return noise[start] if count == 1 else noise[start : start + count]


class _PassSlots:
    """A looped model's later pass seen as a cache of ``num_layers`` slots: layer l's keys and
    values go to the underlying cache's slot ``offset + l``."""

    def __init__(self, cache: KVCache, offset: int) -> None:
        self.cache, self.offset = cache, offset

    def extend(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cache.extend(self.offset + layer, k, v)


class EncoderLayer(nn.Module):
    """Post-LN block: h = LN(h + Dropout(Attn(h))); h = LN(h + Dropout(FFN(h)))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.dropout = config.dropout
        self.attention = MultiHeadAttention(
            config.width, config.num_heads, causal=config.causal, backend=config.attention
        )
        self.attention_norm = nn.LayerNorm(config.width, eps=1e-5)
        self.ff_in = Linear(config.width, config.ff_width)
        self.ff_out = Linear(config.ff_width, config.width)
        self.ff_norm = nn.LayerNorm(config.width, eps=1e-5)

    def forward(
        self,
        h: torch.Tensor,
        positions: torch.Tensor,
        pe: PositionalEncoding,
        layer: int,
        distances: torch.Tensor | None,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        cache: KVCache | None = None,
        key_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``noise``: optional (2, B, T, D) uniform draws for the two dropout masks, in order;
        ``cache``, ``key_positions``: see :meth:`MultiHeadAttention.forward`."""
        n_attn, n_ff = (None, None) if noise is None else (noise[0], noise[1])
        a = self.attention(h, positions, pe, layer, distances, cache, key_positions)
        a = dropout(a, self.dropout, self.training, generator, noise=n_attn)
        h = self.attention_norm(h + a)
        f = self.ff_out(torch.relu(self.ff_in(h)))
        return self.ff_norm(h + dropout(f, self.dropout, self.training, generator, noise=n_ff))


class Transformer(nn.Module):
    """The encoder of docs/reference-system.md §3; ``forward(tokens, positions) -> logits (B, T,
    C)``."""

    def __init__(self, config: ModelConfig, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        check_config(config)
        self.config = config
        self.pe = build_encoding(config.pe, config.encoding_shape(), config.pe_options)
        self.embed_pe = None
        if config.embed_pe != "none":
            self.embed_pe = build_encoding(config.embed_pe, config.embed_shape())
        # zeros until reset_parameters: construction never touches an RNG
        self.embedding = nn.Embedding(
            config.vocab_size, config.width, _weight=torch.zeros(config.vocab_size, config.width)
        )
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_layers))
        self.head = Linear(config.width, config.num_classes)
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Reference initialization, every random draw from ``generator`` in a fixed order."""
        truncated_normal_(self.embedding.weight, 0.02, generator)
        for module in self.modules():
            if isinstance(module, Linear):
                module.reset_parameters(generator)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()
        self.pe.reset_parameters(generator)
        if self.embed_pe is not None:
            self.embed_pe.reset_parameters(generator)

    @property
    def dropout_sites(self) -> int:
        """Dropout applications per training forward: the embedding (absolute PEs only), then
        each layer's attention output and feed-forward output, in every pass."""
        embedded = self.pe.has_embed or self.embed_pe is not None
        return int(embedded) + 2 * self.config.num_layers * self.config.loops

    def draw_dropout_noise(
        self, batch_size: int, length: int, generator: torch.Generator
    ) -> torch.Tensor | None:
        """Every dropout draw of one training forward, on the generator's device:
        (S, B, T, D) uniform [0, 1), or None when dropout is off (nothing is drawn then)."""
        if self.config.dropout == 0.0:
            return None
        shape = (self.dropout_sites, batch_size, length, self.config.width)
        return torch.rand(shape, generator=generator, device=generator.device)

    @property
    def uses_distances(self) -> bool:
        """Whether ``forward``'s ``distances`` argument is read (the distance reading)."""
        return self.pe.uses_distances

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        *,
        distances: torch.Tensor | None = None,
        layer_positions: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        dropout_noise: torch.Tensor | None = None,
        validate: bool = True,
        cache: KVCache | None = None,
        embed_positions: torch.Tensor | None = None,
        loops: int | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, C) for every position.

        tokens:    integer (B, T), ids in [0, vocab_size).
        positions: integer (B, T) or (1, T) (shared by the batch), values in [0, max_position).
        distances: optional integer (G, 2, >=T) distance tables (``randpos.positions.
                   randomized_distances``), G = 1 (shared) or num_layers (one per layer); read
                   only by encodings with ``uses_distances`` (relative, ALiBi), ignored otherwise.
        layer_positions: optional integer (num_layers, B or 1, T): the positions the attention
                   hooks (rotate, bias) of each layer see instead of ``positions``; the
                   reference's per-layer redraw for RoPE. ``positions`` still feeds ``embed``.
        generator: source of the dropout masks in training mode (None: torch's global RNG).
        dropout_noise: optional (S, B, T, D) uniform draws replacing ``generator`` as the source
                   of the masks (see :meth:`draw_dropout_noise`), or the bool keep masks
                   ``noise >= dropout``; ignored in eval mode.
        validate:  range-check tokens, positions and distances (one device sync per check);
                   shape and dtype checks are always done (they are free).
        cache:     a :class:`KVCache` (causal models only) for incremental decoding: the T
                   tokens follow the cached ones, attend to them, and are appended (keys,
                   values and ``positions``). An empty cache makes this a normal forward that
                   also fills it; the logits equal those of one forward over the whole sequence
                   at the same positions (tests/workloads/test_decoder.py).
        embed_positions: integer (B or 1, T) in [0, embed_max_position), the embed-only
                   encoding's positions (required with ``embed_pe``, ignored without).
        loops:     passes of a looped model (default ``config.loops``); a cache must have
                   num_layers * loops slots. Dropout draws are sized for ``config.loops``.
        """
        self._check_inputs(tokens, positions, distances, layer_positions, validate)
        passes = self.config.loops if loops is None else loops
        if not isinstance(passes, int) or passes < 1:
            raise ValueError(f"loops must be a positive integer, got {passes!r}")
        self._check_embed_positions(embed_positions, tokens, validate)
        key_positions = None
        if cache is not None:
            key_positions = self._check_cache(
                cache, tokens, positions, distances, layer_positions, passes
            )
        self._check_noise(dropout_noise, tokens)
        if not self.pe.uses_distances:
            distances = None
        noise = None  # (S, B, T, D): all of this forward's dropout draws
        if self.training and self.config.dropout > 0.0:
            noise = dropout_noise
            if noise is None and generator is not None:
                noise = self.draw_dropout_noise(tokens.shape[0], tokens.shape[1], generator)
            if noise is not None:
                noise = noise.to(tokens.device)
                if passes != self.config.loops:
                    raise ValueError(
                        f"dropout draws are sized for loops={self.config.loops}; a training "
                        f"forward with loops={passes} needs dropout=0"
                    )
        site = 0
        h = self.embedding(tokens) * math.sqrt(self.config.width)  # (B, T, D)
        if self.pe.has_embed:
            h = self.pe.embed(h, positions)
        if self.embed_pe is not None:
            h = self.embed_pe.embed(h, embed_positions)
        if self.pe.has_embed or self.embed_pe is not None:
            # dropout on embeddings only with an absolute encoding, as in the reference
            h = dropout(h, self.config.dropout, self.training, noise=_slice(noise, site, 1))
            site += 1
        injected = h
        for p in range(passes):
            if p:
                h = h + injected  # input injection
            slots = cache if cache is None or p == 0 else _PassSlots(cache, p * len(self.layers))
            for index, layer in enumerate(self.layers):
                seen = positions if layer_positions is None else layer_positions[index]
                h = layer(
                    h,
                    seen,
                    self.pe,
                    index,
                    distances,
                    None,
                    _slice(noise, site, 2),
                    slots,
                    key_positions,
                )
                site += 2
        if cache is not None:
            cache.positions = key_positions
        return self.head(h)  # (B, T, C)

    def _check_cache(
        self,
        cache: KVCache,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        distances: torch.Tensor | None,
        layer_positions: torch.Tensor | None,
        passes: int = 1,
    ) -> torch.Tensor:
        """The positions of every key after this step (B or 1, Tc + T); ``ValueError`` for a
        cache this model cannot use."""
        slots = self.config.num_layers * passes
        if not isinstance(cache, KVCache) or len(cache.keys) != slots:
            what = f"{self.config.num_layers}" if passes == 1 else f"num_layers * loops = {slots}"
            raise ValueError(f"cache must be a KVCache({what}) for this model")
        if not self.config.causal:
            raise ValueError(
                "a KV cache needs a causal model (causal=True): a bidirectional "
                "model's earlier tokens attend to later ones"
            )
        if not self.pe.supports_cache:
            raise ValueError(f"pe {self.config.pe!r} cannot decode with a KV cache")
        if layer_positions is not None or (distances is not None and self.pe.uses_distances):
            raise ValueError(
                "a KV cache takes positions only: distance tables and per-layer "
                "positions describe a whole sequence (decode without a cache)"
            )
        if cache.positions is None:
            return positions
        cached = cache.positions
        if cached.shape[0] not in (1, tokens.shape[0]):
            raise ValueError(f"cache holds a batch of {cached.shape[0]}, tokens {tokens.shape[0]}")
        if cached.is_floating_point() != positions.is_floating_point():
            raise ValueError("positions must have the cached positions' kind (integer or float)")
        batch = max(cached.shape[0], positions.shape[0])
        return torch.cat(
            [cached.expand(batch, -1), positions.expand(batch, -1).to(cached.dtype)], dim=-1
        )

    def _check_embed_positions(
        self, embed_positions: torch.Tensor | None, tokens: torch.Tensor, validate: bool
    ) -> None:
        if self.embed_pe is None:
            return
        if not isinstance(embed_positions, torch.Tensor):
            raise ValueError(
                f"embed_pe {self.config.embed_pe!r} needs embed_positions (B, T), got "
                f"{type(embed_positions).__name__}"
            )
        if (
            embed_positions.dim() != 2
            or embed_positions.shape[1] != tokens.shape[1]
            or embed_positions.shape[0] not in (1, tokens.shape[0])
            or not _is_integer(embed_positions)
        ):
            raise ValueError(
                f"embed_positions must be an integer tensor of shape (B or 1, T) matching tokens "
                f"{tuple(tokens.shape)}, got {embed_positions.dtype} {tuple(embed_positions.shape)}"
            )
        if validate:
            lo, hi = torch.stack([embed_positions.min(), embed_positions.max()]).tolist()
            limit = self.config.embed_max_position
            if lo < 0 or hi >= limit:
                raise ValueError(
                    f"embed_positions must lie in [0, embed_max_position={limit}), got values "
                    f"in [{lo}, {hi}]"
                )

    def _check_noise(self, noise: torch.Tensor | None, tokens: torch.Tensor) -> None:
        if noise is None:
            return
        expected = (self.dropout_sites, *tokens.shape, self.config.width)
        if not isinstance(noise, torch.Tensor) or tuple(noise.shape) != expected:
            got = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
            raise ValueError(
                f"dropout_noise must have shape (dropout_sites, B, T, width) = {expected},"
                f" got {got}"
            )

    def _check_inputs(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        distances: torch.Tensor | None,
        layer_positions: torch.Tensor | None,
        validate: bool,
    ) -> None:
        if not isinstance(tokens, torch.Tensor) or not isinstance(positions, torch.Tensor):
            raise ValueError("tokens and positions must be torch tensors")
        if tokens.dim() != 2 or tokens.numel() == 0:
            raise ValueError(
                f"tokens must have a non-empty shape (B, T), got {tuple(tokens.shape)}"
            )
        if positions.dim() != 2 or positions.shape[1] != tokens.shape[1]:
            raise ValueError(
                f"positions must have shape (B, T) or (1, T) matching tokens {tuple(tokens.shape)},"
                f" got {tuple(positions.shape)}"
            )
        if positions.shape[0] not in (1, tokens.shape[0]):
            raise ValueError(
                f"positions batch size {positions.shape[0]} must be 1 or tokens' {tokens.shape[0]}"
            )
        if not _is_integer(tokens):
            raise ValueError(f"tokens must be an integer tensor (ids), got {tokens.dtype}")
        if not _is_integer(positions) and not (
            positions.is_floating_point() and self.pe.float_positions
        ):
            raise ValueError(
                f"positions must be an integer tensor, got {positions.dtype} (float positions, "
                f"as randomize='float' draws them, need an encoding that takes them; "
                f"pe {self.config.pe!r} does not)"
            )
        if layer_positions is not None:
            n = self.config.num_layers
            if (
                not isinstance(layer_positions, torch.Tensor)
                or layer_positions.dim() != 3
                or layer_positions.shape[0] != n
                or layer_positions.shape[1] not in (1, tokens.shape[0])
                or layer_positions.shape[2] != tokens.shape[1]
            ):
                got = getattr(layer_positions, "shape", None)
                got = tuple(got) if got is not None else type(layer_positions).__name__
                raise ValueError(
                    f"layer_positions must be a tensor of shape (num_layers={n}, B or 1, T)"
                    f" matching tokens {tuple(tokens.shape)}, got {got}"
                )
            if not _is_integer(layer_positions):
                raise ValueError(f"layer_positions must be integer, got {layer_positions.dtype}")
        use_distances = distances is not None and self.pe.uses_distances
        if use_distances:
            if not isinstance(distances, torch.Tensor):
                raise ValueError("distances must be a torch tensor")
            self.pe.check_distances(distances, tokens.shape[1], ranges=False)
        if not validate:
            return
        # one sync for both range checks
        all_positions = [positions.min(), positions.max()]
        if layer_positions is not None:
            all_positions += [layer_positions.min(), layer_positions.max()]
        lo_t, hi_t, *bounds = torch.stack([tokens.min(), tokens.max(), *all_positions]).tolist()
        lo_p, hi_p = min(bounds), max(bounds)
        if lo_t < 0 or hi_t >= self.config.vocab_size:
            raise ValueError(
                f"tokens must lie in [0, vocab_size={self.config.vocab_size}),"
                f" got values in [{lo_t}, {hi_t}]"
            )
        limit = self.config.max_position
        if lo_p < 0 or hi_p >= limit:
            raise ValueError(
                f"positions must lie in [0, max_position={limit}), got values in [{lo_p}, {hi_p}];"
                " positions are never clamped: raise max_position or sample within range"
            )
        if use_distances:
            self.pe.check_distances(distances, tokens.shape[1])
