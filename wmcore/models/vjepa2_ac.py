"""V-JEPA 2-AC: the action-conditioned predictor of facebookresearch/vjepa2, as a wmcore WorldModel.

Our own implementation of ``src/models/ac_predictor.py`` (``VisionTransformerPredictorAC``,
``vit_ac_predictor``) and the pieces of ``src/models/utils/modules.py`` it uses (``ACBlock``,
``ACRoPEAttention``, ``rotate_queries_or_keys``, ``build_action_block_causal_attention_mask``, ``MLP``,
``SwiGLUFFN``). The constructor takes the official argument names and the state dict has the official
keys and shapes, so the released ``vjepa2-ac-vitg.pt`` predictor loads with ``strict=True``:

    predictor_embed, action_encoder, state_encoder, extrinsics_encoder   (Linear, with bias)
    predictor_blocks.{i}.norm1 / attn.qkv / attn.proj / norm2 / mlp.fc1 / mlp.fc2 (+ mlp.fc3 with SiLU)
    predictor_norm, predictor_proj

``extrinsics_encoder`` exists whatever ``use_extrinsics`` says: the official module always builds it.

What the predictor computes (``forward``): frame latents ``[B, T*N, D]`` go to the predictor width;
each frame is preceded by its conditioning tokens, in this order: action, state (and extrinsics), so
a frame is ``K + N`` tokens (K = 2 or 3). Attention is block-causal over frames (every token of frame
t sees every token of frames <= t) with 3D RoPE: the head dim is cut into three equal even parts
(``2 * ((head_dim // 3) // 2)`` each; 20 + 20 + 20 of 64, the last 4 not rotated) that are rotated by
the frame index, the patch row and the patch column; conditioning tokens get only the frame rotation.
Slot t of the output predicts frame t + 1. The official rotation pairs channel 2i with 2i + 1 but
gives them *different* frequencies (its own comment calls it a bug kept for the released weights):
it is therefore not a rotation and attention depends on absolute frame positions, not only on their
differences. ``rope_fixed_pairs=True`` gives the textbook rotation (not what the weights were trained
with). The official mask covers ``num_frames // tubelet_size`` frames (32 with the hub's
num_frames=64); more do not run there, and raise here.

Incremental use: ``forward_frames(..., cache=KVCache)`` appends frames at the next frame positions and
attends to the cached keys/values, so a rollout step costs one frame's ``K + N`` tokens per layer.
Because of block causality this is exact. With a sliding window it is not: once the oldest frame
leaves, every later frame's hidden states change (they no longer see it, and their RoPE positions
shift), so the adapter re-encodes the window then (see ``VJEPA2ACWorldModel.step``).

The world model around it follows the official planning code (``notebooks/utils/world_model_wrapper.py``,
``app/vjepa_droid/train.py``): each frame is fed to the encoder as a 2-frame tubelet of itself, the
encoder output and every prediction get a layer norm over channels without affine
(``F.layer_norm(x, (D,))``, eps 1e-5, per token; ``normalize_reps=True``), and in open loop the
7-d end-effector state is propagated from the action (``compute_new_pose`` in
``notebooks/utils/mpc_utils.py``): position + delta; orientation as extrinsic "xyz" Euler angles
(scipy's ``Rotation.from_euler("xyz", ...)``, i.e. R = Rz(yaw) Ry(pitch) Rx(roll)) composed as
R_new = R_delta @ R_state and read back as "xyz" Euler angles; gripper = clip(gripper + delta, 0, 1).
The action itself is the DROID ``poses_to_diffs``: [xyz delta, Euler("xyz") of R_{t+1} R_t^T, gripper delta].

The encoder is transformers' ``VJEPA2Model`` (its video ViT; its own masked predictor is not used),
wrapped as ``VJEPA2VideoEncoder``. It comes either from the official checkpoint's ``"encoder"`` (the
ViT-g: width 1408, 40 blocks, 22 heads, MLP ratio 48/11, patch 16, tubelet 2, RoPE), renamed as
transformers' ``convert_vjepa2_to_hf.py`` does (``official_encoder_to_vjepa2``: qkv split into
query/key/value), or from a transformers directory (``load_vjepa2_encoder``). ``load_world_model``
puts the pieces together; ``parse_spec`` reads the ``vjepa2-ac:CKPT[,encoder=DIR][,...]`` model spec.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import WMError
from .checkpoint import key_list, read_error, state_mismatch
from ..protocol import fingerprint as _fingerprint
from ..video import IMAGENET_MEAN, IMAGENET_STD

POSE_DIM = 7  # [x, y, z, roll, pitch, yaw, gripper]: DROID's cartesian position + gripper

# --------------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class ACPredictorConfig:
    """``VisionTransformerPredictorAC``'s arguments (official names), defaults as the released
    ViT-g AC predictor built by ``vjepa2_ac_vit_giant`` (hub: img 256, 64 frames -> 32 predictor frames).

    Training-only arguments of the official signature (dropouts, drop path, activation checkpointing,
    ``use_sdpa``, ``uniform_power``) are accepted by ``ACPredictor`` and not stored: inference does
    not read them. ``rope_fixed_pairs`` is ours (see the module docstring).
    """

    img_size: tuple[int, int] = (256, 256)
    patch_size: int = 16
    num_frames: int = 64
    tubelet_size: int = 2
    embed_dim: int = 1408
    predictor_embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    norm_eps: float = 1e-6  # vit_ac_predictor's partial(nn.LayerNorm, eps=1e-6)
    init_std: float = 0.02
    use_silu: bool = False
    wide_silu: bool = True
    is_frame_causal: bool = True
    use_rope: bool = True
    action_embed_dim: int = 7
    use_extrinsics: bool = False
    rope_fixed_pairs: bool = False

    def __post_init__(self) -> None:
        size = self.img_size
        if isinstance(size, int) and not isinstance(size, bool):
            size = (size, size)
        if not (isinstance(size, (tuple, list)) and len(size) == 2):
            raise WMError(f"ACPredictorConfig.img_size: expected an int or (height, width), found {self.img_size!r}")
        object.__setattr__(self, "img_size", tuple(int(s) for s in size))
        for key in ("patch_size", "num_frames", "tubelet_size", "embed_dim", "predictor_embed_dim", "depth",
                    "num_heads", "action_embed_dim"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise WMError(f"ACPredictorConfig.{key}: expected a positive int, found {v!r}")
        h, w = self.img_size
        if h % self.patch_size or w % self.patch_size:
            raise WMError(f"ACPredictorConfig: patch_size {self.patch_size} must divide img_size {self.img_size}")
        if self.predictor_embed_dim % self.num_heads:
            raise WMError(
                f"ACPredictorConfig: predictor_embed_dim {self.predictor_embed_dim} must be a multiple of "
                f"num_heads {self.num_heads}"
            )
        if self.num_frames < self.tubelet_size:
            raise WMError(
                f"ACPredictorConfig: num_frames {self.num_frames} < tubelet_size {self.tubelet_size} leaves the "
                "frame mask empty (it covers num_frames // tubelet_size frames)"
            )
        if not self.is_frame_causal:
            raise WMError(
                "ACPredictorConfig: is_frame_causal=False is not supported: the official forward slices its "
                "frame-causal mask unconditionally (it fails without one), and a rollout needs causality"
            )
        if self.use_extrinsics and self.action_embed_dim < 2:
            raise WMError("ACPredictorConfig: use_extrinsics needs action_embed_dim >= 2 (extrinsics are A - 1 wide)")
        if self.mlp_ratio <= 0:
            raise WMError(f"ACPredictorConfig.mlp_ratio: expected > 0, found {self.mlp_ratio!r}")

    @property
    def grid(self) -> tuple[int, int]:
        return self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size

    @property
    def tokens_per_frame(self) -> int:
        gh, gw = self.grid
        return gh * gw

    @property
    def cond_tokens(self) -> int:
        return 3 if self.use_extrinsics else 2

    @property
    def max_frames(self) -> int:
        """Frames the official block-causal mask covers: ``num_frames // tubelet_size``."""
        return self.num_frames // self.tubelet_size

    @property
    def head_dim(self) -> int:
        return self.predictor_embed_dim // self.num_heads

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["img_size"] = list(self.img_size)
        return d


# --------------------------------------------------------------------------------------------------
# RoPE


def rope_rotate(x: Tensor, pos: Tensor, fixed_pairs: bool = False) -> Tensor:
    """``rotate_queries_or_keys``: x ``[..., L, D]`` (D even), positions ``[L]`` -> ``[..., L, D]``.

    Channel pairs (2i, 2i+1) are turned by position x frequency, with frequencies
    ``10000 ** (-j / (D/2))``, j < D/2. The official code (``fixed_pairs=False``) lays the D/2
    frequencies out as ``[f_0..f_{D/2-1}, f_0..f_{D/2-1}]``, so the two channels of a pair get
    different frequencies; ``fixed_pairs=True`` gives both channels f_i (a true rotation).
    """
    return _rope_apply(x, *rope_tables(pos, x.shape[-1], x.dtype, x.device, fixed_pairs))


def rope_tables(
    pos: Tensor, d: int, dtype: torch.dtype, device: torch.device | str, fixed_pairs: bool = False
) -> tuple[Tensor, Tensor]:
    """cos and sin ``[L, d]`` (float32) of the angles ``rope_rotate`` turns a width-d slice of dtype
    ``dtype`` by, at positions ``[L]``. The frequencies are computed in ``dtype``, as the official code does."""
    if d % 2:
        raise WMError(f"rope_rotate: the rotated width must be even, found {d}")
    omega = torch.arange(d // 2, dtype=dtype, device=device) / (d / 2.0)
    omega = 1.0 / 10000**omega
    freq = pos.to(torch.float32)[:, None] * omega  # [L, D/2]; float32 like the official einsum
    if fixed_pairs:
        freq = freq.repeat_interleave(2, dim=-1)
    else:
        freq = freq.repeat(1, 2)
    return freq.cos(), freq.sin()


def _rope_apply(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    pairs = x.unflatten(-1, (-1, 2))
    turned = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    return (x * cos + turned * sin).to(x.dtype)


@dataclass(frozen=True)
class _Positions:
    """RoPE positions of a token sequence: frame, row and column ``[L]`` (float32)."""

    frame: Tensor
    row: Tensor
    col: Tensor


class _Rope:
    """The cos/sin tables of one forward call's positions, per part (frame, row, column) of width
    ``part``, computed once per dtype and shared by every layer and by queries and keys (the official
    code recomputes the same numbers in each call; sharing them changes no bit)."""

    def __init__(self, pos: _Positions, part: int, fixed_pairs: bool):
        self.pos, self.part, self.fixed_pairs = pos, part, fixed_pairs
        self._tables: dict[torch.dtype, list[tuple[Tensor, Tensor]]] = {}

    def tables(self, dtype: torch.dtype) -> list[tuple[Tensor, Tensor]]:
        if dtype not in self._tables:
            self._tables[dtype] = [rope_tables(where, self.part, dtype, where.device, self.fixed_pairs)
                                   for where in (self.pos.frame, self.pos.row, self.pos.col)]
        return self._tables[dtype]


# --------------------------------------------------------------------------------------------------
# modules (attribute names are the official ones, so state dicts line up)


class MLP(nn.Module):
    """fc1 -> GELU -> fc2 (``modules.MLP``)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLUFFN(nn.Module):
    """silu(fc1 x) * fc2 x -> fc3 (``modules.SwiGLUFFN``, used when ``use_silu``)."""

    def __init__(self, dim: int, hidden: int, wide_silu: bool):
        super().__init__()
        if wide_silu:
            hidden = (int(2 * hidden / 3) + 7) // 8 * 8
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(dim, hidden)
        self.act = nn.SiLU()
        self.fc3 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc3(F.silu(self.fc1(x)) * self.fc2(x))


class _LayerKV:
    """Keys and values of one layer, in buffers preallocated for ``capacity`` tokens."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.k: Tensor | None = None
        self.v: Tensor | None = None
        self.length = 0

    # Kept out of torch.compile (``compile=True``): tracing it would guard on ``length``, which grows
    # every step, and recompile each time; outside the graph the blocks compile once with dynamic shapes.
    @torch.compiler.disable
    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """k, v ``[B, heads, n, hd]`` -> all keys and values so far ``[B, heads, length + n, hd]``."""
        n = k.shape[2]
        if self.k is None or self.k.shape[:2] != k.shape[:2] or self.k.dtype != k.dtype or self.k.device != k.device:
            if self.length:
                raise WMError("KVCache: batch, dtype or device changed in the middle of a rollout; start a new cache")
            shape = (*k.shape[:2], self.capacity, k.shape[3])
            self.k = k.new_empty(shape)
            self.v = v.new_empty(shape)
        end = self.length + n
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class KVCache:
    """Per-layer keys/values of the frames fed so far, which sit at frame positions ``0..frames-1``.

    ``capacity`` frames at most (the predictor's ``max_frames`` unless less is asked for).
    """

    def __init__(self, depth: int, capacity: int, tokens_per_step: int):
        self.capacity = capacity
        self.frames = 0
        self.layers = [_LayerKV(capacity * tokens_per_step) for _ in range(depth)]

    def reset(self) -> None:
        """Forget every frame (buffers are kept for reuse)."""
        self.frames = 0
        for layer in self.layers:
            layer.length = 0


class ACAttention(nn.Module):
    """Multi-head self-attention with the official AC RoPE (``ACRoPEAttention``) or none
    (``Attention``, when ``use_rope=False``). Always ``scaled_dot_product_attention`` with its default
    scale, as the official ``use_sdpa=True`` path does."""

    def __init__(self, cfg: ACPredictorConfig):
        super().__init__()
        dim = cfg.predictor_embed_dim
        self.num_heads = cfg.num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=cfg.qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rope = cfg.use_rope
        self.fixed_pairs = cfg.rope_fixed_pairs
        self.part = 2 * ((cfg.head_dim // 3) // 2)  # each of frame, row, column

    def _rope(self, x: Tensor, rope: _Rope) -> Tensor:
        """Queries and keys together ``[2, B, h, L, hd]``: each part turned by its own positions."""
        p = self.part
        if p == 0:
            return x
        parts = [_rope_apply(x[..., i * p:(i + 1) * p], cos, sin) for i, (cos, sin) in enumerate(rope.tables(x.dtype))]
        return torch.cat([*parts, x[..., 3 * p:]], dim=-1)

    def forward(self, x: Tensor, rope: _Rope, mask: Tensor | None, kv: _LayerKV | None) -> Tensor:
        """x ``[B, L, C]`` -> ``[B, L, C]``; ``mask`` ``[L, L_all]`` (True = may attend) or None = all."""
        b, n, c = x.shape
        qkv = self.qkv(x).unflatten(-1, (3, self.num_heads, -1)).permute(2, 0, 3, 1, 4)  # [3, B, h, L, hd]
        if self.use_rope:
            (q, k), v = self._rope(qkv[:2], rope).unbind(0), qkv[2]
        else:
            q, k, v = qkv.unbind(0)
        if kv is not None:
            k, v = kv.append(k, v)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


class ACBlock(nn.Module):
    """Pre-norm transformer block (``modules.ACBlock``)."""

    def __init__(self, cfg: ACPredictorConfig):
        super().__init__()
        dim = cfg.predictor_embed_dim
        hidden = int(dim * cfg.mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.attn = ACAttention(cfg)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.mlp = SwiGLUFFN(dim, hidden, cfg.wide_silu) if cfg.use_silu else MLP(dim, hidden)

    def forward(self, x: Tensor, rope: _Rope, mask: Tensor | None, kv: _LayerKV | None) -> Tensor:
        x = x + self.attn(self.norm1(x), rope, mask, kv)
        return x + self.mlp(self.norm2(x))


class ACPredictor(nn.Module):
    """The V-JEPA 2-AC predictor (``VisionTransformerPredictorAC`` built by ``vit_ac_predictor``).

    ``forward(x [B, T*N, D], actions [B, T, A], states [B, T, A], extrinsics [B, T, A-1] | None)``
    -> ``[B, T*N, D]``: slot t is the prediction of frame t + 1. ``forward_frames`` does the same
    for frames appended to a ``KVCache``.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 256,
        patch_size: int = 16,
        num_frames: int = 64,
        tubelet_size: int = 2,
        embed_dim: int = 1408,
        predictor_embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_layer: Any = None,
        init_std: float = 0.02,
        uniform_power: bool = True,
        use_silu: bool = False,
        wide_silu: bool = True,
        is_frame_causal: bool = True,
        use_activation_checkpointing: bool = False,
        use_rope: bool = True,
        action_embed_dim: int = 7,
        use_extrinsics: bool = False,
        use_sdpa: bool = True,
        norm_eps: float = 1e-6,
        rope_fixed_pairs: bool = False,
    ):
        super().__init__()
        if norm_layer is not None:
            raise WMError(
                "ACPredictor: pass norm_eps instead of norm_layer (the official factory uses LayerNorm eps 1e-6)"
            )
        cfg = ACPredictorConfig(
            img_size=img_size, patch_size=patch_size, num_frames=num_frames, tubelet_size=tubelet_size,
            embed_dim=embed_dim, predictor_embed_dim=predictor_embed_dim, depth=depth, num_heads=num_heads,
            mlp_ratio=float(mlp_ratio), qkv_bias=qkv_bias, norm_eps=norm_eps, init_std=init_std, use_silu=use_silu,
            wide_silu=wide_silu, is_frame_causal=is_frame_causal, use_rope=use_rope,
            action_embed_dim=action_embed_dim, use_extrinsics=use_extrinsics, rope_fixed_pairs=rope_fixed_pairs,
        )
        self.config = cfg
        dp, a = predictor_embed_dim, action_embed_dim
        self.predictor_embed = nn.Linear(embed_dim, dp)
        self.action_encoder = nn.Linear(a, dp)
        self.state_encoder = nn.Linear(a, dp)
        self.extrinsics_encoder = nn.Linear(a - 1, dp)  # built even when unused, as upstream
        self.predictor_blocks = nn.ModuleList(ACBlock(cfg) for _ in range(depth))
        self.predictor_norm = nn.LayerNorm(dp, eps=norm_eps)
        self.predictor_proj = nn.Linear(dp, embed_dim)
        self.apply(self._init_weights)
        with torch.no_grad():  # the official depth rescaling of the residual branches
            for i, blk in enumerate(self.predictor_blocks, start=1):
                blk.attn.proj.weight.div_(math.sqrt(2.0 * i))
                blk.mlp.fc2.weight.div_(math.sqrt(2.0 * i))

    @classmethod
    def from_config(cls, cfg: ACPredictorConfig) -> "ACPredictor":
        kw = dataclasses.asdict(cfg)
        kw["img_size"] = tuple(cfg.img_size)
        return cls(**kw)

    def _init_weights(self, m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=self.config.init_std, a=-2.0, b=2.0)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # ----------------------------------------------------------------------------------------------

    def new_cache(self, frames: int | None = None) -> KVCache:
        """An empty KV cache for up to ``frames`` frames (default and at most: ``max_frames``)."""
        cfg = self.config
        frames = cfg.max_frames if frames is None else frames
        if not 1 <= frames <= cfg.max_frames:
            raise WMError(f"ACPredictor.new_cache: frames must be in 1..{cfg.max_frames} (the mask), found {frames}")
        return KVCache(cfg.depth, frames, cfg.cond_tokens + cfg.tokens_per_frame)

    def forward(self, x: Tensor, actions: Tensor, states: Tensor, extrinsics: Tensor | None = None) -> Tensor:
        """x ``[B, T*N, D]``, actions/states ``[B, T, A]``, extrinsics ``[B, T, A-1]`` (read only with
        ``use_extrinsics``) -> ``[B, T*N, D]``, slot t predicting frame t + 1 (full recompute)."""
        return self.forward_frames(x, actions, states, extrinsics, cache=None)

    def forward_frames(
        self,
        x: Tensor,
        actions: Tensor,
        states: Tensor,
        extrinsics: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> Tensor:
        """As ``forward`` for T new frames that follow the ``cache.frames`` frames already in ``cache``
        (their keys/values are appended). Returns the T new slots ``[B, T*N, D]``."""
        cfg = self.config
        n, k = cfg.tokens_per_frame, cfg.cond_tokens
        t = self._check_inputs(x, actions, states, extrinsics)
        t0 = 0 if cache is None else cache.frames
        limit = cfg.max_frames if cache is None else cache.capacity
        if t0 + t > limit:
            raise WMError(
                f"frames: {t0 + t} frames ({t0} cached + {t} new) exceed the {limit} the predictor takes "
                f"(its frame-causal mask covers num_frames // tubelet_size = {cfg.max_frames}); use a shorter "
                "context window"
            )
        b = x.shape[0]
        dtype = self.predictor_embed.weight.dtype
        z = self.predictor_embed(x.to(dtype)).view(b, t, n, -1)
        cond = [self.action_encoder(actions.to(dtype)), self.state_encoder(states.to(dtype))]
        if cfg.use_extrinsics:
            cond.append(self.extrinsics_encoder(extrinsics.to(dtype)))
        h = torch.cat([c.unsqueeze(2) for c in cond] + [z], dim=2).flatten(1, 2)  # [B, T*(K+N), Dp]

        rope = _Rope(self.rope_positions(t0, t, x.device), 2 * ((cfg.head_dim // 3) // 2), cfg.rope_fixed_pairs)
        frame_of = torch.arange(t0, t0 + t, device=x.device).repeat_interleave(k + n)
        mask = None
        # a single appended frame sees everything cached and itself: no mask needed; the full
        # recompute keeps the (all-true when T = 1) mask so that it takes the official kernel path
        if t > 1 or cache is None:
            keys_frame = torch.arange(t0 + t, device=x.device).repeat_interleave(k + n)
            mask = frame_of[:, None] >= keys_frame[None, :]
        lengths = None if cache is None else [layer.length for layer in cache.layers]
        try:
            for i, blk in enumerate(self.predictor_blocks):
                h = blk(h, rope, mask, None if cache is None else cache.layers[i])
        except BaseException:
            if cache is not None:  # leave the cache as it was, not half-appended
                for layer, length in zip(cache.layers, lengths):
                    layer.length = length
            raise
        if cache is not None:
            cache.frames = t0 + t
        h = h.view(b, t, k + n, -1)[:, :, k:].flatten(1, 2)
        return self.predictor_proj(self.predictor_norm(h))

    def rope_positions(self, t0: int, t: int, device: torch.device | str = "cpu") -> _Positions:
        """RoPE positions ``[t * (K + N)]`` of frames ``t0..t0+t-1``, token order as in the sequence:
        frame index; patch row and column (conditioning tokens: 0, i.e. not turned)."""
        cfg = self.config
        gh, gw = cfg.grid
        k = cfg.cond_tokens
        ids = torch.arange(gh * gw, device=device)
        # the official code scales patch rows/columns to its grid_size (= grid height) in float32
        row = torch.cat([torch.zeros(k, device=device), (ids // gw).float() * (gh / gh)])
        col = torch.cat([torch.zeros(k, device=device), (ids % gw).float() * (gh / gw)])
        frame = torch.arange(t0, t0 + t, device=device, dtype=torch.float32).repeat_interleave(k + gh * gw)
        # conditioning tokens: row = col = 0, i.e. cos 1 and sin 0: left exactly as they are
        return _Positions(frame, row.repeat(t), col.repeat(t))

    def _check_inputs(self, x: Tensor, actions: Tensor, states: Tensor, extrinsics: Tensor | None) -> int:
        cfg = self.config
        n, a = cfg.tokens_per_frame, cfg.action_embed_dim
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[2] != cfg.embed_dim or x.shape[1] % n or not x.shape[1]:
            found = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise WMError(f"x: expected [B, T*{n}, {cfg.embed_dim}] (T >= 1 frames of {n} tokens), found {found}")
        b, t = x.shape[0], x.shape[1] // n
        for name, v, width in (("actions", actions, a), ("states", states, a)) + (
            (("extrinsics", extrinsics, a - 1),) if cfg.use_extrinsics else ()
        ):
            if not isinstance(v, Tensor) or tuple(v.shape) != (b, t, width):
                found = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
                raise WMError(f"{name}: expected [B={b}, T={t}, {width}] for {t} frame(s), found {found}")
        return t


def frame_causal_mask(frames: int, height: int, width: int, add_tokens: int = 2) -> Tensor:
    """``build_action_block_causal_attention_mask``: bool ``[L, L]``, L = frames * (add_tokens + H*W),
    True where a token may attend (its own frame and earlier ones). ``ACPredictor`` builds the same
    mask on the fly; this is the reference."""
    per = add_tokens + height * width
    f = torch.arange(frames).repeat_interleave(per)
    return f[:, None] >= f[None, :]


# --------------------------------------------------------------------------------------------------
# poses: the official compute_new_pose in torch (scipy's extrinsic "xyz" Euler convention)


def _quat_mul(p: Tensor, q: Tensor) -> Tensor:
    """Hamilton product of quaternions ``[..., 4]`` (x, y, z, w): the rotation p after q."""
    px, py, pz, pw = p.unbind(-1)
    qx, qy, qz, qw = q.unbind(-1)
    return torch.stack([
        pw * qx + qw * px + py * qz - pz * qy,
        pw * qy + qw * py + pz * qx - px * qz,
        pw * qz + qw * pz + px * qy - py * qx,
        pw * qw - px * qx - py * qy - pz * qz,
    ], -1)


def quat_from_euler_xyz(angles: Tensor) -> Tensor:
    """Extrinsic x-y-z Euler angles ``[..., 3]`` (radians) -> quaternion ``[..., 4]`` (x, y, z, w):
    scipy's ``Rotation.from_euler("xyz", angles)``, i.e. R = Rz(a2) Ry(a1) Rx(a0)."""
    half = angles / 2
    c, s = half.cos(), half.sin()
    zero = torch.zeros_like(c[..., 0])
    qx = torch.stack([s[..., 0], zero, zero, c[..., 0]], -1)
    qy = torch.stack([zero, s[..., 1], zero, c[..., 1]], -1)
    qz = torch.stack([zero, zero, s[..., 2], c[..., 2]], -1)
    return _quat_mul(qz, _quat_mul(qy, qx))


def euler_xyz_from_quat(q: Tensor) -> Tensor:
    """Quaternion ``[..., 4]`` (x, y, z, w) -> extrinsic x-y-z Euler angles ``[..., 3]``, as scipy's
    ``Rotation.as_euler("xyz")`` computes them (its quaternion method): first and last angle in
    [-pi, pi), middle in [-pi/2, pi/2]; at gimbal lock the last angle is 0."""
    x, y, z, w = q.unbind(-1)
    a, b, c, d = w - y, x + z, y + w, z - x  # axes (0, 1, 2), extrinsic, sign +1
    mid = 2 * torch.atan2(torch.hypot(c, d), torch.hypot(a, b))
    half_sum, half_diff = torch.atan2(b, a), torch.atan2(d, c)
    near0 = mid.abs() <= 1e-7
    near_pi = (mid - math.pi).abs() <= 1e-7
    regular = ~(near0 | near_pi)
    first = torch.where(regular, half_sum - half_diff, torch.where(near0, 2 * half_sum, -2 * half_diff))
    last = torch.where(regular, half_sum + half_diff, torch.zeros_like(mid))
    angles = torch.stack([first, mid - math.pi / 2, last], -1)
    return torch.remainder(angles + math.pi, 2 * math.pi) - math.pi


def compose_pose_deltas(actions: Tensor) -> Tensor:
    """f consecutive pose deltas ``[..., f, 7]`` -> the one delta ``[..., 7]`` between the first and
    the last pose (what ``poses_to_diffs`` gives on states subsampled by f): positions and gripper add
    up, rotations compose (R_f ... R_1)."""
    a = actions.double()
    q = quat_from_euler_xyz(a[..., 0, 3:6])
    for i in range(1, a.shape[-2]):
        q = _quat_mul(quat_from_euler_xyz(a[..., i, 3:6]), q)
    out = torch.cat([a[..., :3].sum(-2), euler_xyz_from_quat(q), a[..., 6:].sum(-2)], -1)
    return out.to(actions.dtype)


def compute_new_pose(pose: Tensor, action: Tensor) -> Tensor:
    """The official ``compute_new_pose``: pose and delta ``[..., 7]`` -> next pose ``[..., 7]``.

    xyz + delta; orientation R_delta @ R_pose in extrinsic "xyz" Euler angles; gripper
    clip(g + delta, 0, 1). Computed in float64 (as the official numpy code), returned in pose's dtype.
    """
    p, a = pose.double(), action.double()
    q = _quat_mul(quat_from_euler_xyz(a[..., 3:6]), quat_from_euler_xyz(p[..., 3:6]))
    out = torch.cat([p[..., :3] + a[..., :3], euler_xyz_from_quat(q), (p[..., 6:] + a[..., 6:]).clamp(0, 1)], -1)
    return out.to(pose.dtype)


# --------------------------------------------------------------------------------------------------
# the WorldModel adapter


def ac_preprocess(frames: Tensor, size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Tensor:
    """uint8 frames ``[..., H, W, 3]`` -> float32 ``[..., 3, size, size]`` as the official DROID
    evaluation transform does it (``app/vjepa_droid/transforms.py`` with scale = ratio = 1): the central
    square of side min(H, W), bilinearly resized (no antialiasing) to ``size``, then
    (x - 255 mean) / (255 std) on 0..255 values. (Unlike ``wmcore.video.preprocess``, the classifier
    recipe, there is no resize to 292 and crop.)"""
    if not isinstance(frames, Tensor) or frames.dtype != torch.uint8 or frames.dim() < 3 or frames.shape[-1] != 3:
        found = f"{frames.dtype} {tuple(frames.shape)}" if isinstance(frames, Tensor) else type(frames).__name__
        raise WMError(f"frames: expected uint8 RGB [..., H, W, 3], found {found}")
    *lead, h, w, _ = frames.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = frames.reshape(-1, h, w, 3)[:, top:top + side, left:left + side].permute(0, 3, 1, 2).float()
    if side != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(3, 1, 1) * 255
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(3, 1, 1) * 255
    return ((x - m) / s).reshape(*lead, 3, size, size)


@dataclass
class ACRolloutCache:
    """What ``VJEPA2ACWorldModel.step`` carries: the predictor's KV cache and, for re-encoding when
    the window slides, the frames in it (latent ``[B, N, D]``, action ``[B, 7]``, state ``[B, 7]``)."""

    window: int
    kv: KVCache
    frames: list[tuple[Tensor, Tensor, Tensor]] = dataclasses.field(default_factory=list)


class VJEPA2ACWorldModel:
    """A frozen V-JEPA 2-AC predictor (and optionally its encoder) as a ``wmcore`` WorldModel.

    ``encoder``: any callable taking clips ``[B', 3, tubelet_size, S, S]`` (the official video ViT's
    layout; each frame repeated as a tubelet) and returning ``[B', N, D]``, e.g. ``VJEPA2VideoEncoder``
    (transformers' VJEPA2Model); None = predict only.
    ``frameskip`` f: one model step is f recorded steps; its action ``[7 f]`` (f recorded pose deltas,
    concatenated) is composed into the single delta the predictor reads.
    ``compile``: ``torch.compile`` the predictor's blocks (dynamic shapes: the cached keys grow every
    step) and a module encoder, in place. Off by default: it pays on GPUs, its first calls are slow,
    and the numbers differ from eager ones by rounding only.

    Precision: whatever ``to(device, dtype)`` sets (float32 on CPU; bfloat16 on GPUs). Attention is
    ``scaled_dot_product_attention`` with the block-causal mask as a boolean mask (no mask for a single
    appended frame), in the predictor and, through transformers' "sdpa" implementation, in the encoder.
    """

    def __init__(
        self,
        predictor: ACPredictor,
        encoder: Callable[[Tensor], Tensor] | None = None,
        *,
        name: str = "vjepa2-ac",
        frameskip: int = 1,
        normalize_reps: bool = True,
        compile: bool = False,
    ):
        cfg = predictor.config
        if cfg.use_extrinsics:
            raise WMError(
                "VJEPA2ACWorldModel: a predictor with use_extrinsics=True needs camera extrinsics, which the "
                "WorldModel protocol does not carry (the released model has use_extrinsics=False)"
            )
        if isinstance(frameskip, bool) or not isinstance(frameskip, int) or frameskip < 1:
            raise WMError(f"VJEPA2ACWorldModel: frameskip must be an int >= 1, found {frameskip!r}")
        if frameskip > 1 and cfg.action_embed_dim != POSE_DIM:
            raise WMError(
                f"VJEPA2ACWorldModel: frameskip {frameskip} composes 7-d pose deltas; this predictor takes "
                f"{cfg.action_embed_dim}-d actions"
            )
        self.predictor = predictor.eval().requires_grad_(False)
        self.encoder = encoder
        if isinstance(encoder, nn.Module):
            encoder.eval().requires_grad_(False)
        self.cfg = cfg
        self.name = name
        self.frameskip = frameskip
        self.normalize_reps = normalize_reps
        self.action_dim = cfg.action_embed_dim * frameskip
        self.state_dim = cfg.action_embed_dim
        self.tokens_per_frame = cfg.tokens_per_frame
        self.max_context = cfg.max_frames
        self.compiled = bool(compile)
        if compile:
            for blk in self.predictor.predictor_blocks:
                blk.compile(dynamic=True)
            if isinstance(encoder, nn.Module):
                encoder.compile()

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "VJEPA2ACWorldModel":
        self.predictor.to(device=device, dtype=dtype)
        if isinstance(self.encoder, nn.Module):
            self.encoder.to(device=device, dtype=dtype)
        return self

    @property
    def _param(self) -> Tensor:
        return self.predictor.predictor_embed.weight

    def _norm(self, z: Tensor) -> Tensor:
        return F.layer_norm(z, (z.shape[-1],)) if self.normalize_reps else z

    # -- WorldModel

    def encode(self, frames: Tensor, chunk: int = 16) -> Tensor:
        """uint8 frames ``[B, T, H, W, 3]`` -> latents ``[B, T, N, D]`` (layer-normed), on the frames' device."""
        if self.encoder is None:
            raise WMError(f"model {self.name!r}: no encoder was given, so it cannot encode frames; pass latents")
        if not isinstance(frames, Tensor) or frames.dim() != 5:
            found = tuple(frames.shape) if isinstance(frames, Tensor) else type(frames).__name__
            raise WMError(f"frames: expected uint8 [B, T, H, W, 3], found {found}")
        b, t = frames.shape[:2]
        s, n, d = self.cfg.img_size[0], self.tokens_per_frame, self.cfg.embed_dim
        if self.cfg.img_size[0] != self.cfg.img_size[1]:
            raise WMError(
                f"encode: the official transform crops squares; this predictor has img_size {self.cfg.img_size}"
            )
        p = self._param
        if isinstance(self.encoder, nn.Module):
            p = next(iter(self.encoder.parameters()), p)
        out = []
        with torch.inference_mode():
            pix = ac_preprocess(frames, s).flatten(0, 1)  # [B*T, 3, S, S]
            for i in range(0, len(pix), chunk):
                clip = pix[i:i + chunk].to(p.device, p.dtype).unsqueeze(2).repeat(1, 1, self.cfg.tubelet_size, 1, 1)
                h = self.encoder(clip)
                if not isinstance(h, Tensor) or tuple(h.shape) != (len(clip), n, d):
                    found = tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__
                    raise WMError(
                        f"encoder: expected output [{len(clip)}, {n}, {d}] for {len(clip)} clips, found {found}"
                    )
                out.append(self._norm(h))
        return torch.cat(out).reshape(b, t, n, d).to(frames.device)

    def predict(self, context: Tensor, actions: Tensor, states: Tensor | None = None) -> Tensor:
        """context ``[B, Tc, N, D]``, actions ``[B, Tc, A]``, states ``[B, Tc, 7]`` -> ``[B, N, D]``
        (full recompute over the Tc frames, positions 0..Tc-1; the prediction is layer-normed)."""
        x, a, s = self._check(context, actions, states)
        with torch.inference_mode():
            z = self.predictor(x.flatten(1, 2), a, s)[:, -self.tokens_per_frame:]
            z = self._output(z, x[:, -1])
        return z.to(context.device, context.dtype)

    def start(self, batch: int, window: int | None) -> ACRolloutCache:
        """An empty rollout cache keeping at most ``window`` frames (None: ``max_context``)."""
        w = self.max_context if window is None else window
        if not 1 <= w <= self.max_context:
            raise WMError(f"window: expected 1..{self.max_context} frames (max_context) or None, found {window}")
        return ACRolloutCache(window=w, kv=self.predictor.new_cache(w))

    def step(
        self, cache: ACRolloutCache, latent: Tensor, action: Tensor, state: Tensor | None = None
    ) -> tuple[Tensor, ACRolloutCache]:
        """Append frame latent ``[B, N, D]`` with its action ``[B, A]`` and state ``[B, 7]``; return the
        next latent ``[B, N, D]`` (= ``predict`` on the last ``window`` frames) and the cache.

        Costs one frame's tokens while the window fills; once it is full, the window is re-encoded from
        position 0 (exactness needs it: dropping the oldest frame changes every later frame's states)."""
        if not isinstance(cache, ACRolloutCache):
            raise WMError(f"cache: expected the ACRolloutCache from start(), found {type(cache).__name__}")
        x, a, s = self._check(latent[:, None], action[:, None], None if state is None else state[:, None])
        cache.frames.append((x[:, 0], a[:, 0], s[:, 0]))
        with torch.inference_mode():
            if len(cache.frames) > cache.window:
                del cache.frames[0]
                cache.kv.reset()
                lat, act, st = (torch.stack(v, 1) for v in zip(*cache.frames))
                z = self.predictor.forward_frames(lat.flatten(1, 2), act, st, cache=cache.kv)
            else:
                z = self.predictor.forward_frames(x.flatten(1, 2), a, s, cache=cache.kv)
            z = self._output(z[:, -self.tokens_per_frame:], x[:, 0])
        return z.to(latent.device, latent.dtype), cache

    def propagate_state(self, state: Tensor, action: Tensor) -> Tensor:
        """state ``[B, 7]``, action ``[B, 7 f]`` -> next state ``[B, 7]`` (official ``compute_new_pose``)."""
        if self.state_dim != POSE_DIM:
            raise WMError(f"propagate_state: defined for 7-d poses, this predictor takes {self.state_dim}-d states")
        if not isinstance(state, Tensor) or state.dim() != 2 or state.shape[1] != POSE_DIM:
            raise WMError(f"state: expected [B, 7] (x, y, z, roll, pitch, yaw, gripper), found {_shape(state)}")
        self._check_action_width(action, "action")
        return compute_new_pose(state, self._merge_actions(action))

    def fingerprint(self) -> str:
        """sha256 of the predictor's (and a module encoder's) weights and of what shapes predictions."""
        state = {f"predictor.{k}": v for k, v in self.predictor.state_dict().items()}
        config: dict[str, Any] = {"predictor": self.cfg.to_json(), "frameskip": self.frameskip,
                                  "normalize_reps": self.normalize_reps, **self._extra_config()}
        if isinstance(self.encoder, nn.Module):
            state.update({f"encoder.{k}": v for k, v in self.encoder.state_dict().items()})
            if isinstance(self.encoder, VJEPA2VideoEncoder):  # what the weights do not say (heads, image size)
                config["encoder"] = self.encoder.describe()
        elif self.encoder is not None:
            config["encoder"] = f"{type(self.encoder).__module__}.{type(self.encoder).__qualname__}"
        return _fingerprint(state, config)

    def config(self) -> dict:
        d = {"name": self.name, "frameskip": self.frameskip, "normalize_reps": self.normalize_reps,
             "predictor": self.cfg.to_json(), "compile": self.compiled, **self._extra_config()}
        if isinstance(self.encoder, VJEPA2VideoEncoder):
            d["encoder"] = self.encoder.describe()
        elif self.encoder is not None:
            d["encoder"] = f"{type(self.encoder).__module__}.{type(self.encoder).__qualname__}"
        return d

    def _output(self, z: Tensor, last: Tensor) -> Tensor:
        """The predicted latent from the predictor's output ``z [B, N, D]`` for the frame after ``last``
        (the official model: ``z`` itself, layer-normed)."""
        return self._norm(z)

    def _extra_config(self) -> dict:
        """What a subclass adds to ``config()`` and the fingerprint (how it reads actions and states)."""
        return {}

    # -- checks

    def _merge_actions(self, a: Tensor) -> Tensor:
        f = self.frameskip
        return a if f == 1 else compose_pose_deltas(a.unflatten(-1, (f, POSE_DIM)))

    def _check_action_width(self, a: Tensor, name: str) -> None:
        if not isinstance(a, Tensor) or a.shape[-1:] != (self.action_dim,):
            hint = f" ({self.frameskip} x 7-d pose deltas)" if self.frameskip > 1 else ""
            raise WMError(
                f"{name}: model {self.name!r} takes action_dim {self.action_dim}{hint}, found shape {_shape(a)}"
            )

    def _check(self, context: Tensor, actions: Tensor, states: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        n, d = self.tokens_per_frame, self.cfg.embed_dim
        ok = isinstance(context, Tensor) and context.dim() == 4 and tuple(context.shape[2:]) == (n, d)
        if not ok or not context.shape[1]:
            raise WMError(f"context: expected [B, Tc >= 1, {n}, {d}], found {_shape(context)}")
        b, t = context.shape[:2]
        if t > self.max_context:
            raise WMError(
                f"context: {t} frames exceed model {self.name!r}'s max_context {self.max_context} (the official "
                "frame-causal mask covers num_frames // tubelet_size frames); pass a window <= max_context"
            )
        self._check_action_width(actions, "actions")
        if actions.dim() != 3 or tuple(actions.shape[:2]) != (b, t):
            raise WMError(f"actions: expected [B={b}, Tc={t}, {self.action_dim}], found {_shape(actions)}")
        p = self._param
        return (context.to(p.device, p.dtype), self._merge_actions(actions).to(p.device, p.dtype),
                self._state_tokens(states, b, t).to(p.device, p.dtype))

    def _state_tokens(self, states: Tensor | None, b: int, t: int) -> Tensor:
        """The predictor's state input ``[B, Tc, action_embed_dim]`` from the caller's ``states``."""
        if states is None:
            raise WMError(
                f"states: model {self.name!r} reads the end-effector state [x, y, z, roll, pitch, yaw, gripper] "
                "of every context frame; none were given (pass states, or use a dataset that records them)"
            )
        if not isinstance(states, Tensor) or states.dim() != 3 or tuple(states.shape) != (b, t, self.state_dim):
            raise WMError(f"states: expected [B={b}, Tc={t}, {self.state_dim}], found {_shape(states)}")
        return states


def _shape(x: Any) -> str:
    return str(tuple(x.shape)) if isinstance(x, Tensor) else type(x).__name__


# --------------------------------------------------------------------------------------------------
# official checkpoints


def clean_keys(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The official ``_clean_backbone_key``: drop every ``module.`` and ``backbone.`` in the names."""
    return {k.replace("module.", "").replace("backbone.", ""): v for k, v in state.items()}


def load_predictor_state(
    predictor: ACPredictor, state: Mapping[str, Tensor], source: str = "state dict"
) -> ACPredictor:
    """Load ``state`` into ``predictor`` strictly; missing, unexpected or misshapen tensors raise
    WMError listing them (names after ``clean_keys``)."""
    state = clean_keys(state)
    expected = predictor.state_dict()
    wrong = state_mismatch(state, expected)
    if wrong:
        raise WMError(f"{source}: does not match the V-JEPA 2-AC predictor — {wrong}")
    predictor.load_state_dict(state, strict=True)
    return predictor


def infer_predictor_kwargs(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """What a predictor state dict fixes: embed_dim, predictor_embed_dim, action_embed_dim, depth,
    mlp_ratio, use_silu, qkv_bias (image size, frames and heads are not in the weights)."""
    state = clean_keys(state)
    kw: dict[str, Any] = {}
    if isinstance(state.get("predictor_embed.weight"), Tensor) and state["predictor_embed.weight"].dim() == 2:
        kw["predictor_embed_dim"], kw["embed_dim"] = state["predictor_embed.weight"].shape
    if isinstance(state.get("action_encoder.weight"), Tensor) and state["action_encoder.weight"].dim() == 2:
        kw["action_embed_dim"] = state["action_encoder.weight"].shape[1]
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("predictor_blocks.") and k.split(".")[1].isdigit()}
    if blocks:
        kw["depth"] = max(blocks) + 1
    kw["use_silu"] = "predictor_blocks.0.mlp.fc3.weight" in state
    fc1 = state.get("predictor_blocks.0.mlp.fc1.weight")
    if isinstance(fc1, Tensor) and fc1.dim() == 2 and not kw["use_silu"]:
        kw["mlp_ratio"] = fc1.shape[0] / fc1.shape[1]
    if blocks:
        kw["qkv_bias"] = "predictor_blocks.0.attn.qkv.bias" in state
    return kw


def _read_checkpoint(path: str | Path, device: str | torch.device) -> tuple[Path, dict]:
    """The checkpoint dict of an official file, its ``"predictor"`` checked to be a state dict."""
    p = Path(path)
    if not p.is_file():
        raise WMError(
            f"{p}: no such file; expected an official V-JEPA 2-AC checkpoint (.pt with 'encoder' and 'predictor')"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ckpt = torch.load(io.BytesIO(p.read_bytes()), map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to read is the file's fault
        raise read_error(p, e, "the checkpoint") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("predictor"), dict):
        found = sorted(map(str, ckpt))[:20] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise WMError(
            f"{p}: expected a dict with a 'predictor' state dict (and 'encoder'), as the official "
            f"vjepa2-ac-vitg.pt; found {'keys ' + str(found) if isinstance(ckpt, dict) else found}"
        )
    bad = [k for k, v in ckpt["predictor"].items() if not isinstance(v, Tensor)]
    if bad:
        raise WMError(f"{p}: 'predictor' holds non-tensor entries {key_list(sorted(map(str, bad)))}")
    return p, ckpt


def _build_predictor(p: Path, pred_state: Mapping[str, Tensor], kwargs: Mapping[str, Any]) -> ACPredictor:
    kw = {**infer_predictor_kwargs(pred_state), **kwargs}
    try:
        predictor = ACPredictor(**kw)
    except TypeError as e:
        raise WMError(f"{p}: bad predictor arguments ({e})") from None
    return load_predictor_state(predictor, pred_state, source=f"{p} ['predictor']")


def load_official_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", **predictor_kwargs: Any
) -> tuple[ACPredictor, dict[str, Tensor] | None]:
    """An official V-JEPA 2-AC checkpoint (``vjepa2-ac-vitg.pt``: a dict with ``"encoder"`` and
    ``"predictor"`` state dicts) -> (predictor loaded strictly, in eval mode; the encoder's state dict
    with ``module.``/``backbone.`` removed, or None if the file has none).

    The predictor's architecture comes from the weights' shapes (``infer_predictor_kwargs``) and, for
    what they do not fix, from ``predictor_kwargs`` or the released defaults (256 px, patch 16,
    num_frames 64, tubelet 2, 16 heads). Read with ``torch.load(weights_only=True)``: no pickled code runs.
    """
    p, ckpt = _read_checkpoint(path, device)
    predictor = _build_predictor(p, ckpt["predictor"], predictor_kwargs)
    enc = ckpt.get("encoder")
    enc_state = clean_keys(enc) if isinstance(enc, dict) else None
    return predictor.to(device).eval(), enc_state


# --------------------------------------------------------------------------------------------------
# the encoder: transformers' VJEPA2Model (its video ViT; the HF predictor is not used)

# Heads of the official video ViTs by width (``src/models/vision_transformer.py``); the weights do not
# say. vit_large and vit_huge: 16; vit_giant_xformers, the ViT-g of V-JEPA 2 and of 2-AC (hub
# ``ARCH_NAME_MAP["vit_ac_giant"]``, and transformers' converter for vit_giant): 22; vit_gigantic_xformers: 26.
ENCODER_HEADS: dict[int, int] = {1024: 16, 1280: 16, 1408: 22, 1664: 26}

# Official names inside block i -> VJEPA2Model's inside encoder.layer.i (qkv is split, see below).
_BLOCK_NAMES = {"norm1": "norm1", "attn.proj": "attention.proj", "norm2": "norm2", "mlp.fc1": "mlp.fc1",
                "mlp.fc2": "mlp.fc2"}
# Official keys that the official AC loader (``encoder.load_state_dict(..., strict=False)`` with
# use_rope=True) leaves unused: a position table from a pretraining without RoPE.
_IGNORED_ENCODER_KEYS = ("pos_embed",)


class VJEPA2VideoEncoder(nn.Module):
    """The encoder half of transformers' ``VJEPA2Model`` as the adapter's encoder: clips
    ``[B', 3, T, S, S]`` (the official layout) -> last hidden state ``[B', (T / tubelet) (S / p)^2, D]``,
    after the final layer norm, as the official ``VisionTransformer`` returns it.

    ``encoder`` is ``VJEPA2Model(config).encoder``, so the state-dict names are VJEPA2Model's
    (``encoder.embeddings.patch_embeddings.proj``, ``encoder.layer.{i}.attention.query``, ...).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.config = model.config
        self.encoder = model.encoder

    def forward(self, clip: Tensor) -> Tensor:
        # transformers reads [B, T, C, H, W] and permutes back to the Conv3d's [B, C, T, H, W]
        return self.encoder(pixel_values_videos=clip.transpose(1, 2)).last_hidden_state

    def describe(self) -> dict:
        c = self.config
        return {"class": "transformers.VJEPA2Model.encoder", "hidden_size": c.hidden_size,
                "num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
                "mlp_ratio": c.mlp_ratio, "patch_size": _patch(c), "tubelet_size": c.tubelet_size,
                "crop_size": c.crop_size, "layer_norm_eps": c.layer_norm_eps, "qkv_bias": c.qkv_bias,
                "hidden_act": c.hidden_act}


def _patch(c: Any) -> int | tuple:
    p = c.patch_size
    if isinstance(p, (list, tuple)):
        return int(p[0]) if len(p) == 2 and p[0] == p[1] else tuple(p)
    return p


@contextlib.contextmanager
def _quiet_transformers():
    """No load report or progress bar from transformers: wmcore reports what is missing itself."""
    from transformers.utils import logging as hf_logging

    level, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bar:
            hf_logging.enable_progress_bar()


def official_encoder_to_vjepa2(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Official encoder names (after ``clean_keys``) -> transformers VJEPA2Model names, as transformers'
    ``convert_vjepa2_to_hf.py`` maps them:

        patch_embed.proj.*          -> encoder.embeddings.patch_embeddings.proj.*
        blocks.{i}.attn.qkv.*       -> encoder.layer.{i}.attention.{query,key,value}.* (rows [0:D], [D:2D], [2D:3D])
        blocks.{i}.attn.proj.*      -> encoder.layer.{i}.attention.proj.*
        blocks.{i}.{norm1,norm2,mlp.fc1,mlp.fc2}.* -> encoder.layer.{i}.(same).*
        norm.*                      -> encoder.layernorm.*

    Names without a counterpart are kept as they are (a strict load then lists them)."""
    out: dict[str, Tensor] = {}
    for key, v in state.items():
        parts = key.split(".")
        leaf = parts[-1]
        if key.startswith("patch_embed.proj."):
            out["encoder.embeddings.patch_embeddings.proj." + leaf] = v
        elif parts[0] == "norm" and len(parts) == 2:
            out["encoder.layernorm." + leaf] = v
        elif parts[0] == "blocks" and len(parts) >= 4 and parts[1].isdigit():
            inner = ".".join(parts[2:-1])
            base = f"encoder.layer.{parts[1]}."
            if inner == "attn.qkv" and v.shape[0] % 3 == 0:
                for name, chunk in zip(("query", "key", "value"), v.chunk(3, dim=0)):
                    out[f"{base}attention.{name}.{leaf}"] = chunk
            elif inner in _BLOCK_NAMES:
                out[f"{base}{_BLOCK_NAMES[inner]}.{leaf}"] = v
            else:
                out[key] = v
        else:
            out[key] = v
    return out


def _official_encoder_layout(expected: Mapping[str, Tensor]) -> dict[str, tuple[int, ...]]:
    """VJEPA2Model encoder state (names -> tensors) -> the official key -> shape it corresponds to."""
    rev_block = {v: k for k, v in _BLOCK_NAMES.items()}
    out: dict[str, tuple[int, ...]] = {}
    for key, v in expected.items():
        parts = key.split(".")
        leaf, shape = parts[-1], tuple(v.shape)
        if key.startswith("encoder.embeddings.patch_embeddings.proj."):
            out["patch_embed.proj." + leaf] = shape
        elif key.startswith("encoder.layernorm."):
            out["norm." + leaf] = shape
        elif key.startswith("encoder.layer."):
            inner = ".".join(parts[3:-1])
            base = f"blocks.{parts[2]}."
            if inner == "attention.query":
                out[f"{base}attn.qkv.{leaf}"] = (3 * shape[0], *shape[1:])
            elif inner in ("attention.key", "attention.value"):
                continue
            else:
                out[f"{base}{rev_block[inner]}.{leaf}"] = shape
        else:  # pragma: no cover - a transformers version with other names
            raise WMError(f"transformers VJEPA2Model has an encoder tensor wmcore cannot map: {key}")
    return out


def vjepa2_encoder_config(
    state: Mapping[str, Tensor], img_size: int, num_frames: int = 64, num_heads: int | None = None,
    source: str = "encoder state dict",
):
    """The ``VJEPA2Config`` of an official encoder state dict (names after ``clean_keys``): width, input
    channels, tubelet and patch from ``patch_embed.proj.weight`` ``[D, C, tubelet, p, p]``, depth from
    the ``blocks.{i}``, MLP ratio from ``blocks.0.mlp.fc1``, qkv bias; what the weights do not fix:
    ``img_size`` (the RoPE grid), ``num_frames``, and the heads (``num_heads``, else ``ENCODER_HEADS``
    by width). RoPE, GELU, LayerNorm eps 1e-6: as the official video ViTs."""
    from transformers import VJEPA2Config

    w = state.get("patch_embed.proj.weight")
    if not isinstance(w, Tensor) or w.dim() != 5 or w.shape[3] != w.shape[4]:
        found = tuple(w.shape) if isinstance(w, Tensor) else "nothing"
        raise WMError(
            f"{source}: cannot tell the encoder's shape: expected patch_embed.proj.weight [D, 3, tubelet, p, p] "
            f"(an official video ViT), found {found}; keys: {key_list(sorted(state), 6)}"
        )
    hidden, chans, tubelet, patch = int(w.shape[0]), int(w.shape[1]), int(w.shape[2]), int(w.shape[3])
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    depth = max(blocks) + 1 if blocks else 0
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    mlp_ratio = fc1.shape[0] / hidden if isinstance(fc1, Tensor) and fc1.dim() == 2 else 4.0
    if int(hidden * mlp_ratio) != round(hidden * mlp_ratio):  # transformers takes int(hidden * ratio)
        mlp_ratio = (round(hidden * mlp_ratio) + 0.5) / hidden
    if num_heads is None:
        if hidden not in ENCODER_HEADS:
            raise WMError(
                f"{source}: an encoder of width {hidden} is none of the official video ViTs "
                f"{sorted(ENCODER_HEADS)}; its number of heads is not in the weights: pass encoder_heads=H"
            )
        num_heads = ENCODER_HEADS[hidden]
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1 or hidden % num_heads:
        raise WMError(f"{source}: encoder heads must be a positive divisor of the width {hidden}, found {num_heads!r}")
    return VJEPA2Config(
        crop_size=int(img_size), patch_size=patch, frames_per_clip=int(num_frames), tubelet_size=tubelet,
        in_chans=chans, hidden_size=hidden, num_attention_heads=num_heads, num_hidden_layers=depth,
        mlp_ratio=float(mlp_ratio), qkv_bias="blocks.0.attn.qkv.bias" in state or not blocks,
        layer_norm_eps=1e-6, hidden_act="gelu",
    )


def encoder_from_official_state(
    state: Mapping[str, Tensor], img_size: int = 256, num_frames: int = 64, num_heads: int | None = None,
    device: str | torch.device = "cpu", source: str = "encoder state dict",
) -> VJEPA2VideoEncoder:
    """An official encoder state dict (``vjepa2-ac-vitg.pt``'s ``"encoder"``; ``module.``/``backbone.``
    are removed) -> transformers' VJEPA2Model encoder with those weights (``official_encoder_to_vjepa2``),
    in eval mode. Strict: missing, unexpected or misshapen tensors raise WMError listing them under
    their official names; ``pos_embed`` alone is ignored, as the official loader does with RoPE."""
    from transformers import VJEPA2Model

    state = {k: v for k, v in clean_keys(state).items() if k not in _IGNORED_ENCODER_KEYS}
    bad = sorted(k for k, v in state.items() if not isinstance(v, Tensor))
    if bad:
        raise WMError(f"{source}: holds non-tensor entries {key_list(bad)}")
    config = vjepa2_encoder_config(state, img_size, num_frames, num_heads, source)
    with torch.device("meta"), _quiet_transformers():  # shapes only: no init of ~1B parameters
        encoder = VJEPA2VideoEncoder(VJEPA2Model(config))
    wrong = state_mismatch(state, _official_encoder_layout(encoder.state_dict()))
    if wrong:
        raise WMError(
            f"{source}: does not match the official video ViT it looks like (width {config.hidden_size}, "
            f"{config.num_hidden_layers} blocks) — {wrong}"
        )
    encoder.to_empty(device=device)
    encoder.load_state_dict(official_encoder_to_vjepa2(state), strict=True)
    return encoder.eval()


def load_vjepa2_encoder(directory: str | Path, device: str | torch.device = "cpu") -> VJEPA2VideoEncoder:
    """A transformers-format directory (``config.json`` with model_type "vjepa2" + weights, e.g.
    ``facebook/vjepa2-vitg-fpc64-256`` saved with ``save_pretrained``) -> its VJEPA2Model encoder,
    float32, eval mode. Read with ``from_pretrained(local_files_only=True)``; encoder tensors missing
    from the weights (which transformers would initialise at random) raise WMError listing them."""
    d = Path(directory)
    want = "a transformers VJEPA2Model directory (config.json with model_type 'vjepa2' + weights)"
    if not d.is_dir():
        raise WMError(f"{d}: not a directory; expected {want}")
    cpath = d / "config.json"
    if not cpath.is_file():
        raise WMError(f"{d}: no config.json; expected {want}")
    try:
        raw = json.loads(cpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WMError(f"{cpath}: not readable JSON ({e})") from None
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    if model_type != "vjepa2":
        arch = raw.get("architectures") if isinstance(raw, dict) else None
        raise WMError(
            f"{cpath}: model_type {model_type!r}" + (f" (architectures {arch})" if arch else "")
            + f"; expected 'vjepa2': {want}"
        )
    from transformers import VJEPA2Model

    try:
        with _quiet_transformers():
            model, info = VJEPA2Model.from_pretrained(
                d, local_files_only=True, output_loading_info=True, dtype=torch.float32
            )
    except Exception as e:  # noqa: BLE001 - whatever transformers objects to is the directory's fault
        raise WMError(
            f"{d}: transformers cannot load it as a VJEPA2Model ({type(e).__name__}: {str(e)[:300]})"
        ) from None
    missing = sorted(str(k) for k in info.get("missing_keys", ()) if str(k).startswith("encoder."))
    mismatched = sorted(str(k) for k in info.get("mismatched_keys", ()) if "encoder." in str(k))
    if missing or mismatched:
        parts = [f"missing encoder keys {key_list(missing)}" if missing else "",
                 f"misshapen encoder keys {key_list(mismatched)}" if mismatched else ""]
        raise WMError(f"{d}: the weights do not match config.json — " + "; ".join(x for x in parts if x))
    return VJEPA2VideoEncoder(model).to(device).eval()


def _check_encoder_fits(encoder: VJEPA2VideoEncoder, cfg: ACPredictorConfig, source: str) -> None:
    c = encoder.config
    pairs = [("hidden_size", c.hidden_size, "embed_dim", cfg.embed_dim),
             ("patch_size", _patch(c), "patch_size", cfg.patch_size),
             ("tubelet_size", c.tubelet_size, "tubelet_size", cfg.tubelet_size),
             ("crop_size", c.crop_size, "img_size", cfg.img_size[0])]
    bad = [f"encoder {a} {x} != predictor {b} {y}" for a, x, b, y in pairs if x != y]
    if cfg.img_size[0] != cfg.img_size[1]:
        bad.append(f"predictor img_size {cfg.img_size} is not square (the encoder's RoPE grid is)")
    if bad:
        raise WMError(f"{source}: the encoder does not fit the predictor: " + "; ".join(bad))


# --------------------------------------------------------------------------------------------------
# the vjepa2-ac model spec


def load_world_model(
    path: str | Path, device: str | torch.device = "cpu", name: str | None = None,
    encoder: Callable[[Tensor], Tensor] | None = None, *, encoder_dir: str | Path | None = None,
    encoder_heads: int | None = None, frameskip: int = 1, compile: bool = False, **predictor_kwargs: Any,
) -> VJEPA2ACWorldModel:
    """An official checkpoint as a WorldModel (the ``vjepa2-ac:CKPT[,encoder=DIR]`` model spec).

    The encoder: ``encoder`` (any callable, see ``VJEPA2ACWorldModel``) if given; else the transformers
    directory ``encoder_dir`` (it wins over the checkpoint's); else the checkpoint's ``"encoder"``,
    mapped onto transformers' VJEPA2Model (``encoder_heads`` heads, default by width:
    ``ENCODER_HEADS``); else none (the model then works on latents only).
    The predictor: shapes from its weights; ``predictor_kwargs`` (img_size, num_frames, num_heads, ...)
    for the rest; img_size, patch and tubelet default to the encoder's where it says them."""
    if encoder is not None and encoder_dir is not None:
        raise WMError("load_world_model: pass an encoder or an encoder_dir, not both")
    p, ckpt = _read_checkpoint(path, device)
    enc: VJEPA2VideoEncoder | None = None
    enc_state: dict[str, Tensor] | None = None
    defaults: dict[str, Any] = {}
    if encoder is None and encoder_dir is not None:
        enc = load_vjepa2_encoder(encoder_dir, device)
        if encoder_heads is not None and encoder_heads != enc.config.num_attention_heads:
            raise WMError(
                f"encoder_heads {encoder_heads}: {encoder_dir} has {enc.config.num_attention_heads} heads "
                "(config.json); encoder_heads is for the checkpoint's own encoder"
            )
        defaults = {"img_size": enc.config.crop_size, "patch_size": _patch(enc.config),
                    "tubelet_size": enc.config.tubelet_size}
    elif encoder is None and isinstance(ckpt.get("encoder"), dict):
        enc_state = clean_keys(ckpt["encoder"])
        w = enc_state.get("patch_embed.proj.weight")
        if isinstance(w, Tensor) and w.dim() == 5:
            defaults = {"patch_size": int(w.shape[-1]), "tubelet_size": int(w.shape[2])}
    predictor = _build_predictor(p, ckpt["predictor"], {**defaults, **predictor_kwargs}).to(device).eval()
    cfg = predictor.config
    if enc_state is not None:
        if cfg.img_size[0] != cfg.img_size[1]:
            raise WMError(f"{p}: predictor img_size {cfg.img_size} is not square; the encoder's RoPE grid is")
        enc = encoder_from_official_state(enc_state, cfg.img_size[0], cfg.num_frames, encoder_heads, device,
                                          source=f"{p} ['encoder']")
    if enc is not None:
        _check_encoder_fits(enc, cfg, str(encoder_dir) if encoder_dir is not None else f"{p} ['encoder']")
    return VJEPA2ACWorldModel(predictor, encoder if encoder is not None else enc,
                              name=name or f"vjepa2-ac[{p.name}]", frameskip=frameskip, compile=compile)


# option -> (load_world_model keyword, parser)
_SPEC_OPTIONS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "encoder": ("encoder_dir", str),
    "img_size": ("img_size", int),
    "num_frames": ("num_frames", int),
    "num_heads": ("num_heads", int),
    "encoder_heads": ("encoder_heads", int),
    "frameskip": ("frameskip", int),
    "compile": ("compile", lambda v: {"1": True, "true": True, "yes": True,
                                      "0": False, "false": False, "no": False}[v.lower()]),
}
SPEC_HELP = ("vjepa2-ac:CKPT[,encoder=DIR][,img_size=S][,num_frames=F][,num_heads=H][,encoder_heads=H]"
             "[,frameskip=f][,compile=0|1]")


def parse_spec(arg: str) -> tuple[str, dict[str, Any]]:
    """``"CKPT,encoder=DIR,num_heads=16"`` -> (CKPT, ``load_world_model`` keyword arguments)."""
    path, *items = [s.strip() for s in arg.split(",")]
    if not path or path.partition("=")[0] in _SPEC_OPTIONS:
        raise WMError(f"model spec 'vjepa2-ac:{arg}': the checkpoint path comes first: {SPEC_HELP}")
    kw: dict[str, Any] = {}
    for item in filter(None, items):
        key, sep, val = item.partition("=")
        if not sep or key not in _SPEC_OPTIONS or not val:
            raise WMError(
                f"model spec 'vjepa2-ac:{arg}': option {item!r}: expected key=value with key one of "
                f"{', '.join(_SPEC_OPTIONS)} ({SPEC_HELP})"
            )
        name, parse = _SPEC_OPTIONS[key]
        try:
            kw[name] = parse(val)
        except (ValueError, KeyError):
            want = "0 or 1" if key == "compile" else "a path" if key == "encoder" else "an integer"
            raise WMError(f"model spec 'vjepa2-ac:{arg}': option {key}={val!r}: expected {want}") from None
    return path, kw
