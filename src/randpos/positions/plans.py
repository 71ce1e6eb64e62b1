"""Position plans: everything a model is told about positions for one forward pass.

One function, :func:`plan_positions`, draws the plan of a training batch, of an evaluated batch
and of a decoder's prompt from a :class:`~randpos.positions.spec.PositionSpec`, so training,
evaluation and decoding cannot drift apart.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from randpos.positions.samplers import contiguous_positions, sample_distances, sample_positions
from randpos.positions.spec import PositionSpec
from randpos.positions.tokens import TokenPositionSpec, draw_offsets, token_positions


class PositionPlan(NamedTuple):
    """What the model is told about positions for one forward pass.

    positions:       (B, T) or (1, T)
    distances:       (G, 2, T) distance tables, the reference's reading for relative/ALiBi
    layer_positions: (num_layers, B or 1, T) per-layer positions for attention-level PEs
    embed_positions: (B, T) the positions of a second, embed-only encoding, read from the
                     tokens (:mod:`randpos.positions.tokens`; docs/design.md §6)
    """

    positions: torch.Tensor
    distances: torch.Tensor | None = None
    layer_positions: torch.Tensor | None = None
    embed_positions: torch.Tensor | None = None

    def model_kwargs(self) -> dict[str, torch.Tensor | None]:
        """The keyword arguments a model's forward takes besides the positions: ``distances`` and
        ``layer_positions`` (None when unused), and ``embed_positions`` only when an embed-only
        encoding reads its own positions."""
        kwargs = {"distances": self.distances, "layer_positions": self.layer_positions}
        if self.embed_positions is not None:  # only models with an embed-only encoding take it
            kwargs["embed_positions"] = self.embed_positions
        return kwargs


def plan_positions(
    spec: PositionSpec,
    num_layers: int,
    batch_size: int,
    length: int,
    generator: torch.Generator | None,
    *,
    mode: str = "random",
    device: torch.device | str = "cpu",
    tokens: torch.Tensor | None = None,
    reading: tuple[TokenPositionSpec, torch.Tensor] | None = None,
) -> PositionPlan:
    """Positions for a forward pass of ``batch_size`` sequences of ``length`` tokens.

    A plain spec (sampler ``contiguous``) always gives 0..T-1. Otherwise ``mode`` decides:
    ``random`` (the training rule and the reference's evaluation: a fresh draw of the spec's
    sampler), ``contiguous`` or ``spread`` (evenly spaced over [0, L)). With the ``distances``
    reading, relative/ALiBi get sorted distance tables and, with ``redraw_per_layer``, every
    one of the ``num_layers`` layers draws its own tables and its own RoPE positions, as the
    reference does.

    ``reading`` (a :class:`~randpos.positions.tokens.TokenPositionSpec` and its token-kind
    table) adds ``embed_positions`` read from ``tokens`` (B, T), their offsets drawn from
    ``generator`` after the attention's positions (``mode`` ``random``: training offsets).
    """
    plan = _attention_plan(spec, num_layers, batch_size, length, generator, mode, device)
    if reading is None:
        return plan
    source, kinds = reading
    offsets = draw_offsets(source, batch_size, generator, mode=mode, device=device)
    return plan._replace(embed_positions=token_positions(source, tokens, kinds, offsets))


def _attention_plan(
    spec: PositionSpec,
    num_layers: int,
    batch_size: int,
    length: int,
    generator: torch.Generator | None,
    mode: str,
    device: torch.device | str,
) -> PositionPlan:
    """The positions the attention (and ``pe.embed``) sees: the spec's sampler."""
    if not spec.randomized or mode == "contiguous":
        return PositionPlan(contiguous_positions(batch_size, length, device=device))
    L = spec.max_position

    def positions() -> torch.Tensor:  # (B, T)
        return sample_positions(
            mode,
            batch_size,
            length,
            L,
            generator,
            per_sequence=spec.per_sequence,
            device=device,
            sampler=spec.sampler,
        )

    shared = positions()
    if not spec.distances:
        return PositionPlan(shared)
    redraw = spec.redraw_per_layer and mode == "random"
    distances = sample_distances(
        mode,
        num_layers if redraw else 1,
        length,
        L,
        generator,
        both_sides=spec.both_sides,
        device=device,
    )  # (G, 2, T)
    layer_positions = None
    if redraw:
        layer_positions = torch.stack([positions() for _ in range(num_layers)])
    return PositionPlan(shared, distances, layer_positions)


__all__ = ["PositionPlan", "plan_positions"]
