"""The one training loop: K >= 1 members of one workload stepped as one computation.

Notation: K = members, B = batch, S = a member's size for the step (a length, a resolution).

Every run is a member of a :class:`Trainer`; an ordinary run is a trainer of one member. The
members' configs may differ only in ``seed`` and ``learning_rate``
(:func:`randpos.loop.identity.ensemble_key`): same workload, architecture and protocol, and the same
``curriculum_seed``, so every member trains on the same size at every step. What differs
between kinds of model is the :class:`randpos.workloads.Workload` (model, batches, loss,
evaluation); everything here is shared by all of them. Per member:

* the model is built by the workload from the member's ``init`` stream; the members' weights
  are stacked along a leading member axis (``torch.func.stack_module_state``) and each member's
  loss is the workload's loss through ``functional_call`` on its slice;
* data, positions and dropout come from the member's own streams (:attr:`Workload.streams`),
  drawn outside the member function, so the same tensors feed every execution;
* the loss of member i depends only on member i's weights, so the gradient of the summed losses
  is every member's own gradient;
* the update works on the stacked (K, ...) tensors in a fixed number of calls, whatever K:
  each member's global gradient norm (``clip_grad_norm_``'s own arithmetic: the per-tensor norms
  by ``torch._foreach_norm``, then their norm) scales that member's slice of the gradients, then
  Adam is elementwise, so one call of torch's ``torch.optim.adam.adam`` over the stacked tensors
  updates every member that shares a learning rate (one call per distinct learning rate: the
  functional Adam takes one). A trainer of one member computes exactly what ``torch.optim.Adam``
  after ``clip_grad_norm_`` computes on a plain module, bit for bit
  (tests/loop/test_optimizer.py); K members compute what K such runs do, to float rounding by
  contract (an element's rounding in torch's elementwise kernels may depend on whether it falls
  in a vector lane or the scalar tail), and bit for bit in every case tried on CPU.

How the members' forward and backward run is the ``execution`` (:data:`EXECUTIONS`): vmapped
(CUDA's default), one after another (CPU's default), or compiled. Each member keeps its module
and a ``torch.optim.Adam`` only as the holders of its state for checkpoints, which are written
in the single-run format, one per run directory.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.func import functional_call, stack_module_state, vmap
from torch.optim.adam import adam

import randpos
from randpos.core.fields import ConfigError
from randpos.core.seeding import make_generator, resolve_device
from randpos.loop.compile import autocast, check_precision, mark_dynamic, maybe_compile
from randpos.loop.identity import ENSEMBLE_VARYING_FIELDS, counted_fields
from randpos.loop.identity import ensemble_key as _ensemble_key
from randpos.loop.progress import ProgressReporter
from randpos.loop.runs import StopFlag, TrainingInterrupted, atomic_torch_save
from randpos.loop.trust import CHECKPOINT_VERSION, check_adam_state, check_weights
from randpos.workloads import Workload, build_workload
from randpos.workloads.config import TrainConfig
from randpos.workloads.evaluation import EvalResult

#: How the members run (docs/performance.md has the measurements):
#: "vmap": one vmapped eager pass for all members (batched kernels; the CUDA default);
#: "loop": the members one after another in eager mode, each member's backward right after its
#:   forward (the CPU default: vmapped attention must use explicit math on CPU, slower than the
#:   fused kernel a single model gets);
#: "compiled": "loop" with the member function compiled once, sizes symbolic;
#: "batched": "vmap" compiled as a whole, one graph per distinct size (evaluation then runs as
#:   "vmap", never compiled per size).
EXECUTIONS = ("vmap", "loop", "compiled", "batched")


def check_compatible(configs: Sequence[TrainConfig]) -> None:
    """``ConfigError`` unless the configs may train as members of one trainer."""
    if not configs:
        raise ConfigError("a trainer needs at least one config")
    if len({_ensemble_key(c) for c in configs}) > 1:
        first = configs[0].to_dict()
        differ = sorted(
            {
                k
                for c in configs[1:]
                for k, v in c.to_dict().items()
                if k not in ENSEMBLE_VARYING_FIELDS and v != first[k]
            }
        )
        raise ConfigError(
            "an ensemble's configs may differ only in seed and learning_rate; these differ: "
            + ", ".join(differ)
            + " (split them with randpos.loop.ensemble.group_compatible)"
        )


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
    """Gradients of ``loss`` w.r.t. ``inputs``; zeros for a weight the loss does not use."""
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads, strict=True)]


def _member_norms(grads: list[torch.Tensor]) -> torch.Tensor:
    """Each member's global 2-norm (K,) of stacked (K, ...) gradients, computed as
    ``clip_grad_norm_`` computes one model's: the norm of every tensor (``torch._foreach_norm``,
    here over every member's slice at once), then the norm of those norms."""
    slices = [g.unbind(0) for g in grads]  # per tensor, its K member slices
    norms = torch._foreach_norm([s[i] for i in range(grads[0].shape[0]) for s in slices], 2.0)
    # (K, P): each member's row reduced as clip_grad_norm_ reduces its P norms
    return torch.linalg.vector_norm(torch.stack(norms).view(-1, len(grads)), 2.0, dim=1)


class _AdamGroup:
    """Members that share a learning rate and per-tensor step counts: updated by one
    ``torch.optim.adam.adam`` call. ``index`` selects them on the stacked axis: a slice (a
    view) when they are consecutive, else their indices (gathered, then written back);
    ``steps`` holds one step count per parameter, as ``torch.optim.Adam`` keeps it."""

    def __init__(self, members: list[int], lr: float, steps: list[torch.Tensor], device) -> None:
        self.members = members
        self.lr = lr
        self.steps = steps
        consecutive = members == list(range(members[0], members[0] + len(members)))
        self.index: slice | torch.Tensor = (
            slice(members[0], members[-1] + 1)
            if consecutive
            else torch.tensor(members, device=device)
        )

    def take(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        return [t[self.index] for t in tensors]

    def put(self, tensors: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        """Write gathered values back (nothing to do for views)."""
        if isinstance(self.index, torch.Tensor):
            for t, v in zip(tensors, values, strict=True):
                t.index_copy_(0, self.index, v)


def _raise_recompile_limit(at_least: int) -> None:
    """The batched compiled mode compiles one graph per distinct size; torch's default limit
    (8) would silently fall back to eager after eight."""
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), at_least))
    for name in ("accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), 4 * at_least))


# ----------------------------------------------------------------------------- one member
class Member:
    """One run: its config, module and optimizer (the holders of its state), random streams,
    step, history (one record per log interval) and training time."""

    def __init__(self, config: TrainConfig, workload, device: torch.device) -> None:
        self.config = config
        self.model = workload.build_model(make_generator(config.seed, "init")).to(device)
        self.optimizer = torch.optim.Adam(
            self.model.parameters(),
            lr=config.learning_rate,
            betas=(config.adam_beta1, config.adam_beta2),
            eps=config.adam_eps,
        )
        self.generators = {s: make_generator(config.seed, s, device) for s in workload.streams}
        self.curriculum = make_generator(config.curriculum_seed, "curriculum", "cpu")
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.train_seconds = 0.0

    def state(self) -> dict[str, Any]:
        """The checkpoint: everything an exact resume needs."""
        return {
            "version": CHECKPOINT_VERSION,
            "randpos_version": randpos.__version__,
            "config": self.config.to_dict(),
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generators": {s: g.get_state() for s, g in self.generators.items()},
            "curriculum": self.curriculum.get_state(),
            "history": self.history,
            "train_seconds": self.train_seconds,
        }

    def load_state(self, state: dict[str, Any], source: str = "checkpoint") -> None:
        """Continue from ``state`` (:func:`randpos.loop.runs.load_checkpoint`: its structure is
        checked); ``ConfigError`` naming ``source`` unless it was written by this config's run."""
        # the fields that decide a run's id (fields added after the checkpoint was written
        # count only when they leave their defaults)
        saved, mine = counted_fields(state["config"]), counted_fields(self.config.to_dict())
        if saved != mine:
            diff = sorted(k for k in saved.keys() | mine.keys() if saved.get(k) != mine.get(k))
            raise ConfigError(
                f"{source} was written with a different config (fields: "
                f"{', '.join(diff)}); resume with the same settings or start a new --out"
            )
        check_weights(self.model, state["model"], source, "model weights")
        check_adam_state(state["optimizer"], list(self.model.parameters()), source)
        missing = [s for s in self.generators if s not in state["generators"]]
        if missing:
            raise ConfigError(f"{source}: no state of the random stream(s) {', '.join(missing)}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        try:
            for s, g in self.generators.items():
                g.set_state(state["generators"][s])
            self.curriculum.set_state(state["curriculum"])
        except RuntimeError as exc:
            message = str(exc).strip().splitlines()[0]
            raise ConfigError(
                f"{source}: a random stream's state does not fit ({message})"
            ) from None
        self.step = state["step"]
        self.history = list(state["history"])
        self.train_seconds = state["train_seconds"]

    def save_checkpoint(self, path: Path) -> None:
        """Write :meth:`state` to ``path`` atomically."""
        atomic_torch_save(self.state(), path)


# ----------------------------------------------------------------------------- the trainer
class Trainer:
    """K >= 1 compatible runs of one workload, stepped together (a single config: K = 1)."""

    def __init__(
        self,
        configs: TrainConfig | Sequence[TrainConfig],
        *,
        workload: Workload | None = None,
        compile: bool | None = None,
        execution: str | None = None,
        cuda_graphs: bool = False,
        attention: str | None = None,
        backend: str | Callable = "inductor",
    ) -> None:
        """``workload`` is the members' workload, built for ``configs[0]`` (by default built
        here: :func:`randpos.workloads.build_workload`). ``execution`` is one of
        :data:`EXECUTIONS`; by default "compiled" when ``compile`` (default: the configs' field)
        is true, else "vmap" on CUDA and "loop" on CPU.
        ``backend`` is the ``torch.compile`` backend (tests pass a
        :class:`randpos.loop.compile.CompileCounter`). ``attention`` overrides the attention backend
        of models that have one: by default "math" for vmapped execution on CPU (torch's fused
        CPU kernel has no vmap rule and would loop over the members), else the configs' choice.
        Both backends give the same numbers."""
        configs = [configs] if isinstance(configs, TrainConfig) else list(configs)
        for config in configs:
            config.validate()
        check_compatible(configs)
        self.configs = configs
        self.config = cfg = configs[0]  # the shared settings
        self.device = resolve_device(cfg.device)
        try:
            check_precision(cfg.precision, self.device)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.workload = workload if workload is not None else build_workload(cfg)
        self.members = [Member(c, self.workload, self.device) for c in configs]
        self.size = len(configs)
        self.step = 0
        self.train_seconds = 0.0
        self.failed: dict[int, FloatingPointError] = {}  # member index -> why it stopped

        self.execution = _execution(compile, execution, cfg, self.device)
        self.compiled = self.execution in ("compiled", "batched")
        # CUDA graphs replay into static output buffers, overwritten by the next replay: the
        # member loop then marks a step per member and copies out what it keeps.
        self._graphed = cuda_graphs and self.compiled and self.device.type == "cuda"
        self.eval_execution = {"batched": "vmap"}.get(self.execution, self.execution)
        if self.eval_execution == "vmap" and self.device.type == "cpu":
            self.eval_execution = "loop"  # see EXECUTIONS: vmapped attention is slow on CPU

        # Stateless copies on the meta device: functional_call supplies the stacked weights.
        first = self.members[0].model
        self._train_base = copy.deepcopy(first).to("meta").train()
        self._eval_base = copy.deepcopy(first).to("meta").eval()
        for base, vmapped in (
            (self._train_base, self.execution in ("vmap", "batched")),
            (self._eval_base, self.eval_execution == "vmap"),
        ):
            kernel = attention or ("math" if vmapped and self.device.type == "cpu" else None)
            if kernel:
                for module in base.modules():
                    if hasattr(module, "backend"):  # attention modules
                        module.backend = kernel
        self._buffers = dict(first.named_buffers())  # constants shared by the members
        self.names = [name for name, _ in first.named_parameters()]
        self._load_from_members()

        options = dict(device=self.device, cuda_graphs=cuda_graphs, backend=backend)
        looped = self.execution == "compiled"
        self._member_loss_fn = maybe_compile(self._member_loss, looped, **options)
        self._member_outputs_fn = maybe_compile(self._member_outputs, looped, **options)
        self._forward = self._forward_batched
        if self.execution == "batched":
            self._forward = maybe_compile(self._forward_batched, True, **options)
            _raise_recompile_limit(4 * cfg.max_train_length)
        looped_grads = self.execution in ("loop", "compiled")
        self._grads = self._forward_looped_grads if looped_grads else self._forward_batched_grads
        self._models = (
            self._models_batched if self.eval_execution == "vmap" else self._models_looped
        )

    # --------------------------------------------------------------------- K = 1 conveniences
    @property
    def member(self) -> Member:
        """The only member of a single run (``ValueError`` for K > 1)."""
        if self.size != 1:
            raise ValueError(f"this trainer has {self.size} members; use .members")
        return self.members[0]

    @property
    def history(self) -> list[dict[str, Any]]:
        """The log records of a single-member trainer (loss, metric, train seconds per ``log_every``
        steps)."""
        return self.member.history

    @property
    def model(self) -> torch.nn.Module:
        """A single run's model, with the current weights."""
        self.sync()
        return self.member.model

    # --------------------------------------------------------------------- stacked state
    def _load_from_members(self) -> None:
        """Stack the members' weights and Adam state into (K, ...) tensors."""
        params, _ = stack_module_state([m.model for m in self.members])
        self.params = {n: params[n].detach().clone().requires_grad_(True) for n in self.names}
        self.exp_avg = {n: torch.zeros_like(p) for n, p in self.params.items()}
        self.exp_avg_sq = {n: torch.zeros_like(p) for n, p in self.params.items()}
        steps = {m.step for m in self.members}
        if len(steps) > 1:
            raise ConfigError(
                f"ensemble members are at different steps {sorted(steps)}; resume them apart"
            )
        self.step = steps.pop()
        self.train_seconds = max(m.train_seconds for m in self.members)
        # per member and parameter, the step count as torch.optim.Adam keeps it
        adam_steps = [[0.0 for _ in self.names] for _ in self.members]
        for i, member in enumerate(self.members):
            state = member.optimizer.state
            for j, (name, p) in enumerate(member.model.named_parameters()):
                if p in state and "exp_avg" in state[p]:
                    self.exp_avg[name][i] = state[p]["exp_avg"]
                    self.exp_avg_sq[name][i] = state[p]["exp_avg_sq"]
                    adam_steps[i][j] = float(state[p]["step"])
        # members of one learning rate (and, from any checkpoint, the same step counts) share
        # one Adam call; steps stay on the CPU, as torch.optim.Adam keeps them
        groups: dict[tuple, list[int]] = {}
        for i, member in enumerate(self.members):
            key = (member.config.learning_rate, tuple(adam_steps[i]))
            groups.setdefault(key, []).append(i)
        self._adam_groups = [
            _AdamGroup(members, lr, [torch.tensor(s) for s in counts], self.device)
            for (lr, counts), members in groups.items()
        ]

    def sync(self) -> None:
        """Write the stacked weights, Adam state, step and time back into each member."""
        steps = {i: group.steps for group in self._adam_groups for i in group.members}
        with torch.no_grad():
            for i, member in enumerate(self.members):
                opt = member.optimizer
                for j, (name, p) in enumerate(member.model.named_parameters()):
                    p.copy_(self.params[name][i])
                    if self.step:
                        opt.state[p] = {
                            "step": steps[i][j].clone(),
                            "exp_avg": self.exp_avg[name][i].clone(),
                            "exp_avg_sq": self.exp_avg_sq[name][i].clone(),
                        }
                member.step = self.step
                member.train_seconds = self.train_seconds

    def models(self) -> list[torch.nn.Module]:
        """The K models as plain modules (current weights)."""
        self.sync()
        return [m.model for m in self.members]

    def load_states(
        self,
        states: Sequence[dict[str, Any] | None],
        sources: Sequence[Any] | None = None,
    ) -> None:
        """Resume from single-run checkpoints (``None``: that member starts fresh); ``sources``
        (the checkpoints' paths) name them in errors."""
        sources = list(sources) if sources is not None else ["checkpoint"] * self.size
        for member, state, source in zip(self.members, states, sources, strict=True):
            if state is not None:
                member.load_state(state, str(source))
        self._load_from_members()

    def load_weights(self, weights: Sequence[dict[str, torch.Tensor] | None]) -> None:
        """Set members' weights from state dicts (``None``: keep that member's)."""
        for member, state in zip(self.members, weights, strict=True):
            if state is not None:
                member.model.load_state_dict(state)
        self._load_from_members()

    def save_checkpoints(self, paths: Sequence[Path | None]) -> None:
        """Write each live member's checkpoint to its path (None: no checkpoint for that member)."""
        self.sync()
        for i, (member, path) in enumerate(zip(self.members, paths, strict=True)):
            if path is not None and i not in self.failed:
                member.save_checkpoint(path)

    # --------------------------------------------------------------------- member functions
    def _member_loss(
        self, p: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One member's loss () and auxiliary output, from its weights and batch."""

        def model(*args, **kwargs):
            return functional_call(self._train_base, (p, self._buffers), args, kwargs)

        return self.workload.loss(model, batch)

    def _member_outputs(self, p: dict[str, torch.Tensor], args: tuple, kwargs: dict) -> Any:
        """One member's eval-mode outputs on ``args``/``kwargs``."""
        return functional_call(self._eval_base, (p, self._buffers), args, kwargs)

    def _forward_batched(self, params, batch):
        """Per-member losses (K,) and auxiliary outputs (K, ...): one vmapped pass."""
        with autocast(self.device, self.config.precision):
            return vmap(self._member_loss)(params, batch)

    def _forward_batched_grads(self, params, batch):
        """Losses (K,), outputs (K, ...) and the stacked gradients (K, ...) per parameter:
        member i's loss depends only on its own slice, so d(sum of losses) is every member's
        own gradient; the backward runs outside vmap, on the flattened batch."""
        losses, aux = self._forward(params, batch)
        return losses, aux, _grad(losses.sum(), [params[k] for k in self.names])

    def _forward_looped_grads(self, params, batch):
        """Same contract, member by member on views of the stacked weights (compiled: one
        graph with symbolic sizes serves every member). Each member's backward runs right
        after its forward, so only one member's activations are alive at a time."""
        losses, aux, grads = [], [], []
        dynamic = self.workload.dynamic_axes
        with autocast(self.device, self.config.precision):
            for i in range(self.size):
                member = {key: t[i] for key, t in batch.items()}
                if self.compiled:
                    for key, t in member.items():
                        mark_dynamic(t, *dynamic.get(key, ()))
                views = [params[k][i] for k in self.names]  # gradients w.r.t. these
                self._mark_graph_step()
                loss, out = self._member_loss_fn(dict(zip(self.names, views, strict=True)), member)
                grads.append([self._kept(g) for g in _grad(loss, views)])
                losses.append(self._kept(loss.detach()))
                aux.append(self._kept(out.detach()))
        if self.size == 1:  # a view: nothing to copy
            stacked = [g.unsqueeze(0) for g in grads[0]]
        else:
            stacked = [torch.stack(g) for g in zip(*grads, strict=True)]
        return torch.stack(losses), torch.stack(aux), stacked

    def _models_batched(self, params, args, kwargs) -> torch.Tensor:
        """Every member's eval outputs (K, ...) on the same inputs, one vmapped pass."""
        with autocast(self.device, self.config.precision):
            return vmap(lambda p: self._member_outputs(p, args, kwargs))(params)

    def _models_looped(self, params, args, kwargs) -> torch.Tensor:
        """Same contract as :meth:`_models_batched`, member by member."""
        if self.compiled:
            for t in (*args, *kwargs.values()):
                if isinstance(t, torch.Tensor):
                    mark_dynamic(t, *range(t.dim()))  # chunk size and size vary
        outputs = []
        with autocast(self.device, self.config.precision):
            for i in range(self.size):
                self._mark_graph_step()
                weights = {n: p[i] for n, p in params.items()}
                outputs.append(self._kept(self._member_outputs_fn(weights, args, kwargs)))
        return torch.stack(outputs)

    def _mark_graph_step(self) -> None:
        if self._graphed:
            torch.compiler.cudagraph_mark_step_begin()

    def _kept(self, t: torch.Tensor) -> torch.Tensor:
        """``t``, copied out of the CUDA graph's static buffer when graphs are replayed."""
        return t.clone() if self._graphed else t

    # --------------------------------------------------------------------- the update
    def _update(self, grads: list[torch.Tensor]) -> None:
        """Clip each member's slice of the stacked gradients (K, ...) to its global norm, then
        one ``torch.optim.adam.adam`` call per learning rate over the stacked tensors: a fixed
        number of kernels per step, whatever K (the arithmetic of ``clip_grad_norm_`` and
        ``torch.optim.Adam``, with its default implementation for the device)."""
        cfg = self.config
        coef = torch.clamp(cfg.grad_clip / (_member_norms(grads) + 1e-6), max=1.0)  # (K,)
        for g in grads:
            g.mul_(coef.view(-1, *[1] * (g.dim() - 1)))
        params = [self.params[n] for n in self.names]
        exp_avg = [self.exp_avg[n] for n in self.names]
        exp_avg_sq = [self.exp_avg_sq[n] for n in self.names]
        for group in self._adam_groups:
            mine = [group.take(t) for t in (params, exp_avg, exp_avg_sq)]
            adam(
                mine[0],
                group.take(grads),
                mine[1],
                mine[2],
                [],
                group.steps,
                amsgrad=False,
                beta1=cfg.adam_beta1,
                beta2=cfg.adam_beta2,
                lr=group.lr,
                weight_decay=0.0,
                eps=cfg.adam_eps,
                maximize=False,
            )
            for stacked, values in zip((params, exp_avg, exp_avg_sq), mine, strict=True):
                group.put(stacked, values)

    # --------------------------------------------------------------------- one step
    def draw_batch(self) -> tuple[int, dict[str, torch.Tensor]]:
        """One step's size and stacked batch (K, ...), each member's from its own streams."""
        sizes = {self.workload.next_size(m.curriculum) for m in self.members}
        if len(sizes) != 1:  # cannot happen for compatible configs; guards the invariant
            raise RuntimeError(f"members drew different sizes {sorted(sizes)}")
        size = sizes.pop()
        batches = [
            self.workload.draw_batch(m.model, size, m.generators, self.device) for m in self.members
        ]
        return size, {key: torch.stack([b[key] for b in batches]) for key in batches[0]}

    def train_step(self) -> tuple[list[float], list[float], int]:
        """One step of every member; returns per-member losses and batch metrics, and the size."""
        size, batch = self.draw_batch()
        losses, aux, grads = self._grads(self.params, batch)
        self.step += 1
        with torch.no_grad():
            self._update(grads)
            metric = self.workload.train_metric(aux, batch)
            loss_list, metric_list = torch.stack([losses.float(), metric.float()]).tolist()
        return loss_list, metric_list, size

    # --------------------------------------------------------------------- loops
    def fit(
        self,
        *,
        checkpoints: Sequence[Path | None] | Path | None = None,
        stop: StopFlag | None = None,
        progress: bool = True,
        label: str = "train",
        on_log: Callable[[int, dict[str, Any]], None] | None = None,
    ) -> None:
        """Train every member up to ``steps``; ``on_log(member_index, record)`` per log
        interval; ``checkpoints``: a path per member (or one path for a single run).

        A member whose loss becomes non-finite is marked failed (``self.failed``) and leaves
        the history; the others go on unaffected. A set ``stop`` flag ends training at the
        next step boundary with every checkpoint on disk (``TrainingInterrupted``)."""
        cfg = self.config
        stop = stop if stop is not None else StopFlag()
        if isinstance(checkpoints, (str, Path)):
            checkpoints = [Path(checkpoints)]
        paths = list(checkpoints) if checkpoints is not None else [None] * self.size
        windows: list[list[tuple[float, float]]] = [[] for _ in range(self.size)]
        label = label if self.size == 1 else f"{label} x{self.size}"
        with ProgressReporter(
            label, cfg.steps, self.step, enabled=progress, every=cfg.log_every
        ) as bar:
            while self.step < cfg.steps and len(self.failed) < self.size:
                started = time.perf_counter()
                losses, metrics, size = self.train_step()
                self.train_seconds += time.perf_counter() - started
                for i, (loss, metric) in enumerate(zip(losses, metrics, strict=True)):
                    if i in self.failed:
                        continue
                    if not math.isfinite(loss):
                        self.failed[i] = FloatingPointError(
                            f"loss became {loss} at step {self.step}"
                        )
                        continue
                    windows[i].append((loss, metric))
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    self._log(windows, on_log, bar, size)
                if any(paths) and (self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps):
                    self.save_checkpoints(paths)
                if stop:
                    if any(paths):
                        self.save_checkpoints(paths)
                    raise TrainingInterrupted(self.step, next((p for p in paths if p), None))
        self.sync()

    def _log(self, windows, on_log, bar, size: int) -> None:
        metric = self.workload.metric
        for i, member in enumerate(self.members):
            if i in self.failed or not windows[i]:
                continue
            record = {
                "step": self.step,
                "loss": sum(w[0] for w in windows[i]) / len(windows[i]),
                metric: sum(w[1] for w in windows[i]) / len(windows[i]),
                "train_seconds": round(self.train_seconds, 3),
            }
            member.history.append(record)
            windows[i].clear()
            if on_log is not None:
                on_log(i, record)
        alive = [m.history[-1] for i, m in enumerate(self.members) if i not in self.failed]
        loss = sum(r["loss"] for r in alive) / max(1, len(alive))
        if self.size == 1:
            text = f"loss {loss:.4f} acc {alive[0][metric]:.3f}" if alive else ""
        else:
            text = f"mean loss {loss:.4f}"
        text += f" n={size}"  # the size of the step (a length, a resolution)
        bar.update(self.step, text + (f" failed {len(self.failed)}" if self.failed else ""))

    def evaluate(
        self,
        *,
        progress: bool = True,
        mode: str | None = None,
        lengths: Iterable[int] | None = None,
        stop: StopFlag | None = None,
    ) -> list[EvalResult]:
        """Per-member :class:`EvalResult` s over ``lengths`` (the workload's sizes by
        default): all members scored at once on the data a single evaluation uses."""
        cfg = self.config
        mode = mode or cfg.positions.eval
        sizes = list(lengths) if lengths is not None else self.workload.eval_sizes()
        per_size: list[dict[int, float]] = [{} for _ in range(self.size)]
        extras: list[dict[int, dict[str, float]]] = [{} for _ in range(self.size)]
        metric = self.workload.metric

        def models(*args, **kwargs) -> torch.Tensor:
            return self._models(self.params, args, kwargs)

        def member(i: int):
            """Member i's eval-mode model alone (not compiled): for inputs that differ between
            members, such as each member's own generated tokens and KV cache."""
            weights = {n: p[i] for n, p in self.params.items()}

            def model(*args, **kwargs) -> Any:
                with autocast(self.device, self.config.precision):
                    return self._member_outputs(weights, args, kwargs)

            return model

        models.member = member

        total = len(sizes)
        with (
            ProgressReporter("eval", total, enabled=progress, every=max(1, total // 10)) as bar,
            torch.inference_mode(),
        ):
            for done, n in enumerate(sizes, 1):
                values = self.workload.evaluate_size(
                    models, self.size, n, mode=mode, device=self.device
                )
                for i, value in enumerate(values):
                    if isinstance(value, dict):  # the metric and further ones at this size
                        extras[i][n] = {k: float(v) for k, v in value.items()}
                        value = value[metric]
                    per_size[i][n] = float(value)
                mean = sum(per_size[i][n] for i in range(len(values))) / len(values)
                bar.update(done, f"{self.workload.size_name} {n}: mean {mean:.3f}")
                if stop:  # the final checkpoint is on disk; a resume re-runs evaluation
                    raise TrainingInterrupted(self.step, None)
        trained = self.workload.trained_sizes()
        return [
            EvalResult(p, cfg.max_train_length, trained, e)
            for p, e in zip(per_size, extras, strict=True)
        ]


__all__ = ["CHECKPOINT_VERSION", "EXECUTIONS", "Member", "Trainer", "check_compatible"]
