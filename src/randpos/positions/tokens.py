"""Positions computed from the tokens: Abacus digit indices and coupled position ids.

Notation: B = batch, T = length, V = vocabulary. docs/design.md §6, docs/arithmetic.md.

The other samplers draw positions from a length alone; these read the token ids, so the same
batch gets the same positions wherever it is planned (training, evaluation, decoding). A token
is a *digit*, a *hint* (an index-hint symbol) or anything else (:class:`TokenKinds`). A
*number* is a maximal run of digits and hints; a digit's **significance** is its rank among the
digits of its number, 1 for the first, and a hint takes the significance of the digit after it.
With numbers written least significant digit first (the arithmetic tasks' format) that rank is
the digit's significance in the arithmetic sense: 1 = units.

Two sources (:data:`TOKEN_SOURCES`), each plus an offset drawn in training
(``mode="random"``) from [0, ``max_offset``] and 0 otherwise:

* ``abacus`` (McLeish et al. 2024, arXiv 2405.17399): a number token's position is its
  significance + offset, every other token's is 0. The public code draws one offset per batch
  (``per_sequence=False``).
* ``coupled`` (Cho et al. 2024, arXiv 2405.20671): every token's position is offset +
  significance, non-number tokens (operators, ``=``, EOS) taking significance 0, so digits of
  equal significance share one id across the operands and the answer. Cho et al.'s code draws
  the start per example (``per_sequence=True``) and numbers significance downwards from
  start + D + 1 (D = the longer operand); we number it upwards from the offset, the mirror
  image, so a generated digit's id needs nothing but the digits before it (docs/arithmetic.md).

Both are causal: a token's position depends on it and the tokens before it only, so decoding
computes a new token's position from the sequence so far (:func:`token_positions` on the
prefix; tests/positions/test_token_positions.py checks that the last column of a prefix's
positions is the full sequence's).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from randpos.core.fields import ConfigError, check_choice

TOKEN_SOURCES = ("abacus", "coupled")
#: token kinds in a :class:`TokenKinds` table
OTHER, DIGIT, HINT = 0, 1, 2


@dataclass(frozen=True)
class TokenKinds:
    """Which token ids are digits and which are index hints (the rest are neither)."""

    vocab_size: int
    digits: tuple[int, ...]
    hints: tuple[int, ...] = ()

    def table(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """LongTensor[V]: the kind of every token id."""
        kinds = torch.zeros(self.vocab_size, dtype=torch.long, device=device)
        kinds[list(self.digits)] = DIGIT
        if self.hints:
            kinds[list(self.hints)] = HINT
        return kinds


@dataclass(frozen=True)
class TokenPositionSpec:
    """Where an embedding's positions come from when they are read from the tokens.

    source:       :data:`TOKEN_SOURCES`
    max_offset:   training offsets are uniform in [0, max_offset]; evaluation uses 0
    per_sequence: one offset per sequence, else one shared by the batch
    """

    source: str = "abacus"
    max_offset: int = 0
    per_sequence: bool = False

    def __post_init__(self) -> None:
        check_choice("source", self.source, TOKEN_SOURCES)
        if not isinstance(self.max_offset, int) or self.max_offset < 0:
            raise ConfigError(f"max_offset must be an integer >= 0, got {self.max_offset!r}")

    def positions_needed(self, longest_number: int) -> int:
        """The range [0, P) the positions of numbers up to ``longest_number`` digits (or hint
        and digit pairs) can take: the embedding table's size."""
        return self.max_offset + longest_number + 1


def significance(tokens: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
    """LongTensor[B, T]: each number token's significance (1 = its number's first digit; a
    hint: the digit after it), 0 for other tokens. ``kinds`` is :meth:`TokenKinds.table`."""
    kind = kinds[tokens]  # (B, T)
    digit = (kind == DIGIT).long()
    number = kind != OTHER
    # digits counted since the start of the row; the count at each run's start is subtracted
    counted = digit.cumsum(dim=1)  # (B, T), inclusive
    before = counted - digit  # digits strictly before each token
    starts = number & ~torch.nn.functional.pad(number[:, :-1], (1, 0), value=False)
    base = torch.where(starts, before, torch.zeros_like(before)).cummax(dim=1).values
    rank = torch.where(kind == DIGIT, counted, before + 1) - base
    return torch.where(number, rank, torch.zeros_like(rank))


def draw_offsets(
    spec: TokenPositionSpec,
    batch_size: int,
    generator: torch.Generator | None,
    *,
    mode: str = "random",
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """LongTensor[B or 1, 1]: the offsets of a batch, uniform in [0, max_offset] when
    ``mode`` is ``random`` (training), else 0."""
    rows = batch_size if spec.per_sequence else 1
    if mode != "random" or spec.max_offset == 0:
        return torch.zeros(rows, 1, dtype=torch.long, device=device)
    dev = generator.device if generator is not None else device
    draws = torch.randint(0, spec.max_offset + 1, (rows, 1), generator=generator, device=dev)
    return draws.to(device)


def token_positions(
    spec: TokenPositionSpec, tokens: torch.Tensor, kinds: torch.Tensor, offsets: torch.Tensor
) -> torch.Tensor:
    """LongTensor[B, T]: the positions ``spec.source`` gives ``tokens`` (B, T) at ``offsets``
    (B or 1, 1) (:func:`draw_offsets`)."""
    rank = significance(tokens, kinds)
    if spec.source == "abacus":
        return torch.where(rank > 0, rank + offsets, torch.zeros_like(rank))
    return rank + offsets  # coupled


__all__ = [
    "DIGIT",
    "HINT",
    "OTHER",
    "TOKEN_SOURCES",
    "TokenKinds",
    "TokenPositionSpec",
    "draw_offsets",
    "significance",
    "token_positions",
]
