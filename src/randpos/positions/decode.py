"""Positions of generated tokens: where a causal model's new tokens go after its prompt.

Shared by the decoder workload (its ``decode_positions`` option) and ``randpos.model.hf``'s
decode loop, so both place tokens by the same rules.
"""

from __future__ import annotations

import torch

from randpos.positions.samplers import check_sizes
from randpos.positions.spec import DECODE_MODES


def decode_positions(
    prompt_positions: torch.Tensor,
    new_tokens: int,
    max_position: int,
    mode: str = "random",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Positions of ``new_tokens`` generated after a prompt at ``prompt_positions`` (B, P):
    (B, N), each row strictly increasing and after the prompt's last position p.

    * ``arange``: p+1, p+2, ..., p+N;
    * ``spread``: evenly spaced over (p, L): p + ceil((i + 1) (L-1-p) / N), i = 0..N-1, the last
      at L-1;
    * ``random``: a sorted uniform draw of N distinct positions from (p, L), made once for the
      whole generation (not gap by gap, which would drift towards L). For a sorted uniform
      subset of [0, L), the elements after its P smallest are exactly such a draw, so a prompt
      drawn that way and its continuation are distributed like one training sequence.
      Float prompt positions (Random Float Sampling) continue with sorted uniform floats.

    Rows sharing one draw (``prompt_positions`` of batch 1, or expanded) share the result.
    ``ValueError`` when the N positions do not fit below L (positions are never clamped).
    """
    if mode not in DECODE_MODES:
        raise ValueError(
            f"unknown decode_positions {mode!r}; valid modes: {', '.join(DECODE_MODES)}"
        )
    if prompt_positions.dim() != 2 or prompt_positions.shape[1] == 0:
        raise ValueError(
            f"prompt positions must have a non-empty shape (B, P), got "
            f"{tuple(prompt_positions.shape)}"
        )
    check_sizes(prompt_positions.shape[0], new_tokens, max_position, "prompt batch")
    last = prompt_positions[:, -1:]  # (B, 1)
    shared = bool((last == last[:1]).all())
    rows = 1 if shared else last.shape[0]
    last = last[:rows]
    room = max_position - 1 - last  # positions available after the prompt, per row
    if bool((room < new_tokens).any()):
        worst = int(last.max())
        raise ValueError(
            f"{new_tokens} generated tokens do not fit after the prompt's last position {worst}"
            f" below max_position {max_position}; shorten the generation or raise max_position"
        )
    step = torch.arange(1, new_tokens + 1, device=last.device)  # (N,)
    if mode == "arange":
        out = last + step.to(last.dtype)
    elif mode == "spread":
        out = last + torch.div(
            step * room.long() + new_tokens - 1, new_tokens, rounding_mode="floor"
        )
        out = out.to(last.dtype)
    elif last.is_floating_point():
        draws = torch.rand(
            rows,
            new_tokens,
            generator=generator,
            dtype=torch.float64,
            device=generator.device if generator is not None else last.device,
        ).to(last.device)
        span = (max_position - last).clamp(min=0)
        out = (last + draws * span).clamp(max=max_position - 1e-9).sort(dim=-1).values
        out = out.to(last.dtype)
    else:
        # a sorted subset of (p, L) per row: the N smallest of i.i.d. keys over the positions
        # after p (earlier ones are pushed past every real key)
        population = torch.arange(max_position, device=last.device)  # (L,)
        dev = generator.device if generator is not None else last.device
        keys = torch.rand(rows, max_position, generator=generator, device=dev, dtype=torch.float64)
        keys = keys.to(last.device).masked_fill(population <= last, 2.0)
        idx = keys.topk(new_tokens, dim=1, largest=False, sorted=False).indices
        out = idx.sort(dim=1).values.to(last.dtype)
    return out.expand(prompt_positions.shape[0], new_tokens).contiguous()
