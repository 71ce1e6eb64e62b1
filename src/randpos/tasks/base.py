"""The task contract shared by all 15 algorithmic tasks (DESIGN §3).

Notation: B = batch size, n = requested input length, n' = actual input length (n' == n except
for ``modular_arithmetic``), k = ``output_length(n')``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch

LEVELS = ("regular", "dcf", "cs")


@dataclass(frozen=True)
class Batch:
    """One batch of a task, as token ids (never one-hot).

    inputs:  LongTensor[B, n']
    targets: LongTensor[B, k]
    mask:    BoolTensor[B, k]  positions that count for accuracy (all True for most tasks)
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.inputs.shape[0]

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.inputs.to(device), self.targets.to(device), self.mask.to(device))


class Task(abc.ABC):
    """A length-parametrized algorithmic task with a seeded, batch-vectorized sampler."""

    name: str
    level: str
    input_vocab_size: int
    output_vocab_size: int

    def output_length(self, n: int) -> int:
        """Number of output (blank) positions for an input of actual length ``n``."""
        return 1

    def input_length(self, n: int) -> int:
        """Actual input length n' produced for a requested length ``n``."""
        return n

    @property
    def is_classification(self) -> bool:
        return self.output_length(10) == 1

    def sample(self, batch_size: int, length: int, generator: torch.Generator) -> Batch:
        """Sample a batch; all randomness comes from ``generator`` (its device is used)."""
        check_sample_args(batch_size, length, generator)
        return self._sample(batch_size, length, generator)

    @abc.abstractmethod
    def _sample(self, batch_size: int, length: int, generator: torch.Generator) -> Batch: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, level={self.level!r})"


def check_sample_args(batch_size: int, length: int, generator: torch.Generator) -> None:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not isinstance(length, int) or isinstance(length, bool) or length < 1:
        raise ValueError(f"length must be an integer >= 1, got {length!r}")
    if not isinstance(generator, torch.Generator):
        raise ValueError(
            f"generator must be a torch.Generator (on the device to sample on), got "
            f"{type(generator).__name__}"
        )
