"""Many models per step: model-steps per second of ensembles, compiled steps and processes.

At the paper's configuration (default model 5 x 64, B = 128, lengths uniform in 1..40,
reverse_string, PE none unless --pe) it measures, each in a fresh subprocess (clean peak memory,
a private inductor cache so compile times are real):

* ``trainer``: the plain single-model eager loop (randpos.loop.trainer.Trainer with one member,
  loop execution), the baseline;
* ``ensemble``: K models as one vmapped step (randpos.loop.ensemble), eager and compiled, and on
  CUDA compiled with CUDA graphs (inductor's ``reduce-overhead``: one graph recorded per
  training length, so its warm-up first visits every length 1..N);
* ``processes``: P processes x 1 thread, each an independent Trainer (CPU only);
* ``eval``: evaluation seconds per model at a few lengths (512 sequences each), extrapolated
  to 1..M by a fit in T (a + b T + c T^2), for one Trainer and for an ensemble;
* on CUDA also FLOP/s (analytic count, checked against torch's FlopCounterMode) and its
  fraction of the device's peak.

Then it compares end to end with the reference implementation's costs measured on the same
kind of 2-core CPU (docs/reference-system.md §6; quoted, not re-measured) and writes
``benchmarks/results/throughput_<hostname>.json``. Numbers on a shared machine are inflated:
the load average is recorded with every run, and process CPU time is reported next to wall time.

    .venv/bin/python benchmarks/throughput.py                       # quick CPU defaults
    .venv/bin/python benchmarks/throughput.py --ks 1 8 32 128 --steps 20 --device cuda
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import machine  # benchmarks/machine.py (the script's own folder)
import torch
from machine import load_average, machine_info

RESULTS = Path(__file__).resolve().parent / "results"

# Dense peak FLOP/s by device-name substring (vendor datasheets; fp32 = non-tensor-core FP32).
GPU_PEAKS = {
    "H200": {"bf16": 989e12, "fp32": 67e12},
    "H100": {"bf16": 989e12, "fp32": 67e12},  # SXM; PCIe is ~756 / 51
    "A100": {"bf16": 312e12, "fp32": 19.5e12},
    "L40S": {"bf16": 362e12, "fp32": 91.6e12},
    "L4": {"bf16": 121e12, "fp32": 30.3e12},
    "A10": {"bf16": 125e12, "fp32": 31.2e12},
    "RTX 4090": {"bf16": 165e12, "fp32": 82.6e12},
    "V100": {"bf16": None, "fp32": 15.7e12},
    "T4": {"bf16": None, "fp32": 8.1e12},
}

# The reference (JAX) on a 2-core CPU of the kind this project's CI uses
# (docs/reference-system.md §6).
REFERENCE = {
    "step_s_n40_none": 1.12,
    "step_s_n40_noisy_relative": 1.58,
    "compile_s_per_shape": 7.5,  # "~7-8 s"
    "train_compiles": 40,  # one per training length 1..40
    "eval_s_per_length": 3.7,  # cache cleared before every length: recompiles each time
}


# ----------------------------------------------------------------------------- helpers
def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:  # the process's resident-set high-water mark
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_configs(spec: dict) -> list:
    from randpos.workloads.config import TrainConfig

    base = dict(spec["config"])
    lrs = (1e-4, 3e-4, 5e-4)  # the paper's grid, cycled
    return [
        TrainConfig.from_dict(base, seed=i, learning_rate=lrs[i % len(lrs)])
        for i in range(spec.get("k", 1))
    ]


def forward_flops(config, n: int, batch: int) -> float:
    """Analytic FLOPs of one forward pass of one model over ``batch`` sequences of length n:
    the matrix products (projections, feed-forward, attention scores and mixing, head)."""
    from randpos.tasks import get_task

    task = get_task(config.task)
    n_in = task.input_length(n)
    T = n_in + task.output_length(n_in)
    B, D, F, L = batch, config.width, config.ff_width, config.num_layers
    C = task.output_vocab_size
    per_layer = 2 * B * T * (4 * D * D + 2 * D * F) + 2 * 2 * B * T * T * D
    return L * per_layer + 2 * B * T * D * C


def train_flops(config, n: int) -> float:
    """Analytic FLOPs of one training step (forward + backward = 3 x forward) of one model."""
    return 3 * forward_flops(config, n, config.batch_size)


# ----------------------------------------------------------------------------- workers
def timed_steps(step, device, warmup: int, steps: int, graphs=lambda: 0) -> dict:
    """Run ``step`` warmup + steps times; per-step wall and process-CPU times, and whether a
    step compiled a graph (``graphs()`` counts compilations so far)."""
    first = []
    for _ in range(warmup):
        start = time.perf_counter()
        step()
        sync(device)
        first.append(time.perf_counter() - start)
    wall, cpu, lengths, compiled = [], [], [], []
    for _ in range(steps):
        before = graphs()
        start, cpu_start = time.perf_counter(), time.process_time()
        n = step()
        sync(device)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu_start)
        lengths.append(n)
        compiled.append(graphs() > before)
    steady = [w for w, c in zip(wall, compiled, strict=True) if not c] or wall
    return {
        "warmup_s": first,
        "step_s": wall,
        "cpu_s": cpu,
        "lengths": lengths,
        "compiled_in_step": compiled,
        "mean_step_s": statistics.fmean(wall),
        "steady_mean_step_s": statistics.fmean(steady),
        "median_cpu_s": statistics.median(cpu),
    }


def worker_train(spec: dict) -> dict:
    from randpos.loop.compile import CompileCounter
    from randpos.loop.training import Trainer

    configs = make_configs(spec)
    counter = CompileCounter("inductor")
    if spec["kind"] == "trainer":
        trainer = Trainer(configs[0])
        device = trainer.device
        data_device = trainer.members[0].generators["data"].device

        def step():
            return trainer.train_step()[2]

        k = 1
    else:
        ensemble = Trainer(
            configs,
            execution=spec["execution"],
            backend=counter,
            cuda_graphs=spec.get("cuda_graphs", False),
        )
        device = ensemble.device
        data_device = ensemble.members[0].generators["data"].device

        def step():
            return ensemble.train_step()[2]

        k = ensemble.size
    out = timed_steps(step, device, spec["warmup"], spec["steps"], lambda: counter.graphs)
    out["k"] = k
    out["graphs"] = counter.graphs
    # batches and positions are built on the generators' device
    out["data_device"] = str(data_device)
    out["model_steps_per_s"] = k / out["mean_step_s"]
    out["model_steps_per_cpu_s"] = k / out["median_cpu_s"]
    out["peak_memory_mb"] = peak_memory_mb(device)
    flops = sum(train_flops(configs[0], n) for n in out["lengths"]) * k
    out["flop_per_s"] = flops / sum(out["step_s"])
    if device.type == "cuda":
        out["flop_counter_check"] = flop_counter_check(configs[0])
    return out


def flop_counter_check(config) -> dict:
    """torch's FlopCounterMode on one single-model step at n = max_train_length vs our count."""
    from torch.utils.flop_counter import FlopCounterMode

    from randpos.loop.training import Trainer

    trainer = Trainer(config.replace(curriculum="fixed"))
    with FlopCounterMode(display=False) as counter:
        trainer.train_step()
    return {
        "counted": counter.get_total_flops(),
        "analytic": train_flops(config, config.max_train_length),
    }


def _process_member(args) -> float:
    spec, index, barrier = args
    torch.set_num_threads(1)
    from randpos.loop.training import Trainer
    from randpos.workloads.config import TrainConfig

    config = TrainConfig.from_dict(spec["config"], seed=index, threads=1)
    trainer = Trainer(config)
    for _ in range(spec["warmup"]):
        trainer.train_step()
    barrier.wait()  # every process starts its timed window together
    start = time.perf_counter()
    for _ in range(spec["steps"]):
        trainer.train_step()
    return time.perf_counter() - start


def worker_processes(spec: dict) -> dict:
    p = spec["processes"]
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(p)
        with ctx.Pool(p) as pool:
            start = time.perf_counter()
            times = pool.map(_process_member, [(spec, i, barrier) for i in range(p)])
            total = time.perf_counter() - start
    window = max(times)
    return {
        "k": p,
        "window_s": window,
        "total_s": total,
        "mean_step_s": window / spec["steps"],
        "model_steps_per_s": p * spec["steps"] / window,
    }


def worker_eval(spec: dict) -> dict:
    from randpos.loop.compile import CompileCounter
    from randpos.loop.training import Trainer

    configs = make_configs(spec)
    counter = CompileCounter("inductor")
    rows: dict = {}
    if spec["kind"] == "eval-trainer":
        trainer = Trainer(configs[0])
        device, k = trainer.device, 1

        def evaluate(n: int) -> None:
            trainer.evaluate(progress=False, lengths=[n])

    else:
        ensemble = Trainer(configs, execution=spec["execution"], backend=counter)
        device, k = ensemble.device, ensemble.size

        def evaluate(n: int) -> None:
            ensemble.evaluate(progress=False, lengths=[n])

        if ensemble.compiled:  # compile outside the timings: T = 2 and the generic graph
            start = time.perf_counter()
            ensemble.evaluate(progress=False, lengths=[1, 2])
            rows["compile_s"] = time.perf_counter() - start
    recompiled = []
    for n in spec["lengths"]:
        for _ in range(2):  # a length that compiled (a size threshold) is timed again
            before = counter.graphs
            start = time.perf_counter()
            evaluate(n)
            sync(device)
            rows[n] = time.perf_counter() - start
            if counter.graphs == before:
                break
            recompiled.append(n)
    return {
        "k": k,
        "seconds": rows,
        "seconds_per_model": {n: s / k for n, s in rows.items() if n != "compile_s"},
        "recompiled_at": recompiled,
        "graphs": counter.graphs,
        "peak_memory_mb": peak_memory_mb(device),
    }


WORKERS = {
    "trainer": worker_train,
    "ensemble": worker_train,
    "processes": worker_processes,
    "eval-trainer": worker_eval,
    "eval-ensemble": worker_eval,
}


def run_worker(spec: dict, timeout: float) -> dict:
    """Run one measurement in a fresh interpreter; returns its result (or the error)."""
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="randpos-bench-") as cache:
        env["TORCHINDUCTOR_CACHE_DIR"] = cache  # compile times without a warm disk cache
        if spec.get("threads"):
            env["OMP_NUM_THREADS"] = str(spec["threads"])
        result = machine.run_worker(__file__, spec, env=env, timeout=timeout)
    if "error" not in result:
        result["load_average"] = load_average()
    return result


# ----------------------------------------------------------------------------- analysis
def fit_eval_seconds(config, seconds: dict, max_length: int) -> float | None:
    """Seconds for lengths 1..max_length from a non-negative least-squares fit of
    a + b T + c T^2 (T = the model's sequence length) through the measured lengths."""
    points = [(config.sequence_length(int(n)), s) for n, s in seconds.items() if n != "compile_s"]
    if len(points) < 2:
        return None
    X = torch.tensor([[1.0, t, t * t] for t, _ in points], dtype=torch.float64)
    y = torch.tensor([s for _, s in points], dtype=torch.float64).unsqueeze(1)
    best, best_err = None, math.inf
    for mask in ([0, 1, 2], [0, 2], [1, 2], [0, 1], [2], [1], [0]):  # active sets (NNLS by hand)
        coef = torch.linalg.lstsq(X[:, mask], y).solution.squeeze(1)
        if (coef < 0).any():
            continue
        err = float(((X[:, mask] @ coef.unsqueeze(1) - y) ** 2).sum())
        if err < best_err:
            full = torch.zeros(3, dtype=torch.float64)
            full[mask] = coef
            best, best_err = full, err
    if best is None:
        return None
    ts = torch.tensor(
        [config.sequence_length(n) for n in range(1, max_length + 1)], dtype=torch.float64
    )
    return float((best[0] + best[1] * ts + best[2] * ts * ts).sum())


def peak_for(device_name: str | None, precision: str) -> float | None:
    if not device_name:
        return None
    for key, peaks in GPU_PEAKS.items():
        if key in device_name:
            return peaks.get(precision)
    return None


def fit_step_seconds(config, pairs: list[tuple[int, float]]) -> float | None:
    """Mean step time over the uniform curriculum n = 1..N, from measured (n, seconds) pairs
    through the same non-negative a + b T + c T^2 fit as evaluation."""
    per_n: dict[int, list[float]] = {}
    for n, sec in pairs:
        per_n.setdefault(n, []).append(sec)
    if len(per_n) < 2:
        return None
    seconds = {n: statistics.fmean(v) for n, v in per_n.items()}
    total = fit_eval_seconds(config, seconds, config.max_train_length)
    return None if total is None else total / config.max_train_length


def summarize(payload: dict, e2e_steps) -> dict:
    """Ratios to the plain Trainer on identical work, evaluation extrapolations, the
    curriculum-average step time, and the end-to-end comparison with the reference."""
    from randpos.workloads.config import TrainConfig

    cfg = TrainConfig.from_dict(payload["config"])
    rows = [m for m in payload["measurements"] if "error" not in m]
    trainers = {
        m["spec"]["threads"]: m
        for m in rows
        if m["spec"]["kind"] == "trainer" and not m["spec"].get("fixed")
    }
    summary: dict = {"ratios": {}, "eval": {}, "end_to_end": {}}
    if not trainers:
        return summary
    default = trainers[max(trainers)]  # the plain loop with torch's default threads
    single = trainers[min(trainers)]  # one thread

    def ratio(row: dict, base: dict) -> float | None:
        """Model-steps/s of ``row`` over ``base`` on the same steps (a step that compiled a
        graph is left out of both sums: compile time is reported apart)."""
        if row["spec"]["kind"] == "processes":
            return row["model_steps_per_s"] * base["mean_step_s"]  # same lengths, every process
        keep = [i for i, c in enumerate(row.get("compiled_in_step", [])) if not c]
        if not keep or len(base["step_s"]) != len(row["step_s"]):
            return None
        spent = sum(row["step_s"][i] for i in keep)
        return row["k"] * sum(base["step_s"][i] for i in keep) / spent

    for m in rows:
        if "model_steps_per_s" in m:
            r_default, r_single = ratio(m, default), ratio(m, single)
            summary["ratios"][m["name"]] = {
                "vs_trainer_default_threads": None if r_default is None else round(r_default, 3),
                "vs_trainer_1_thread": None if r_single is None else round(r_single, 3),
                "peak_memory_mb": m.get("peak_memory_mb"),
                "graphs_compiled": m.get("graphs"),
                "warmup_s": m.get("warmup_s"),
            }
    fastest = max(
        (m for m in rows if m["name"] in summary["ratios"]),
        key=lambda m: summary["ratios"][m["name"]]["vs_trainer_1_thread"] or 0.0,
    )
    summary["fastest_training"] = fastest["name"]

    for m in rows:
        if m["spec"]["kind"] not in ("eval-trainer", "eval-ensemble"):
            continue
        per_model = m["seconds_per_model"]
        key = "trainer" if m["spec"]["kind"] == "eval-trainer" else m["spec"]["execution"]
        summary["eval"][key] = {
            "measured_s_per_model": per_model,
            "s_per_model_1_to_100": fit_eval_seconds(cfg, per_model, 100),
            "s_per_model_1_to_500": fit_eval_seconds(cfg, per_model, 500),
            "compile_s": m["seconds"].get("compile_s"),
            "recompiled_at": m.get("recompiled_at"),
            "note": "a + bT + cT^2 (non-negative) fit through the measured lengths, summed",
        }

    # one run end to end: the fastest single-process plain loop, then evaluation of 1..100
    best = max(trainers.values(), key=lambda m: ratio(m, single) or 0.0)
    fixed = [m for m in rows if m["spec"].get("fixed")]
    pairs = list(zip(best["lengths"], best["step_s"], strict=True))
    if fixed and fixed[0]["spec"]["threads"] == best["spec"]["threads"]:
        pairs += list(zip(fixed[0]["lengths"], fixed[0]["step_s"], strict=True))
    step_s = fit_step_seconds(cfg, pairs) or best["mean_step_s"]
    eval_s = summary["eval"].get("trainer", {}).get("s_per_model_1_to_100")
    e2e = summary["end_to_end"]
    e2e["trainer_setting"] = best["name"]
    e2e["curriculum_mean_step_s"] = round(step_s, 4)
    if fixed:
        e2e["step_n40_ours_s"] = round(fixed[0]["mean_step_s"], 3)
        e2e["step_n40_reference_s"] = REFERENCE["step_s_n40_none"]
    if eval_s is not None:
        e2e["eval_1_to_100_ours_s"] = round(eval_s, 1)
        e2e["eval_1_to_100_reference_s"] = 100 * REFERENCE["eval_s_per_length"]
        for steps in e2e_steps:
            ours = steps * step_s + eval_s
            ref = (
                steps * REFERENCE["step_s_n40_none"]
                + REFERENCE["train_compiles"] * REFERENCE["compile_s_per_shape"]
                + 100 * REFERENCE["eval_s_per_length"]
            )
            e2e[f"{steps}_steps"] = {
                "ours_s": round(ours, 1),
                "reference_s": round(ref, 1),
                "speedup": round(ref / ours, 2),
            }
    e2e["reference_source"] = (
        "docs/reference-system.md §6 (the reference JAX code on the same kind of 2-core "
        "CPU), quoted, not re-measured: S x 1.12 s (its step at n = 40, an upper bound for the "
        "curriculum mix) + 40 x 7.5 s training compiles + 100 x 3.7 s per evaluation length "
        "(a lower bound)"
    )
    if payload["machine"].get("gpu"):
        precision = payload["config"].get("precision", "fp32")
        peak = peak_for(payload["machine"]["gpu"], precision)
        summary["flops"] = {
            m["name"]: {
                "tflop_per_s": round(m["flop_per_s"] / 1e12, 3),
                "fraction_of_peak": round(m["flop_per_s"] / peak, 4) if peak else None,
            }
            for m in rows
            if "flop_per_s" in m
        }
        summary["peak_flop_per_s"] = peak
    return summary


def print_table(payload: dict) -> None:
    summary = payload["summary"]
    machine = payload["machine"]
    print(f"\n{machine['processor']} x{machine['cpu_count']}, torch {machine['torch']}")
    print(f"load average {machine['load_average_start']} -> {machine.get('load_average_end')}")
    print(f"{'measurement':38} {'vs default':>10} {'vs 1 thr':>9} {'peak MB':>8}")
    for name, r in summary["ratios"].items():
        a, b = r["vs_trainer_default_threads"], r["vs_trainer_1_thread"]
        peak = r["peak_memory_mb"]
        cells = ["-" if v is None else f"{v:.2f}" for v in (a, b)]
        print(f"{name:38} {cells[0]:>10} {cells[1]:>9} {'-' if not peak else f'{peak:.0f}':>8}")
    print(json.dumps({k: v for k, v in summary.items() if k != "ratios"}, indent=2, default=str))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--analyze", type=Path, help="recompute the summary of a results file")
    parser.add_argument("--device", default="auto", help="cpu | cuda | auto")
    parser.add_argument("--task", default="reverse_string")
    parser.add_argument("--pe", default="none")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-train-length", type=int, default=40)
    parser.add_argument("--ks", type=int, nargs="+", default=None, help="ensemble sizes")
    parser.add_argument(
        "--executions",
        nargs="+",
        default=None,
        help="ensemble executions (randpos.loop.ensemble.EXECUTIONS); default by device",
    )
    parser.add_argument("--steps", type=int, default=None, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--threads", type=int, nargs="+", default=None, help="trainer threads")
    parser.add_argument("--processes", type=int, nargs="*", default=None)
    parser.add_argument("--eval-lengths", type=int, nargs="*", default=None)
    parser.add_argument("--eval-k", type=int, default=4, help="ensemble size for eval timing")
    parser.add_argument("--e2e-steps", type=int, nargs="+", default=[1_000, 10_000])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument(
        "--no-cuda-graphs",
        dest="cuda_graphs",
        action="store_false",
        help="skip the compiled + CUDA graphs rows (CUDA only)",
    )
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    if args.analyze:
        payload = json.loads(args.analyze.read_text())
        payload["summary"] = summarize(payload, args.e2e_steps)
        args.analyze.write_text(json.dumps(payload, indent=2, default=str))
        print_table(payload)
        return
    if args.worker:
        spec = json.loads(args.worker)
        if spec.get("threads"):
            torch.set_num_threads(spec["threads"])
        print(json.dumps(WORKERS[spec["kind"]](spec)))
        return

    from randpos.core.seeding import resolve_device
    from randpos.workloads.config import TrainConfig

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    cores = os.cpu_count() or 1
    ks = args.ks or ([1, 8, 32, 128] if cuda else [1, 8])
    executions = args.executions or (["vmap", "compiled"] if cuda else ["loop", "vmap", "compiled"])
    steps = args.steps or (20 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    threads = args.threads or ([0] if cuda else sorted({1, cores}))
    processes = args.processes if args.processes is not None else ([] if cuda else [cores])
    eval_lengths = args.eval_lengths or ([1, 50, 100, 200, 300, 500] if cuda else [10, 50, 100])
    config = dict(
        task=args.task,
        pe=args.pe,
        batch_size=args.batch_size,
        max_train_length=args.max_train_length,
        device=str(device),
        precision=args.precision,
        # eval timing uses the paper's 512 sequences per length up to 500
        eval_max_length=max(500, max(eval_lengths)),
    )
    TrainConfig.from_dict(config)  # fail early on a bad setting
    base = {"config": config, "steps": steps, "warmup": warmup}
    info = machine_info()
    info["load_average_start"] = info["load_average"]
    print(f"device {device}, torch {torch.__version__}, load {info['load_average_start']}")
    measurements: list[dict] = []

    def record(name: str, spec: dict) -> dict:
        started = time.perf_counter()
        result = run_worker(spec, args.timeout)
        result.update(name=name, spec={k: v for k, v in spec.items() if k != "config"})
        result["wall_s"] = round(time.perf_counter() - started, 2)
        measurements.append(result)
        if "error" in result:
            print(f"{name:34} ERROR {result['error']}", flush=True)
        elif "model_steps_per_s" in result:
            peak = result.get("peak_memory_mb")
            extra = f" peak {peak:7.0f} MB" if peak else ""
            print(
                f"{name:34} {result['model_steps_per_s']:8.3f} model-steps/s "
                f"({result['mean_step_s']:.3f} s/step){extra} load {result['load_average']}",
                flush=True,
            )
        else:
            shown = {n: round(v, 3) for n, v in result.get("seconds_per_model", {}).items()}
            print(f"{name:34} s/model {shown} load {result['load_average']}", flush=True)
        return result

    def threads_label(t: int) -> str:
        return f"{t} thread{'s' if t != 1 else ''}" if t else "default threads"

    trainer_rows = {}
    for t in threads:
        trainer_rows[t] = record(
            f"trainer eager, {threads_label(t)}",
            {**base, "kind": "trainer", "k": 1, "threads": t},
        )
    fixed = dict(config, curriculum="fixed")  # n = 40 every step: the reference's timing shape
    record(
        f"trainer eager n=40 fixed, {threads_label(min(threads))}",
        {**base, "config": fixed, "kind": "trainer", "k": 1, "threads": min(threads), "fixed": 1},
    )
    ensemble_threads = 0 if cuda else 1
    for k in ks:
        for execution in executions:
            record(
                f"ensemble K={k} {execution}, {threads_label(ensemble_threads)}",
                {
                    **base,
                    "kind": "ensemble",
                    "k": k,
                    "execution": execution,
                    "threads": ensemble_threads,
                },
            )
        if cuda and args.cuda_graphs and "compiled" in executions:
            # a CUDA graph is recorded per distinct length: warm up on every length first
            record(
                f"ensemble K={k} compiled + CUDA graphs",
                {
                    **base,
                    "kind": "ensemble",
                    "k": k,
                    "execution": "compiled",
                    "cuda_graphs": True,
                    "threads": ensemble_threads,
                    "warmup": max(warmup, 3 * args.max_train_length),
                },
            )
    for p in processes:
        record(f"processes {p} x 1 thread", {**base, "kind": "processes", "processes": p})

    eval_rows = {}
    eval_rows["trainer"] = record(
        f"eval trainer, {threads_label(min(threads))}",
        {**base, "kind": "eval-trainer", "lengths": eval_lengths, "threads": min(threads)},
    )
    for execution in executions:
        if execution == "batched" or (execution == "vmap" and not cuda):
            continue  # batched evaluates as vmap; on CPU vmap evaluates as loop (ensemble.py)
        eval_rows[execution] = record(
            f"eval ensemble K={args.eval_k} {execution}",
            {
                **base,
                "kind": "eval-ensemble",
                "k": args.eval_k,
                "lengths": eval_lengths,
                "execution": execution,
                "threads": ensemble_threads,
            },
        )

    payload = {
        "machine": info,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "config": config,
        "measurements": measurements,
    }
    payload["summary"] = summarize(payload, args.e2e_steps)
    info["load_average_end"] = load_average()
    out = args.out or RESULTS / f"throughput_{info['hostname']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2, default=str))
    print_table(payload)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
