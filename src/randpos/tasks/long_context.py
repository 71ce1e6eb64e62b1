"""Synthetic long-context tasks for causal decoders, from a small vocabulary with no downloads
(docs/long-context.md): ``passkey``, ``niah_multikey``, ``variable_tracking``, ``flip_flop``.

Notation: B = batch size, n = requested length (the context, in tokens), n' = actual input
length (``input_length(n)``: n, or the task's minimum), k = answer length.

The first three hide a few short segments (needles, assignments) at random places in a
*haystack*: a fixed cycle of filler tokens started at a random phase (the synthetic analogue of
the repeated filler sentences of passkey retrieval, Mohtashami and Jaggi 2023, and of RULER's
``repeat`` haystack, Hsieh et al. 2024, arXiv 2404.06654), and end with a question. The answer
follows the input (the decoder appends a separator and generates it). ``flip_flop`` (Liu et al.
2023, arXiv 2306.00946) instead scores the model inside its input: its targets are *inline*.

Two facts every sampler here keeps, which the evaluation reads:

* **depth strata.** Where a task has a needle that its question asks for, row b of any sample
  holds it in depth bin ``b % depth_bins``: its start lies in
  [bin / bins, (bin + 1) / bins) of the haystack (uniform within the bin). Depth 0 is the start
  of the context. This makes the per-depth accuracy of the needle-in-a-haystack heat map come
  from equally many sequences per bin at every length.
* **inline targets** (``inline = True``): no output position is appended
  (``output_length`` is 0); the targets (B, n') are the tokens that follow each input position,
  scored where ``mask`` is true: ``targets[:, t]`` is predicted at position t.

Every sampler is a pure function of its generator and batch-vectorized; ``solve`` is not
needed, the tests check every sample against a token-by-token oracle.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from randpos.tasks.base import Batch, Task, randint, sequence

#: digits 0..9 are token ids 0..9 in every task that has them (keys, values)
DIGITS = 10
#: the haystack: a cycle of this many filler tokens (ids DIGITS .. DIGITS + FILLER - 1)
FILLER = 5
#: the default number of depth bins of the heat map
DEPTH_BINS = 5


class ContextTask(Task):
    """A long-context task: a haystack with needles and a question, or an inline task.

    Class attributes:
      inline:     targets inside the input (see the module docstring), else an answer after it
      depth_bins: the depth strata of the asked needle (1: no strata, the task has no depth)
      minimum:    the shortest input (``input_length`` raises shorter requests to it)
    """

    level = "context"
    inline: ClassVar[bool] = False
    depth_bins: ClassVar[int] = 1
    minimum: ClassVar[int] = 1

    def input_length(self, n: int) -> int:
        return max(n, self.minimum)

    def depth_bin(self, rows: int, device=None) -> torch.Tensor:
        """The depth bin of each row (rows,): b % depth_bins."""
        return torch.arange(rows, device=device) % self.depth_bins


def haystack(batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """(B, length) filler: the cycle DIGITS .. DIGITS + FILLER - 1, from a random phase per row."""
    phase = randint(0, FILLER, (batch, 1), generator)
    steps = torch.arange(length, device=generator.device).unsqueeze(0)
    return DIGITS + (phase + steps) % FILLER


def stratified_slots(rows: int, filler: int, bins: int, generator: torch.Generator) -> torch.Tensor:
    """(B,) insertion points in [0, filler] (the number of filler tokens before the needle):
    row b uniform in depth bin b % bins, i.e. floor((bin + u) / bins * (filler + 1))."""
    u = torch.rand(rows, generator=generator, device=generator.device, dtype=torch.float64)
    bin_ = torch.arange(rows, device=generator.device) % bins
    return ((bin_ + u) / bins * (filler + 1)).long().clamp(max=filler)


def uniform_slots(rows: int, count: int, filler: int, generator: torch.Generator) -> torch.Tensor:
    """(B, count) insertion points uniform in [0, filler]."""
    return randint(0, filler + 1, (rows, count), generator)


def compose(filler: torch.Tensor, segments: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """Insert ``segments`` (B, S, l) into ``filler`` (B, F): segment s before filler index
    ``slots[:, s]`` (in [0, F]; F: at the end). ``slots`` must be non-decreasing along S, the
    segments' order in the output. Returns (B, F + S l)."""
    B, F = filler.shape
    S, seg = segments.shape[1], segments.shape[2]
    out = filler.new_empty(B, F + S * seg)
    t = torch.arange(F, device=filler.device)
    # filler index t moves right by the segments inserted at or before it
    shift = (slots.unsqueeze(1) <= t.view(1, F, 1)).sum(-1) * seg  # (B, F)
    out.scatter_(1, t.unsqueeze(0) + shift, filler)
    starts = slots + torch.arange(S, device=filler.device) * seg  # (B, S)
    where = starts.unsqueeze(-1) + torch.arange(seg, device=filler.device)  # (B, S, l)
    out.scatter_(1, where.flatten(1), segments.flatten(1))
    return out


class Passkey(ContextTask):
    """Passkey retrieval (Mohtashami and Jaggi 2023): a key of ``digits`` digits after a KEY
    marker, hidden at a stratified depth in the haystack; the question QUERY is the last token
    and the answer is the key.

    Tokens: digits 0..9, filler 10..14, KEY 15, QUERY 16. Output: the digits (10 classes).
    n' = max(n, digits + 2): filler, then (somewhere) KEY d_1..d_digits, then QUERY.
    """

    name = "passkey"
    digits: ClassVar[int] = 5
    depth_bins = DEPTH_BINS
    minimum = digits + 2
    KEY, QUERY = DIGITS + FILLER, DIGITS + FILLER + 1
    input_vocab_size = QUERY + 1
    output_vocab_size = DIGITS

    def output_length(self, n: int) -> int:
        return self.digits

    def _sample(self, batch_size: int, length: int, generator: torch.Generator) -> Batch:
        n = self.input_length(length)
        filler = n - self.digits - 2
        key = randint(0, DIGITS, (batch_size, self.digits), generator)
        marker = torch.full_like(key[:, :1], self.KEY)
        needle = torch.cat([marker, key], dim=1).unsqueeze(1)  # (B, 1, 1 + digits)
        slots = stratified_slots(batch_size, filler, self.depth_bins, generator).unsqueeze(1)
        context = compose(haystack(batch_size, filler, generator), needle, slots)
        query = torch.full_like(key[:, :1], self.QUERY)
        return sequence(torch.cat([context, query], dim=1), key)


class NiahMultikey(ContextTask):
    """RULER's multi-key needle in a haystack (Hsieh et al. 2024, arXiv 2404.06654, the
    ``niah_multikey`` task) on a synthetic haystack: ``needles`` needles "key v_1..v_m" with
    distinct keys, one asked for (QUERY key), the others distractors; the answer is the
    asked needle's value of ``value_digits`` digits. The asked needle sits at a stratified
    depth, the distractors uniformly.

    Tokens: digits 0..9, filler 10..14, keys 15..30 (16), QUERY 31. Output: digits.
    n' = max(n, needles (1 + value_digits) + 2).
    """

    name = "niah_multikey"
    needles: ClassVar[int] = 4
    value_digits: ClassVar[int] = 3
    keys: ClassVar[int] = 16
    depth_bins = DEPTH_BINS
    minimum = needles * (1 + value_digits) + 2
    FIRST_KEY = DIGITS + FILLER
    QUERY = FIRST_KEY + keys
    input_vocab_size = QUERY + 1
    output_vocab_size = DIGITS

    def output_length(self, n: int) -> int:
        return self.value_digits

    def _sample(self, batch_size: int, length: int, generator: torch.Generator) -> Batch:
        n, S, m = self.input_length(length), self.needles, self.value_digits
        filler = n - S * (1 + m) - 2
        # distinct keys per row: the first S of a random permutation (smallest of i.i.d. keys)
        draws = torch.rand(batch_size, self.keys, generator=generator, device=generator.device)
        keys = draws.argsort(dim=1)[:, :S] + self.FIRST_KEY  # (B, S); needle 0 is asked
        values = randint(0, DIGITS, (batch_size, S, m), generator)
        needles = torch.cat([keys.unsqueeze(-1), values], dim=-1)  # (B, S, 1 + m)
        slots = torch.cat(
            [
                stratified_slots(batch_size, filler, self.depth_bins, generator).unsqueeze(1),
                uniform_slots(batch_size, S - 1, filler, generator),
            ],
            dim=1,
        )
        # the output order of the needles: by slot (ties: asked needle first, then by index)
        order = slots.argsort(dim=1, stable=True)
        slots = slots.gather(1, order)
        needles = needles.gather(1, order.unsqueeze(-1).expand_as(needles))
        context = compose(haystack(batch_size, filler, generator), needles, slots)
        query = torch.stack([torch.full_like(keys[:, 0], self.QUERY), keys[:, 0]], dim=1)
        return sequence(torch.cat([context, query], dim=1), values[:, 0])


class VariableTracking(ContextTask):
    """RULER's variable tracking (arXiv 2404.06654) on a synthetic haystack: ``chains``
    chains of assignments "SET X_1 v", "SET X_2 X_1", ..., "SET X_{h+1} X_h" (``hops`` = h),
    their statements interleaved in the haystack in each chain's order, every variable
    distinct and every chain's value distinct. The question "QUERY v" gives chain 0's value;
    the answer is its variables in assignment order X_1 .. X_{h+1} (RULER asks for the set of
    them; in order, the answer is one exact string).

    Tokens: values 0..9, filler 10..14, variables 15..30 (16), SET 31, QUERY 32. Output: the
    variables (16 classes). n' = max(n, chains (hops + 1) 3 + 2).
    """

    name = "variable_tracking"
    chains: ClassVar[int] = 2
    hops: ClassVar[int] = 3
    variables: ClassVar[int] = 16
    minimum = chains * (hops + 1) * 3 + 2
    FIRST_VAR = DIGITS + FILLER
    SET = FIRST_VAR + variables
    QUERY = SET + 1
    input_vocab_size = QUERY + 1
    output_vocab_size = variables

    def output_length(self, n: int) -> int:
        return self.hops + 1

    def _sample(self, batch_size: int, length: int, generator: torch.Generator) -> Batch:
        n, C, V = self.input_length(length), self.chains, self.hops + 1
        S = C * V
        filler = n - S * 3 - 2
        dev = generator.device
        draws = torch.rand(batch_size, self.variables, generator=generator, device=dev)
        names = draws.argsort(dim=1)[:, :S].view(batch_size, C, V)  # distinct variables
        draws = torch.rand(batch_size, DIGITS, generator=generator, device=dev)
        values = draws.argsort(dim=1)[:, :C]  # (B, C) distinct values
        tokens = names + self.FIRST_VAR  # (B, C, V)
        sources = torch.cat([values.unsqueeze(-1), tokens[:, :, :-1]], dim=-1)  # v, X_1..X_h
        marker = torch.full_like(tokens, self.SET)
        statements = torch.stack([marker, tokens, sources], dim=-1).view(batch_size, S, 3)
        # interleave the chains: each statement gets a random key, sorted within its chain,
        # so that a chain's statements keep their order; then all go in key order
        keys = torch.rand(batch_size, C, V, generator=generator, device=dev)
        order = keys.sort(dim=-1).values.view(batch_size, S).argsort(dim=1)
        statements = statements.gather(1, order.unsqueeze(-1).expand_as(statements))
        slots = uniform_slots(batch_size, S, filler, generator).sort(dim=1).values
        context = compose(haystack(batch_size, filler, generator), statements, slots)
        query = torch.stack([torch.full_like(values[:, 0], self.QUERY), values[:, 0]], dim=1)
        return sequence(torch.cat([context, query], dim=1), names[:, 0])


class FlipFlop(ContextTask):
    """Flip-flop language modeling (Liu et al. 2023, arXiv 2306.00946): a sequence of
    instructions, each an instruction token and a bit: write (W b), read (R b), ignore (I b).
    At every read the bit is the last written one; the model is scored on predicting it
    (``inline``: at the position of each R). The first instruction is a write and the last a
    read; the others are ignore with probability ``ignore_probability`` (Liu et al.'s p_i;
    FFL(0.8) is their main training distribution) and write or read with equal probability
    otherwise; written and ignored bits are fair coins.

    Tokens: bits 0, 1, W 2, R 3, I 4. Output: bits. n' = max(2 floor(n / 2), 4).
    """

    name = "flip_flop"
    inline = True
    minimum = 4
    W, R, I = 2, 3, 4
    input_vocab_size = 5
    output_vocab_size = 2

    def __init__(self, ignore_probability: float = 0.8) -> None:
        if not 0.0 <= ignore_probability < 1.0:
            raise ValueError(f"ignore_probability must be in [0, 1), got {ignore_probability!r}")
        self.ignore_probability = float(ignore_probability)

    def input_length(self, n: int) -> int:
        return max(2 * (n // 2), self.minimum)

    def output_length(self, n: int) -> int:
        return 0  # inline: nothing is appended

    def _sample(self, batch_size: int, length: int, generator: torch.Generator) -> Batch:
        m = self.input_length(length) // 2  # instructions
        dev = generator.device
        u = torch.rand(batch_size, m, generator=generator, device=dev, dtype=torch.float64)
        p = self.ignore_probability
        kind = torch.where(u < p, self.I, torch.where(u < p + (1 - p) / 2, self.W, self.R))
        kind[:, 0], kind[:, -1] = self.W, self.R
        bits = randint(0, 2, (batch_size, m), generator)
        # the last write at or before each instruction (the first one is a write)
        index = torch.arange(m, device=dev).expand(batch_size, m)
        last_write = torch.where(kind == self.W, index, 0).cummax(dim=1).values
        bits = torch.where(kind == self.R, bits.gather(1, last_write), bits)
        inputs = torch.stack([kind, bits], dim=-1).view(batch_size, 2 * m)
        # the bit after R at position 2t is predicted at 2t: targets[2t] = bits[t]
        targets = torch.zeros_like(inputs)
        mask = torch.zeros_like(inputs, dtype=torch.bool)
        targets[:, 0::2] = bits
        mask[:, 0::2] = kind == self.R
        return Batch(inputs, targets.masked_fill(~mask, 0), mask)


#: the long-context tasks, in the order of docs/long-context.md
LONG_CONTEXT_TASKS: tuple[type[ContextTask], ...] = (
    Passkey,
    NiahMultikey,
    VariableTracking,
    FlipFlop,
)

__all__ = [
    "DEPTH_BINS",
    "LONG_CONTEXT_TASKS",
    "ContextTask",
    "FlipFlop",
    "NiahMultikey",
    "Passkey",
    "VariableTracking",
    "compose",
]
