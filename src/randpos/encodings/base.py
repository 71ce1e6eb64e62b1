"""The positional-encoding interface: three optional hooks, one registry.

Notation: B = batch, T = sequence length, D = model width, H = heads, d = D / H (head width),
K = D / 2 (number of sinusoid frequencies), L = ``max_position``, G = number of distance tables.

A positional encoding (PE) is an ``nn.Module`` built once per model from an
:class:`EncodingShape` (what it needs to know of the model: width, heads, layers, the position
range, causality) and its own options: a frozen dataclass ``Options`` declared by the encoding
(rotary ones: :class:`randpos.encodings.rope.RotaryOptions`), whose defaults are written there
and nowhere else (``--set pe.NAME=VALUE``; ``pe_options:`` in YAML). It overrides any subset of
four hooks; the model finds out which by asking :attr:`has_embed` / :attr:`has_rotate` /
:attr:`has_bias` / :attr:`has_features`, never by the PE's name:

* ``embed(x, positions)``: absolute encodings, adds to the scaled token embeddings (B, T, D);
* ``rotate(q, k, positions, layer)``: rotates queries and keys (B, H, T, d) before the dot product;
* ``bias(q, k, positions, layer, distances)``: an additive attention-logit bias, broadcastable to
  (B, H, T, T), in the same units as ``q . k / sqrt(d)`` (it is added after that scaling). It gets
  the (already rotated) q and k because some encodings (relative) depend on them. It may also
  return a :class:`BiasWithSink`: the bias and the logit of a *sink*, a null key whose value is
  zero, for attention whose weights need not sum to one (stick-breaking);
* ``features(x, layer)``: per-token values (B, H, T, F) computed from the layer's input x, for
  attention whose bias depends on the data and not only on q and k (FoX's forget gates). A KV
  cache stores them next to the keys, and ``bias`` receives those of every key as ``features``.

Data-dependent attention (docs/design.md §6) is an encoding like the others: FoX is
``features`` + ``bias``, stick-breaking a ``bias`` with a sink; both read no positions
(``reads_positions = False``) and are ``causal_only``.

Positions are data (docs/design.md §1): a PE never invents them, and accepts any integer positions
in ``[0, L)``, sorted or not, contiguous or not. Encodings that live inside attention may instead
read the reference's randomized *distances* (``uses_distances``; docs/reference-system.md §4.2,
docs/encodings.md). Per-layer state (relative's W_R, u, v) is stacked along a leading layer axis
and indexed with the ``layer`` argument, so one module serves every layer and the parameter count
is not duplicated.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from randpos.core.fields import (
    ConfigError,
    coerce_value,
    field_types,
    parse_dataclass,
    unknown_fields_error,
)

#: name -> PositionalEncoding subclass; filled by :func:`register` as the family modules import.
ENCODINGS: dict[str, type[PositionalEncoding]] = {}


def register(name: str) -> Callable[[type[PositionalEncoding]], type[PositionalEncoding]]:
    """Class decorator: make a PE available under ``name`` (the CLI/config/results name)."""

    def decorator(cls: type[PositionalEncoding]) -> type[PositionalEncoding]:
        if name in ENCODINGS:
            raise ValueError(f"positional encoding {name!r} is registered twice")
        cls.name = name
        ENCODINGS[name] = cls
        return cls

    return decorator


def get_encoding(name: str) -> type[PositionalEncoding]:
    """The PE class registered as ``name``; ``ValueError`` listing the valid names otherwise."""
    try:
        return ENCODINGS[name]
    except (KeyError, TypeError):
        valid = ", ".join(ENCODINGS)
        raise ValueError(f"unknown positional encoding {name!r}; valid names: {valid}") from None


@dataclass(frozen=True)
class EncodingShape:
    """What an encoding knows of the model it serves (a model builds it from its config).

    width:        D, the model width
    num_heads:    H (head width d = D / H)
    num_layers:   layers sharing the encoding (per-layer state is stacked along this axis)
    max_position: L, positions lie in [0, L)
    causal:       whether attention is causal (some encodings exist only for causal attention)
    """

    width: int
    num_heads: int
    num_layers: int
    max_position: int
    causal: bool = False

    @property
    def head_width(self) -> int:
        """The width of one attention head, ``width // num_heads``."""
        return self.width // self.num_heads


def option_owners() -> dict[str, type]:
    """Every encoding option name -> the options dataclass that declares it (one per name: a
    name shared by several encodings is one dataclass, so its default is written once)."""
    owners: dict[str, type] = {}
    for cls in ENCODINGS.values():
        if cls.Options is None:
            continue
        for f in dataclasses.fields(cls.Options):
            owner = owners.setdefault(f.name, cls.Options)
            if owner is not cls.Options:
                raise TypeError(
                    f"encoding option {f.name!r} is declared by {owner.__name__} and "
                    f"{cls.Options.__name__}: declare it once"
                )
    return owners


def normalize_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """``options`` (``pe_options`` of a config: YAML or CLI values) coerced to their types,
    without the entries equal to their defaults: the stored form, so that spelling a default out
    does not change a run's id. Every name must be an option of some registered encoding
    (``ConfigError`` with a close match otherwise); an encoding reads its own and ignores the
    others', so a sweep's base may set options for the arms that use them."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ConfigError(f"pe_options must be a mapping, got {options!r}")
    owners = option_owners()
    unknown = [k for k in options if k not in owners]
    if unknown:
        raise unknown_fields_error(unknown, owners, "encoding option(s) (pe.NAME)")
    coerced = {
        name: coerce_value(f"pe.{name}", value, field_types(owners[name])[name])
        for name, value in options.items()
    }
    for owner in {owners[name] for name in coerced}:  # each owner checks its values
        try:
            owner(**{k: v for k, v in coerced.items() if owners[k] is owner})
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    out = {k: v for k, v in coerced.items() if v != getattr(owners[k](), k)}
    return dict(sorted(out.items()))


def build_encoding(
    name: str, shape: EncodingShape, options: Mapping[str, Any] | None = None
) -> PositionalEncoding:
    """Instantiate the PE registered as ``name`` for a model of ``shape``, with its options
    taken from ``options`` (others' options are ignored, unknown names refused)."""
    cls = get_encoding(name)
    return cls(shape, cls.parse_options(normalize_options(options)))


class PositionalEncoding(nn.Module):
    """Base class; subclasses override the hooks they need (none for NoPE)."""

    name: ClassVar[str] = ""
    #: True when :meth:`bias` reads the ``distances`` tables (the reference's randomized
    #: relative/ALiBi). Other PEs ignore ``distances``.
    uses_distances: ClassVar[bool] = False
    #: True for encodings defined only for causal attention (xPos, CoPE): a model with
    #: ``causal=False`` refuses them with a one-line error naming ``causal``.
    causal_only: ClassVar[bool] = False
    #: False for encodings whose positions come from the content (CoPE): no position sampler
    #: (``randomized``) applies to them.
    randomizable: ClassVar[bool] = True
    #: True when the hooks accept non-integer (float) positions, as Random Float Sampling
    #: draws them; encodings indexing tables by position (learned, T5 buckets) refuse them.
    float_positions: ClassVar[bool] = False
    #: False for encodings that cannot score new query rows against cached keys (those that
    #: always read a whole-sequence distance table): no KV cache for them.
    supports_cache: ClassVar[bool] = True
    #: 1: sequence positions (B, T); 2: grid positions (B, N, 2) in (y, x) (the image
    #: encodings, randpos.images); None: any (NoPE). Models refuse the other kind
    #: (:func:`check_position_dims`).
    position_dims: ClassVar[int | None] = 1
    #: Attention depends only on position differences while every position is below this
    #: bound (FIRE: its normaliser's threshold); None: everywhere (or not relative at all).
    relative_below: ClassVar[int | None] = None
    #: False for encodings whose hooks ignore the position values (NoPE, CoPE, the
    #: data-dependent FoX and stick-breaking): a model's output does not change with them
    #: (tests/encodings/test_contract.py checks it for the whole registry).
    reads_positions: ClassVar[bool] = True

    #: The encoding's parameters: a frozen dataclass whose defaults are the encoding's, or None.
    Options: ClassVar[type | None] = None

    def __init__(self, shape: EncodingShape, options: Any = None) -> None:
        super().__init__()
        self.shape = shape
        self.width = shape.width
        self.num_heads = shape.num_heads
        self.head_width = shape.width // shape.num_heads
        self.num_layers = shape.num_layers
        self.max_position = shape.max_position
        if options is None and self.Options is not None:
            options = self.Options()
        self.options = options

    @classmethod
    def parse_options(cls, options: Mapping[str, Any] | None = None) -> Any:
        """This encoding's ``Options`` from a mapping that may also hold other encodings'
        options (ignored here): one-line ``ConfigError`` naming ``pe.FIELD`` for a bad value.
        None when the encoding takes no options."""
        if cls.Options is None:
            return None
        own = {f.name for f in dataclasses.fields(cls.Options)}
        mine = {k: v for k, v in (options or {}).items() if k in own}
        return parse_dataclass(cls.Options, mine, f"option(s) of pe {cls.name!r}", prefix="pe.")

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """(Re-)initialize trainable state from ``generator``; no-op for parameter-free PEs."""

    # --- capabilities, derived from which hooks a subclass overrides ---------------------------

    @classmethod
    def overridden_hooks(cls) -> tuple[str, ...]:
        """The hooks (of :data:`HOOKS`) this class overrides; no instance needed."""
        return tuple(h for h in HOOKS if getattr(cls, h) is not getattr(PositionalEncoding, h))

    @property
    def has_embed(self) -> bool:
        """Whether this encoding overrides the ``embed`` hook (adds a vector to the token
        embeddings)."""
        return type(self).embed is not PositionalEncoding.embed

    @property
    def has_rotate(self) -> bool:
        """Whether this encoding overrides the ``rotate`` hook (transforms queries and keys)."""
        return type(self).rotate is not PositionalEncoding.rotate

    @property
    def has_bias(self) -> bool:
        """Whether this encoding overrides the ``bias`` hook (adds to the attention logits)."""
        return type(self).bias is not PositionalEncoding.bias

    @property
    def has_features(self) -> bool:
        """True when this encoding overrides the ``features`` hook (per-token values of the
        layer input that a KV cache stores next to the keys)."""
        return type(self).features is not PositionalEncoding.features

    # --- the hooks --------------------------------------------------------------------------

    def embed(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``x`` (B, T, D) plus the absolute encoding of ``positions`` (B, T)."""
        return x

    def rotate(
        self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, layer: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries and keys (B, H, T, d) transformed according to ``positions`` (B, T)."""
        return q, k

    def bias(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        positions: torch.Tensor,
        layer: int,
        distances: torch.Tensor | None = None,
        key_positions: torch.Tensor | None = None,
    ) -> torch.Tensor | BiasWithSink | None:
        """Additive logit bias broadcastable to (B, H, Tq, Tk), or None, or a
        :class:`BiasWithSink` (the bias and a sink logit per query row).

        Without a cache Tq = Tk = T and ``key_positions`` is None: queries and keys share
        ``positions``. Under a KV cache (:class:`randpos.model.KVCache`) ``q`` holds only the
        Tq new rows, ``k`` every cached and new key (B, H, Tk, d), ``positions`` (B, Tq) the new
        rows' positions and ``key_positions`` (B, Tk) the keys'; the new rows are the last Tq of
        the Tk in causal order. The distance tables (``distances``) describe a whole sequence
        and are refused under a cache (:func:`check_no_cache`). An encoding with a
        :meth:`features` hook also receives ``features`` (B, H, Tk, F): those of every key,
        cached and new, in the same order as ``k``.
        """
        return None

    def features(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """Per-token values (B, H, T, F) computed from the layer input ``x`` (B, T, D), the
        same for a token whatever comes after it (so a KV cache can keep them): the data that
        a data-dependent bias reads besides q and k (FoX: the log forget gates, F = 1)."""
        raise NotImplementedError(f"pe {self.name!r} computes no features")

    # --- validation (called once per forward by the model, not per layer) ---------------------

    def check_distances(self, distances: torch.Tensor, length: int, *, ranges: bool = True) -> None:
        """``ValueError`` unless ``distances`` are integer tables (G, 2, >=T), G in {1, layers};
        with ``ranges`` also values in ``[0, max_position)`` and a zero self-distance (syncs)."""
        if distances.is_floating_point() or distances.is_complex() or distances.dtype == torch.bool:
            raise ValueError(f"distances must be an integer tensor, got dtype {distances.dtype}")
        if (
            distances.dim() != 3
            or distances.shape[0] not in (1, self.num_layers)
            or distances.shape[1] != 2
            or distances.shape[2] < length
        ):
            raise ValueError(
                f"distances must have shape (1 or num_layers={self.num_layers}, 2, >= T={length}),"
                f" got {tuple(distances.shape)}"
            )
        if not ranges:
            return
        check_range("distances", distances, self.max_position)
        if bool((distances[:, :, 0] != 0).any()):
            raise ValueError("distances[:, :, 0] must be 0 (a query's distance to itself)")


#: The hooks an encoding may override.
HOOKS = ("embed", "rotate", "bias", "features")


class BiasWithSink(NamedTuple):
    """What a bias hook returns when part of every query's attention goes to no key.

    bias: the usual additive bias, broadcastable to (B, H, Tq, Tk);
    sink: (B, H, Tq) or broadcastable, the logit of one more key whose value is zero.

    Softmax over the Tk keys and the sink gives weights that sum to one with the sink's, so
    the keys' weights sum to at most one: any attention whose weights a_ij >= 0 sum to at most
    one is this form with logits log a_ij and sink log(1 - sum_j a_ij) (stick-breaking,
    :mod:`randpos.encodings.stick_breaking`). :func:`randpos.model.attend` runs it with both
    backends by appending a zero key and a zero value.
    """

    bias: torch.Tensor | None
    sink: torch.Tensor


def names_taking(dims: int) -> list[str]:
    """The registered encodings a model with ``dims``-dimensional positions takes."""
    return [n for n, c in ENCODINGS.items() if c.position_dims in (None, dims)]


def check_position_dims(encoding: str | type[PositionalEncoding], dims: int) -> None:
    """One-line ``ValueError`` naming ``pe`` unless the encoding takes ``dims``-D positions."""
    cls = get_encoding(encoding) if isinstance(encoding, str) else encoding
    if cls.position_dims in (None, dims):
        return
    kind = {1: "1D (sequence)", 2: "2D (image grid)"}
    raise ValueError(
        f"pe {cls.name!r} is a {kind[cls.position_dims]} encoding; a {kind[dims]} model "
        f"takes: {', '.join(names_taking(dims))}"
    )


def check_range(what: str, values: torch.Tensor, limit: int) -> None:
    """``ValueError`` naming ``what`` unless all ``values`` lie in ``[0, limit)``."""
    if values.numel() == 0:
        return
    lo, hi = torch.stack([values.min(), values.max()]).tolist()
    if lo < 0 or hi >= limit:
        raise ValueError(
            f"{what} must lie in [0, {limit}) (max_position={limit}), got values in [{lo}, {hi}];"
            f" raise max_position or sample {what} within range (they are never clamped)"
        )


# --- shared math ------------------------------------------------------------------------------


def inverse_frequencies(num: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """``10000^(-2k / width)`` for k = 0..num-1, float64 (num,).

    float64 keeps ``position * frequency`` exact enough at positions ~2048, where a float32
    product would already be off by ~1e-4 rad.
    """
    k = torch.arange(num, device=device, dtype=torch.float64)
    return torch.pow(10000.0, -2.0 * k / width)


def sinusoid(values: torch.Tensor, width: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Sin/cos encoding of integer ``values`` (...,) -> (..., width), in the reference's layout
    (docs/reference-system.md §4.1).

    ``out[..., k] = sin(p w_k)`` and ``out[..., K + k] = cos(p w_k)`` with w_k = 10000^(-2k/width):
    all sines in the first half, all cosines in the second (not interleaved).
    """
    angles = values.to(torch.float64).unsqueeze(-1) * inverse_frequencies(
        width // 2, width, values.device
    )  # (..., K)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).to(dtype)


def pair_offsets(
    positions: torch.Tensor, key_positions: torch.Tensor | None = None
) -> torch.Tensor:
    """``p_j - p_i`` for every query i and key j: (B', Tq, Tk), row = query.

    ``positions`` (B', Tq) are the queries'; ``key_positions`` (B', Tk) the keys' (None: the
    same, Tq = Tk = T). A batch axis of 1 broadcasts against B.
    """
    keys = positions if key_positions is None else key_positions
    return keys.unsqueeze(-2) - positions.unsqueeze(-1)


def check_no_cache(name: str, distances: torch.Tensor | None, key_positions) -> None:
    """``ValueError`` when distance tables meet a KV cache (``key_positions`` given): a table
    describes the offsets of one whole sequence, not the new rows of an incremental step."""
    if distances is not None and key_positions is not None:
        raise ValueError(
            f"{name}: the distance reading (randomize='distances') does not take a KV cache;"
            " decode without a cache or randomize positions instead"
        )


def layer_table(distances: torch.Tensor, layer: int) -> torch.Tensor:
    """The (2, T') distance table of ``layer``: its own row, or the shared one when G == 1."""
    return distances[layer] if distances.shape[0] > 1 else distances[0]


def signed_offsets(table: torch.Tensor, length: int) -> torch.Tensor:
    """Map every offset delta = j - i in -(T-1)..T-1 through a distance table: (2T-1,) long.

    Entry ``delta + T - 1`` is ``+a_delta`` for a key to the right (table[0]), ``-b_|delta|`` for a
    key to the left (table[1]) and 0 for the query itself: the intended signed-distance semantics
    of the reference's randomized relative encoding (docs/reference-system.md §4.2).
    """
    right = table[0, :length]  # (T,)   delta = 0..T-1
    left = table[1, 1:length].flip(0)  # (T-1,) delta = -(T-1)..-1
    return torch.cat([-left, right])


def toeplitz_index(length: int, device: torch.device | None = None) -> torch.Tensor:
    """(T, T) long, ``[i, j] = j - i + T - 1``: the column of offset j - i in a (2T-1,) axis."""
    idx = torch.arange(length, device=device)
    return idx.unsqueeze(0) - idx.unsqueeze(1) + (length - 1)


def head_scale(head_width: int) -> float:
    """The attention logits' scale for heads of width ``head_width``: ``1 / sqrt(head_width)``."""
    return 1.0 / math.sqrt(head_width)
