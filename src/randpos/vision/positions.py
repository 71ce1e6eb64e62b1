"""Moved to :mod:`randpos.positions.grid` (kept importable until the images package lands)."""

from randpos.positions.grid import *  # noqa: F403
from randpos.positions.grid import __all__  # noqa: F401
