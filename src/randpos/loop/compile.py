"""Compiled execution and mixed precision, kept in one place (docs/performance.md).

* :func:`maybe_compile` wraps a function in ``torch.compile``; callers mark the sequence length
  (and the chunk size at evaluation) as a symbolic dimension (:func:`mark_dynamic`), so training
  on lengths 1..N and evaluating 1..M compiles a handful of graphs, not one per length. Size 1
  is always specialized by torch (a length-1 output, a batch chunk of one), which costs at most
  one more graph each.
* :class:`CompileCounter` is a backend wrapper that counts graph compilations (tests assert
  "no recompilation per length" with it; it needs nothing private from torch).
* :func:`autocast` is bf16 autocast on CUDA, a no-op for fp32. bf16 on CPU is refused: CPU
  autocast is slower than fp32 for these small matrices and would only change the numbers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

from randpos.workloads.config import PRECISIONS


class CompileCounter:
    """A ``torch.compile`` backend that counts the graphs it is handed, then delegates."""

    def __init__(self, backend: str | Callable = "inductor") -> None:
        self.backend = backend
        self.graphs = 0

    def __call__(
        self, graph_module: torch.fx.GraphModule, example_inputs: list, **kwargs: Any
    ) -> Callable:
        """``kwargs``: the ``mode`` / ``options`` torch.compile hands a custom backend."""
        self.graphs += 1
        if callable(self.backend):
            return self.backend(graph_module, example_inputs, **kwargs)
        if self.backend == "inductor" and kwargs:
            # what torch.compile(mode=...) does for inductor: the mode as config patches
            # (heavy: torch's compiler stack, imported only when a graph is compiled)
            from torch._inductor import list_mode_options
            from torch._inductor.compile_fx import compile_fx

            patches = dict(list_mode_options(kwargs["mode"])) if kwargs.get("mode") else {}
            patches.update(kwargs.get("options") or {})
            return compile_fx(graph_module, example_inputs, config_patches=patches)
        from torch._dynamo.backends.registry import lookup_backend  # heavy, as above

        return lookup_backend(self.backend)(graph_module, example_inputs, **kwargs)


def maybe_compile(
    fn: Callable,
    enabled: bool,
    *,
    device: torch.device | str = "cpu",
    backend: str | Callable = "inductor",
    cuda_graphs: bool = False,
) -> Callable:
    """``fn`` itself, or ``torch.compile(fn)``.

    Lengths are made symbolic by the caller with :func:`mark_dynamic` (only those axes:
    ``dynamic=True`` would also make the weights' shapes symbolic, which vmap's batching rules
    cannot take); torch's automatic dynamic shapes covers any other axis that varies, after one
    recompile. ``cuda_graphs`` (CUDA only) asks inductor to replay the kernels as CUDA graphs
    (``mode="reduce-overhead"``); it records one graph per distinct shape, which is why it is
    off by default (unmeasured here: no GPU was available, see docs/performance.md).
    """
    if not enabled:
        return fn
    options: dict[str, Any] = {"backend": backend}
    inductor = backend == "inductor" or (
        isinstance(backend, CompileCounter) and backend.backend == "inductor"
    )
    if cuda_graphs and torch.device(device).type == "cuda" and inductor:
        options["mode"] = "reduce-overhead"
    return torch.compile(fn, **options)


def mark_dynamic(tensor: torch.Tensor | None, *dims: int) -> None:
    """Tell ``torch.compile`` that these axes vary between calls (a hint, never an error)."""
    if tensor is None:
        return
    mark = getattr(torch._dynamo, "maybe_mark_dynamic", None)  # torch >= 2.2; else automatic
    if mark is None:
        return
    for dim in dims:
        # torch specializes sizes 0 and 1; the encodings also slice T - 1 rows, so a length of 2
        # would be specialized inside the compiler, after the guards were written (seen with
        # inductor, torch 2.13): leave it static from the start (one extra graph, correct guards)
        if tensor.shape[dim] > 2:
            mark(tensor, dim)


def check_precision(precision: str, device: torch.device) -> None:
    """``ValueError`` for an unknown precision or bf16 off CUDA."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    if precision == "bf16" and device.type != "cuda":
        raise ValueError(
            f"precision='bf16' needs a CUDA device (got {device}); use precision='fp32' on CPU"
        )


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for the forward pass on CUDA; nothing for fp32."""
    if precision == "bf16" and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


__all__ = [
    "PRECISIONS",
    "CompileCounter",
    "autocast",
    "check_precision",
    "mark_dynamic",
    "maybe_compile",
]
