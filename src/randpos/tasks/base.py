"""The task contract shared by all 15 algorithmic tasks (docs/design.md §3).

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
        """The number of sequences, B."""
        return self.inputs.shape[0]

    def to(self, device: torch.device | str) -> Batch:
        """The batch with its three tensors on ``device``."""
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
        """True when the task answers with one output token (a classification), not a sequence."""
        return self.output_length(10) == 1

    def sample(
        self,
        batch_size: int,
        length: int,
        generator: torch.Generator,
        *,
        device: torch.device | str | None = None,
    ) -> Batch:
        """Sample a batch; all randomness comes from ``generator`` (its device is used).

        ``device`` is optional and only checked: the batch is always built on the generator's
        device, so a different ``device`` is a ``ValueError`` rather than a silent copy.
        """
        check_sample_args(batch_size, length, generator)
        check_device(generator, device)
        return self._sample(batch_size, length, generator)

    def solve(self, inputs: torch.Tensor) -> Batch:
        """The batch (inputs, targets, mask) for well-formed task ``inputs`` (LongTensor[B, n']).

        Pure and vectorized; the samplers use it, and it lets tests and docs check worked
        examples. Inputs that the task's sampler could not produce give unspecified targets.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement solve()")

    @abc.abstractmethod
    def _sample(self, batch_size: int, length: int, generator: torch.Generator) -> Batch: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, level={self.level!r})"


def check_sample_args(batch_size: int, length: int, generator: torch.Generator) -> None:
    """Raise a one-line ``ValueError`` unless ``batch_size`` and ``length`` are integers >= 1 and
    ``generator`` is a ``torch.Generator``."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not isinstance(length, int) or isinstance(length, bool) or length < 1:
        raise ValueError(f"length must be an integer >= 1, got {length!r}")
    if not isinstance(generator, torch.Generator):
        raise ValueError(
            f"generator must be a torch.Generator (on the device to sample on), got "
            f"{type(generator).__name__}"
        )


def _canonical(device: torch.device) -> tuple[str, int | None]:
    # torch.device("cuda") and torch.device("cuda:0") name the same device when 0 is current.
    if device.type == "cuda" and device.index is None:
        index = torch.cuda.current_device() if torch.cuda.is_available() else 0
        return device.type, index
    if device.type == "cpu":
        return "cpu", None
    return device.type, device.index


def check_device(generator: torch.Generator, device: torch.device | str | None) -> None:
    """Raise ``ValueError`` unless ``device`` is None or the generator's own device."""
    if device is None:
        return
    try:
        wanted = torch.device(device)
    except (RuntimeError, TypeError) as err:
        msg = f"device must be a torch.device or a device string, got {device!r}"
        raise ValueError(msg) from err
    if _canonical(wanted) != _canonical(generator.device):
        raise ValueError(
            f"device {wanted} differs from the generator's device {generator.device}; batches are "
            f"built on the generator's device, so pass a generator on {wanted} "
            f"(torch.Generator(device={str(wanted)!r})) or leave device=None"
        )


# ---------------------------------------------------------------------------------------------
# Sampling and formatting helpers shared by the task modules. Every random draw goes through the
# generator passed in and lands on its device; nothing touches a global RNG.


def randint(low: int, high: int, size: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Uniform integers in [low, high) on the generator's device."""
    return torch.randint(low, high, size, generator=generator, device=generator.device)


def uniform_below(high: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-element uniform integers in [0, high) for an integer tensor ``high`` >= 1.

    float64 uniforms keep the bias below 2^-40 for the small bounds used here (< 10^4).
    """
    u = torch.rand(high.shape, generator=generator, device=generator.device, dtype=torch.float64)
    return torch.minimum((u * high).long(), high - 1)


def positions(size: int, like: torch.Tensor) -> torch.Tensor:
    """LongTensor[1, size] 0..size-1 on ``like``'s device, for broadcasting against (B, size)."""
    return torch.arange(size, device=like.device).unsqueeze(0)


def classification(inputs: torch.Tensor, label: torch.Tensor) -> Batch:
    """Batch for a single-output task: label LongTensor[B] becomes targets[B, 1], mask all True."""
    targets = label.long().unsqueeze(1)  # (B, 1)
    return Batch(inputs, targets, torch.ones_like(targets, dtype=torch.bool))


def sequence(inputs: torch.Tensor, targets: torch.Tensor) -> Batch:
    """Batch for an unmasked sequence task."""
    return Batch(inputs, targets.long(), torch.ones_like(targets, dtype=torch.bool))


def check_inputs(inputs: torch.Tensor) -> None:
    """Raise a one-line ``ValueError`` unless ``inputs`` is a LongTensor[B, n] of token ids,
    n >= 1."""
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 2 or inputs.shape[1] < 1:
        shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise ValueError(f"inputs must be a LongTensor[B, n] with n >= 1, got {shape}")
    if inputs.dtype != torch.long:
        raise ValueError(f"inputs must hold token ids as torch.long, got {inputs.dtype}")
