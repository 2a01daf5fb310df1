"""LeWorldModel-style JEPA: a ViT encoder's CLS token, an action-conditioned causal predictor, SIGReg.

The model follows lucas-maes/le-wm (``jepa.py``, ``module.py``) closely enough that its checkpoints
load: the submodules are ``encoder`` (a transformers ``ViTModel``, no pooler, CLS token out),
``projector`` and ``pred_proj`` (Linear-BatchNorm1d-GELU-Linear), ``action_encoder`` (a 1x1 Conv1d
then an MLP) and ``predictor`` (a causal transformer over frame embeddings whose blocks are
modulated by the action embeddings, AdaLN-zero), and ``config.json`` has the same five sections.
The loss is LeWM's: next-embedding MSE + lambda * SIGReg, no stop-gradient, no EMA.

On disk (``save_pretrained``): ``config.json`` + ``model.safetensors``. ``load_checkpoint`` also
reads the release layout, ``config.json`` + ``weights.pt`` (a state dict). The published weights name
the ViT's parameters as transformers 4 did (``encoder.encoder.layer.N.attention.attention.query``);
transformers 5 renamed them (``encoder.layers.N.attention.q_proj``). Both load with either library;
files we write, and fingerprints, use the transformers-4 names so that they do not depend on the
installed version.

Frames are preprocessed as LeWM does: [0, 1], resized to ``image_size`` (antialiased bilinear),
normalised with ImageNet mean/std. One model step is ``frameskip`` recorded steps; its action is the
block of recorded actions, concatenated (LeWM's PushT: 5 x 2 = 10). LeWM trains on z-scored actions;
a checkpoint that needs that carries ``action_mean``/``action_std`` (per recorded action dimension)
in the ``wmcore`` section of its config.json, and ``predict`` applies them.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import WMError
from .checkpoint import read_error, state_mismatch
from ..fsio import write_new
from ..protocol import fingerprint as _fingerprint

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# stable_pretraining's vit_hf presets (intermediate size = 4 x hidden); LeWM uses "tiny"
VIT_SIZES = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
}

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
RELEASE_WEIGHTS_FILE = "weights.pt"


# --------------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class LeWMConfig:
    """Everything that fixes the architecture, the preprocessing and the loss.

    The defaults are the small model that wmcore trains (about 1.7M parameters at 64 px);
    ``LEWM_PUSHT`` below is the published PushT architecture (ViT-tiny at 224 px, ~18M).
    """

    name: str = "lewm"
    # encoder: transformers ViTModel, CLS token
    image_size: int = 64
    patch_size: int = 8
    encoder_hidden: int = 128
    encoder_layers: int = 4
    encoder_heads: int = 4
    encoder_mlp: int = 512
    encoder_mask_token: bool = False  # LeWM builds its ViT without one
    # latent
    embed_dim: int = 128  # D: projector output, predictor input/output
    projector_hidden: int = 512
    pred_proj_hidden: int = 512
    # actions: one model step = frameskip recorded steps
    action_dim: int = 10  # per model step (recorded width x frameskip)
    frameskip: int = 5
    action_smoothed_dim: int = 10  # le-wm's Embedder default, kept whatever the action width
    action_mlp_scale: int = 4
    # predictor
    history: int = 3  # frames the predictor sees (its positional table)
    predictor_hidden: int = 128
    predictor_depth: int = 2
    predictor_heads: int = 4
    predictor_dim_head: int = 32
    predictor_mlp: int = 512
    predictor_dropout: float = 0.1
    predictor_emb_dropout: float = 0.0
    # loss
    sigreg_lambda: float = 0.09
    sigreg_num_proj: int = 1024
    sigreg_knots: int = 17
    # preprocessing
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD
    action_mean: tuple[float, ...] | None = None  # per recorded action dimension, or None
    action_std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.type in ("int", int) and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise WMError(f"LeWMConfig.{f.name}: expected a positive integer, found {v!r}")
        for key in ("image_mean", "image_std", "action_mean", "action_std"):
            v = getattr(self, key)
            if isinstance(v, list):  # from JSON
                object.__setattr__(self, key, tuple(float(x) for x in v))
        if self.image_size % self.patch_size:
            raise WMError(f"LeWMConfig: patch_size {self.patch_size} must divide image_size {self.image_size}")
        if self.encoder_hidden % self.encoder_heads:
            raise WMError(
                f"LeWMConfig: encoder_hidden {self.encoder_hidden} must be a multiple of "
                f"encoder_heads {self.encoder_heads}"
            )
        if self.action_dim % self.frameskip:
            raise WMError(
                f"LeWMConfig: action_dim {self.action_dim} (per model step) must be a multiple of "
                f"frameskip {self.frameskip}"
            )
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise WMError("LeWMConfig: image_mean and image_std need 3 entries (RGB)")
        if (self.action_mean is None) != (self.action_std is None):
            raise WMError("LeWMConfig: give both action_mean and action_std, or neither")
        if self.action_mean is not None:
            w = self.action_dim // self.frameskip
            if len(self.action_mean) != w or len(self.action_std) != w or min(self.action_std) <= 0:
                raise WMError(
                    f"LeWMConfig: action_mean/action_std need {w} entries (one per recorded action dimension) "
                    "and positive stds"
                )
        if not 0 <= self.predictor_dropout < 1 or not 0 <= self.predictor_emb_dropout < 1:
            raise WMError("LeWMConfig: dropout rates must be in [0, 1)")
        if self.sigreg_lambda < 0 or self.sigreg_knots < 2:
            raise WMError("LeWMConfig: sigreg_lambda must be >= 0 and sigreg_knots >= 2")

    def vit_config(self):
        """The transformers ``ViTConfig`` of the encoder (as stable_pretraining's ``vit_hf`` builds it)."""
        from transformers import ViTConfig

        return ViTConfig(
            hidden_size=self.encoder_hidden,
            num_hidden_layers=self.encoder_layers,
            num_attention_heads=self.encoder_heads,
            intermediate_size=self.encoder_mlp,
            image_size=self.image_size,
            patch_size=self.patch_size,
        )

    def to_json(self) -> dict:
        """The release-style config.json: le-wm's five sections plus a ``wmcore`` section."""
        dims = (self.encoder_hidden, self.encoder_layers, self.encoder_heads)
        size = next((k for k, v in VIT_SIZES.items() if v == dims), "tiny")  # the dims are written out anyway
        d, h = self.embed_dim, self.history
        mlp = lambda hidden, inp: {  # noqa: E731
            "input_dim": inp,
            "hidden_dim": hidden,
            "output_dim": d,
            "norm_fn": {"_target_": "torch.nn.BatchNorm1d", "_partial_": True},
        }
        return {
            "embed_dim": d,
            "history_size": h,
            "encoder": {
                "size": size,
                "patch_size": self.patch_size,
                "image_size": self.image_size,
                "pretrained": False,
                "use_mask_token": self.encoder_mask_token,
                "hidden_size": self.encoder_hidden,
                "num_hidden_layers": self.encoder_layers,
                "num_attention_heads": self.encoder_heads,
                "intermediate_size": self.encoder_mlp,
            },
            "predictor": {
                "num_frames": h,
                "input_dim": d,
                "hidden_dim": self.predictor_hidden,
                "output_dim": d,
                "depth": self.predictor_depth,
                "heads": self.predictor_heads,
                "mlp_dim": self.predictor_mlp,
                "dim_head": self.predictor_dim_head,
                "dropout": self.predictor_dropout,
                "emb_dropout": self.predictor_emb_dropout,
            },
            "action_encoder": {
                "input_dim": self.action_dim,
                "smoothed_dim": self.action_smoothed_dim,
                "emb_dim": d,
                "mlp_scale": self.action_mlp_scale,
            },
            "projector": mlp(self.projector_hidden, self.encoder_hidden),
            "pred_proj": mlp(self.pred_proj_hidden, d),
            "wmcore": {
                "format": 1,
                "name": self.name,
                "frameskip": self.frameskip,
                "sigreg_lambda": self.sigreg_lambda,
                "sigreg_num_proj": self.sigreg_num_proj,
                "sigreg_knots": self.sigreg_knots,
                "image_mean": list(self.image_mean),
                "image_std": list(self.image_std),
                "action_mean": None if self.action_mean is None else list(self.action_mean),
                "action_std": None if self.action_std is None else list(self.action_std),
            },
        }

    @classmethod
    def from_json(cls, d: Any, source: str = "config.json", name: str | None = None) -> "LeWMConfig":
        """Read a config.json (ours or a LeWM release's); bad content raises WMError naming ``source``.

        Keys that le-wm's constructors give defaults to take le-wm's defaults, not ours (a release
        config lists only what its hydra file set). ``name`` is used when the file has no wmcore name.
        """
        return _config_from_json(cls, d, source, name)


def tiny_config(**overrides) -> LeWMConfig:
    """A few-thousand-parameter LeWMConfig at 16 px for tests and smoke runs (fields overridable)."""
    base = dict(
        name="tiny", image_size=16, patch_size=8, encoder_hidden=32, encoder_layers=1, encoder_heads=2,
        encoder_mlp=64, embed_dim=16, projector_hidden=32, pred_proj_hidden=32, predictor_hidden=32,
        predictor_depth=1, predictor_heads=2, predictor_dim_head=16, predictor_mlp=64, sigreg_num_proj=32,
    )
    return LeWMConfig(**{**base, **overrides})


LEWM_PUSHT = LeWMConfig(
    name="lewm-pusht",
    image_size=224,
    patch_size=14,
    encoder_hidden=192,
    encoder_layers=12,
    encoder_heads=3,
    encoder_mlp=768,
    embed_dim=192,
    projector_hidden=2048,
    pred_proj_hidden=2048,
    action_dim=10,
    frameskip=5,
    predictor_hidden=192,
    predictor_depth=6,
    predictor_heads=16,
    predictor_dim_head=64,
    predictor_mlp=2048,
)

_SECTION_KEYS = {
    "encoder": {"_target_", "size", "patch_size", "image_size", "pretrained", "use_mask_token",
                "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"},
    "predictor": {"_target_", "num_frames", "input_dim", "hidden_dim", "output_dim", "depth", "heads",
                  "mlp_dim", "dim_head", "dropout", "emb_dropout"},
    "action_encoder": {"_target_", "input_dim", "smoothed_dim", "emb_dim", "mlp_scale"},
    "projector": {"_target_", "input_dim", "hidden_dim", "output_dim", "norm_fn"},
    "pred_proj": {"_target_", "input_dim", "hidden_dim", "output_dim", "norm_fn"},
    "wmcore": {"format", "name", "frameskip", "sigreg_lambda", "sigreg_num_proj", "sigreg_knots",
               "image_mean", "image_std", "action_mean", "action_std"},
}


def _config_from_json(cls, d: Any, source: str, name: str | None) -> LeWMConfig:
    if not isinstance(d, dict):
        raise WMError(f"{source}: expected a JSON object with LeWM's config sections, found {type(d).__name__}")
    absent = [s for s in _SECTION_KEYS if s != "wmcore" and not isinstance(d.get(s), dict)]
    if absent:
        raise WMError(
            f"{source}: missing section(s) {absent}; a LeWM config.json has encoder, predictor, action_encoder, "
            "projector and pred_proj"
        )
    for sec, known in _SECTION_KEYS.items():
        extra = sorted(set(d.get(sec) or {}) - known)
        if extra:
            raise WMError(f"{source}: section {sec!r} has unsupported key(s) {extra}; known: {sorted(known)}")
    enc, pred, act, proj, pp = (d[s] for s in ("encoder", "predictor", "action_encoder", "projector", "pred_proj"))
    wm = d.get("wmcore") or {}

    def need(sec: str, key: str) -> Any:
        if key not in d[sec]:
            raise WMError(f"{source}: section {sec!r} lacks {key!r}")
        return d[sec][key]

    for sec in ("projector", "pred_proj"):
        norm = d[sec].get("norm_fn")  # absent: the release loaders build BatchNorm1d anyway
        target = norm.get("_target_", "") if isinstance(norm, dict) else norm
        if norm is not None and not str(target).endswith("BatchNorm1d"):
            raise WMError(f"{source}: {sec}.norm_fn must be BatchNorm1d (as in LeWM), found {norm!r}")
    size = enc.get("size", "tiny")
    if size not in VIT_SIZES:
        raise WMError(f"{source}: encoder.size {size!r} is not one of {sorted(VIT_SIZES)}")
    hidden, layers, heads = VIT_SIZES[size]
    hidden = enc.get("hidden_size", hidden)
    emb = need("predictor", "input_dim")
    history = need("predictor", "num_frames")
    if "history_size" in d and d["history_size"] != history:
        raise WMError(f"{source}: history_size {d['history_size']} differs from predictor.num_frames {history}")
    # wmcore supports the layouts in which the widths agree (every published LeWM does)
    agree = {
        "predictor.output_dim": pred.get("output_dim", emb),
        "action_encoder.emb_dim": act.get("emb_dim", 10),
        "projector.output_dim": proj.get("output_dim", proj.get("input_dim")),
        "pred_proj.input_dim": need("pred_proj", "input_dim"),
        "pred_proj.output_dim": pp.get("output_dim", pp.get("input_dim")),
    }
    if "embed_dim" in d:
        agree["embed_dim"] = d["embed_dim"]
    bad = {k: v for k, v in agree.items() if v != emb}
    if bad:
        raise WMError(f"{source}: widths must all equal predictor.input_dim = {emb}, found {bad}")
    if need("projector", "input_dim") != hidden:
        raise WMError(f"{source}: projector.input_dim {proj['input_dim']} must equal the encoder width {hidden}")
    kw = dict(
        name=wm.get("name") or name or "lewm",
        image_size=enc.get("image_size", 224),  # vit_hf's defaults
        patch_size=enc.get("patch_size", 16),
        encoder_hidden=hidden,
        encoder_layers=enc.get("num_hidden_layers", layers),
        encoder_heads=enc.get("num_attention_heads", heads),
        encoder_mlp=enc.get("intermediate_size", 4 * hidden),
        # vit_hf defaults to a mask token, but LeWM's config and both of its loaders say False
        encoder_mask_token=bool(enc.get("use_mask_token", False)),
        embed_dim=emb,
        projector_hidden=need("projector", "hidden_dim"),
        pred_proj_hidden=need("pred_proj", "hidden_dim"),
        action_dim=need("action_encoder", "input_dim"),
        action_smoothed_dim=act.get("smoothed_dim", 10),
        action_mlp_scale=act.get("mlp_scale", 4),
        history=history,
        predictor_hidden=pred.get("hidden_dim", emb),
        predictor_depth=need("predictor", "depth"),
        predictor_heads=need("predictor", "heads"),
        predictor_dim_head=pred.get("dim_head", 64),
        predictor_mlp=need("predictor", "mlp_dim"),
        predictor_dropout=pred.get("dropout", 0.0),
        predictor_emb_dropout=pred.get("emb_dropout", 0.0),
    )
    for key in ("frameskip", "sigreg_lambda", "sigreg_num_proj", "sigreg_knots", "image_mean", "image_std",
                "action_mean", "action_std"):
        if wm.get(key) is not None:
            kw[key] = wm[key]
    try:
        return cls(**kw)
    except (ValueError, TypeError) as e:
        raise WMError(f"{source}: {e}") from None


# a label and training-only settings: they do not change a single prediction
_NOT_FINGERPRINTED = (
    "name", "sigreg_lambda", "sigreg_num_proj", "sigreg_knots", "predictor_dropout", "predictor_emb_dropout"
)


def _fingerprint_config(cfg: LeWMConfig) -> dict:
    d = dataclasses.asdict(cfg)
    for k in _NOT_FINGERPRINTED:
        d.pop(k)
    return d


# --------------------------------------------------------------------------------------------------
# building blocks (attribute names follow le-wm's module.py, so state dicts line up)


class MLP(nn.Module):
    """Linear -> BatchNorm1d -> GELU -> Linear on ``[N, in]`` -> ``[N, out]``."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(input_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.GELU(), nn.Linear(hidden_dim, output_dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Embedder(nn.Module):
    """Action blocks ``[B, T, A]`` -> ``[B, T, emb]``: a 1x1 convolution over time, then an MLP."""

    def __init__(self, input_dim: int, smoothed_dim: int, emb_dim: int, mlp_scale: int):
        super().__init__()
        self.patch_embed = nn.Conv1d(input_dim, smoothed_dim, kernel_size=1)
        self.embed = nn.Sequential(
            nn.Linear(smoothed_dim, mlp_scale * emb_dim), nn.SiLU(), nn.Linear(mlp_scale * emb_dim, emb_dim)
        )

    def forward(self, a: Tensor) -> Tensor:
        a = a.to(self.patch_embed.weight.dtype)
        x = self.patch_embed(a.transpose(1, 2)).transpose(1, 2)  # [B, T, smoothed], not contiguous
        # The MLP runs on [B*T, smoothed] rows. Handed the strided 3-d tensor, nn.Linear goes through
        # torch.matmul, which copies it into rows for one mm when the weight requires grad and runs a
        # bmm when it does not: kernels that can round differently, so a frozen model (LeWMWorldModel
        # freezes its module) did not reproduce the same trainable model's outputs bit for bit. A
        # trainable model multiplied these rows already (training runs as before, to the bit here).
        return self.embed(x.reshape(-1, x.shape[-1])).unflatten(0, x.shape[:2])


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden, dim), nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Attention(nn.Module):
    """Causal multi-head self-attention over ``[B, T, dim]`` (slot t attends to slots <= t)."""

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dropout = heads, dropout
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        # le-wm skips the output projection when it would be square and redundant
        square = (heads, dim_head) == (1, dim)
        self.to_out = nn.Identity() if square else nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        q, k, v = (y.reshape(b, t, self.heads, -1).transpose(1, 2) for y in self.to_qkv(self.norm(x)).chunk(3, -1))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        return self.to_out(out.transpose(1, 2).reshape(b, t, -1))


class ConditionalBlock(nn.Module):
    """Transformer block whose norms are shifted, scaled and gated by the condition (AdaLN-zero)."""

    def __init__(self, dim: int, heads: int, dim_head: int, mlp_dim: int, dropout: float):
        super().__init__()
        self.attn = Attention(dim, heads, dim_head, dropout)
        self.mlp = FeedForward(dim, mlp_dim, dropout)
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        # zero: every block starts as the identity
        nn.init.zeros_(self.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.adaLN_modulation[-1].bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, -1)
        x = x + gate1 * self.attn(self.norm1(x) * (1 + scale1) + shift1)
        return x + gate2 * self.mlp(self.norm2(x) * (1 + scale2) + shift2)


class Transformer(nn.Module):
    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, depth: int, heads: int, dim_head: int,
                 mlp_dim: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_dim)
        self.layers = nn.ModuleList(
            ConditionalBlock(hidden_dim, heads, dim_head, mlp_dim, dropout) for _ in range(depth)
        )
        same = input_dim == hidden_dim
        self.input_proj = nn.Identity() if same else nn.Linear(input_dim, hidden_dim)
        self.cond_proj = nn.Identity() if same else nn.Linear(input_dim, hidden_dim)
        self.output_proj = nn.Identity() if hidden_dim == output_dim else nn.Linear(hidden_dim, output_dim)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        x, c = self.input_proj(x), self.cond_proj(c)
        for block in self.layers:
            x = block(x, c)
        return self.output_proj(self.norm(x))


class ARPredictor(nn.Module):
    """Frame embeddings ``[B, T, D]`` + action embeddings ``[B, T, D]`` -> ``[B, T, D]``, T <= num_frames."""

    def __init__(self, cfg: LeWMConfig):
        super().__init__()
        d = cfg.embed_dim
        self.pos_embedding = nn.Parameter(torch.randn(1, cfg.history, d))
        self.dropout = nn.Dropout(cfg.predictor_emb_dropout)
        self.transformer = Transformer(d, cfg.predictor_hidden, d, cfg.predictor_depth, cfg.predictor_heads,
                                       cfg.predictor_dim_head, cfg.predictor_mlp, cfg.predictor_dropout)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        x = self.dropout(x + self.pos_embedding[:, : x.shape[1]])
        return self.transformer(x, c)


# --------------------------------------------------------------------------------------------------
# SIGReg


def sigreg(z: Tensor, num_proj: int = 1024, knots: int = 17, generator: torch.Generator | None = None) -> Tensor:
    """SIGReg: how far embeddings ``z [..., N, D]`` are from an isotropic standard Gaussian -> scalar.

    Along ``num_proj`` random unit directions (shared by all leading indices), the Epps-Pulley
    statistic compares the empirical characteristic function of the N projected samples with the
    Gaussian's ``exp(-t^2/2)``, integrated over t in [-3, 3] (trapezoid on ``knots`` points of [0, 3],
    doubled by symmetry, weighted by ``exp(-t^2/2)``) and scaled by N. It is O(1) for Gaussian
    samples and grows with N for anything else. Averaged over directions and leading indices (LeWM
    passes ``[T, B, D]``: one test per time step across the batch).
    """
    if z.dim() < 2 or z.shape[-2] < 2:
        raise ValueError(f"sigreg: expected embeddings [..., N >= 2, D], found {tuple(z.shape)}")
    dev = generator.device if generator is not None else z.device
    a = torch.randn(z.shape[-1], num_proj, generator=generator, device=dev, dtype=torch.float32).to(z)
    a = a / a.norm(dim=0, keepdim=True)
    t = torch.linspace(0, 3, knots, device=z.device, dtype=z.dtype)
    dt = 3 / (knots - 1)
    w = torch.full((knots,), 2 * dt, device=z.device, dtype=z.dtype)
    w[0] = w[-1] = dt
    phi = torch.exp(-t.square() / 2)
    xt = (z @ a).unsqueeze(-1) * t  # [..., N, P, K]
    err = (xt.cos().mean(-3) - phi).square() + xt.sin().mean(-3).square()  # [..., P, K]
    return ((err @ (w * phi)) * z.shape[-2]).mean()


# --------------------------------------------------------------------------------------------------
# the model


class LeWorldModel(nn.Module):
    """LeWM: ``encoder`` + ``projector`` embed frames; ``action_encoder`` + ``predictor`` + ``pred_proj``
    predict the next embedding. Pixels here are already preprocessed (float, normalised)."""

    def __init__(self, cfg: LeWMConfig | None = None):
        super().__init__()
        from transformers import ViTModel

        self.cfg = cfg = cfg or LeWMConfig()
        self.encoder = ViTModel(cfg.vit_config(), add_pooling_layer=False, use_mask_token=cfg.encoder_mask_token)
        self.projector = MLP(cfg.encoder_hidden, cfg.projector_hidden, cfg.embed_dim)
        self.action_encoder = Embedder(cfg.action_dim, cfg.action_smoothed_dim, cfg.embed_dim, cfg.action_mlp_scale)
        self.predictor = ARPredictor(cfg)
        self.pred_proj = MLP(cfg.embed_dim, cfg.pred_proj_hidden, cfg.embed_dim)

    def embed(self, pixels: Tensor) -> Tensor:
        """Normalised pixels ``[B, T, 3, H, W]`` -> embeddings ``[B, T, D]`` (projected CLS token)."""
        if pixels.dim() != 5 or pixels.shape[2] != 3:
            raise ValueError(f"pixels: expected [B, T, 3, H, W], found {tuple(pixels.shape)}")
        b, t = pixels.shape[:2]
        x = pixels.flatten(0, 1).to(self.encoder.embeddings.cls_token.dtype)
        cls = self.encoder(pixel_values=x, interpolate_pos_encoding=True).last_hidden_state[:, 0]
        return self.projector(cls).reshape(b, t, -1)

    def predict_next(self, emb: Tensor, actions: Tensor) -> Tensor:
        """Embeddings ``[B, T, D]``, action blocks ``[B, T, A]`` -> predictions ``[B, T, D]``.

        Slot t predicts frame t+1 from frames ``max(0, t-history+1)..t`` and actions at those frames
        (causal: it never sees a later frame or action). T up to ``history`` takes one pass, as LeWM
        trains; slots beyond use sliding windows of ``history`` frames, as LeWM rolls out.
        """
        b, t, d = emb.shape
        if actions.dim() != 3 or actions.shape[:2] != (b, t) or actions.shape[2] != self.cfg.action_dim:
            raise ValueError(
                f"actions: expected [B={b}, T={t}, A={self.cfg.action_dim}], found {tuple(actions.shape)}"
            )
        h = self.cfg.history
        act = self.action_encoder(actions)
        out = self.predictor(emb[:, :h], act[:, :h])
        if t > h:  # windows ending at slots h..t-1, each keeping only its last output
            we = emb.unfold(1, h, 1)[:, 1:].permute(0, 1, 3, 2).reshape(-1, h, d)
            wa = act.unfold(1, h, 1)[:, 1:].permute(0, 1, 3, 2).reshape(-1, h, act.shape[-1])
            out = torch.cat([out, self.predictor(we, wa)[:, -1].reshape(b, t - h, -1)], 1)
        return self.pred_proj(out.flatten(0, 1)).reshape(b, t, -1)

    def _forward(self, pixels: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        """embeddings ``[B, T, D]`` and predictions ``[B, T-1, D]`` (slot t predicts frame t+1)."""
        t = pixels.shape[1]
        if t < 2:
            raise ValueError(f"pixels: need at least 2 frames [B, T >= 2, 3, H, W], found {tuple(pixels.shape)}")
        if actions.dim() != 3 or actions.shape[1] not in (t - 1, t):
            raise ValueError(
                f"actions: expected [B, T-1 or T, A] for T={t} frames (the last block is unused), "
                f"found {tuple(actions.shape)}"
            )
        emb = self.embed(pixels)
        return emb, self.predict_next(emb[:, :-1], actions[:, : t - 1])

    def loss(self, pixels: Tensor, actions: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """LeWM's objective on pixels ``[B, T, 3, H, W]`` and action blocks ``[B, T, A]`` (or T-1).

        pred: MSE of the predicted against the encoded next embeddings (gradient through both);
        sigreg: SIGReg of the embeddings, one test per time step across the batch;
        total: pred + sigreg_lambda * sigreg. All scalars.
        """
        emb, pred = self._forward(pixels, actions)
        pred_loss = (pred - emb[:, 1:]).square().mean()
        sig = sigreg(emb.transpose(0, 1), self.cfg.sigreg_num_proj, self.cfg.sigreg_knots, generator)
        return {"total": pred_loss + self.cfg.sigreg_lambda * sig, "pred": pred_loss, "sigreg": sig}


@torch.no_grad()
def recalibrate_bn(model: LeWorldModel, batches: Iterable[Tensor | tuple[Tensor, Tensor]]) -> list[str]:
    """Re-estimate every BatchNorm's running statistics from ``batches``; returns the names redone.

    Running averages trail the weights they were collected under, so after training they can be
    far from what the final weights produce; evaluation must not use them. Each batch is pixels
    ``[B, T, 3, H, W]`` (reaches the projector's BatchNorm only) or ``(pixels, actions [B, T, A])``
    (reaches pred_proj's too, through the training forward). The statistics are reset and become the
    plain average over the batches (momentum None), collected with everything else in eval mode
    (no dropout) and without gradients. A BatchNorm that no batch reached keeps its old statistics.
    """
    bns = {n: m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    saved = {n: ({k: v.clone() for k, v in m.state_dict().items()}, m.momentum) for n, m in bns.items()}
    reached: set[str] = set()
    hooks = [m.register_forward_pre_hook(lambda mod, inp, n=n: reached.add(n)) for n, m in bns.items()]
    was_training = model.training
    model.eval()
    for m in bns.values():
        m.reset_running_stats()
        m.momentum = None
        m.train()
    count = 0
    try:
        for item in batches:
            if isinstance(item, (tuple, list)):
                model._forward(*item)
            else:
                model.embed(item)
            count += 1
    finally:
        for hk in hooks:
            hk.remove()
        for n, m in bns.items():
            state, momentum = saved[n]
            m.momentum = momentum
            if n not in reached or not count:
                m.load_state_dict(state)
        model.train(was_training)
    if not count:
        raise ValueError("recalibrate_bn: no batches given; BatchNorm statistics left as they were")
    return sorted(reached)


# --------------------------------------------------------------------------------------------------
# the harness's view


def preprocess(frames: Tensor, cfg: LeWMConfig) -> Tensor:
    """uint8 frames ``[B, T, H, W, 3]`` -> normalised float pixels ``[B, T, 3, S, S]``, S = image_size.

    LeWM's pipeline in plain torch: [0, 1], antialiased bilinear resize, ImageNet mean/std (resizing
    and the per-channel affine commute, so the order does not matter).
    """
    if not isinstance(frames, Tensor) or frames.dim() != 5 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
        found = f"{tuple(frames.shape)} {frames.dtype}" if isinstance(frames, Tensor) else type(frames).__name__
        raise ValueError(f"frames: expected uint8 [B, T, H, W, 3], found {found}")
    b, t, h, w, _ = frames.shape
    s = cfg.image_size
    x = frames.reshape(b * t, h, w, 3).permute(0, 3, 1, 2).float() / 255
    if (h, w) != (s, s):
        x = F.interpolate(x, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(cfg.image_mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.image_std, device=x.device).view(1, 3, 1, 1)
    return ((x - mean) / std).reshape(b, t, 3, s, s)


class LeWMWorldModel:
    """A frozen LeWorldModel as a ``wmcore.protocol.WorldModel`` (one token per frame)."""

    tokens_per_frame = 1
    chunk = 256  # frames per encoder call

    def __init__(self, model: LeWorldModel, name: str | None = None):
        self.model = model.eval().requires_grad_(False)
        cfg = model.cfg
        self.cfg = cfg
        self.name = name or cfg.name
        self.action_dim = cfg.action_dim
        self.frameskip = cfg.frameskip
        self.max_context = cfg.history

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "LeWMWorldModel":
        self.model.to(device=device, dtype=dtype)
        return self

    @property
    def _param(self) -> Tensor:
        return self.model.encoder.embeddings.cls_token

    def encode(self, frames: Tensor) -> Tensor:
        """uint8 frames ``[B, T, H, W, 3]`` (any H, W) -> latents ``[B, T, 1, D]`` on the frames' device."""
        p = self._param
        with torch.inference_mode():
            pix = preprocess(frames, self.cfg)
            b, t = pix.shape[:2]
            flat = pix.flatten(0, 1)
            out = [
                self.model.embed(flat[i : i + self.chunk].to(p.device, p.dtype)[None])[0]
                for i in range(0, len(flat), self.chunk)
            ]
            return torch.cat(out).reshape(b, t, 1, -1).to(frames.device)

    def predict(self, context: Tensor, actions: Tensor, states: Tensor | None = None) -> Tensor:
        """context ``[B, Tc, 1, D]``, action blocks ``[B, Tc, A]`` -> next latent ``[B, 1, D]``.

        Uses the last ``history`` frames only; states are ignored (LeWM reads pixels and actions).
        """
        d = self.cfg.embed_dim
        if context.dim() != 4 or context.shape[2] != 1 or context.shape[3] != d or context.shape[1] < 1:
            raise ValueError(f"context: expected [B, Tc >= 1, 1, {d}], found {tuple(context.shape)}")
        if actions.dim() != 3 or actions.shape[:2] != context.shape[:2] or actions.shape[2] != self.action_dim:
            raise ValueError(
                f"actions: expected [B={context.shape[0]}, Tc={context.shape[1]}, A={self.action_dim}], "
                f"found {tuple(actions.shape)}"
            )
        p = self._param
        h = self.cfg.history
        with torch.inference_mode():
            emb = context[:, -h:, 0].to(p.device, p.dtype)
            act = self._normalise(actions[:, -h:].to(p.device, p.dtype))
            out = self.model.predict_next(emb, act)[:, -1:]
        return out.to(context.device, context.dtype)

    def _normalise(self, a: Tensor) -> Tensor:
        c = self.cfg
        if c.action_mean is None:
            return a
        k = c.frameskip  # a block is frameskip recorded actions in time order
        mean = torch.tensor(c.action_mean, device=a.device, dtype=a.dtype).repeat(k)
        std = torch.tensor(c.action_std, device=a.device, dtype=a.dtype).repeat(k)
        return (a - mean) / std

    def fingerprint(self) -> str:
        """sha256 of the weights (transformers-4 names, whatever is installed) and of the config
        entries that affect predictions (not the name, not the loss or dropout settings)."""
        return _fingerprint(canonical_state_dict(self.model), _fingerprint_config(self.cfg))

    def config(self) -> dict:
        return dataclasses.asdict(self.cfg)


# --------------------------------------------------------------------------------------------------
# checkpoints

_T4 = re.compile(r"^encoder\.encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")
_T5 = re.compile(r"^encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_VIT_RENAMES = [  # (transformers 4, transformers 5), within one encoder layer
    ("attention.attention.query", "attention.q_proj"),
    ("attention.attention.key", "attention.k_proj"),
    ("attention.attention.value", "attention.v_proj"),
    ("attention.output.dense", "attention.o_proj"),
    ("intermediate.dense", "mlp.fc1"),
    ("output.dense", "mlp.fc2"),
    ("layernorm_before", "layernorm_before"),
    ("layernorm_after", "layernorm_after"),
]


def vit_naming(keys: Iterable[str]) -> str | None:
    """'t4' or 't5': which transformers naming the ViT layer keys of a LeWM state dict use."""
    for k in keys:
        if _T4.match(k):
            return "t4"
        if _T5.match(k):
            return "t5"
    return None


def rename_vit_keys(state: Mapping[str, Tensor], to: str) -> dict[str, Tensor]:
    """Rename a LeWM state dict's encoder-layer keys to transformers-4 (``to='t4'``) or -5 names.

    Keys outside the encoder layers, and keys neither naming knows, pass unchanged (a strict load
    then reports them).
    """
    if to not in ("t4", "t5"):
        raise ValueError(f"rename_vit_keys: to must be 't4' or 't5', got {to!r}")
    src, table = (_T5, {b: a for a, b in _VIT_RENAMES}) if to == "t4" else (_T4, dict(_VIT_RENAMES))
    out = {}
    for key, val in state.items():
        m = src.match(key)
        if m and m.group(2) in table:
            i, part, leaf = m.groups()
            key = (f"encoder.encoder.layer.{i}." if to == "t4" else f"encoder.layers.{i}.") + f"{table[part]}.{leaf}"
        out[key] = val
    return out


def canonical_state_dict(model: LeWorldModel) -> dict[str, Tensor]:
    """The state dict on CPU with the published (transformers-4) encoder names."""
    return rename_vit_keys({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, "t4")


def save_pretrained(model: LeWorldModel | LeWMWorldModel, directory: str | Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (published names) into ``directory``.

    Refuses if either file exists; each file appears whole or not at all.
    """
    from safetensors.torch import save

    model = model.model if isinstance(model, LeWMWorldModel) else model
    d = Path(directory)
    for f in (CONFIG_FILE, WEIGHTS_FILE):
        if (d / f).exists():
            raise WMError(f"{d / f}: exists already; wmcore never overwrites a checkpoint, choose a new directory")
    blob = save(canonical_state_dict(model), metadata={"format": "pt", "wmcore": "lewm"})
    write_new(d / WEIGHTS_FILE, blob)
    write_new(d / CONFIG_FILE, (json.dumps(model.cfg.to_json(), indent=2) + "\n").encode())
    return d


def _read_state(path: Path, device: str | torch.device) -> dict[str, Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load

            state: Any = load(path.read_bytes())
            state = {k: v.to(device) for k, v in state.items()}
        else:  # tensors and plain containers only: never run a pickle's code
            with warnings.catch_warnings():  # torch's musings on a broken file: the error below says it
                warnings.simplefilter("ignore")
                state = torch.load(io.BytesIO(path.read_bytes()), map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to read is the file's fault
        raise read_error(path, e, "the weights") from None
    if isinstance(state, dict):
        for wrapper in ("state_dict", "model"):  # Lightning / le-wm conversions wrap the dict
            if isinstance(state.get(wrapper), dict):
                state = state[wrapper]
                break
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WMError(f"{path}: expected a state dict (names -> tensors), found {type(state).__name__}")
    if state and all(k.startswith("model.") for k in state):
        state = {k[len("model."):]: v for k, v in state.items()}
    return state


def _weights_path(d: Path) -> Path:
    for name in (WEIGHTS_FILE, RELEASE_WEIGHTS_FILE):
        if (d / name).is_file():
            return d / name
    pts = sorted(d.glob("*.pt"))
    if len(pts) == 1:
        return pts[0]
    found = ", ".join(p.name for p in pts) or "none"
    raise WMError(
        f"{d}: expected weights in {WEIGHTS_FILE} (wmcore) or {RELEASE_WEIGHTS_FILE} (LeWM release); "
        f"found .pt files: {found}"
    )


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu") -> LeWorldModel:
    """A LeWorldModel from ``directory`` (config.json + model.safetensors, or the release's weights.pt),
    in eval mode. Either transformers naming of the encoder loads; anything else that does not match
    the config exactly (missing, unexpected or misshapen tensors) raises WMError listing it."""
    d = Path(directory)
    if not d.is_dir():
        raise WMError(f"{d}: not a directory; expected a LeWM checkpoint directory (config.json + weights)")
    cpath = d / CONFIG_FILE
    if not cpath.is_file():
        raise WMError(
            f"{d}: no {CONFIG_FILE}; expected a LeWM checkpoint directory: {CONFIG_FILE} + {WEIGHTS_FILE} "
            f"(wmcore) or {CONFIG_FILE} + {RELEASE_WEIGHTS_FILE} (LeWM release)"
        )
    try:
        raw = json.loads(cpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WMError(f"{cpath}: not readable JSON ({e})") from None
    cfg = LeWMConfig.from_json(raw, source=str(cpath), name=f"lewm[{d.resolve().name}]")
    wpath = _weights_path(d)
    state = _read_state(wpath, device)

    with torch.device("meta"):  # shapes only: a config that does not fit the weights allocates nothing
        expected = LeWorldModel(cfg).state_dict()
    target = vit_naming(expected)
    if target is not None:
        state = rename_vit_keys(state, target)
    wrong = state_mismatch(state, expected, want="config wants")
    if wrong:
        raise WMError(
            f"{wpath}: does not match {cpath} — {wrong}. Are config.json and the weights from the same model?"
        )
    model = LeWorldModel(cfg)
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


def load_world_model(
    directory: str | Path, device: str | torch.device = "cpu", name: str | None = None
) -> LeWMWorldModel:
    """``load_checkpoint`` wrapped as a WorldModel (the ``lewm:DIR`` model spec)."""
    return LeWMWorldModel(load_checkpoint(directory, device), name=name)
