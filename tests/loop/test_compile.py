"""Compiled execution: same numbers as eager, and no recompilation per length.

The default run uses torch.compile's ``aot_eager`` backend (dynamo + AOT autograd, the layers
where graphs, guards and shape specialization happen) to stay fast; the ``slow`` tests repeat
the checks with inductor, the backend ``compile=True`` uses.
"""

from __future__ import annotations

import pytest
import torch
from tiny import TINY_BASE
from trajectories import EvalLogits, assert_same_evaluation, assert_same_training, loss_atol

from randpos.core.fields import ConfigError
from randpos.loop.compile import CompileCounter
from randpos.loop.training import Trainer, train
from randpos.workloads import resolve_config
from randpos.workloads.config import TrainConfig

TINY = dict(TINY_BASE, steps=6, batch_size=8, log_every=1)
RELATIVE = dict(pe="relative", randomized=True, max_position=64, randomize="distances")


def members(**changes) -> list[TrainConfig]:
    return [
        resolve_config(TINY, seed=s, learning_rate=lr, **changes)
        for s, lr in [(0, 1e-3), (1, 3e-3)]
    ]


@pytest.fixture(autouse=True)
def private_inductor_cache(tmp_path, monkeypatch):
    """A fresh inductor cache per test: no artifacts shared with other processes or runs."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def assert_compiled_matches_eager(
    backend, execution="compiled", *, cuda_graphs=False, tol=None, eval_tol=None, **changes
) -> CompileCounter:
    """Compiled training and evaluation give the eager numbers. On CPU (``tol`` None) to the
    tolerances derived in tests/loop/test_ensemble.py: the graphs run other kernels (decomposed
    ops, another backward), so the two round differently; ``tol`` and ``eval_tol``: the CUDA
    tests' own tolerances for losses and weights, and for accuracies."""
    configs = members(**changes)
    eager = Trainer(configs, execution="loop")
    eager.fit(progress=False)
    counter = CompileCounter(backend)
    compiled = Trainer(configs, execution=execution, backend=counter, cuda_graphs=cuda_graphs)
    compiled.fit(progress=False)
    lengths = [1, 3, 8]
    if tol is None:
        for i, (model, member) in enumerate(zip(compiled.models(), compiled.members, strict=True)):
            assert_same_training(eager, model, member.history, member=i)
        with EvalLogits() as want_seen:
            ref = eager.evaluate(progress=False, lengths=lengths)
        with EvalLogits() as got_seen:
            got = compiled.evaluate(progress=False, lengths=lengths)
        for i, (r, g) in enumerate(zip(ref, got, strict=True)):
            assert_same_evaluation(
                configs[i], g.per_length, r.per_length, got_seen, want_seen, copy=i, want_copy=i
            )
        return counter
    for a, b in zip(eager.members, compiled.members, strict=True):
        torch.testing.assert_close(
            torch.tensor([r["loss"] for r in b.history]),
            torch.tensor([r["loss"] for r in a.history]),
            rtol=tol,
            atol=tol,
        )
    for a, b in zip(eager.models(), compiled.models(), strict=True):
        for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
            torch.testing.assert_close(q, p, rtol=1e-3, atol=1e-4, msg=name)
    ref = eager.evaluate(progress=False, lengths=lengths)
    got = compiled.evaluate(progress=False, lengths=lengths)
    for r, g in zip(ref, got, strict=True):
        assert g.per_length == pytest.approx(r.per_length, abs=eval_tol)
    return counter


@pytest.mark.numerics
def test_compiled_ensemble_equals_eager():
    assert_compiled_matches_eager("aot_eager", **RELATIVE)


def test_no_recompilation_per_length():
    # Lengths 1..8 in training (T = 2..16) and 1..12 in evaluation (T up to 24).
    configs = members(
        pe="rope", randomized=True, max_position=64, max_train_length=8, eval_max_length=12
    )
    configs = [c.replace(steps=16) for c in configs]
    counter = CompileCounter("aot_eager")
    ensemble = Trainer(configs, compile=True, backend=counter)
    seen = set()
    while ensemble.step < 16:
        seen.add(ensemble.train_step()[2])
    assert len(seen) >= 6  # the curriculum visited most lengths
    # one graph for every length, one for n = 1 (T = 2 and k = 1 are specialized), one update
    assert counter.graphs <= 3
    before = counter.graphs
    ensemble.evaluate(progress=False)  # lengths 1..12
    assert counter.graphs - before <= 2  # T = 2 (static) and every longer length


@pytest.mark.slow
def test_batched_mode_equals_eager():
    # the whole vmapped step compiled (one graph per distinct length)
    assert_compiled_matches_eager("aot_eager", execution="batched", pe="sincos")


def test_bf16_needs_cuda():
    config = resolve_config(TINY, precision="bf16")
    with pytest.raises(ConfigError, match="bf16"):
        Trainer(config)
    with pytest.raises(ConfigError, match="bf16"):
        Trainer([config])


@pytest.mark.slow
def test_inductor_ensemble_equals_eager_without_recompiling():
    counter = assert_compiled_matches_eager("inductor", **RELATIVE)
    # train: generic + n = 1 graph + update; eval: T = 2 + generic
    assert counter.graphs <= 5


@pytest.mark.slow
def test_train_with_compile_writes_the_same_run(tmp_path):
    config = members(pe="none", steps=3)[0]
    with EvalLogits() as eager_seen:
        eager = train(config, tmp_path / "eager", progress=False)
    with EvalLogits() as compiled_seen:
        compiled = train(config.replace(compile=True), tmp_path / "compiled", progress=False)
    assert compiled["run_id"] == eager["run_id"]  # compile is a run-time field
    assert_same_evaluation(
        config, compiled["per_length"], eager["per_length"], compiled_seen, eager_seen
    )
    loss = torch.tensor([compiled["final_loss"], eager["final_loss"]], dtype=torch.float64)
    torch.testing.assert_close(loss[0], loss[1], atol=loss_atol(config, loss[1]), rtol=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_ensemble_matches_trainer_and_bf16_runs():
    configs = [c.replace(device="cuda") for c in members(**RELATIVE)]
    singles = [Trainer(c) for c in configs]
    for s in singles:
        s.fit(progress=False)
    ensemble = Trainer(configs, compile=True)
    ensemble.fit(progress=False)
    for s, t in zip(singles, ensemble.members, strict=True):
        torch.testing.assert_close(
            torch.tensor([r["loss"] for r in t.history]),
            torch.tensor([r["loss"] for r in s.history]),
            rtol=1e-4,
            atol=1e-4,
        )
    half = Trainer([c.replace(precision="bf16") for c in configs], compile=True)
    half.fit(progress=False)
    assert all(r.per_length for r in half.evaluate(progress=False, lengths=[1, 8]))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graphs_replay_gives_the_eager_numbers():
    """Compiled members replayed as CUDA graphs (static output buffers, one recording per
    length) train and evaluate like the eager ensemble."""
    cuda = dict(RELATIVE, device="cuda")
    assert_compiled_matches_eager("inductor", cuda_graphs=True, tol=1e-4, eval_tol=0.02, **cuda)


def test_compile_counter_hands_mode_and_options_to_its_backend():
    seen = []

    def backend(graph_module, example_inputs, **kwargs):
        seen.append(kwargs)
        return graph_module.forward

    counter = CompileCounter(backend)
    fn = torch.compile(lambda x: x * 2 + 1, backend=counter, mode="reduce-overhead")
    assert torch.equal(fn(torch.ones(3)), torch.full((3,), 3.0))
    assert counter.graphs == 1 and seen == [{"mode": "reduce-overhead"}]


@pytest.mark.slow
def test_counted_inductor_takes_a_mode():
    """reduce-overhead (CUDA graphs) through the counter: inductor gets the mode's config
    patches; on CPU the graphs simply run without CUDA graphs."""
    counter = CompileCounter("inductor")
    fn = torch.compile(lambda x: torch.relu(x) * 3, backend=counter, mode="reduce-overhead")
    x = torch.randn(5)
    # exact: relu is exact and x 3 one correctly rounded product, in any kernel
    assert torch.equal(fn(x), torch.relu(x) * 3)
    assert counter.graphs == 1
