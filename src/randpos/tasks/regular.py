"""The four regular-language tasks (docs/reference-system.md §1.1): even_pairs, modular_arithmetic,
parity_check, cycle_navigation. All are classification tasks (one output, mask all True).

Notation: B = batch size, n = requested length, n' = actual input length.
"""

from __future__ import annotations

import torch

from randpos.tasks.base import Batch, Task, check_inputs, classification, randint

MODULUS = 5  # modular_arithmetic and cycle_navigation use the paper's modulus / cycle length 5

# modular_arithmetic token ids: digits are themselves, then the operators and the unused blank.
PLUS, MINUS, TIMES, BLANK = 5, 6, 7, 8

# Discrete logarithm base 2 in Z_5^* (2 generates it: 2^0=1, 2^1=2, 2^2=4, 2^3=3), so a product
# of non-zero residues is 2^(sum of logs mod 4). Index 0 is a placeholder (zeros are counted
# separately).
_LOG2_MOD5 = (0, 0, 1, 3, 2)
_POW2_MOD5 = (1, 2, 4, 3)


class EvenPairs(Task):
    """Is the number of unequal adjacent pairs even? (regular)

    Input: n uniform bits (tokens 0, 1). Target: (number of i with x_i != x_{i+1}) mod 2, which
    equals ``x_1 != x_n`` (class 0 for n = 1). Two classes, random baseline 50%.

    Examples::

        [0,1,1,1,1,0,0,0] -> 0   (unequal pairs 0|1 and 1|0)
        [0,1,1,0,1]       -> 1   (unequal pairs 01, 10, 01)
    """

    name = "even_pairs"
    level = "regular"
    input_vocab_size = 2
    output_vocab_size = 2

    def _sample(self, batch_size: int, length: int, generator: torch.Generator) -> Batch:
        return self.solve(randint(0, 2, (batch_size, length), generator))

    def solve(self, inputs: torch.Tensor) -> Batch:
        check_inputs(inputs)
        # The pair count is odd exactly when the first and last bits differ (telescoping).
        return classification(inputs, inputs[:, 0] != inputs[:, -1])


class ModularArithmetic(Task):
    """Value of an unbracketed +, -, * expression modulo 5 (regular).

    Token map: digits 0..4 are themselves; ``+``=5, ``-``=6, ``*``=7, ``_``=8 (a blank that is
    declared in the vocabulary, input vocab 9, but never generated). Five classes, baseline 20%.

    Generation: an even requested length n is reduced to n' = n-1 (lengths 2k and 2k+1 give the
    same problem size; ``input_length`` reports n'). Even positions hold uniform digits, odd
    positions operators uniform over {+, *, -}.

    Target: the usual precedence (``*`` first, then ``+``/``-`` left to right), subtraction as
    adding the negated next product term, result reduced to 0..4. Quirk kept deliberately
    different: the reference multiplies in int32 and could overflow on a chain of >= ~15
    non-zero factors (probability ~1e-8 per position); this implementation is exact.

    Examples::

        [4,5,2,5,3]     = "4+2+3"   -> 4   (9 mod 5)
        [2,7,2,6,2,7,4] = "2*2-2*4" -> 1   (-4 mod 5)
    """

    name = "modular_arithmetic"
    level = "regular"
    input_vocab_size = 9
    output_vocab_size = MODULUS

    def input_length(self, n: int) -> int:
        return n if n % 2 == 1 else n - 1

    def _sample(self, batch_size: int, length: int, generator: torch.Generator) -> Batch:
        n = self.input_length(length)
        digits = randint(0, MODULUS, (batch_size, (n + 1) // 2), generator)
        ops = randint(PLUS, TIMES + 1, (batch_size, n // 2), generator)
        inputs = torch.empty((batch_size, n), dtype=torch.long, device=generator.device)
        inputs[:, 0::2] = digits
        inputs[:, 1::2] = ops
        return self.solve(inputs)

    def solve(self, inputs: torch.Tensor) -> Batch:
        check_inputs(inputs)
        if inputs.shape[1] % 2 == 0:
            raise ValueError(f"modular_arithmetic inputs have odd length, got {inputs.shape[1]}")
        digits = inputs[:, 0::2]  # (B, m) operands
        ops = inputs[:, 1::2]  # (B, m-1) operators; ops[:, j-1] sits before digits[:, j]
        batch, m = digits.shape
        first = torch.ones((batch, 1), dtype=torch.bool, device=inputs.device)
        # A digit opens a new additive term unless it is multiplied onto the previous one.
        starts = torch.cat([first, ops != TIMES], dim=1)  # (B, m)
        term = torch.cumsum(starts.long(), dim=1) - 1  # (B, m) term index of every digit
        signs = torch.cat([first.long(), torch.where(ops == MINUS, -1, 1)], dim=1)  # (B, m)
        log2 = torch.tensor(_LOG2_MOD5, device=inputs.device)[digits]
        pow2 = torch.tensor(_POW2_MOD5, device=inputs.device)
        # Per-term reductions (a term index < m always): zero count, log sum, sign of the term.
        zeros = torch.zeros_like(digits).scatter_add_(1, term, (digits == 0).long())
        logs = torch.zeros_like(digits).scatter_add_(1, term, log2)
        term_sign = torch.zeros_like(digits).scatter_add_(1, term, signs * starts)
        value = torch.where(zeros > 0, 0, pow2[logs % 4])  # (B, m) unused slots have sign 0
        return classification(inputs, (term_sign * value).sum(dim=1) % MODULUS)


class ParityCheck(Task):
    """Is the number of ones odd? (regular)

    Input: n uniform bits. Target: (count of 1s) mod 2. Two classes, baseline 50%.

    Examples::

        [0,1,1,0,1]       -> 1
        [0,1,1,1,1,0,0,0] -> 0
    """

    name = "parity_check"
    level = "regular"
    input_vocab_size = 2
    output_vocab_size = 2

    def _sample(self, batch_size: int, length: int, generator: torch.Generator) -> Batch:
        return self.solve(randint(0, 2, (batch_size, length), generator))

    def solve(self, inputs: torch.Tensor) -> Batch:
        check_inputs(inputs)
        return classification(inputs, inputs.sum(dim=1) % 2)


class CycleNavigation(Task):
    """Final position on a cycle of length 5 after a sequence of moves (regular).

    Input: n tokens uniform in {0, 1, 2}; token t means "move by t-1" (0 = step left, 1 = stay,
    2 = step right; the reference docstring's actions -1/0/1 shifted by +1). Start at 0.
    Target: (sum of (t-1)) mod 5, non-negative. Five classes, baseline 20%.

    Examples::

        [0,0]             -> 3   (-2 mod 5)
        [1,1,0,2,0,2,2,1] -> 1   (0+0-1+1-1+1+1+0)
    """

    name = "cycle_navigation"
    level = "regular"
    input_vocab_size = 3
    output_vocab_size = MODULUS

    def _sample(self, batch_size: int, length: int, generator: torch.Generator) -> Batch:
        return self.solve(randint(0, 3, (batch_size, length), generator))

    def solve(self, inputs: torch.Tensor) -> Batch:
        check_inputs(inputs)
        return classification(inputs, (inputs.sum(dim=1) - inputs.shape[1]) % MODULUS)
