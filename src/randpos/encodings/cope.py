"""CoPE, Contextual Position Encoding (Golovneva et al. 2024, arXiv 2405.18719).

Notation: B = batch, H = heads, T = length, d = head width, P = ``npos`` (the table size),
query i, key j <= i (causal).

    g_ij = sigmoid(q_i . k_j / sqrt(d))                     gates, 0 for j > i
    p_ij = min(sum_{t=j..i} g_it, P - 1)                    positions counted back from the query
    z_i[t] = q_i . e[t],  t = 0..P-1                         (B, H, T, P), never (B, T, T, d)
    b_ij = (p - floor p) z_i[ceil p] + (1 - (p - floor p)) z_i[floor p]
    logits_ij = (q_i . k_j + b_ij) / sqrt(d)                 so the bias hook returns b / sqrt(d)

e is a learnable (d, P) table per layer, shared by the heads, initialized to **zeros** (as the
official code): at initialization CoPE adds exactly nothing and the model is NoPE's. The gradient
reaches the gates through the interpolation weight p - floor p. P defaults to max_position + 1
(the official ``block_size + 1``: a causal sum of T <= max_position gates never reaches the
clamp); the option ``pe.npos`` (:class:`CopeOptions`) overrides it. Positions come from the
content, so the ``positions`` argument (and any position sampler) is ignored:
``randomizable = False``. Causal only. Source: facebookresearch/RAM
``projects/cope/src/cope/context_position.py`` (``ContextPosSelfAttn``, default options: gates
from q . k, division by sqrt(d) after the bias).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from randpos.encodings.base import EncodingShape, PositionalEncoding, register


@dataclass(frozen=True)
class CopeOptions:
    """npos: the size P of CoPE's position table (positions clamped to P - 1); None:
    max_position + 1."""

    npos: int | None = None

    def __post_init__(self) -> None:
        npos = self.npos
        if npos is not None and (not isinstance(npos, int) or isinstance(npos, bool) or npos < 1):
            raise ValueError(
                f"pe.npos={npos!r}: must be None (max_position + 1) or a positive integer"
            )


#: elements of one chunk's (B, H, rows, Tk) temporaries in :meth:`bias` (64 MiB of fp32)
COPE_CHUNK_ELEMENTS = 1 << 24


@register("cope")
class ContextualPositionEncoding(PositionalEncoding):
    """CoPE (arXiv 2405.18719): positions counted from the content through sigmoid gates over the
    keys, interpolated in a table of ``npos`` vectors and added to the logits (``bias``); causal
    only, and it ignores the positions it is given."""

    causal_only = True
    randomizable = False  # positions are counted from the content
    reads_positions = False
    float_positions = True  # positions are ignored, whatever their dtype

    Options = CopeOptions

    def __init__(self, shape: EncodingShape, options: CopeOptions | None = None) -> None:
        if not shape.causal:
            raise ValueError(
                "cope is causal-only: set causal=true (the model is bidirectional; its positions"
                " count gates from each key up to the query)"
            )
        super().__init__(shape, options)
        given = self.options.npos
        npos = given if given is not None else shape.max_position + 1
        self.npos = npos
        # e: (layers, d, P); zeros until reset_parameters (which keeps them zero)
        self.table = nn.Parameter(torch.zeros(self.num_layers, self.head_width, npos))

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Zeros, as the official code: draws nothing from ``generator``."""
        with torch.no_grad():
            self.table.zero_()

    def context_positions(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """p_ij (B, H, Tq, Tk), 0 for j > i, clamped to npos - 1; the Tq queries are the last
        Tq of the Tk keys (Tq = Tk without a KV cache)."""
        rows, keys = q.shape[-2], k.shape[-2]
        visible = torch.ones(rows, keys, dtype=torch.bool, device=q.device).tril(keys - rows)
        gates = torch.sigmoid(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]))  # (B, H, Tq, Tk)
        gates = gates.masked_fill(~visible, 0.0)  # j <= i
        # sum over t = j..Tk-1 of the masked gates = sum over t = j..i
        return gates.flip(-1).cumsum(-1).flip(-1).clamp(max=self.npos - 1)

    def bias(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        positions: torch.Tensor,
        layer: int,
        distances: torch.Tensor | None = None,
        key_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        rows, keys = q.shape[-2], k.shape[-2]
        # a position never exceeds the number of visible keys: the table's first Tk + 1
        # columns suffice (same numbers, less memory at large P)
        table = self.table[layer, :, : min(self.npos, keys + 1)].to(q.dtype)  # (d, P')
        # query rows in chunks, so that the ~10 (B, H, rows, Tk) temporaries of the gates,
        # their cumulative sum and the interpolation stay small; rows are independent
        per_row = max(1, q.shape[0] * q.shape[1] * keys)
        step = max(1, COPE_CHUNK_ELEMENTS // per_row)
        chunks = []
        for lo in range(0, rows, step):
            hi = min(rows, lo + step)
            # the chunk's queries are rows lo..hi-1 of the last Tq of the Tk keys: keep its
            # keys up to its last row, so the causal alignment stays bottom-right
            last = keys - rows + hi
            p = self.context_positions(q[..., lo:hi, :], k[..., :last, :])  # (B, H, r, last)
            z = q[..., lo:hi, :] @ table  # (B, H, r, P'): q_i . e[t] for every t
            lower = p.detach().floor()
            weight = p - lower  # differentiable: the gradient to the gates flows here
            z_lower = z.gather(-1, lower.long())
            z_upper = z.gather(-1, p.detach().ceil().long())
            b = (z_upper * weight + z_lower * (1.0 - weight)) / math.sqrt(q.shape[-1])
            chunks.append(torch.nn.functional.pad(b, (0, keys - last)))  # invisible keys: 0
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=-2)
