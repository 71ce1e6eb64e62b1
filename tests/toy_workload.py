"""A workload defined outside the package, in a few lines: the proof that a new kind of model
needs no loop of its own (tests/workloads/test_workload_interface.py, docs/workloads.md).

Regression: from n numbers drawn uniformly from [0, 1), predict their mean. The model is a tiny
per-element MLP averaged over the sequence; the metric is the share of predictions within
``tolerance`` of the target. Configs name it ``workload: "toy_workload:MeanRegression"``.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from randpos.core.seeding import make_generator
from randpos.workloads import Workload


@dataclass
class MeanOptions:
    hidden: int = 8
    tolerance: float = 0.05


class MeanNet(nn.Module):
    def __init__(self, hidden: int, generator: torch.Generator) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(1, hidden, generator=generator))
        self.b1 = nn.Parameter(torch.zeros(hidden))
        self.w2 = nn.Parameter(torch.randn(hidden, 1, generator=generator) / hidden**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, n) -> (B,)
        return (torch.tanh(x.unsqueeze(-1) @ self.w1 + self.b1) @ self.w2).squeeze(-1).mean(-1)


class MeanRegression(Workload):
    options = MeanOptions
    metric = "accuracy"
    streams = ("data",)
    dynamic_axes = {"x": (1,)}

    def build_model(self, generator):
        return MeanNet(self.opts.hidden, generator)

    def draw_batch(self, model, size, generators, device):
        x = torch.rand(self.config.batch_size, size, generator=generators["data"], device=device)
        return {"x": x, "y": x.mean(1)}

    def loss(self, model, batch):
        prediction = model(batch["x"])
        return F.mse_loss(prediction, batch["y"]), prediction

    def train_metric(self, aux, batch):
        return ((aux - batch["y"]).abs() < self.opts.tolerance).float().mean(1)

    def evaluate_size(self, models, copies, size, *, mode, device):
        g = make_generator(self.config.eval_seed, f"mean/{size}", device)
        x = torch.rand(self.config.eval_batch_size, size, generator=g, device=device)
        error = (models(x) - x.mean(1)).abs()  # (copies, E)
        return (error < self.opts.tolerance).float().mean(1).tolist()
