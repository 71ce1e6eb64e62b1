"""Explicit, named random streams derived from one seed (docs/design.md §4.4).

A run's seed is split into independent streams (model init, data, positions, dropout,
curriculum, evaluation) so that changing how one stream is consumed never shifts another, and so
that every stream's state can be saved and restored for an exact resume.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, stream: str) -> int:
    """A 63-bit seed for the named stream, stable across platforms and versions."""
    digest = hashlib.sha256(f"{int(seed)}/{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def make_generator(seed: int, stream: str, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded from ``seed`` and the stream's name
    (:func:`derive_seed`): each named stream is independent of the others and never touches
    torch's global generator."""
    generator = torch.Generator(device=device)
    generator.manual_seed(derive_seed(seed, stream))
    return generator


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when available; an explicit CUDA request without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; use 'cpu'")
    return device
