"""Files written whole or not at all: each goes to a temporary name and is renamed into place,
so an interruption (even ``kill -9``) never leaves a half-written file."""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file renamed into place: a reader (or an
    interruption, even ``kill -9``) never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file renamed into place (as
    :func:`atomic_write_text`)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


__all__ = ["atomic_write_bytes", "atomic_write_text"]
