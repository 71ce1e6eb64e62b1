"""The long_context workload: doubling evaluation lengths, exact-match and per-depth scores
against a brute-force scorer, the inline (flip-flop) loss against its definition, cached and
uncached decoding, test-time RoPE scaling, and config errors that name the field."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from numerics import f32_atol
from trajectories import logit_width

from randpos.core.fields import ConfigError
from randpos.loop.training import Trainer, train
from randpos.tasks import get_task
from randpos.tasks.long_context import FlipFlop
from randpos.workloads import get_workload, resolve_config
from randpos.workloads.long_context import doubling_sizes

TINY = dict(
    workload="long_context",
    task="passkey",
    steps=6,
    batch_size=8,
    max_train_length=16,
    eval_max_length=64,
    eval_batch_size=10,
    eval_sub_batch_size=10,
    num_layers=2,
    width=16,
    num_heads=2,
    ff_width=32,
    dropout=0.0,
    device="cpu",
    positions={"max_position": 128},
    log_every=3,
    checkpoint_every=3,
)


def config(**overrides):
    return resolve_config({**TINY, **overrides})


def test_evaluation_lengths_double_from_the_training_length():
    assert doubling_sizes(128, 2048) == [128, 256, 512, 1024, 2048]
    assert doubling_sizes(16, 100) == [16, 32, 64]
    workload = get_workload("long_context")(config())
    assert workload.eval_sizes() == [16, 32, 64] and workload.sizes_up_to(32) == [16, 32]


def test_scores_against_a_brute_force_scorer():
    workload = get_workload("long_context")(config())
    g = torch.Generator().manual_seed(0)
    correct = torch.rand(10, 5, generator=g) < 0.8
    mask = torch.ones(10, 5, dtype=torch.bool)
    scores = workload.scores(correct, mask)
    rows = [bool(r.all()) for r in correct]
    assert scores["accuracy"] == scores["sequence_accuracy"] == sum(rows) / 10
    assert scores["token_accuracy"] == pytest.approx(float(correct.double().mean()), abs=1e-7)
    for b in range(5):  # row r in depth bin r % 5
        mine = [rows[r] for r in range(10) if r % 5 == b]
        assert scores[f"depth_{b}"] == sum(mine) / len(mine)
    flip = get_workload("long_context")(config(task="flip_flop"))
    mask = torch.rand(10, 6, generator=g) < 0.5
    mask[:, -1] = True  # every row has a read
    scores = flip.scores(
        correct[:, :1].expand(10, 6) & (torch.rand(10, 6, generator=g) < 0.9), mask
    )
    assert "depth_0" not in scores and scores["accuracy"] == scores["token_accuracy"]


def test_a_passkey_run_records_every_metric_per_length(tmp_path):
    summary = train(config(pe="fox"), tmp_path / "run", progress=False)
    assert summary["workload"] == "long_context" and summary["decode_positions"] == "plan"
    assert sorted(map(int, summary["per_length"])) == [16, 32, 64]
    for length, metrics in summary["size_metrics"].items():
        assert metrics["accuracy"] == summary["per_length"][length]
        assert set(metrics) == {"accuracy", "token_accuracy", "sequence_accuracy"} | {
            f"depth_{b}" for b in range(5)
        }
    assert summary["id_accuracy"] == summary["per_length"]["16"]


def test_the_inline_loss_is_the_masked_cross_entropy():
    workload = get_workload("long_context")(config(task="flip_flop"))
    model = workload.build_model(torch.Generator().manual_seed(0))
    sample = workload.task.sample(4, 16, torch.Generator().manual_seed(1))
    batch = {
        "tokens": sample.inputs,
        "targets": sample.targets,
        "mask": sample.mask,
        "positions": torch.arange(16)[None],
    }
    loss, logits = workload.loss(model, batch)
    want = F.cross_entropy(logits[sample.mask], sample.targets[sample.mask])
    # the same terms summed in another order: float32 rounding of a mean over <= 32 terms
    assert abs(float(loss.detach()) - float(want.detach())) <= f32_atol(want.detach(), width=32)


def test_flip_flop_takes_its_ignore_probability_from_the_options():
    workload = get_workload("long_context")(
        config(task="flip_flop", options={"ignore_probability": 0.5})
    )
    assert isinstance(workload.task, FlipFlop) and workload.task.ignore_probability == 0.5
    with pytest.raises(ConfigError, match="options.ignore_probability"):
        config(task="flip_flop", options={"ignore_probability": 1.5})


def recorded(trainer: Trainer) -> list[torch.Tensor]:
    """The logits (r, k, C) of every greedy decoding the trainer's evaluation makes, in order."""
    seen, generate = [], trainer.workload.generate

    def record(*args, **kwargs):
        seen.append(generate(*args, **kwargs))
        return seen[-1]

    trainer.workload.generate = record
    return seen


@pytest.mark.numerics
@pytest.mark.parametrize(
    "pe,positions",
    [("rope", {"sampler": "pose"}), ("stick_breaking", {}), ("alibi", {"sampler": "random"})],
)
def test_cached_and_uncached_decoding_score_the_same(pe, positions):
    cfg = config(pe=pe, positions={"max_position": 128, **positions})
    cached = Trainer(cfg)
    cached.fit(progress=False)
    uncached = Trainer(cfg.replace(options={"kv_cache": False}))
    uncached.load_weights([{k: v.clone() for k, v in cached.models()[0].state_dict().items()}])
    got, want = recorded(cached), recorded(uncached)
    (a,), (b,) = cached.evaluate(progress=False), uncached.evaluate(progress=False)
    logits, other = torch.cat(got), torch.cat(want)
    # logits of the same weights along two code paths (one forward per step against the KV
    # cache): EPS32 x layers x sqrt(the longest sum, ff_width or T) x max|logit|
    tol = f32_atol(other, depth=cfg.num_layers, width=logit_width(cfg))
    top = other.topk(2, dim=-1).values
    clear = ((top[..., 0] - top[..., 1]) > 2 * tol).all(-1)  # no near tie in the sequence
    torch.testing.assert_close(logits[clear], other[clear], atol=tol, rtol=0)
    if bool(clear.all()):
        assert a.per_length == b.per_length and a.metrics == b.metrics


def test_every_task_trains_and_evaluates(tmp_path):
    for task in ("niah_multikey", "variable_tracking", "flip_flop"):
        summary = train(config(task=task, pe="rope"), tmp_path / task, progress=False)
        assert sorted(map(int, summary["per_length"])) == [16, 32, 64]
        assert all(0.0 <= a <= 1.0 for a in summary["per_length"].values())


def test_test_time_scaling_trains_plain_rope_and_evaluates_scaled(tmp_path):
    """pe.train_scaling=false: the training steps are plain RoPE's (the same losses), the
    evaluation the scaled model's."""
    yarn = {"scaling": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}
    plain = Trainer(config(pe="rope"))
    at_test = Trainer(config(pe="rope", pe_options={**yarn, "train_scaling": False}))
    for _ in range(3):
        assert plain.train_step()[0] == at_test.train_step()[0]  # the same code and numbers
    assert set(at_test.evaluate(progress=False, lengths=[64])[0].metrics) == {64}
    m = at_test.models()[0]
    m.eval()
    q = torch.randn(1, 2, 3, 8)
    rotated = m.pe.rotate(q, q, torch.tensor([[0, 40, 63]]), 0)[0]
    m.train()
    assert not torch.equal(rotated, m.pe.rotate(q, q, torch.tensor([[0, 40, 63]]), 0)[0])


def test_long_context_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="task"):
        config(task="reverse_string")
    with pytest.raises(ConfigError, match="task"):
        resolve_config({**TINY, "workload": "decoder"})  # the decoder poses the 15 tasks
    with pytest.raises(ConfigError, match="options.decode_positions"):
        config(options={"decode_positions": "arange"})
    with pytest.raises(ConfigError, match="max_position"):
        config(positions={"sampler": "random", "max_position": 40})  # 64 + 5 tokens at M
    with pytest.raises(ConfigError, match="randomized"):
        config(pe="fox", positions={"sampler": "random", "max_position": 128})


def test_the_answer_is_generated_at_the_positions_drawn_with_its_context():
    """PoSE draws can end at L - 1: the evaluation keeps the plan (no placement after it)."""
    workload = get_workload("long_context")(
        config(pe="rope", positions={"sampler": "pose", "max_position": 80})
    )
    task = get_task("passkey")
    T = task.input_length(64) + task.output_length(64)
    from randpos.positions import plan_positions

    plan = plan_positions(
        workload.config.positions, 2, 10, T, torch.Generator().manual_seed(0), mode="random"
    )
    assert workload.place_generated(plan, 5, torch.Generator()) is plan
    assert int(plan.positions.max()) < 80


@pytest.mark.numerics
@pytest.mark.parametrize("pe", ["fire", "alibi", "rope"])
def test_a_shared_position_row_gives_the_loss_of_the_full_batch(pe):
    """Training hands the model one (1, T) row when every row is the same draw: the losses
    equal those of the (B, T) positions (broadcast against the same values)."""
    workload = get_workload("long_context")(config(pe=pe, positions={"sampler": "random"}))
    model = workload.build_model(torch.Generator().manual_seed(0))
    streams = {name: torch.Generator().manual_seed(3) for name in ("data", "positions", "dropout")}
    batch = workload.draw_batch(model, 16, streams, torch.device("cpu"))
    assert batch["positions"].shape[0] == 1
    full = dict(batch, positions=batch["positions"].expand(8, -1))
    shared_loss, full_loss = workload.loss(model, batch)[0], workload.loss(model, full)[0]
    # one forward along two broadcasting paths: EPS32 x 2 layers x sqrt(ff_width) x the loss
    assert abs(float((shared_loss - full_loss).detach())) <= f32_atol(
        full_loss.detach(), depth=2, width=32
    )
