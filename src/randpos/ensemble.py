"""Many models, one batched computation: K runs of a sweep grid trained and evaluated together.

Notation: K = models in the ensemble, B = batch, T = sequence length, k = output positions,
C = classes, D = width, S = dropout sites per forward (``Transformer.dropout_sites``),
E' = evaluation sequences in one forward.

Runs are *compatible* when their configs differ only in ``seed`` and ``learning_rate``
(:func:`ensemble_key`): same architecture, task, encoding and protocol, and the same
``curriculum_seed``, so every model trains on the same length n at every step (that is what the
separate curriculum seed exists for). Their weights are stacked along a leading model axis
(``torch.func.stack_module_state``) and one ``vmap`` of ``functional_call`` runs all K forward
passes as batched matrix products (or the members run one by one on views of the stacked
weights, see below). Everything else stays per model:

* data, positions and dropout come from each model's own ``data`` / ``positions`` / ``dropout``
  generators, consumed exactly as :class:`randpos.training.Trainer` consumes them: a generator
  cannot cross ``vmap``, so the dropout draws are made outside (``draw_dropout_noise``) and
  passed in as the model's ``dropout_noise`` argument, the same tensor the single run draws;
* the loss of model i depends only on model i's weights, so the gradient of the summed losses
  is every model's own gradient (the backward runs outside ``vmap``, on the flattened batch);
* gradient clipping (global norm per model) and Adam (per-model learning rate) are written out
  on the stacked tensors, following ``torch.optim.Adam`` and ``clip_grad_norm_`` step by step.

So an ensemble reproduces K separate ``Trainer`` runs to float tolerance (tests/test_ensemble.py
checks losses per step and final weights with dropout on). Each model keeps a real ``Trainer``
(its model, optimizer, generators, history): checkpoints are written in the single-run format,
one per run directory, and the run files and summary are the ones ``training.train`` writes.

How the members run is the ``execution`` (:data:`EXECUTIONS`): vmapped (CUDA's default), one
after another sharing the batched optimizer step (CPU's default, where vmapped attention is
slow), or compiled (``compile=True`` / ``TrainConfig.compile``: one graph with symbolic lengths
per member function, :mod:`randpos.compile`). docs/performance.md has the measurements and
:func:`best_strategy` the default way to run many models on a device.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from randpos.compile import autocast, mark_dynamic, maybe_compile
from randpos.config import ENSEMBLE_VARYING_FIELDS, ConfigError, TrainConfig, ensemble_key
from randpos.evaluation import (
    EvalResult,
    PositionPlan,
    draw_positions,
    evaluate_length_batched,
    model_inputs,
)
from randpos.progress import ProgressReporter
from randpos.training import (
    CHECKPOINT,
    SUMMARY,
    StopFlag,
    Trainer,
    TrainingInterrupted,
    atomic_write_text,
    heartbeat,
    load_checkpoint,
    make_summary,
    prepare_out_dir,
    run_id,
    write_run_files,
)

#: The config fields in which the members of one ensemble may differ.
VARYING_FIELDS = ENSEMBLE_VARYING_FIELDS


# ----------------------------------------------------------------------------- grouping
def group_compatible(
    configs: Sequence[TrainConfig], max_size: int | None = None
) -> list[list[int]]:
    """Indices of ``configs`` grouped into ensembles, in order of first appearance.

    Configs with the same :func:`ensemble_key` share a group; groups larger than ``max_size``
    are split into consecutive chunks. Every index appears exactly once.
    """
    if max_size is not None and max_size < 1:
        raise ValueError(f"max_size must be >= 1, got {max_size}")
    groups: dict[str, list[int]] = {}
    for index, config in enumerate(configs):
        groups.setdefault(ensemble_key(config), []).append(index)
    out: list[list[int]] = []
    for members in groups.values():
        size = max_size or len(members)
        out.extend(members[i : i + size] for i in range(0, len(members), size))
    return out


def _check_compatible(configs: Sequence[TrainConfig]) -> None:
    if not configs:
        raise ConfigError("an ensemble needs at least one config")
    keys = {ensemble_key(c) for c in configs}
    if len(keys) > 1:
        first = configs[0].to_dict()
        differ = sorted(
            {
                k
                for c in configs[1:]
                for k, v in c.to_dict().items()
                if k not in VARYING_FIELDS and v != first[k]
            }
        )
        raise ConfigError(
            "an ensemble's configs may differ only in seed and learning_rate; these differ: "
            + ", ".join(differ)
            + " (split them with randpos.ensemble.group_compatible)"
        )


#: How an ensemble runs its members (docs/performance.md has the measurements):
#: "vmap": one vmapped eager pass for all members (batched kernels; the CUDA default);
#: "loop": the members one after another in eager mode, sharing the batched optimizer step
#:   (the CPU default: vmapped attention must use explicit math on CPU, slower than the fused
#:   kernel a single model gets);
#: "compiled": "loop" with the member function compiled once, lengths symbolic;
#: "batched": "vmap" compiled as a whole, one graph per distinct length (a long run's
#:   compile cost is amortized; evaluation then runs as "vmap", never compiled per length).
EXECUTIONS = ("vmap", "loop", "compiled", "batched")


def _execution(compile, execution, config: TrainConfig, device: torch.device) -> str:
    if execution is not None:
        if execution not in EXECUTIONS:
            raise ValueError(f"unknown execution {execution!r}; valid: {', '.join(EXECUTIONS)}")
        return execution
    if compile is None:
        compile = config.compile
    if compile:
        return "compiled"
    return "vmap" if device.type == "cuda" else "loop"


def _grad(loss: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Gradients of ``loss`` w.r.t. ``inputs``; zeros for a weight the loss does not use (no
    encoder weight is ever unused; this only keeps a new encoding from crashing the step)."""
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads, strict=True)]


def _row(t: torch.Tensor | None, i: int) -> torch.Tensor | None:
    return None if t is None else t[i]


def _raise_recompile_limit(at_least: int) -> None:
    """The batched compiled mode compiles one graph per distinct length; torch's default limit
    (8) would silently fall back to eager after eight."""
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), at_least))
    for name in ("accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), 4 * at_least))


# ----------------------------------------------------------------------------- the trainer
class EnsembleTrainer:
    """K compatible runs stepped together; per-model results equal K separate Trainers'."""

    def __init__(
        self,
        configs: Sequence[TrainConfig],
        *,
        compile: bool | None = None,
        execution: str | None = None,
        cuda_graphs: bool = False,
        attention: str | None = None,
        backend: str | Callable = "inductor",
    ) -> None:
        """``execution`` is one of :data:`EXECUTIONS`; by default "compiled" when ``compile``
        (default: the configs' field) is true, else "vmap" on CUDA and "loop" on CPU.
        ``backend`` is the ``torch.compile`` backend (tests pass a
        :class:`randpos.compile.CompileCounter`).
        ``attention`` overrides the attention backend: by default "math" for vmapped execution
        on CPU (torch's fused CPU kernel has no vmap rule and would loop over the members),
        else the configs' choice (CUDA's fused kernels batch under vmap). Both backends give
        the same numbers."""
        configs = list(configs)
        for config in configs:
            config.validate()
        _check_compatible(configs)
        self.configs = configs
        self.trainers = [Trainer(c) for c in configs]  # init, optimizer, generators: as alone
        first = self.trainers[0]
        self.config = configs[0]  # the shared settings
        self.device = first.device
        self.task = first.task
        self.size = len(configs)
        self.cuda_graphs = cuda_graphs
        self.step = 0
        self.train_seconds = 0.0
        self.failed: dict[int, FloatingPointError] = {}  # model index -> why it stopped

        self.execution = _execution(compile, execution, self.config, self.device)
        self.compiled = self.execution in ("compiled", "batched")
        # CUDA graphs replay into static output buffers, overwritten by the next replay: the
        # member loop then marks a step per member and copies out what it keeps.
        self._graphed = cuda_graphs and self.compiled and self.device.type == "cuda"
        # Evaluation never compiles per length: "batched" evaluates like "vmap".
        self.eval_execution = {"batched": "vmap"}.get(self.execution, self.execution)
        if self.eval_execution == "vmap" and self.device.type == "cpu":
            self.eval_execution = "loop"  # see EXECUTIONS: vmapped attention is slow on CPU

        # Stateless copies on the meta device: functional_call supplies the stacked weights.
        # Under vmap on CPU the attention runs as explicit math: torch's fused CPU kernel has
        # no batching rule and would loop over the members (same numbers either way).
        def kernel(vmapped: bool) -> str:
            if attention:
                return attention
            return "math" if vmapped and self.device.type == "cpu" else self.config.attention

        self._train_base = copy.deepcopy(first.model).to("meta").train()
        self._eval_base = copy.deepcopy(first.model).to("meta").eval()
        for base, vmapped in (
            (self._train_base, self.execution in ("vmap", "batched")),
            (self._eval_base, self.eval_execution == "vmap"),
        ):
            for layer in base.layers:
                layer.attention.backend = kernel(vmapped)
        self._buffers = {name: b for name, b in first.model.named_buffers()}  # shared constants
        self.names = [name for name, _ in first.model.named_parameters()]
        self._dropout = self.config.dropout
        self._load_from_trainers()
        self._lrs = torch.tensor([c.learning_rate for c in configs], dtype=torch.float64)

        options = dict(device=self.device, cuda_graphs=cuda_graphs, backend=backend)
        looped = self.execution == "compiled"
        self._member_loss_fn = maybe_compile(self._member_loss, looped, **options)
        self._member_logits_fn = maybe_compile(self._member_logits, looped, **options)
        self._forward = self._forward_batched
        if self.execution == "batched":
            self._forward = maybe_compile(self._forward_batched, True, **options)
        looped_grads = self.execution in ("loop", "compiled")
        self._grads = self._forward_looped_grads if looped_grads else self._forward_batched_grads
        if self.execution == "batched":
            _raise_recompile_limit(4 * self.config.longest_sequence())
        self._eval = self._eval_batched if self.eval_execution == "vmap" else self._eval_looped
        self._update = maybe_compile(self._adam_update, self.compiled, **options)

    # --------------------------------------------------------------------- stacked state
    def _load_from_trainers(self) -> None:
        """Stack the trainers' weights and Adam moments into (K, ...) tensors."""
        models = [t.model for t in self.trainers]
        params, _ = stack_module_state(models)
        self.params = {n: params[n].detach().clone().requires_grad_(True) for n in self.names}
        self.exp_avg = {n: torch.zeros_like(p) for n, p in self.params.items()}
        self.exp_avg_sq = {n: torch.zeros_like(p) for n, p in self.params.items()}
        steps = {t.step for t in self.trainers}
        if len(steps) > 1:
            raise ConfigError(
                f"ensemble members are at different steps {sorted(steps)}; resume them apart"
            )
        self.step = steps.pop()
        self.train_seconds = max(t.train_seconds for t in self.trainers)
        for i, trainer in enumerate(self.trainers):
            state = trainer.optimizer.state
            for name, p in trainer.model.named_parameters():
                if p in state and "exp_avg" in state[p]:
                    self.exp_avg[name][i] = state[p]["exp_avg"]
                    self.exp_avg_sq[name][i] = state[p]["exp_avg_sq"]

    def sync(self) -> None:
        """Write the stacked weights, Adam state, step and time back into each Trainer."""
        with torch.no_grad():
            for i, trainer in enumerate(self.trainers):
                opt = trainer.optimizer
                for name, p in trainer.model.named_parameters():
                    p.copy_(self.params[name][i])
                    if self.step:
                        opt.state[p] = {
                            "step": torch.tensor(float(self.step)),
                            "exp_avg": self.exp_avg[name][i].clone(),
                            "exp_avg_sq": self.exp_avg_sq[name][i].clone(),
                        }
                trainer.step = self.step
                trainer.train_seconds = self.train_seconds

    def models(self) -> list[torch.nn.Module]:
        """The K models as plain :class:`randpos.model.Transformer` s (current weights)."""
        self.sync()
        return [t.model for t in self.trainers]

    def load_states(self, states: Sequence[dict[str, Any] | None]) -> None:
        """Resume from single-run checkpoints (``None``: that member starts fresh)."""
        for trainer, state in zip(self.trainers, states, strict=True):
            if state is not None:
                trainer.load_state(state)
        self._load_from_trainers()

    def save_checkpoints(self, paths: Sequence[Path | None]) -> None:
        self.sync()
        for i, (trainer, path) in enumerate(zip(self.trainers, paths, strict=True)):
            if path is not None and i not in self.failed:
                trainer.save_checkpoint(path)

    # --------------------------------------------------------------------- the batched math
    def _member_loss(
        self,
        p: dict[str, torch.Tensor],
        tokens: torch.Tensor,  # (B, T)
        targets: torch.Tensor,  # (B, k)
        positions: torch.Tensor,  # (B, T)
        distances: torch.Tensor | None,  # (G, 2, T)
        layer_positions: torch.Tensor | None,  # (layers, B, T)
        keep: torch.Tensor | None,  # (S, B, T, D) bool dropout keep masks
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One member's mean cross-entropy () and blank-position logits (B, k, C), exactly
        the Trainer's loss."""
        kwargs = {
            "distances": distances,
            "layer_positions": layer_positions,
            "dropout_noise": keep,
            "validate": False,
        }
        logits = functional_call(self._train_base, (p, self._buffers), (tokens, positions), kwargs)
        k = targets.shape[-1]
        logits = logits[:, logits.shape[1] - k :]  # (B, k, C): the blank positions
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return loss, logits

    def _member_logits(
        self,
        p: dict[str, torch.Tensor],
        tokens: torch.Tensor,  # (E', T)
        positions: torch.Tensor,  # (E', T)
        distances: torch.Tensor | None,
        layer_positions: torch.Tensor | None,
    ) -> torch.Tensor:
        """One member's evaluation logits (E', T, C)."""
        kwargs = {"distances": distances, "layer_positions": layer_positions, "validate": False}
        return functional_call(self._eval_base, (p, self._buffers), (tokens, positions), kwargs)

    def _forward_batched(
        self,
        params: dict[str, torch.Tensor],
        tokens: torch.Tensor,  # (K, B, T)
        targets: torch.Tensor,  # (K, B, k)
        plan: PositionPlan,  # positions (K, B, T), distances (K, G, 2, T) or None, ...
        noise: torch.Tensor | None,  # (K, S, B, T, D) bool keep masks or None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-model losses (K,) and blank-position logits (K, B, k, C): one vmapped pass."""
        args = (params, tokens, targets, plan.positions, plan.distances, plan.layer_positions)
        args = (*args, noise)
        in_dims = tuple(None if a is None else 0 for a in args)
        with autocast(self.device, self.config.precision):
            return vmap(self._member_loss, in_dims=in_dims)(*args)

    def _forward_batched_grads(self, params, tokens, targets, plan, noise):
        """Losses (K,), logits (K, B, k, C) and per-name gradients (K, ...) of the vmapped pass:
        model i's loss depends only on its own slice, so d(sum of losses) is every model's own
        gradient; the backward runs outside vmap, on the flattened batch."""
        losses, logits = self._forward(params, tokens, targets, plan, noise)
        grads = _grad(losses.sum(), [params[k] for k in self.names])
        return losses, logits, grads

    def _forward_looped_grads(self, params, tokens, targets, plan, noise):
        """Same contract, member by member on views of the stacked weights (compiled: one
        graph with symbolic lengths serves every member). Each member's backward runs right
        after its forward, so only one member's activations are alive at a time."""
        losses, logits, grads = [], [], []
        with autocast(self.device, self.config.precision):
            for i in range(self.size):
                member = [tokens[i], targets[i], plan.positions[i]]
                member += [_row(plan.distances, i), _row(plan.layer_positions, i), _row(noise, i)]
                if self.compiled:
                    for t, dim in zip(member, (1, 1, 1, 2, 2, 2), strict=True):
                        mark_dynamic(t, dim)  # the length axis of each input
                views = [params[k][i] for k in self.names]  # gradients w.r.t. these: (...)
                weights = dict(zip(self.names, views, strict=True))
                self._mark_graph_step()
                loss, logit = self._member_loss_fn(weights, *member)
                grads.append([self._kept(g) for g in _grad(loss, views)])
                losses.append(self._kept(loss.detach()))
                logits.append(self._kept(logit.detach()))
        stacked = [torch.stack(g) for g in zip(*grads, strict=True)]  # per name: (K, ...)
        return torch.stack(losses), torch.stack(logits), stacked

    def _adam_update(
        self,
        params: list[torch.Tensor],
        grads: list[torch.Tensor],
        exp_avg: list[torch.Tensor],
        exp_avg_sq: list[torch.Tensor],
        step_size: torch.Tensor,  # (K,) lr_i / (1 - beta1^t)
        bias_correction2_sqrt: torch.Tensor,  # () sqrt(1 - beta2^t)
    ) -> None:
        """Per-model global-norm clipping, then Adam, in place on the stacked tensors.

        Mirrors ``clip_grad_norm_`` (coefficient max_norm / (norm + 1e-6), capped at 1) and
        ``torch.optim.Adam`` (lerp for the first moment, addcmul for the second)."""
        cfg = self.config
        K = params[0].shape[0]
        # (K,): a Python sum, not stack/cat, which trips an inductor CPU codegen bug (torch 2.13)
        norm = sum(g.reshape(K, -1).square().sum(1) for g in grads).sqrt()
        coef = (cfg.grad_clip / (norm + 1e-6)).clamp(max=1.0)
        for p, g, m, v in zip(params, grads, exp_avg, exp_avg_sq, strict=True):
            shape = (K,) + (1,) * (p.dim() - 1)
            g = g * coef.view(shape)
            m.lerp_(g, 1 - cfg.adam_beta1)
            v.mul_(cfg.adam_beta2).addcmul_(g, g, value=1 - cfg.adam_beta2)
            denom = (v.sqrt() / bias_correction2_sqrt).add_(cfg.adam_eps)
            p.sub_(step_size.view(shape) * m / denom)

    def _eval_batched(
        self, params: dict[str, torch.Tensor], tokens: torch.Tensor, plan: PositionPlan
    ) -> torch.Tensor:
        """Logits (K, E', T, C) of every model on the same tokens (E', T) and positions."""
        args = (tokens, plan.positions, plan.distances, plan.layer_positions)
        in_dims = (0,) + (None,) * len(args)
        with autocast(self.device, self.config.precision):
            return vmap(self._member_logits, in_dims=in_dims)(params, *args)

    def _eval_looped(self, params, tokens, plan):
        """Same contract as :meth:`_eval_batched`, member by member."""
        if self.compiled:
            for t, dims in (
                (tokens, (0, 1)),
                (plan.positions, (0, 1)),
                (plan.distances, (2,)),
                (plan.layer_positions, (1, 2)),
            ):
                mark_dynamic(t, *dims)  # chunk size and length vary
        args = (tokens, plan.positions, plan.distances, plan.layer_positions)
        logits = []
        with autocast(self.device, self.config.precision):
            for i in range(self.size):
                self._mark_graph_step()
                weights = {n: p[i] for n, p in params.items()}
                logits.append(self._kept(self._member_logits_fn(weights, *args)))
        return torch.stack(logits)

    def _mark_graph_step(self) -> None:
        if self._graphed:
            torch.compiler.cudagraph_mark_step_begin()

    def _kept(self, t: torch.Tensor) -> torch.Tensor:
        """``t``, copied out of the CUDA graph's static buffer when graphs are replayed."""
        return t.clone() if self._graphed else t

    # --------------------------------------------------------------------- one step
    def draw_batch(self) -> tuple[int, torch.Tensor, Any, torch.Tensor, Any, torch.Tensor | None]:
        """One step's inputs, each model's from its own generators: n, tokens (K, B, T),
        per-model batches, targets (K, B, k), the stacked position plan, noise (K, S, B, T, D)."""
        lengths = {t.next_length() for t in self.trainers}  # advances every curriculum alike
        if len(lengths) != 1:  # cannot happen for compatible configs; guards the invariant
            raise RuntimeError(f"ensemble members drew different lengths {sorted(lengths)}")
        n = lengths.pop()
        tokens, batches, plans, noise = [], [], [], []
        for t in self.trainers:
            batch = t.task.sample(self.config.batch_size, n, t.generators["data"])
            tok = model_inputs(batch, t.task)  # (B, T)
            B, T = tok.shape
            plans.append(
                draw_positions(
                    t.config, B, T, t.generators["positions"], mode="random", device=self.device
                )
            )
            if self._dropout > 0.0:
                noise.append(
                    t.model.draw_dropout_noise(B, T, t.generators["dropout"]) >= self._dropout
                )
            tokens.append(tok)
            batches.append(batch)

        def stack(items):
            return None if items[0] is None else torch.stack(items)

        plan = PositionPlan(
            stack([p.positions for p in plans]),
            stack([p.distances for p in plans]),
            stack([p.layer_positions for p in plans]),
        )
        targets = torch.stack([b.targets for b in batches])
        return n, torch.stack(tokens), batches, targets, plan, stack(noise) if noise else None

    def train_step(self) -> tuple[list[float], list[float], int]:
        """One step of every model; returns per-model losses and batch accuracies, and n."""
        n, tokens, batches, targets, plan, noise = self.draw_batch()
        losses, logits, grads = self._grads(self.params, tokens, targets, plan, noise)
        names = self.names
        self.step += 1
        cfg = self.config
        # python floats in float64, as torch.optim.Adam computes them, then one device tensor
        step_size = (self._lrs / (1 - cfg.adam_beta1**self.step)).to(self.device, torch.float32)
        bc2 = torch.tensor(math.sqrt(1 - cfg.adam_beta2**self.step), device=self.device)
        with torch.no_grad():
            self._update(
                [self.params[k] for k in names],
                grads,
                [self.exp_avg[k] for k in names],
                [self.exp_avg_sq[k] for k in names],
                step_size,
                bc2,
            )
            mask = torch.stack([b.mask for b in batches])  # (K, B, k)
            correct = ((logits.argmax(-1) == targets) & mask).sum((1, 2))
            accuracy = correct / mask.sum((1, 2)).clamp(min=1)  # (K,)
            loss_list, acc_list = torch.stack([losses.float(), accuracy.float()]).tolist()
        return loss_list, acc_list, n

    # --------------------------------------------------------------------- loops
    def fit(
        self,
        *,
        checkpoints: Sequence[Path | None] | None = None,
        stop: StopFlag | None = None,
        progress: bool = True,
        label: str = "ensemble",
        on_log: Callable[[int, dict[str, Any]], None] | None = None,
    ) -> None:
        """Train every model up to ``steps``; ``on_log(model_index, record)`` per log interval.

        A model whose loss becomes non-finite is marked failed (``self.failed``, the error the
        single run would raise) and leaves the history; the others go on unaffected."""
        cfg = self.config
        stop = stop if stop is not None else StopFlag()
        paths = list(checkpoints) if checkpoints is not None else [None] * self.size
        windows: list[list[tuple[float, float]]] = [[] for _ in range(self.size)]
        with ProgressReporter(
            f"{label} x{self.size}", cfg.steps, self.step, enabled=progress, every=cfg.log_every
        ) as bar:
            while self.step < cfg.steps and len(self.failed) < self.size:
                started = time.perf_counter()
                losses, accs, n = self.train_step()
                self.train_seconds += time.perf_counter() - started
                for i, (loss, acc) in enumerate(zip(losses, accs, strict=True)):
                    if i in self.failed:
                        continue
                    if not math.isfinite(loss):
                        self.failed[i] = FloatingPointError(
                            f"loss became {loss} at step {self.step}"
                        )
                        continue
                    windows[i].append((loss, acc))
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    for i, trainer in enumerate(self.trainers):
                        if i in self.failed or not windows[i]:
                            continue
                        record = {
                            "step": self.step,
                            "loss": sum(w[0] for w in windows[i]) / len(windows[i]),
                            "accuracy": sum(w[1] for w in windows[i]) / len(windows[i]),
                            "train_seconds": round(self.train_seconds, 3),
                        }
                        trainer.history.append(record)
                        windows[i].clear()
                        if on_log is not None:
                            on_log(i, record)
                    alive = [
                        t.history[-1]["loss"]
                        for i, t in enumerate(self.trainers)
                        if i not in self.failed and t.history
                    ]
                    text = f"mean loss {sum(alive) / max(1, len(alive)):.4f} n={n}"
                    bar.update(
                        self.step, text + (f" failed {len(self.failed)}" if self.failed else "")
                    )
                if any(paths) and (self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps):
                    self.save_checkpoints(paths)
                if stop:
                    if any(paths):
                        self.save_checkpoints(paths)
                    raise TrainingInterrupted(self.step, next((p for p in paths if p), None))
        self.sync()

    def evaluate(
        self,
        *,
        progress: bool = True,
        mode: str | None = None,
        lengths: Iterable[int] | None = None,
        stop: StopFlag | None = None,
    ) -> list[EvalResult]:
        """Per-model :class:`EvalResult` s; all models scored in one batched pass per chunk on
        the sequences and positions a single evaluation would use (``evaluate_length_batched``).
        """
        cfg = self.config
        mode = mode or cfg.eval_positions
        lengths = list(lengths) if lengths is not None else list(range(1, cfg.eval_max_length + 1))
        per_length: list[dict[int, float]] = [{} for _ in range(self.size)]

        def forward(tokens: torch.Tensor, plan: PositionPlan) -> torch.Tensor:
            return self._eval(self.params, tokens, plan)

        total = len(lengths)
        with (
            ProgressReporter("eval", total, enabled=progress, every=max(1, total // 10)) as bar,
            torch.inference_mode(),
        ):
            for done, n in enumerate(lengths, 1):
                accs = evaluate_length_batched(
                    forward, self.size, cfg, self.task, n, mode=mode, device=self.device
                )
                for i, acc in enumerate(accs):
                    per_length[i][n] = acc
                bar.update(done, f"length {n}: mean {sum(accs) / len(accs):.3f}")
                if stop:
                    raise TrainingInterrupted(self.step, None)
        return [EvalResult(p, cfg.max_train_length) for p in per_length]


# ----------------------------------------------------------------------------- entry point
def train_ensemble(
    configs: Sequence[TrainConfig],
    out_dirs: Sequence[str | Path | None] | None = None,
    *,
    store=None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    sweep: str | None = None,
    compile: bool | str | None = None,
) -> list[dict[str, Any] | BaseException]:
    """``training.train`` for K compatible configs at once; one outcome per config, in order.

    An outcome is the run's summary (the same files and summary ``train`` writes, plus
    ``timings["ensemble_size"]``), or the exception that ended that run alone (a diverged loss,
    a run directory holding a different finished run); the store records either. Runs already
    finished in their directory are returned as they are. Members resumed from checkpoints at
    different steps train as separate ensembles. A signal stops all members at the next step
    boundary with their checkpoints on disk (``TrainingInterrupted``).
    """
    configs = list(configs)
    for config in configs:
        config.validate()
    _check_compatible(configs)
    outs = [None if o is None else Path(o) for o in (out_dirs or [None] * len(configs))]
    if len(outs) != len(configs):
        raise ConfigError(f"{len(configs)} configs but {len(outs)} output directories")
    outcomes: list[dict[str, Any] | BaseException | None] = [None] * len(configs)
    states: dict[int, dict[str, Any] | None] = {}
    for i, (config, out) in enumerate(zip(configs, outs, strict=True)):
        states[i] = None
        if out is None:
            continue
        prepare_out_dir(out, resume=resume, overwrite=overwrite)
        if resume and (out / SUMMARY).exists():
            summary = json.loads((out / SUMMARY).read_text())
            if summary.get("run_id") == run_id(config):
                outcomes[i] = summary  # already complete
            else:
                outcomes[i] = ConfigError(f"{out} holds a finished run with a different config")
            continue
        atomic_write_text(out / "config.json", json.dumps(config.to_dict(), indent=2))
        if resume and (out / CHECKPOINT).exists():
            states[i] = load_checkpoint(out / CHECKPOINT)
    todo = [i for i in range(len(configs)) if outcomes[i] is None]
    by_step: dict[int, list[int]] = {}
    for i in todo:
        by_step.setdefault(states[i]["step"] if states[i] else 0, []).append(i)
    for members in by_step.values():
        results = _train_members(
            [configs[i] for i in members],
            [outs[i] for i in members],
            [states[i] for i in members],
            store=store,
            progress=progress,
            sweep=sweep,
            compile=compile,
        )
        for i, result in zip(members, results, strict=True):
            outcomes[i] = result
    return outcomes  # type: ignore[return-value]


def _train_members(configs, outs, states, *, store, progress, sweep, compile):
    rids = [run_id(c) for c in configs]
    ensemble = EnsembleTrainer(configs, compile=compile)
    ensemble.load_states(states)
    if store is not None:
        for rid, config, out in zip(rids, configs, outs, strict=True):
            store.start_run(rid, config.to_dict(), sweep=sweep, out_dir=str(out) if out else None)
    checkpoints = [out / CHECKPOINT if out is not None else None for out in outs]
    try:
        stop = StopFlag()
        with stop.installed():
            ensemble.fit(
                checkpoints=checkpoints,
                stop=stop,
                progress=progress,
                on_log=heartbeat(store, rids),
            )
            eval_started = time.perf_counter()
            results = ensemble.evaluate(progress=progress, stop=stop)
            eval_seconds = time.perf_counter() - eval_started
    except TrainingInterrupted:
        raise
    except BaseException as exc:
        if store is not None and not isinstance(exc, KeyboardInterrupt):
            for rid in rids:
                store.fail_run(rid, f"{type(exc).__name__}: {exc}")
        raise
    outcomes: list[dict[str, Any] | BaseException] = []
    for i, (trainer, result, rid, out) in enumerate(
        zip(ensemble.trainers, results, rids, outs, strict=True)
    ):
        if i in ensemble.failed:
            error = ensemble.failed[i]
            if store is not None:
                store.fail_run(rid, f"{type(error).__name__}: {error}")
            outcomes.append(error)
            continue
        summary = make_summary(trainer, result, rid, eval_seconds)
        summary["timings"]["ensemble_size"] = ensemble.size
        if out is not None:
            write_run_files(out, trainer, result, summary)
        if store is not None:
            store.finish_run(rid, summary, result.per_length, summary["timings"])
        outcomes.append(summary)
    return outcomes


def ensemble_run(
    configs: Sequence[dict[str, Any]], out_dirs: Sequence[str | Path], resume: bool
) -> list[dict[str, Any] | BaseException]:
    """The ensemble counterpart of the sweep's per-run function: resolved config dicts and run
    directories in, one outcome per run out (its summary, or the exception that ended it)."""
    return train_ensemble(
        [TrainConfig.from_dict(c) for c in configs], out_dirs, resume=resume, progress=False
    )


# ----------------------------------------------------------------------------- strategy
#: Runs per ensemble on one GPU (best_strategy; reasoned, not measured: docs/performance.md).
GPU_ENSEMBLE_SIZE = 32


@dataclass(frozen=True)
class Strategy:
    """How to run many independent models on one device (docs/performance.md).

    kind: "ensemble": groups of up to ``ensemble_size`` compatible runs
          (:func:`group_compatible`), each group one :func:`train_ensemble` call with the given
          ``execution``, ``workers`` such calls at a time (one per GPU);
          "processes": ``workers`` processes, one run (a plain Trainer) each.
    threads: torch intra-op threads per process (0: torch's default).
    """

    kind: str
    workers: int
    threads: int
    ensemble_size: int
    execution: str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def best_strategy(device: str | torch.device = "auto") -> Strategy:
    """The default way to run many models of the paper's configuration on ``device``.

    CPU (measured, benchmarks/throughput.py, docs/performance.md): one process per core, one
    thread each, a plain Trainer per run. One model's step already keeps a core busy; batching
    models in one process buys nothing there (vmapped attention even loses the fused kernel),
    and intra-op threads scale worse than processes (badly so on a shared machine).

    CUDA (not measured: no GPU was available when this was written): vmapped ensembles of 32
    runs per GPU. A single small model leaves a GPU mostly idle (its step is a few hundred
    tiny kernels); K members batched under vmap do K times the work per kernel.
    """
    from randpos.seeding import resolve_device

    dev = resolve_device(str(device))
    if dev.type == "cuda":
        return Strategy(
            kind="ensemble",
            workers=max(1, torch.cuda.device_count()),
            threads=0,
            ensemble_size=GPU_ENSEMBLE_SIZE,
            execution="vmap",
            reason="GPU: batching members multiplies the work per kernel (unmeasured here)",
        )
    return Strategy(
        kind="processes",
        workers=max(1, os.cpu_count() or 1),
        threads=1,
        ensemble_size=1,
        execution=None,
        reason="CPU: processes x 1 thread measured fastest (docs/performance.md)",
    )


__all__ = [
    "EXECUTIONS",
    "GPU_ENSEMBLE_SIZE",
    "VARYING_FIELDS",
    "EnsembleTrainer",
    "Strategy",
    "best_strategy",
    "ensemble_key",
    "ensemble_run",
    "group_compatible",
    "train_ensemble",
]
