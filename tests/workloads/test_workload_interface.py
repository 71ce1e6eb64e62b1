"""The workload interface and the one loop.

* the paper's workload (``encoder``) gives the numbers recorded before the loop was rewritten
  (tests/data/reference_runs.json, every PE plain and randomized), to what another CPU's
  rounding allows;
* a workload defined in the tests alone (tests/toy_workload.py) trains, resumes bit-exactly
  after an interruption, runs in a sweep as ensembles of two and appears in the report.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from numerics import EPS32, EPS64, magnitude
from trajectories import (
    EvalLogits,
    assert_same_accuracies,
    flip_bound,
    logit_atol,
    loss_atol,
    near_ties,
)

from randpos.core.fields import ConfigError
from randpos.loop.training import CHECKPOINT, Trainer, TrainingInterrupted, train
from randpos.results.report import write_report
from randpos.results.store import ResultsStore
from randpos.sweep import LocalExecutor, parse_spec, run_sweep
from randpos.workloads import Workload, build_workload, get_workload, resolve_config
from randpos.workloads.config import TrainConfig

DATA = Path(__file__).resolve().parents[1] / "data"
RECORDED = json.loads((DATA / "reference_runs.json").read_text())
TOY = dict(
    workload="toy_workload:MeanRegression",
    options={"hidden": 6},
    steps=100,
    batch_size=16,
    learning_rate=3e-2,
    max_train_length=4,
    eval_max_length=8,
    eval_batch_size=64,
    eval_sub_batch_size=16,
    log_every=5,
    checkpoint_every=20,
    device="cpu",
)


def toy(**changes) -> TrainConfig:
    return resolve_config(TOY, **changes)


# ----------------------------------------------------------------------------- the encoder
@pytest.fixture
def one_thread():
    """The recording's thread count: CPU reductions split across threads round differently."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class TrainLogits:
    """Records the logits (K, B, k, C) and masks (K, B, k) the encoder's training accuracy is
    computed from, one entry per step."""

    def __init__(self) -> None:
        self.steps: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __enter__(self) -> TrainLogits:
        from randpos.workloads.encoder import EncoderWorkload

        self._saved = EncoderWorkload.train_metric

        def train_metric(workload, aux, batch):
            self.steps.append((aux.detach().clone(), batch["mask"].clone()))
            return self._saved(workload, aux, batch)

        EncoderWorkload.train_metric = train_metric
        return self

    def __exit__(self, *exc) -> None:
        from randpos.workloads.encoder import EncoderWorkload

        EncoderWorkload.train_metric = self._saved


def train_accuracy_bound(config: TrainConfig, seen: TrainLogits, tol: float) -> float:
    """How far the logged training accuracy (the mean of the last log window's batch
    accuracies, correct / counted in float32) of logits within tol of these may be."""
    window = config.steps - (config.steps - 1) // config.log_every * config.log_every
    bound = 0.0
    for logits, mask in seen.steps[-window:]:
        near = int(near_ties(logits[0], mask[0], tol).sum())
        # each near tie may flip one hit; a changed count also rounds the float32 ratio once
        bound += (near / int(mask[0].sum()) + 2 * EPS32) if near else 0.0
    return bound / window


@pytest.mark.numerics
@pytest.mark.parametrize(
    "record",
    RECORDED,
    ids=[
        f"{r['config']['pe']}-{r['config'].get('randomize', 'plain') if r['config'].get('randomized') else 'plain'}-{i}"  # noqa: E501
        for i, r in enumerate(RECORDED)
    ],
)
def test_encoder_runs_give_the_numbers_recorded_before_the_one_loop(record, one_thread):
    """The recording was made on an AMD CPU; another CPU (kernel set, matrix library) rounds
    every step of the run differently. So the final loss agrees to the training tolerance of
    tests/loop/test_ensemble.py (EPS32 x num_layers x steps x sqrt(batch x outputs) x the loss), and
    the accuracies exactly but for predictions within twice the logit tolerance (EPS32 x
    num_layers x (steps + 1) x sqrt(T or ff_width) x max|logit|) of a tie, whose hit may flip:
    on an Intel CPU (AVX-512 kernels) the loss differed by ~1e-8 relative and every accuracy
    was identical."""
    config = resolve_config(record["config"])
    with EvalLogits() as seen, TrainLogits() as train_seen:
        summary = train(config, progress=False)
    assert summary["run_id"] == record["run_id"]
    assert summary["num_parameters"] == record["num_parameters"]
    tol = logit_atol(config, seen.scale())
    got, want = summary["per_length"], record["per_length"]
    assert_same_accuracies(got, want, seen, tol, config.eval_sub_batch_size)
    bounds = {int(n): flip_bound(*seen.at(int(n)), tol, config.eval_sub_batch_size) for n in want}
    n = config.max_train_length
    for key, lengths in (
        ("id_accuracy", range(1, n + 1)),
        ("ood_accuracy", range(n + 1, config.eval_max_length + 1)),
    ):
        bound = sum(bounds[i] for i in lengths) / len(lengths)
        bound += 4 * EPS64 if bound else 0.0
        assert abs(summary[key] - record[key]) <= bound, key
    train_tol = logit_atol(config, magnitude(*(t for t, _ in train_seen.steps)))
    bound = train_accuracy_bound(config, train_seen, train_tol)
    assert abs(summary["final_train_accuracy"] - record["final_train_accuracy"]) <= bound
    loss = torch.tensor(summary["final_loss"], dtype=torch.float64)
    want_loss = torch.tensor(record["final_loss"], dtype=torch.float64)
    torch.testing.assert_close(loss, want_loss, atol=loss_atol(config, want_loss), rtol=0)


def test_the_encoder_is_the_default_and_new_fields_keep_old_run_ids():
    from randpos.loop.identity import config_hash

    config = TrainConfig()
    assert config.workload == "encoder" and config.options == {}
    old_style = {k: v for k, v in config.to_dict().items() if k not in ("workload", "options")}
    assert config_hash(old_style) == config_hash(config.to_dict())
    assert config_hash(toy().to_dict()) != config_hash(toy(options={"hidden": 9}).to_dict())


# ----------------------------------------------------------------------------- configuration
def test_workload_and_option_errors_name_the_field():
    with pytest.raises(ConfigError, match="workload"):
        resolve_config(workload="nope")
    with pytest.raises(ConfigError, match="hiden.*did you mean 'hidden'"):
        toy(options={"hiden": 3})
    with pytest.raises(ConfigError, match="options.hidden must be an integer"):
        toy(**{"options.hidden": "wide"})
    assert toy(**{"options.hidden": "5"}).options == {"hidden": 5}  # CLI form, coerced
    assert toy(options={"hidden": 8, "tolerance": 0.05}).options == {}  # defaults: not stored
    with pytest.raises(ConfigError, match="options"):
        resolve_config(options={"hidden": 3})  # the encoder takes none
    assert issubclass(get_workload("toy_workload:MeanRegression"), Workload)


# ----------------------------------------------------------------------------- a new workload
def test_a_test_workload_trains_and_writes_every_run_file(tmp_path):
    summary = train(toy(), tmp_path / "run", progress=False)
    history = [json.loads(x) for x in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    assert summary["workload"] == "toy_workload:MeanRegression"
    assert sorted(summary["per_length"], key=int) == [str(n) for n in range(1, 9)]
    assert summary["id_accuracy"] > 0.5  # within 0.05 of the mean, most of the time
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"summary.json", CHECKPOINT, "model.safetensors", "per_length.csv"} <= names


def test_a_workload_without_generation_refuses_examples_in_one_line():
    workload = build_workload(toy())
    with pytest.raises(ConfigError, match="has no generation") as info:
        workload.examples(None, 4, count=2, seed=0)
    assert "\n" not in str(info.value)


class StopAt:
    def __init__(self, trainer: Trainer, step: int) -> None:
        self.trainer, self.step = trainer, step

    def __bool__(self) -> bool:
        return self.trainer.step >= self.step


def test_a_test_workload_resumes_bit_exactly(tmp_path):
    straight = train(toy(), tmp_path / "straight", progress=False)
    out = tmp_path / "cut"
    out.mkdir()
    trainer = Trainer(toy())
    with pytest.raises(TrainingInterrupted):
        trainer.fit(checkpoints=out / CHECKPOINT, stop=StopAt(trainer, 33), progress=False)
    resumed = train(toy(), out, resume=True, progress=False)
    assert resumed["per_length"] == straight["per_length"]
    assert resumed["final_loss"] == straight["final_loss"]
    a = torch.load(tmp_path / "straight" / CHECKPOINT, weights_only=False)["model"]
    b = torch.load(out / CHECKPOINT, weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_test_workload_ensemble_equals_separate_runs():
    configs = [toy(seed=s, learning_rate=lr) for s, lr in ((0, 3e-2), (1, 1e-2))]
    ensemble = Trainer(configs)
    ensemble.fit(progress=False)
    for config, member in zip(configs, ensemble.members, strict=True):
        alone = Trainer(config)
        alone.fit(progress=False)

        def numbers(history):
            return [(r["step"], r["loss"], r["accuracy"]) for r in history]

        assert numbers(member.history) == numbers(alone.history)  # loop: the same arithmetic


def test_a_test_workload_sweeps_as_ensembles_of_two_and_reaches_the_report(tmp_path):
    spec = parse_spec(
        {
            "name": "toy",
            "base": TOY,
            "grid": {"seed": [0, 1], "options.hidden": [4, 8]},
        }
    )
    store = ResultsStore(tmp_path / "r.sqlite")
    result = run_sweep(
        spec,
        store,
        LocalExecutor(1),
        ensemble_size=2,
        runs_dir=tmp_path / "runs",
        progress=False,
    )
    assert (result.done, result.failed) == (4, 0)
    summaries = [store.get_run(r)["summary"] for r in store.runs()["run_id"]]
    assert all(s["timings"]["ensemble_size"] == 2 for s in summaries)
    paths = write_report(store, tmp_path / "report", sweep="toy")
    text = paths["markdown"].read_text()
    assert "## Workload toy_workload:MeanRegression" in text
    assert "Table 1" not in text  # no encoder run in this store
    assert "| options.hidden | runs |" in text
    assert paths["figure_workload_toy_workload_MeanRegression"].is_file()
