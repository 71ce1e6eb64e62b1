"""ARPG generation time against the number of decoding steps (ratio to one token per step).

The model of the ``arpg`` preset (2 content + 2 cross layers, width 64, 4 heads; random weights
with a non-zero head: the time does not depend on what the weights learned) generates
``--batch`` images on a grid of ``--grid`` x ``--grid`` tokens (default 16 x 16 = 256 tokens, a
32 x 32 canvas), in random order, with classifier-free guidance (the conditional and null rows
batched), on ARPG's arccos schedule with S decoding steps for each S of ``--steps`` (N = one token
per step, the autoregressive baseline's count), with the cache and, for one-per-step and the
smallest S, without it. Reports wall and CPU seconds (best of ``--repeat``) and the ratio of each
to the one-token-per-step cached time. Writes ``benchmarks/results/arpg_<hostname>.json``. No
assertions on time.

    .venv/bin/python benchmarks/bench_arpg.py [--grid 16] [--batch 100] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from machine import machine_info  # benchmarks/machine.py (the script's own folder)

from randpos.images.arpg import ARPG, decode_counts, generate, generation_orders
from randpos.images.models import VisionConfig
from randpos.positions.grid import sample_grid_positions

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=int, default=16)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 64, 32, 16, 8, 4])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    h = w = args.grid
    N = h * w
    config = VisionConfig(pe="rope2d_axial", depth=4, width=64, num_heads=4, max_position=h)
    model = ARPG(config, generator=torch.Generator().manual_seed(0)).eval()
    with torch.no_grad():
        model.head.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    labels = torch.arange(args.batch) % 10
    positions = sample_grid_positions("random", args.batch, h, w, h, g)
    orders = generation_orders("random", args.batch, h, w, g)
    step_counts = [N if s <= 0 else min(s, N) for s in args.steps]

    def run(steps: int, cache: bool) -> tuple[float, float, torch.Tensor]:
        best_wall = best_cpu = float("inf")
        for _ in range(args.repeat):
            sampler = torch.Generator().manual_seed(3)
            wall, cpu = time.perf_counter(), time.process_time()
            with torch.inference_mode():
                tokens = generate(
                    model,
                    labels,
                    positions,
                    orders,
                    decode_counts(N, steps),
                    cfg_scale=1.5,
                    generator=sampler,
                    cache=cache,
                )
            best_wall = min(best_wall, time.perf_counter() - wall)
            best_cpu = min(best_cpu, time.process_time() - cpu)
        return best_wall, best_cpu, tokens

    rows = []
    print(f"B={args.batch}, grid {h}x{w} (N={N}), CFG batched, arccos schedule")
    print(f"{'steps':>6} {'cache':>6} {'wall s':>8} {'cpu s':>8} {'wall/one-per-step':>18}")
    cached_tokens = {}
    for steps in step_counts:
        for cache in (True, False) if steps in (N, min(step_counts)) else (True,):
            wall, cpu, tokens = run(steps, cache)  # cached first
            row = {"steps": steps, "cache": cache, "wall_s": wall, "cpu_s": cpu}
            if cache:
                cached_tokens[steps] = tokens
            else:  # the same tokens as the cached path (checked, not timed)
                row["same_tokens_as_cached"] = bool(torch.equal(tokens, cached_tokens[steps]))
            rows.append(row)
    baseline = next(r["wall_s"] for r in rows if r["steps"] == N and r["cache"])
    for row in rows:
        row["ratio_to_one_per_step"] = row["wall_s"] / baseline
        print(
            f"{row['steps']:>6} {str(row['cache']):>6} {row['wall_s']:8.2f} {row['cpu_s']:8.2f} "
            f"{row['ratio_to_one_per_step']:18.3f}"
            + ("  (tokens differ!)" if row.get("same_tokens_as_cached") is False else "")
        )
    record = {
        "machine": machine_info(),
        "protocol": {
            "batch": args.batch,
            "grid": [h, w],
            "tokens": N,
            "threads": args.threads,
            "repeat": args.repeat,
            "schedule": "arccos",
            "cfg_scale": 1.5,
            "model": "the arpg preset: 2 content + 2 cross layers, width 64, 4 heads, random",
        },
        "rows": rows,
    }
    out = args.out or RESULTS / f"arpg_{record['machine']['hostname']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
