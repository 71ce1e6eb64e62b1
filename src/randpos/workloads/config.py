"""The run configuration as data: one typed dataclass whose defaults are the reference protocol.

Every protocol setting of docs/reference-system.md §2 and §5 is a field of :class:`TrainConfig`;
YAML presets and the CLI only override fields. Two fields are typed groups owned by the layers
they configure: ``positions`` (:class:`randpos.positions.PositionSpec`, where positions come
from) and ``pe_options`` (the encoding's own parameters, declared by the encoding). The
architecture defaults are the model's (:class:`randpos.model.ModelConfig`), written there once.

A config is data: building one checks its own fields (``TrainConfig.from_dict``: unknown fields
and bad values raise a one-line ``ConfigError`` naming the field, the value and what is
allowed, docs/design.md §4.1) and imports no workload. The workload a config names checks the
rest when it is built (:func:`randpos.workloads.build_workload`), and brings its own defaults
(:func:`randpos.workloads.resolve_config`). Configs written before the position spec and the
encoding options existed load through :mod:`randpos.workloads.compat`.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from randpos.core.fields import (
    ConfigError,
    check_choice,
    check_positive,
    coerce_value,
    field_types,
    unknown_fields_error,
)
from randpos.model.attention import ATTENTION_BACKENDS
from randpos.model.config import ModelConfig
from randpos.positions.spec import PositionSpec
from randpos.tasks import get_task
from randpos.workloads.compat import nest

try:
    from importlib.resources.abc import Traversable
except ImportError:  # Python 3.10
    from importlib.abc import Traversable

CURRICULA = ("uniform", "fixed")
PRECISIONS = ("fp32", "bf16")
#: the metric loggers a run may name in ``logger`` (implemented in randpos.loop.loggers)
LOGGERS = ("jsonl", "tensorboard", "wandb")
_MODEL = ModelConfig()  # the architecture defaults, written once (in ModelConfig)


@dataclass
class TrainConfig:
    """Everything that decides a run's result (plus a few run-time knobs such as ``device``).

    Defaults follow the reference: the example script's protocol (docs/reference-system.md §5.1)
    and the papers' settings where the two agree (N = 40, batch 128, clipping 1.0, Adam, uniform
    curriculum).
    """

    # The kind of model (randpos.workloads): "encoder", the algorithmic tasks on the reference
    # encoder, or another registered name or module:Class path; ``options`` holds the
    # workload's own fields (validated by it; ``--set options.NAME=VALUE`` on the CLI).
    workload: str = "encoder"
    options: dict[str, Any] = field(default_factory=dict)

    # What to learn and how positions are encoded.
    task: str = "reverse_string"
    pe: str = _MODEL.pe
    # The encoding's own parameters (``--set pe.NAME=VALUE``, ``pe_options:`` in YAML), stored
    # without the entries equal to their defaults (randpos.encodings.base.normalize_options).
    pe_options: dict[str, Any] = field(default_factory=dict)
    # Where positions come from (``--randomized``, ``-L``, ``--set positions.NAME=VALUE``,
    # ``positions:`` in YAML): the sampler, L, the evaluation mode, the distance reading.
    positions: PositionSpec = field(default_factory=PositionSpec)

    # Training protocol.
    steps: int = 10_000
    batch_size: int = 128
    max_train_length: int = 40  # N
    curriculum: str = "uniform"  # uniform over 1..N (reference) | fixed (always N)
    learning_rate: float = 1e-3
    grad_clip: float = 1.0  # global-norm clipping before Adam
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    seed: int = 0  # init, data, positions and dropout streams
    # The length sequence has its own seed, shared by default: runs that differ only in seed or
    # learning rate then see the same lengths step by step and can train as one ensemble. The
    # reference likewise kept its data seed fixed across the paper's init seeds
    # (docs/reference-system.md §5.2).
    curriculum_seed: int = 0

    # Evaluation protocol (docs/reference-system.md §2.3).
    eval_max_length: int = 100  # M; the papers use 500
    eval_batch_size: int = 512  # sequences per length
    eval_sub_batch_size: int = 64  # accuracy is the mean over sub-batches of this size
    eval_seed: int = 1  # the reference evaluates on a fixed RNG seed

    # Architecture (docs/reference-system.md §3): the model's defaults.
    num_layers: int = _MODEL.num_layers
    width: int = _MODEL.width
    num_heads: int = _MODEL.num_heads
    ff_width: int = _MODEL.ff_width
    dropout: float = _MODEL.dropout
    attention: str = _MODEL.attention
    # Causal (decoder-style) attention mask on the encoder; causal-only encodings need it.
    causal: bool = _MODEL.causal
    # "bf16": autocast the forward pass to bfloat16 (CUDA only). It changes the numbers beyond
    # float noise, so unlike `compile` it is part of the run id.
    precision: str = "fp32"

    # Run-time knobs (do not change results beyond float noise; excluded from the run id).
    device: str = "auto"
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    log_every: int = 100
    checkpoint_every: int = 1000
    # torch.compile the training and evaluation steps (randpos.loop.ensemble, docs/performance.md)
    compile: bool = False
    # Where the run's config, training curve and evaluation are logged (randpos.loop.loggers):
    # one or more of LOGGERS, comma-separated (``--logger``).
    logger: str = "jsonl"

    # ---------------------------------------------------------------- construction / checks
    @classmethod
    def field_names(cls) -> list[str]:
        """The config's field names, in order."""
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(
        cls,
        data: dict[str, Any] | None = None,
        base: TrainConfig | None = None,
        *,
        check: bool = True,
        **overrides: Any,
    ) -> TrainConfig:
        """``base`` (the defaults when None) with the fields of ``data`` and ``overrides``
        (YAML, JSON, CLI values; flat fields of earlier configs and dotted ``positions.NAME``,
        ``pe.NAME``, ``options.NAME`` keys included): unknown fields and bad values raise.
        ``check=False`` leaves the cross-field checks (:meth:`validate`) to the caller, for a
        config built up layer by layer (:func:`randpos.workloads.resolve_config`)."""
        base = base or cls()
        merged = nest({**(data or {}), **overrides}, base.positions, base.pe_options)
        known = cls.field_names()
        unknown = [k for k in merged if k not in known]
        if unknown:
            raise unknown_fields_error(unknown, known, "config field(s)")
        values = base.to_dict()
        if "options" in merged:  # a workload's options complete the base's
            merged["options"] = {**values["options"], **merged["options"]}
        values.update(merged)
        kwargs = {name: _coerce(name, value) for name, value in values.items()}
        config = cls(**kwargs)
        if check:
            config.validate()
        return config

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """A config from a YAML file's fields (:func:`load_yaml`) and ``overrides``, checked like
        :meth:`from_dict`."""
        return cls.from_dict(load_yaml(path), **overrides)

    def replace(self, **changes: Any) -> TrainConfig:
        """This config with ``changes`` (any key :meth:`from_dict` takes), checked again."""
        return TrainConfig.from_dict(changes, base=self)

    def to_dict(self) -> dict[str, Any]:
        """The config as a plain, JSON-ready dict (``positions`` as a mapping)."""
        return asdict(self)

    def validate(self) -> None:
        """The protocol's own checks (``ConfigError`` naming the field); the workload checks
        the rest (task, encoding, options, ...) when it is built."""
        check_choice("curriculum", self.curriculum, CURRICULA)
        check_choice("attention", self.attention, ATTENTION_BACKENDS)
        check_choice("precision", self.precision, PRECISIONS)
        for name in (
            "steps",
            "batch_size",
            "max_train_length",
            "eval_max_length",
            "eval_batch_size",
            "eval_sub_batch_size",
            "num_layers",
            "width",
            "num_heads",
            "ff_width",
            "log_every",
            "checkpoint_every",
        ):
            check_positive(name, getattr(self, name))
        for name in ("seed", "curriculum_seed", "eval_seed", "threads"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.eval_max_length <= self.max_train_length:
            raise ConfigError(
                f"eval_max_length (M={self.eval_max_length}) must be greater than "
                f"max_train_length (N={self.max_train_length}) to measure unseen lengths"
            )
        if self.eval_batch_size % self.eval_sub_batch_size:
            raise ConfigError(
                f"eval_batch_size ({self.eval_batch_size}) must be a multiple of "
                f"eval_sub_batch_size ({self.eval_sub_batch_size})"
            )
        if self.width % self.num_heads:
            raise ConfigError(
                f"width ({self.width}) must be divisible by num_heads ({self.num_heads})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        for name in ("learning_rate", "grad_clip", "adam_eps"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        names = [n.strip() for n in self.logger.split(",")]
        if not all(names) or any(n not in LOGGERS for n in names):
            raise ConfigError(
                f"logger must be one or more of {', '.join(LOGGERS)}, comma-separated, "
                f"got {self.logger!r}"
            )
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda[:i]', got {self.device!r}")

    # ---------------------------------------------------------------- derived quantities
    @property
    def randomized(self) -> bool:
        """True unless the positions are contiguous (a plain run)."""
        return self.positions.randomized

    def sequence_length(self, n: int) -> int:
        """Model sequence length T for a requested task length n (inputs + blanks)."""
        return _sequence_length(self.task, n)

    def longest_sequence(self) -> int:
        """The longest model sequence T over the evaluated lengths 1..M (inputs plus blank output
        tokens)."""
        return _longest_sequence(self.task, self.eval_max_length)

    def model_max_position(self) -> int:
        """Positions the PE must cover: L when randomized, else the longest evaluated sequence."""
        return self.positions.max_position if self.randomized else self.longest_sequence()

    def architecture(self) -> dict[str, Any]:
        """The :class:`ModelConfig` fields this config sets whatever the task (the vocabulary and
        the position range are the task's and the workload's)."""
        names = ("num_layers", "width", "num_heads", "ff_width", "dropout", "pe", "attention")
        return {
            **{name: getattr(self, name) for name in names},
            "causal": self.causal,
            "pe_options": self.pe_options,
        }

    def model_config(self) -> ModelConfig:
        """The :class:`randpos.model.ModelConfig` of this config's task, encoding and architecture
        (vocabulary: the task's inputs plus the blank token)."""
        task = get_task(self.task)
        return ModelConfig(
            vocab_size=task.input_vocab_size + 1,  # + the blank token (id = input vocab size)
            num_classes=task.output_vocab_size,
            max_position=self.model_max_position(),
            **self.architecture(),
        )


def _sequence_length(task_name: str, n: int) -> int:
    task = get_task(task_name)
    n_in = task.input_length(n)
    return n_in + task.output_length(n_in)


@functools.cache
def _longest_sequence(task_name: str, max_length: int) -> int:
    return max(_sequence_length(task_name, n) for n in range(1, max_length + 1))


# ---------------------------------------------------------------------------- presets (YAML)
#: The presets that ship with randpos (``randpos/workloads/presets/*.yaml``), read as package
#: resources so that an installed wheel finds them; a sweep's presets sit beside the sweep
#: layer (``randpos/sweep/presets``).
PRESETS: Traversable = resources.files("randpos.workloads") / "presets"
#: A user's own presets, looked up before the packaged ones (relative to the working directory).
USER_PRESETS = Path("configs")


def preset_names(folder: Traversable = PRESETS, user_folder: Path = USER_PRESETS) -> list[str]:
    """The names of the presets in ``user_folder`` (``./configs`` by default) and ``folder``
    (the packaged ones), sorted, each once."""
    names = set()
    for place in (user_folder, folder):
        if place.is_dir():
            names.update(p.name[: -len(".yaml")] for p in place.iterdir() if _is_yaml(p))
    return sorted(names)


def find_preset(
    name_or_path: str | Path,
    *,
    folder: Traversable = PRESETS,
    user_folder: Path = USER_PRESETS,
    kind: str = "config",
    near: Path | None = None,
) -> Path | Traversable:
    """A YAML file: a path (also relative to ``near``), or a preset name looked up in the
    user's ``user_folder`` (``./configs``) first and then among the presets that ship in the
    package (``folder``). Raises a one-line ``ConfigError`` listing the presets otherwise."""
    candidates: list[Path | Traversable] = [Path(name_or_path)]
    if near is not None:
        candidates.append(near / name_or_path)
    if _is_name(name_or_path):
        candidates += [user_folder / f"{name_or_path}.yaml", folder / f"{name_or_path}.yaml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    names = preset_names(folder, user_folder)
    raise ConfigError(
        f"{kind} {str(name_or_path)!r} is neither a file nor a preset; "
        f"presets: {', '.join(names) or '(none)'}"
    )


def _is_name(name_or_path: str | Path) -> bool:
    """A bare preset name (no folder, no suffix), as opposed to a path."""
    text = str(name_or_path)
    return bool(text) and "/" not in text and "\\" not in text and not text.endswith(".yaml")


def _is_yaml(path: Path | Traversable) -> bool:
    return path.name.endswith(".yaml") and path.is_file()


def load_yaml(path: str | Path | Traversable) -> dict[str, Any]:
    """The mapping of config fields in a YAML file (a path or a packaged preset); a missing,
    unparsable or non-mapping file raises a one-line ``ConfigError``."""
    if isinstance(path, str):
        path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config fields, got {type(data).__name__}")
    return data


def _coerce(name: str, value: Any) -> Any:
    if name == "positions":
        if isinstance(value, PositionSpec):
            return value
        return PositionSpec.from_dict(value)
    return coerce_value(name, value, field_types(TrainConfig)[name])


__all__ = [
    "CURRICULA",
    "LOGGERS",
    "PRECISIONS",
    "PRESETS",
    "USER_PRESETS",
    "TrainConfig",
    "find_preset",
    "load_yaml",
    "preset_names",
]
