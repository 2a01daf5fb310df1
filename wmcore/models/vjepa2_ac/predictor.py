"""The V-JEPA 2-AC predictor: our own implementation of facebookresearch/vjepa2's
``src/models/ac_predictor.py`` (``VisionTransformerPredictorAC``, ``vit_ac_predictor``) and the pieces of
``src/models/utils/modules.py`` it uses (``ACBlock``, ``ACRoPEAttention``, ``rotate_queries_or_keys``,
``build_action_block_causal_attention_mask``, ``MLP``, ``SwiGLUFFN``), with its KV cache. The constructor
takes the official argument names and the state dict has the official keys and shapes, so the released
``vjepa2-ac-vitg.pt`` predictor loads with ``strict=True``:

    predictor_embed, action_encoder, state_encoder, extrinsics_encoder   (Linear, with bias)
    predictor_blocks.{i}.norm1 / attn.qkv / attn.proj / norm2 / mlp.fc1 / mlp.fc2 (+ mlp.fc3 with SiLU)
    predictor_norm, predictor_proj

``extrinsics_encoder`` exists whatever ``use_extrinsics`` says: the official module always builds it.

What the predictor computes (``forward``): frame latents ``[B, T*N, D]`` go to the predictor width;
each frame is preceded by its conditioning tokens, in this order: action, state (and extrinsics), so
a frame is ``K + N`` tokens (K = 2 or 3). Attention is block-causal over frames (every token of frame
t sees every token of frames <= t: the official ``build_action_block_causal_attention_mask``, built in
``forward_frames``) with 3D RoPE: the head dim is cut into three equal even parts
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
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import WMError
from .config import ACPredictorConfig

__all__ = ["ACAttention", "ACBlock", "ACPredictor", "KVCache", "MLP", "SwiGLUFFN", "rope_rotate", "rope_tables"]


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
