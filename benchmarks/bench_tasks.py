"""Task sampling speed, and how it compares with one training step of the default model.

Measures, for every task, samples per second at (B=128, n=40) (the training regime) and
(B=512, n=500) (the longest evaluation length) on CPU, and on CUDA when available; then the time
of one full training step (forward + backward + Adam) of the default encoder at B=128, n=40 on
reverse_string (T = 80 tokens), so each task's sampling cost can be read as a fraction of a step.

Prints a table and writes benchmarks/results/tasks_<hostname>.json. No assertions: numbers
depend on the machine and on its load.

    .venv/bin/python benchmarks/bench_tasks.py            # full run
    .venv/bin/python benchmarks/bench_tasks.py --reps 3   # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import time
from pathlib import Path

import torch

from randpos.tasks import TASK_NAMES, get_task

SHAPES = ((128, 40), (512, 500))  # (batch size, length)
STEP_TASK, STEP_SHAPE = "reverse_string", (128, 40)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn, reps: int, device: torch.device) -> dict[str, float]:
    """Median and minimum seconds per call after one warm-up call (the median resists load)."""
    fn()
    _sync(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times)}


def bench_sampling(device: torch.device, reps: int, names: list[str]) -> list[dict]:
    rows = []
    for name in names:
        task = get_task(name)
        gen = torch.Generator(device=device).manual_seed(0)
        for batch_size, length in SHAPES:
            t = time_calls(lambda: task.sample(batch_size, length, gen), reps, device)  # noqa: B023
            rows.append(
                {
                    "task": name,
                    "device": device.type,
                    "batch_size": batch_size,
                    "length": length,
                    "seconds_per_batch": t["median_s"],
                    "min_seconds_per_batch": t["min_s"],
                    "samples_per_second": batch_size / t["median_s"],
                }
            )
            rate = batch_size / t["median_s"]
            print(
                f"  {device.type:4s} {name:28s} B={batch_size:<4d} n={length:<4d} "
                f"{t['median_s'] * 1e3:9.2f} ms/batch {rate:12,.0f} samples/s",
                flush=True,
            )
    return rows


def bench_train_step(device: torch.device, reps: int) -> dict:
    """One Adam step of the default model (pe="none") on a reverse_string batch."""
    try:
        from randpos.model import ModelConfig, Transformer
    except ImportError as err:  # the model package may not exist yet in a partial checkout
        return {"available": False, "reason": f"randpos.model not importable: {err}"}
    task = get_task(STEP_TASK)
    batch_size, length = STEP_SHAPE
    gen = torch.Generator(device=device).manual_seed(0)
    batch = task.sample(batch_size, length, gen)
    k = batch.targets.shape[1]
    blanks = torch.full((batch_size, k), task.input_vocab_size, device=device)
    tokens = torch.cat([batch.inputs, blanks], dim=1)  # (B, T) inputs then blank outputs
    steps = tokens.shape[1]
    positions = torch.arange(steps, device=device).expand(batch_size, steps)
    torch.manual_seed(0)  # model init only; the benchmark's data uses its own generator
    model = Transformer(
        ModelConfig(
            vocab_size=task.input_vocab_size + 1, num_classes=task.output_vocab_size, pe="none"
        )
    ).to(device)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        logits = model(tokens, positions)[:, -k:]  # (B, k, C) the blank positions
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.targets.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    t = time_calls(step, reps, device)
    print(
        f"  {device.type:4s} train step ({STEP_TASK}, B={batch_size}, n={length}, T={steps}): "
        f"{t['median_s'] * 1e3:.1f} ms",
        flush=True,
    )
    return {
        "available": True,
        "task": STEP_TASK,
        "batch_size": batch_size,
        "length": length,
        "sequence_length": steps,
        "seconds_per_step": t["median_s"],
        "min_seconds_per_step": t["min_s"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20, help="timed calls per measurement")
    parser.add_argument("--tasks", nargs="*", default=list(TASK_NAMES), choices=TASK_NAMES)
    parser.add_argument("--no-cuda", action="store_true", help="skip CUDA even if available")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: results/)")
    args = parser.parse_args(argv)

    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.no_cuda:
        devices.append(torch.device("cuda"))
    host = socket.gethostname()
    record = {
        "benchmark": "tasks",
        "host": host,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.get_device_name(0) if len(devices) > 1 else None,
        "reps": args.reps,
        "sampling": [],
        "train_step": {},
        "sampling_over_train_step": {},
    }
    for device in devices:
        print(f"sampling on {device}:", flush=True)
        record["sampling"] += bench_sampling(device, args.reps, args.tasks)
        step = bench_train_step(device, args.reps)
        record["train_step"][device.type] = step
        if not step["available"]:
            print(f"  ratio to a training step unavailable: {step['reason']}", flush=True)
            continue
        ratios = {
            row["task"]: row["seconds_per_batch"] / step["seconds_per_step"]
            for row in record["sampling"]
            if row["device"] == device.type and (row["batch_size"], row["length"]) == STEP_SHAPE
        }
        record["sampling_over_train_step"][device.type] = ratios
        print(f"  sampling time at B={STEP_SHAPE[0]}, n={STEP_SHAPE[1]} / one training step:")
        for name, ratio in ratios.items():
            print(f"    {name:28s} {ratio:10.2e}  ({100 * ratio:.3f}% of a step)")

    out = args.out or Path(__file__).parent / "results" / f"tasks_{host}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
