"""The long-context tasks against token-by-token oracles: every sample is parsed back in plain
Python (where the needles are, what the question asks, what the answer must be) and compared
with the sampler's targets, exactly; the depth strata and the haystack are checked the same
way."""

from __future__ import annotations

import math

import pytest
import torch

from randpos.tasks import CONTEXT_TASK_NAMES, TASK_NAMES, get_task
from randpos.tasks.long_context import (
    DIGITS,
    FILLER,
    FlipFlop,
    NiahMultikey,
    Passkey,
    VariableTracking,
    compose,
)

LENGTHS = (1, 20, 37, 64, 129)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sample(name: str, length: int, batch: int = 25, seed: int = 0):
    task = get_task(name)
    out = task.sample(batch, length, gen(seed))
    assert out.inputs.shape == (batch, task.input_length(length))
    assert out.targets.shape == out.mask.shape
    assert int(out.inputs.min()) >= 0 and int(out.inputs.max()) < task.input_vocab_size
    assert int(out.targets.min()) >= 0 and int(out.targets.max()) < task.output_vocab_size
    return task, out


def check_haystack(row: list[int], needle_tokens: set[int]) -> int:
    """The filler tokens of a row (those outside needles) follow the cycle; returns their count."""
    filler = [t for i, t in enumerate(row) if i not in needle_tokens]
    for a, b in zip(filler, filler[1:], strict=False):
        assert DIGITS <= a < DIGITS + FILLER and b == DIGITS + (a - DIGITS + 1) % FILLER
    return len(filler)


def check_depth(slot: int, filler: int, row: int, bins: int) -> None:
    """The needle's insertion point lies in its row's depth bin."""
    b = row % bins
    assert (
        math.floor(b * (filler + 1) / bins)
        <= slot
        <= min(filler, math.ceil((b + 1) * (filler + 1) / bins) - 1)
    )


@pytest.mark.parametrize("length", LENGTHS)
def test_passkey_against_a_parser(length):
    task, batch = sample("passkey", length)
    d = Passkey.digits
    for r, row in enumerate(batch.inputs.tolist()):
        assert row[-1] == Passkey.QUERY and row.count(Passkey.KEY) == 1
        at = row.index(Passkey.KEY)
        key = row[at + 1 : at + 1 + d]
        assert all(0 <= t < DIGITS for t in key)
        assert batch.targets[r].tolist() == key
        needle = set(range(at, at + 1 + d)) | {len(row) - 1}
        filler = check_haystack(row, needle)
        assert filler == len(row) - d - 2
        check_depth(at, filler, r, task.depth_bins)  # at = filler tokens before the needle
    assert bool(batch.mask.all())


@pytest.mark.parametrize("length", LENGTHS)
def test_niah_multikey_against_a_parser(length):
    task, batch = sample("niah_multikey", length)
    m, first = NiahMultikey.value_digits, NiahMultikey.FIRST_KEY
    for r, row in enumerate(batch.inputs.tolist()):
        assert row[-2] == NiahMultikey.QUERY
        asked = row[-1]
        body = row[:-2]
        needles = {
            i: body[i + 1 : i + 1 + m]
            for i, t in enumerate(body)
            if first <= t < first + NiahMultikey.keys
        }
        keys = [body[i] for i in needles]
        assert len(keys) == NiahMultikey.needles == len(set(keys))  # distinct keys
        assert all(all(0 <= t < DIGITS for t in v) for v in needles.values())
        (where,) = [i for i in needles if body[i] == asked]
        assert batch.targets[r].tolist() == needles[where]
        inside = {i + s for i in needles for s in range(m + 1)} | {len(row) - 2, len(row) - 1}
        filler = check_haystack(row, inside)
        before = sum(1 for i in range(where) if i not in inside)  # filler before the asked one
        check_depth(before, filler, r, task.depth_bins)


@pytest.mark.parametrize("length", LENGTHS)
def test_variable_tracking_against_an_interpreter(length):
    _, batch = sample("variable_tracking", length)
    V, first = VariableTracking.hops + 1, VariableTracking.FIRST_VAR
    for r, row in enumerate(batch.inputs.tolist()):
        assert row[-2] == VariableTracking.QUERY
        value = {}  # variable -> the value it holds, run statement by statement
        order = []
        statements = [i for i, t in enumerate(row[:-2]) if t == VariableTracking.SET]
        assert len(statements) == VariableTracking.chains * V
        for i in statements:
            target, source = row[i + 1], row[i + 2]
            assert first <= target < first + VariableTracking.variables and target not in value
            value[target] = source if source < DIGITS else value[source]  # assigned before use
            order.append(target)
        assert len(set(value.values())) == VariableTracking.chains  # distinct chain values
        chain = [v - first for v in order if value[v] == row[-1]]
        assert batch.targets[r].tolist() == chain
        inside = {i + s for i in statements for s in range(3)} | {len(row) - 2, len(row) - 1}
        check_haystack(row, inside)


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("ignore", [0.0, 0.8, 0.98])
def test_flip_flop_against_a_simulator(length, ignore):
    task = FlipFlop(ignore)
    batch = task.sample(25, length, gen(1))
    n = task.input_length(length)
    assert batch.inputs.shape == batch.targets.shape == (25, n) and n % 2 == 0
    assert task.output_length(n) == 0 and task.inline
    for r, row in enumerate(batch.inputs.tolist()):
        assert row[0] == FlipFlop.W and row[-2] == FlipFlop.R
        last = None
        for t in range(0, n, 2):
            kind, bit = row[t], row[t + 1]
            assert kind in (FlipFlop.W, FlipFlop.R, FlipFlop.I) and bit in (0, 1)
            if kind == FlipFlop.W:
                last = bit
            if kind == FlipFlop.R:
                assert bit == last  # a read copies the last written bit
            assert bool(batch.mask[r, t]) == (kind == FlipFlop.R)
            if kind == FlipFlop.R:
                assert int(batch.targets[r, t]) == bit  # predicted at the R, before the bit
        assert not bool(batch.mask[r, 1::2].any())


def test_flip_flop_instruction_frequencies():
    """Ignore with probability p, write and read (1 - p) / 2 each, in the middle of a row."""
    p, rows, m = 0.8, 400, 100
    batch = FlipFlop(p).sample(rows, 2 * m, gen(2))
    kinds = batch.inputs[:, 2:-2:2]  # instructions 1..m-2
    count = kinds.numel()
    for kind, prob in ((FlipFlop.I, p), (FlipFlop.W, (1 - p) / 2), (FlipFlop.R, (1 - p) / 2)):
        freq = float((kinds == kind).double().mean())
        # a binomial proportion: within 5 standard deviations
        assert abs(freq - prob) <= 5 * math.sqrt(prob * (1 - prob) / count)
    with pytest.raises(ValueError, match="ignore_probability"):
        FlipFlop(1.0)


def test_compose_against_list_insertion():
    g = gen(3)
    for _ in range(20):
        B, F, S, seg = 3, int(torch.randint(0, 12, (1,), generator=g)), 3, 2
        filler = torch.randint(0, 100, (B, F), generator=g)
        segments = torch.randint(100, 200, (B, S, seg), generator=g)
        slots = torch.randint(0, F + 1, (B, S), generator=g).sort(dim=1).values
        out = compose(filler, segments, slots)
        for b in range(B):
            want = []
            for t in range(F + 1):
                for s in range(S):
                    if int(slots[b, s]) == t:
                        want += segments[b, s].tolist()
                if t < F:
                    want.append(int(filler[b, t]))
            assert out[b].tolist() == want


@pytest.mark.parametrize("name", CONTEXT_TASK_NAMES)
def test_samples_are_pure_functions_of_the_generator(name):
    task = get_task(name)
    a, b = task.sample(7, 50, gen(5)), task.sample(7, 50, gen(5))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    state = torch.get_rng_state()
    task.sample(7, 50, gen(6))
    assert torch.equal(torch.get_rng_state(), state)  # no global randomness


def test_depth_strata_cover_every_bin_and_the_whole_context():
    """Over many rows the needle's relative depth fills each bin: the heat map's rows are
    what they say."""
    task, batch = sample("passkey", 200, batch=500, seed=4)
    at = torch.tensor([row.index(Passkey.KEY) for row in batch.inputs.tolist()])
    depth = at.double() / (200 - Passkey.digits - 2)  # fraction of the filler before the needle
    bins = task.depth_bin(500)
    for b in range(task.depth_bins):
        mine = depth[bins == b]
        assert float(mine.min()) >= b / task.depth_bins - 0.01
        assert float(mine.max()) <= (b + 1) / task.depth_bins + 0.01
        assert float(mine.max() - mine.min()) > 0.8 / task.depth_bins  # spread over the bin


def test_the_long_context_tasks_are_registered_beside_the_fifteen():
    assert len(TASK_NAMES) == 15 and not set(TASK_NAMES) & set(CONTEXT_TASK_NAMES)
    assert CONTEXT_TASK_NAMES == ("passkey", "niah_multikey", "variable_tracking", "flip_flop")
    with pytest.raises(ValueError, match="passkey"):
        get_task("pass_key")
