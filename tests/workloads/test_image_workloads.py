"""The image workloads on the one loop: tiny ViT and DiT runs train, write their files,
resume bit-exactly, train as ensembles equal to separate runs, sweep into the store and
reach the report's images section; bad input gets one-line errors naming the field."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import TINY_IMAGES

from randpos.core.fields import ConfigError
from randpos.loop.training import CHECKPOINT, Trainer, TrainingInterrupted, train
from randpos.results.report import write_report
from randpos.results.store import ResultsStore
from randpos.sweep import LocalExecutor, expand, load_spec, parse_spec, run_sweep
from randpos.workloads import resolve_config
from randpos.workloads.config import TrainConfig

TINY = dict(
    TINY_IMAGES,
    workload="vit",
    eval_max_length=16,
    num_layers=1,
    options={"eval_sides": "8,12,16", "eval_count": 20},
)
DIT_OPTIONS = {"eval_samples": 20, "sample_steps": 2, "feature_steps": 5}


def tiny(**changes) -> TrainConfig:
    dit = {"options": DIT_OPTIONS} if changes.get("workload") == "dit" else {}
    return resolve_config(TINY, dit, changes)  # each layer's options complete the last's


@pytest.fixture(autouse=True)
def feature_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def test_a_tiny_vit_trains_and_writes_its_files(tmp_path):
    summary = train(
        tiny(randomized=True, per_sequence_positions=True), tmp_path / "r", progress=False
    )
    assert summary["workload"] == "vit" and summary["train_side"] == 8
    assert sorted(summary["per_length"], key=int) == ["8", "12", "16"]
    assert set(summary["size_metrics"]["16"]) == {"accuracy", "loss"}
    assert summary["eval_positions"] == "random"
    csv = (tmp_path / "r" / "metrics.csv").read_text().splitlines()
    assert csv[0] == "resolution,accuracy,loss" and len(csv) == 4


def test_a_tiny_dit_trains_samples_and_writes_its_pictures(tmp_path):
    cfg = tiny(
        workload="dit",
        randomized=True,
        options={"augment": "crop", "micro_cond": True},
    )
    summary = train(cfg, tmp_path / "r", progress=False)
    metrics = summary["size_metrics"]["16"]
    assert {"sample_accuracy", "denoise", "denoise_t0.5", "fd", "kid", "mean_ink"} <= set(metrics)
    assert all(v == v for v in metrics.values())  # no NaN
    with np.load(tmp_path / "r" / "samples.npz") as arrays:
        assert sorted(arrays) == ["side_12", "side_16", "side_8"]
        assert arrays["side_16"].shape == (20, 16, 16) and arrays["side_16"].dtype.name == "uint8"
    assert (tmp_path / "r" / "samples.png").stat().st_size > 0


class StopAt:
    def __init__(self, trainer: Trainer, step: int) -> None:
        self.trainer, self.step = trainer, step

    def __bool__(self) -> bool:
        return self.trainer.step >= self.step


@pytest.mark.parametrize("workload", ["vit", "dit"])
def test_an_interrupted_image_run_resumes_bit_exactly(tmp_path, workload):
    cfg = tiny(workload=workload, randomized=True, per_sequence_positions=True)
    straight = train(cfg, tmp_path / "straight", progress=False)
    out = tmp_path / "cut"
    out.mkdir()
    trainer = Trainer(cfg)
    with pytest.raises(TrainingInterrupted):
        trainer.fit(checkpoints=out / CHECKPOINT, stop=StopAt(trainer, 5), progress=False)
    resumed = train(cfg, out, resume=True, progress=False)
    assert resumed["final_loss"] == straight["final_loss"]
    assert resumed["size_metrics"] == straight["size_metrics"]


@pytest.mark.numerics
def test_an_image_ensemble_equals_separate_runs():
    """Exact: the "loop" execution (CPU's default, named here so that it holds on CUDA too)
    runs each member with the very ops of a single run, on its slices of the stacked weights
    and batches (randpos.loop.trainer), so the same machine gives the same numbers bit for bit."""
    configs = [tiny(seed=s, pe="sincos2d", randomized=True) for s in (0, 1)]
    ensemble = Trainer(configs, execution="loop")
    ensemble.fit(progress=False)
    for config, member in zip(configs, ensemble.members, strict=True):
        alone = Trainer(config, execution="loop")
        alone.fit(progress=False)
        ours = [(r["step"], r["loss"]) for r in member.history]
        theirs = [(r["step"], r["loss"]) for r in alone.history]
        assert ours == theirs


def test_training_leaves_the_global_rng_alone(tmp_path):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    train(tiny(workload="dit", randomized=True), tmp_path / "r", progress=False)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"pe": "rope"}, r"rope.*2D|position"),
        ({"max_position": 4}, r"max_position \(L=4\)"),
        ({"options": {"eval_sides": "8,9"}}, r"options.eval_sides: canvas side 9 .*patch=2"),
        ({"workload": "dit", "options": {"eval_sides": "4,8"}}, r"options.eval_sides: side 4 < 8"),
        ({"max_train_length": 7}, r"max_train_length: canvas side 7"),
        ({"dropout": 0.1}, r"dropout=0.1"),
        ({"pe": "learned2d", "options": {"pi": True}, "randomized": True}, r"options.pi"),
        ({"options": {"augment": "zoom"}}, r"options.augment"),
        ({"pe.scaling": "ntk", "pe.factor": 2.0}, r"pe.factor=2.0"),
    ],
)
def test_bad_image_configs_fail_with_one_line_naming_the_field(changes, message):
    with pytest.raises(ConfigError, match=message) as info:
        tiny(**changes).validate()
    assert "\n" not in str(info.value)


def test_a_2d_encoding_on_the_1d_encoder_is_refused():
    with pytest.raises(ConfigError, match="sincos2d"):
        resolve_config(task="parity_check", pe="sincos2d")


def test_image_presets_expand_and_validate():
    full, smoke = load_spec("images"), load_spec("images_smoke")
    runs = expand(full)  # every run's config is resolved and validated
    assert len(full.arms) >= 20 and len(runs) == 3 * len(full.arms)
    pes = {(c["workload"], c["pe"]) for c in runs.values()}
    for workload in ("dit", "vit"):
        for pe in ("none", "learned2d", "sincos2d", "rope2d_axial", "rope2d_mixed"):
            assert (workload, pe) in pes
    assert 0 < len(expand(smoke)) < len(runs)


def test_an_image_sweep_reaches_the_report(tmp_path):
    spec = parse_spec(
        {
            "name": "img",
            "base": {**TINY, "workload": "dit", "options": {**TINY["options"], **DIT_OPTIONS}},
            "arms": [{"pe": "none"}, {"pe": "sincos2d", "randomized": True}],
            "grid": {"seed": [0]},
        }
    )
    store = ResultsStore(tmp_path / "r.sqlite")
    result = run_sweep(spec, store, LocalExecutor(1), runs_dir=tmp_path / "runs", progress=False)
    assert (result.done, result.failed) == (2, 0)
    paths = write_report(store, tmp_path / "report", sweep="img")
    text = paths["markdown"].read_text()
    assert "## Images" in text and "sincos2d randomized" in text
    assert (tmp_path / "report" / "images_metrics.csv").is_file()
