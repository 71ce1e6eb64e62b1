"""The CPU against its own peak: achieved FLOP/s of training and evaluation at the paper's
configuration, as a fraction of this machine's own fp32 matrix-product peak, per thread count.

One command measures everything, each (code version, thread count) in a fresh process
(``OMP_NUM_THREADS`` and ``torch.set_num_threads``), the versions interleaved so that a shared
machine's drift hits them alike:

* the peak: the best of large square ``torch.mm`` in fp32 (n = 1024, 2048), taken before and
  after the workload in the same process (the higher one counts);
* training: one model (a ``Trainer`` of one member, the default loop) at the paper's
  configuration (default model 5 x 64, B = 128, lengths from the uniform curriculum 1..40,
  reverse_string, PE none unless ``--pe``), FLOPs counted analytically
  (``throughput.train_flops``); the same 12 curriculum steps in 3 passes, each step's fastest
  pass counting (a shared machine's interruptions filtered out);
* evaluation: ``Trainer.evaluate`` of one length (512 sequences, the paper's count) at
  lengths 10, 50, 100, 200 and 500, FLOPs ``throughput.forward_flops``; the cost of every
  length 1..500 per model from the non-negative a + bT + cT^2 fit through them
  (``throughput.fit_eval_seconds``).

Each is measured in wall time and in the process's CPU time (which leaves out the time other
jobs held the core). The load average is recorded with every process. ``--code NAME=SRC``
runs another checkout's ``src`` (e.g. ``git archive <commit> src | tar -x -C /tmp/base``) with
the same command; ``--profile`` prints torch.profiler's top operators of a training step and
of an evaluation chunk instead.

    .venv/bin/python benchmarks/cpu_peak.py --code before=/tmp/base/src --code after=src
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from machine import (  # benchmarks/machine.py (the script's own folder)
    load_average,
    machine_info,
    run_worker,
)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MM_SIZES = (1024, 2048)


# ----------------------------------------------------------------------------- the worker
class Clock:
    """Wall time and this process's CPU time (all its threads) of a block."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def mm_peak(reps: int = 3, sizes: tuple[int, ...] = MM_SIZES, cpu: bool = False) -> float:
    """The best fp32 FLOP/s of large square matrix products on this process's threads (per
    second of wall time, or with ``cpu`` per second of the process's CPU time)."""
    import torch

    best = 0.0
    generator = torch.Generator().manual_seed(0)
    for n in sizes:
        a, b = (torch.randn(n, n, generator=generator) for _ in range(2))
        torch.mm(a, b)
        for _ in range(reps):
            with Clock() as clock:
                torch.mm(a, b)
            best = max(best, 2 * n**3 / max(clock.cpu if cpu else clock.wall, 1e-9))
    return best


def worker(spec: dict) -> dict:
    """Every measurement in wall time and in the process's CPU time: on a shared machine a
    single-thread process's CPU time leaves out the time other jobs held its core."""
    import torch
    from throughput import fit_eval_seconds, forward_flops, train_flops

    import randpos
    from randpos.loop.trainer import Trainer
    from randpos.workloads.config import TrainConfig

    torch.set_num_threads(spec["threads"])
    out: dict = {"randpos": randpos.__file__, "load_start": load_average()}
    peaks = [(mm_peak(), mm_peak(cpu=True))]
    config = TrainConfig.from_dict(spec["config"])
    trainer = Trainer(config)
    for _ in range(spec["warmup"]):
        trainer.train_step()
    # the same curriculum steps, several passes (the curriculum replayed): per step the
    # fastest pass, the one least disturbed by other jobs
    curriculum = trainer.members[0].curriculum.get_state()
    passes = []
    for _ in range(spec["passes"]):
        trainer.members[0].curriculum.set_state(curriculum)
        lengths, wall, cpu = [], [], []
        for _ in range(spec["steps"]):
            with Clock() as clock:
                n = trainer.train_step()[2]
            lengths.append(n)
            wall.append(clock.wall)
            cpu.append(clock.cpu)
        passes.append((wall, cpu))
    wall = [min(p[0][i] for p in passes) for i in range(len(lengths))]
    cpu = [min(p[1][i] for p in passes) for i in range(len(lengths))]
    flops = sum(train_flops(config, n) for n in lengths)
    out["train"] = {
        "lengths": lengths,
        "passes": passes,
        "step_s": wall,
        "step_cpu_s": cpu,
        "mean_step_s": sum(wall) / len(wall),
        "flop_per_s": flops / sum(wall),
        "flop_per_cpu_s": flops / sum(cpu),
    }
    evals = {}
    trainer.evaluate(progress=False, lengths=[spec["eval_lengths"][0]])  # warm-up
    for n in spec["eval_lengths"]:
        with Clock() as clock:
            trainer.evaluate(progress=False, lengths=[n])
        flops = forward_flops(config, n, config.eval_batch_size)
        evals[n] = {
            "s": clock.wall,
            "cpu_s": clock.cpu,
            "flop_per_s": flops / clock.wall,
            "flop_per_cpu_s": flops / clock.cpu,
        }
    out["eval"] = evals
    for key, field in (("eval_1_to_500_s", "s"), ("eval_1_to_500_cpu_s", "cpu_s")):
        out[key] = fit_eval_seconds(config, {n: e[field] for n, e in evals.items()}, 500)
    peaks.append((mm_peak(), mm_peak(cpu=True)))
    out["mm_peak_flop_per_s"] = max(p[0] for p in peaks)
    out["mm_peak_flop_per_cpu_s"] = max(p[1] for p in peaks)
    out["mm_peaks"] = peaks
    out["load_end"] = load_average()
    return out


def profile(spec: dict) -> None:
    """torch.profiler's top operators (self CPU time) of training steps and of an evaluation."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from randpos.loop.trainer import Trainer
    from randpos.workloads.config import TrainConfig

    torch.set_num_threads(spec["threads"])
    config = TrainConfig.from_dict(dict(spec["config"], curriculum="fixed"))
    trainer = Trainer(config)
    for _ in range(2):
        trainer.train_step()
    phases = {
        f"training step, n = {config.max_train_length}": lambda: trainer.train_step(),
        f"evaluation, n = {spec['eval_lengths'][-1]}": lambda: trainer.evaluate(
            progress=False, lengths=[spec["eval_lengths"][-1]]
        ),
    }
    for name, fn in phases.items():
        with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            start = time.perf_counter()
            fn()
            wall = time.perf_counter() - start
        events = prof.key_averages(group_by_input_shape=True)
        total = sum(e.self_cpu_time_total for e in events)
        print(
            f"\n{name}: {wall:.3f} s wall, {total / 1e6:.3f} s of operators' self CPU time "
            f"(under the profiler), {spec['threads']} thread(s)"
        )
        for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:15]:
            share = 100 * e.self_cpu_time_total / total
            print(f"  {share:5.1f}%  {e.count:5d} x {e.key:42} {str(e.input_shapes)[:70]}")


def attention_ab(threads: int, reps: int = 7) -> None:
    """The explicit attention (``randpos.model.attention.attend``, math path) against the
    formula it had before (the 1/sqrt(d) scale on the T x T logits), alternating in one
    process, which a shared machine's process-to-process drift cannot bias: forward + backward
    at the training shapes (B = 128, H = 8, d = 8), then whole training steps of the paper's
    model at fixed lengths with either formula patched in. The fastest of ``reps`` CPU-time
    measurements each."""
    import math

    import torch

    import randpos.model.attention as attention
    from randpos.loop.trainer import Trainer
    from randpos.workloads.config import TrainConfig

    torch.set_num_threads(threads)
    current = attention.attend

    def before(q, k, v, bias=None, *, causal=False, backend=attention.DEFAULT_BACKEND):
        if backend == "fast" and attention._prefer_math_on_cpu(q, bias):
            backend = "math"
        if backend != "math" or bias is not None or causal:
            return current(q, k, v, bias, causal=causal, backend=backend)
        return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1) @ v

    def after(*args, **kwargs):
        return current(*args, **kwargs)

    def ab(label: str, run) -> None:
        best = {"before": math.inf, "after": math.inf}
        for _ in range(reps):
            for name, fn in (("before", before), ("after", after)):
                attention.attend = fn
                with Clock() as clock:
                    run(fn)
                best[name] = min(best[name], clock.cpu)
        attention.attend = current
        ratio = best["before"] / best["after"]
        print(
            f"  {label}: before {1e3 * best['before']:6.1f}  after {1e3 * best['after']:6.1f}"
            f"  ({ratio:.2f}x)"
        )

    generator = torch.Generator().manual_seed(0)
    print(f"attention forward + backward, B = 128, H = 8, d = 8, {threads} thread(s), CPU ms")
    for T in (20, 40, 60, 80):
        qkv = [torch.randn(128, T, 8, 8, generator=generator).transpose(1, 2) for _ in range(3)]
        qkv = [t.requires_grad_() for t in qkv]
        grad = torch.randn(128, 8, T, 8, generator=generator)
        ab(f"T = {T:3d}", lambda fn, x=qkv, g=grad: fn(*x, backend="math").backward(g))
    print(f"training step of the paper's model (B = 128, reverse_string), {threads} thread(s)")
    for n in (10, 20, 40):
        base = dict(task="reverse_string", pe="none", batch_size=128, device="cpu")
        config = TrainConfig.from_dict(dict(base, max_train_length=n, curriculum="fixed"))
        trainer = Trainer(config)
        trainer.train_step()
        ab(f"n = {n:3d}", lambda fn, t=trainer: t.train_step())


# ----------------------------------------------------------------------------- the driver
def run(spec: dict, src: str | None, timeout: float) -> dict:
    threads = str(spec["threads"])
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    if src:
        env["PYTHONPATH"] = os.pathsep.join([str(Path(src).resolve()), str(HERE)])
    return run_worker(__file__, spec, env=env, timeout=timeout, cwd=HERE)


def print_table(rows: list[dict], header: bool = True) -> None:
    """Achieved FLOP/s over the mm peak, by wall time and (in brackets) by CPU time."""

    def frac(entry: dict, row: dict) -> str:
        wall = entry["flop_per_s"] / row["mm_peak_flop_per_s"]
        cpu = entry["flop_per_cpu_s"] / row["mm_peak_flop_per_cpu_s"]
        return f"{100 * wall:4.1f} ({100 * cpu:4.1f})"

    lengths = sorted({int(n) for r in rows if "eval" in r for n in r["eval"]})
    if header:
        print("% of the mm peak by wall time (by CPU time); 1..500: seconds per model, wall (cpu)")
        head = f"{'code':8} {'thr':>3} {'peak GF/s':>10} {'train':>11}"
        head += "".join(f" {f'eval {n}':>11}" for n in lengths) + f" {'1..500 s':>15}  load"
        print(head)
    for r in rows:
        if "error" in r:
            print(f"{r['code']:8} {r['threads']:>3} ERROR {r['error']}")
            continue
        peak = f"{r['mm_peak_flop_per_s'] / 1e9:4.0f} ({r['mm_peak_flop_per_cpu_s'] / 1e9:3.0f})"
        line = f"{r['code']:8} {r['threads']:>3} {peak:>10} {frac(r['train'], r):>11}"
        for n in lengths:
            e = r["eval"].get(str(n)) or r["eval"].get(n)
            line += f" {frac(e, r) if e else '-':>11}"
        wall, cpu = r.get("eval_1_to_500_s"), r.get("eval_1_to_500_cpu_s")
        line += f" {f'{wall:.0f} ({cpu:.0f})' if wall and cpu else '-':>15}"
        print(line + f"  {r['load_start']} -> {r['load_end']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--code",
        action="append",
        default=None,
        metavar="NAME=SRC",
        help="a code version to measure (its src folder); repeatable; default: this checkout",
    )
    parser.add_argument("--task", default="reverse_string")
    parser.add_argument("--pe", default="none")
    parser.add_argument("--randomized", action="store_true")
    parser.add_argument("--steps", type=int, default=12, help="timed training steps")
    parser.add_argument(
        "--passes", type=int, default=3, help="passes over the same steps; the fastest counts"
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--eval-lengths", type=int, nargs="+", default=[10, 50, 100, 200, 500])
    parser.add_argument("--repeats", type=int, default=1, help="rounds of the whole grid")
    parser.add_argument("--profile", action="store_true", help="print operator profiles")
    parser.add_argument(
        "--attention-ab", action="store_true", help="the attention's old and new formula, A/B"
    )
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        if spec.get("profile"):
            profile(spec)
        else:
            print(json.dumps(worker(spec)))
        return

    config = dict(
        task=args.task,
        pe=args.pe,
        randomized=args.randomized,
        batch_size=128,
        max_train_length=40,
        eval_max_length=max(500, *args.eval_lengths),
        device="cpu",
    )
    if args.randomized:
        config["max_position"] = 2048  # the paper preset's L
    spec = {"config": config, "steps": args.steps, "warmup": args.warmup, "passes": args.passes}
    spec["eval_lengths"] = args.eval_lengths
    codes = [c.split("=", 1) for c in (args.code or ["current="])]
    if args.attention_ab:
        for t in args.threads:
            attention_ab(t)
        return
    if args.profile:
        for t in args.threads:
            for name, src in codes:
                print(f"=== {name} ({src or 'this checkout'})")
                env = dict(os.environ, OMP_NUM_THREADS=str(t))
                if src:
                    env["PYTHONPATH"] = os.pathsep.join([str(Path(src).resolve()), str(HERE)])
                payload = json.dumps({**spec, "threads": t, "profile": True})
                subprocess.run([sys.executable, __file__, "--worker", payload], env=env, cwd=HERE)
        return

    info = machine_info()
    print(f"{info['cpu_model']} x{info['cpu_count']}, torch {info['torch']}")
    print(f"load average {info['load_average']}")
    rows = []
    for repeat in range(args.repeats):
        for t in args.threads:
            for name, src in codes:
                started = time.perf_counter()
                row = run({**spec, "threads": t}, src or None, args.timeout)
                row.update(code=name, src=src, threads=t, repeat=repeat)
                row["wall_s"] = round(time.perf_counter() - started, 1)
                rows.append(row)
                print_table([row], header=len(rows) == 1)
    payload = {
        "machine": info,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "config": config,
        "rows": rows,
        "load_average_end": load_average(),
    }
    out = args.out or RESULTS / f"cpu_peak_{info['hostname']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2))
    print()
    print_table(rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
