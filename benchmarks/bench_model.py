"""Training-step speed of the reference encoder, per positional encoding and position sampler.

Measures forward + backward + Adam step of the default model (5 x 64, 8 heads) at B = 128, T = 80
(reverse_string at n = 40, the setting of docs/reference-system.md §6) for every registered PE, with

* ``contiguous``: positions 0..T-1 (no distance table);
* ``random_positions``: a sorted draw from [0, L) per step (the position reading);
* ``random_distances``: per-layer distance tables per step (the reference's reading for relative
  and ALiBi; only for PEs that read distances).

Sampling is part of the timed step. Reports wall time and the process's CPU time (steadier on a
shared machine), and each row's CPU time as a ratio to ``none`` with the same sampler, measured
in the same run (``random_distances`` rows against ``none``'s ``random_positions``). Causal-only
encodings run with a causal mask.

``--memory-length T`` adds one memory row per encoding: the peak resident memory of a fresh
process that builds the model and runs one inference forward of ``--memory-batch`` sequences of
T tokens with per-sequence random positions from [0, 2048) (so a bias is (B, H, T, T)),
reported as the increase of the process's peak RSS over its level before the forward.

Prints a table and writes ``benchmarks/results/model_<hostname>.json``. No assertions; numbers
depend on machine load.

    .venv/bin/python benchmarks/bench_model.py [--repeats 5] [--warmup 2] [--devices cpu cuda]
    .venv/bin/python benchmarks/bench_model.py --memory-length 1500 --memory-batch 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from machine import machine_info  # benchmarks/machine.py (the script's own folder)

from randpos.encodings import PE_NAMES_1D as PE_NAMES
from randpos.encodings import get_encoding
from randpos.model import ModelConfig, Transformer
from randpos.positions import contiguous_positions, randomized_distances, randomized_positions

RESULTS = Path(__file__).resolve().parent / "results"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_one(
    pe: str,
    sampler: str,
    device: torch.device,
    *,
    batch: int,
    length: int,
    max_position: int,
    attention: str,
    warmup: int,
    repeats: int,
) -> dict:
    causal = get_encoding(pe).causal_only
    config = ModelConfig(pe=pe, max_position=max_position, attention=attention, causal=causal)
    model = Transformer(config, generator=torch.Generator().manual_seed(0)).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator(device=device).manual_seed(0)
    tokens = torch.randint(0, config.vocab_size, (batch, length), device=device, generator=gen)
    targets = torch.randint(0, config.num_classes, (batch, length), device=device, generator=gen)

    def step() -> None:
        distances = None
        if sampler == "contiguous":
            positions = contiguous_positions(batch, length, device=device)
        else:
            positions = randomized_positions(batch, length, max_position, gen, device=device)
        if sampler == "random_distances":
            distances = randomized_distances(
                config.num_layers, length, max_position, gen, device=device
            )
        logits = model(tokens, positions, distances=distances, generator=gen)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    for _ in range(warmup):
        step()
    sync(device)
    times, cpu_times = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    return {
        "pe": pe,
        "sampler": sampler,
        "device": device.type,
        "attention": attention,
        "batch": batch,
        "length": length,
        "max_position": max_position,
        "parameters": sum(p.numel() for p in model.parameters()),
        "repeats": repeats,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "times_s": times,
        # CPU time of this process: steadier than wall time on a shared machine
        "median_process_s": statistics.median(cpu_times),
    }


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS to its current RSS (Linux >= 4.0); False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_kib() -> int:
    """VmHWM, the peak resident set size (KiB) since the last reset."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise OSError("no VmHWM in /proc/self/status")


def forward_peak(pe: str, batch: int, length: int, max_position: int) -> dict:
    """In a fresh process: peak RSS growth (MiB) of one no-grad forward."""
    import resource

    torch.set_num_threads(1)
    config = ModelConfig(pe=pe, max_position=max_position, causal=get_encoding(pe).causal_only)
    model = Transformer(config, generator=torch.Generator().manual_seed(0)).eval()
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, config.vocab_size, (batch, length), generator=gen)
    positions = randomized_positions(batch, length, max_position, gen, per_sequence=True)
    # ru_maxrss survives exec on Linux (a spawned child starts with its parent's high-water
    # mark), so reset the kernel's peak RSS (VmHWM) where that is possible and read it back
    reset = _reset_peak_rss()
    before = _peak_rss_kib() if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with torch.no_grad():
        model(tokens, positions)
    seconds = time.perf_counter() - start
    peak = _peak_rss_kib() if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "pe": pe,
        "batch": batch,
        "length": length,
        "forward_s": seconds,
        "peak_rss_mib": peak / 1024,
        "forward_peak_increase_mib": (peak - before) / 1024,
    }


def memory_rows(pes: list[str], batch: int, length: int, max_position: int) -> list[dict]:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    rows = []
    print(f"{'pe':24} {'forward s':>10} {'peak RSS MiB':>13} {'forward increase MiB':>21}")
    for pe in pes:
        with ctx.Pool(1) as pool:  # a fresh process per encoding: its own high-water mark
            row = pool.apply(forward_peak, (pe, batch, length, max_position))
        rows.append(row)
        print(
            f"{pe:24} {row['forward_s']:10.2f} {row['peak_rss_mib']:13.0f}"
            f" {row['forward_peak_increase_mib']:21.0f}",
            flush=True,
        )
    return rows


def add_ratios(rows: list[dict]) -> None:
    """``ratio_to_none``: CPU time per step over ``none``'s on the same device and sampler."""
    base = {(r["device"], r["sampler"]): r["median_process_s"] for r in rows if r["pe"] == "none"}
    for r in rows:
        sampler = "random_positions" if r["sampler"] == "random_distances" else r["sampler"]
        ref = base.get((r["device"], sampler))
        r["ratio_to_none"] = r["median_process_s"] / ref if ref else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--length", type=int, default=80)
    parser.add_argument("--max-position", type=int, default=2048)
    parser.add_argument("--attention", default="fast", choices=["fast", "math"])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pes", nargs="*", default=list(PE_NAMES))
    parser.add_argument("--devices", nargs="*", default=None, help="default: cpu (+ cuda if any)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--memory-length", type=int, default=0, help="add memory rows at this T")
    parser.add_argument("--memory-batch", type=int, default=8)
    parser.add_argument("--no-speed", action="store_true", help="memory rows only")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    devices = [] if args.no_speed else devices
    rows = []
    print(f"{'device':6} {'pe':24} {'sampler':17} {'median s/step':>13} {'min':>8} {'cpu s':>8}")
    for device_name in devices:
        device = torch.device(device_name)
        for pe in args.pes:
            samplers = ["contiguous", "random_positions"]
            if get_encoding(pe).uses_distances:
                samplers.append("random_distances")
            for sampler in samplers:
                row = bench_one(
                    pe,
                    sampler,
                    device,
                    batch=args.batch,
                    length=args.length,
                    max_position=args.max_position,
                    attention=args.attention,
                    warmup=args.warmup,
                    repeats=args.repeats,
                )
                rows.append(row)
                print(
                    f"{device.type:6} {pe:24} {sampler:17} {row['median_s']:13.4f}"
                    f" {row['min_s']:8.4f} {row['median_process_s']:8.4f}",
                    flush=True,
                )

    add_ratios(rows)
    for r in rows:
        if r["ratio_to_none"] is not None:
            print(
                f"{r['device']:6} {r['pe']:24} {r['sampler']:17} x{r['ratio_to_none']:.2f} of none"
            )
    memory = []
    if args.memory_length:
        memory = memory_rows(args.pes, args.memory_batch, args.memory_length, args.max_position)

    info = machine_info()
    out = args.out or RESULTS / f"model_{info['hostname']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": info, "results": rows, "memory": memory}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
