"""Sweep files and grids: parse a spec, expand it into resolved, validated runs."""

from __future__ import annotations

import difflib
import itertools
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from randpos.core.fields import ConfigError
from randpos.loop.identity import config_hash
from randpos.workloads.compat import config_value, is_config_key
from randpos.workloads.config import USER_PRESETS, TrainConfig, find_preset, preset_names
from randpos.workloads.registry import resolve_config as resolve
from randpos.workloads.registry import workload_class

SWEEP_KEYS = ("name", "description", "preset", "base", "arms", "grid", "exclude", "include")

#: The sweep files that ship with randpos (``randpos/sweep/presets/*.yaml``), read as package
#: resources; a user's ``./configs/sweeps/NAME.yaml`` comes first.
SWEEP_PRESETS = resources.files("randpos.sweep") / "presets"
USER_SWEEPS = USER_PRESETS / "sweeps"


class SweepError(ValueError):
    """A sweep file or request is invalid; the message says what and what is allowed."""


# ====================================================================================== spec
@dataclass
class SweepSpec:
    """A parsed sweep file: its name, grid (each axis a list), base, preset fields, arms, exclude
    and include rules, description and source path."""

    name: str
    grid: dict[str, list]
    base: dict[str, Any] = field(default_factory=dict)
    #: the fields of the sweep's ``preset`` file, under ``base`` (each resolved over the last)
    preset: dict[str, Any] = field(default_factory=dict)
    exclude: list[dict[str, Any]] = field(default_factory=list)
    include: list[dict[str, Any]] = field(default_factory=list)
    #: named variants, each crossed with the whole grid (e.g. the arms of an experiment x seeds)
    arms: list[dict[str, Any]] = field(default_factory=list)
    description: str = ""
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The spec as a plain dict (what the store records), without its source path."""
        out = asdict(self)
        out.pop("source")
        return out


def config_fields() -> list[str]:
    """The names of the config fields a sweep may set (:class:`randpos.workloads.TrainConfig`'s)."""
    return TrainConfig.field_names()


def resolve_config(*layers: dict[str, Any]) -> dict[str, Any]:
    """Defaults filled in (the workload's own first), each layer over the last and every value
    checked, as a plain dict (:func:`randpos.workloads.resolve_config`)."""
    return resolve(*layers).to_dict()


def find_spec(name_or_path: str | os.PathLike):
    """A sweep file: a path, or the name of a sweep in ``./configs/sweeps/`` or among those
    that ship with randpos (:data:`SWEEP_PRESETS`). Raises a one-line ``SweepError`` listing
    the known names otherwise."""
    try:
        return find_preset(
            name_or_path, folder=SWEEP_PRESETS, user_folder=USER_SWEEPS, kind="sweep"
        )
    except ConfigError as exc:
        raise SweepError(str(exc)) from None


def sweep_names() -> list[str]:
    """The names ``randpos sweep NAME`` accepts: the user's and the packaged sweep files."""
    return preset_names(SWEEP_PRESETS, USER_SWEEPS)


def load_spec(name_or_path: str | os.PathLike) -> SweepSpec:
    """Read and check a sweep file (a path or a name, :func:`find_spec`); a file that does
    not parse or holds unknown keys raises a one-line ``SweepError``."""
    path = find_spec(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SweepError(f"cannot parse {path}: {exc}") from None
    return parse_spec(data, source=str(path), default_name=path.name.removesuffix(".yaml"))


def _unknown(kind: str, keys: Iterable[str], allowed: Iterable[str]) -> SweepError:
    allowed = sorted(allowed)
    hints = []
    for key in keys:
        close = difflib.get_close_matches(str(key), allowed, n=1)
        hints.append(repr(key) + (f" (did you mean {close[0]!r}?)" if close else ""))
    return SweepError(f"unknown {kind}: {', '.join(hints)}; allowed: {', '.join(allowed)}")


def parse_spec(
    data: Any, *, source: str | None = None, default_name: str | None = None
) -> SweepSpec:
    """Check a sweep mapping's structure and field names (values are checked by expand)."""
    where = f"{source}: " if source else ""
    if not isinstance(data, dict):
        raise SweepError(
            f"{where}a sweep must be a mapping with a 'grid', got {type(data).__name__}"
        )
    unknown = [k for k in data if k not in SWEEP_KEYS]
    if unknown:
        raise SweepError(where + str(_unknown("sweep key(s)", unknown, SWEEP_KEYS)))
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name.strip():
        raise SweepError(f"{where}'name' must be a non-empty string, got {name!r}")
    fields_ = config_fields()

    def check_fields(section: str, mapping: Any) -> dict:
        if mapping is None:
            return {}
        if not isinstance(mapping, dict):
            raise SweepError(
                f"{where}{section!r} must be a mapping of config fields, "
                f"got {type(mapping).__name__}"
            )
        # dotted keys (options.NAME, positions.NAME, pe.NAME) are checked when runs resolve
        bad = [k for k in mapping if not is_config_key(k, fields_)]
        if bad:
            raise SweepError(where + str(_unknown(f"config field(s) in {section!r}", bad, fields_)))
        return dict(mapping)

    base = check_fields("base", data.get("base"))
    preset = data.get("preset")
    preset_fields = {}
    if preset is not None:
        preset_fields = check_fields(f"preset {preset!r}", _load_preset(preset, source))
    if "grid" not in data:
        raise SweepError(f"{where}no 'grid': list at least one config field with its values")
    grid = check_fields("grid", data["grid"])
    for key, values in grid.items():
        if not isinstance(values, list):
            raise SweepError(
                f"{where}grid.{key} must be a list of values, got {values!r} "
                f"(put a single fixed value under 'base')"
            )
        if not values:
            raise SweepError(f"{where}grid.{key} is empty: the grid would expand to no runs")
    rules: dict[str, list[dict]] = {}
    for section in ("arms", "exclude", "include"):
        items = data.get(section) or []
        if not isinstance(items, list):
            raise SweepError(f"{where}{section!r} must be a list of mappings")
        rules[section] = [check_fields(f"{section}[{i}]", item) for i, item in enumerate(items)]
    for i, arm in enumerate(rules["arms"]):
        both = sorted(set(arm) & set(grid))
        if both:
            raise SweepError(f"{where}arms[{i}] sets {', '.join(both)}, which the grid varies")
    if not grid and not rules["include"] and not rules["arms"]:
        raise SweepError(f"{where}empty grid: no axes and no 'include' runs")
    description = data.get("description") or ""
    return SweepSpec(
        name=name.strip(),
        grid=grid,
        base=base,
        preset=preset_fields,
        exclude=rules["exclude"],
        include=rules["include"],
        arms=rules["arms"],
        description=str(description),
        source=source,
    )


def _load_preset(preset: Any, source: str | None) -> dict:
    """A TrainConfig preset: a path (relative to the sweep file) or a preset name
    (``./configs/NAME.yaml``, then the packaged ones)."""
    where = f"{source}: " if source else ""
    if not isinstance(preset, str) or not preset:
        raise SweepError(f"{where}'preset' must be a config name or path, got {preset!r}")
    try:
        path = find_preset(preset, kind="preset", near=Path(source).parent if source else None)
    except ConfigError as exc:
        raise SweepError(f"{where}{exc}") from None
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise SweepError(f"{where}preset {path} is not a mapping of config fields")
    return data


def _matches(config: dict, rule: dict) -> bool:
    for key, wanted in rule.items():
        options = wanted if isinstance(wanted, list) else [wanted]
        if _value(config, key) not in options:
            return False
    return True


def _value(config: dict, key: str) -> Any:
    """A resolved config's value of ``key``; ``options.NAME`` reads the workload's option,
    whose stored form leaves defaults out (``Workload.normalize_options``)."""
    if not key.startswith("options."):
        return config_value(config, key)
    name = key.removeprefix("options.")
    if name in config.get("options", {}):
        return config["options"][name]
    defaults = workload_class(config).options
    return getattr(defaults(), name, None) if defaults else None


def expand(
    spec: SweepSpec, *, resolve: Callable[..., dict] = resolve_config
) -> dict[str, dict[str, Any]]:
    """The sweep's runs: ``{run_id: resolved config}`` in grid order, duplicates merged.

    Every config is resolved and validated before anything is returned, so a bad value stops
    the sweep before it writes anything; the error names the run's grid values.
    """
    keys = list(spec.grid)
    combos = [
        dict(zip(keys, values, strict=True)) for values in itertools.product(*spec.grid.values())
    ]
    arms = spec.arms or [{}]
    # each candidate is its layers, resolved in order: preset < base < arm < grid values
    candidates = (
        [(spec.preset, spec.base, arm, combo) for arm in arms for combo in combos]
        if keys or spec.arms
        else []
    )
    candidates += [(spec.preset, spec.base, extra) for extra in spec.include]
    runs: dict[str, dict[str, Any]] = {}
    excluded = 0
    for layers in candidates:
        try:
            config = resolve(*layers)
        except ValueError as exc:
            raw = {key: value for layer in layers for key, value in layer.items()}
            varied = keys + sorted({k for arm in spec.arms for k in arm})
            shown = {k: raw[k] for k in varied if k in raw} or raw
            detail = ", ".join(f"{k}={v!r}" for k, v in shown.items())
            where = f"{spec.source}: " if spec.source else ""
            raise SweepError(f"{where}run ({detail}): {exc}") from None
        if any(_matches(config, rule) for rule in spec.exclude):
            excluded += 1
            continue
        runs.setdefault(config_hash(config), config)
    if not runs:
        raise SweepError(
            f"sweep {spec.name!r}: empty grid ({len(candidates)} combinations, {excluded} excluded)"
        )
    return runs
