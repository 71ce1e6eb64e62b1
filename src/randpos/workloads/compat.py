"""The one compatibility mapping between today's config and the flat configs of earlier versions.

Earlier configs (presets, sweep files, stores, run directories) wrote a run's positions as seven
flat fields and the rotary/CoPE parameters as ten more. Today a config holds a typed
``positions`` spec (:class:`randpos.positions.PositionSpec`) and the encoding's ``pe_options``.

* :func:`nest` reads either form (and the CLI's dotted ``positions.NAME`` / ``pe.NAME`` /
  ``options.NAME`` keys) into today's nested form, so old files load unchanged;
* :func:`legacy_flat` writes a config mapping in the flat form, every legacy field present
  (defaults included), exactly as earlier versions wrote it: run ids are hashes of this form
  (:mod:`randpos.loop.identity`), so every earlier run keeps its id, and the store's columns
  come from it, so reports read the same columns from old and new runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from randpos.core.fields import ConfigError, coerce_value
from randpos.encodings.base import normalize_options, option_owners
from randpos.positions.spec import LEGACY_FIELDS, PositionSpec, spec_from_legacy

#: The flat encoding fields of earlier configs -> today's option names (pe.NAME).
LEGACY_PE_FIELDS = {
    "rope_theta": "theta",
    "rope_scaling": "scaling",
    "rope_scaling_factor": "factor",
    "original_max_position_embeddings": "original_max_position_embeddings",
    "beta_fast": "beta_fast",
    "beta_slow": "beta_slow",
    "low_freq_factor": "low_freq_factor",
    "high_freq_factor": "high_freq_factor",
    "attention_factor": "attention_factor",
    "cope_npos": "npos",
}
_PE_LEGACY_NAMES = {new: old for old, new in LEGACY_PE_FIELDS.items()}

#: The fields of the flat form, in the order earlier versions wrote them (the order of the
#: store's columns and of the reports' grouping columns).
FLAT_FIELDS = (
    "workload", "options", "task", "pe",
    "randomized", "max_position", "randomize", "redraw_per_layer", "both_sides",
    "per_sequence_positions", "eval_positions",
    "steps", "batch_size", "max_train_length", "curriculum", "learning_rate", "grad_clip",
    "adam_beta1", "adam_beta2", "adam_eps", "seed", "curriculum_seed",
    "eval_max_length", "eval_batch_size", "eval_sub_batch_size", "eval_seed",
    "num_layers", "width", "num_heads", "ff_width", "dropout", "attention", "causal",
    *LEGACY_PE_FIELDS,
    "precision", "device", "threads", "log_every", "checkpoint_every", "compile",
)  # fmt: skip


def legacy_pe_defaults() -> dict[str, Any]:
    """The flat encoding fields with their defaults (the options' defaults, renamed)."""
    owners = option_owners()
    return {old: getattr(owners[new](), new) for old, new in LEGACY_PE_FIELDS.items()}


def nest(
    data: dict[str, Any],
    positions_base: PositionSpec | None = None,
    pe_options_base: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``data`` with the flat position fields, the flat encoding fields and the dotted keys
    moved into ``positions``, ``pe_options`` and ``options``. Positions: ``positions_base``,
    then a ``positions`` mapping, then the flat fields, then ``positions.NAME`` keys, each over
    the last; the result's ``positions`` is a complete :class:`PositionSpec` mapping (when any
    position field was given). Encoding options: ``pe_options_base`` updated by the given ones,
    normalized (defaults dropped)."""
    data = dict(data)
    positions = data.pop("positions", None)
    if positions is not None and not isinstance(positions, (dict, PositionSpec)):
        raise ConfigError(f"positions must be a mapping of position fields, got {positions!r}")
    flat = {k: data.pop(k) for k in LEGACY_FIELDS if k in data}
    dotted = {
        k.removeprefix("positions."): data.pop(k) for k in list(data) if k.startswith("positions.")
    }
    if positions is not None or flat or dotted:
        if isinstance(positions, PositionSpec):
            spec = positions
        else:
            spec = PositionSpec.from_dict(positions or {}, base=positions_base)
        if flat:
            spec = spec_from_legacy(_coerce_flat(flat), base=spec)
        if dotted:
            spec = PositionSpec.from_dict(dotted, base=spec)
        data["positions"] = spec.to_dict()

    pe_options = data.pop("pe_options", None)
    if pe_options is not None and not isinstance(pe_options, dict):
        raise ConfigError(f"pe_options must be a mapping of encoding options, got {pe_options!r}")
    given = "pe_options" in data or pe_options is not None
    pe_options = {**(pe_options_base or {}), **(pe_options or {})}
    for old, new in LEGACY_PE_FIELDS.items():
        if old in data:
            pe_options[new] = data.pop(old)
            given = True
    for key in [k for k in data if k.startswith("pe.")]:
        pe_options[key.removeprefix("pe.")] = data.pop(key)
        given = True
    if given:
        data["pe_options"] = normalize_options(pe_options)

    options = data.get("options")
    if options is not None and not isinstance(options, dict):
        raise ConfigError(f"options must be a mapping of the workload's fields, got {options!r}")
    options = dict(options or {})
    for key in [k for k in data if k.startswith("options.")]:
        options[key.removeprefix("options.")] = data.pop(key)  # CLI: options.NAME=VALUE
    if options:
        data["options"] = options
    return data


def legacy_flat(config: dict[str, Any]) -> dict[str, Any]:
    """A resolved config mapping (today's nested form, or an earlier flat one, returned as it
    is) in the flat form of earlier versions: the seven position fields, the ten encoding
    fields (defaults included) and, for options without a flat name, ``pe_options``."""
    if "positions" not in config and "pe_options" not in config:
        return dict(config)
    out = dict(config)
    positions = out.pop("positions", None)
    if positions is not None:
        spec = positions if isinstance(positions, PositionSpec) else PositionSpec(**positions)
        out.update(spec.legacy())
    options = dict(out.pop("pe_options", None) or {})
    out.update(legacy_pe_defaults())
    for new in list(options):
        if new in _PE_LEGACY_NAMES:
            out[_PE_LEGACY_NAMES[new]] = options.pop(new)
    if options:
        out["pe_options"] = options
    ordered = {k: out.pop(k) for k in FLAT_FIELDS if k in out}
    return {**ordered, **out}


def is_config_key(key: str, fields: Iterable[str]) -> bool:
    """Whether ``key`` may set a config value: one of ``fields`` (the config's), a flat field of
    earlier configs, or a dotted ``positions.NAME`` / ``pe.NAME`` / ``options.NAME`` key."""
    return (
        key in fields
        or key in LEGACY_FIELDS
        or key in LEGACY_PE_FIELDS
        or key.startswith(("positions.", "pe.", "options."))
    )


def config_value(config: dict[str, Any], key: str) -> Any:
    """The value a resolved config mapping holds for ``key`` in any of the spellings
    :func:`is_config_key` accepts (``options.NAME``: only when stored, see the sweep plan)."""
    if key.startswith("positions."):
        spec = config.get("positions")
        if spec is None:  # an earlier flat config
            spec = spec_from_legacy({k: config[k] for k in LEGACY_FIELDS if k in config})
        elif isinstance(spec, dict):
            spec = PositionSpec(**spec)
        return getattr(spec, key.removeprefix("positions."), None)
    if key.startswith("pe."):
        name = key.removeprefix("pe.")
        legacy = _PE_LEGACY_NAMES.get(name)
        return (
            legacy_flat(config).get(legacy)
            if legacy
            else (legacy_flat(config).get("pe_options", {}).get(name))
        )
    if key.startswith("options."):
        return (config.get("options") or {}).get(key.removeprefix("options."))
    return legacy_flat(config).get(key)


def _coerce_flat(flat: dict[str, Any]) -> dict[str, Any]:
    """The flat position fields as CLI strings or YAML values, coerced to their types."""
    kinds = {"randomized": bool, "randomize": str, "max_position": int,
             "per_sequence_positions": bool, "redraw_per_layer": bool, "both_sides": bool,
             "eval_positions": str}  # fmt: skip
    return {k: coerce_value(k, v, kinds[k]) for k, v in flat.items()}


__all__ = [
    "FLAT_FIELDS",
    "LEGACY_PE_FIELDS",
    "config_value",
    "is_config_key",
    "legacy_flat",
    "legacy_pe_defaults",
    "nest",
]
