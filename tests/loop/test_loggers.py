"""Metric loggers (randpos.loop.loggers), read back offline: TensorBoard's event files with
TensorBoard's own reader, a W&B offline run from its record log (``run-*.wandb``) and media
files, ``history.jsonl`` line by line. Each is compared with the run's own files (its
summary, per_length.csv, config.json), which the loggers must agree with."""

from __future__ import annotations

import csv
import json
import struct
import sys
import time
from pathlib import Path

import matplotlib.image
import pytest
import yaml
from inline_executor import InlineExecutor
from tiny import TINY_BASE
from trajectories import StopAt

from randpos.core.fields import ConfigError
from randpos.loop.identity import run_id
from randpos.loop.loggers import HISTORY, LOGGER_CLASSES
from randpos.loop.training import CHECKPOINT, Trainer, TrainingInterrupted, train
from randpos.results.store import ResultsStore
from randpos.sweep import run_sweep
from randpos.workloads import resolve_config
from randpos.workloads.config import LOGGERS, TrainConfig

# TensorBoard stores a scalar as float32: a float64 value comes back within its rounding,
# relative 2^-24 (asked as 2^-23 for the float32 value's own half-ulp on either side).
F32_REL = 2.0**-23


def tiny(**changes) -> TrainConfig:
    base = dict(TINY_BASE, steps=8, batch_size=8, log_every=2, checkpoint_every=4)
    return resolve_config({**base, **changes})


def per_length(out: Path) -> dict[int, float]:
    with open(out / "per_length.csv") as f:
        return {int(row["length"]): float(row["accuracy"]) for row in csv.DictReader(f)}


def history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / HISTORY).read_text().splitlines()]


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """W&B with no network, no account and nothing written outside ``tmp_path``."""
    for name, value in {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb-data"),
        "WANDB_PROJECT": "randpos-tests",
    }.items():
        monkeypatch.setenv(name, value)
    return pytest.importorskip("wandb")


# ------------------------------------------------------------------------------ reading back
def tensorboard_events(out: Path):
    """TensorBoard's own reader over the run's event files, everything kept."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(
        str(out / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0}
    )
    events.Reload()
    return events


def tensorboard_hparams(events) -> dict:
    """The hyper-parameters of the run's HParams session (the plugin's protobuf)."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    for content in events.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        if data.WhichOneof("data") == "session_start_info":
            params = data.session_start_info.hparams
            return {k: v.string_value or v.number_value or v.bool_value for k, v in params.items()}
    raise AssertionError("no HParams session in the event files")


def text(events, tag: str) -> str:
    """The text logged under ``tag`` (``add_text`` stores it as ``TAG/text_summary``)."""
    (event,) = events.Tensors(f"{tag}/text_summary")
    return event.tensor_proto.string_val[0].decode()


def wandb_records(run_dir: Path):
    """The records of a W&B offline run's log, ``run-<id>.wandb``: W&B's header (``:W&B``, a
    2-byte magic, a version byte), then LevelDB's log format (32 KiB blocks; each record a
    4-byte CRC, a 2-byte length, a type: full / first / middle / last), each record a
    ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, pieces = 32768, 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        pieces += chunk
        if kind in (1, 4):  # full, or the last piece of a record
            yield wandb_internal_pb2.Record.FromString(pieces)
            pieces = b""
        elif kind == 2:  # the first piece
            pieces = chunk


def key(item) -> str:
    """A W&B history or summary item's key (nested keys joined by '/')."""
    return "/".join(item.nested_key) or item.key


def finished_records(run_dir: Path, timeout: float = 60.0) -> list:
    """The run's records once its log holds the final ``exit`` record: W&B's service process
    writes the log on its own schedule, and may still be writing when ``finish()`` returns."""
    deadline = time.monotonic() + timeout
    while True:
        records = list(wandb_records(run_dir))
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        assert time.monotonic() < deadline, f"{run_dir}: no exit record after {timeout} s"
        time.sleep(0.2)


def wandb_run(out: Path) -> dict:
    """A W&B offline run in ``out/wandb``: its name, group, config, history and summary."""
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    found: dict = {"history": [], "summary": {}, "dir": run_dir}
    for record in finished_records(run_dir):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            found["name"], found["group"] = record.run.display_name, record.run.run_group
            found["project"] = record.run.project
            found["config"] = {
                item.key: json.loads(item.value_json)
                for item in record.run.config.update
                if item.key != "_wandb"
            }
        elif kind == "history":
            found["history"].append(
                {
                    "/".join(i.nested_key) or i.key: json.loads(i.value_json)
                    for i in record.history.item
                }
            )
        elif kind == "summary":
            for item in record.summary.update:
                found["summary"]["/".join(item.nested_key) or item.key] = json.loads(
                    item.value_json
                )
    return found


# ------------------------------------------------------------------------------ the loggers
def test_jsonl_is_the_default_and_tensorboard_writes_what_the_run_wrote(tmp_path):
    pytest.importorskip("tensorboard")
    assert TrainConfig().logger == "jsonl"
    config = tiny(logger="tensorboard,jsonl")
    out = tmp_path / "run"
    summary = train(config, out, progress=False)
    events = tensorboard_events(out)

    curve = history(out)
    assert [r["step"] for r in curve] == [2, 4, 6, 8]
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [2, 4, 6, 8]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in curve], rel=F32_REL)
    accuracy = [e.value for e in events.Scalars("train/accuracy")]
    assert accuracy == pytest.approx([r["accuracy"] for r in curve], rel=F32_REL)

    hparams = tensorboard_hparams(events)
    assert hparams["run_id"] == summary["run_id"] == run_id(config)
    assert hparams["task"] == "reverse_string" and hparams["positions.sampler"] == "contiguous"
    assert hparams["num_layers"] == 2 and hparams["logger"] == "tensorboard,jsonl"
    assert json.loads(text(events, "config").strip("`\n")) == json.loads(
        (out / "config.json").read_text()
    )

    by_length = events.Scalars("eval/accuracy_by_length")
    expected = per_length(out)  # 6 decimals: within 5e-7, plus float32's rounding of a value <= 1
    assert {e.step: e.value for e in by_length} == pytest.approx(expected, abs=5e-7 + F32_REL)
    table = text(events, "eval/per_length").splitlines()
    assert table[0] == "| length | accuracy |" and len(table) == 2 + config.eval_max_length
    assert [e.value for e in events.Scalars("eval/ood_accuracy")] == pytest.approx(
        [summary["ood_accuracy"]], rel=F32_REL
    )
    (image,) = events.Images("eval/figure")
    height, width, _ = matplotlib.image.imread(str(out / "accuracy.png")).shape
    assert (image.width, image.height) == (width, height)  # the run's figure, as drawn


def test_wandb_offline_run_holds_the_config_curve_table_and_figure(tmp_path, offline_wandb):
    config = tiny(logger="wandb")
    out = tmp_path / "run"
    summary = train(config, out, progress=False, sweep="my-sweep")
    assert not (out / HISTORY).exists()  # jsonl was not named
    run = wandb_run(out)

    assert run["name"] == summary["run_id"] and run["group"] == "my-sweep"
    assert run["project"] == "randpos-tests"
    assert run["config"]["run_id"] == summary["run_id"] and run["config"]["sweep"] == "my-sweep"
    assert run["config"]["task"] == "reverse_string" and run["config"]["steps"] == 8
    assert run["config"]["positions"] == json.loads((out / "config.json").read_text())["positions"]

    curve = [h for h in run["history"] if "train/loss" in h]
    assert [h["_step"] for h in curve] == [2, 4, 6, 8]
    assert [h["train/loss"] for h in curve[-1:]] == [summary["final_loss"]]  # JSON: exact

    (table_file,) = run["dir"].glob("files/media/table/eval/per_length_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["length", "accuracy"]
    assert {int(n): a for n, a in table["data"]} == {
        int(n): a for n, a in summary["per_length"].items()
    }
    assert len(list(run["dir"].glob("files/media/images/eval/figure_*.png"))) == 1
    assert run["summary"]["ood_accuracy"] == summary["ood_accuracy"]
    assert run["summary"]["id_accuracy"] == summary["id_accuracy"]


def test_a_sweep_logs_every_run_in_its_group(tmp_path, offline_wandb):
    pytest.importorskip("tensorboard")
    spec = tmp_path / "grouped.yaml"
    base = {**TINY_BASE, "steps": 4, "batch_size": 8, "log_every": 2, "logger": "tensorboard,wandb"}
    spec.write_text(yaml.safe_dump({"name": "grouped", "base": base, "grid": {"seed": [0, 1]}}))
    store = ResultsStore(tmp_path / "r.sqlite")
    result = run_sweep(str(spec), store, InlineExecutor(), ensemble_size=2, progress=False)
    assert (result.done, result.failed) == (2, 0)
    for rid in store.runs(sweep="grouped")["run_id"]:
        out = tmp_path / "sweeps" / "grouped" / rid
        run = wandb_run(out)
        assert (run["name"], run["group"]) == (rid, "grouped")
        hparams = tensorboard_hparams(tensorboard_events(out))
        assert (hparams["run_id"], hparams["sweep"]) == (rid, "grouped")


def test_a_resumed_run_logs_each_step_once(tmp_path):
    """An interrupted run whose loggers wrote past its last checkpoint (a kill between the
    two) resumes with one curve: the JSONL file restarts from the checkpoint's history, and
    TensorBoard purges the events after the checkpoint's step."""
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    config = tiny(logger="jsonl,tensorboard")
    straight = train(config, tmp_path / "straight", progress=False)
    out = tmp_path / "run"
    out.mkdir()
    trainer = Trainer(config)
    with pytest.raises(TrainingInterrupted):
        trainer.fit(checkpoints=out / CHECKPOINT, stop=StopAt(trainer, 4), progress=False)
    with open(out / HISTORY, "w") as f:  # what the killed run had logged, up to step 6
        f.writelines(json.dumps(r) + "\n" for r in trainer.members[0].history)
        f.write(json.dumps({"step": 6, "loss": 123.0, "accuracy": 0.0}) + "\n")
    with SummaryWriter(str(out / "tensorboard")) as late:
        for record in trainer.members[0].history:
            late.add_scalar("train/loss", record["loss"], record["step"])
        late.add_scalar("train/loss", 123.0, 6)

    resumed = train(config, out, resume=True, progress=False)
    assert resumed["final_loss"] == straight["final_loss"]
    assert [r["step"] for r in history(out)] == [2, 4, 6, 8]

    def curve(records):  # timings aside, the resumed curve is the uninterrupted one
        return [{k: v for k, v in r.items() if k != "train_seconds"} for r in records]

    assert curve(history(out)) == curve(history(tmp_path / "straight"))
    loss = tensorboard_events(out).Scalars("train/loss")
    assert [e.step for e in loss] == [2, 4, 6, 8]
    assert 123.0 not in [e.value for e in loss]


def test_the_logger_is_a_run_time_field_checked_up_front(tmp_path, monkeypatch):
    config = tiny()
    for logger in ("tensorboard", "jsonl,wandb", "wandb,tensorboard,jsonl"):
        assert run_id(config.replace(logger=logger)) == run_id(config)
    assert set(LOGGER_CLASSES) == set(LOGGERS)
    with pytest.raises(ConfigError, match="logger must be one or more of jsonl, tensorboard"):
        config.replace(logger="mlflow")
    with pytest.raises(ConfigError, match="logger must be"):
        config.replace(logger="jsonl,")
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if the extra were not installed
    with pytest.raises(ConfigError, match=r"pip install 'randpos\[wandb\]'"):
        train(config.replace(logger="wandb"), tmp_path / "run", progress=False)
