"""The seven context-sensitive tasks (docs/reference-system.md §1.3): duplicate_string,
missing_duplicate_string, odds_first, binary_addition, binary_multiplication, compute_sqrt,
bucket_sort.

Notation: B = batch size, n = input length, W = width of a bit tensor. Big numbers (up to 500
bits) live in bit tensors: BoolTensor[B, W], little-endian (column 0 = least significant bit).
"""

from __future__ import annotations

import torch

from randpos.tasks.base import (
    Batch,
    Task,
    check_inputs,
    classification,
    positions,
    randint,
    sequence,
)

SEPARATOR = 2  # binary_addition / binary_multiplication: the operator token between operands
TERMINATOR = 2  # binary_addition / binary_multiplication: output class ending the result
MISSING, PAD = 2, 3  # missing_duplicate_string tokens


# ---------------------------------------------------------------------------------------------
# Bit-tensor arithmetic


def _shift_up(t: torch.Tensor, d: int) -> torch.Tensor:
    """Columns moved d places towards the high end, zeros shifted in: (B, W) -> (B, W)."""
    return torch.cat([torch.zeros_like(t[:, :d]), t[:, :-d]], dim=1)


def add_bits(
    x: torch.Tensor, y: torch.Tensor, carry_in: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + y + carry_in) mod 2^W and the carry out, for BoolTensor[B, W] operands.

    A Kogge-Stone parallel-prefix adder: the carries of all W columns come out of log2(W)
    vectorized rounds instead of a W-step ripple loop.
    """
    gen = x & y  # column generates a carry
    prop = x ^ y  # column passes an incoming carry on
    if carry_in is None:
        carry_in = torch.zeros_like(x[:, 0])
    # Fold the incoming carry into column 0 so that prefix spans reaching column 0 include it.
    g = torch.cat([(gen[:, :1] | (prop[:, :1] & carry_in.unsqueeze(1))), gen[:, 1:]], dim=1)
    p = prop
    d = 1
    while d < x.shape[1]:
        g, p = g | (p & _shift_up(g, d)), p & _shift_up(p, d)
        d *= 2
    # g[:, i] is now the carry out of column i.
    carries = torch.cat([carry_in.unsqueeze(1), g[:, :-1]], dim=1)
    return prop ^ carries, g[:, -1]


def multiply_bits(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x * y mod 2^W for BoolTensor[B, W] operands.

    Column sums c_k = sum_{i+j=k} x_i y_j come from one batched FFT convolution (exact: float64
    with sums <= W); the integer sum_k c_k 2^k is then rebuilt by adding the binary planes of
    the column sums, log2(W)+1 bit-tensor additions.
    """
    width = x.shape[1]
    fx = torch.fft.rfft(x.double(), n=2 * width)
    fy = torch.fft.rfft(y.double(), n=2 * width)
    cols = torch.fft.irfft(fx * fy, n=2 * width)[:, :width].round().long()  # (B, W)
    total = torch.zeros_like(x)
    plane = 0
    while (1 << plane) <= width:  # column sums are <= W
        bits = ((cols >> plane) & 1).bool()
        if plane > 0:
            bits = _shift_up(bits, plane) if plane < width else torch.zeros_like(bits)
        total, _ = add_bits(total, bits)
        plane += 1
    return total


def isqrt_bits(x: torch.Tensor) -> torch.Tensor:
    """floor(sqrt(x)) for BoolTensor[B, 2m] (little-endian) as BoolTensor[B, m].

    The binary digit-by-digit method: bring down two bits at a time from the top; a result bit
    is 1 iff the remainder is at least 4*root + 1, in which case that is subtracted. Sequential
    over the m result bits; each step is one vectorized bit-tensor subtraction, done only on the
    columns that can be non-zero at that step (the remainder stays below 2^(i+3) at step i).
    """
    batch, width = x.shape
    m = width // 2
    rem = torch.zeros((batch, m + 3), dtype=torch.bool, device=x.device)
    root = torch.zeros((batch, m + 3), dtype=torch.bool, device=x.device)
    one = torch.ones_like(rem[:, :1])
    for i in range(m):
        w = i + 3
        top = width - 2 - 2 * i  # the pair of x's bits brought down: columns top, top+1
        shifted = torch.cat([x[:, top : top + 2], rem[:, : w - 2]], dim=1)  # (B, w) 4*rem+pair
        trial = torch.cat([one, ~one, root[:, : w - 2]], dim=1)  # (B, w) 4*root+1
        diff, fits = add_bits(shifted, ~trial, one.squeeze(1))  # shifted - trial; carry = >=
        rem[:, :w] = torch.where(fits.unsqueeze(1), diff, shifted)
        root = torch.cat([fits.unsqueeze(1), root[:, :-1]], dim=1)  # 2*root + bit
    return root[:, :m]


def bit_length(bits: torch.Tensor) -> torch.Tensor:
    """LongTensor[B]: index of the highest set bit plus one (0 for zero)."""
    return (bits.long() * positions(bits.shape[1], bits).add(1)).amax(dim=1)


def terminated(bits: torch.Tensor, out_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets and mask for a number: its bits without high-order zeros (zero is [0]), the
    terminator, then zeros up to ``out_len``; the mask covers up to the terminator."""
    batch, width = bits.shape
    if width < out_len:
        bits = torch.cat([bits, bits.new_zeros((batch, out_len - width))], dim=1)
    bits = bits[:, :out_len].long()
    end = bit_length(bits).clamp(min=1).unsqueeze(1)  # (B, 1) terminator position
    pos = positions(out_len, bits)
    targets = torch.where(pos < end, bits, 0)
    targets = torch.where(pos == end, TERMINATOR, targets)
    return targets, pos <= end


def nonzero_segments(
    batch_size: int, length: int, segments: list[torch.Tensor], generator: torch.Generator
) -> torch.Tensor:
    """LongTensor[B, length] of bits, uniform subject to every segment holding a non-zero bit.

    ``segments`` are BoolTensor[B, length] masks. Segments that came out all-zero are redrawn
    (rejection sampling is exact: a uniform non-zero a-bit string is a uniform a-bit string
    conditioned on not being zero). The loop ends after a few rounds; only 1-bit segments are
    rejected often (half the time).
    """
    bits = randint(0, 2, (batch_size, length), generator)
    while True:
        redraw = torch.zeros_like(bits, dtype=torch.bool)
        for seg in segments:
            empty = ~((bits == 1) & seg).any(dim=1, keepdim=True)  # (B, 1)
            redraw |= empty & seg
        if not bool(redraw.any()):
            return bits
        bits = torch.where(redraw, randint(0, 2, (batch_size, length), generator), bits)


def _le_bits(values: torch.Tensor, width: int) -> torch.Tensor:
    """LongTensor[B] of small non-negative integers -> LongTensor[B, width] little-endian bits."""
    return (values.unsqueeze(1) >> positions(width, values)) & 1


# ---------------------------------------------------------------------------------------------
# Tasks


class DuplicateString(Task):
    """Write a binary string twice (context-sensitive).

    Input: n uniform bits. Target: the input followed by itself, output length 2n, mask all
    True. Per-token baseline 50%.

    Examples::

        [0,1,1,0,1] -> [0,1,1,0,1,0,1,1,0,1]
        [1,0]       -> [1,0,1,0]
    """

    name = "duplicate_string"
    level = "cs"
    input_vocab_size = 2
    output_vocab_size = 2

    def output_length(self, n: int) -> int:
        return 2 * n

    def _sample(self, batch_size: int, length: int, generator: torch.Generator) -> Batch:
        return self.solve(randint(0, 2, (batch_size, length), generator))

    def solve(self, inputs: torch.Tensor) -> Batch:
        check_inputs(inputs)
        return sequence(inputs, torch.cat([inputs, inputs], dim=1))


class MissingDuplicateString(Task):
    """Recover the masked bit of a duplicated string (context-sensitive).

    Token map: 0, 1 = bits; 2 = the missing position; 3 = padding (input vocab 4). Two
    classes, baseline 50%.

    Generation (n >= 2): w = floor(n/2) uniform bits, the string w w, one uniform position of
    it replaced by 2 (the target is the bit that was there); odd n appends one token 3.
    Degenerate n = 1: the input is [1] and the target 1.

    Examples::

        [1,1,2,1,3]       -> 1   (n=5, w=11, position 2 masked, padded)
        [1,1,0,0,1,1,2,0] -> 0   (n=8, w=1100, position 6 masked)
    """

    name = "missing_duplicate_string"
    level = "cs"
    input_vocab_size = 4
    output_vocab_size = 2

    def _sample(self, batch_size: int, length: int, generator: torch.Generator) -> Batch:
        device = generator.device
        if length == 1:
            return self.solve(torch.ones((batch_size, 1), dtype=torch.long, device=device))
        half = length // 2
        word = randint(0, 2, (batch_size, half), generator)
        inputs = torch.cat([word, word], dim=1)  # (B, 2*half)
        missing = randint(0, 2 * half, (batch_size, 1), generator)
        inputs.scatter_(1, missing, MISSING)
        if length % 2 == 1:
            inputs = torch.cat([inputs, torch.full_like(inputs[:, :1], PAD)], dim=1)
        return self.solve(inputs)

    def solve(self, inputs: torch.Tensor) -> Batch:
        check_inputs(inputs)
        n = inputs.shape[1]
        if n == 1:
            return classification(inputs, inputs[:, 0])
        half = n // 2
        missing = (inputs[:, : 2 * half] == MISSING).long().argmax(dim=1, keepdim=True)
        # The same bit sits half a string away, in the other copy of w.
        twin = (missing + half) % (2 * half)
        return classification(inputs, inputs.gather(1, twin).squeeze(1))


class OddsFirst(Task):
    """Tokens at odd indices, then those at even indices (context-sensitive).

    Input: n uniform bits. Target (what the reference code produces, opposite to its docstring):
    x[1], x[3], ... (0-based odd indices) followed by x[0], x[2], ... Output length n, mask all
    True. Per-token baseline 50%.

    Examples::

        [0,1,1,0,1]       -> [1,0,0,1,1]
        [0,1,1,1,1,0,0,0] -> [1,1,0,0,0,1,1,0]
    """

    name = "odds_first"
    level = "cs"
    input_vocab_size = 2
    output_vocab_size = 2

    def output_length(self, n: int) -> int:
        return n

    def _sample(self, batch_size: int, length: int, generator: torch.Generator) -> Batch:
        return self.solve(randint(0, 2, (batch_size, length), generator))

    def solve(self, inputs: torch.Tensor) -> Batch:
        check_inputs(inputs)
        return sequence(inputs, torch.cat([inputs[:, 1::2], inputs[:, 0::2]], dim=1))


class _BinaryOperation(Task):
    """Shared sampler and parser of binary_addition and binary_multiplication."""

    level = "cs"
    input_vocab_size = 3
    output_vocab_size = 3

    def _sample(self, batch_size: int, length: int, generator: torch.Generator) -> Batch:
        if length <= 2:
            # Degenerate: no separator, one number in [0, 2^n - 2], little-endian.
            value = randint(0, 2**length - 1, (batch_size,), generator)
            return self.solve(_le_bits(value, length))
        left_len = randint(1, length - 1, (batch_size, 1), generator)  # (B, 1) in 1..n-2
        pos = positions(length, left_len)
        bits = nonzero_segments(batch_size, length, [pos < left_len, pos > left_len], generator)
        return self.solve(torch.where(pos == left_len, SEPARATOR, bits))

    @staticmethod
    def operands(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both operands as BoolTensor[B, n] little-endian, from ``left SEP right`` inputs."""
        n = inputs.shape[1]
        sep = (inputs == SEPARATOR).long().argmax(dim=1, keepdim=True)  # (B, 1)
        pos = positions(n, inputs)
        left = (pos < sep) & (inputs == 1)
        # Right operand starts after the separator: move it down to column 0, row by row.
        right = inputs.gather(1, (pos + sep + 1).clamp(max=n - 1))
        right = (pos < n - 1 - sep) & (right == 1)
        return left, right


class BinaryAddition(_BinaryOperation):
    """Add two little-endian binary numbers (context-sensitive).

    Token map: 0, 1 = bits; 2 = the ``+`` separator. Output classes 0, 1, 2 = terminator,
    output length n+1.

    Generation (n >= 3): left length a uniform in {1, ..., n-2}, right length b = n-1-a;
    operands uniform in [1, 2^a - 1] and [1, 2^b - 1], each written in exactly a (b) bits,
    little-endian, so high-order zeros can end a segment. Input: bits(a) 2 bits(b).

    Target: the sum little-endian without high-order zeros, the terminator 2, zeros up to length
    n+1. Accuracy mask: up to and including the terminator (the loss is not masked).
    Degenerate n <= 2: no separator; the input is one number in [0, 2^n - 2] in n bits and the
    target is that number (n = 1 always gives input [0], target [0, 2]).

    Examples::

        [1,2,1,0,1] -> [0,1,1,2,0,0]   (1 + 5 = 6)
        [0,1,2,1,0] -> [1,1,2,0,0,0]   (2 + 1 = 3)
    """

    name = "binary_addition"

    def output_length(self, n: int) -> int:
        return n + 1

    def solve(self, inputs: torch.Tensor) -> Batch:
        check_inputs(inputs)
        n = inputs.shape[1]
        if n <= 2:
            targets, mask = terminated(inputs == 1, n + 1)
            return Batch(inputs, targets, mask)
        left, right = self.operands(inputs)
        total, _ = add_bits(left, right)  # the sum has <= n-1 bits, no overflow of width n
        targets, mask = terminated(total, n + 1)
        return Batch(inputs, targets, mask)


class BinaryMultiplication(_BinaryOperation):
    """Multiply two little-endian binary numbers (context-sensitive).

    Input format and operand sampling as binary_addition, the separator 2 meaning ``*``.
    Target: the product little-endian without high-order zeros, the terminator 2, zeros up to
    length n (not n+1: the product has at most a+b = n-1 bits). Accuracy mask up to and
    including the terminator. Degenerate n <= 2: inputs as for addition, but the target is a
    constant placeholder, [2] for n = 1 and [0, 2] for n = 2.

    Examples::

        [1,2,1,0,1]       -> [1,0,1,2,0]         (1 * 5 = 5)
        [1,0,0,1,2,0,1,1] -> [0,1,1,0,1,1,2,0]   (9 * 6 = 54)
    """

    name = "binary_multiplication"

    def output_length(self, n: int) -> int:
        return n

    def solve(self, inputs: torch.Tensor) -> Batch:
        check_inputs(inputs)
        n = inputs.shape[1]
        if n <= 2:
            targets, mask = terminated(torch.zeros_like(inputs, dtype=torch.bool), n)
            targets = torch.full_like(targets, TERMINATOR) if n == 1 else targets
            return Batch(inputs, targets, torch.ones_like(mask))
        left, right = self.operands(inputs)
        targets, mask = terminated(multiply_bits(left, right), n)
        return Batch(inputs, targets, mask)


class ComputeSqrt(Task):
    """Integer square root of a big-endian binary number (context-sensitive).

    Input: an integer uniform in [1, 2^n - 1] written big-endian in exactly n bits (leading
    zeros possible). Target: floor(sqrt(value)) big-endian, zero-padded to ceil(n/2) bits. No
    terminator, mask all True, two classes, per-token baseline ~50%.

    Examples::

        [1,1,0,0,1,1,1,0] -> [1,1,1,0]   (isqrt(206) = 14)
        [0,0,1,1,1]       -> [0,1,0]     (isqrt(7) = 2)
    """

    name = "compute_sqrt"
    level = "cs"
    input_vocab_size = 2
    output_vocab_size = 2

    def output_length(self, n: int) -> int:
        return (n + 1) // 2

    def _sample(self, batch_size: int, length: int, generator: torch.Generator) -> Batch:
        everywhere = torch.ones((1, length), dtype=torch.bool, device=generator.device)
        return self.solve(nonzero_segments(batch_size, length, [everywhere], generator))

    def solve(self, inputs: torch.Tensor) -> Batch:
        check_inputs(inputs)
        n = inputs.shape[1]
        little = torch.flip(inputs == 1, [1])  # (B, n) little-endian
        if n % 2 == 1:  # an even number of bits for the two-at-a-time method
            little = torch.cat([little, torch.zeros_like(little[:, :1])], dim=1)
        root = isqrt_bits(little)  # (B, ceil(n/2)) little-endian
        return sequence(inputs, torch.flip(root, [1]).long())


class BucketSort(Task):
    """Sort a string over 5 symbols (context-sensitive).

    Input: n tokens uniform in 0..4; target: the input sorted ascending, output length n, mask
    all True. Input and output vocab 5, per-token baseline 20%.

    Examples::

        [2,0,0,4,3]       -> [0,0,2,3,4]
        [1,2,1,2,4,4,3,0] -> [0,1,1,2,2,3,4,4]
    """

    name = "bucket_sort"
    level = "cs"
    input_vocab_size = 5
    output_vocab_size = 5

    def output_length(self, n: int) -> int:
        return n

    def _sample(self, batch_size: int, length: int, generator: torch.Generator) -> Batch:
        return self.solve(randint(0, 5, (batch_size, length), generator))

    def solve(self, inputs: torch.Tensor) -> Batch:
        check_inputs(inputs)
        return sequence(inputs, torch.sort(inputs, dim=1).values)
