"""A thinking world model by iterative refinement (recurrent depth): a keypoint world model's
predictor makes the first guess, then one weight-shared refinement block revises it K - 1 times with
a gated residual update, ``z_k = z_(k-1) + tanh(g) * R(z_t, z_(k-1), a)``. The budget K
(``think``, ``protocol.ThinkingWorldModel``) is the number of predictor passes: K = 1 is the base
predictor alone, bit for bit; the gate ``g`` starts at 0, so an untrained block is the identity.

The base (encoder + predictor) is a frozen keypoint model (the embedded pusht-wm for pusht-refine);
only the block trains (``wmcore.train.refine``: K drawn from 1..``train_max_think`` per batch, the
loss at every depth), so every K up to ``train_max_think`` is in distribution and larger ones measure
extrapolation. ``refine:DIR`` loads a directory written by ``save_pretrained``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import WMError
from .checkpoint import config_from_json, load_model_dir, save_model_dir
from .keypoint import CENTRE, SCALE, KeypointConfig, KeypointExtension, KeypointModel

__all__ = ["FORMAT", "RefineConfig", "RefineModel", "RefineWorldModel", "load_world_model", "save_pretrained"]

FORMAT = "wmcore-refine"


@dataclass(frozen=True)
class RefineConfig:
    """The base keypoint model's config (``base``, its config.json document) and the block's."""

    name: str = "pusht-refine"
    base: dict = field(default_factory=lambda: KeypointConfig().to_json())
    hidden: int = 128
    layers: int = 2
    max_think: int = 8  # the largest budget the model accepts (beyond train_max_think: extrapolation)
    train_max_think: int = 4  # budgets drawn in training: 1..train_max_think

    def __post_init__(self) -> None:
        for k in ("hidden", "layers", "max_think", "train_max_think"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise WMError(f"RefineConfig.{k}: expected an int >= 1, found {v!r}")
        KeypointConfig.from_json(self.base, "RefineConfig.base")  # a valid keypoint config, or a WMError

    @property
    def base_config(self) -> KeypointConfig:
        return KeypointConfig.from_json(self.base, "RefineConfig.base")

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": 1, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, d: Any, source: str = "config.json", name: str | None = None) -> "RefineConfig":
        return config_from_json(cls, d, FORMAT, source, name)


class RefineBlock(nn.Module):
    """``R(z_t, z_hat, a) -> dz``: latents ``[B, D]``, the action block ``[B, A]`` in workspace units."""

    def __init__(self, latent_dim: int, action_dim: int, hidden: int, layers: int):
        super().__init__()
        mods: list[nn.Module] = []
        d_in = 2 * latent_dim + latent_dim + action_dim  # z_t, z_hat, z_hat - z_t, actions
        for i in range(layers):
            mods += [nn.Linear(d_in if i == 0 else hidden, hidden), nn.GELU()]
        mods.append(nn.Linear(hidden, latent_dim))
        self.mlp = nn.Sequential(*mods)
        self.gate = nn.Parameter(torch.zeros(()))  # tanh(0) = 0: the identity until trained

    def forward(self, z: Tensor, z_hat: Tensor, actions: Tensor) -> Tensor:
        a = (actions - CENTRE) / SCALE
        return z_hat + torch.tanh(self.gate) * self.mlp(torch.cat([z, z_hat, z_hat - z, a], -1))


class RefineModel(nn.Module):
    """A keypoint model (``base``) and its refinement block."""

    def __init__(self, cfg: RefineConfig):
        super().__init__()
        self.cfg = cfg
        self.base = KeypointModel(cfg.base_config)
        bc = self.base.cfg
        self.refine = RefineBlock(bc.latent_dim, bc.action_dim, cfg.hidden, cfg.layers)

    def trace(self, z: Tensor, actions: Tensor, k: int) -> list[Tensor]:
        """Every guess of one model step at budget ``k``: ``[z_1 (the base's), ..., z_k]``, each ``[B, D]``."""
        guesses = [self.base.predictor(z, actions)]
        for _ in range(k - 1):
            guesses.append(self.refine(z, guesses[-1], actions))
        return guesses


class RefineWorldModel(KeypointExtension):
    """A frozen refinement model as a ``ThinkingWorldModel``: ``think`` passes per prediction."""

    def __init__(self, model: RefineModel, name: str | None = None):
        super().__init__(model, name)
        self.max_think = model.cfg.max_think
        self.think = 1

    def predict(self, context: Tensor, actions: Tensor, states: Tensor | None = None) -> Tensor:
        k = self.think
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.max_think:
            raise WMError(f"{self.name}: thinking budget {k!r}; expected an integer in 1..{self.max_think}")
        base_out = super().predict(context, actions, states)  # the base path (K = 1, bit for bit); checks shapes
        if k == 1:
            return base_out
        p = self._param
        with torch.inference_mode():
            z, a = context[:, -1, 0].to(p.device, p.dtype), actions[:, -1].to(p.device, p.dtype)
            out = base_out[:, 0].to(p.device, p.dtype)
            for _ in range(k - 1):
                out = self.full.refine(z, out, a)
        return out[:, None].to(context.device, context.dtype)

    def residuals(self, context: Tensor, actions: Tensor, k: int) -> Tensor:
        """``|z_j - z_(j-1)|`` (L2, workspace units per latent point) for j = 2..k of one prediction from
        the last context frame: ``[B, k-1]`` (does the refinement converge?)."""
        p = self._param
        with torch.inference_mode():
            guesses = self.full.trace(context[:, -1, 0].to(p.device, p.dtype), actions[:, -1].to(p.device, p.dtype), k)
        if k == 1:
            return torch.zeros(context.shape[0], 0)
        steps = torch.stack([g2 - g1 for g1, g2 in zip(guesses, guesses[1:])], 1)  # [B, k-1, D]
        return (steps.reshape(*steps.shape[:2], -1, 2).norm(dim=-1).mean(-1) * SCALE).float().cpu()


def save_pretrained(model: RefineModel, directory: str | Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``directory``; refuses if either exists."""
    return save_model_dir(directory, model.state_dict(), model.cfg.to_json(), FORMAT)


def load_checkpoint(directory: str | Path, name: str | None = None) -> RefineModel:
    model = load_model_dir(directory, FORMAT, lambda d, src: RefineConfig.from_json(d, src, name=name), RefineModel)
    return model.eval()


def load_world_model(directory: str | Path, name: str | None = None) -> RefineWorldModel:
    """``refine:DIR``: a refinement model directory as a thinking WorldModel (budget 1 until set)."""
    return RefineWorldModel(load_checkpoint(directory, name=name), name=name)
