"""Training loop, evaluation metrics, determinism and exact resume."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tiny import TINY_BASE
from trajectories import StopAt

from randpos.core.fields import ConfigError
from randpos.loop.training import CHECKPOINT, Trainer, TrainingInterrupted, train
from randpos.workloads import resolve_config
from randpos.workloads.config import TrainConfig
from randpos.workloads.evaluation import mean_over

TINY = dict(
    TINY_BASE,
    pe="rope",
    steps=24,
    batch_size=16,
    learning_rate=3e-3,
    log_every=4,
    checkpoint_every=8,
)


def tiny(**changes) -> TrainConfig:
    return resolve_config(TINY, **changes)


def test_short_training_run_drives_the_loss_down():
    cfg = tiny(steps=150, log_every=10, task="bucket_sort", pe="none")
    trainer = Trainer(cfg)
    trainer.fit(progress=False)
    losses = [record["loss"] for record in trainer.history]
    assert len(losses) == 15
    assert all(math.isfinite(loss) for loss in losses)
    # Chance level for 5 classes is ln 5 ~ 1.61; sorting is learnable well below that.
    assert losses[-1] < 0.8 * losses[0]


def test_summary_metrics_are_the_per_length_means(tmp_path):
    cfg = tiny()
    summary = train(cfg, tmp_path / "run", progress=False)
    per_length = {int(n): a for n, a in summary["per_length"].items()}
    assert sorted(per_length) == list(range(1, cfg.eval_max_length + 1))
    n = cfg.max_train_length
    assert summary["id_accuracy"] == pytest.approx(sum(per_length[i] for i in range(1, n + 1)) / n)
    ood = [per_length[i] for i in range(n + 1, cfg.eval_max_length + 1)]
    assert summary["ood_accuracy"] == pytest.approx(sum(ood) / len(ood))
    assert all(0.0 <= a <= 1.0 for a in per_length.values())
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk == summary
    for key in ("task", "pe", "randomized", "steps", "seed", "id_accuracy", "ood_accuracy"):
        assert key in on_disk
    for name in (
        "model.safetensors",
        "per_length.csv",
        "accuracy.png",
        "history.jsonl",
        "config.json",
        CHECKPOINT,
    ):
        assert (tmp_path / "run" / name).is_file(), name
    # No temporary files are left behind.
    assert not list((tmp_path / "run").glob("*.tmp*"))


def test_mean_over_ignores_missing_lengths():
    assert mean_over({1: 1.0, 2: 0.0, 5: 0.5}, 1, 3) == pytest.approx(0.5)
    assert math.isnan(mean_over({}, 1, 3))


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"randomized": True, "max_position": 64},
        {"pe": "alibi", "randomized": True, "max_position": 64, "randomize": "distances"},
        {"pe": "sincos", "randomized": True, "max_position": 64, "per_sequence_positions": True},
    ],
)
def test_same_seed_same_results(tmp_path, changes):
    cfg = tiny(steps=8, **changes)
    a = train(cfg, tmp_path / "a", progress=False)
    b = train(cfg, tmp_path / "b", progress=False)
    assert a["per_length"] == b["per_length"]
    assert a["final_loss"] == b["final_loss"]
    c = train(cfg.replace(seed=1), tmp_path / "c", progress=False)
    assert c["final_loss"] != a["final_loss"]


@pytest.mark.parametrize("stop_at", [5, 8])  # between checkpoints, and exactly on one
def test_interrupt_and_resume_equals_uninterrupted(tmp_path, stop_at):
    cfg = tiny(randomized=True, max_position=64, pe="relative", randomize="distances")
    reference = train(cfg, tmp_path / "straight", progress=False)

    out = tmp_path / "interrupted"
    out.mkdir()
    trainer = Trainer(cfg)
    with pytest.raises(TrainingInterrupted) as info:
        trainer.fit(checkpoints=out / CHECKPOINT, stop=StopAt(trainer, stop_at), progress=False)
    assert info.value.step == stop_at
    resumed = train(cfg, out, resume=True, progress=False)
    assert resumed["per_length"] == reference["per_length"]
    assert resumed["final_loss"] == reference["final_loss"]
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history] == list(range(4, cfg.steps + 1, 4))


def test_resuming_a_finished_run_is_a_no_op(tmp_path):
    cfg = tiny(steps=4)
    first = train(cfg, tmp_path / "r", progress=False)
    assert train(cfg, tmp_path / "r", resume=True, progress=False) == first


def test_existing_output_directory_needs_resume_or_overwrite(tmp_path):
    cfg = tiny(steps=2)
    train(cfg, tmp_path / "r", progress=False)
    with pytest.raises(ConfigError, match="--resume"):
        train(cfg, tmp_path / "r", progress=False)
    again = train(cfg.replace(seed=3), tmp_path / "r", overwrite=True, progress=False)
    assert again["seed"] == 3


def test_resume_with_a_different_config_is_refused(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    trainer = Trainer(tiny())
    with pytest.raises(TrainingInterrupted):
        trainer.fit(checkpoints=out / CHECKPOINT, stop=StopAt(trainer, 2), progress=False)
    with pytest.raises(ConfigError, match="learning_rate"):
        train(tiny(learning_rate=1e-4), out, resume=True, progress=False)


def test_unreadable_checkpoint_is_a_clear_error(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read checkpoint"):
        train(tiny(), out, resume=True, progress=False)


def test_evaluation_data_is_shared_across_models_and_length_subsets():
    cfg = tiny()
    trainer = Trainer(cfg)
    full = trainer.evaluate(progress=False)[0].per_length
    part = trainer.evaluate(progress=False, lengths=[3, 7])[0].per_length
    assert part == {3: full[3], 7: full[7]}


def test_global_rng_is_left_untouched():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    trainer = Trainer(tiny(steps=2))
    trainer.fit(progress=False)
    trainer.evaluate(progress=False)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"task": "nope"}, "unknown task 'nope'; valid: even_pairs"),
        ({"pe": "nope"}, "unknown pe 'nope'; valid:"),
        ({"steps": 0}, "steps must be >= 1"),
        ({"batch_size": -2}, "batch_size must be >= 1"),
        ({"eval_max_length": 5}, "must be greater than max_train_length"),
        ({"randomized": True, "max_position": 10}, "max_position"),
        ({"stepz": 3}, "did you mean 'steps'"),
        ({"learning_rate": "fast"}, "learning_rate must be a number"),
        ({"eval_positions": "middle"}, "valid: random, contiguous, spread"),
    ],
)
def test_bad_config_values_name_the_field(changes, match):
    with pytest.raises(ConfigError, match=match):
        tiny(**changes)


def test_reference_reading_redraws_every_layer():
    from randpos.positions import plan_positions

    cfg = tiny(pe="rope", randomized=True, max_position=64, randomize="distances")
    plan = plan_positions(cfg.positions, cfg.num_layers, 3, 10, torch.Generator().manual_seed(0))
    assert plan.distances.shape == (cfg.num_layers, 2, 10)
    assert plan.layer_positions.shape == (cfg.num_layers, 3, 10)
    assert not torch.equal(plan.layer_positions[0], plan.layer_positions[1])
    assert (plan.layer_positions.diff(dim=-1) > 0).all()
    shared = cfg.replace(redraw_per_layer=False).positions
    shared = plan_positions(shared, cfg.num_layers, 3, 10, torch.Generator())
    assert shared.layer_positions is None and shared.distances.shape == (1, 2, 10)
    plain = plan_positions(cfg.replace(randomized=False).positions, 5, 3, 10, torch.Generator())
    assert torch.equal(plain.positions, torch.arange(10).expand(3, 10))
    assert plain.distances is None and plain.layer_positions is None
