"""Config layers (workload defaults < preset < base < ... < command line) resolve in order,
field by field, whatever spelling each layer uses for a field."""

from __future__ import annotations

import pytest

from randpos.cli import DEMO, build_config
from randpos.core.fields import ConfigError
from randpos.sweep import SweepSpec, expand
from randpos.workloads import resolve_config

SHORT = {"max_train_length": 10, "eval_max_length": 20}  # fits the small ranges below


def test_a_later_layer_wins_in_either_spelling():
    dotted_then_flat = resolve_config(SHORT, {"positions.max_position": 64}, {"max_position": 32})
    flat_then_dotted = resolve_config(SHORT, {"max_position": 32}, {"positions.max_position": 64})
    assert dotted_then_flat.positions.max_position == 32
    assert flat_then_dotted.positions.max_position == 64
    assert resolve_config(SHORT, {"max_position": 64}, max_position=48).positions.max_position == 48


def test_mappings_complete_the_earlier_layers():
    config = resolve_config(
        SHORT,
        {"positions": {"sampler": "random", "max_position": 64}, "pe": "rope", "pe.theta": 500},
        {"positions": {"reading": "distances"}, "pe_options": {"scaling": "linear", "factor": 2}},
    )
    spec = config.positions
    assert (spec.sampler, spec.max_position, spec.reading) == ("random", 64, "distances")
    assert config.pe_options == {"theta": 500.0, "scaling": "linear", "factor": 2.0}


def test_checks_run_on_the_whole_config_only():
    """An intermediate layer may break a cross-field check that a later one mends."""
    config = resolve_config({"max_train_length": 200}, {"eval_max_length": 300})
    assert (config.max_train_length, config.eval_max_length) == (200, 300)
    with pytest.raises(ConfigError):
        resolve_config({"max_train_length": 200})  # evaluated lengths above the range: an error


def test_sweep_layers_preset_base_arm_grid():
    spec = SweepSpec(
        name="layers",
        preset={"positions": {"sampler": "random", "max_position": 512}, "steps": 7},
        base={"positions.max_position": 128, **SHORT},
        arms=[{}, {"max_position": 64}],
        grid={"seed": [0]},
    )
    configs = list(expand(spec).values())
    assert [c["positions"]["max_position"] for c in configs] == [128, 64]
    assert all(c["positions"]["sampler"] == "random" and c["steps"] == 7 for c in configs)


def test_the_command_line_is_over_a_preset_over_the_demo():
    paper = build_config("paper", None, base=DEMO)
    assert paper.positions.max_position == 2048 and paper.positions.reading == "distances"
    narrowed = build_config("paper", ["positions.max_position=1024"], base=DEMO, max_position=512)
    assert narrowed.positions.max_position == 512
    assert build_config("quick", None, base=DEMO).positions.max_position == 256
