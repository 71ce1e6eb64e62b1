"""Training-step speed of the reference encoder, per positional encoding and position sampler.

Measures forward + backward + Adam step of the default model (5 x 64, 8 heads) at B = 128, T = 80
(reverse_string at n = 40, the setting of SPEC §9) for every registered PE, with

* ``contiguous``: positions 0..T-1 (no distance table);
* ``random_positions``: a sorted draw from [0, L) per step (the position reading);
* ``random_distances``: per-layer distance tables per step (the reference's reading for relative
  and ALiBi; only for PEs that read distances).

Sampling is part of the timed step. Reports wall time and the process's CPU time (steadier on a
shared machine). Prints a table and writes
``benchmarks/results/model_<hostname>.json``. No assertions; numbers depend on machine load.

    .venv/bin/python benchmarks/bench_model.py [--repeats 5] [--warmup 2] [--devices cpu cuda]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from machine import machine_info  # benchmarks/machine.py (the script's own folder)

from randpos.encodings import PE_NAMES, get_encoding
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
    config = ModelConfig(pe=pe, max_position=max_position, attention=attention)
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
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
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

    info = machine_info()
    out = args.out or RESULTS / f"model_{info['hostname']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": info, "results": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
