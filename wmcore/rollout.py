"""Latent rollouts: open loop (imagination) and closed loop (teacher forced).

Frame indices: the context is frames ``0..C-1``; rollout step ``k`` (1..H) predicts frame ``C-1+k``
(with ``C = 1``, step k is frame k, as in shared/DESIGN.md). ``actions[:, t]`` is the action taken in
frame t, so predicting frame t uses actions ``..t-1``. Both loops return ``[B, H, N, D]``, aligned with
``latents[:, C:C+H]``.

Open loop receives only the context latents, so it cannot read a ground-truth latent after them.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .protocol import IncrementalWorldModel, StatePropagator, WorldModel

__all__ = ["ACTION_SOURCES", "block_actions", "closed_loop", "make_actions", "open_loop", "subsample"]

ACTION_SOURCES = ("recorded", "zeros", "random")


def block_actions(actions: Tensor, frameskip: int) -> Tensor:
    """Group recorded actions into model-step blocks.

    actions ``[B, T, A]`` -> ``[B, T // k, k * A]``: block j is actions ``j*k .. j*k+k-1`` concatenated
    in time order (the DINO-WM / LeWorldModel convention). A trailing partial block is dropped.
    """
    _check_rank("actions", actions, 3, "[B, T, A]")
    if frameskip < 1:
        raise ValueError(f"frameskip must be >= 1, got {frameskip}")
    b, t, a = actions.shape
    n = t // frameskip
    if n == 0:
        raise ValueError(
            f"actions: {t} recorded steps are fewer than one block of frameskip={frameskip}; "
            "record a longer episode or lower the frameskip"
        )
    return actions[:, : n * frameskip].reshape(b, n, frameskip * a)


def subsample(x: Tensor, frameskip: int) -> Tensor:
    """Frames, latents or states ``[B, T, ...]`` at model steps: ``x[:, ::frameskip]``."""
    if frameskip < 1:
        raise ValueError(f"frameskip must be >= 1, got {frameskip}")
    return x[:, ::frameskip]


def make_actions(source: str, recorded: Tensor, seed: int = 0) -> Tensor:
    """Actions ``[B, T, A]`` for an action source.

    ``recorded``: the episode's own. ``zeros``: all zero (the classic mock-action setting).
    ``random``: seeded Gaussian with the per-dimension mean and std of the recorded actions over the
    whole batch (std 1 where a dimension never varies), so the scale is plausible but the content is not.
    """
    _check_rank("actions", recorded, 3, "[B, T, A]")
    if source == "recorded":
        return recorded
    if source == "zeros":
        return torch.zeros_like(recorded)
    if source == "random":
        flat = recorded.reshape(-1, recorded.shape[-1]).double()
        mean = flat.mean(0)
        std = flat.std(0, correction=0) if flat.shape[0] > 1 else torch.ones_like(mean)
        std = torch.where(std > 0, std, torch.ones_like(std))
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn(recorded.shape, generator=g, dtype=torch.float64)
        return (mean + std * noise).to(recorded.dtype).to(recorded.device)
    raise ValueError(f"action source must be one of {ACTION_SOURCES}, got {source!r}")


def open_loop(
    model: WorldModel,
    context: Tensor,
    actions: Tensor,
    horizon: int,
    *,
    window: int | None = None,
    states: Tensor | None = None,
    use_cache: bool = True,
) -> Tensor:
    """Imagine ``horizon`` frames from the context, feeding each prediction back.

    context ``[B, C, N, D]`` (real latents of frames 0..C-1); actions ``[B, >= C+H-1, A]``;
    states ``[B, >= C, S]`` or None (only the first C are read; later states come from the model's
    ``propagate_state``). ``window``: the predictor sees at most this many latest frames (None = all,
    capped by the model's ``max_context``). Returns ``[B, H, N, D]``: predictions of frames C..C+H-1.
    """
    _check_latents("context", context)
    c = context.shape[1]
    _check_common(model, context, actions, horizon, c)
    state_at = None
    if states is not None:
        _check_states(states, context.shape[0], c)
        if not isinstance(model, StatePropagator):
            raise ValueError(
                f"states were given but model {model.name!r} has no propagate_state(): open loop would "
                "have to read recorded states after the context; pass states=None or use closed loop"
            )
        propagated = list(states[:, :c].unbind(1))

        def state_at(i: int) -> Tensor:
            while len(propagated) <= i:
                propagated.append(model.propagate_state(propagated[-1], actions[:, len(propagated) - 1]))
            return propagated[i]

    preds: list[Tensor] = []

    def frame_at(i: int) -> Tensor:
        return context[:, i] if i < c else preds[i - c]

    return _roll(model, frame_at, state_at, actions, c, horizon, window, use_cache, preds)


def closed_loop(
    model: WorldModel,
    latents: Tensor,
    actions: Tensor,
    horizon: int,
    *,
    context: int = 1,
    window: int | None = None,
    states: Tensor | None = None,
    use_cache: bool = True,
) -> Tensor:
    """Teacher-forced rollout: each step predicts frame t from the real latents before it.

    latents ``[B, >= C+H-1, N, D]``; actions ``[B, >= C+H-1, A]``; states ``[B, >= C+H-1, S]`` or None.
    Returns ``[B, H, N, D]``: predictions of frames C..C+H-1, as in ``open_loop``.
    """
    _check_latents("latents", latents)
    if context < 1:
        raise ValueError(f"context must be >= 1 frame, got {context}")
    need = context + horizon - 1
    if horizon >= 1 and latents.shape[1] < need:
        raise ValueError(
            f"latents: closed loop over horizon {horizon} after {context} context frame(s) needs "
            f"{need} frames, found {latents.shape[1]}; shorten the horizon or use a longer episode"
        )
    _check_common(model, latents, actions, horizon, context)
    state_at = None
    if states is not None:
        _check_states(states, latents.shape[0], need)
        state_at = lambda i: states[:, i]  # noqa: E731
    preds: list[Tensor] = []
    return _roll(model, lambda i: latents[:, i], state_at, actions, context, horizon, window, use_cache, preds)


def _roll(
    model: WorldModel,
    frame_at: Callable[[int], Tensor],
    state_at: Callable[[int], Tensor] | None,
    actions: Tensor,
    c: int,
    horizon: int,
    window: int | None,
    use_cache: bool,
    preds: list[Tensor],
) -> Tensor:
    """Shared loop of both modes; ``frame_at(i)`` says which latent stands for frame i."""
    w = _effective_window(model, window)
    b = actions.shape[0]
    if use_cache and isinstance(model, IncrementalWorldModel):
        cache = model.start(b, w)
        for i in range(c + horizon - 1):
            s = state_at(i) if state_at else None
            z, cache = model.step(cache, frame_at(i), actions[:, i], s)
            if i + 1 >= c:
                preds.append(_check_pred(model, z, frame_at(0), i + 2 - c))
        return torch.stack(preds, 1)
    for k in range(1, horizon + 1):
        t = c - 1 + k  # the frame being predicted
        lo = 0 if w is None else max(0, t - w)
        ctx = torch.stack([frame_at(i) for i in range(lo, t)], 1)
        st = torch.stack([state_at(i) for i in range(lo, t)], 1) if state_at else None
        z = model.predict(ctx, actions[:, lo:t], st)
        preds.append(_check_pred(model, z, frame_at(0), k))
    return torch.stack(preds, 1)


def _effective_window(model: WorldModel, window: int | None) -> int | None:
    limit = getattr(model, "max_context", None)
    if window is not None:
        if window < 1:
            raise ValueError(f"context window must be >= 1 frame or None, got {window}")
        if limit is not None and window > limit:
            raise ValueError(
                f"context window {window} exceeds model {model.name!r}'s max_context {limit}; "
                f"use a window <= {limit} or None (= as much as the model takes)"
            )
        return window
    return limit


def _check_common(model: WorldModel, latents: Tensor, actions: Tensor, horizon: int, c: int) -> None:
    if not isinstance(horizon, int) or horizon < 1:
        raise ValueError(f"horizon must be a positive int, got {horizon!r}")
    if c < 1:
        raise ValueError(f"context must hold >= 1 frame, got {c}")
    _check_rank("actions", actions, 3, "[B, T, A]")
    if actions.shape[0] != latents.shape[0]:
        raise ValueError(
            f"actions: batch {actions.shape[0]} does not match the latents' batch {latents.shape[0]}"
        )
    if actions.shape[-1] != model.action_dim:
        hint = ""
        if model.frameskip > 1 and actions.shape[-1] * model.frameskip == model.action_dim:
            hint = f" (recorded actions? group them with block_actions(actions, {model.frameskip}))"
        raise ValueError(
            f"actions: model {model.name!r} takes action_dim {model.action_dim}, "
            f"found {actions.shape[-1]}{hint}"
        )
    need = c + horizon - 1
    if actions.shape[1] < need:
        raise ValueError(
            f"actions: horizon {horizon} after {c} context frame(s) needs {need} actions, found "
            f"{actions.shape[1]}; shorten the horizon or supply more actions"
        )
    if not torch.isfinite(actions[:, :need]).all():
        raise ValueError("actions: contain NaN or inf; clean the action file")


def _check_latents(name: str, x: Tensor) -> None:
    _check_rank(name, x, 4, "[B, T, N, D]")
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected floating-point latents, found dtype {x.dtype}")
    if x.shape[1] < 1:
        raise ValueError(f"{name}: no frames (shape {tuple(x.shape)})")
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).nonzero()[0].tolist()
        raise ValueError(
            f"{name}: contain NaN or inf (first at index {bad}); the encoder or the data is broken"
        )


def _check_states(states: Tensor, batch: int, need: int) -> None:
    _check_rank("states", states, 3, "[B, T, S]")
    if states.shape[0] != batch or states.shape[1] < need:
        raise ValueError(
            f"states: expected [B={batch}, >= {need}, S], found {tuple(states.shape)}"
        )


def _check_pred(model: WorldModel, z: Tensor, like: Tensor, step: int) -> Tensor:
    if tuple(z.shape) != tuple(like.shape):
        raise ValueError(
            f"model {model.name!r} returned shape {tuple(z.shape)} at step {step}, "
            f"expected [B, N, D] = {tuple(like.shape)}"
        )
    if not torch.isfinite(z).all():
        raise ValueError(f"model {model.name!r} predicted NaN or inf at step {step}")
    return z


def _check_rank(name: str, x: Tensor, rank: int, layout: str) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor {layout}, found {type(x).__name__}")
    if x.dim() != rank:
        raise ValueError(f"{name}: expected rank {rank} {layout}, found shape {tuple(x.shape)}")
