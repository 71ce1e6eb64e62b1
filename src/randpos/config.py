"""The run configuration: one flat, typed dataclass whose defaults are the reference protocol.

Every protocol setting of docs/reference-system.md §2 and §5 is a field here; YAML presets
(``configs/``) and the CLI only override fields. ``TrainConfig.from_dict`` rejects unknown fields
and bad values with a message naming the field, the value and what is allowed (docs/design.md §4.1).
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field, fields
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

CURRICULA = ("uniform", "fixed")
RANDOMIZE_MODES = ("positions", "distances", "float", "pose")
EVAL_POSITION_MODES = ("random", "contiguous", "spread")
ATTENTION_BACKENDS = ("fast", "math")
PRECISIONS = ("fp32", "bf16")


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
    pe: str = "none"
    randomized: bool = False  # train on a sorted random subset of [0, max_position)
    max_position: int = 2048  # L, the simulated position range (used when randomized)
    # "positions": sample sorted positions; attention-level PEs see their differences.
    # "distances": the reference's reading for relative/alibi (docs/reference-system.md §4.2):
    #   a sorted sample of distances replaces |j - i|; absolute PEs and RoPE still use sampled
    #   positions.
    # "float": Random Float Sampling, sorted continuous positions from [0, L) (encodings with
    #   continuous formulas only); "pose": PoSE's two contiguous chunks with a random skip.
    randomize: str = "positions"
    redraw_per_layer: bool = True  # distances reading: a fresh draw for every layer (reference)
    both_sides: bool = False  # distances reading: independent draws left and right
    per_sequence_positions: bool = False  # False = one draw shared by the batch (reference)
    eval_positions: str = "random"  # random | contiguous | spread (used when randomized)

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

    # Architecture (docs/reference-system.md §3).
    num_layers: int = 5
    width: int = 64
    num_heads: int = 8
    ff_width: int = 256
    dropout: float = 0.1
    attention: str = "fast"
    # Causal (decoder-style) attention mask on the encoder; causal-only encodings need it.
    causal: bool = False
    # Rotary encodings (rope, xpos): the base and RoPE scaling for context extension, named as
    # Hugging Face names them (randpos.encodings.rope; docs/encodings.md). None: derived.
    rope_theta: float = 10000.0
    rope_scaling: str = "none"  # none | linear | ntk | dynamic | yarn | llama3
    rope_scaling_factor: float = 1.0
    original_max_position_embeddings: int | None = None  # None: the model's max_position
    beta_fast: float = 32.0  # yarn
    beta_slow: float = 1.0  # yarn
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3
    attention_factor: float | None = None  # yarn; None: 0.1 ln(factor) + 1
    cope_npos: int | None = None  # CoPE's position table size; None: max_position + 1
    # "bf16": autocast the forward pass to bfloat16 (CUDA only). It changes the numbers beyond
    # float noise, so unlike `compile` it is part of the run id.
    precision: str = "fp32"

    # Run-time knobs (do not change results beyond float noise; excluded from the run id).
    device: str = "auto"
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    log_every: int = 100
    checkpoint_every: int = 1000
    # torch.compile the training and evaluation steps (randpos.ensemble, docs/performance.md)
    compile: bool = False

    # ---------------------------------------------------------------- construction / checks
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None = None, **overrides: Any) -> TrainConfig:
        """Build from a mapping (YAML, JSON, CLI); unknown fields and bad values raise."""
        merged = dict(data or {})
        merged.update(overrides)
        options = merged.get("options") or {}
        if not isinstance(options, dict):
            raise ConfigError(
                f"options must be a mapping of the workload's fields, got {options!r}"
            )
        options = dict(options)
        for key in [k for k in merged if k.startswith("options.")]:
            options[key.removeprefix("options.")] = merged.pop(key)  # CLI: options.NAME=VALUE
        if options:
            merged["options"] = options
        known = cls.field_names()
        unknown = [k for k in merged if k not in known]
        if unknown:
            raise unknown_fields_error(unknown, known, "config field(s)")
        kwargs = {name: _coerce(name, value) for name, value in merged.items()}
        config = cls(**kwargs)
        config.options = config.workload_class().normalize_options(config.options)
        config.validate()
        return config

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        return cls.from_dict(load_yaml(path), **overrides)

    def replace(self, **changes: Any) -> TrainConfig:
        return TrainConfig.from_dict(self.to_dict(), **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> None:
        """The protocol's checks, then the workload's own (task, encoding, options, ...)."""
        check_choice("randomize", self.randomize, RANDOMIZE_MODES)
        check_choice("eval_positions", self.eval_positions, EVAL_POSITION_MODES)
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
            "max_position",
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
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda[:i]', got {self.device!r}")
        self.workload_class().validate(self)

    def workload_class(self):
        """The :class:`randpos.workloads.Workload` subclass this config names."""
        from randpos.workloads import get_workload

        try:
            return get_workload(self.workload)
        except ValueError as exc:
            raise ConfigError(f"workload: {exc}") from None

    # ---------------------------------------------------------------- derived quantities
    def position_spec(self):
        """This run's :class:`randpos.positions.PositionSpec`."""
        from randpos.positions.spec import LEGACY_FIELDS, spec_from_legacy

        return spec_from_legacy({name: getattr(self, name) for name in LEGACY_FIELDS})

    def sequence_length(self, n: int) -> int:
        """Model sequence length T for a requested task length n (inputs + blanks)."""
        return _sequence_length(self.task, n)

    def longest_sequence(self) -> int:
        return _longest_sequence(self.task, self.eval_max_length)

    def model_max_position(self) -> int:
        """Positions the PE must cover: L when randomized, else the longest evaluated sequence."""
        return self.max_position if self.randomized else self.longest_sequence()

    def model_config(self):
        from randpos.model import ModelConfig
        from randpos.tasks import get_task

        task = get_task(self.task)
        return ModelConfig(
            vocab_size=task.input_vocab_size + 1,  # + the blank token (id = input vocab size)
            num_classes=task.output_vocab_size,
            num_layers=self.num_layers,
            width=self.width,
            num_heads=self.num_heads,
            ff_width=self.ff_width,
            dropout=self.dropout,
            pe=self.pe,
            max_position=self.model_max_position(),
            attention=self.attention,
            causal=self.causal,
            **{name: getattr(self, name) for name in MODEL_EXTRA_FIELDS},
        )


def _sequence_length(task_name: str, n: int) -> int:
    from randpos.tasks import get_task

    task = get_task(task_name)
    n_in = task.input_length(n)
    return n_in + task.output_length(n_in)


@functools.cache
def _longest_sequence(task_name: str, max_length: int) -> int:
    return max(_sequence_length(task_name, n) for n in range(1, max_length + 1))


# Fields added after runs were first recorded: left out of the run id while they hold these
# values, so that every earlier run keeps its id (randpos.store.config_hash).
MODEL_EXTRA_FIELDS = (
    "rope_theta",
    "rope_scaling",
    "rope_scaling_factor",
    "original_max_position_embeddings",
    "beta_fast",
    "beta_slow",
    "low_freq_factor",
    "high_freq_factor",
    "attention_factor",
    "cope_npos",
)
HASHED_UNLESS_DEFAULT: dict[str, Any] = {
    "workload": "encoder",
    "options": {},
    "causal": False,
    "rope_theta": 10000.0,
    "rope_scaling": "none",
    "rope_scaling_factor": 1.0,
    "original_max_position_embeddings": None,
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "attention_factor": None,
    "cope_npos": None,
}

# Fields that never change a run's numbers; left out of the run id.
RUNTIME_FIELDS = frozenset({"device", "threads", "log_every", "checkpoint_every", "compile"})


# The fields in which runs that train together as one ensemble may differ (randpos.ensemble).
ENSEMBLE_VARYING_FIELDS = ("seed", "learning_rate")


def ensemble_key(config: TrainConfig | dict[str, Any]) -> str:
    """Configs (or resolved config dicts) with equal keys can train as one ensemble: everything
    but seed and learning rate agrees, run-time fields included (the members share a device, a
    log and a checkpoint schedule). Torch-free, so the sweep leader can group runs."""
    data = config.to_dict() if isinstance(config, TrainConfig) else config
    same = {k: v for k, v in data.items() if k not in ENSEMBLE_VARYING_FIELDS}
    return json.dumps(same, sort_keys=True, default=str)


# The repository's presets (configs/*.yaml, configs/sweeps/*.yaml).
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def find_preset(
    name_or_path: str | Path, *, sub: str = "", kind: str = "config", near: Path | None = None
) -> Path:
    """A YAML file: a path (also relative to ``near``), or a preset name looked up in
    ``./configs/<sub>`` and then in the repository's ``configs/<sub>``."""
    folders = [Path.cwd() / "configs" / sub, CONFIG_DIR / sub]
    candidates = [Path(name_or_path)] + ([near / name_or_path] if near is not None else [])
    candidates += [folder / f"{name_or_path}.yaml" for folder in folders]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    names = sorted({p.stem for f in folders if f.is_dir() for p in f.glob("*.yaml")})
    raise ConfigError(
        f"{kind} {str(name_or_path)!r} is neither a file nor a preset; "
        f"presets: {', '.join(names) or '(none)'}"
    )


def load_yaml(path: str | Path) -> dict[str, Any]:
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
    return coerce_value(name, value, field_types(TrainConfig)[name])


__all__ = [
    "ATTENTION_BACKENDS",
    "CURRICULA",
    "ENSEMBLE_VARYING_FIELDS",
    "EVAL_POSITION_MODES",
    "PRECISIONS",
    "RANDOMIZE_MODES",
    "RUNTIME_FIELDS",
    "HASHED_UNLESS_DEFAULT",
    "ConfigError",
    "TrainConfig",
    "check_choice",
    "coerce_value",
    "CONFIG_DIR",
    "ensemble_key",
    "find_preset",
    "load_yaml",
]
