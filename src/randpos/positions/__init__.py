"""One home for positions: where they come from is the paper's central idea.

* :mod:`~randpos.positions.spec`: the vocabulary (samplers, evaluation, decode and grid modes,
  readings) and :class:`PositionSpec`, the typed description of one run's positions, with the
  compatibility mapping from the flat fields of earlier configs;
* :mod:`~randpos.positions.samplers`: the draws themselves (contiguous, the sorted random subset
  of [0, L), Random Float Sampling, PoSE, evenly spread), and the reference's distance tables;
* :mod:`~randpos.positions.plans`: :func:`plan_positions`, the positions of one forward pass
  (training batch, evaluated batch, decoder prompt) from a spec;
* :mod:`~randpos.positions.decode`: where a causal model's generated tokens go;
* :mod:`~randpos.positions.tokens`: positions read from the tokens (Abacus digit indices,
  coupled position ids), for a second, embed-only encoding;
* :mod:`~randpos.positions.grid`: the same samplers per axis for image patch grids.

Every function is pure: randomness comes only from the ``generator`` it is given.
"""

from randpos.positions.decode import decode_positions
from randpos.positions.grid import (
    check_grid_positions,
    combine_axes,
    grid_positions,
    sample_grid_positions,
)
from randpos.positions.plans import PositionPlan, plan_positions
from randpos.positions.samplers import (
    check_sizes,
    contiguous_distances,
    contiguous_positions,
    float_positions,
    pose_positions,
    randomized_distances,
    randomized_positions,
    sample_distances,
    sample_positions,
    sorted_subset,
    spread_distances,
    spread_positions,
)
from randpos.positions.spec import (
    DECODE_MODES,
    EVAL_MODES,
    GRID_MODES,
    LEGACY_FIELDS,
    READINGS,
    SAMPLERS,
    PositionSpec,
    spec_from_legacy,
)
from randpos.positions.tokens import (
    TOKEN_SOURCES,
    TokenKinds,
    TokenPositionSpec,
    draw_offsets,
    significance,
    token_positions,
)

__all__ = [
    "DECODE_MODES",
    "EVAL_MODES",
    "GRID_MODES",
    "LEGACY_FIELDS",
    "READINGS",
    "SAMPLERS",
    "TOKEN_SOURCES",
    "TokenKinds",
    "TokenPositionSpec",
    "PositionPlan",
    "PositionSpec",
    "check_grid_positions",
    "check_sizes",
    "combine_axes",
    "contiguous_distances",
    "contiguous_positions",
    "decode_positions",
    "draw_offsets",
    "float_positions",
    "grid_positions",
    "plan_positions",
    "pose_positions",
    "randomized_distances",
    "randomized_positions",
    "sample_distances",
    "sample_grid_positions",
    "sample_positions",
    "significance",
    "sorted_subset",
    "spec_from_legacy",
    "spread_distances",
    "spread_positions",
    "token_positions",
]
