"""A ViT classifier and a small DiT on patch grids, with 2D positions fed in as data.

Notation: B = batch, C = channels, H x W = image size, p = patch, h = H / p, w = W / p (the
grid, not necessarily square), N = h * w patch tokens in row-major order, P = p * p * C (one
flattened patch), D = width, L = ``max_position`` (per axis).

Positions are data (docs/design.md §1): ``positions`` (B or 1, N, 2) give each patch token its (y,
x) grid position, integer (or float for encodings that take them), each axis in [0, L). The
positional encoding comes from the project's registry and enters only through its hooks:
``embed`` adds to the patch tokens (absolute encodings: DiT's 2D sin-cos is one of them),
``rotate`` acts inside :class:`randpos.model.MultiHeadAttention` (the project's one attention
implementation). The models never ask which encoding they run.

:class:`DiT` follows facebookresearch/DiT ``models.py`` (docs: references/images.md B.1) with
these deliberate deviations:

* velocity prediction only (``learn_sigma`` is not supported: the output has C channels, for the
  flow-matching objective of :mod:`randpos.images.flow`);
* the timestep embedder is fed ``1000 * t`` for t in [0, 1] (so its frequencies are used as
  DiT's integer steps 0..999 use them);
* attention projections are bias-free (the project's ``MultiHeadAttention``) where timm's has
  ``qkv_bias=True``, and q, k, v are three (D, D) matrices, each xavier-uniform, where timm
  initialises one (3D, D) matrix (a slightly larger xavier bound);
* ``unpatchify`` takes h and w explicitly (DiT's assumes a square grid);
* the label dropout of classifier-free guidance is the caller's: the model never draws
  randomness, it only owns the extra null-class row (index ``num_classes``);
* optional micro-conditioning (``cond_dim`` > 0, SDXL-style, ours): each scalar of ``cond``
  (B, cond_dim) -> 64-dim sinusoid of ``1000 * value`` -> concat -> Linear -> SiLU -> Linear(D),
  added to c like the timestep and label embeddings.

Randomness is explicit (docs/design.md §4): construction draws nothing;
``reset_parameters(generator)`` initialises every parameter from ``generator`` (None: a fixed
seed-0 generator, never torch's global RNG). Forward passes have no data-dependent Python control
flow (the input range checks sit behind ``validate=True``), so they run under
``torch.func.functional_call`` and vmap with ``validate=False``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from randpos.encodings import build_encoding, get_encoding
from randpos.encodings.base import EncodingShape, PositionalEncoding
from randpos.model.attention import ATTENTION_BACKENDS, DEFAULT_BACKEND, MultiHeadAttention
from randpos.model.layers import Linear

#: values of ``VisionConfig.attn_logit_scale``
ATTN_LOGIT_SCALES = ("none", "log_ratio")


@dataclass
class VisionConfig:
    """Architecture of :class:`ViT` and :class:`DiT` (both read the same fields).

    ``max_position`` is L per axis: positions must lie in [0, L) on both axes (the largest grid
    side to be evaluated when randomized). ``pe_options`` are the encoding's own parameters
    (``randpos.encodings``; rope-vit's axial RoPE uses ``theta`` 100).
    ``attn_logit_scale="log_ratio"`` multiplies every attention logit by log N / log
    ``train_tokens`` when a grid has N > ``train_tokens`` tokens (1 otherwise).
    ``cond_dim`` > 0 gives the DiT a micro-conditioning input of that many scalars.
    """

    channels: int = 1
    patch: int = 2
    width: int = 64
    depth: int = 4
    num_heads: int = 4
    ff_ratio: int = 4
    num_classes: int = 10
    pe: str = "none"
    max_position: int = 16
    pe_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    attn_logit_scale: str = "none"  # "none" | "log_ratio"
    train_tokens: int = 64  # N_train for log_ratio
    attention: str = DEFAULT_BACKEND  # one of ATTENTION_BACKENDS
    cond_dim: int = 0  # DiT micro-conditioning scalars; 0: none

    @property
    def head_width(self) -> int:
        """The width of one attention head, ``width // num_heads``."""
        return self.width // self.num_heads

    def to_dict(self) -> dict:
        """The config as a plain dict."""
        return asdict(self)

    def encoding_shape(self, num_layers: int | None = None) -> EncodingShape:
        """What the positional encoding knows of this model: bidirectional, ``num_layers``
        layers (default ``depth``)."""
        return EncodingShape(
            width=self.width,
            num_heads=self.num_heads,
            num_layers=self.depth if num_layers is None else num_layers,
            max_position=self.max_position,
        )

    def build_encoding(self, num_layers: int | None = None) -> PositionalEncoding:
        """The positional encoding this config names, built for ``num_layers`` layers (default: the
        config's)."""
        return build_encoding(self.pe, self.encoding_shape(num_layers), self.pe_options)

    def check(self) -> None:
        """``ValueError`` naming the field, its value and what is allowed."""

        def fail(field: str, allowed: str) -> None:
            raise ValueError(f"VisionConfig.{field}={getattr(self, field)!r}: must be {allowed}")

        for field in (
            "channels",
            "patch",
            "width",
            "depth",
            "num_heads",
            "ff_ratio",
            "num_classes",
            "max_position",
            "train_tokens",
        ):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                fail(field, "a positive integer")
        if self.train_tokens < 2:
            fail("train_tokens", "at least 2 (log_ratio divides by log train_tokens)")
        cond_dim = self.cond_dim
        if not isinstance(cond_dim, int) or isinstance(cond_dim, bool) or cond_dim < 0:
            fail("cond_dim", "a non-negative integer (0: no micro-conditioning)")
        if self.width % self.num_heads:
            fail("width", f"divisible by num_heads={self.num_heads}")
        if self.head_width % 2:
            fail("num_heads", "such that width // num_heads is even (rotary pairs dimensions)")
        if self.attention not in ATTENTION_BACKENDS:
            fail("attention", f"one of {', '.join(ATTENTION_BACKENDS)}")
        if self.attn_logit_scale not in ATTN_LOGIT_SCALES:
            fail("attn_logit_scale", f"one of {', '.join(ATTN_LOGIT_SCALES)}")
        cls = get_encoding(self.pe)  # raises the registry's error, listing the valid names
        if cls.causal_only:
            fail("pe", "an encoding for bidirectional attention (this one is causal only)")
        if cls.uses_distances:
            fail("pe", "an encoding of positions (this one reads 1D distance tables)")
        self.build_encoding()  # the encoding checks its own options (ValueError naming pe.FIELD)


def attention_logit_scale(config: VisionConfig, num_tokens: int) -> float:
    """The factor on every attention logit for a grid of ``num_tokens`` patches: 1 unless
    ``attn_logit_scale="log_ratio"`` and N > ``train_tokens``, then log N / log N_train.
    A python float from shapes (no device sync)."""
    if config.attn_logit_scale == "log_ratio" and num_tokens > config.train_tokens:
        return math.log(num_tokens) / math.log(config.train_tokens)
    return 1.0


# --- patches ----------------------------------------------------------------------------------


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """Images (B, C, H, W) -> patch tokens (B, N, p*p*C), N = (H/p)(W/p) in row-major order;
    each token is its patch flattened in (row, column, channel) order, DiT's unpatchify layout,
    so that :func:`unpatchify` is the exact inverse."""
    if x.dim() != 4:
        raise ValueError(f"images must have shape (B, C, H, W), got {tuple(x.shape)}")
    B, C, H, W = x.shape
    for side in (H, W):
        if side % p or side == 0:
            raise ValueError(f"images of side {side} are not divisible by patch={p}")
    h, w = H // p, W // p
    x = x.reshape(B, C, h, p, w, p)  # (B, C, h, p, w, p)
    x = torch.einsum("bchpwq->bhwpqc", x)  # (B, h, w, p, p, C)
    return x.reshape(B, h * w, p * p * C)  # (B, N, P)


def unpatchify(tokens: torch.Tensor, h: int, w: int, p: int, C: int) -> torch.Tensor:
    """Patch tokens (B, N = h*w, p*p*C) -> images (B, C, h*p, w*p); the inverse of
    :func:`patchify` for any grid h x w (DiT's version assumes h = w)."""
    if tokens.dim() != 3 or tokens.shape[1:] != (h * w, p * p * C):
        raise ValueError(
            f"tokens must have shape (B, h*w={h * w}, p*p*C={p * p * C}), got {tuple(tokens.shape)}"
        )
    B = tokens.shape[0]
    x = tokens.reshape(B, h, w, p, p, C)  # (B, h, w, p, p, C)
    x = torch.einsum("nhwpqc->nchpwq", x)  # (B, C, h, p, w, p)
    return x.reshape(B, C, h * p, w * p)


# --- initialisation (draws on the generator's device, then copies) ----------------------------


def _default_generator(generator: torch.Generator | None) -> torch.Generator:
    return torch.Generator().manual_seed(0) if generator is None else generator


@torch.no_grad()
def _uniform_(tensor: torch.Tensor, bound: float, generator: torch.Generator) -> None:
    draw = torch.empty(tensor.shape, dtype=tensor.dtype, device=generator.device)
    tensor.copy_(draw.uniform_(-bound, bound, generator=generator))


@torch.no_grad()
def _normal_(tensor: torch.Tensor, std: float, generator: torch.Generator) -> None:
    draw = torch.empty(tensor.shape, dtype=tensor.dtype, device=generator.device)
    tensor.copy_(draw.normal_(0.0, std, generator=generator))


def xavier_uniform_(linear: nn.Linear, generator: torch.Generator) -> None:
    """Xavier-uniform weight (bound sqrt(6 / (fan_in + fan_out))), zero bias."""
    fan_out, fan_in = linear.weight.shape
    _uniform_(linear.weight, math.sqrt(6.0 / (fan_in + fan_out)), generator)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


def zero_(linear: nn.Linear) -> None:
    nn.init.zeros_(linear.weight)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


def _linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


# --- shared pieces ----------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    """Linear on flattened patches (B, N, P) -> (B, N, D): timm's ``PatchEmbed``
    (Conv2d(C, D, k=p, stride=p)) with the kernel flattened in (row, column, channel) order."""

    def __init__(self, patch: int, channels: int, width: int) -> None:
        super().__init__()
        self.patch = patch
        self.proj = Linear(patch * patch * channels, width)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(patchify(images, self.patch))  # (B, N, D)


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int, approximate: str = "none") -> None:
        super().__init__()
        self.fc1 = Linear(width, hidden)
        self.act = nn.GELU(approximate=approximate)
        self.fc2 = Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _is_integer(t: torch.Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


def check_images_and_positions(
    model: nn.Module, images: torch.Tensor, positions: torch.Tensor
) -> tuple[int, int]:
    """Shape and dtype checks (free, always done); returns the grid (h, w)."""
    config: VisionConfig = model.config
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a tensor of shape (B, C, H, W), got {got}")
    B, C, H, W = images.shape
    if C != config.channels:
        raise ValueError(f"images must have channels={config.channels}, got {C}")
    p = config.patch
    for side in (H, W):
        if side % p or side == 0:
            raise ValueError(f"images of side {side} are not divisible by patch={p}")
    h, w = H // p, W // p
    N = h * w
    if (
        not isinstance(positions, torch.Tensor)
        or positions.dim() != 3
        or positions.shape[0] not in (1, B)
        or positions.shape[1:] != (N, 2)
    ):
        got = tuple(positions.shape) if isinstance(positions, torch.Tensor) else positions
        raise ValueError(
            f"positions must have shape (B={B} or 1, N={N}, 2) for a {h}x{w} grid of patches"
            f" (last axis (y, x)), got {got}"
        )
    pe: PositionalEncoding = model.pe
    if not _is_integer(positions) and not (positions.is_floating_point() and pe.float_positions):
        raise ValueError(
            f"positions must be an integer tensor, got {positions.dtype} (float positions need an"
            f" encoding that takes them; pe {config.pe!r} does not)"
        )
    return h, w


def _check_ranges(config: VisionConfig, positions: torch.Tensor, labels=None) -> None:
    """Range checks (one device sync): positions in [0, L) per axis, labels in
    [0, num_classes] (the last being the null class)."""
    values = [positions.min(), positions.max()]
    if labels is not None:
        values += [labels.min(), labels.max()]
    lo_p, hi_p, *lab = torch.stack([v.to(torch.float64) for v in values]).tolist()
    limit = config.max_position
    if lo_p < 0 or hi_p >= limit:
        raise ValueError(
            f"positions must lie in [0, max_position={limit}) on both axes, got values in"
            f" [{lo_p:g}, {hi_p:g}]; positions are never clamped: raise max_position"
        )
    if labels is not None and (lab[0] < 0 or lab[1] > config.num_classes):
        raise ValueError(
            f"y must lie in [0, num_classes={config.num_classes}] (the last is the null class),"
            f" got values in [{lab[0]:g}, {lab[1]:g}]"
        )


# --- ViT --------------------------------------------------------------------------------------


class ViTBlock(nn.Module):
    """Pre-LN: x += Attn(LN(x)); x += MLP(LN(x))."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        D = config.width
        self.norm1 = nn.LayerNorm(D, eps=1e-6)
        self.attention = MultiHeadAttention(
            D, config.num_heads, causal=False, backend=config.attention
        )
        self.norm2 = nn.LayerNorm(D, eps=1e-6)
        self.mlp = MLP(D, config.ff_ratio * D)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        pe: PositionalEncoding,
        layer: int,
        logit_scale: float | None,
    ) -> torch.Tensor:
        x = x + self.attention(self.norm1(x), positions, pe, layer, logit_scale=logit_scale)
        return x + self.mlp(self.norm2(x))  # (B, N, D)


class ViT(nn.Module):
    """Classifier: patch embed (+ absolute PE), pre-LN blocks, final LN, mean-pool, Linear.

    ``forward(images (B, C, H, W), positions (B or 1, N, 2)) -> logits (B, num_classes)``; any
    H, W divisible by ``patch`` (non-square too), as long as the positions fit in [0, L)."""

    def __init__(self, config: VisionConfig, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        config.check()
        self.config = config
        self.pe = config.build_encoding()
        self.patch_embed = PatchEmbed(config.patch, config.channels, config.width)
        self.blocks = nn.ModuleList(ViTBlock(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.width, eps=1e-6)
        self.head = Linear(config.width, config.num_classes)
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Xavier-uniform for every Linear (bias 0; the patch embedding is DiT's flattened
        conv kernel), LayerNorms (1, 0), then the PE's own init; all draws from ``generator``."""
        generator = _default_generator(generator)
        for linear in _linears(self):
            xavier_uniform_(linear, generator)
        for module in self.modules():
            if isinstance(module, nn.LayerNorm):
                module.reset_parameters()
        self.pe.reset_parameters(generator)

    def forward(
        self, images: torch.Tensor, positions: torch.Tensor, *, validate: bool = True
    ) -> torch.Tensor:
        """Logits (B, num_classes); ``validate``: range-check the positions (one sync)."""
        h, w = check_images_and_positions(self, images, positions)
        if validate:
            _check_ranges(self.config, positions)
        scale = attention_logit_scale(self.config, h * w)
        logit_scale = None if scale == 1.0 else scale
        x = self.patch_embed(images)  # (B, N, D)
        if self.pe.has_embed:
            x = self.pe.embed(x, positions)
        for index, block in enumerate(self.blocks):
            x = block(x, positions, self.pe, index, logit_scale)
        return self.head(self.norm(x).mean(dim=1))  # (B, num_classes)


# --- DiT --------------------------------------------------------------------------------------


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """DiT's sinusoid: (B,) -> (B, dim), ``cat(cos(t f), sin(t f))`` (cos first) with
    f_j = exp(-ln(max_period) j / (dim/2))."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )  # (dim/2,)
    args = t.float().unsqueeze(-1) * freqs  # (B, dim/2)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    """256-dim frequencies -> Linear(256, D) -> SiLU -> Linear(D, D)."""

    def __init__(self, width: int, frequency_size: int = 256) -> None:
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(Linear(frequency_size, width), nn.SiLU(), Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.frequency_size))  # (B, D)


class CondEmbedder(nn.Module):
    """Micro-conditioning (ours, SDXL-style): every scalar of cond (B, K) -> a 64-dim sinusoid
    of 1000 * value -> concat (B, 64 K) -> Linear -> SiLU -> Linear(D)."""

    def __init__(self, cond_dim: int, width: int, frequency_size: int = 64) -> None:
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(
            Linear(cond_dim * frequency_size, width), nn.SiLU(), Linear(width, width)
        )

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        B, K = cond.shape
        freq = timestep_embedding(1000.0 * cond.reshape(B * K), self.frequency_size)  # (B K, F)
        return self.mlp(freq.reshape(B, K * self.frequency_size))  # (B, D)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (B, N, D) * (1 + scale (B, D)) + shift (B, D)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class DiTBlock(nn.Module):
    """adaLN-Zero block: the conditioning c regresses shift/scale/gate for attention and MLP."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        D = config.width
        self.norm1 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.attention = MultiHeadAttention(
            D, config.num_heads, causal=False, backend=config.attention
        )
        self.norm2 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.mlp = MLP(D, config.ff_ratio * D, approximate="tanh")
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), Linear(D, 6 * D))

    def forward(
        self,
        x: torch.Tensor,
        c: torch.Tensor,
        positions: torch.Tensor,
        pe: PositionalEncoding,
        layer: int,
        logit_scale: float | None = None,
    ) -> torch.Tensor:
        """x (B, N, D), c (B, D) -> (B, N, D)."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(
            c
        ).chunk(6, dim=-1)  # each (B, D)
        a = self.attention(
            modulate(self.norm1(x), shift_msa, scale_msa),
            positions,
            pe,
            layer,
            logit_scale=logit_scale,
        )
        x = x + gate_msa.unsqueeze(1) * a
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    """LayerNorm (no affine) -> adaLN shift/scale -> Linear(D, p*p*C)."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        D, p = config.width, config.patch
        self.norm_final = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.linear = Linear(D, p * p * config.channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), Linear(D, 2 * D))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)  # (B, D) each
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (B, N, P)


class DiT(nn.Module):
    """Class-conditional DiT predicting the flow-matching velocity (no learned sigma).

    ``forward(x (B, C, H, W), t (B,) in [0, 1], y (B,) long in [0, num_classes], positions
    (B or 1, N, 2), cond (B, cond_dim) or None) -> velocity (B, C, H, W)``. Label
    ``num_classes`` is the null class of classifier-free guidance. At initialisation the
    output is exactly 0 and every block is the identity (adaLN-Zero)."""

    def __init__(self, config: VisionConfig, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        config.check()
        self.config = config
        D = config.width
        self.pe = config.build_encoding()
        self.patch_embed = PatchEmbed(config.patch, config.channels, D)
        self.t_embedder = TimestepEmbedder(D)
        # zeros until reset_parameters: construction never touches an RNG
        rows = config.num_classes + 1
        self.y_embedder = nn.Embedding(rows, D, _weight=torch.zeros(rows, D))
        self.cond_embedder = CondEmbedder(config.cond_dim, D) if config.cond_dim > 0 else None
        self.blocks = nn.ModuleList(DiTBlock(config) for _ in range(config.depth))
        self.final_layer = FinalLayer(config)
        self.reset_parameters(generator)

    @property
    def null_class(self) -> int:
        """The label of the unconditional (dropped) class."""
        return self.config.num_classes

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """DiT's ``initialize_weights``: xavier-uniform for every Linear (bias 0); N(0, 0.02)
        for the label table and the timestep (and micro-conditioning) MLP weights; zero for
        every adaLN's last Linear and the final Linear; then the PE's own init. All draws come
        from ``generator`` in module order."""
        generator = _default_generator(generator)
        for linear in _linears(self):
            xavier_uniform_(linear, generator)
        _normal_(self.y_embedder.weight, 0.02, generator)
        embedders = [self.t_embedder] + ([self.cond_embedder] if self.cond_embedder else [])
        for embedder in embedders:
            for index in (0, 2):
                _normal_(embedder.mlp[index].weight, 0.02, generator)
        for block in self.blocks:
            zero_(block.adaLN_modulation[-1])
        zero_(self.final_layer.adaLN_modulation[-1])
        zero_(self.final_layer.linear)
        self.pe.reset_parameters(generator)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        positions: torch.Tensor,
        cond: torch.Tensor | None = None,
        *,
        validate: bool = True,
    ) -> torch.Tensor:
        """Velocity (B, C, H, W); ``validate``: range-check positions and labels (one sync)."""
        h, w = check_images_and_positions(self, x, positions)
        self._check_conditioning(x.shape[0], t, y, cond)
        if validate:
            _check_ranges(self.config, positions, y)
        config = self.config
        scale = attention_logit_scale(config, h * w)
        logit_scale = None if scale == 1.0 else scale
        tokens = self.patch_embed(x)  # (B, N, D)
        if self.pe.has_embed:
            tokens = self.pe.embed(tokens, positions)
        c = self.t_embedder(1000.0 * t) + self.y_embedder(y)  # (B, D)
        if self.cond_embedder is not None:
            c = c + self.cond_embedder(cond.to(c.dtype))
        for index, block in enumerate(self.blocks):
            tokens = block(tokens, c, positions, self.pe, index, logit_scale)
        out = self.final_layer(tokens, c)  # (B, N, P)
        return unpatchify(out, h, w, config.patch, config.channels)  # (B, C, H, W)

    def _check_conditioning(
        self, batch: int, t: torch.Tensor, y: torch.Tensor, cond: torch.Tensor | None
    ) -> None:
        if not isinstance(t, torch.Tensor) or t.shape != (batch,) or not t.is_floating_point():
            got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else t
            raise ValueError(f"t must be a float tensor of shape (B={batch},) in [0, 1], got {got}")
        if not isinstance(y, torch.Tensor) or y.shape != (batch,) or not _is_integer(y):
            got = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, torch.Tensor) else y
            raise ValueError(f"y must be an integer tensor of shape (B={batch},), got {got}")
        K = self.config.cond_dim
        if K == 0 and cond is not None:
            raise ValueError("cond must be None: this DiT has cond_dim=0 (no micro-conditioning)")
        if K > 0:
            if cond is None:
                raise ValueError(
                    f"cond is required: this DiT has cond_dim={K} (micro-conditioning); pass a"
                    f" (B, {K}) tensor, e.g. the identity crop vector"
                )
            if not isinstance(cond, torch.Tensor) or cond.shape != (batch, K):
                got = tuple(cond.shape) if isinstance(cond, torch.Tensor) else cond
                raise ValueError(f"cond must have shape (B={batch}, cond_dim={K}), got {got}")


__all__ = [
    "ATTN_LOGIT_SCALES",
    "DiT",
    "DiTBlock",
    "FinalLayer",
    "PatchEmbed",
    "TimestepEmbedder",
    "ViT",
    "VisionConfig",
    "attention_logit_scale",
    "modulate",
    "patchify",
    "timestep_embedding",
    "unpatchify",
]
