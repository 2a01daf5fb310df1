"""A thinking world model in ThinkJEPA's form: a *thinker* reads sparse past frames at a longer stride
than the predictor's history and conditions every block of the predictor by FiLM.

ThinkJEPA (arXiv 2603.22281) pools hidden states of several layers of a vision-language model that read
sparse frames, fuses them and turns them into a per-layer FiLM (scale and shift, gated by ``tanh(g)``
with ``g = 0`` at the start) of each block of a V-JEPA 2 predictor. Here the VLM is replaced by what
trains on 2 CPU cores, and the interface is kept:

- the **base** is a frozen keypoint world model (the embedded pusht-wm): its encoder, and its predictor
  (``BlockFramePredictor``, one frame of history) whose hidden blocks take the FiLM;
- the **thinker** (``SparseThinker``, trained) reads the latents of the sparse past frames
  ``t - stride, t - 2 stride, ...`` (in the current block's frame, with their age) and returns its
  hidden states of every layer, ``[B, L, T, F]`` (L layers, T frames read, F features): a plain
  tensor, so precomputed hidden states of a VLM of the same shape can stand in for it
  (``ThinkerWorldModel.use_features``);
- the **fusion** (``FiLMHead``, trained) pools each layer over the frames (masked mean), normalises,
  fuses the layers with an MLP and gives every predictor block a scale and a shift; block j's
  activations ``h`` become ``h * (1 + tanh(g_j) * scale_j) + tanh(g_j) * shift_j``, ``g_j = 0`` at the
  start: untrained, the predictor is the base's, bit for bit.

The thinking budget K (``protocol.ThinkingWorldModel``) is how many past frames the thinker reads:
K - 1 of them, at ``stride`` model steps apart, so ``max_context = 1 + stride (max_think - 1)``. K = 1
reads none and is the base path, bit for bit (the thinker does not run). Frames the context does not
hold yet (the start of a rollout) are masked out. ``past = False`` is the parameter-matched control: the
same networks, but the thinker reads the current frame only (no budget, no past): whatever it gains is
capacity, not the past. ``ablation`` ("zero", "shuffle") feeds the fusion zeros, or another episode's
thinker states (rolled by one across the batch), for the ablation study.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..errors import WMError
from .checkpoint import config_from_json, load_model_dir, save_model_dir
from .keypoint import SCALE, KeypointConfig, KeypointExtension, KeypointModel, _rot, block_pose

__all__ = ["ABLATIONS", "FORMAT", "ThinkerConfig", "ThinkerModel", "ThinkerWorldModel", "load_world_model",
           "save_pretrained"]

FORMAT = "wmcore-thinker"
ABLATIONS = ("zero", "shuffle")
TOKEN_DIM = 9  # a past frame's agent and body points in the current block's frame (8) and its age (1)


@dataclass(frozen=True)
class ThinkerConfig:
    """The base keypoint model's config (``base``), the thinker's and the fusion's."""

    name: str = "pusht-thinker"
    base: dict = field(default_factory=lambda: KeypointConfig().to_json())
    stride: int = 2  # model steps between the sparse frames the thinker reads (the predictor reads 1 frame)
    max_think: int = 8  # the largest budget: K - 1 past frames read
    train_max_think: int = 8  # budgets drawn in training: 2..train_max_think
    layers: int = 2  # thinker layers: L, the per-layer features
    width: int = 32  # thinker features: F
    fuse_hidden: int = 64  # the fusion MLP's width
    past: bool = True  # False: the parameter-matched control that reads the current frame only

    def __post_init__(self) -> None:
        for k in ("stride", "max_think", "train_max_think", "layers", "width", "fuse_hidden"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise WMError(f"ThinkerConfig.{k}: expected an int >= 1, found {v!r}")
        if not isinstance(self.past, bool):
            raise WMError(f"ThinkerConfig.past: expected true or false, found {self.past!r}")
        if self.train_max_think > self.max_think:
            raise WMError(f"ThinkerConfig: train_max_think {self.train_max_think} > max_think {self.max_think}")
        KeypointConfig.from_json(self.base, "ThinkerConfig.base")  # a valid keypoint config, or a WMError

    @property
    def base_config(self) -> KeypointConfig:
        return KeypointConfig.from_json(self.base, "ThinkerConfig.base")

    @property
    def max_context(self) -> int:
        return 1 + self.stride * (self.max_think - 1) if self.past else 1

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": 1, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, d: Any, source: str = "config.json", name: str | None = None) -> "ThinkerConfig":
        return config_from_json(cls, d, FORMAT, source, name)


class SparseThinker(nn.Module):
    """Tokens ``[B, T, TOKEN_DIM]`` and their mask ``[B, T]`` -> hidden states of every layer
    ``[B, L, T, F]``: an embedding, then L residual layers that each see the token and the masked mean
    of all tokens (a set network: the frames talk to each other once per layer)."""

    def __init__(self, layers: int, width: int):
        super().__init__()
        self.embed = nn.Linear(TOKEN_DIM, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(2 * width, width), nn.GELU(), nn.Linear(width, width)) for _ in range(layers))
        self.norm = nn.LayerNorm(width)

    def forward(self, tokens: Tensor, mask: Tensor) -> Tensor:
        h, out = self.embed(tokens), []
        for blk in self.blocks:
            pooled = _masked_mean(self.norm(h), mask)[:, None].expand_as(h)
            h = h + blk(torch.cat([self.norm(h), pooled], -1))
            out.append(h)
        return torch.stack(out, 1)


class FiLMHead(nn.Module):
    """Per-layer thinker features ``[B, L, T, F]`` (and a mask ``[B, T]``) -> the FiLM of every predictor
    block: ``film(j, h)`` for ``BlockFramePredictor.forward``. Gates ``g`` (one per block) start at 0."""

    def __init__(self, layers: int, width: int, hidden: int, blocks: int, block_width: int):
        super().__init__()
        self.layers, self.width, self.blocks, self.block_width = layers, width, blocks, block_width
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(layers * width, hidden), nn.GELU(), nn.Linear(hidden, 2 * blocks * block_width))
        self.gate = nn.Parameter(torch.zeros(blocks))  # tanh(0) = 0: the identity until trained

    def forward(self, features: Tensor, mask: Tensor) -> Callable[[int, Tensor], Tensor]:
        pooled = self.norm(_masked_mean(features, mask[:, None]))  # [B, L, F]
        ss = self.mlp(pooled.flatten(1)).reshape(-1, self.blocks, 2, self.block_width)
        gates = torch.tanh(self.gate)

        def film(j: int, h: Tensor) -> Tensor:
            return h * (1 + gates[j] * ss[:, j, 0]) + gates[j] * ss[:, j, 1]

        return film


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x [..., T, F]`` over T where ``mask [..., T]`` is 1 (0 where none is)."""
    m = mask.to(x.dtype)[..., None]
    return (x * m).sum(-2) / m.sum(-2).clamp(min=1)


class ThinkerModel(nn.Module):
    """A keypoint model (``base``), its thinker and the fusion that FiLMs the base's predictor."""

    def __init__(self, cfg: ThinkerConfig):
        super().__init__()
        self.cfg = cfg
        self.base = KeypointModel(cfg.base_config)
        bc = self.base.cfg
        self.thinker = SparseThinker(cfg.layers, cfg.width)
        self.head = FiLMHead(cfg.layers, cfg.width, cfg.fuse_hidden, bc.layers, bc.hidden)
        self.register_buffer("body", torch.tensor(bc.body_points), persistent=False)

    def tokens(self, history: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """The thinker's input from the latents of the history ``[B, Tc, D]`` (the last is the current
        frame): the K - 1 frames ``stride`` model steps apart before it (the current frame alone for the
        control), each in the current block's frame with its age; ``(tokens [B, T, 9], mask [B, T])``."""
        cfg = self.cfg
        b, tc, _ = history.shape
        cur = history[:, -1]
        if cfg.past:
            ages = [j * cfg.stride for j in range(1, k)]
        else:
            ages = [0]
        idx = torch.tensor([max(tc - 1 - a, 0) for a in ages], device=history.device)
        mask = torch.tensor([tc - 1 - a >= 0 for a in ages], device=history.device).expand(b, -1)
        past = history[:, idx].reshape(b, len(ages), -1, 2) * SCALE  # [B, T, 1 + K, 2] workspace units
        centre, theta = block_pose(cur.reshape(b, -1, 2)[:, 1:] * SCALE, self.body)
        rel = torch.einsum("bij,btmj->btmi", _rot(theta).transpose(-1, -2), past - centre[:, None, None]) / SCALE
        age = torch.tensor(ages, device=history.device, dtype=history.dtype) / cfg.max_context
        tok = torch.cat([rel.flatten(2), age[None, :, None].expand(b, -1, 1)], -1)
        return tok, mask

    def features(self, history: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """The thinker's per-layer hidden states ``[B, L, T, F]`` and their mask ``[B, T]``."""
        tok, mask = self.tokens(history, k)
        return self.thinker(tok, mask), mask

    def step(self, history: Tensor, actions: Tensor, features: Tensor, mask: Tensor) -> Tensor:
        """The next latent ``[B, D]`` from the current one (``history[:, -1]``) and the action block
        ``[B, A]``, the predictor FiLMed by ``features``."""
        return self.base.predictor(history[:, -1], actions, film=self.head(features, mask))


class ThinkerWorldModel(KeypointExtension):
    """A frozen thinker model as a ``ThinkingWorldModel`` (the control, ``past = False``, as a plain
    WorldModel: it has no budget). Reads up to ``max_context`` frames; ``plan_history``: planners give it
    that many observed frames (``control.planners.LatentGoalCost``)."""

    def __init__(self, model: ThinkerModel, name: str | None = None):
        super().__init__(model, name)
        cfg = model.cfg
        if cfg.past:
            self.max_think = cfg.max_think
            self.think = 1
        self.max_context = cfg.max_context
        self.plan_history = cfg.max_context
        self.ablation: str | None = None
        self._external: Tensor | None = None

    @property
    def feature_shape(self) -> tuple[int, int]:
        """``(L, F)`` of the thinker-feature tensor ``[B, L, T, F]`` the fusion reads."""
        return self.full.cfg.layers, self.full.cfg.width

    def use_features(self, features: Tensor | None) -> None:
        """Condition the next predictions on precomputed thinker features ``[B, L, T, F]`` (say a VLM's
        pooled hidden states of L layers over T frames, projected to F) instead of the built-in thinker,
        for budgets K >= 2; None goes back to the thinker. WMError if the shape or values are wrong."""
        if features is None:
            self._external = None
            return
        n_l, n_f = self.feature_shape
        if not isinstance(features, Tensor) or not features.is_floating_point() or features.dim() != 4 \
                or features.shape[1] != n_l or features.shape[3] != n_f or features.shape[2] < 1:
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise WMError(f"{self.name}: thinker features must be a float tensor [B, L={n_l}, T >= 1, F={n_f}] "
                          f"(layers x frames x features), found {shape}; project your features to F={n_f} and "
                          f"take L={n_l} layers")
        if not torch.isfinite(features).all():
            raise WMError(f"{self.name}: thinker features contain NaN or inf")
        self._external = features

    def predict(self, context: Tensor, actions: Tensor, states: Tensor | None = None) -> Tensor:
        k = getattr(self, "think", 1)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.full.cfg.max_think:
            raise WMError(f"{self.name}: thinking budget {k!r}; expected an integer in 1..{self.full.cfg.max_think}")
        if self.full.cfg.past and k == 1:
            return super().predict(context, actions, states)  # the base path, bit for bit
        self._check(context, actions)
        if context.shape[1] > self.max_context:
            raise ValueError(f"context: {context.shape[1]} frames, model {self.name!r} reads at most {self.max_context}")
        if self.ablation is not None and self.ablation not in ABLATIONS:
            raise WMError(f"{self.name}: ablation {self.ablation!r}; expected one of {ABLATIONS} or None")
        p = self._param
        with torch.inference_mode():
            hist = context[:, :, 0].to(p.device, p.dtype)
            if self._external is not None:
                feats = self._external.to(p.device, p.dtype)
                if feats.shape[0] != hist.shape[0]:
                    raise WMError(f"{self.name}: thinker features for a batch of {feats.shape[0]}, the context holds "
                                  f"{hist.shape[0]}; give one feature tensor per context")
                mask = torch.ones(feats.shape[0], feats.shape[2], dtype=torch.bool, device=p.device)
            else:
                feats, mask = self.full.features(hist, k)
            if self.ablation == "zero":
                feats = torch.zeros_like(feats)
            elif self.ablation == "shuffle":  # another episode's thinking: the batch rolled by one
                feats, mask = feats.roll(1, 0), mask.roll(1, 0)
            out = self.full.step(hist, actions[:, -1].to(p.device, p.dtype), feats, mask)
        return out[:, None].to(context.device, context.dtype)


def save_pretrained(model: ThinkerModel, directory: str | Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``directory``; refuses if either exists."""
    return save_model_dir(directory, model.state_dict(), model.cfg.to_json(), FORMAT)


def load_checkpoint(directory: str | Path, name: str | None = None) -> ThinkerModel:
    model = load_model_dir(directory, FORMAT, lambda d, src: ThinkerConfig.from_json(d, src, name=name), ThinkerModel)
    return model.eval()


def load_world_model(directory: str | Path, name: str | None = None) -> ThinkerWorldModel:
    """``thinker:DIR``: a thinker model directory as a thinking WorldModel (budget 1 until set)."""
    return ThinkerWorldModel(load_checkpoint(directory, name=name), name=name)
