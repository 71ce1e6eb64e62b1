"""ARPG (randpos.images.arpg, workload arpg): tokens, orders and schedules against hand-written
oracles; teacher forcing equals one-token-per-step cached decoding; cached parallel decoding
equals the uncached computation; the decoding schedule is followed; a model trained on one
order distribution is queried in others; the workload trains, resumes, ensembles and refuses
bad configs with one line naming the field."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from numerics import assert_close_f32, f32_atol
from tiny import TINY_IMAGES

from randpos.core.fields import ConfigError
from randpos.images.arpg import (
    ARPG,
    ARPGCache,
    binarize,
    decode_counts,
    detokenize,
    generate,
    generation_orders,
    positions_in_order,
    spiral_order,
    tokenize,
)
from randpos.images.models import VisionConfig
from randpos.loop.training import CHECKPOINT, Trainer, TrainingInterrupted, train
from randpos.positions.grid import grid_positions, sample_grid_positions
from randpos.workloads import resolve_config
from randpos.workloads.config import TrainConfig

# The float32 logits of two code paths (cached vs full, fewer vs more queries) differ by rounding:
# up to EPS32 x 4 blocks x sqrt(128) (the feed-forward width, the longest dot product) x max|logit|
# (numerics.f32_atol). Different logits (another position, another context) differ by far more.
DEPTH, WIDTH = 4, 128


def _model(pe: str = "rope2d_axial", depth: int = 4, seed: int = 0) -> ARPG:
    config = VisionConfig(pe=pe, depth=depth, width=32, num_heads=4, max_position=16)
    model = ARPG(config, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():  # the head starts at zero (every logit 0): give it weights to compare
        model.head.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(seed + 1))
    return model.eval()


def _inputs(B: int = 3, h: int = 4, w: int = 5, seed: int = 0, randomized: bool = True):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 16, (B, h * w), generator=g)
    labels = torch.tensor([0, 7, 10, 3, 5, 1][:B])  # 10: the null class
    if randomized:
        positions = sample_grid_positions("random", B, h, w, 16, g)
    else:
        positions = grid_positions(B, h, w)
    orders = generation_orders("random", B, h, w, g)
    return tokens, labels, positions, orders


# --- tokens, orders, schedules ----------------------------------------------------------------


def test_tokens_are_the_bits_of_each_2x2_patch():
    image = torch.zeros(1, 1, 2, 4)
    image[0, 0, 0, 0] = image[0, 0, 1, 1] = 1.0  # patch 0: pixels 0 and 3 -> 1 + 8
    image[0, 0, 0, 3] = 0.7  # patch 1: pixel 1 -> 2 (0.7 > 0.5)
    image[0, 0, 1, 2] = 0.4  # below the threshold
    assert tokenize(image).tolist() == [[9, 2]]
    g = torch.Generator().manual_seed(0)
    canvases = torch.rand(5, 1, 12, 16, generator=g)
    tokens = tokenize(canvases)
    assert tokens.shape == (5, 48) and 0 <= tokens.min() and tokens.max() < 16
    assert torch.equal(detokenize(tokens, 6, 8), binarize(canvases))


def test_orders():
    assert spiral_order(3, 4).tolist() == [0, 1, 2, 3, 7, 11, 10, 9, 8, 4, 5, 6]
    assert spiral_order(1, 3).tolist() == [0, 1, 2]
    for h, w in [(4, 4), (5, 3), (2, 7)]:
        assert sorted(spiral_order(h, w).tolist()) == list(range(h * w))
    g = torch.Generator().manual_seed(0)
    orders = generation_orders("random", 4, 4, 4, g)
    assert all(sorted(row) == list(range(16)) for row in orders.tolist())
    assert len({tuple(row) for row in orders.tolist()}) == 4  # a fresh permutation per sample
    assert generation_orders("raster", 2, 2, 3).tolist() == [list(range(6))] * 2
    with pytest.raises(ValueError, match="order 'zigzag'"):
        generation_orders("zigzag", 1, 2, 2)


@pytest.mark.parametrize("schedule", ["arccos", "linear"])
@pytest.mark.parametrize(("N", "steps"), [(64, 16), (64, 64), (64, 4), (256, 16), (10, 16)])
def test_decode_counts_follow_the_schedule(schedule, N, steps):
    counts = decode_counts(N, steps, schedule)
    assert sum(counts) == N and min(counts) >= 1 and len(counts) == min(steps, N)
    S, done = len(counts), 0
    for s, k in enumerate(counts):  # the schedule's formula, recomputed
        r = (s + 1) / S
        left = math.acos(r) / (math.pi / 2) if schedule == "arccos" else 1 - r
        formula = max(1, N - done - math.floor(N * left))
        assert k == min(formula, N - done - (S - 1 - s))  # one token left for each later step
        done += k
    if steps >= N:
        assert counts == [1] * N


def test_arccos_decodes_few_tokens_first_and_many_last():
    counts = decode_counts(256, 16, "arccos")
    assert counts[0] < 256 / 16 < counts[-1]


# --- the model --------------------------------------------------------------------------------


@pytest.mark.numerics
@pytest.mark.parametrize("pe", ["rope2d_axial", "rope2d_mixed"])
def test_teacher_forcing_equals_cached_decoding_one_token_per_step(pe):
    model = _model(pe)
    tokens, labels, positions, orders = _inputs()
    with torch.no_grad():
        full = model(tokens, labels, positions, orders)  # (B, N, V)
        targets = positions_in_order(positions, orders)
        ordered = tokens.gather(1, orders)
        cache, rows = ARPGCache(), []
        for i in range(tokens.shape[1]):
            fed, at = ordered[:, max(i - 1, 0) : i], targets[:, max(i - 1, 0) : i]
            rows.append(model(fed, labels, at, targets=targets[:, i : i + 1], cache=cache))
    assert cache.length == tokens.shape[1]
    assert_close_f32(torch.cat(rows, dim=1), full, depth=DEPTH, width=WIDTH)


@pytest.mark.numerics
@pytest.mark.parametrize("pe", ["rope2d_axial", "rope2d_mixed"])
def test_cached_parallel_decoding_equals_the_uncached_computation(pe):
    model = _model(pe)
    tokens, labels, positions, orders = _inputs()
    targets = positions_in_order(positions, orders)
    ordered = tokens.gather(1, orders)
    cache, done, previous = ARPGCache(), 0, 0
    with torch.no_grad():
        for k in decode_counts(tokens.shape[1], 5):
            query = targets[:, done : done + k]
            fed, at = ordered[:, previous:done], targets[:, previous:done]
            cached = model(fed, labels, at, targets=query, cache=cache)
            uncached = model(ordered[:, :done], labels, targets[:, :done], targets=query)
            assert_close_f32(cached, uncached, depth=DEPTH, width=WIDTH)
            previous, done = done, done + k


@pytest.mark.numerics
def test_generate_with_and_without_the_cache_gives_the_same_images():
    model = _model()
    _, labels, positions, orders = _inputs(B=4)
    counts = decode_counts(orders.shape[1], 6)
    out = [
        generate(
            model,
            labels,
            positions,
            orders,
            counts,
            cfg_scale=2.0,
            temperature=1.0,
            generator=torch.Generator().manual_seed(5),
            cache=cache,
        )
        for cache in (True, False)
    ]
    assert torch.equal(out[0], out[1])
    assert out[0].shape == orders.shape and 0 <= out[0].min() and out[0].max() < 16


def test_generate_decodes_the_scheduled_number_of_tokens_per_step():
    model = _model()
    _, labels, positions, orders = _inputs(B=2)
    counts = decode_counts(orders.shape[1], 7, "arccos")
    seen = []
    forward = model.forward

    def counting(tokens, labels, positions, *, targets, cache):
        seen.append((tokens.shape[1], targets.shape[1]))
        return forward(tokens, labels, positions, targets=targets, cache=cache)

    model.forward = counting
    generate(model, labels, positions, orders, counts, temperature=0)
    assert [q for _, q in seen] == counts  # queries per step
    assert [f for f, _ in seen] == [0] + counts[:-1]  # each step feeds the previous step's tokens


@pytest.mark.numerics
def test_queries_are_independent_and_carry_their_target_position():
    model = _model()
    tokens, labels, positions, orders = _inputs()
    targets = positions_in_order(positions, orders)
    ordered = tokens.gather(1, orders)
    with torch.no_grad():
        prefix = (ordered[:, :6], labels, targets[:, :6])
        every = model(*prefix, targets=targets[:, 6:])
        some = model(*prefix, targets=targets[:, 9:11])
        assert_close_f32(some, every[:, 3:5], depth=DEPTH, width=WIDTH)
        moved = targets[:, 9:11].clone()
        moved[..., 1] = (moved[..., 1] + 1) % 16
        change = (model(*prefix, targets=moved) - some).abs().max()
        assert change > 100 * f32_atol(some, depth=DEPTH, width=WIDTH)


@pytest.mark.numerics
def test_the_order_changes_the_prediction_only_through_what_was_seen():
    """Two orders with the same first token: the second query (same target) sees the same
    class and token at the same position, so its logits agree."""
    model = _model()
    tokens, labels, positions, _ = _inputs(B=1, randomized=False)
    N = tokens.shape[1]
    first = torch.tensor([[3, 7] + [n for n in range(N) if n not in (3, 7)]])
    second = torch.tensor([[3, 7] + [n for n in reversed(range(N)) if n not in (3, 7)]])
    with torch.no_grad():
        a = model(tokens, labels[:1], positions, first)
        b = model(tokens, labels[:1], positions, second)
    assert_close_f32(a[:, :2], b[:, :2], depth=DEPTH, width=WIDTH)
    assert (a[:, 2:] - b[:, 2:]).abs().max() > 100 * f32_atol(a, depth=DEPTH, width=WIDTH)


def test_the_model_refuses_what_it_cannot_run():
    with pytest.raises(ValueError, match="pe='sincos2d'.*rotary"):
        ARPG(VisionConfig(pe="sincos2d", width=32, num_heads=4))
    with pytest.raises(ValueError, match="depth=1"):
        ARPG(VisionConfig(pe="rope2d_axial", depth=1, width=32, num_heads=4))
    model = _model()
    tokens, labels, positions, orders = _inputs()
    with pytest.raises(ValueError, match="permutation"):
        model(tokens, labels, positions, torch.zeros_like(orders))
    with pytest.raises(ValueError, match="max_position=16"):
        model(tokens, labels, positions + 16, orders)
    with pytest.raises(ValueError, match="tokens must lie"):
        model(tokens + 16, labels, positions, orders)


# --- the workload -----------------------------------------------------------------------------

TINY = dict(
    TINY_IMAGES,
    workload="arpg",
    num_layers=2,
    options={
        "eval_sides": "8,12,16",
        "eval_count": 20,
        "eval_samples": 20,
        "feature_steps": 5,
        "decode_steps": 4,
    },
)


def tiny(**changes) -> TrainConfig:
    return resolve_config(TINY, changes)  # changes' options complete TINY's


@pytest.fixture
def feature_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def test_a_tiny_arpg_run_trains_samples_and_writes_its_pictures(tmp_path, feature_cache):
    summary = train(tiny(randomized=True), tmp_path / "r", progress=False)
    assert summary["workload"] == "arpg" and summary["gen_order"] == "random"
    metrics = summary["size_metrics"]["16"]
    assert {"sample_accuracy", "nll_random", "nll_raster", "fd", "kid", "mean_ink"} <= set(metrics)
    assert all(v == v for v in metrics.values())  # no NaN
    assert 0 < metrics["nll_random"] < 2 * math.log(16)
    with np.load(tmp_path / "r" / "samples.npz") as arrays:
        assert sorted(arrays) == ["side_12", "side_16", "side_8"]
        assert set(np.unique(arrays["side_16"])) <= {0, 255}  # binary canvases


def test_an_interrupted_arpg_run_resumes_bit_exactly(tmp_path, feature_cache):
    cfg = tiny(randomized=True, options={"eval_sides": "8", "train_order": "raster"})
    straight = train(cfg, tmp_path / "straight", progress=False)
    out = tmp_path / "cut"
    out.mkdir()
    trainer = Trainer(cfg)

    class StopAt:
        def __bool__(self) -> bool:
            return trainer.step >= 5

    with pytest.raises(TrainingInterrupted):
        trainer.fit(checkpoints=out / CHECKPOINT, stop=StopAt(), progress=False)
    resumed = train(cfg, out, resume=True, progress=False)
    assert resumed["final_loss"] == straight["final_loss"]
    assert resumed["size_metrics"] == straight["size_metrics"]


@pytest.mark.numerics
def test_an_arpg_ensemble_equals_separate_runs():
    configs = [tiny(seed=s, pe="rope2d_mixed", pe_options={"theta": 10.0}) for s in (0, 1)]
    ensemble = Trainer(configs)
    ensemble.fit(progress=False)
    for config, member in zip(configs, ensemble.members, strict=True):
        alone = Trainer(config)
        alone.fit(progress=False)
        for a, b in zip(member.history, alone.history, strict=True):
            assert a["step"] == b["step"] and a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_a_model_trained_on_random_orders_is_queried_in_other_orders():
    """A short random-order training run, then the held-out NLL in raster and spiral order
    (orders it was never trained on as such): well below the tokens' unigram entropy (so the
    context is used in those orders too) and as low as in random order."""
    cfg = tiny(steps=250, batch_size=32, max_train_length=16, width=32, num_heads=4, ff_width=64)
    trainer = Trainer(cfg)
    trainer.fit(progress=False)
    model = trainer.members[0].model.eval()
    real, labels = trainer.workload.eval_images(16)
    tokens = tokenize(binarize(real))
    frequencies = torch.bincount(tokens.flatten(), minlength=16).double() / tokens.numel()
    seen = frequencies[frequencies > 0]
    unigram = float(-(seen * seen.log()).sum())
    positions = grid_positions(1, 8, 8)
    nll = {}
    with torch.no_grad():
        for kind in ("random", "raster", "spiral"):
            orders = generation_orders(kind, len(labels), 8, 8, torch.Generator().manual_seed(0))
            logits = model(tokens, labels, positions, orders)
            target = tokens.gather(1, orders).flatten()
            nll[kind] = float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), target))
    for kind in ("raster", "spiral"):
        assert nll[kind] < unigram - 0.2, (nll, unigram)
        assert abs(nll[kind] - nll["random"]) < 0.1, nll


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"pe": "sincos2d"}, r"pe='sincos2d'.*rotary"),
        ({"pe.scaling": "ntk"}, r"pe.scaling='ntk'"),
        ({"num_layers": 1}, r"depth=1"),
        ({"options": {"train_order": "spiral"}}, r"options.train_order"),
        ({"options": {"gen_order": "zigzag"}}, r"options.gen_order"),
        ({"options": {"schedule": "cosine"}}, r"options.schedule"),
        ({"options": {"decode_steps": 0}}, r"options.decode_steps=0"),
        ({"options": {"temperature": -1.0}}, r"options.temperature"),
        ({"options": {"patch": 4}, "max_train_length": 16}, r"options.patch=4"),
        ({"options": {"sample_steps": 8}}, r"options.sample_steps: a DiT option"),
        ({"options": {"micro_cond": True}}, r"options.micro_cond: a DiT option"),
        ({"max_position": 4}, r"max_position \(L=4\)"),
    ],
)
def test_bad_arpg_configs_fail_with_one_line_naming_the_field(changes, message):
    with pytest.raises(ConfigError, match=message) as info:
        tiny(**changes).validate()
    assert "\n" not in str(info.value)


def test_an_arpg_sweep_reaches_the_report_with_its_samples(tmp_path, feature_cache):
    from randpos.results.report import write_report
    from randpos.results.store import ResultsStore
    from randpos.sweep import LocalExecutor, parse_spec, run_sweep

    spec = parse_spec(
        {
            "name": "ar",
            "base": TINY,
            "arms": [{"options.train_order": "raster", "options.gen_order": "raster"}, {}],
            "grid": {"seed": [0]},
        }
    )
    store = ResultsStore(tmp_path / "r.sqlite")
    result = run_sweep(spec, store, LocalExecutor(1), runs_dir=tmp_path / "runs", progress=False)
    assert (result.done, result.failed) == (2, 0)
    paths = write_report(store, tmp_path / "report", sweep="ar")
    text = paths["markdown"].read_text()
    assert "### arpg (trained at S=8)" in text and "**nll_raster**" in text
    assert "train_order=raster" in text and "### ARPG samples" in text
    assert (tmp_path / "report" / "figures" / "arpg_samples_S16.png").is_file()


def test_arpg_presets_expand_and_validate():
    from randpos.sweep import expand, load_spec

    full, smoke = load_spec("arpg"), load_spec("arpg_smoke")
    runs = expand(full)  # every run's config is resolved and validated
    assert len(runs) == 3 * len(full.arms)
    orders = {c["options"].get("train_order", "random") for c in runs.values()}
    assert orders == {"random", "raster"}
    assert {c["positions"]["sampler"] for c in runs.values()} == {"contiguous", "random"}
    assert 0 < len(expand(smoke)) < len(runs)
