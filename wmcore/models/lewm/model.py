"""The LeWM network: le-wm's building blocks (``module.py``), ``LeWorldModel`` (embed / predict_next)
and the family's one ``preprocess`` of frames and actions, used by evaluation and training alike."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import LeWMConfig

__all__ = [
    "ARPredictor", "ConditionalBlock", "Embedder", "LeWorldModel", "MLP", "normalise_actions", "preprocess",
]

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
# the model


class LeWorldModel(nn.Module):
    """LeWM: ``encoder`` + ``projector`` embed frames; ``action_encoder`` + ``predictor`` + ``pred_proj``
    predict the next embedding. Pixels here are already preprocessed (float, normalised: ``preprocess``).

    The model is the core only, as in le-wm's ``jepa.py``: ``embed`` (encode) and ``predict_next``
    (predict); rollouts are ``wmcore.rollout``'s over ``LeWMWorldModel``, and the objective, SIGReg and
    BatchNorm recalibration live in ``wmcore.train``."""

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


# --------------------------------------------------------------------------------------------------
# preprocessing: the one pipeline of evaluation (adapter.py) and training (wmcore.train.lewm)


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


def normalise_actions(actions: Tensor, cfg: LeWMConfig) -> Tensor:
    """Recorded action blocks ``[..., frameskip * width]`` -> the predictor's input: z-scored by the
    config's per-recorded-dimension ``action_mean``/``action_std`` (tiled over the block, whose
    recorded actions are in time order); unchanged when the config has none."""
    if cfg.action_mean is None:
        return actions
    k = cfg.frameskip
    mean = torch.tensor(cfg.action_mean, device=actions.device, dtype=actions.dtype).repeat(k)
    std = torch.tensor(cfg.action_std, device=actions.device, dtype=actions.dtype).repeat(k)
    return (actions - mean) / std
