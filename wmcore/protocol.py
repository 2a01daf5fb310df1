"""What wmcore needs from a world model: encode frames, predict the next latent, say who it is.

Latents are ``[B, T, N, D]``: B episodes, T frames, N tokens per frame, D channels. A model steps in
its own native step (``frameskip`` recorded steps); its action is then the block of ``frameskip``
recorded actions, concatenated, so ``action_dim`` is the per-model-step width.

The rollout calls ``predict`` on a window of context latents. A model that can do better than
recomputing the whole window every step (a KV cache) also implements ``start``/``step``; the rollout
then feeds it one frame at a time. Both paths must give the same predictions.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["IncrementalWorldModel", "StatePropagator", "ThinkingWorldModel", "WorldModel", "fingerprint"]


@runtime_checkable
class WorldModel(Protocol):
    """An action-conditioned latent world model, frozen, as the harness sees it.

    Attributes:
        name: short label for tables and plots.
        action_dim: width of one model step's action (recorded action width x frameskip).
        frameskip: recorded steps per model step (1 = every recorded frame).
        tokens_per_frame: N in ``[B, T, N, D]``.
        max_context: most frames ``predict`` accepts, or None for no limit.
    """

    name: str
    action_dim: int
    frameskip: int
    tokens_per_frame: int
    max_context: int | None

    def encode(self, frames: Tensor) -> Tensor:
        """uint8 frames ``[B, T, H, W, 3]`` -> latents ``[B, T, N, D]``."""

    def predict(self, context: Tensor, actions: Tensor, states: Tensor | None = None) -> Tensor:
        """Next latent after the context.

        context ``[B, Tc, N, D]``; actions ``[B, Tc, A]`` where ``actions[:, t]`` is applied in frame t
        (the last one leads to the predicted frame); states ``[B, Tc, S]`` or None.
        Returns ``[B, N, D]``.
        """

    def fingerprint(self) -> str:
        """sha256 hex digest of the weights and the configuration."""


@runtime_checkable
class IncrementalWorldModel(WorldModel, Protocol):
    """Optional: a model that carries state (e.g. a KV cache) between rollout steps.

    ``start(batch, window)`` returns an empty cache that keeps at most ``window`` frames (None = all).
    ``step(cache, latent [B,N,D], action [B,A], state [B,S] | None)`` appends one frame and its action
    and returns ``(next latent [B,N,D], cache)``; the prediction must equal ``predict`` on the same
    window.
    """

    def start(self, batch: int, window: int | None) -> Any: ...

    def step(
        self, cache: Any, latent: Tensor, action: Tensor, state: Tensor | None = None
    ) -> tuple[Tensor, Any]: ...


@runtime_checkable
class ThinkingWorldModel(WorldModel, Protocol):
    """Optional: a model that can spend extra computation before it commits to a prediction (a
    refinement block run K times, a thinker read at a budget). ``think`` is the budget K the next
    ``predict`` spends (the harness sets it; 1 = the model's base path, which must then be unchanged);
    ``max_think`` the largest K it supports (None: any). A model without these thinks at K = 1 only."""

    think: int
    max_think: int | None


@runtime_checkable
class StatePropagator(Protocol):
    """Optional: a model whose predictor reads proprioceptive states can propagate them in open loop
    (so that open loop reads no recorded state after the context)."""

    def propagate_state(self, state: Tensor, action: Tensor) -> Tensor:
        """state ``[B, S]``, action ``[B, A]`` -> next state ``[B, S]``."""


def fingerprint(state: Mapping[str, Tensor], config: Mapping[str, Any]) -> str:
    """sha256 over a state dict (names, dtypes, shapes, bytes, in sorted key order) and a JSON config."""
    h = hashlib.sha256()
    h.update(json.dumps(dict(config), sort_keys=True, default=str).encode())
    for key in sorted(state):
        t = state[key].detach().to("cpu").contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
