"""The four deterministic context-free tasks (docs/reference-system.md §1.2): stack_manipulation,
reverse_string, modular_arithmetic_brackets, solve_equation.

Notation: B = batch size, n = input length, K = number of pending expression nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from randpos.tasks.base import (
    Batch,
    Task,
    check_inputs,
    classification,
    positions,
    randint,
    sequence,
    uniform_below,
)

MODULUS = 5  # the paper's modulus for both expression tasks

# stack_manipulation token ids: 0, 1 are stack symbols, then the three actions.
POP, PUSH0, PUSH1 = 2, 3, 4
TERMINATOR = 2  # stack_manipulation output class after the final stack


class StackManipulation(Task):
    """Run stack actions on an initial stack and print the final stack (deterministic CF).

    Token map: 0, 1 = stack symbols; 2 = POP, 3 = PUSH 0, 4 = PUSH 1 (input vocab 5). Output
    classes 3: 0, 1 and 2 = terminator. Output length n+1.

    Generation (n >= 2): stack length s uniform in {1, ..., n-1}; the first s tokens are uniform
    bits (the initial stack, bottom to top), the other n-s tokens actions uniform in {2, 3, 4}.
    n = 1: a single random bit and no actions.

    Target: apply the actions left to right (POP on an empty stack does nothing), write the
    final stack top to bottom, then the terminator 2, then zeros up to length n+1. Accuracy mask:
    positions up to and including the terminator. Per-token baseline ~50% on the stack bits.

    Examples::

        [1,3,2,3,3] -> [0,0,1,2,0,0]   mask [T,T,T,T,F,F]   (stack [1] -> [1,0] -> [1] -> [1,0,0])
        [0,1,0,2,2] -> [0,2,0,0,0,0]   mask [T,T,F,F,F,F]   (stack [0,1,0], two POPs -> [0])
    """

    name = "stack_manipulation"
    level = "dcf"
    input_vocab_size = 5
    output_vocab_size = 3

    def output_length(self, n: int) -> int:
        return n + 1

    def _sample(self, batch_size: int, length: int, generator: torch.Generator) -> Batch:
        if length == 1:
            return self.solve(randint(0, 2, (batch_size, 1), generator))
        stack_len = randint(1, length, (batch_size, 1), generator)  # (B, 1) uniform in 1..n-1
        bits = randint(0, 2, (batch_size, length), generator)
        actions = randint(POP, PUSH1 + 1, (batch_size, length), generator)
        inputs = torch.where(positions(length, bits) < stack_len, bits, actions)
        return self.solve(inputs)

    def solve(self, inputs: torch.Tensor) -> Batch:
        check_inputs(inputs)
        batch, n = inputs.shape
        # Every token but POP pushes one symbol: initial-stack bits push themselves.
        push = inputs != POP
        symbol = torch.where(inputs >= PUSH0, inputs - PUSH0, inputs)
        # Height after each token. With POP-on-empty ignored this is the walk of +-1 steps
        # reflected at 0: h_i = S_i - min(0, min_{j<=i} S_j) for the free walk S.
        walk = torch.cumsum(torch.where(push, 1, -1), dim=1)  # (B, n)
        height = walk - torch.cummin(walk, dim=1).values.clamp(max=0)
        # A pushed symbol is still on the final stack iff the height never drops below its level
        # afterwards; its level then is its height right after the push.
        later_min = torch.flip(torch.cummin(torch.flip(height, [1]), dim=1).values, [1])
        later_min = torch.cat([later_min[:, 1:], torch.full_like(height[:, :1], n + 1)], dim=1)
        survives = push & (height <= later_min)
        final = height[:, -1:]  # (B, 1) final stack size
        # Top of the stack (level = final) goes to output position 0; the rest to a spare column.
        slot = torch.where(survives, final - height, n + 1)
        out = torch.zeros((batch, n + 2), dtype=torch.long, device=inputs.device)
        out.scatter_(1, slot, torch.where(survives, symbol, 0))
        out = out[:, : n + 1]  # (B, n+1)
        pos = positions(n + 1, inputs)
        out = torch.where(pos == final, TERMINATOR, out)
        return Batch(inputs, out, pos <= final)


class ReverseString(Task):
    """Reverse a binary string (deterministic CF).

    Input: n uniform bits; target: the input reversed, output length n, mask all True.
    Per-token baseline 50%.

    Examples::

        [0,1,1,0,1]       -> [1,0,1,1,0]
        [1,1,0,0,1,1,1,0] -> [0,1,1,1,0,0,1,1]
    """

    name = "reverse_string"
    level = "dcf"
    input_vocab_size = 2
    output_vocab_size = 2

    def output_length(self, n: int) -> int:
        return n

    def _sample(self, batch_size: int, length: int, generator: torch.Generator) -> Batch:
        return self.solve(randint(0, 2, (batch_size, length), generator))

    def solve(self, inputs: torch.Tensor) -> Batch:
        check_inputs(inputs)
        return sequence(inputs, torch.flip(inputs, [1]))


# ---------------------------------------------------------------------------------------------
# Bracketed expressions, shared by modular_arithmetic_brackets and solve_equation (which use
# different token ids for the same grammar).


@dataclass(frozen=True)
class TokenMap:
    """Token ids of one expression task; digits are always 0..MODULUS-1."""

    plus: int
    minus: int
    times: int | None
    open: int
    close: int
    x: int
    equals: int


BRACKETS_TOKENS = TokenMap(plus=5, minus=6, times=7, open=8, close=9, x=10, equals=11)
EQUATION_TOKENS = TokenMap(plus=5, minus=6, times=None, open=7, close=8, x=9, equals=10)


def random_expressions(
    batch_size: int, length: int, tokens: TokenMap, generator: torch.Generator
) -> torch.Tensor:
    """LongTensor[B, length]: random bracketed expressions of exactly ``length`` characters.

    The reference grammar, by length: 1 ``d``; 2 ``-d``; 3 ``(d)``; 4 ``(-d)``; >= 5
    ``(`` left op right ``)`` with left length l uniform in {1, ..., length-4}, right length
    length-3-l and op uniform over the task's operators. The recursion is unrolled breadth-first:
    each loop iteration expands every pending node of every sample at once, so the loop runs as
    many times as the deepest tree has levels.
    """
    device = generator.device
    ops = [tokens.plus, tokens.minus] + ([tokens.times] if tokens.times is not None else [])
    ops_t = torch.tensor(ops, device=device)
    # Every character that is not overwritten by structure below is a digit.
    out = randint(0, MODULUS, (batch_size, length), generator)
    flat = out.view(-1)  # (B * length,) writes go through flat indices
    start = torch.arange(batch_size, device=device) * length  # (K,) flat start of each node
    size = torch.full((batch_size,), length, device=device)  # (K,) node lengths
    leaf_patterns = {
        2: ((0, tokens.minus),),
        3: ((0, tokens.open), (2, tokens.close)),
        4: ((0, tokens.open), (1, tokens.minus), (3, tokens.close)),
    }
    while start.numel() > 0:
        index, value = [], []
        for leaf_size, pattern in leaf_patterns.items():
            at = start[size == leaf_size]
            for offset, token in pattern:
                index.append(at + offset)
                value.append(torch.full_like(at, token))
        inner = size >= 5
        at, sz = start[inner], size[inner]
        left = 1 + uniform_below(sz - 4, generator)
        op = ops_t[randint(0, len(ops), tuple(at.shape), generator)]
        index += [at, at + 1 + left, at + sz - 1]
        value += [torch.full_like(at, tokens.open), op, torch.full_like(at, tokens.close)]
        flat[torch.cat(index)] = torch.cat(value)
        # Children: left operand after "(", right operand after the operator.
        start = torch.cat([at + 1, at + 2 + left])
        size = torch.cat([left, sz - 3 - left])
    return out


def evaluate_expressions(expr: torch.Tensor, tokens: TokenMap) -> torch.Tensor:
    """LongTensor[B]: value mod 5 of each row of well-formed expressions (digits only, no x).

    A shift-reduce parser run over positions for the whole batch at once (inherently sequential
    in the position): digits push their value, ``(`` and binary operators push onto an operator
    stack, and ``)`` applies the operator of its group if it has one. A unary minus (a ``-`` at
    the start or after ``(`` or an operator) is folded into the digit that always follows it.
    """
    batch, n = expr.shape
    device = expr.device
    prev = torch.cat([torch.full_like(expr[:, :1], tokens.open), expr[:, :-1]], dim=1)
    prev2 = torch.cat([torch.full_like(expr[:, :2], tokens.open), expr[:, :-2]], dim=1)[:, :n]
    op_ids = [tokens.plus, tokens.minus] + ([tokens.times] if tokens.times is not None else [])

    def is_op(t: torch.Tensor) -> torch.Tensor:
        return torch.isin(t, torch.tensor(op_ids, device=device))

    # The minus before a digit is unary iff what precedes the minus is "(", an operator or the
    # start (prev2 is padded with "(" for that).
    unary = (prev == tokens.minus) & ((prev2 == tokens.open) | is_op(prev2))
    atom = torch.where(unary, -expr, expr) % MODULUS  # (B, n) only read at digit positions
    is_digit = expr < MODULUS
    # An operator token is binary unless it is the unary minus recorded on the next position.
    is_binop = is_op(expr) & ~torch.cat([unary[:, 1:], torch.zeros_like(unary[:, :1])], dim=1)
    # Operator codes: 0 "+", 1 "-", 2 "*", 3 = group marker pushed by "(".
    code = torch.full_like(expr, 3)
    code = torch.where(expr == tokens.plus, 0, code)
    code = torch.where(expr == tokens.minus, 1, code)
    if tokens.times is not None:
        code = torch.where(expr == tokens.times, 2, code)
    pushes_op = is_binop | (expr == tokens.open)
    closes = expr == tokens.close
    # combine[op, a, b] flattened: value of a op b mod 5 (op 3 rows are never used).
    a = torch.arange(MODULUS, device=device).view(1, MODULUS, 1)
    b = torch.arange(MODULUS, device=device).view(1, 1, MODULUS)
    table = torch.cat([a + b, a - b, a * b], dim=0) % MODULUS  # (3, 5, 5)
    table = table.reshape(-1)

    vals = torch.zeros((batch, n + 2), dtype=torch.long, device=device)  # value stack
    opstack = torch.zeros((batch, n + 2), dtype=torch.long, device=device)
    vp = torch.zeros((batch, 1), dtype=torch.long, device=device)  # (B, 1) value stack size
    op_p = torch.zeros((batch, 1), dtype=torch.long, device=device)
    for i in range(n):
        # Writes above the stack tops are harmless: those slots are free.
        vals.scatter_(1, vp, atom[:, i : i + 1])
        vp = vp + is_digit[:, i : i + 1]
        opstack.scatter_(1, op_p, code[:, i : i + 1])
        op_p = op_p + pushes_op[:, i : i + 1]
        top = opstack.gather(1, (op_p - 1).clamp(min=0))
        reduce = closes[:, i : i + 1] & (top < 3)  # ")" of a group with a binary operator
        lhs_at = (vp - 2).clamp(min=0)
        lhs = vals.gather(1, lhs_at)
        rhs = vals.gather(1, (vp - 1).clamp(min=0))
        result = table[top.clamp(max=2) * MODULUS * MODULUS + lhs * MODULUS + rhs]
        vals.scatter_(1, lhs_at, torch.where(reduce, result, lhs))
        vp = vp - reduce.long()
        op_p = op_p - closes[:, i : i + 1].long() - reduce.long()
    return vals[:, 0]


class ModularArithmeticBrackets(Task):
    """Value of a fully bracketed +, -, * expression modulo 5 (deterministic CF).

    Token map: digits 0..4; ``+``=5, ``-``=6, ``*``=7, ``(``=8, ``)``=9, ``x``=10, ``=``=11.
    The declared input vocab is 11 (ids 0..10): ``x`` and ``=`` never occur in this task and
    ``=`` would not even fit. Five classes, baseline 20%.

    Generation, recursive on the exact length n: 1 ``d``; 2 ``-d``; 3 ``(d)``; 4 ``(-d)``;
    n >= 5 ``(`` left op right ``)`` with left length l uniform in {1, ..., n-4}, right length
    n-3-l, op uniform in {+, -, *}, digits uniform in 0..4.

    Target: the value mod 5 (unary minus binds to its digit; non-negative result).

    Examples::

        [8,4,6,0,9]       = "(4-0)"    -> 4
        [8,8,6,2,9,7,4,9] = "((-2)*4)" -> 2   ((3*4) mod 5)
        [8,0,6,8,6,3,9,9] = "(0-(-3))" -> 3   ((0-2) mod 5)
    """

    name = "modular_arithmetic_brackets"
    level = "dcf"
    input_vocab_size = 11
    output_vocab_size = MODULUS
    tokens = BRACKETS_TOKENS

    def _sample(self, batch_size: int, length: int, generator: torch.Generator) -> Batch:
        return self.solve(random_expressions(batch_size, length, self.tokens, generator))

    def solve(self, inputs: torch.Tensor) -> Batch:
        check_inputs(inputs)
        return classification(inputs, evaluate_expressions(inputs, self.tokens))


class SolveEquation(Task):
    """Find the digit x in a bracketed +, - equation modulo 5 (deterministic CF).

    Token map (NOT the brackets task's): digits 0..4; ``+``=5, ``-``=6, ``(``=7, ``)``=8,
    ``x``=9, ``=``=10. Input vocab 11. No ``*``, so x has coefficient +-1 and a unique solution.
    Five classes, baseline 20%.

    Generation (n >= 3): a brackets-grammar expression of length n-2 with operators + and -
    only, value v; a uniform character index, walked right (cyclically) to the first digit,
    picks the digit replaced by ``x``; then ``=`` and the digit v. Quirk: the hidden digit is not
    uniform over the digits: one after a long run of non-digits is more likely.
    Degenerate n < 3: the input is all token 0 and the target class 0.

    Target: the replaced digit.

    Examples::

        [7,9,8,10,4]        = "(x)=4"    -> 4
        [7,6,9,6,3,8,10,1]  = "(-x-3)=1" -> 1   (-1-3 = -4 = 1 mod 5)
    """

    name = "solve_equation"
    level = "dcf"
    input_vocab_size = 11
    output_vocab_size = MODULUS
    tokens = EQUATION_TOKENS

    def _sample(self, batch_size: int, length: int, generator: torch.Generator) -> Batch:
        device = generator.device
        if length < 3:
            inputs = torch.zeros((batch_size, length), dtype=torch.long, device=device)
            return self.solve(inputs)
        m = length - 2
        expr = random_expressions(batch_size, m, self.tokens, generator)  # (B, m)
        value = evaluate_expressions(expr, self.tokens)  # (B,)
        pick = randint(0, m, (batch_size, 1), generator)  # (B, 1) uniform character index
        # First digit at or after each index, cyclically: suffix minimum over the row doubled.
        twice = torch.cat([expr, expr], dim=1) < MODULUS  # (B, 2m)
        idx = torch.where(twice, positions(2 * m, expr), 2 * m)
        next_digit = torch.flip(torch.cummin(torch.flip(idx, [1]), dim=1).values, [1])
        hidden = next_digit.gather(1, pick) % m  # (B, 1)
        answer = expr.gather(1, hidden).squeeze(1)
        expr.scatter_(1, hidden, self.tokens.x)
        tail = torch.stack([torch.full_like(value, self.tokens.equals), value], dim=1)  # (B, 2)
        # The hidden digit is the answer by construction; solve() would recompute it.
        return classification(torch.cat([expr, tail], dim=1), answer)

    def solve(self, inputs: torch.Tensor) -> Batch:
        check_inputs(inputs)
        batch, n = inputs.shape
        if n < 3:
            return classification(inputs, torch.zeros_like(inputs[:, 0]))
        expr, rhs = inputs[:, :-2], inputs[:, -1]
        is_x = expr == self.tokens.x
        # The left side is c + s*x with s = +-1: evaluate it at x = 0 and x = 1 in one pass.
        both = torch.cat([torch.where(is_x, 0, expr), torch.where(is_x, 1, expr)], dim=0)
        c0, c1 = evaluate_expressions(both, self.tokens).split(batch)
        slope = (c1 - c0) % MODULUS  # 1 or 4 (= -1); each is its own inverse mod 5
        return classification(inputs, ((rhs - c0) * slope) % MODULUS)
