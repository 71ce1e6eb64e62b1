"""Randomized positions for Hugging Face causal language models that take ``position_ids``.

Two pieces, both model-agnostic (Llama, Qwen2, Mistral, GPT-NeoX and any other HF decoder whose
``forward`` has a ``position_ids`` argument):

* :class:`RandomPositionCollator` pads a list of examples and emits ``input_ids``,
  ``attention_mask`` (always an explicit 2-D mask), ``labels`` and ``position_ids`` drawn per
  sequence by a mode (:data:`MODES`): sorted random integers rooted at 0, PoSE chunks, random
  floats, or the contiguous baseline. It works as an HF Trainer ``data_collator`` or by hand.
* :func:`generate` is greedy decoding with the KV cache and custom positions, because
  ``model.generate()`` does not extend user-supplied ``position_ids`` (it reuses the last
  prompt position at every step).

Notation: B = batch size, T = padded sequence length, P = prompt length, N = new tokens,
L = ``max_position`` (positions live in ``[0, L)``).

Why the collator always sends a mask and roots every row at 0 (see ``docs/hf.md``): recent
transformers versions infer *packed sequences* from ``position_ids`` when no attention mask is
given and no cache is in use (every step that is not +1 starts a new sequence, so gapped random
positions would isolate each token), and FlashAttention-2 with batch size 1 and no padding
splits a row wherever the smallest position (0) reappears.

transformers is an optional dependency: ``pip install 'randpos[hf]'``. Importing ``randpos``
never imports it; importing this module does.
"""

from __future__ import annotations

import inspect
import math
import numbers
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

try:
    import transformers
except ImportError as err:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "randpos.model.hf needs the transformers package: pip install 'randpos[hf]'"
    ) from err

from randpos.positions import decode_positions, pose_positions, sorted_subset, spread_positions
from randpos.positions.spec import DECODE_MODES, SAMPLERS

__all__ = [
    "DECODE_POSITIONS",
    "MODES",
    "RandomPositionCollator",
    "check_float_positions",
    "check_position_ids_arg",
    "generate",
    "rooted_float_positions",
    "rooted_positions",
]

#: Collator modes: how the positions of one training sequence are drawn (the samplers of
#: randpos.positions: random, float, pose, contiguous).
MODES = SAMPLERS
#: Decode modes of :func:`generate`: how the positions of the new tokens are chosen.
DECODE_POSITIONS = DECODE_MODES

# --- position samplers (one sequence at a time) ---------------------------------------------


def _check_length(length: int, max_position: int) -> None:
    if length > max_position:
        raise ValueError(
            f"max_position: a sequence of {length} tokens does not fit in max_position="
            f"{max_position} (positions are distinct values in [0, {max_position})); raise "
            f"max_position to at least {length} or shorten the sequence"
        )


def rooted_positions(
    length: int, max_position: int, generator: torch.Generator | None
) -> torch.Tensor:
    """A sorted draw of T distinct integers from ``[0, L)`` with ``p_0 = 0``: LongTensor[T].

    The first position is 0 and the other T-1 are a uniform sorted subset of ``[1, L)``, so 0
    appears exactly once in the row (HF's packed-sequence and FlashAttention-2 heuristics treat
    a repeated minimum position as the start of another sequence).
    """
    _check_length(length, max_position)
    zero = torch.zeros(1, dtype=torch.long)
    if length == 1:
        return zero
    tail = sorted_subset(1, length - 1, max_position - 1, generator, "cpu")[0] + 1
    return torch.cat([zero, tail])


def rooted_float_positions(
    length: int, max_position: int, generator: torch.Generator | None
) -> torch.Tensor:
    """Random Float Sampling rooted at 0: ``p_0 = 0`` and T-1 sorted uniform draws from
    ``(0, L)``: FloatTensor[T] (float32, the precision HF's rotary embedding computes in)."""
    _check_length(length, max_position)
    draws = torch.rand(length - 1, generator=generator, dtype=torch.float64) * max_position
    # A draw of exactly 0.0 has probability ~2^-53; keep it off the root all the same.
    tail = draws.clamp(min=1e-6, max=max_position - 1e-6).sort().values
    return torch.cat([torch.zeros(1, dtype=torch.float64), tail]).to(torch.float32)


def _row_positions(
    mode: str, length: int, max_position: int, generator: torch.Generator | None
) -> torch.Tensor:
    """Positions of one sequence of ``length`` tokens under ``mode``: Tensor[T]."""
    if mode == "random":
        return rooted_positions(length, max_position, generator)
    if mode == "pose":
        _check_length(length, max_position)
        return pose_positions(1, length, max_position, generator)[0].cpu()
    if mode == "float":
        return rooted_float_positions(length, max_position, generator)
    _check_length(length, max_position)
    return torch.arange(length)


def _pad_positions(row: torch.Tensor, total: int, max_position: int | None) -> torch.Tensor:
    """Extend a row of positions to ``total`` entries: pads continue ``last+1, last+2, ...``,
    clamped to ``L-1`` so they stay in range and never repeat the root 0 (when L > 1)."""
    extra = total - row.shape[0]
    if extra == 0:
        return row
    steps = torch.arange(1, extra + 1, dtype=row.dtype)
    pads = row[-1] + steps
    if max_position is not None:
        pads = pads.clamp(max=max_position - 1)
    return torch.cat([row, pads])


# --- model inspection ------------------------------------------------------------------------


def _forward_parameters(model: Any) -> Mapping[str, inspect.Parameter]:
    forward = model.forward if hasattr(model, "forward") else model
    try:
        return inspect.signature(forward).parameters
    except (TypeError, ValueError):  # builtins or odd callables: nothing to check
        return {}


def check_position_ids_arg(model: Any) -> None:
    """Raise ``ValueError`` unless ``model.forward`` takes a ``position_ids`` argument."""
    params = _forward_parameters(model)
    if params and "position_ids" not in params:
        name = type(model).__name__ if not isinstance(model, type) else model.__name__
        raise ValueError(
            f"position_ids: {name}.forward has no position_ids argument, so custom positions "
            f"cannot reach it; randpos.model.hf supports causal LMs that take position_ids"
        )


def _model_class_for(config: Any) -> type | None:
    """The causal-LM class registered for ``config`` (None when there is none)."""
    try:
        return transformers.AutoModelForCausalLM._model_mapping[type(config)]
    except (KeyError, AttributeError, ValueError):
        return None


def _rope_parameters(config: Any) -> dict:
    """The RoPE scaling dict of a config, across versions (``rope_parameters`` in 5.x,
    ``rope_scaling`` in 4.x); empty when there is none."""
    for name in ("rope_parameters", "rope_scaling"):
        value = getattr(config, name, None)
        if isinstance(value, Mapping):
            # 5.x may nest per-layer-type dicts (e.g. {"full_attention": {...}}); take the first
            if value and all(isinstance(v, Mapping) for v in value.values()):
                value = next(iter(value.values()))
            return dict(value)
    return {}


def _rope_type(config: Any) -> str:
    params = _rope_parameters(config)
    return str(params.get("rope_type", params.get("type", "default")))


def _looks_like_position_table(name: str) -> bool:
    leaf = name.rsplit(".", 1)[-1].lower()
    return leaf in {"wpe", "embed_positions", "position_embeddings", "pos_emb"} or "pos" in leaf


def _float_position_problem(model: nn.Module) -> str | None:
    """Why float position_ids cannot work for ``model`` (None when they can).

    They work when the model's rotary embedding computes its angles from the position values
    (HF's ``RotaryEmbedding.forward(x, position_ids)`` does ``position_ids.float() * inv_freq``)
    and nothing indexes a table with the positions (a learned absolute embedding, or a cached
    sin/cos table as in GPT-J).
    """
    tables = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Embedding) and _looks_like_position_table(name)
    ]
    if tables:
        return f"it looks positions up in a learned table ({tables[0]}), which needs integers"
    rotary = [m for m in model.modules() if type(m).__name__.endswith("RotaryEmbedding")]
    if not rotary:
        return "it has no rotary embedding module that computes angles from position_ids"
    for module in rotary:
        if "position_ids" not in _forward_parameters(module):
            return (
                f"its {type(module).__name__} indexes a cached table instead of computing "
                f"angles from position_ids"
            )
    return None


def check_float_positions(model: nn.Module | None = None, config: Any = None) -> None:
    """Raise ``ValueError`` when float ``position_ids`` cannot work for this model.

    With only a ``config``, the registered causal-LM class is built on the meta device (no
    memory, no weights) to look at its modules.
    """
    if model is None and config is not None:
        cls = _model_class_for(config)
        if cls is None:
            return  # unknown architecture: nothing to inspect, the user is on their own
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = cls(config)
    if model is None:
        return
    problem = _float_position_problem(model)
    if problem is not None:
        model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise ValueError(
            f"mode: 'float' positions cannot work for {model_type}: {problem}; use mode "
            f"'random' (integer positions) instead"
        )


def _max_position_embeddings(config: Any) -> int | None:
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if isinstance(value, numbers.Integral) else None


def _check_max_position(value: Any, name: str = "max_position") -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _warn_rope_scaling(config: Any, max_position: int) -> None:
    """Warn about RoPE types that switch frequencies on ``max(position_ids) + 1``."""
    rope_type = _rope_type(config)
    params = _rope_parameters(config)
    mpe = _max_position_embeddings(config)
    original = params.get("original_max_position_embeddings") or getattr(
        config, "original_max_position_embeddings", None
    )
    if rope_type == "longrope" and original is not None and max_position > original:
        warnings.warn(
            f"rope type 'longrope' switches to its long factors whenever max(position_ids)+1 > "
            f"{original}; random positions up to {max_position - 1} flip between short and long "
            f"factors from batch to batch",
            stacklevel=3,
        )
    if rope_type == "dynamic" and mpe is not None and max_position > mpe:
        warnings.warn(
            f"rope type 'dynamic' rescales its base whenever max(position_ids)+1 > {mpe}; "
            f"random positions up to {max_position - 1} change the frequencies per batch",
            stacklevel=3,
        )


# --- the collator ----------------------------------------------------------------------------


def _as_long_1d(value: Any, field: str) -> torch.Tensor:
    tensor = torch.as_tensor(value)
    if tensor.dim() != 1:
        raise ValueError(
            f"{field}: expected a 1-D sequence per example, got shape {tuple(tensor.shape)}"
        )
    if tensor.is_floating_point():
        raise ValueError(f"{field}: expected integer token ids, got dtype {tensor.dtype}")
    return tensor.long()


def _right_padded_lengths(mask: torch.Tensor) -> torch.Tensor:
    """Row lengths of a right-padded (B, T) 0/1 mask; ``ValueError`` if it is not one."""
    lengths = mask.sum(dim=1)
    expected = (torch.arange(mask.shape[1]) < lengths[:, None]).to(mask.dtype)
    if not torch.equal(mask, expected):
        raise ValueError(
            "attention_mask: the collator expects right padding (ones, then zeros) in each row"
        )
    return lengths


class RandomPositionCollator:
    """Pad a batch and attach ``position_ids`` drawn per sequence (an HF ``DataCollator``).

    Input: a list of examples, each a mapping with ``input_ids`` (list or 1-D tensor), optional
    ``labels`` (same length) and optional ``attention_mask`` (trailing zeros are dropped), or a
    plain list of token-id sequences, or an already-batched mapping of (B, T) tensors
    (``input_ids``, optional right-padded ``attention_mask`` and ``labels``). Other keys are
    ignored.

    Output: a dict of (B, T) tensors, right padded to the longest sequence (rounded up to
    ``pad_to_multiple_of``):

    * ``input_ids``: pads are ``pad_token_id``;
    * ``attention_mask``: 1 on real tokens, 0 on pads, always present;
    * ``labels``: the given labels, or a copy of ``input_ids`` (HF shifts them inside the
      model), with ``label_pad_token_id`` (-100) on pads;
    * ``position_ids``: per-row draws in ``[0, L)`` by ``mode``; pads continue the last real
      position (``last+1, ...``, clamped to ``L-1``), so every value stays in range.

    Modes: ``random`` (a sorted draw of distinct integers from ``[0, L)`` rooted at 0: p_0 = 0
    and no other 0), ``pose`` (PoSE's two contiguous chunks with one skip, rooted at 0),
    ``float`` (Random Float Sampling rooted at 0, float32; only for models whose rotary
    embedding computes angles from the position values), ``contiguous`` (0..T-1).

    ``max_position`` (L) defaults to the model's ``max_position_embeddings`` when a ``model``
    or ``config`` is given (required otherwise, except for ``contiguous``). With a model or
    config, ``L > max_position_embeddings`` is an error unless ``check_max_position=False``
    (RoPE has no hard limit, but positions past the pre-training range are out of
    distribution).

    Randomness comes only from ``generator`` (or a fresh one seeded with ``seed``). In a
    DataLoader worker each copy of the collator reseeds itself from its base seed and the
    worker id, so workers do not repeat each other's draws.
    """

    def __init__(
        self,
        mode: str = "random",
        max_position: int | None = None,
        *,
        model: nn.Module | None = None,
        config: Any = None,
        pad_token_id: int = 0,
        label_pad_token_id: int = -100,
        seed: int = 0,
        generator: torch.Generator | None = None,
        check_max_position: bool = True,
        pad_to_multiple_of: int | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode: unknown mode {mode!r}; valid modes: {', '.join(MODES)}")
        if config is None and model is not None:
            config = getattr(model, "config", None)
        if model is not None:
            check_position_ids_arg(model)
        elif config is not None:
            cls = _model_class_for(config)
            if cls is not None:
                check_position_ids_arg(cls)
        mpe = _max_position_embeddings(config) if config is not None else None
        if max_position is None and mode != "contiguous":
            if mpe is None:
                raise ValueError(
                    f"max_position: mode {mode!r} needs max_position (L), the range [0, L) of "
                    f"the random positions; pass it, or a model/config with "
                    f"max_position_embeddings"
                )
            max_position = mpe
        if max_position is not None:
            max_position = _check_max_position(max_position)
            if check_max_position and mpe is not None and max_position > mpe:
                raise ValueError(
                    f"max_position: {max_position} exceeds the model's max_position_embeddings "
                    f"{mpe}; lower it, or pass check_max_position=False to go past the "
                    f"pre-training range on purpose"
                )
            if config is not None:
                _warn_rope_scaling(config, max_position)
        if mode == "float":
            check_float_positions(model, config if model is None else None)
        if pad_to_multiple_of is not None:
            _check_max_position(pad_to_multiple_of, "pad_to_multiple_of")
        self.mode = mode
        self.max_position = max_position
        self.pad_token_id = int(pad_token_id)
        self.label_pad_token_id = int(label_pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of
        if generator is None:
            generator = torch.Generator().manual_seed(int(seed))
        self.generator = generator
        self._base_seed = int(generator.initial_seed())
        self._worker_id: int | None = None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(mode={self.mode!r}, max_position={self.max_position}, "
            f"pad_token_id={self.pad_token_id})"
        )

    def _rng(self) -> torch.Generator:
        """The generator for this call; reseeded once per DataLoader worker process."""
        info = torch.utils.data.get_worker_info()
        if info is not None and self._worker_id != info.id:
            self._worker_id = info.id
            seed = (self._base_seed * 1_000_003 + info.id + 1) % (2**63)
            self.generator = torch.Generator().manual_seed(seed)
        return self.generator

    def _unbatch(self, features: Any) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """Split the input into per-example ``input_ids`` and ``labels`` (1-D tensors)."""
        if isinstance(features, Mapping):
            if "input_ids" not in features:
                raise ValueError("input_ids: the batch has no 'input_ids' entry")
            ids = torch.as_tensor(features["input_ids"])
            if ids.dim() != 2:
                raise ValueError(
                    f"input_ids: a batched mapping needs (B, T) input_ids, got shape "
                    f"{tuple(ids.shape)}"
                )
            mask = features.get("attention_mask")
            if mask is None:
                lengths = torch.full((ids.shape[0],), ids.shape[1])
            else:
                lengths = _right_padded_lengths(torch.as_tensor(mask).long())
            rows = [ids[b, : int(n)].long() for b, n in enumerate(lengths)]
            labels = features.get("labels")
            if labels is None:
                return rows, None
            labels = torch.as_tensor(labels)
            if labels.shape != ids.shape:
                raise ValueError(
                    f"labels: shape {tuple(labels.shape)} differs from input_ids {tuple(ids.shape)}"
                )
            return rows, [labels[b, : int(n)].long() for b, n in enumerate(lengths)]
        if not isinstance(features, Sequence) or isinstance(features, (str, bytes)):
            raise ValueError(
                f"input_ids: expected a list of examples or a batched mapping, got "
                f"{type(features).__name__}"
            )
        if len(features) == 0:
            raise ValueError("input_ids: the batch is empty")
        rows: list[torch.Tensor] = []
        labels: list[torch.Tensor] = []
        with_labels = [isinstance(f, Mapping) and "labels" in f for f in features]
        if any(with_labels) and not all(with_labels):
            raise ValueError("labels: some examples have labels and others do not")
        for example in features:
            if not isinstance(example, Mapping):
                rows.append(_as_long_1d(example, "input_ids"))
                continue
            if "input_ids" not in example:
                raise ValueError("input_ids: an example has no 'input_ids' entry")
            row = _as_long_1d(example["input_ids"], "input_ids")
            keep = row.shape[0]
            if example.get("attention_mask") is not None:
                mask = _as_long_1d(example["attention_mask"], "attention_mask")
                keep = int(_right_padded_lengths(mask[None])[0])
            rows.append(row[:keep])
            if "labels" in example:
                lab = _as_long_1d(example["labels"], "labels")
                if lab.shape[0] != row.shape[0]:
                    raise ValueError(
                        f"labels: {lab.shape[0]} labels for {row.shape[0]} input_ids in an example"
                    )
                labels.append(lab[:keep])
        return rows, (labels if all(with_labels) else None)

    def __call__(self, features: Any) -> dict[str, torch.Tensor]:
        rows, labels = self._unbatch(features)
        lengths = [int(r.shape[0]) for r in rows]
        if min(lengths) == 0:
            raise ValueError("input_ids: an example has no tokens")
        longest = max(lengths)
        if self.max_position is not None:
            _check_length(longest, self.max_position)
        total = longest
        if self.pad_to_multiple_of is not None:
            total = math.ceil(total / self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = len(rows)
        input_ids = torch.full((batch, total), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros(batch, total, dtype=torch.long)
        out_labels = torch.full((batch, total), self.label_pad_token_id, dtype=torch.long)
        dtype = torch.float32 if self.mode == "float" else torch.long
        position_ids = torch.empty(batch, total, dtype=dtype)
        rng = self._rng()
        for b, (row, n) in enumerate(zip(rows, lengths, strict=True)):
            input_ids[b, :n] = row
            attention_mask[b, :n] = 1
            out_labels[b, :n] = labels[b] if labels is not None else row
            limit = self.max_position if self.max_position is not None else total
            drawn = _row_positions(self.mode, n, limit, rng).to(dtype)
            position_ids[b] = _pad_positions(drawn, total, limit)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": out_labels,
            "position_ids": position_ids,
        }


# --- decoding --------------------------------------------------------------------------------


def _cache_kwarg(model: Any) -> str:
    """The name the model's forward uses for the KV cache (``cache`` in transformers >= 5.x,
    ``past_key_values`` before)."""
    params = _forward_parameters(model)
    return "cache" if "cache" in params else "past_key_values"


def _output_cache(output: Any) -> Any:
    for name in ("cache", "past_key_values"):
        value = output.get(name) if isinstance(output, Mapping) else getattr(output, name, None)
        if value is not None:
            return value
    raise ValueError("use_cache: the model returned no KV cache, so it cannot decode step by step")


def _new_cache(config: Any) -> Any:
    """An empty ``DynamicCache``; built from the config where the version allows it (5.x then
    gives sliding-window layers their own cache type)."""
    cache_cls = getattr(transformers, "DynamicCache", None)
    if cache_cls is None:
        return None
    if config is not None and "config" in inspect.signature(cache_cls.__init__).parameters:
        return cache_cls(config=config)
    return cache_cls()


def _left_padded_lengths(mask: torch.Tensor) -> torch.Tensor:
    lengths = mask.sum(dim=1)
    width = mask.shape[1]
    expected = (torch.arange(width, device=mask.device) >= (width - lengths)[:, None]).to(
        mask.dtype
    )
    if not torch.equal(mask, expected):
        raise ValueError(
            "attention_mask: generate() needs left padding (zeros, then ones) in each row"
        )
    if int(lengths.min()) == 0:
        raise ValueError("attention_mask: a prompt has no tokens")
    return lengths


def _plan_from_scratch(
    mode: str, total: int, max_position: int, generator: torch.Generator
) -> torch.Tensor:
    """Positions of a whole sequence (prompt + new tokens) of ``total`` tokens: LongTensor."""
    if total > max_position:
        raise ValueError(
            f"max_new_tokens: the prompt and the new tokens need {total} positions, more than "
            f"max_position={max_position} distinct positions in [0, {max_position})"
        )
    if mode == "arange":
        return torch.arange(total)
    if mode == "spread":
        return spread_positions(1, total, max_position)[0]
    return rooted_positions(total, max_position, generator)


def _plan_after(
    mode: str, last: int, new: int, max_position: int, generator: torch.Generator
) -> torch.Tensor:
    """Positions of ``new`` tokens after a prompt whose last position is ``last``: LongTensor
    (the rules of :func:`randpos.positions.decode_positions`, shared with the decoder)."""
    try:
        return decode_positions(torch.tensor([[last]]), new, max_position, mode, generator)[0]
    except ValueError as exc:
        raise ValueError(f"max_new_tokens: {exc}") from None


@torch.no_grad()
def generate(
    model: nn.Module,
    input_ids: torch.Tensor,
    *,
    max_new_tokens: int,
    position_ids: torch.Tensor | None = None,
    decode_positions: str = "arange",
    max_position: int | None = None,
    generator: torch.Generator | int | None = None,
    attention_mask: torch.Tensor | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    return_positions: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Greedy decoding with the KV cache and custom positions.

    ``input_ids`` (B, P) is the prompt, left padded when ``attention_mask`` (B, P) has zeros.
    Each step feeds one token with its own entry of ``position_ids`` and the cache; the model
    is not switched to eval mode here (call ``model.eval()`` first to turn dropout off).

    Positions, with L = ``max_position`` (default: the model's ``max_position_embeddings``):

    * no ``position_ids``: the prompt and the new tokens are planned together as one sequence
      of P+N positions (P = the row's real prompt length): ``arange`` = 0..P+N-1, ``spread`` =
      ``floor(i * L / (P+N))``, ``random`` = one sorted draw rooted at 0 from ``[0, L)``
      (drawn once, consumed in order: drawing gaps online would drift to the end of the range);
    * given ``position_ids`` (B, P) integers in ``[0, L)``, with ``last`` the position of the
      row's last prompt token: ``arange`` = last+1, last+2, ...; ``spread`` = evenly spaced
      over the free positions of ``(last, L)``; ``random`` = a sorted draw of N distinct
      integers from ``(last, L)``.

    Rows that emit ``eos_token_id`` are finished; their later tokens are ``pad_token_id``
    (default: the eos id) and decoding stops once every row is finished.

    Returns the ids (B, P + n) with n <= N new tokens, and with ``return_positions`` also the
    positions (B, P + n) of those tokens (left pads get 0).
    """
    check_position_ids_arg(model)
    if decode_positions not in DECODE_POSITIONS:
        raise ValueError(
            f"decode_positions: unknown mode {decode_positions!r}; valid modes: "
            f"{', '.join(DECODE_POSITIONS)}"
        )
    if (
        not isinstance(max_new_tokens, numbers.Integral)
        or isinstance(max_new_tokens, bool)
        or max_new_tokens < 0
    ):
        raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
    input_ids = torch.as_tensor(input_ids)
    if input_ids.dim() != 2 or input_ids.is_floating_point():
        raise ValueError(
            f"input_ids: expected a (B, P) integer tensor, got shape {tuple(input_ids.shape)} "
            f"and dtype {input_ids.dtype}"
        )
    device = input_ids.device
    batch, width = input_ids.shape
    if max_position is None:
        max_position = _max_position_embeddings(getattr(model, "config", None))
        if max_position is None:
            raise ValueError(
                "max_position: pass max_position (L); the model's config has no "
                "max_position_embeddings"
            )
    max_position = _check_max_position(max_position)
    if isinstance(generator, numbers.Integral) or generator is None:
        generator = torch.Generator().manual_seed(int(generator or 0))
    if attention_mask is None:
        attention_mask = torch.ones(batch, width, dtype=torch.long, device=device)
    attention_mask = torch.as_tensor(attention_mask, device=device).long()
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask: shape {tuple(attention_mask.shape)} differs from input_ids "
            f"{tuple(input_ids.shape)}"
        )
    lengths = _left_padded_lengths(attention_mask).tolist()
    if max(lengths) > max_position:
        raise ValueError(
            f"input_ids: a prompt of {max(lengths)} tokens does not fit in max_position="
            f"{max_position}"
        )
    new = int(max_new_tokens)
    plan = torch.zeros(batch, width + new, dtype=torch.long)
    if position_ids is not None:
        position_ids = torch.as_tensor(position_ids)
        if position_ids.is_floating_point():
            raise ValueError(
                "position_ids: generate() takes integer positions (a model trained on float "
                "positions decodes with integer ones)"
            )
        if position_ids.dim() == 2 and position_ids.shape[0] == 1 and batch > 1:
            position_ids = position_ids.expand(batch, -1)
        if position_ids.shape != input_ids.shape:
            raise ValueError(
                f"position_ids: shape {tuple(position_ids.shape)} differs from input_ids "
                f"{tuple(input_ids.shape)}"
            )
        position_ids = position_ids.long().cpu()
        for b, n in enumerate(lengths):
            real = position_ids[b, width - n :]
            if int(real.min()) < 0 or int(real.max()) >= max_position:
                bad = int(real.min()) if int(real.min()) < 0 else int(real.max())
                raise ValueError(
                    f"position_ids: position {bad} is outside [0, {max_position}) (max_position)"
                )
            plan[b, width - n : width] = real
            if new:
                plan[b, width:] = _plan_after(
                    decode_positions, int(real[-1]), new, max_position, generator
                )
    else:
        for b, n in enumerate(lengths):
            plan[b, width - n :] = _plan_from_scratch(
                decode_positions, n + new, max_position, generator
            )
    plan = plan.to(device)
    if new == 0:
        return (input_ids, plan[:, :width]) if return_positions else input_ids

    cache_name = _cache_kwarg(model)
    fill = pad_token_id if pad_token_id is not None else eos_token_id
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=plan[:, :width],
        use_cache=True,
        **{cache_name: _new_cache(getattr(model, "config", None))},
    )
    cache = _output_cache(out)
    tokens = [out.logits[:, -1].argmax(dim=-1)]
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    mask = attention_mask
    for step in range(1, new):
        if eos_token_id is not None:
            finished |= tokens[-1] == eos_token_id
            if bool(finished.all()):
                break
        mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
        column = width + step - 1  # the position of the token fed now
        out = model(
            input_ids=tokens[-1][:, None],
            attention_mask=mask,
            position_ids=plan[:, column : column + 1],
            use_cache=True,
            **{cache_name: cache},
        )
        cache = _output_cache(out)
        nxt = out.logits[:, -1].argmax(dim=-1)
        if eos_token_id is not None and fill is not None:
            nxt = torch.where(finished, torch.full_like(nxt, fill), nxt)
        tokens.append(nxt)
    generated = torch.stack(tokens, dim=1)
    ids = torch.cat([input_ids, generated], dim=1)
    if return_positions:
        return ids, plan[:, : ids.shape[1]]
    return ids
