"""The 15 algorithmic tasks of the paper (docs/reference-system.md §1), as seeded, batch-vectorized
torch samplers.

>>> import torch
>>> from randpos.tasks import get_task
>>> task = get_task("reverse_string")
>>> batch = task.sample(4, 10, torch.Generator().manual_seed(0))
>>> batch.inputs.shape, batch.targets.shape
(torch.Size([4, 10]), torch.Size([4, 10]))
"""

from __future__ import annotations

from randpos.tasks.base import LEVELS, Batch, Task
from randpos.tasks.cs import (
    BinaryAddition,
    BinaryMultiplication,
    BucketSort,
    ComputeSqrt,
    DuplicateString,
    MissingDuplicateString,
    OddsFirst,
)
from randpos.tasks.dcf import (
    ModularArithmeticBrackets,
    ReverseString,
    SolveEquation,
    StackManipulation,
)
from randpos.tasks.long_context import LONG_CONTEXT_TASKS, ContextTask
from randpos.tasks.regular import CycleNavigation, EvenPairs, ModularArithmetic, ParityCheck

# The order of docs/reference-system.md §1's summary table: regular, then deterministic
# context-free, then context-sensitive.
_TASK_CLASSES: tuple[type[Task], ...] = (
    EvenPairs,
    ModularArithmetic,
    ParityCheck,
    CycleNavigation,
    StackManipulation,
    ReverseString,
    ModularArithmeticBrackets,
    SolveEquation,
    DuplicateString,
    MissingDuplicateString,
    OddsFirst,
    BinaryAddition,
    BinaryMultiplication,
    ComputeSqrt,
    BucketSort,
)

TASK_NAMES: tuple[str, ...] = tuple(cls.name for cls in _TASK_CLASSES)
TASK_LEVELS: dict[str, str] = {cls.name: cls.level for cls in _TASK_CLASSES}
#: the synthetic long-context tasks of the long_context workload (docs/long-context.md)
CONTEXT_TASK_NAMES: tuple[str, ...] = tuple(cls.name for cls in LONG_CONTEXT_TASKS)
_REGISTRY: dict[str, type[Task]] = {cls.name: cls for cls in _TASK_CLASSES + LONG_CONTEXT_TASKS}


def get_task(name: str) -> Task:
    """A fresh instance of the task registered as ``name`` (with the paper's arguments)."""
    cls = _REGISTRY.get(name) if isinstance(name, str) else None
    if cls is None:
        valid = ", ".join(_REGISTRY)
        raise ValueError(f"unknown task {name!r}; valid names are: {valid}")
    return cls()


__all__ = [
    "LEVELS",
    "TASK_LEVELS",
    "TASK_NAMES",
    "Batch",
    "BinaryAddition",
    "BinaryMultiplication",
    "BucketSort",
    "CONTEXT_TASK_NAMES",
    "ContextTask",
    "ComputeSqrt",
    "CycleNavigation",
    "DuplicateString",
    "EvenPairs",
    "MissingDuplicateString",
    "ModularArithmetic",
    "ModularArithmeticBrackets",
    "OddsFirst",
    "ParityCheck",
    "ReverseString",
    "SolveEquation",
    "StackManipulation",
    "Task",
    "get_task",
]
