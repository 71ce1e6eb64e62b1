"""The positional-encoding zoo: one family per module, one registry (docs/design.md §3).

``get_encoding(name)`` returns the class registered as ``name``; ``PE_NAMES`` lists them. Adding
an encoding = one module with a ``@register("name")`` class, imported below.
"""

from randpos.encodings import (  # noqa: F401 (registers)
    alibi,
    cope,
    fire,
    fox,
    kerple,
    learned,
    learned2d,
    none,
    path,
    relative,
    rope,
    rope2d,
    sandwich,
    sincos,
    sincos2d,
    stick_breaking,
    t5,
    xpos,
)
from randpos.encodings.base import (
    ENCODINGS,
    PositionalEncoding,
    build_encoding,
    check_position_dims,
    get_encoding,
    names_taking,
    register,
)

#: every registered name, in registration order (the CLI/config/results names)
PE_NAMES: tuple[str, ...] = tuple(ENCODINGS)
#: the encodings of sequence models (1D positions) and of image models (2D grid positions);
#: ``none`` is in both
PE_NAMES_1D: tuple[str, ...] = tuple(names_taking(1))
PE_NAMES_2D: tuple[str, ...] = tuple(names_taking(2))

__all__ = [
    "ENCODINGS",
    "PE_NAMES",
    "PE_NAMES_1D",
    "PE_NAMES_2D",
    "check_position_dims",
    "PositionalEncoding",
    "build_encoding",
    "get_encoding",
    "register",
]
