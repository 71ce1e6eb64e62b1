"""Where a run's positions come from: one vocabulary and one typed spec.

The vocabulary (every module, the CLI, configs and ``randpos.model.hf`` use these words):

* a **sampler** draws the positions of a training sequence (:data:`SAMPLERS`):
  ``contiguous`` (0..T-1, a plain run), ``random`` (the paper's method: a sorted draw of T
  distinct positions from [0, L)), ``float`` (Random Float Sampling: sorted continuous draws
  from [0, L)) or ``pose`` (PoSE: two contiguous chunks with one random skip);
* an **evaluation mode** places the positions of an evaluated sequence (:data:`EVAL_MODES`):
  ``random`` (a fresh draw of the run's sampler, the authors' protocol), ``contiguous`` or
  ``spread`` (evenly spaced over [0, L)); image grids add ``interpolate``
  (:data:`GRID_MODES`);
* a **decode mode** places the tokens a causal model generates after its prompt
  (:data:`DECODE_MODES`): ``arange``, ``spread`` or ``random``;
* a **reading** says what attention-level encodings (relative, ALiBi) receive from a random
  draw (:data:`READINGS`): ``positions`` (the differences of the sampled positions) or
  ``distances`` (the reference's reading: a sorted draw of distances replaces |i - j|,
  docs/reference-system.md §4.2).

:class:`PositionSpec` holds one run's choices. ``TrainConfig.positions`` is one, written in YAML
as ``positions: {sampler: random, max_position: 256}``; the seven flat fields of earlier
configs (``randomized``, ``randomize``, ``max_position``, ``per_sequence_positions``,
``redraw_per_layer``, ``both_sides``, ``eval_positions``) map onto it and back through
:func:`spec_from_legacy` and :meth:`PositionSpec.legacy`, the one compatibility mapping.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from randpos.core.fields import ConfigError, check_choice, parse_dataclass

SAMPLERS = ("contiguous", "random", "float", "pose")
EVAL_MODES = ("random", "contiguous", "spread")
GRID_MODES = (*EVAL_MODES, "interpolate")
DECODE_MODES = ("arange", "spread", "random")
READINGS = ("positions", "distances")

#: The flat fields of earlier configs that :class:`PositionSpec` replaces.
LEGACY_FIELDS = (
    "randomized",
    "randomize",
    "max_position",
    "per_sequence_positions",
    "redraw_per_layer",
    "both_sides",
    "eval_positions",
)
#: The earlier ``randomize`` values (the sampler of a randomized run, or the distance reading).
LEGACY_RANDOMIZE = ("positions", "distances", "float", "pose")


@dataclass(frozen=True)
class PositionSpec:
    """How one run's positions are drawn in training, evaluation and decoding.

    sampler:          :data:`SAMPLERS`; ``contiguous`` for a plain run
    max_position:     L, the range [0, L) a non-contiguous sampler draws from
    per_sequence:     one draw per sequence instead of one shared by the batch (the reference)
    eval:             :data:`EVAL_MODES`, the evaluation positions of a non-contiguous sampler
    reading:          :data:`READINGS`, what relative/ALiBi receive from a ``random`` draw
    redraw_per_layer: the distance reading: every layer draws its own tables and its own RoPE
                      positions, as the reference does
    both_sides:       the distance reading: independent draws for keys left and right
    """

    sampler: str = "contiguous"
    max_position: int = 2048
    per_sequence: bool = False
    eval: str = "random"
    reading: str = "positions"
    redraw_per_layer: bool = True
    both_sides: bool = False

    def __post_init__(self) -> None:
        check_choice("positions.sampler", self.sampler, SAMPLERS)
        check_choice("positions.eval", self.eval, EVAL_MODES)
        check_choice("positions.reading", self.reading, READINGS)
        for name in ("per_sequence", "redraw_per_layer", "both_sides"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(
                    f"positions.{name} must be true or false, got {getattr(self, name)!r}"
                )
        if (
            not isinstance(self.max_position, int)
            or isinstance(self.max_position, bool)
            or self.max_position < 1
        ):
            raise ConfigError(
                f"positions.max_position must be an integer >= 1, got {self.max_position!r}"
            )
        if self.reading == "distances" and self.sampler in ("float", "pose"):
            raise ConfigError(
                f"positions.reading 'distances' draws sorted integer distances; it does not "
                f"combine with sampler {self.sampler!r} (use reading: positions)"
            )

    # ------------------------------------------------------------------ derived
    @property
    def randomized(self) -> bool:
        """True unless the sampler is ``contiguous``."""
        return self.sampler != "contiguous"

    @property
    def distances(self) -> bool:
        """True when attention-level encodings read randomized distance tables."""
        return self.randomized and self.reading == "distances"

    @property
    def eval_mode(self) -> str:
        """The evaluation mode in force: ``contiguous`` for a plain run, else :attr:`eval`."""
        return self.eval if self.randomized else "contiguous"

    def replace(self, **changes: Any) -> PositionSpec:
        """This spec with ``changes`` (field names and values), as a new spec."""
        return replace(self, **changes)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base: PositionSpec | None = None) -> PositionSpec:
        """``base`` (the defaults when None) with the fields of ``data`` (YAML or CLI values,
        coerced): unknown fields and bad values raise a one-line ``ConfigError``."""
        merged = {**(base or cls()).to_dict(), **data}
        return parse_dataclass(cls, merged, "positions field(s)", prefix="positions.")

    def to_dict(self) -> dict[str, Any]:
        """The spec as a plain dict (what configs store under ``positions``)."""
        return asdict(self)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The spec's field names, in order."""
        return tuple(f.name for f in fields(cls))

    # ------------------------------------------------------------------ compatibility
    def legacy(self) -> dict[str, Any]:
        """The seven flat fields of earlier configs that describe this spec (for run ids, which
        are hashes of the flat form, and for the store's columns)."""
        if self.sampler in ("float", "pose"):
            randomize = self.sampler
        else:
            randomize = self.reading  # "positions" | "distances"
        return {
            "randomized": self.randomized,
            "randomize": randomize,
            "max_position": self.max_position,
            "per_sequence_positions": self.per_sequence,
            "redraw_per_layer": self.redraw_per_layer,
            "both_sides": self.both_sides,
            "eval_positions": self.eval,
        }


def spec_from_legacy(flat: dict[str, Any], base: PositionSpec | None = None) -> PositionSpec:
    """The spec that the earlier flat fields in ``flat`` describe, over ``base`` (fields not
    given keep ``base``'s values). ``randomized: false`` with ``randomize: float`` or ``pose``
    (a sampler that a plain run never used) reads as a plain run with the positions reading."""
    old = (base or PositionSpec()).legacy()
    unknown = [k for k in flat if k not in LEGACY_FIELDS]
    if unknown:
        raise ConfigError(f"not a flat position field: {', '.join(unknown)}")
    old.update(flat)
    randomize = old["randomize"]
    check_choice("randomize", randomize, LEGACY_RANDOMIZE)
    randomized = old["randomized"]
    if not isinstance(randomized, bool):
        raise ConfigError(f"randomized must be true or false, got {randomized!r}")
    if not randomized:
        sampler = "contiguous"
    else:
        sampler = randomize if randomize in ("float", "pose") else "random"
    return PositionSpec(
        sampler=sampler,
        max_position=old["max_position"],
        per_sequence=old["per_sequence_positions"],
        eval=old["eval_positions"],
        reading="distances" if randomize == "distances" else "positions",
        redraw_per_layer=old["redraw_per_layer"],
        both_sides=old["both_sides"],
    )


__all__ = [
    "DECODE_MODES",
    "EVAL_MODES",
    "GRID_MODES",
    "LEGACY_FIELDS",
    "LEGACY_RANDOMIZE",
    "READINGS",
    "SAMPLERS",
    "PositionSpec",
    "spec_from_legacy",
]
