"""Ensembles: K runs stepped as one batched computation equal K separate Trainer runs."""

from __future__ import annotations

import json

import pytest
import torch
from tiny import TINY_BASE
from trajectories import EvalLogits, assert_same_evaluation, assert_same_training

from randpos.core.fields import ConfigError
from randpos.loop.ensemble import best_strategy, ensemble_key, group_compatible
from randpos.loop.training import CHECKPOINT, Trainer, TrainingInterrupted, train, train_runs
from randpos.model import ModelConfig, Transformer
from randpos.workloads import resolve_config
from randpos.workloads.config import TrainConfig

TINY = dict(TINY_BASE, steps=6, batch_size=8, dropout=0.1, log_every=1, checkpoint_every=3)
MEMBERS = [(0, 1e-3), (1, 3e-3), (2, 5e-4)]  # (seed, learning rate): K = 3


def tiny(**changes) -> TrainConfig:
    return resolve_config(TINY, **changes)


def members(**changes) -> list[TrainConfig]:
    return [tiny(seed=s, learning_rate=lr, **changes) for s, lr in MEMBERS]


def test_ensemble_key_ignores_only_seed_and_learning_rate():
    base = tiny()
    assert ensemble_key(base) == ensemble_key(base.replace(seed=7, learning_rate=0.1))
    for change in (
        {"pe": "rope"},
        {"task": "bucket_sort"},
        {"curriculum_seed": 1},
        {"batch_size": 4},
        {"randomized": True, "max_position": 64},
        {"log_every": 2},
    ):
        assert ensemble_key(base) != ensemble_key(base.replace(**change)), change


def test_group_compatible_groups_and_splits():
    a = [tiny(seed=s) for s in range(5)]
    b = [tiny(seed=s, pe="rope") for s in range(2)]
    c = [tiny(seed=0, curriculum_seed=3)]
    configs = [a[0], b[0], a[1], c[0], a[2], b[1], a[3], a[4]]
    assert group_compatible(configs) == [[0, 2, 4, 6, 7], [1, 5], [3]]
    assert group_compatible(configs, max_size=2) == [[0, 2], [4, 6], [7], [1, 5], [3]]
    with pytest.raises(ValueError):
        group_compatible(configs, max_size=0)


def test_incompatible_configs_are_refused():
    with pytest.raises(ConfigError, match="pe"):
        Trainer([tiny(), tiny(pe="rope", seed=1)])
    with pytest.raises(ConfigError, match="curriculum_seed"):
        train_runs([tiny(), tiny(curriculum_seed=1)])


# ----------------------------------------------------------------------------- dropout noise
@pytest.mark.parametrize("pe", ["none", "sincos"])
def test_dropout_noise_reproduces_the_generator_masks(pe):
    cfg = ModelConfig(pe=pe, num_layers=2, width=16, num_heads=2, ff_width=32, max_position=64)
    model = Transformer(cfg, generator=torch.Generator().manual_seed(0)).train()
    tokens = torch.randint(0, 3, (4, 7), generator=torch.Generator().manual_seed(1))
    positions = torch.arange(7).expand(4, 7)
    expected = model(tokens, positions, generator=torch.Generator().manual_seed(5))
    noise = model.draw_dropout_noise(4, 7, torch.Generator().manual_seed(5))
    assert noise.shape == (model.dropout_sites, 4, 7, 16)
    assert model.dropout_sites == 2 * cfg.num_layers + (pe == "sincos")
    # exact: the generator path draws this same noise and runs the same forward on it
    assert torch.equal(model(tokens, positions, dropout_noise=noise), expected)
    keep = noise >= cfg.dropout  # the bool form the ensemble passes: the same 0/1 factors
    assert torch.equal(model(tokens, positions, dropout_noise=keep), expected)
    with pytest.raises(ValueError, match="dropout_noise"):
        model(tokens, positions, dropout_noise=noise[:1])


# ----------------------------------------------------------------------------- equality
@pytest.mark.parametrize(
    "changes",
    [
        pytest.param(dict(pe="none"), id="none"),
        pytest.param(dict(pe="sincos", randomized=True, max_position=64), id="sincos-randomized"),
        pytest.param(
            dict(pe="relative", randomized=True, max_position=64, randomize="distances"),
            id="relative-distances",
        ),
        pytest.param(
            dict(pe="rope", randomized=True, max_position=64, randomize="distances"),
            id="rope-randomized-per-layer",
        ),
    ],
)
# vmap: other kernels than a single run's (numerics); loop: a single run's arithmetic
@pytest.mark.parametrize("execution", [pytest.param("vmap", marks=pytest.mark.numerics), "loop"])
def test_ensemble_equals_separate_runs(changes, execution):
    configs = members(**changes)
    singles = [Trainer(c) for c in configs]
    for single in singles:
        single.fit(progress=False)
    ensemble = Trainer(configs, execution=execution)
    ensemble.fit(progress=False)
    for single, model, trainer in zip(singles, ensemble.models(), ensemble.members, strict=True):
        assert_same_training(single, model, trainer.history)
    # evaluation: same sequences and positions, every model scored in one batched pass
    lengths = [1, 4, 8]
    with EvalLogits() as together:
        batched = ensemble.evaluate(progress=False, lengths=lengths)
    for i, (single, result) in enumerate(zip(singles, batched, strict=True)):
        with EvalLogits() as seen:
            alone = single.evaluate(progress=False, lengths=lengths)[0].per_length
        assert_same_evaluation(single.config, result.per_length, alone, together, seen, copy=i)


@pytest.mark.numerics
def test_divergent_member_fails_alone():
    configs = members(pe="none", steps=4)
    singles = [Trainer(c) for c in configs]
    for i in (0, 2):
        singles[i].fit(progress=False)
    ensemble = Trainer(configs, execution="vmap")
    with torch.no_grad():
        ensemble.params["head.bias"][1] = float("nan")  # member 1 diverges at its first step
    ensemble.fit(progress=False)
    assert list(ensemble.failed) == [1]
    assert "loss became nan at step 1" in str(ensemble.failed[1])
    models = ensemble.models()
    for i in (0, 2):
        assert_same_training(singles[i], models[i], ensemble.members[i].history)


# ----------------------------------------------------------------------------- run files
def test_train_ensemble_writes_what_train_writes(tmp_path):
    configs = members(pe="rope", steps=4)[:2]
    outcomes = train_runs(configs, [tmp_path / "a", tmp_path / "b"], progress=False)
    alone = train(configs[0], tmp_path / "alone", progress=False)
    first = outcomes[0]
    assert isinstance(first, dict)
    assert set(first) == set(alone)
    assert set(first["timings"]) == set(alone["timings"]) | {"ensemble_size"}
    assert first["timings"]["ensemble_size"] == 2
    assert first["run_id"] == alone["run_id"]
    assert first["per_length"] == pytest.approx(alone["per_length"], abs=1e-9)
    assert first["final_loss"] == pytest.approx(alone["final_loss"], rel=1e-5)
    names = sorted(p.name for p in (tmp_path / "alone").iterdir())
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == names
    assert json.loads((tmp_path / "a" / "summary.json").read_text()) == first
    # a finished run resumes as a no-op
    again = train_runs(configs, [tmp_path / "a", tmp_path / "b"], resume=True, progress=False)
    assert again == outcomes


class _StopAt:
    """A stop flag that trips once the ensemble reaches ``step``."""

    def __init__(self, ensemble: Trainer, step: int) -> None:
        self.ensemble, self.step = ensemble, step

    def __bool__(self) -> bool:
        return self.ensemble.step >= self.step


def test_interrupted_ensemble_resumes_exactly_and_checkpoints_are_single_run_files(tmp_path):
    configs = members(pe="relative", randomized=True, max_position=64, randomize="distances")
    full = train_runs(configs, [tmp_path / f"full{i}" for i in range(3)], progress=False)

    dirs = [tmp_path / f"cut{i}" for i in range(3)]
    for d, c in zip(dirs, configs, strict=True):
        d.mkdir()
        (d / "config.json").write_text(json.dumps(c.to_dict()))
    ensemble = Trainer(configs)
    with pytest.raises(TrainingInterrupted):
        ensemble.fit(
            checkpoints=[d / CHECKPOINT for d in dirs], stop=_StopAt(ensemble, 2), progress=False
        )
    # member 2 alone through the single-run trainer, members 0 and 1 as an ensemble
    alone = train(configs[2], dirs[2], resume=True, progress=False)
    resumed = train_runs(configs[:2], dirs[:2], resume=True, progress=False)
    for got, ref in zip([*resumed, alone], full, strict=True):
        assert got["per_length"] == pytest.approx(ref["per_length"], abs=1e-9)
        assert got["final_loss"] == pytest.approx(ref["final_loss"], rel=1e-5, abs=1e-6)
        assert got["run_id"] == ref["run_id"]


def test_train_ensemble_records_runs_in_the_store(tmp_path):
    from randpos.results.store import ResultsStore

    store = ResultsStore(tmp_path / "store.sqlite")
    configs = members(pe="none", steps=2)[:2]
    outcomes = train_runs(
        configs, [tmp_path / "a", tmp_path / "b"], store=store, progress=False, sweep="s"
    )
    for outcome in outcomes:
        assert store.status(outcome["run_id"]) == "done"


def test_best_strategy_is_a_known_kind():
    strategy = best_strategy("cpu")
    assert strategy.kind in ("ensemble", "processes")
    assert strategy.ensemble_size >= 1 and strategy.workers >= 1
