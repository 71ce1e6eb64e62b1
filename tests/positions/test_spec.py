"""The position spec (randpos.positions.spec): one vocabulary, the typed spec, and the one
compatibility mapping from the seven flat fields of earlier configs."""

from __future__ import annotations

import itertools
import re

import pytest
import torch

from randpos.core.fields import ConfigError
from randpos.positions import (
    LEGACY_FIELDS,
    PositionSpec,
    plan_positions,
    spec_from_legacy,
)


def flat(**changes):
    base = dict(
        randomized=False,
        randomize="positions",
        max_position=2048,
        per_sequence_positions=False,
        redraw_per_layer=True,
        both_sides=False,
        eval_positions="random",
    )
    return {**base, **changes}


LEGACY_COMBINATIONS = [
    flat(randomized=r, randomize=z, max_position=L, per_sequence_positions=p, eval_positions=e,
         redraw_per_layer=d, both_sides=b)
    for r, z, L, p, e, d, b in itertools.product(
        (False, True), ("positions", "distances", "float", "pose"), (256, 2048), (False, True),
        ("random", "contiguous", "spread"), (False, True), (False, True),
    )
    if r or z in ("positions", "distances")  # a plain run never drew float or pose positions
]  # fmt: skip


@pytest.mark.parametrize("old", LEGACY_COMBINATIONS)
def test_every_flat_configuration_maps_to_a_spec_and_back(old):
    spec = spec_from_legacy(old)
    assert spec.legacy() == old  # so a run id (a hash of the flat form) is unchanged
    assert spec.randomized == old["randomized"]
    assert spec.distances == (old["randomized"] and old["randomize"] == "distances")


def test_the_flat_fields_name_the_sampler_and_the_reading():
    assert spec_from_legacy(flat()).sampler == "contiguous"
    assert spec_from_legacy(flat(randomized=True)).sampler == "random"
    spec = spec_from_legacy(flat(randomized=True, randomize="distances"))
    assert (spec.sampler, spec.reading) == ("random", "distances")
    assert spec_from_legacy(flat(randomized=True, randomize="pose")).sampler == "pose"
    # a plain run of the paper preset keeps its reading (its id hashes randomize: distances)
    assert spec_from_legacy(flat(randomize="distances")).reading == "distances"
    # a plain run with a float/pose sampler named never drew it: it reads as the positions one
    assert spec_from_legacy(flat(randomize="float")) == PositionSpec()
    assert set(LEGACY_FIELDS) == set(flat())


def test_from_dict_coerces_cli_strings_and_keeps_the_base():
    base = PositionSpec(sampler="random", max_position=256)
    spec = PositionSpec.from_dict({"eval": "spread", "per_sequence": "true"}, base)
    assert spec == PositionSpec("random", 256, True, "spread")
    assert PositionSpec.from_dict({"max_position": "1_024"}).max_position == 1024


@pytest.mark.parametrize(
    "data, message",
    [
        ({"sampler": "sorted"}, "unknown positions.sampler 'sorted'; valid: contiguous, random"),
        ({"eval": "shuffled"}, "unknown positions.eval 'shuffled'"),
        ({"max_position": 0}, "positions.max_position must be an integer >= 1"),
        ({"max_position": "many"}, "positions.max_position must be an integer"),
        ({"per_sequence": "maybe"}, "positions.per_sequence must be true or false"),
        ({"maxposition": 3}, "'maxposition' (did you mean 'max_position'?)"),
        ({"sampler": "float", "reading": "distances"}, "does not combine with sampler 'float'"),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_field(data, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as e:
        PositionSpec.from_dict(data)
    assert "\n" not in str(e.value)


def test_a_plan_follows_the_spec():
    g = torch.Generator().manual_seed(0)
    plain = plan_positions(PositionSpec(), 5, 2, 7, g)
    assert plain.positions.tolist() == [list(range(7))] * 2 and plain.distances is None
    spec = PositionSpec(sampler="random", max_position=50, reading="distances")
    plan = plan_positions(spec, 5, 2, 7, g)
    assert plan.distances.shape == (5, 2, 7) and plan.layer_positions.shape == (5, 2, 7)
    assert (plan.positions.diff(dim=1) > 0).all() and int(plan.positions.max()) < 50
    once = plan_positions(spec.replace(redraw_per_layer=False), 5, 2, 7, g)
    assert once.distances.shape == (1, 2, 7) and once.layer_positions is None
    spread = plan_positions(spec, 5, 2, 7, g, mode="spread")
    assert spread.positions[0].tolist() == [i * 50 // 7 for i in range(7)]
