"""The positional-encoding zoo: one family per module, one registry (DESIGN §3).

``get_encoding(name)`` returns the class registered as ``name``; ``PE_NAMES`` lists them. Adding
an encoding = one module with a ``@register("name")`` class, imported below.
"""

from randpos.encodings import (  # noqa: F401 (registers)
    alibi,
    cope,
    fire,
    kerple,
    learned,
    none,
    relative,
    rope,
    sandwich,
    sincos,
    t5,
    xpos,
)
from randpos.encodings.base import (
    ENCODINGS,
    PositionalEncoding,
    build_encoding,
    get_encoding,
    register,
)

#: every registered name, in registration order (the CLI/config/results names)
PE_NAMES: tuple[str, ...] = tuple(ENCODINGS)

__all__ = [
    "ENCODINGS",
    "PE_NAMES",
    "PositionalEncoding",
    "build_encoding",
    "get_encoding",
    "register",
]
