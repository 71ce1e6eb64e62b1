"""Random-order autoregressive generation with position-guided queries (ARPG, arXiv
2503.10568), scaled down to binarized digit canvases (docs/images.md, "ARPG").

Notation: B = batch, h x w = the token grid, N = h * w, V = vocabulary, D = width, H = heads,
d = D / H. Grid index n = row * w + column (row-major, as :func:`randpos.images.models.patchify`).
An *order* (B, N) is a permutation of the grid indices: ``orders[b, i]`` is the grid index
generated i-th. Positions are data (docs/design.md §1): ``positions`` (B or 1, N, 2) give each grid
index its (y, x) position, exactly as for the ViT and the DiT, so randomized 2D positions plug in
unchanged (the order only permutes them).

Tokens (no learned tokenizer): each p x p patch of a canvas in [0, 1], thresholded at 0.5, read as
p * p bits (bit j = pixel j of the patch in :func:`patchify`'s order), so V = 2 ** (p * p) = 16 for
p = 2 and :func:`detokenize` inverts :func:`tokenize` exactly on binary canvases.

The model (:class:`ARPG`) follows the ARPG code's two-stage decoder (references/images.md §C):

1. the *content* stream ``[class, x_{o_0}, ..., x_{o_{N-2}}]`` through ``depth // 2`` causal
   self-attention blocks, each token rotated at its own position; the class slot's q and k are
   zeroed after the rotation (ARPG's own behaviour: its logit is 0 for every query and the class
   reaches the others only through its value);
2. one shared key and value projection of the normed content stream, the keys rotated at the
   content positions (class slot zeroed);
3. ``depth - depth // 2`` cross blocks over N copies of one learned query embedding: query i is
   rotated at its *target* position ``positions[o_i]`` and attends causally to content slots
   0..i (the class and the i tokens before it in the order), never to other queries. The target
   position enters only through this rotation, so the encoding must have a ``rotate`` hook
   (``rope2d_axial``, ``rope2d_mixed``);
4. LayerNorm and a zero-initialised Linear head: the logits of ``x_{o_i}``.

With ``rope2d_mixed`` (learned per-layer frequencies) the content blocks use the encoding's layers
0..depth//2 - 1, and the shared keys and every cross query use layer depth//2, so that q . k stays
a function of the offset.

Generation (:func:`generate`) decodes ``counts[s]`` tokens at step s (:func:`decode_counts`: ARPG's
arccos schedule, or linear) in any order (:func:`generation_orders`: random, raster, spiral), with
a cache (:class:`ARPGCache`): the tokens sampled at a step enter the content blocks (their keys and
values appended, the causal mask of training among them), their shared keys and values join the
cross cache, and the next step's queries attend to everything cached. Without the cache each step
recomputes the content stream from the class token (``ARPG.forward`` without a cache): the
same numbers.

Deliberate deviations from the ARPG code: LayerNorm and a GELU MLP (the project's ViT block) for
RMSNorm and SwiGLU; no dropout; a constant guidance scale; the tokens of one parallel step see each
other causally in the content blocks, as in training (ARPG's inference lets them attend to each
other bidirectionally, a train/test mismatch not copied here).

Randomness is explicit (docs/design.md §4): construction draws nothing,
``reset_parameters(generator)`` initialises every parameter, orders and sampling take generators.
The training forward has no data-dependent Python control flow, so it runs under
``torch.func.functional_call`` and vmap.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from randpos.encodings import get_encoding
from randpos.encodings.base import PositionalEncoding
from randpos.images.models import (
    MLP,
    VisionConfig,
    _check_ranges,
    _default_generator,
    _linears,
    _normal_,
    patchify,
    unpatchify,
    xavier_uniform_,
    zero_,
)
from randpos.model.attention import KVCache, attend
from randpos.model.layers import Linear

#: generation orders of :func:`generation_orders`
ORDERS = ("random", "raster", "spiral")
#: decoding schedules of :func:`decode_counts`
SCHEDULES = ("arccos", "linear")
#: pixels above it are ink (bit 1)
BINARY_THRESHOLD = 0.5


# --- tokens -----------------------------------------------------------------------------------


def vocab_size(patch: int) -> int:
    """V = 2 ** (p * p): one symbol per binary p x p patch."""
    return 2 ** (patch * patch)


def tokenize(images: torch.Tensor, patch: int = 2) -> torch.Tensor:
    """Canvases (B, 1, S, S) in [0, 1] -> tokens (B, N) long in [0, V), grid row-major."""
    if images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"images must have shape (B, 1, H, W), got {tuple(images.shape)}")
    bits = (patchify(images, patch) > BINARY_THRESHOLD).long()  # (B, N, p*p)
    weights = 2 ** torch.arange(bits.shape[-1], device=bits.device)
    return (bits * weights).sum(-1)


def detokenize(tokens: torch.Tensor, h: int, w: int, patch: int = 2) -> torch.Tensor:
    """Tokens (B, N = h*w) -> binary canvases (B, 1, h*p, w*p) float in {0, 1}."""
    shifts = torch.arange(patch * patch, device=tokens.device)
    bits = (tokens.long().unsqueeze(-1) >> shifts) & 1  # (B, N, p*p)
    return unpatchify(bits.float(), h, w, patch, 1)


def binarize(images: torch.Tensor) -> torch.Tensor:
    """What the tokens keep of a canvas: ``detokenize(tokenize(images))`` (pixels > 0.5)."""
    return (images > BINARY_THRESHOLD).to(images.dtype)


# --- orders and schedules ---------------------------------------------------------------------


def spiral_order(h: int, w: int) -> torch.Tensor:
    """(h*w,) grid indices clockwise from the top-left corner inwards."""
    order: list[int] = []
    top, bottom, left, right = 0, h - 1, 0, w - 1
    while top <= bottom and left <= right:
        order += [top * w + c for c in range(left, right + 1)]
        order += [r * w + right for r in range(top + 1, bottom + 1)]
        if top < bottom:
            order += [bottom * w + c for c in range(right - 1, left - 1, -1)]
        if left < right:
            order += [r * w + left for r in range(bottom - 1, top, -1)]
        top, bottom, left, right = top + 1, bottom - 1, left + 1, right - 1
    return torch.tensor(order, dtype=torch.long)


def generation_orders(
    kind: str,
    batch: int,
    h: int,
    w: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Orders (B, N) long: ``random`` (a fresh permutation per sample, from ``generator``),
    ``raster`` (row-major) or ``spiral`` (:func:`spiral_order`), the same for every sample."""
    N = h * w
    if kind == "random":
        if generator is None:
            raise ValueError("random orders need an explicit generator")
        scores = torch.rand(batch, N, generator=generator, device=generator.device)
        return scores.argsort(dim=1).to(device or generator.device)
    if kind == "raster":
        order = torch.arange(N)
    elif kind == "spiral":
        order = spiral_order(h, w)
    else:
        raise ValueError(f"order {kind!r}: must be one of {', '.join(ORDERS)}")
    return order.to(device).expand(batch, N).clone()


def decode_counts(num_tokens: int, steps: int, schedule: str = "arccos") -> list[int]:
    """Tokens decoded at each step: ``min(steps, N)`` positive counts summing to N.

    After step s (0-based) of S a fraction r(s) of the tokens is still to decode, r = arccos((s+1)
    / S) / (pi / 2) for ``arccos`` (ARPG's schedule: few tokens first, more later) or 1 - (s+1) / S
    for ``linear``; step s decodes N - done - floor(N r(s)) tokens, at least one."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule {schedule!r}: must be one of {', '.join(SCHEDULES)}")
    if num_tokens <= 0 or steps <= 0:
        raise ValueError(f"decode_counts needs N > 0 and steps > 0, got {num_tokens}, {steps}")
    steps = min(steps, num_tokens)
    counts, done = [], 0
    for s in range(steps):
        fraction = (s + 1) / steps
        left = math.acos(fraction) / (math.pi / 2) if schedule == "arccos" else 1.0 - fraction
        k = max(1, num_tokens - done - math.floor(num_tokens * left))
        k = min(k, num_tokens - done - (steps - 1 - s))  # leave one token per later step
        counts.append(k)
        done += k
    return counts


# --- the model --------------------------------------------------------------------------------


def positions_in_order(positions: torch.Tensor, orders: torch.Tensor) -> torch.Tensor:
    """Grid positions (B or 1, N, 2) -> (B, N, 2) in generation order: row i is
    ``positions[b, orders[b, i]]``."""
    positions = positions.expand(orders.shape[0], -1, -1)
    return positions.gather(1, orders.unsqueeze(-1).expand(-1, -1, positions.shape[-1]))


def _heads(t: torch.Tensor, num_heads: int) -> torch.Tensor:
    return t.unflatten(-1, (num_heads, -1)).transpose(1, 2)  # (B, H, T, d)


def _merge(t: torch.Tensor) -> torch.Tensor:
    return t.transpose(1, 2).flatten(2)  # (B, T, D)


def _zero_first(t: torch.Tensor) -> torch.Tensor:
    """``t`` (B, H, T, d) with slot 0 zeroed (the class slot), vmap-safe."""
    keep = (torch.arange(t.shape[-2], device=t.device) > 0).to(t.dtype)
    return t * keep[:, None]


class ARPGCache:
    """What generation keeps between steps: the content blocks' keys and values (a
    :class:`randpos.model.KVCache`, keys rotated) and the shared cross keys and values
    (B, H, Tc, d) of every content slot so far (the class first)."""

    def __init__(self) -> None:
        self.content: KVCache | None = None  # created by the model on its first step
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    @property
    def length(self) -> int:
        """Content slots cached (0 before the class token)."""
        return 0 if self.keys is None else self.keys.shape[-2]

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this step's keys and values (B, H, t, d) to the cache; returns the whole cached
        keys and values."""
        if self.keys is not None:
            k = torch.cat([self.keys, k], dim=-2)
            v = torch.cat([self.values, v], dim=-2)
        self.keys, self.values = k, v
        return k, v

    def nbytes(self) -> int:
        """The memory the cache holds, in bytes (keys, values and the content blocks' cache)."""
        content = 0 if self.content is None else self.content.nbytes()
        return content + sum(
            t.numel() * t.element_size() for t in (self.keys, self.values) if t is not None
        )


class _Block(nn.Module):
    """What both blocks hold: pre-LN, bias-free projections (q, [k, v,] o), then the MLP."""

    def __init__(self, config: VisionConfig, *, keys_and_values: bool) -> None:
        super().__init__()
        D = config.width
        self.num_heads = config.num_heads
        self.backend = config.attention
        self.norm1 = nn.LayerNorm(D, eps=1e-6)
        self.query = Linear(D, D, bias=False)
        if keys_and_values:
            self.key = Linear(D, D, bias=False)
            self.value = Linear(D, D, bias=False)
        self.output = Linear(D, D, bias=False)
        self.norm2 = nn.LayerNorm(D, eps=1e-6)
        self.mlp = MLP(D, config.ff_ratio * D)

    def _residual(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        x = x + self.output(_merge(attended))
        return x + self.mlp(self.norm2(x))


class ContentBlock(_Block):
    """Causal self-attention over the content stream, then the MLP."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__(config, keys_and_values=True)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        pe: PositionalEncoding,
        layer: int,
        class_slot: bool,
        cache: KVCache | None,
    ) -> torch.Tensor:
        h = self.norm1(x)
        q, k, v = (_heads(f(h), self.num_heads) for f in (self.query, self.key, self.value))
        q, k = pe.rotate(q, k, positions, layer)
        if class_slot:
            q, k = _zero_first(q), _zero_first(k)
        if cache is not None:
            k, v = cache.extend(layer, k, v)
        return self._residual(x, attend(q, k, v, causal=True, backend=self.backend))


class CrossBlock(_Block):
    """Position-guided cross-attention of the queries onto the shared keys and values, then
    the MLP; the queries never attend to each other."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__(config, keys_and_values=False)

    def forward(
        self,
        x: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        targets: torch.Tensor,
        pe: PositionalEncoding,
        layer: int,
        causal: bool,
    ) -> torch.Tensor:
        q = _heads(self.query(self.norm1(x)), self.num_heads)
        q, _ = pe.rotate(q, q, targets, layer)  # the query carries its target position only
        return self._residual(x, attend(q, keys, values, causal=causal, backend=self.backend))


def check_arpg_config(config: VisionConfig) -> None:
    """``ValueError`` naming the field when ``config`` cannot build an :class:`ARPG`."""
    config.check()
    if config.depth < 2:
        raise ValueError(
            f"VisionConfig.depth={config.depth}: ARPG needs at least 2 layers (content + cross)"
        )
    if get_encoding(config.pe).overridden_hooks() != ("rotate",):
        raise ValueError(
            f"VisionConfig.pe={config.pe!r}: ARPG's queries carry their target position only "
            "through a rotary encoding; use rope2d_axial or rope2d_mixed"
        )
    scaling = get_encoding(config.pe).parse_options(config.pe_options).scaling
    if scaling != "none":
        raise ValueError(
            f"pe.scaling={scaling!r}: ARPG takes none (a per-batch frequency scale would change "
            "between decoding steps)"
        )
    if config.cond_dim:
        raise ValueError(f"VisionConfig.cond_dim={config.cond_dim}: ARPG has no micro-conditioning")


class ARPG(nn.Module):
    """Class-conditional random-order autoregressive model over binary patch tokens.

    ``forward(tokens (B, N), labels (B,), positions (B or 1, N, 2), orders (B, N)) -> logits
    (B, N, V)``: teacher forcing; ``logits[:, i]`` predicts ``tokens[:, orders[:, i]]``. Label
    ``num_classes`` is the null class of classifier-free guidance."""

    def __init__(self, config: VisionConfig, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        check_arpg_config(config)
        self.config = config
        D = config.width
        self.num_content = config.depth // 2
        self.pe = config.build_encoding(num_layers=self.num_content + 1)
        self.vocab_size = vocab_size(config.patch)
        # zeros until reset_parameters: construction never touches an RNG
        self.token_embed = nn.Embedding(self.vocab_size, D, _weight=torch.zeros(self.vocab_size, D))
        rows = config.num_classes + 1
        self.class_embed = nn.Embedding(rows, D, _weight=torch.zeros(rows, D))
        self.query_embed = nn.Parameter(torch.zeros(D))
        self.content_blocks = nn.ModuleList(ContentBlock(config) for _ in range(self.num_content))
        self.content_norm = nn.LayerNorm(D, eps=1e-6)
        self.key = Linear(D, D, bias=False)
        self.value = Linear(D, D, bias=False)
        self.cross_blocks = nn.ModuleList(
            CrossBlock(config) for _ in range(config.depth - self.num_content)
        )
        self.norm = nn.LayerNorm(D, eps=1e-6)
        self.head = Linear(D, self.vocab_size)
        self.reset_parameters(generator)

    @property
    def null_class(self) -> int:
        """The class id of the unconditional (classifier-free guidance) embedding:
        ``num_classes``."""
        return self.config.num_classes

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Xavier-uniform for every Linear (bias 0), N(0, 0.02) for the token, class and query
        embeddings, a zero head (as ARPG's), LayerNorms (1, 0), then the PE's own init; all
        draws from ``generator`` in module order."""
        generator = _default_generator(generator)
        for linear in _linears(self):
            xavier_uniform_(linear, generator)
        for table in (self.token_embed.weight, self.class_embed.weight, self.query_embed):
            _normal_(table, 0.02, generator)
        zero_(self.head)
        for module in self.modules():
            if isinstance(module, nn.LayerNorm):
                module.reset_parameters()
        self.pe.reset_parameters(generator)

    # ------------------------------------------------------------------ the two stages
    def _content(
        self, x: torch.Tensor, positions: torch.Tensor, class_slot: bool, cache: ARPGCache | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Content slots (B, T, D) at ``positions`` (B, T, 2) -> the shared keys and values of
        every slot so far (B, H, Tc, d), cached ones first."""
        for layer, block in enumerate(self.content_blocks):
            x = block(
                x, positions, self.pe, layer, class_slot, None if cache is None else cache.content
            )
        h = self.content_norm(x)
        H = self.config.num_heads
        k, v = _heads(self.key(h), H), _heads(self.value(h), H)
        k, _ = self.pe.rotate(k, k, positions, self.num_content)
        if class_slot:
            k = _zero_first(k)
        return (k, v) if cache is None else cache.extend(k, v)

    def _queries(
        self, keys: torch.Tensor, values: torch.Tensor, targets: torch.Tensor, causal: bool
    ) -> torch.Tensor:
        """Logits (B, Tq, V) of the queries at ``targets`` (B, Tq, 2)."""
        B, Tq = targets.shape[:2]
        x = self.query_embed.expand(B, Tq, -1)
        for block in self.cross_blocks:
            x = block(x, keys, values, targets, self.pe, self.num_content, causal)
        return self.head(self.norm(x))

    def _class_slot(self, labels: torch.Tensor, positions: torch.Tensor) -> tuple:
        x = self.class_embed(labels)[:, None]  # (B, 1, D)
        return x, torch.zeros_like(positions[:, :1])  # its rotation is zeroed anyway

    # ------------------------------------------------------------------ entry points
    def forward(
        self,
        tokens: torch.Tensor,
        labels: torch.Tensor,
        positions: torch.Tensor,
        orders: torch.Tensor | None = None,
        *,
        targets: torch.Tensor | None = None,
        cache: ARPGCache | None = None,
        validate: bool = True,
    ) -> torch.Tensor:
        """Teacher forcing (``orders`` given): logits (B, N, V) in generation order, ``logits[:,
        i]`` predicting ``tokens[:, orders[:, i]]``; ``validate``: check shapes and ranges (one
        device sync).

        Decoding (``targets`` (B, k, 2) given): the logits (B, k, V) of queries at ``targets``
        that see the class token and ``tokens`` (B, m) at ``positions`` (B, m, 2), m >= 0. With
        a ``cache`` those tokens come after the cached ones (the class is fed when the cache is
        empty), are appended to it, and the queries see everything cached; without one the
        content stream is computed from scratch: the same numbers."""
        if targets is not None:
            return self._decode(tokens, labels, positions, targets, cache)
        if orders is None:
            raise ValueError("forward: pass orders (teacher forcing) or targets (decoding)")
        B, N = tokens.shape
        if validate:
            self._check(tokens, labels, positions, orders)
        targets = positions_in_order(positions, orders)
        ordered = tokens.gather(1, orders)  # (B, N)
        cls, cls_pos = self._class_slot(labels, targets)
        x = torch.cat([cls, self.token_embed(ordered[:, :-1])], dim=1)  # (B, N, D)
        content_positions = torch.cat([cls_pos, targets[:, :-1]], dim=1)
        keys, values = self._content(x, content_positions, True, None)
        return self._queries(keys, values, targets, causal=True)

    def _decode(self, tokens, labels, positions, targets, cache) -> torch.Tensor:
        x, pos = self.token_embed(tokens), positions
        first = cache is None or cache.length == 0
        if first:
            cls, cls_pos = self._class_slot(labels, targets)
            x, pos = torch.cat([cls, x], dim=1), torch.cat([cls_pos, pos.to(cls_pos.dtype)], 1)
        if cache is not None and cache.content is None:
            cache.content = KVCache(self.num_content)
        keys, values = self._content(x, pos, first, cache)
        return self._queries(keys, values, targets, causal=False)

    def _check(self, tokens, labels, positions, orders) -> None:
        B, N = tokens.shape
        if orders.shape != (B, N):
            raise ValueError(f"orders must have shape (B={B}, N={N}), got {tuple(orders.shape)}")
        if (
            positions.dim() != 3
            or positions.shape[1:] != (N, 2)
            or positions.shape[0] not in (1, B)
        ):
            raise ValueError(
                f"positions must have shape (B or 1, N={N}, 2), got {tuple(positions.shape)}"
            )
        if labels.shape != (B,):
            raise ValueError(f"labels must have shape (B={B},), got {tuple(labels.shape)}")
        if tokens.min() < 0 or tokens.max() >= self.vocab_size:
            raise ValueError(f"tokens must lie in [0, {self.vocab_size})")
        if not torch.equal(orders.sort(dim=1).values, torch.arange(N).expand(B, N)):
            raise ValueError("orders must hold a permutation of 0..N-1 per sample")
        _check_ranges(self.config, positions, labels)


@torch.no_grad()
def generate(
    model,
    labels: torch.Tensor,
    positions: torch.Tensor,
    orders: torch.Tensor,
    counts: list[int],
    *,
    null_class: int | None = None,
    cfg_scale: float = 1.0,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    cache: bool = True,
) -> torch.Tensor:
    """Tokens (B, N) in grid order, decoded in ``orders`` (B, N), ``counts[s]`` tokens at step s
    (:func:`decode_counts`), class-conditional on ``labels`` (B,), with the tokens' ``positions``
    (B or 1, N, 2). ``model``: an :class:`ARPG` or any callable with its forward (a trained
    member). ``cfg_scale`` != 1: classifier-free guidance, the conditional and ``null_class``
    rows batched, logits ``u + s (c - u)``; ``temperature`` 0: argmax, else sampling from
    softmax(logits / temperature) with ``generator``. ``cache=False`` recomputes the content
    stream at every step (the same numbers, slower)."""
    B, N = orders.shape
    if sum(counts) != N or min(counts) <= 0:
        raise ValueError(f"counts must be positive and sum to N={N}, got {counts}")
    if temperature > 0 and generator is None:
        raise ValueError("sampling (temperature > 0) needs an explicit generator")
    guided = cfg_scale != 1.0
    if guided:
        if null_class is None:
            null_class = getattr(model, "null_class", None)
        if null_class is None:
            raise ValueError("classifier-free guidance (cfg_scale != 1) needs null_class")
        labels = torch.cat([labels, torch.full_like(labels, null_class)])
    targets = positions_in_order(positions, orders)
    if guided:
        targets = torch.cat([targets, targets])
    state = ARPGCache() if cache else None
    ordered = torch.empty(B, N, dtype=torch.long, device=orders.device)
    done = previous = 0
    for k in counts:
        lo = previous if cache else 0  # the cache holds every token before the last step's
        fed = ordered[:, lo:done]
        if guided:
            fed = torch.cat([fed, fed])
        logits = model(
            fed, labels, targets[:, lo:done], targets=targets[:, done : done + k], cache=state
        )
        if guided:
            cond, uncond = logits.chunk(2)
            logits = uncond + cfg_scale * (cond - uncond)
        if temperature == 0:
            sampled = logits.argmax(-1)
        else:
            probs = torch.softmax(logits.float() / temperature, dim=-1).flatten(0, 1)
            probs = probs.to(generator.device)
            sampled = torch.multinomial(probs, 1, generator=generator).view(B, k)
        ordered[:, done : done + k] = sampled.to(orders.device)
        previous, done = done, done + k
    return torch.empty_like(ordered).scatter_(1, orders, ordered)


__all__ = [
    "ARPG",
    "BINARY_THRESHOLD",
    "ORDERS",
    "SCHEDULES",
    "ARPGCache",
    "binarize",
    "check_arpg_config",
    "decode_counts",
    "detokenize",
    "generate",
    "generation_orders",
    "positions_in_order",
    "spiral_order",
    "tokenize",
    "vocab_size",
]
