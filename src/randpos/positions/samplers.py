"""Position samplers: the paper's randomized positions and the other draws, as data fed to any
encoding (docs/design.md §1).

Notation: B = batch size, T = sequence length (``length``), L = ``max_position`` (the range of
simulated positions, ``noise_max_length`` in the reference), G = number of distance tables.

Two readings of "randomized" exist in the reference (docs/reference-system.md §4.2):

* positions (sin/cos, learned, RoPE): a sorted draw of T distinct positions from ``[0, L)``
  replaces ``0, 1, ..., T-1`` (:func:`randomized_positions`);
* distances (relative, ALiBi): a sorted draw of T-1 distinct distances from ``[1, L)`` replaces
  the offsets ``1, ..., T-1`` (:func:`randomized_distances`), so attention stays Toeplitz.

Every function is pure: randomness comes only from the ``generator`` passed in (the global
torch RNG when it is ``None``), so the same generator state gives the same draw.
"""

from __future__ import annotations

import numbers

import torch

from randpos.positions.spec import EVAL_MODES


def check_sizes(
    batch_size: int, length: int, max_position: int | None = None, batch_name: str = "batch_size"
) -> None:
    """Raise a ``ValueError`` naming the argument unless ``batch_size``, ``length`` and
    ``max_position`` (when given) are integers >= 1."""
    sizes = [(batch_name, batch_size), ("length", length)]
    if max_position is not None:
        sizes.append(("max_position", max_position))
    for name, value in sizes:
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if max_position is None:
        return
    if length > max_position:
        raise ValueError(
            f"length {length} exceeds max_position {max_position}: positions are distinct values "
            f"in [0, {max_position}), so at most {max_position} of them fit; raise max_position "
            f"(L) to at least {length}"
        )


def sorted_subset(
    rows: int,
    length: int,
    population: int,
    generator: torch.Generator | None,
    device: torch.device | str | None,
) -> torch.Tensor:
    """A uniform random ``length``-subset of ``range(population)`` per row, sorted: (rows, T).

    The ``length`` smallest of ``population`` i.i.d. uniform keys sit at a uniformly random set of
    indices (every subset is equally likely), so ``topk`` + ``sort`` samples without replacement
    in one vectorized pass. Keys are drawn on the generator's device (a CPU generator cannot
    drive a CUDA draw) and the result is moved to ``device``.
    """
    sample_device = generator.device if generator is not None else device
    # float64 keys make ties (which would bias the subset slightly) practically impossible
    keys = torch.rand(
        rows, population, generator=generator, device=sample_device, dtype=torch.float64
    )
    idx = keys.topk(length, dim=1, largest=False, sorted=False).indices
    return idx.sort(dim=1).values.to(device=device if device is not None else idx.device)


def contiguous_positions(
    batch_size: int, length: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Positions ``0, 1, ..., T-1`` for every sequence: LongTensor[B, T]."""
    check_sizes(batch_size, length)
    return torch.arange(length, device=device).expand(batch_size, length).contiguous()


def randomized_positions(
    batch_size: int,
    length: int,
    max_position: int,
    generator: torch.Generator | None = None,
    *,
    per_sequence: bool = False,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A sorted uniform draw of T distinct positions from ``[0, L)``: LongTensor[B, T].

    Each row is strictly increasing; the set of positions is a uniformly random T-subset of
    ``range(L)``. By default one draw is shared by the whole batch, as in the reference;
    ``per_sequence=True`` draws every row independently. Raises ``ValueError`` when
    ``length > max_position``.
    """
    check_sizes(batch_size, length, max_position)
    if per_sequence:
        return sorted_subset(batch_size, length, max_position, generator, device)
    row = sorted_subset(1, length, max_position, generator, device)
    return row.expand(batch_size, length).contiguous()


def float_positions(
    batch_size: int,
    length: int,
    max_position: int,
    generator: torch.Generator | None = None,
    *,
    per_sequence: bool = False,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Random Float Sampling: T sorted continuous draws from ``[0, L)``: FloatTensor[B, T]
    (float64, so that positions near L keep their fraction through the encodings' angles).

    The continuous counterpart of :func:`randomized_positions`: i.i.d. uniform draws, sorted
    (ties have probability zero), shared by the batch unless ``per_sequence``. Only encodings
    whose formula is continuous in the positions take them (``float_positions``).
    """
    check_sizes(batch_size, length, max_position)
    rows = batch_size if per_sequence else 1
    dev = generator.device if generator is not None else device  # draw on the generator's
    draws = torch.rand(rows, length, generator=generator, device=dev, dtype=torch.float64)
    out = (draws * max_position).clamp(max=max_position - 1e-9).sort(dim=-1).values
    return out.expand(batch_size, length).contiguous().to(device or out.device)


def pose_positions(
    batch_size: int,
    length: int,
    max_position: int,
    generator: torch.Generator | None = None,
    *,
    per_sequence: bool = False,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """PoSE's skip positions (Zhu et al. 2023, its ``train_pose.py``): LongTensor[B, T].

    The T tokens are split in two chunks: the first ``r ~ U{1..(T+1)//2}`` get ``0..r-1``, the
    rest ``r+u .. T-1+u`` with a skip ``u ~ U{0..L-T}``: contiguous within each chunk, one gap
    between them, rooted at 0, so relative distances up to L-1 are seen while every chunk
    stays contiguous. One draw is shared by the batch unless ``per_sequence``.
    """
    check_sizes(batch_size, length, max_position)
    rows = batch_size if per_sequence else 1
    dev = generator.device if generator is not None else device  # draw on the generator's
    first = torch.randint(1, (length + 1) // 2 + 1, (rows, 1), generator=generator, device=dev)
    skip = torch.randint(0, max_position - length + 1, (rows, 1), generator=generator, device=dev)
    index = torch.arange(length, device=dev).expand(rows, length)
    out = index + (index >= first) * skip
    return out.expand(batch_size, length).contiguous().to(device or out.device)


def spread_positions(
    batch_size: int,
    length: int,
    max_position: int,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Evenly spaced positions ``floor(i * L / T)``, i = 0..T-1: LongTensor[B, T].

    Deterministic and strictly increasing (consecutive values differ by at least L/T >= 1); an
    evaluation mode that covers the whole trained range without sampling noise.
    """
    check_sizes(batch_size, length, max_position)
    row = torch.arange(length, device=device) * max_position // length
    return row.expand(batch_size, length).contiguous()


def sample_positions(
    mode: str,
    batch_size: int,
    length: int,
    max_position: int,
    generator: torch.Generator | None = None,
    *,
    per_sequence: bool = False,
    device: torch.device | str | None = None,
    sampler: str = "random",
) -> torch.Tensor:
    """Dispatch on ``mode`` in :data:`EVAL_MODES`: (B, T) positions within ``[0, L)``; the
    ``random`` mode draws with ``sampler`` (``random``, ``float`` (float positions) or ``pose``;
    :data:`~randpos.positions.spec.SAMPLERS`).

    ``contiguous`` also checks ``length <= max_position`` so every mode fails the same way.
    """
    if mode == "random":
        draw = {"float": float_positions, "pose": pose_positions}.get(sampler, randomized_positions)
        return draw(
            batch_size, length, max_position, generator, per_sequence=per_sequence, device=device
        )
    if mode == "contiguous":
        check_sizes(batch_size, length, max_position)
        return contiguous_positions(batch_size, length, device=device)
    if mode == "spread":
        return spread_positions(batch_size, length, max_position, device=device)
    raise ValueError(f"unknown position mode {mode!r}; valid modes: {', '.join(EVAL_MODES)}")


# --- the distance reading (relative, ALiBi) --------------------------------------------------


def randomized_distances(
    num_tables: int,
    length: int,
    max_position: int,
    generator: torch.Generator | None = None,
    *,
    both_sides: bool = False,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Distance tables for the reference's randomized relative/ALiBi: LongTensor[G, 2, T].

    ``table[g, 0, d]`` is the distance ``a_d`` used for a key ``d`` places to the right of the
    query (offset ``j - i = d``), ``table[g, 1, d]`` the one for a key ``d`` places to its left.
    ``a_0 = 0`` and ``a_1 < ... < a_{T-1}`` is a sorted draw without replacement from
    ``{1, ..., L-1}``. The left side repeats the right side unless ``both_sides`` (an independent
    draw, the reference's ``randomize_both_sides``). ``num_tables`` is 1 for a table shared by all
    layers, or the number of layers for the reference's per-layer redraw.
    """
    check_sizes(num_tables, length, max_position, "num_tables")
    sides = 2 if both_sides else 1
    rows = num_tables * sides
    if length > 1:
        # a sorted (T-1)-subset of {0..L-2}, shifted to {1..L-1}
        tail = sorted_subset(rows, length - 1, max_position - 1, generator, device) + 1
    else:
        tail = torch.empty(rows, 0, dtype=torch.long, device=device)
    zero = torch.zeros(rows, 1, dtype=torch.long, device=tail.device)  # a_0: the query itself
    table = torch.cat([zero, tail], dim=1)  # (G * sides, T)
    table = table.view(num_tables, sides, length)
    return table.expand(num_tables, 2, length).contiguous()


def contiguous_distances(
    num_tables: int,
    length: int,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Identity tables ``a_d = d`` on both sides: LongTensor[G, 2, T] (the unrandomized case)."""
    check_sizes(num_tables, length, batch_name="num_tables")
    return torch.arange(length, device=device).expand(num_tables, 2, length).contiguous()


def spread_distances(
    num_tables: int,
    length: int,
    max_position: int,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Evenly spaced distances ``a_d = floor(d * L / T)`` on both sides: LongTensor[G, 2, T]."""
    check_sizes(num_tables, length, max_position, "num_tables")
    row = torch.arange(length, device=device) * max_position // length
    return row.expand(num_tables, 2, length).contiguous()


def sample_distances(
    mode: str,
    num_tables: int,
    length: int,
    max_position: int,
    generator: torch.Generator | None = None,
    *,
    both_sides: bool = False,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Dispatch on ``mode`` in :data:`EVAL_MODES` for distance tables: LongTensor[G, 2, T]."""
    if mode == "random":
        return randomized_distances(
            num_tables, length, max_position, generator, both_sides=both_sides, device=device
        )
    if mode == "contiguous":
        check_sizes(num_tables, length, max_position, "num_tables")
        return contiguous_distances(num_tables, length, device=device)
    if mode == "spread":
        return spread_distances(num_tables, length, max_position, device=device)
    raise ValueError(f"unknown distance mode {mode!r}; valid modes: {', '.join(EVAL_MODES)}")
