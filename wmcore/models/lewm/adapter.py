"""A frozen LeWorldModel as a ``wmcore.protocol.WorldModel``: ``LeWMWorldModel`` and the ``lewm:DIR``
loader."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import Tensor

from ...protocol import fingerprint as _fingerprint
from .checkpoint import canonical_state_dict, load_checkpoint
from .config import fingerprint_config
from .model import LeWorldModel, normalise_actions, preprocess

__all__ = ["LeWMWorldModel", "load_world_model"]


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
            act = normalise_actions(actions[:, -h:].to(p.device, p.dtype), self.cfg)
            out = self.model.predict_next(emb, act)[:, -1:]
        return out.to(context.device, context.dtype)

    def fingerprint(self) -> str:
        """sha256 of the weights (transformers-4 names, whatever is installed) and of the config
        entries that affect predictions (not the name, not the loss or dropout settings)."""
        return _fingerprint(canonical_state_dict(self.model), fingerprint_config(self.cfg))

    def config(self) -> dict:
        return dataclasses.asdict(self.cfg)


def load_world_model(
    directory: str | Path, device: str | torch.device = "cpu", name: str | None = None
) -> LeWMWorldModel:
    """``load_checkpoint`` wrapped as a WorldModel (the ``lewm:DIR`` model spec)."""
    return LeWMWorldModel(load_checkpoint(directory, device), name=name)
