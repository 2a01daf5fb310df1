"""What the model imagines, without a decoder: a filmstrip of an open-loop rollout.

Per episode two rows: the true frames at a few rollout steps on top, and under each the real frame of
the evaluation set whose latent is nearest to the *imagined* latent (cosine, averaged over tokens, as
the drift curves), searched in a bank of every other episode's latents (the episode itself is left
out: its own future frames would be found trivially). Each lower tile carries the step's cosine
between imagined and true latent; the first step below the drift threshold is framed in red. Where
the lower row stops showing the scene of the upper row, imagination has left the world: the drift
horizon, made visible.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from .drift import Prepared, chunk_rollouts
from .errors import WMError
from .metrics import _token_cosine
from .plot import plt, save_png
from .protocol import WorldModel
from .settings import EvalConfig

__all__ = ["filmstrip", "filmstrip_of_episodes", "model_step_frames", "nearest_frames"]

# episodes drawn and columns (rollout steps) per episode
EPISODES, COLUMNS = 3, 8


def model_step_frames(model: WorldModel, episodes, cfg: EvalConfig, s: int) -> Tensor:
    """The recorded frames at the model's steps, as ``prepare`` cuts them: ``[B, S+1, H, W, 3]``."""
    from .drift import cut_start
    from .episode import stack
    from .rollout import subsample

    return subsample(cut_start(stack(episodes), cfg.start).frames, model.frameskip)[:, : s + 1]


def filmstrip_of_episodes(model: WorldModel, data, cfg: EvalConfig, path: str | os.PathLike,
                          prep: Prepared | None = None, **kw) -> Path:
    """``filmstrip`` from a list of episodes ``data`` (encoded here unless ``prep``, their ``prepare``, is
    given); ``kw``: ``filmstrip``'s (``episodes``, ``columns``, ``threshold``)."""
    from .drift import prepare

    if Path(path).exists():  # before the encoding, not after
        raise WMError(f"{path}: exists already; choose another name (nothing is overwritten)")
    _check_episodes(len(data))  # before the encoding, too
    prep = prep if prep is not None else prepare(model, data, cfg)
    return filmstrip(model, prep, model_step_frames(model, data, cfg, prep.latents.shape[1] - 1), cfg, path, **kw)


def nearest_frames(pred: Tensor, bank: Tensor, exclude: Tensor) -> tuple[Tensor, Tensor]:
    """For imagined latents ``pred [K, N, D]``, the index of the nearest latent in ``bank [M, N, D]``
    (cosine over D, mean over tokens) and that cosine, each ``[K]``; bank rows where ``exclude [M]`` is
    True are never chosen."""
    sims = torch.stack([_token_cosine(p.expand_as(bank), bank).mean(-1) for p in pred])  # [K, M]
    sims[:, exclude] = -float("inf")
    best, idx = sims.max(1)
    return idx, best


def _check_episodes(n: int) -> None:
    if n < 2:
        raise WMError("a filmstrip needs 2 or more episodes: the nearest frames come from the other episodes")


def filmstrip(model: WorldModel, prep: Prepared, frames: Tensor, cfg: EvalConfig, path: str | os.PathLike, *,
              episodes: int = EPISODES, columns: int = COLUMNS, threshold: float = 0.5) -> Path:
    """Draw the filmstrip (module docstring) of the first ``episodes`` episodes of ``prep`` (latents
    ``[B, S+1, N, D]``, recorded actions) with their frames at model steps ``frames [B, S+1, H, W, 3]``:
    ``columns`` rollout steps spread over the horizon. Needs 2 or more episodes (a bank without the
    episode itself). A new PNG at ``path``."""
    b = prep.latents.shape[0]
    _check_episodes(b)
    c, h = cfg.context, cfg.horizon
    steps = sorted({max(1, round(i * h / columns)) for i in range(1, columns + 1)})
    z = prep.latents.cpu().float()
    bank = z.reshape(-1, *z.shape[2:])  # [B * (S+1), N, D]
    owner = torch.arange(b).repeat_interleave(z.shape[1])
    shown = list(range(min(episodes, b)))
    states = None if prep.states is None else prep.states[shown]
    # the evaluation's own open loop (states for a model that reads them, as in the drift curves)
    pred = chunk_rollouts(model, prep.latents[shown], prep.actions[shown], states, cfg)[0].cpu().float()  # [E, H, N, D]
    fig, axes = plt.subplots(2 * len(shown), len(steps), figsize=(1.6 * len(steps), 3.5 * len(shown)), squeeze=False)
    for row, e in enumerate(shown):
        k = torch.tensor(steps) - 1
        idx, _ = nearest_frames(pred[e, k], bank, owner == e)
        true_cos = _token_cosine(pred[e, k], z[e, c + k]).mean(-1)  # [K]: imagined vs the true latent
        fallen = next((j for j, v in enumerate(true_cos.tolist()) if v < threshold), None)
        for j, step in enumerate(steps):
            top, low = axes[2 * row, j], axes[2 * row + 1, j]
            top.imshow(frames[e, c - 1 + step].numpy())
            m = int(idx[j])
            low.imshow(frames[m // z.shape[1], m % z.shape[1]].numpy())
            low.set_xlabel(f"cos {true_cos[j]:.2f}", fontsize=8)
            top.set_title(f"step {step}", fontsize=8)
            for ax in (top, low):
                ax.set_xticks([])
                ax.set_yticks([])
            if j == fallen:
                for side in low.spines.values():
                    side.set_edgecolor("red")
                    side.set_linewidth(2.5)
        axes[2 * row, 0].set_ylabel(f"{prep.ids[e]}\ntrue", fontsize=7)
        axes[2 * row + 1, 0].set_ylabel("nearest to\nimagined", fontsize=7)
    fig.suptitle(f"{model.name}: what the open loop imagines (lower rows: the nearest real frame of the other "
                 f"episodes; red: first step with cos < {threshold:g})", fontsize=9)
    fig.tight_layout()
    return save_png(fig, path)
