"""Reading files that someone else may have written: run directories and stores received from
others. Loading a run never runs its code (docs/protocol.md, "Run directories received from
others"; docs/workloads.md for the workload rule):

* ``checkpoint.pt`` is read with ``torch.load(weights_only=True)`` (:func:`randpos.loop.runs.
  load_checkpoint`): tensors and plain Python data only, so a pickle that would call a function
  is refused before anything runs; ``model.safetensors`` holds tensors and string metadata by
  construction; ``summary.json`` is JSON.
* What was read is checked against what randpos writes before it is used (:func:`check_checkpoint`,
  :func:`check_weights`, :func:`check_adam_state`, :func:`check_summary`): a truncated, foreign or
  mismatched file ends in a one-line :class:`ConfigError`, never a traceback.
* A ``module:Class`` workload is imported only when the user named it: in a config, sweep file or
  ``--set``/``--model`` they pass, or with ``--trust-workload module:Class``
  (:func:`check_workload_trusted`). A config read from a run's files never imports one by itself.

Torch is imported only inside the functions that need it: the sweep leader uses
:func:`check_summary` without it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from randpos.core.fields import ConfigError
from randpos.loop.identity import config_hash
from randpos.workloads import resolve_config
from randpos.workloads.config import TrainConfig

#: The version of the checkpoint format (``randpos.loop.trainer.Member.state``).
CHECKPOINT_VERSION = 1
#: The keys of a checkpoint (``randpos.loop.trainer.Member.state``) and the type each must have.
CHECKPOINT_KEYS = (
    "version",
    "config",
    "step",
    "model",
    "optimizer",
    "generators",
    "curriculum",
    "history",
    "train_seconds",
)


# ----------------------------------------------------------------------------- workloads
def check_workload_trusted(name: Any, trust: str | Iterable[str] | None, source: Any) -> None:
    """``ConfigError`` unless the workload ``name`` that ``source`` (a file) gives may be loaded:
    a registered name (resolved from the registry, nothing imported) or a ``module:Class`` path
    listed in ``trust`` (the user's ``--trust-workload``). Names that are not strings are left
    to the config's own checks."""
    if not isinstance(name, str) or ":" not in name:
        return
    trusted = {trust} if isinstance(trust, str) else set(trust or ())
    if name in trusted:
        return
    raise ConfigError(
        f"{source} names the workload {name!r}, a module:Class path: loading it would import that "
        f"module and run its code, which randpos does only for a workload you name yourself; "
        f"if you trust this run, pass --trust-workload {name}"
    )


def config_from_file(
    data: Any, source: Any, trust: str | Iterable[str] | None = None
) -> TrainConfig:
    """The :class:`TrainConfig` that a run's file holds (the checkpoint's ``config``, the
    safetensors metadata), with the workload rule applied before anything is imported and every
    error one line naming ``source``."""
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise ConfigError(f"{source}: its config is not a mapping of config fields")
    check_workload_trusted(data.get("workload", "encoder"), trust, source)
    try:
        return resolve_config(data)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {_first_line(exc)}") from None
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise ConfigError(f"{source}: invalid config ({error_line(exc)})") from None


# ----------------------------------------------------------------------------- checkpoints
def check_checkpoint(state: Any, source: Any) -> dict[str, Any]:
    """``state`` (what ``torch.load`` returned) if it has the structure of a randpos
    checkpoint, else a one-line ``ConfigError`` naming what is wrong."""

    def bad(what: str) -> ConfigError:
        return ConfigError(f"{source} is not a randpos checkpoint: {what}")

    if not isinstance(state, dict):
        raise bad(f"it holds a {type(state).__name__}, not a mapping")
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if "version" in missing:
        raise bad("it has no version")
    if state["version"] != CHECKPOINT_VERSION:
        raise bad(f"version {state['version']!r}, this randpos reads version {CHECKPOINT_VERSION}")
    if missing:
        raise bad(f"no {', '.join(missing)}")
    if not _is_plain(state["config"]) or not isinstance(state["config"], dict):
        raise bad("its config is not a mapping of plain values")
    if not _is_count(state["step"]):
        raise bad(f"step {state['step']!r} is not a non-negative integer")
    if not _is_tensor_map(state["model"]):
        raise bad("its model is not a mapping of names to tensors")
    optimizer = state["optimizer"]
    if (
        not isinstance(optimizer, dict)
        or not isinstance(optimizer.get("state"), dict)
        or not isinstance(optimizer.get("param_groups"), list)
    ):
        raise bad("its optimizer is not an optimizer state (state, param_groups)")
    generators = state["generators"]
    if not isinstance(generators, dict) or not all(
        isinstance(k, str) and _is_generator_state(v) for k, v in generators.items()
    ):
        raise bad("its generators are not a mapping of names to generator states (uint8 tensors)")
    if not _is_generator_state(state["curriculum"]):
        raise bad("its curriculum is not a generator state (a uint8 tensor)")
    history = state["history"]
    if not isinstance(history, list) or not all(
        isinstance(r, dict) and all(isinstance(k, str) and _is_number(v) for k, v in r.items())
        for r in history
    ):
        raise bad("its history is not a list of records of numbers")
    if not _is_number(state["train_seconds"]) or not state["train_seconds"] >= 0:
        raise bad(f"train_seconds {state['train_seconds']!r} is not a non-negative number")
    return state


def check_weights(model, weights: Any, source: Any, what: str = "weights") -> None:
    """``ConfigError`` unless ``weights`` has exactly the names, shapes and dtypes of
    ``model.state_dict()`` (what ``load_state_dict`` would otherwise fail on with a multi-line
    message, or convert silently)."""
    if not _is_tensor_map(weights):
        raise ConfigError(f"{source}: its {what} are not a mapping of names to tensors")
    expected = model.state_dict()
    problems = []
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    if missing:
        problems.append("missing " + _some(missing))
    if unexpected:
        problems.append("unexpected " + _some(unexpected))
    wrong = [
        f"{k} {tuple(weights[k].shape)} {_dtype(weights[k])} (the model's: "
        f"{tuple(v.shape)} {_dtype(v)})"
        for k, v in expected.items()
        if k in weights and (weights[k].shape != v.shape or weights[k].dtype != v.dtype)
    ]
    if wrong:
        problems.append("wrong shape or dtype " + _some(wrong))
    if problems:
        raise ConfigError(
            f"{source}: its {what} do not match the model its config describes "
            f"({'; '.join(problems)})"
        )


def check_adam_state(state: dict, params: list, source: Any) -> None:
    """``ConfigError`` unless ``state`` (a checkpoint's ``optimizer``) is the state of one Adam
    group over ``params``: a ``step``, ``exp_avg`` and ``exp_avg_sq`` per parameter that has
    taken a step, each moment shaped like its parameter."""

    def bad(what: str) -> ConfigError:
        return ConfigError(f"{source}: its optimizer state does not fit the model ({what})")

    groups = state["param_groups"]
    indices = list(range(len(params)))
    if len(groups) != 1 or not isinstance(groups[0], dict) or groups[0].get("params") != indices:
        raise bad(f"expected one parameter group over {len(params)} parameters")
    for key, entry in state["state"].items():
        if not isinstance(key, int) or isinstance(key, bool) or key not in indices:
            raise bad(f"state for unknown parameter {key!r}")
        if not isinstance(entry, dict) or not all(
            isinstance(entry.get(k), torch.Tensor) for k in ("step", "exp_avg", "exp_avg_sq")
        ):
            raise bad(f"parameter {key} lacks step, exp_avg or exp_avg_sq tensors")
        p = params[key]
        for name in ("exp_avg", "exp_avg_sq"):
            if entry[name].shape != p.shape or entry[name].dtype != p.dtype:
                raise bad(
                    f"parameter {key}: {name} {tuple(entry[name].shape)} {_dtype(entry[name])}, "
                    f"the parameter {tuple(p.shape)} {_dtype(p)}"
                )
        if entry["step"].numel() != 1:
            raise bad(f"parameter {key}: step is not a single number")


# ----------------------------------------------------------------------------- summaries
def check_summary(summary: Any, source: Any) -> dict[str, Any]:
    """``summary`` (a parsed ``summary.json``) if it has what randpos reads from one: a
    ``run_id`` that is the hash of its ``config``, per-length numbers, the two means, N and M
    and the timings; else a one-line ``ConfigError``."""

    def bad(what: str) -> ConfigError:
        return ConfigError(f"{source} is not a randpos run summary: {what}")

    if not isinstance(summary, dict):
        raise bad(f"it holds a {type(summary).__name__}, not a mapping")
    if not isinstance(summary.get("run_id"), str):
        raise bad("no run_id")
    config = summary.get("config")
    if not isinstance(config, dict) or not _is_plain(config):
        raise bad("no config mapping")
    if config_hash(config) != summary["run_id"]:
        raise bad(f"its config does not hash to its run_id {summary['run_id']}")
    per_length = summary.get("per_length")
    if not isinstance(per_length, dict) or not all(
        _is_int_text(k) and _is_number(v) for k, v in per_length.items()
    ):
        raise bad("per_length is not a mapping of sizes to numbers")
    for key in ("id_accuracy", "ood_accuracy"):
        if not _is_number(summary.get(key)):
            raise bad(f"{key} is not a number")
    for key in ("max_train_length", "eval_max_length"):
        if not _is_count(summary.get(key)):
            raise bad(f"{key} is not a non-negative integer")
    timings = summary.get("timings")
    if not isinstance(timings, dict) or not all(
        v is None or _is_number(v) for v in timings.values()
    ):
        raise bad("timings is not a mapping of numbers")
    for key in ("task", "pe", "workload"):
        if key in summary and not isinstance(summary[key], str):
            raise bad(f"{key} is not a string")
    return summary


def read_summary(path: Path) -> dict[str, Any]:
    """A run's ``summary.json``, checked (:func:`check_summary`)."""

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {error_line(exc)}") from None
    return check_summary(data, path)


# ----------------------------------------------------------------------------- helpers
def unpickling_detail(exc: BaseException) -> str:
    """The line of torch's weights-only refusal that says what was refused (its message opens
    with advice to load the file unsafely, which is not what a user of randpos should do)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        low = line.lower()
        if "unsupported" in low or ("global" in low and "allowed" in low):
            return line
    return f"{type(exc).__name__}"


def error_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (``Type`` alone when the message is empty)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _some(items: list[str], shown: int = 3) -> str:
    more = len(items) - shown
    return ", ".join(items[:shown]) + (f" and {more} more" if more > 0 else "")


def _dtype(t) -> str:
    return str(t.dtype).removeprefix("torch.")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_int_text(value: Any) -> bool:
    return isinstance(value, str) and value.isdigit()


def _is_plain(value: Any) -> bool:
    """JSON-like data: None, bools, numbers, strings, and lists/tuples/str-keyed dicts of them."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False


def _is_tensor_map(value: Any) -> bool:
    return isinstance(value, Mapping) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
    )


def _is_generator_state(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.dtype == torch.uint8 and value.dim() == 1


__all__ = [
    "CHECKPOINT_KEYS",
    "check_adam_state",
    "check_checkpoint",
    "check_summary",
    "check_weights",
    "check_workload_trusted",
    "config_from_file",
    "error_line",
    "read_summary",
    "unpickling_detail",
]
