"""Multi-digit arithmetic posed to a causal decoder: ``addition`` and ``multiplication``
(docs/arithmetic.md).

Notation: B = batch, D = digits of the longer operand, k = answer digits, T = sequence length,
H = index-hint symbols.

One example is one token sequence, every number written least significant digit first:

    a_1 .. a_n  OP  b_1 .. b_m  =  c_1 .. c_k  EOS  PAD ..

with OP = ``+`` or ``*``. The model reads the prompt (through ``=``) and generates the answer
and EOS; the loss and the metric cover those tokens only. Format options
(:class:`ArithmeticFormat`):

* ``zero_pad`` (Cho et al. 2024, arXiv 2405.20671): both operands padded with zeros to D
  digits, the answer to the longest answer of two D-digit operands (D + 1 for addition, 2D for
  multiplication);
* ``index_hints`` (Zhou et al. 2024, arXiv 2402.09371): every digit is preceded by a hint symbol
  naming its significance, the same symbol for the same significance in the operands and the
  answer; the symbols run cyclically through H hint tokens from a start drawn per example (as
  the public code of McLeish et al. 2024 draws them from 102 characters).

Operand lengths: a number of n digits is uniform among the n-digit numbers (leading digit 1..9)
for n > 1 and uniform over 0..9 for n = 1. Training draws n and m per example, each uniform in
1..N; evaluation asks for exact (n, m). Arithmetic runs on digit tensors (carries propagated
column by column), so operands of any length work; tests compare with Python integers.

This family has its own contract (two operand lengths, answers of varying length, the
generated-answer metric) and its own registry, :data:`ARITHMETIC_TASKS`; the 15 tasks of
``randpos.tasks`` (``TASK_NAMES``) are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from randpos.core.fields import ConfigError

#: token ids: the ten digits first (a digit's id is its value), then the symbols, then hints
PLUS, TIMES, EQUALS, EOS, PAD = 10, 11, 12, 13, 14
HINT_BASE = 15
OPERATIONS = {"addition": PLUS, "multiplication": TIMES}
ARITHMETIC_TASKS = tuple(OPERATIONS)


@dataclass(frozen=True)
class ArithmeticFormat:
    """How an example is written (see the module docstring)."""

    index_hints: bool = False
    zero_pad: bool = False
    hint_vocab: int = 102  # H, the hint symbols (the public Abacus code's 102 characters)

    def __post_init__(self) -> None:
        if not isinstance(self.hint_vocab, int) or self.hint_vocab < 1:
            raise ConfigError(
                f"options.hint_vocab must be an integer >= 1, got {self.hint_vocab!r}"
            )


@dataclass(frozen=True)
class ArithmeticBatch:
    """Examples as one right-padded token tensor.

    tokens:       LongTensor[B, T], PAD after each example's EOS
    answer_start: LongTensor[B], index of c_1 (the prompt is ``tokens[:, :answer_start]``)
    length:       LongTensor[B], tokens up to and including EOS
    n, m:         LongTensor[B], the operands' digit counts (before padding)
    """

    tokens: torch.Tensor
    answer_start: torch.Tensor
    length: torch.Tensor
    n: torch.Tensor
    m: torch.Tensor

    def loss_mask(self) -> torch.Tensor:
        """BoolTensor[B, T - 1]: the next-token predictions that count (those of c_1 .. EOS,
        made at the tokens ``=`` .. c_k)."""
        t = torch.arange(self.tokens.shape[1] - 1, device=self.tokens.device)
        return (t >= self.answer_start[:, None] - 1) & (t < self.length[:, None] - 1)


class ArithmeticTask:
    """``addition`` or ``multiplication`` of two non-negative integers, in a given format."""

    def __init__(self, name: str, fmt: ArithmeticFormat | None = None) -> None:
        if name not in OPERATIONS:
            raise ConfigError(f"task={name!r}: arithmetic tasks are {', '.join(ARITHMETIC_TASKS)}")
        self.name = name
        self.operator = OPERATIONS[name]
        self.format = fmt or ArithmeticFormat()

    # ----------------------------------------------------------------- vocabulary, lengths
    @property
    def vocab_size(self) -> int:
        """Tokens in the vocabulary: the ten digits, ``+ * = EOS PAD`` and, with index hints,
        the H hint symbols."""
        return HINT_BASE + (self.format.hint_vocab if self.format.index_hints else 0)

    @property
    def digit_ids(self) -> tuple[int, ...]:
        """The token ids of the digits 0..9 (a digit's id is its value)."""
        return tuple(range(10))

    @property
    def hint_ids(self) -> tuple[int, ...]:
        """The token ids of the index-hint symbols; empty without ``index_hints``."""
        if not self.format.index_hints:
            return ()
        return tuple(range(HINT_BASE, HINT_BASE + self.format.hint_vocab))

    def operand_digits(self, n: int, m: int) -> tuple[int, int]:
        """Digits written for operands of n and m digits (both D with ``zero_pad``)."""
        if self.format.zero_pad:
            return max(n, m), max(n, m)
        return n, m

    def answer_digits(self, n: int, m: int) -> int:
        """The most answer digits operands of n and m digits can give (exactly this many with
        ``zero_pad``)."""
        n, m = self.operand_digits(n, m)
        return max(n, m) + 1 if self.operator == PLUS else n + m

    def sequence_length(self, n: int, m: int) -> int:
        """The longest sequence (to EOS) of operands of n and m digits."""
        a, b = self.operand_digits(n, m)
        width = 2 if self.format.index_hints else 1
        return width * (a + b + self.answer_digits(n, m)) + 3

    def longest_sequence(self, max_digits: int) -> int:
        """Tokens in the longest example with operands of at most ``max_digits`` digits."""
        return self.sequence_length(max_digits, max_digits)

    # ----------------------------------------------------------------- sampling
    def sample(
        self, batch_size: int, max_digits: int, generator: torch.Generator
    ) -> ArithmeticBatch:
        """Training examples: n and m each uniform in 1..``max_digits`` per example, padded to
        the longest sequence at ``max_digits`` (so batches of one step share their shape)."""
        dev = generator.device
        lengths = torch.randint(1, max_digits + 1, (2, batch_size), generator=generator, device=dev)
        return self._sample(lengths[0], lengths[1], generator, self.longest_sequence(max_digits))

    def sample_cell(
        self, batch_size: int, n: int, m: int, generator: torch.Generator
    ) -> ArithmeticBatch:
        """``batch_size`` examples with operands of exactly n and m digits."""
        dev = generator.device
        ns = torch.full((batch_size,), n, dtype=torch.long, device=dev)
        ms = torch.full((batch_size,), m, dtype=torch.long, device=dev)
        return self._sample(ns, ms, generator, self.sequence_length(n, m))

    def _sample(
        self, n: torch.Tensor, m: torch.Tensor, generator: torch.Generator, width: int
    ) -> ArithmeticBatch:
        a = random_digits(n, generator)  # (B, max n)
        b = random_digits(m, generator)
        hint_start = None
        if self.format.index_hints:
            hint_start = torch.randint(
                0, self.format.hint_vocab, (n.shape[0],), generator=generator, device=n.device
            )
        return self.encode(a, n, b, m, hint_start, width)

    # ----------------------------------------------------------------- the format
    def encode(
        self,
        a: torch.Tensor,
        n: torch.Tensor,
        b: torch.Tensor,
        m: torch.Tensor,
        hint_start: torch.Tensor | None = None,
        width: int | None = None,
    ) -> ArithmeticBatch:
        """The examples a (op) b from digit tensors (B, *) least significant digit first, zero
        beyond each operand's n (m) digits; ``hint_start`` (B,) the first hint symbol (index
        hints); ``width`` the padded sequence length (default: the longest example)."""
        if self.format.index_hints and hint_start is None:
            raise ValueError("index hints need a hint_start per example")
        B, dev = n.shape[0], n.device
        if self.format.zero_pad:
            n = m = torch.maximum(n, m)
        D = int(torch.maximum(n, m).max()) if B else 0
        a, b = _widen(a, D), _widen(b, D)
        if self.operator == PLUS:
            c = add_digits(a, b)  # (B, D + 1)
            k = n.maximum(m) + 1 if self.format.zero_pad else significant_digits(c)
        else:
            c = multiply_digits(a, b)  # (B, 2D)
            k = n + m if self.format.zero_pad else significant_digits(c)
        step = 2 if self.format.index_hints else 1
        op_at = step * n
        answer_start = op_at + step * m + 2
        eos_at = answer_start + step * k
        length = eos_at + 1
        T = int(length.max()) if width is None else width
        if B and int(length.max()) > T:
            raise ValueError(f"examples of {int(length.max())} tokens do not fit width {T}")
        tokens = torch.full((B, T), PAD, dtype=torch.long, device=dev)
        rows = torch.arange(B, device=dev)
        tokens[rows, op_at] = self.operator
        tokens[rows, answer_start - 1] = EQUALS
        tokens[rows, eos_at] = EOS
        for digits, count, start in ((a, n, 0), (b, m, op_at + 1), (c, k, answer_start)):
            _place(tokens, digits, count, start, step, hint_start, self.format.hint_vocab)
        return ArithmeticBatch(tokens, answer_start, length, n, m)

    def decode(self, tokens: list[int]) -> tuple[int, int, int]:
        """(a, b, c) of one example's tokens (a list, to EOS or beyond): an independent reading
        of the format for tests and documentation."""
        text = []
        for t in tokens:
            if t == EOS:
                break
            if t < 10:
                text.append(str(t))
            elif t in (PLUS, TIMES, EQUALS):
                text.append(" ")
        a, b, c = ("".join(reversed(part)) for part in "".join(text).split(" "))
        return int(a), int(b), int(c)

    def __repr__(self) -> str:
        return f"ArithmeticTask({self.name!r}, {self.format})"


def get_arithmetic_task(name: str, fmt: ArithmeticFormat | None = None) -> ArithmeticTask:
    """The arithmetic task ``name`` (:data:`ARITHMETIC_TASKS`) written in ``fmt``; an unknown
    name raises a one-line ``ConfigError``."""
    return ArithmeticTask(name, fmt)


# ----------------------------------------------------------------------------- digit arithmetic
def random_digits(lengths: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(B, max length) digits, least significant first: row i is a uniform number of exactly
    ``lengths[i]`` digits (leading digit 1..9, or any digit for one-digit numbers), zero beyond."""
    B, dev = lengths.shape[0], lengths.device
    width = int(lengths.max()) if B else 0
    digits = torch.randint(0, 10, (B, width), generator=generator, device=dev)
    lead = torch.randint(1, 10, (B,), generator=generator, device=dev)
    rows = torch.arange(B, device=dev)
    top = lengths - 1
    digits[rows, top] = torch.where(lengths > 1, lead, digits[rows, top])
    return digits.masked_fill(torch.arange(width, device=dev) >= lengths[:, None], 0)


def add_digits(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Digits (B, D + 1) of a + b for digit tensors (B, D), least significant first."""
    total = torch.nn.functional.pad(a + b, (0, 1))
    return _carry(total)


def multiply_digits(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Digits (B, 2D) of a * b for digit tensors (B, D), least significant first: the column
    sums of the schoolbook product, then the carries."""
    B, D = a.shape
    columns = torch.zeros(B, 2 * D, dtype=torch.long, device=a.device)
    if D:
        products = (a[:, :, None] * b[:, None, :]).flatten(1)  # (B, D * D), pair (i, j)
        index = torch.arange(D, device=a.device)
        column = (index[:, None] + index[None, :]).flatten().expand(B, -1)  # i + j
        columns.scatter_add_(1, column, products)
    return _carry(columns)


def _carry(columns: torch.Tensor) -> torch.Tensor:
    """Column sums (B, W) to digits, carrying left to right (the last column must absorb the
    final carry, as it does for a + b in D + 1 and a * b in 2D columns)."""
    digits = torch.empty_like(columns)
    carry = torch.zeros_like(columns[:, 0])
    for j in range(columns.shape[1]):
        value = columns[:, j] + carry
        digits[:, j] = value % 10
        carry = value // 10
    return digits


def significant_digits(digits: torch.Tensor) -> torch.Tensor:
    """(B,) the digit count of each number (at least 1: zero is written ``0``)."""
    W = digits.shape[1]
    place = torch.arange(1, W + 1, device=digits.device)
    return (place * (digits != 0)).amax(dim=1).clamp(min=1)


def _widen(digits: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(digits, (0, max(0, width - digits.shape[1])))[:, :width]


def _place(
    tokens: torch.Tensor,
    digits: torch.Tensor,
    count: torch.Tensor,
    start: int | torch.Tensor,
    step: int,
    hint_start: torch.Tensor | None,
    hints: int,
) -> None:
    """Write digits 1..count of each row at start, start + step, ... (each after its hint)."""
    B, W = digits.shape
    if W == 0:
        return
    j = torch.arange(W, device=digits.device)
    valid = j < count[:, None]  # (B, W)
    start = torch.as_tensor(start, device=digits.device).expand(B)
    columns = start[:, None] + step * j  # the hint's place, or the digit's without hints
    rows = torch.arange(B, device=digits.device)[:, None].expand(B, W)
    if hint_start is not None:
        symbol = HINT_BASE + (hint_start[:, None] + j) % hints
        tokens[rows[valid], columns[valid]] = symbol[valid]
        columns = columns + 1
    tokens[rows[valid], columns[valid]] = digits[valid]


__all__ = [
    "ARITHMETIC_TASKS",
    "EOS",
    "EQUALS",
    "HINT_BASE",
    "OPERATIONS",
    "PAD",
    "PLUS",
    "TIMES",
    "ArithmeticBatch",
    "ArithmeticFormat",
    "ArithmeticTask",
    "add_digits",
    "get_arithmetic_task",
    "multiply_digits",
    "random_digits",
    "significant_digits",
]
