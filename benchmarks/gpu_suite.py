"""The GPU in one call: correctness, throughput, evaluation cost and the paper's protocol,
within a wall-time budget, everything saved as it completes.

    python benchmarks/gpu_suite.py --device cuda --out benchmarks/results/gpu_suite
    python benchmarks/gpu_suite.py --device cpu --tiny --out /tmp/gpu_suite   # the dry run

Stages, in this order (each ends by a share of the budget, so a cut-off loses only the last):

1. ``machine``: device, torch, the APIs and packages the stages use;
2. ``tests``: the cuda-marked tests (``pytest -m cuda`` on the files that have them; on a
   machine without CUDA every one skips, and the stage still runs);
3. ``throughput``: model-steps/s of training at the paper's configuration (default model,
   B = 128, lengths uniform in 1..40, reverse_string, PE none) for every K x execution x
   precision, peak memory, and FLOP/s against the device's datasheet peak and a measured
   large-matmul peak. Executions: ``eager`` (the vmapped step), ``compiled`` (the member
   function compiled, members in a loop) and ``cuda-graphs`` (that, replayed as CUDA graphs:
   inductor's reduce-overhead); precisions fp32 and bf16 (autocast). Every K and execution
   times the same steps (the curriculum replayed) after warm-up passes over the same lengths,
   so compiled graphs and recorded CUDA graphs exist before the clock runs;
4. ``eval``: evaluation seconds per model at lengths 1..500 (512 sequences each), for one
   model and for an ensemble, and the cost of every length 1..500 per model (fit);
5. ``protocol``: with the time left, Table 1 cells on the full protocol (the ``paper`` preset
   and sweep: N = 40, evaluation 1..500, L = 2048; 10 seeds x 3 learning rates per cell as one
   ensemble), as many cells as the measured throughput says fit; when not even ``--min-cells``
   fit at the paper's 1,000,000 steps, the step count is cut to what fits (recorded as such).
   Runs land in a results store and the report is written.

Output (``--out``): ``results.jsonl`` (one line per finished measurement, appended as it
completes), ``summary.json`` and ``summary.txt`` (the one-screen summary, also printed),
``logs/`` (each stage's output), ``tests/junit.xml``, ``protocol/store.sqlite``,
``protocol/runs/`` and ``protocol/report/``. Stages run in fresh processes; one that dies is
restarted on the measurements it had left, so a crash loses one measurement.

``--tiny`` shrinks every stage to toy sizes (a 2 x 16 model, K = 1, 2, a few steps, lengths
to 8), which on a CPU goes through every stage's code in well under a minute
(tests/benchmarks/test_gpu_suite.py runs it): the cuda-graphs execution then runs compiled
without graphs (graphs need CUDA), bf16 is refused (the library allows it on CUDA only) and
recorded as skipped, and the compiled executions use the ``aot_eager`` backend.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from machine import load_average, machine_info  # benchmarks/machine.py (the script's own folder)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if importlib.util.find_spec("randpos") is None:  # an uninstalled checkout
    sys.path.append(str(ROOT / "src"))
from randpos.sweep.plan import load_spec  # noqa: E402 (after the checkout's path)

STAGES = ("machine", "tests", "throughput", "eval", "protocol")
#: Cumulative fraction of the budget by which each stage must end (what a stage leaves unused
#: goes to the next ones).
STAGE_ENDS = {"machine": 0.0, "tests": 0.25, "throughput": 0.6, "eval": 0.7, "protocol": 1.0}
EXECUTIONS = {"eager": "vmap", "compiled": "compiled", "cuda-graphs": "compiled"}
PRECISIONS = ("fp32", "bf16")
#: The full protocol is the shipped ``paper`` sweep (its preset's steps, its grid's learning
#: rates and seeds): read, not copied, so the suite follows the sweep file.
_PAPER_SWEEP = load_spec("paper")
#: Table 1 (arXiv 2305.16843): tasks in the paper's order; each cell plain, then randomized
PROTOCOL_TASKS = tuple(_PAPER_SWEEP.grid["task"])
#: the order in which the protocol stage takes the encodings (the most studied first)
PROTOCOL_PES = ("rope", "relative", "alibi", "sincos", "learned", "none")
PAPER_STEPS = _PAPER_SWEEP.preset["steps"]
SEEDS, LEARNING_RATES = _PAPER_SWEEP.grid["seed"], _PAPER_SWEEP.grid["learning_rate"]

#: The paper's configuration for throughput and evaluation (TrainConfig fields).
PAPER = dict(task="reverse_string", pe="none", batch_size=128, max_train_length=40)
#: --tiny: sizes that run in seconds on a CPU.
TINY = dict(
    task="reverse_string",
    pe="none",
    batch_size=8,
    max_train_length=5,
    eval_max_length=8,
    eval_batch_size=32,
    eval_sub_batch_size=16,
    num_layers=2,
    width=16,
    num_heads=2,
    ff_width=32,
)
TINY_PROTOCOL = dict(
    {k: v for k, v in TINY.items() if k not in ("task", "pe")},
    max_position=64,
    log_every=1,
    checkpoint_every=5,
)


# ====================================================================================== records
class Records:
    """``results.jsonl``: one JSON object per line, appended and flushed as each completes."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def add(self, stage: str, name: str, status: str, **data) -> dict:
        record = {"stage": stage, "name": name, "status": status, "time": time.time(), **data}
        line = json.dumps(record, default=str) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return record

    def read(self, stage: str | None = None) -> list[dict]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a line cut by a kill
                out.append(json.loads(line))
        return [r for r in out if stage is None or r["stage"] == stage]


def cell_name(cell: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in cell.items())


# ====================================================================================== workers
def make_configs(base: dict, k: int, precision: str, device: str) -> list:
    """K members of the paper's ensembles: seeds 0.., learning rates cycling the paper's."""
    from randpos.workloads import resolve_config

    return [
        resolve_config(
            base,
            seed=i,
            learning_rate=LEARNING_RATES[i % len(LEARNING_RATES)],
            precision=precision,
            device=device,
        )
        for i in range(k)
    ]


def _cleanup(device, compiled: bool) -> None:
    import gc

    import torch

    if compiled:  # a new trainer compiles anew (guards on the old one would pile up)
        torch._dynamo.reset()
        if device.type == "cuda":  # recorded CUDA graphs hold memory (reset does it too, 2.13)
            from torch._inductor.cudagraph_trees import reset_cudagraph_trees

            reset_cudagraph_trees()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def measure_peak(device, tiny: bool = False) -> dict:
    """Measured dense matmul peaks: fp32 (and bf16 on CUDA), large squares."""
    import torch
    from throughput import sync

    if device.type == "cpu":
        from cpu_peak import mm_peak

        return {"fp32": mm_peak(sizes=(512,) if tiny else (1024, 2048))}
    out = {}
    n = 8192
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
        for _ in range(2):
            torch.mm(a, b)
        sync(device)
        start = time.perf_counter()
        for _ in range(5):
            torch.mm(a, b)
        sync(device)
        out[precision] = 5 * 2 * n**3 / (time.perf_counter() - start)
        del a, b
    return out


def throughput_cell(spec: dict, cell: dict, peaks: dict) -> dict:
    """Model-steps/s of one K x execution x precision on replayed curriculum steps."""
    import torch
    from throughput import peak_for, peak_memory_mb, sync, train_flops

    from randpos.loop.compile import CompileCounter
    from randpos.loop.trainer import Trainer

    device = torch.device(spec["device"])
    configs = make_configs(spec["config"], cell["k"], cell["precision"], spec["device"])
    counter = CompileCounter(spec["backend"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    execution = cell["execution"]
    trainer = Trainer(
        configs,
        execution=EXECUTIONS[execution],
        backend=counter,
        cuda_graphs=execution == "cuda-graphs",
    )
    curricula = [m.curriculum.get_state() for m in trainer.members]

    def steps() -> tuple[list[int], list[float], list[bool]]:
        for member, state in zip(trainer.members, curricula, strict=True):
            member.curriculum.set_state(state)  # the same lengths every pass
        lengths, seconds, compiled = [], [], []
        for _ in range(spec["steps"]):
            graphs = counter.graphs
            sync(device)
            start = time.perf_counter()
            lengths.append(trainer.train_step()[2])  # reads the losses: waits for the step
            sync(device)
            seconds.append(time.perf_counter() - start)
            compiled.append(counter.graphs > graphs)
        return lengths, seconds, compiled

    started = time.perf_counter()
    # eager: one pass (allocator, kernels); compiled: every graph once; CUDA graphs: inductor
    # records on a shape's second call, replays from the third
    for _ in range({"eager": 1, "compiled": 1, "cuda-graphs": 2}[execution]):
        steps()
    warmup_s = time.perf_counter() - started
    lengths, seconds, compiled = steps()
    k, total = cell["k"], sum(seconds)
    flops = k * sum(train_flops(configs[0], n) for n in lengths)
    datasheet = (
        peak_for(torch.cuda.get_device_name(device), cell["precision"])
        if (device.type == "cuda")
        else None
    )
    measured = peaks.get(cell["precision"])
    return {
        "model_steps_per_s": k * len(seconds) / total,
        "step_s": seconds,
        "lengths": lengths,
        "compiled_in_timed_steps": sum(compiled),
        "graphs": counter.graphs,
        "warmup_s": warmup_s,
        "peak_memory_mb": peak_memory_mb(device),
        "flop_per_s": flops / total,
        "fraction_of_datasheet_peak": flops / total / datasheet if datasheet else None,
        "fraction_of_measured_peak": flops / total / measured if measured else None,
    }


def eval_cell(spec: dict, cell: dict) -> dict:
    """Evaluation seconds per model at each length, and the fit for 1..max."""
    import torch
    from throughput import fit_eval_seconds, forward_flops, peak_memory_mb, sync

    from randpos.loop.trainer import Trainer

    device = torch.device(spec["device"])
    configs = make_configs(spec["config"], cell["k"], cell["precision"], spec["device"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer = Trainer(configs, execution=EXECUTIONS[cell["execution"]])
    lengths = spec["eval_lengths"]
    trainer.evaluate(progress=False, lengths=lengths[:1])  # warm-up
    seconds = {}
    for n in lengths:
        sync(device)
        start = time.perf_counter()
        trainer.evaluate(progress=False, lengths=[n])
        sync(device)
        seconds[n] = (time.perf_counter() - start) / cell["k"]
    cfg = configs[0]
    last = spec["eval_max"]
    flops = {n: forward_flops(cfg, n, cfg.eval_batch_size) for n in seconds}
    return {
        "s_per_model": seconds,
        "flop_per_s": {n: flops[n] / s for n, s in seconds.items()},
        f"s_per_model_1_to_{last}": fit_eval_seconds(cfg, seconds, last),
        "fit": "a + bT + cT^2 (non-negative) through the measured lengths, summed over 1..max",
        "peak_memory_mb": peak_memory_mb(device),
    }


def worker_cells(spec: dict) -> None:
    """The throughput or eval stage: each cell measured and recorded, the next one started
    only when the time left covers the last one's duration."""
    import torch

    from randpos.core.fields import ConfigError

    records = Records(Path(spec["records"]))
    stage, device = spec["stage"], torch.device(spec["device"])
    peaks = {}
    if stage == "throughput":
        peaks = measure_peak(device, spec["tiny"])
        records.add(stage, "measured peak", "ok", flop_per_s=peaks, device=str(device))
    out_of_memory: set[tuple] = set()  # (execution, precision) that ran out at a smaller K
    last = 0.0
    for cell in spec["cells"]:
        name = cell_name(cell)
        group = (cell.get("execution"), cell["precision"])
        if group in out_of_memory:
            records.add(stage, name, "skipped", cell=cell, reason="out of memory at a smaller K")
            continue
        if time.time() + 1.2 * last > spec["deadline"]:
            records.add(stage, name, "not run", cell=cell, reason="budget")
            continue
        started = time.perf_counter()
        try:
            result = (
                throughput_cell(spec, cell, peaks)
                if stage == "throughput"
                else (eval_cell(spec, cell))
            )
            records.add(stage, name, "ok", cell=cell, **result)
        except ConfigError as exc:  # e.g. bf16 off CUDA: refused by the library
            records.add(stage, name, "skipped", cell=cell, reason=str(exc))
        except Exception as exc:
            if _out_of_memory(exc):
                out_of_memory.add(group)
                records.add(stage, name, "error", cell=cell, error="out of memory")
            else:
                records.add(stage, name, "error", cell=cell, error=f"{type(exc).__name__}: {exc}")
        last = time.perf_counter() - started
        print(f"{stage}: {name}: {last:.1f} s", flush=True)
        _cleanup(device, cell.get("execution", "eager") != "eager")


def protocol_spec(spec: dict) -> dict:
    """The sweep of the chosen cells: each cell's seeds x learning rates as one ensemble."""
    cells = [{"task": t, "pe": p, "positions.sampler": s} for t, p, s in spec["cells"]]
    sweep = {
        "name": spec["name"],
        "description": f"GPU suite: {len(cells)} Table 1 cell(s) at {spec['steps']} steps",
        "base": dict(spec["base"], steps=spec["steps"], device=spec["device"]),
        "arms": cells,
        "grid": {"learning_rate": spec["learning_rates"], "seed": spec["seeds"]},
    }
    if spec.get("preset"):
        sweep["preset"] = spec["preset"]
    return sweep


def worker_protocol(spec: dict) -> None:
    """Train the cells through the sweep (SIGTERM stops it with checkpoints on disk), then
    write the report of whatever finished."""
    from randpos.results.report import write_report
    from randpos.results.store import ResultsStore
    from randpos.sweep import LocalExecutor, parse_spec, run_sweep

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    records = Records(Path(spec["records"]))
    out = Path(spec["out"])
    store = ResultsStore(out / "store.sqlite")
    sweep = parse_spec(protocol_spec(spec))
    started = time.perf_counter()
    interrupted = False
    try:
        run_sweep(
            sweep,
            store,
            LocalExecutor(workers=1, device="cpu" if spec["device"] == "cpu" else "auto"),
            ensemble_size=len(spec["seeds"]) * len(spec["learning_rates"]),
            runs_dir=out / "runs",
            progress=False,
        )
    except KeyboardInterrupt:
        interrupted = True
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the report is the last thing to save
    runs = store.runs(sweep=spec["name"])
    done = runs[runs["status"] == "done"] if len(runs) else runs
    per_cell = {}
    for cell in spec["cells"]:
        task, pe, sampler = cell
        if len(done):
            randomized = sampler != "contiguous"
            mine = done[(done["task"] == task) & (done["pe"] == pe)]
            mine = mine[mine["randomized"] == randomized]
        else:
            mine = done
        per_cell[" ".join(cell)] = {
            "runs_done": int(len(mine)),
            "id_accuracy_mean": float(mine["id_accuracy"].mean()) if len(mine) else None,
            "ood_accuracy_mean": float(mine["ood_accuracy"].mean()) if len(mine) else None,
            "ood_accuracy_max": float(mine["ood_accuracy"].max()) if len(mine) else None,
        }
    report = report_error = None
    if len(done):
        try:
            report = str(write_report(store, out / "report", sweep=spec["name"])["markdown"])
        except Exception as exc:  # the runs are in the store: `randpos report` can retry
            report_error = f"{type(exc).__name__}: {exc}"
    records.add(
        "protocol",
        "cells",
        "ok" if not interrupted else "partial",
        steps=spec["steps"],
        cells=per_cell,
        runs_done=int(len(done)),
        runs_planned=len(spec["cells"]) * len(spec["seeds"]) * len(spec["learning_rates"]),
        seconds=time.perf_counter() - started,
        report=report,
        report_error=report_error,
        store=str(out / "store.sqlite"),
        interrupted=interrupted,
    )


def worker_machine(spec: dict) -> None:
    import torch

    records = Records(Path(spec["records"]))
    info = machine_info()
    device = torch.device(spec["device"])
    apis = {
        "torch.compile": hasattr(torch, "compile"),
        "torch.compiler.cudagraph_mark_step_begin": hasattr(
            torch.compiler, "cudagraph_mark_step_begin"
        ),
        "torch._dynamo.maybe_mark_dynamic": hasattr(torch._dynamo, "maybe_mark_dynamic"),
        "torch.func.vmap": hasattr(torch.func, "vmap"),
        "torch._foreach_norm": hasattr(torch, "_foreach_norm"),
        "torch.cuda.graphs": hasattr(torch.cuda, "CUDAGraph"),
    }
    packages = {
        name: importlib.util.find_spec(name) is not None
        for name in ("pytest", "pandas", "pyarrow", "matplotlib", "yaml", "safetensors", "rich")
    }
    cuda = {}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        cuda = {
            "name": props.name,
            "memory_gb": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}",
            "bf16": torch.cuda.is_bf16_supported(),
            "devices": torch.cuda.device_count(),
        }
    records.add("machine", "machine", "ok", machine=info, apis=apis, packages=packages, cuda=cuda)


WORKERS = {
    "throughput": worker_cells,
    "eval": worker_cells,
    "protocol": worker_protocol,
}


# ====================================================================================== sizing
def size_protocol(
    seconds: float,
    model_steps_per_s: float,
    eval_s_per_model: float,
    runs_per_cell: int,
    *,
    cells_available: int,
    min_cells: int = 2,
    full_steps: int = PAPER_STEPS,
    overhead_s: float = 0.0,
    min_steps: int = 100,
    max_steps: int | None = None,
    round_to: int = 100,
) -> dict:
    """How many cells, at how many steps, fit in ``seconds``: a cell (``runs_per_cell`` runs,
    one ensemble) costs ``overhead_s`` + its training (runs x steps / model-steps per second)
    + its evaluation (runs x seconds per model). At the paper's ``full_steps`` as many cells as
    fit; if fewer than ``min_cells`` fit, ``min_cells`` cells (or one) at the steps that fit,
    rounded down to ``round_to``. ``cells`` is 0 when not even one cell fits ``min_steps``."""

    def cost(steps: int) -> float:
        return overhead_s + runs_per_cell * (steps / model_steps_per_s + eval_s_per_model)

    full = min(full_steps, max_steps or full_steps)
    fit = int(seconds // cost(full)) if seconds > 0 else 0
    if fit >= min(min_cells, cells_available):
        cells, steps = min(fit, cells_available), full
    else:
        cells, steps = 0, 0
        for n in sorted({min(min_cells, cells_available), 1}, reverse=True):
            budget = seconds / n - overhead_s - runs_per_cell * eval_s_per_model
            s = int(budget * model_steps_per_s / runs_per_cell) if budget > 0 else 0
            s = min(s // round_to * round_to if s >= round_to else s, full)
            if s >= min_steps:
                cells, steps = n, s
                break
    return {
        "cells": cells,
        "steps": steps,
        "cell_seconds": cost(steps) if cells else None,
        "full_cell_seconds": cost(full_steps),
        "reduced": bool(cells) and steps < full_steps,
    }


def protocol_cells(spec_cells: list[str] | None, tiny: bool) -> list[tuple[str, str, str]]:
    """Cells in the order they run: each (task, pe) plain then randomized; ``none`` has no
    positions to randomize (plain only)."""
    if spec_cells:
        cells = []
        for text in spec_cells:
            task, pe, *sampler = text.split(":")
            samplers = sampler or (["contiguous"] if pe == "none" else ["contiguous", "random"])
            cells += [(task, pe, s) for s in samplers]
        return cells
    if tiny:
        return [("reverse_string", "rope", "contiguous"), ("reverse_string", "rope", "random")]
    return [
        (task, pe, s)
        for pe in PROTOCOL_PES
        for task in PROTOCOL_TASKS
        for s in (["contiguous"] if pe == "none" else ["contiguous", "random"])
    ]


# ====================================================================================== driver
class Suite:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = args.out.resolve()
        (self.out / "logs").mkdir(parents=True, exist_ok=True)
        self.records = Records(self.out / "results.jsonl")
        self.start = time.monotonic()
        self.wall_start = time.time()
        self.end = self.start + args.budget
        self.stage_status: dict[str, dict] = {}
        self.child: subprocess.Popen | None = None  # the running worker
        self.env = dict(os.environ)
        paths = [str(HERE)]
        if importlib.util.find_spec("randpos") is None:  # an uninstalled checkout
            paths.append(str(ROOT / "src"))
        self.env["PYTHONPATH"] = os.pathsep.join(paths + [self.env.get("PYTHONPATH", "")])
        if args.device == "cpu":  # one thread: what the project's CPU runs use (tiny ops)
            self.env.setdefault("OMP_NUM_THREADS", "1")
        self.config = dict(TINY if args.tiny else PAPER, pe=args.pe, task=args.task)
        if not args.tiny:
            self.config.update(batch_size=args.batch_size)

    def left(self) -> float:
        return self.end - time.monotonic()

    def stage_deadline(self, stage: str) -> float:
        """Monotonic time by which ``stage`` must end."""
        return self.start + STAGE_ENDS[stage] * self.args.budget

    def spawn(self, stage: str, spec: dict, deadline: float, grace: float = 10.0) -> int | None:
        """Run one worker; SIGTERM at ``deadline``, SIGKILL ``grace`` seconds later. Returns
        its exit status (None: killed at the deadline)."""
        spec = dict(spec, stage=stage, records=str(self.records.path))
        spec["deadline"] = self.wall_start + (deadline - self.start)
        log = open(self.out / "logs" / f"{stage}.log", "a")
        proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", json.dumps(spec)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=ROOT,
            start_new_session=True,
        )
        self.child = proc
        try:
            return proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self._signal(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self._signal(proc, signal.SIGKILL)
                proc.wait()
            return None
        finally:
            self.child = None
            log.close()

    @staticmethod
    def _signal(proc: subprocess.Popen, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)

    def done(self, stage: str, status: str, **info) -> None:
        info["seconds"] = round(time.monotonic() - self._stage_start, 1)
        self.stage_status[stage] = {"status": status, **info}
        print(f"[{time.monotonic() - self.start:6.1f} s] {stage}: {status} {info}", flush=True)

    # ------------------------------------------------------------------ stages
    def run(self) -> None:
        a = self.args
        print(
            f"randpos GPU suite: device {a.device}, budget {a.budget:.0f} s, out {self.out}"
            + (" (tiny)" if a.tiny else ""),
            flush=True,
        )

        def stop(signum, frame):
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, stop)
        try:
            for stage in STAGES:
                self._stage_start = time.monotonic()
                if stage not in a.stages:
                    continue
                if self.left() <= 2:
                    self.records.add(stage, stage, "not run", reason="budget")
                    self.done(stage, "not run", reason="budget")
                    continue
                try:
                    getattr(self, f"stage_{stage}")()
                except Exception as exc:  # a stage's own failure must not stop the others
                    self.records.add(stage, stage, "error", error=f"{type(exc).__name__}: {exc}")
                    self.done(stage, "error", error=f"{type(exc).__name__}: {exc}")
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: stop the worker, keep what is saved
            if self.child is not None:
                self._signal(self.child, signal.SIGKILL)
            self.done(stage, "interrupted")
            self.summary()
            sys.exit(130)
        self.summary()

    def stage_machine(self) -> None:
        worker_machine({"device": self.args.device, "records": str(self.records.path)})
        self.done("machine", "ok")

    def stage_tests(self) -> None:
        files = sorted(
            str(p.relative_to(ROOT))
            for p in (ROOT / "tests").rglob("test_*.py")
            if "mark.cuda" in p.read_text()
        )
        (self.out / "tests").mkdir(exist_ok=True)
        junit = self.out / "tests" / "junit.xml"
        if importlib.util.find_spec("pytest") is None:
            self.records.add("tests", "pytest -m cuda", "error", error="pytest is not installed")
            self.done("tests", "error", error="pytest is not installed")
            return
        command = [sys.executable, "-m", "pytest", "-o", "addopts=", "-m", "cuda", "-v", "-rs"]
        command += ["-p", "no:cacheprovider", f"--junitxml={junit}", *files]
        deadline = min(self.stage_deadline("tests"), self.end)
        with open(self.out / "logs" / "tests.log", "a") as log:
            proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT,
                start_new_session=True,
            )  # fmt: skip
            self.child = proc
            try:
                rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._signal(proc, signal.SIGKILL)
                proc.wait()
                rc = None
            finally:
                self.child = None
        log = self.out / "logs" / "tests.log"
        counts = junit_counts(junit) if junit.exists() else log_counts(log)
        # 0: passed; 5: nothing collected (no file has the marker)
        status = "ok" if rc in (0, 5) else ("not finished" if rc is None else "failed")
        self.records.add(
            "tests", "pytest -m cuda", status, exit_status=rc, files=files, **counts,
            command=" ".join(command[1:]),
        )  # fmt: skip
        self.done("tests", status, **counts)

    def cells_stage(self, stage: str, cells: list[dict], spec: dict) -> None:
        """Run ``cells`` in workers until each has a record or the stage's time is up; a
        worker that dies is restarted on the cells it had left."""
        deadline = min(self.stage_deadline(stage), self.end)
        spec = dict(spec, device=self.args.device, config=self.config, backend=self.backend)
        spec["tiny"] = self.args.tiny
        for _attempt in range(4):
            seen = {cell_name(r["cell"]) for r in self.records.read(stage) if "cell" in r}
            remaining = [c for c in cells if cell_name(c) not in seen]
            if not remaining or time.monotonic() >= deadline - 1:
                break
            rc = self.spawn(stage, dict(spec, cells=remaining), deadline)
            if rc is None:  # killed at the deadline: the cell in progress is lost
                break
            seen = {cell_name(r["cell"]) for r in self.records.read(stage) if "cell" in r}
            left = [c for c in remaining if cell_name(c) not in seen]
            if rc != 0 and left:  # the worker died on left[0]
                tail = (self.out / "logs" / f"{stage}.log").read_text().strip().splitlines()
                self.records.add(
                    stage, cell_name(left[0]), "error", cell=left[0],
                    error=f"worker died (exit status {rc}): {tail[-1] if tail else ''}",
                )  # fmt: skip
        records = self.records.read(stage)
        seen = {cell_name(r["cell"]): r["status"] for r in records if "cell" in r}
        for cell in cells:
            if cell_name(cell) not in seen:
                self.records.add(stage, cell_name(cell), "not run", cell=cell, reason="budget")
                seen[cell_name(cell)] = "not run"
        counts = {s: list(seen.values()).count(s) for s in sorted(set(seen.values()))}
        # skipped cells were refused on purpose (bf16 off CUDA, out of memory at a smaller K)
        complete = not (counts.get("error") or counts.get("not run"))
        self.done(stage, "ok" if complete else "partial", **counts)

    @property
    def backend(self) -> str:
        return self.args.backend or ("eager" if self.args.tiny else "inductor")

    def stage_throughput(self) -> None:
        a = self.args
        # every K of an execution and precision together, in order of value: the eager fp32
        # numbers first, then bf16, then the compiled executions
        cells = [
            {"execution": e, "precision": p, "k": k}
            for e in a.executions
            for p in a.precisions
            for k in a.ks
        ]
        self.cells_stage("throughput", cells, {"steps": a.steps})

    def stage_eval(self) -> None:
        a = self.args
        k = a.eval_k
        cells = [{"execution": "eager", "precision": "fp32", "k": 1}]
        cells += [{"execution": "eager", "precision": p, "k": k} for p in a.precisions]
        eval_max = TINY["eval_max_length"] if a.tiny else 500
        lengths = a.eval_lengths or ([1, 4, 8] if a.tiny else [1, 50, 100, 200, 300, 500])
        config = dict(self.config, eval_max_length=max(eval_max, *lengths))
        self.config, saved = config, self.config
        try:
            self.cells_stage("eval", cells, {"eval_lengths": lengths, "eval_max": eval_max})
        finally:
            self.config = saved

    def measured_rates(self) -> tuple[dict | None, float | None]:
        """The fastest fp32 throughput record at the ensemble size closest to a cell's runs
        (eager or compiled: what a sweep can select), and the evaluation seconds per model."""
        runs = len(self.args.seeds) * len(self.args.learning_rates)
        # a sweep compiles (config field compile) with inductor only
        executions = ("eager", "compiled") if self.backend == "inductor" else ("eager",)
        rows = [
            r for r in self.records.read("throughput")
            if r["status"] == "ok" and "cell" in r and r["cell"]["precision"] == "fp32"
            and r["cell"]["execution"] in executions
        ]  # fmt: skip
        best = None
        if rows:
            k = min({r["cell"]["k"] for r in rows}, key=lambda k: (abs(math.log(k / runs)), -k))
            at_k = [r for r in rows if r["cell"]["k"] == k]
            best = max(at_k, key=lambda r: r["model_steps_per_s"])
        evals = [
            r for r in self.records.read("eval")
            if r["status"] == "ok" and r["cell"]["precision"] == "fp32"
        ]  # fmt: skip
        key = next((k for r in evals for k in r if k.startswith("s_per_model_1_to_")), None)
        eval_s = None
        if evals and key:  # the ensemble's per-model cost when measured, else one model's
            eval_s = max(evals, key=lambda r: r["cell"]["k"])[key]
        return best, eval_s

    def stage_protocol(self) -> None:
        a = self.args
        reserve = 15.0 if a.tiny else 45.0  # stopping the sweep and writing the report
        deadline = min(self.stage_deadline("protocol"), self.end) - 2
        best, eval_s = self.measured_rates()
        cells = protocol_cells(a.cells, a.tiny)
        runs = len(a.seeds) * len(a.learning_rates)
        if best is None:
            self.records.add("protocol", "sizing", "not run", reason="no throughput measured")
            self.done("protocol", "not run", reason="no throughput measured")
            return
        rate, execution = best["model_steps_per_s"], best["cell"]["execution"]
        eval_assumed = eval_s is None  # the eval stage was cut: a pessimistic guess
        if eval_assumed:
            eval_s = 0.0 if a.tiny else 60.0
        # a job starts a process, builds the members and (compiled) compiles: the warm-up the
        # throughput stage measured for this execution, on top of a fixed start-up
        overhead = (5.0 if a.tiny else 30.0) + best.get("warmup_s", 0.0)
        sizing = size_protocol(
            deadline - time.monotonic() - reserve,
            rate,
            eval_s,
            runs,
            cells_available=len(cells),
            min_cells=a.min_cells,
            overhead_s=overhead,
            min_steps=2 if a.tiny else 100,
            max_steps=a.protocol_steps or (10 if a.tiny else None),
            round_to=1 if a.tiny else 100,
        )
        sizing.update(
            model_steps_per_s=rate,
            execution=execution,
            eval_s_per_model=eval_s,
            eval_assumed=eval_assumed,
            overhead_s=overhead,
        )
        sizing["full_protocol_all_runs_hours"] = 4950 * (PAPER_STEPS / rate + eval_s) / 3600
        if not sizing["cells"]:
            self.records.add("protocol", "sizing", "not run", reason="no cell fits", **sizing)
            self.done("protocol", "not run", reason="no cell fits")
            return
        chosen = cells[: sizing["cells"]]
        self.records.add("protocol", "sizing", "ok", chosen=chosen, **sizing)
        base = dict(TINY_PROTOCOL) if a.tiny else {}
        base["compile"] = execution == "compiled"
        spec = {
            "name": "gpu_suite_tiny" if a.tiny else "gpu_suite",
            "cells": chosen,
            "steps": sizing["steps"],
            "base": base,
            "preset": None if a.tiny else "paper",
            "seeds": a.seeds,
            "learning_rates": a.learning_rates,
            "device": a.device,
            "out": str(self.out / "protocol"),
        }
        rc = self.spawn("protocol", spec, deadline - reserve, grace=reserve)
        record = next(iter(self.records.read("protocol")[::-1]), {})
        status = record.get("status", "error") if record.get("name") == "cells" else "error"
        self.done(
            "protocol", status, exit_status=rc, cells=len(chosen), steps=sizing["steps"],
            runs_done=record.get("runs_done"),
        )  # fmt: skip

    # ------------------------------------------------------------------ summary
    def summary(self) -> None:
        records = self.records.read()
        lines = summary_lines(records, self.stage_status, self.args, time.monotonic() - self.start)
        text = "\n".join(lines)
        (self.out / "summary.txt").write_text(text + "\n")
        (self.out / "summary.json").write_text(
            json.dumps(
                {
                    "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                    "budget_s": self.args.budget,
                    "used_s": round(time.monotonic() - self.start, 1),
                    "stages": self.stage_status,
                    "load_average_end": load_average(),
                },
                indent=2,
            )
        )
        print(text, flush=True)


def junit_counts(path: Path) -> dict:
    """Test counts from pytest's junit XML."""
    import xml.etree.ElementTree as ET

    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}


def log_counts(path: Path) -> dict:
    """Test counts from pytest's -v lines, for a run stopped before it wrote its junit XML."""
    import re

    text = path.read_text() if path.exists() else ""
    found = re.findall(r"::\S+ (PASSED|FAILED|SKIPPED|ERROR)", text)
    return {
        "tests": len(found),
        "failures": found.count("FAILED"),
        "errors": found.count("ERROR"),
        "skipped": found.count("SKIPPED"),
    }


def summary_lines(records: list[dict], stages: dict, args, used: float) -> list[str]:
    machine = next((r for r in records if r["stage"] == "machine" and r["name"] == "machine"), {})
    info = machine.get("machine", {})
    gpu = (machine.get("cuda") or {}).get("name") or info.get("cpu_model") or args.device
    lines = [
        f"randpos GPU suite on {gpu}, torch {info.get('torch', '?')}: "
        f"{used:.0f} s of {args.budget:.0f} s" + (" (tiny dry run)" if args.tiny else ""),
        "",
        f"{'stage':11} {'status':12} {'time':>6}  notes",
    ]
    for stage in STAGES:
        if stage not in stages:
            continue
        s = stages[stage]
        notes = ", ".join(f"{k} {v}" for k, v in s.items() if k not in ("status", "seconds"))
        lines.append(f"{stage:11} {s['status']:12} {s['seconds']:5.0f}s  {notes}"[:110])
    rows = [r for r in records if r["stage"] == "throughput" and "cell" in r]
    if rows:
        lines += ["", "training model-steps/s (peak memory MB, % of datasheet or measured peak)"]
        executions = list(dict.fromkeys(r["cell"]["execution"] for r in rows))
        precisions = list(dict.fromkeys(r["cell"]["precision"] for r in rows))
        ks = sorted({r["cell"]["k"] for r in rows})
        head = f"{'K':>5}" + "".join(f" {e + ' ' + p:>24}" for e in executions for p in precisions)
        lines.append(head)
        by = {(r["cell"]["execution"], r["cell"]["precision"], r["cell"]["k"]): r for r in rows}
        for k in ks:
            line = f"{k:>5}"
            for e in executions:
                for p in precisions:
                    r = by.get((e, p, k))
                    line += f" {throughput_text(r):>24}"
            lines.append(line)
    evals = [r for r in records if r["stage"] == "eval" and r.get("status") == "ok"]
    for r in evals:
        key = next((k for k in r if k.startswith("s_per_model_1_to_")), None)
        c = r["cell"]
        total = r.get(key)
        lines.append(
            f"evaluation {key.removeprefix('s_per_model_') if key else ''} per model, K={c['k']}"
            f" {c['precision']}: "
            + (f"{total:.2f} s" if total is not None else "-")
            + "  (s/model at n: "
            + ", ".join(f"{n}: {s:.3g}" for n, s in r["s_per_model"].items())
            + ")"
        )
    sizing = next((r for r in records if r["stage"] == "protocol" and r["name"] == "sizing"), None)
    cells = next((r for r in records if r["stage"] == "protocol" and r["name"] == "cells"), None)
    if sizing and sizing["status"] == "ok":
        lines.append(
            f"protocol: {sizing['cells']} cell(s) x {len(args.seeds) * len(args.learning_rates)} "
            f"runs at {sizing['steps']:,} steps ({'cut from' if sizing['reduced'] else 'the'} "
            f"paper's {PAPER_STEPS:,}); a full cell would take {sizing['full_cell_seconds']:.0f} s"
            f", all 4,950 runs {sizing['full_protocol_all_runs_hours']:.1f} h at this rate"
        )
    if cells:
        lines.append(
            f"protocol: {cells['runs_done']}/{cells['runs_planned']} runs done; "
            f"report {cells.get('report') or '-'}"
        )
    lines.append(f"all results: {args.out}/results.jsonl, summary.json, logs/")
    return lines


def throughput_text(r: dict | None) -> str:
    if r is None:
        return "-"
    if r["status"] != "ok":
        return r["status"] if r["status"] != "error" else "error: " + r["error"][:15]
    frac = r.get("fraction_of_datasheet_peak") or r.get("fraction_of_measured_peak")
    text = f"{r['model_steps_per_s']:.1f} ({r['peak_memory_mb']:.0f}"
    return text + (f", {100 * frac:.1f}%)" if frac else ")")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cuda", help="cuda | cpu | cuda:N")
    parser.add_argument("--budget", type=float, default=None, help="seconds (default 540)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--tiny", action="store_true", help="toy sizes (the dry run)")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--ks", type=int, nargs="+", default=None)
    parser.add_argument(
        "--executions", nargs="+", choices=list(EXECUTIONS), default=list(EXECUTIONS)
    )
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--steps", type=int, default=None, help="timed steps per measurement")
    parser.add_argument("--backend", default=None, help="torch.compile backend")
    parser.add_argument("--task", default="reverse_string")
    parser.add_argument("--pe", default="none")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--eval-k", type=int, default=None, help="ensemble size of eval timing")
    parser.add_argument("--eval-lengths", type=int, nargs="+", default=None)
    parser.add_argument("--cells", nargs="+", default=None, help="TASK:PE[:SAMPLER] ...")
    parser.add_argument("--min-cells", type=int, default=2)
    parser.add_argument("--protocol-steps", type=int, default=None, help="at most this many")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--learning-rates", type=float, nargs="+", default=None)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        WORKERS[spec["stage"]](spec)
        return
    tiny = args.tiny
    args.budget = args.budget or (120.0 if tiny else 540.0)
    args.ks = args.ks or ([1, 2] if tiny else [1, 8, 32, 128, 256])
    args.steps = args.steps or (2 if tiny else 8)
    args.eval_k = args.eval_k or (2 if tiny else 32)
    args.seeds = args.seeds or ([0, 1] if tiny else SEEDS)
    args.learning_rates = args.learning_rates or ([1e-3] if tiny else LEARNING_RATES)
    if args.out is None:
        import socket

        args.out = HERE / "results" / f"gpu_suite_{socket.gethostname()}"
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device here (use --device cpu --tiny to try)")
    Suite(args).run()


if __name__ == "__main__":
    main()
