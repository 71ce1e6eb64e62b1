"""The 15 algorithmic tasks posed autoregressively, on a causal decoder (docs/decoder.md).

A task example (inputs x of n' tokens, targets y of k tokens) becomes one causal sequence

    x_1 .. x_n'  SEP  y_1 .. y_{k-1}          (T = n' + k tokens, the encoder's length)

where SEP is the encoder's blank id (the input vocabulary size V) and output symbol c is the
token V + 1 + c. The logits at SEP and at every y_t predict y_1 .. y_k: training is teacher
forcing with the encoder's loss (mean cross-entropy over the k output positions) and its masked
accuracy on the batch; evaluation is greedy decoding with the KV cache
(:class:`randpos.model.KVCache`): the prompt ``x SEP`` in one forward, then one token per step,
each generated symbol fed back. Scores are the encoder's per-token accuracies per length, on the
same evaluation sequences, so the two architectures compare number for number.

Positions: training draws one plan for the whole sequence, as the encoder does (a sorted random
subset of [0, L) when randomized). At evaluation the prompt takes the first n' + 1 positions of
the recorded mode's plan (``eval_positions``) and the k - 1 generated tokens are placed after it
by ``options.decode_positions`` (:func:`randpos.positions.decode_positions`: ``random`` draws
them once for the whole generation, ``spread`` spaces them evenly up to L - 1, ``arange``
continues by one). Plain models always use 0..T-1. The same model config as the encoder, with
``causal`` attention and an embedding of the V + 1 + C tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from randpos.core.fields import ConfigError
from randpos.encodings import get_encoding
from randpos.model import KVCache, Transformer
from randpos.positions import DECODE_MODES, PositionPlan, decode_positions
from randpos.workloads.base import Models
from randpos.workloads.encoder import EncoderWorkload
from randpos.workloads.evaluation import evaluate_length_batched
from randpos.workloads.registry import register_workload


@dataclasses.dataclass
class DecoderOptions:
    """The decoder workload's own options (``--set options.NAME=VALUE``): where generated tokens are
    placed under a randomized model, and whether evaluation decodes with the KV cache."""

    #: positions of the generated tokens after the prompt (randomized models): arange | spread
    #: | random
    decode_positions: str = "random"
    #: evaluate with the KV cache; False recomputes the whole prefix every step (the same
    #: numbers, slower: a check of the cache)
    kv_cache: bool = True


@register_workload("decoder")
class DecoderWorkload(EncoderWorkload):
    """Algorithmic tasks, causal decoder, teacher forcing, greedy decoding per length."""

    options = DecoderOptions

    @classmethod
    def causal(cls, config) -> bool:
        return True  # whatever the ``causal`` field says: a decoder is causal

    @classmethod
    def validate(cls, config) -> None:
        super().validate(config)
        opts = cls.parse_options(config.options)
        if opts.decode_positions not in DECODE_MODES:
            raise ConfigError(
                f"options.decode_positions={opts.decode_positions!r}: must be one of "
                f"{', '.join(DECODE_MODES)}"
            )
        if not get_encoding(config.pe).supports_cache:
            raise ConfigError(f"pe {config.pe!r} cannot decode with a KV cache: choose another pe")
        if config.positions.distances:
            raise ConfigError(
                "positions.reading 'distances' (the reference's distance tables) describes a "
                "whole sequence and cannot place tokens one at a time: use reading: positions "
                "(or randomize: positions) with the decoder"
            )

    # ----------------------------------------------------------------- the sequences
    @property
    def separator(self) -> int:
        """SEP, the token between the inputs and the outputs (the encoder's blank id)."""
        return self.task.input_vocab_size

    @property
    def output_offset(self) -> int:
        """Token id of output symbol 0."""
        return self.task.input_vocab_size + 1

    def inputs(self, sample) -> torch.Tensor:
        """Teacher-forced tokens (B, n' + k): x, SEP, y_1 .. y_{k-1}."""
        x, y = sample.inputs, sample.targets
        sep = torch.full((x.shape[0], 1), self.separator, dtype=x.dtype, device=x.device)
        return torch.cat([x, sep, y[:, :-1] + self.output_offset], dim=1)

    def build_model(self, generator: torch.Generator):
        base = self.config.model_config()
        vocab = self.output_offset + self.task.output_vocab_size
        config = dataclasses.replace(base, vocab_size=vocab, causal=True)
        return Transformer(config, generator=generator)

    # ----------------------------------------------------------------- evaluation
    def place_generated(
        self, plan: PositionPlan, k: int, generator: torch.Generator
    ) -> PositionPlan:
        """The evaluation plan with the k - 1 generated tokens placed after the prompt by
        ``decode_positions`` (randomized models; plain ones keep 0..T-1)."""
        if not self.config.randomized or k == 1:
            return plan
        positions = plan.positions
        prompt = positions[:, : positions.shape[1] - k + 1]  # (B, n' + 1)
        placed = decode_positions(
            prompt, k - 1, self.config.positions.max_position, self.opts.decode_positions, generator
        )
        return PositionPlan(torch.cat([prompt, placed.to(prompt.dtype)], dim=1))

    def generate(
        self, model, prompt: torch.Tensor, positions: torch.Tensor, k: int
    ) -> torch.Tensor:
        """Greedy decoding of k output symbols: logits (B, k, C), one row per step.

        ``model`` is called like the module in eval mode; ``prompt`` (B, n' + 1) ends with
        SEP; ``positions`` (B or 1, n' + k) covers the prompt and the k - 1 fed-back tokens."""
        P = prompt.shape[1]
        cache = KVCache(self.config.num_layers) if self.opts.kv_cache else None
        kwargs = {} if cache is None else {"cache": cache}
        logits = model(prompt, positions[:, :P], validate=False, **kwargs)[:, -1]  # (B, C)
        steps = [logits]
        tokens = prompt
        for t in range(1, k):
            fed = (logits.argmax(-1, keepdim=True) + self.output_offset).to(prompt.dtype)
            if cache is not None:
                logits = model(fed, positions[:, P + t - 1 : P + t], validate=False, cache=cache)
            else:
                tokens = torch.cat([tokens, fed], dim=1)
                logits = model(tokens, positions[:, : P + t], validate=False)
            logits = logits[:, -1]
            steps.append(logits)
        return torch.stack(steps, dim=1)

    def predict(self, model, sample, plan: PositionPlan) -> torch.Tensor:
        """Greedy generation of the k output symbols (B, k) after the prompt ``x SEP``, the
        generated tokens at the plan's positions (see :meth:`place_generated`)."""
        prompt = self.inputs(sample)[:, : sample.inputs.shape[1] + 1]
        return self.generate(model, prompt, plan.positions, sample.targets.shape[1]).argmax(-1)

    def evaluate_size(
        self, models: Models, copies: int, size: int, *, mode: str, device
    ) -> list[float]:
        self.check_eval_size(size)
        k = self.config.sequence_length(size) - self.task.input_length(size)

        def forward(tokens: torch.Tensor, plan: PositionPlan) -> torch.Tensor:
            # tokens are the encoder's inputs, x then k blanks: x and the first blank (= SEP)
            # are the prompt, the rest is generated
            prompt = tokens[:, : tokens.shape[1] - k + 1]
            return torch.stack(
                [self.generate(models.member(i), prompt, plan.positions, k) for i in range(copies)]
            )  # (copies, E', k, C)

        return evaluate_length_batched(
            forward,
            copies,
            self.config,
            self.task,
            size,
            mode=mode,
            device=device,
            replan=self.place_generated,
        )

    # ----------------------------------------------------------------- reporting
    def summary_fields(self) -> dict[str, Any]:
        fields = {"workload": self.name, **super().summary_fields()}
        fields["decode_positions"] = (
            self.opts.decode_positions if self.config.randomized else "arange"
        )
        return fields


__all__ = ["DecoderOptions", "DecoderWorkload"]
