"""Drift metrics: pure functions on latents ``[B, H, N, D]`` and curves ``[H]``.

Per-step functions return ``[B, H]`` (one value per episode and step, averaged over tokens); a
*curve* is the mean over episodes, ``[H]``, indexed by step - 1. Errors (L1, MSE) are lower-is-better,
similarities (cosine) higher-is-better.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor


__all__ = [
    "LoopStats",
    "auc",
    "bootstrap_ci",
    "centred_cosine",
    "chance_level",
    "chance_pairs",
    "copy_first",
    "copy_last",
    "cosine",
    "curve",
    "drift_horizon",
    "horizon_steps",
    "l1",
    "latent_mean",
    "loop_rows",
    "loop_stats",
    "loop_stats_from_rows",
    "pair_cosine",
    "max_rise",
    "mse",
    "skill",
    "worst_gap",
]

# --- per-step similarity and error -------------------------------------------------------------


def cosine(pred: Tensor, target: Tensor) -> Tensor:
    """Cosine similarity over D, averaged over the N tokens: ``[B,H,N,D] x2 -> [B,H]``.

    Computed in float64; a zero vector has cosine 0 with anything.
    """
    _same_shape(pred, target)
    return _token_cosine(pred, target).mean(-1)


def _token_cosine(a: Tensor, b: Tensor) -> Tensor:
    """Cosine over the last dim, exact for any scale: each vector is first divided by its largest
    entry, so neither tiny nor huge norms under- or overflow (a fixed eps would bias tiny vectors)."""
    a, b = _unit_scale(a.double()), _unit_scale(b.double())
    na, nb = a.norm(dim=-1), b.norm(dim=-1)
    dot = (a * b).sum(-1)
    ok = (na > 0) & (nb > 0)
    return torch.where(ok, dot / torch.where(ok, na * nb, torch.ones_like(na)), torch.zeros_like(dot))


def _unit_scale(x: Tensor) -> Tensor:
    m = x.abs().amax(-1, keepdim=True)
    return x / torch.where(m > 0, m, torch.ones_like(m))


def centred_cosine(pred: Tensor, target: Tensor, mean: Tensor) -> Tensor:
    """Cosine after subtracting the data set's mean latent ``mean`` (``[N, D]`` or ``[D]``) from both:
    ``[B,H,N,D] x2 -> [B,H]``. Removes the shared offset that makes unrelated frames look similar."""
    return cosine(pred.double() - mean.double(), target.double() - mean.double())


def l1(pred: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error over N and D: ``[B,H,N,D] x2 -> [B,H]``."""
    _same_shape(pred, target)
    return (pred.double() - target.double()).abs().mean((-2, -1))


def mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over N and D: ``[B,H,N,D] x2 -> [B,H]``."""
    _same_shape(pred, target)
    return (pred.double() - target.double()).pow(2).mean((-2, -1))


def curve(per_episode: Tensor) -> Tensor:
    """Mean over episodes: ``[B, H] -> [H]``."""
    return per_episode.mean(0)


# --- baselines ---------------------------------------------------------------------------------


def copy_last(latents: Tensor, horizon: int, context: int = 1) -> Tensor:
    """Persistence baseline of closed loop: frame t is predicted by the real frame t-1.

    latents ``[B, >= C+H, N, D]`` -> ``[B, H, N, D]`` aligned with ``latents[:, C:C+H]``.
    """
    _enough(latents, context + horizon, "copy_last")
    return latents[:, context - 1 : context - 1 + horizon]


def copy_first(latents: Tensor, horizon: int, context: int = 1) -> Tensor:
    """Persistence baseline of open loop: every frame is predicted by the last context frame.

    latents ``[B, >= C, N, D]`` -> ``[B, H, N, D]``.
    """
    _enough(latents, context, "copy_first")
    last = latents[:, context - 1 : context]
    return last.expand(-1, horizon, -1, -1)


def skill(err_model: Tensor, err_baseline: Tensor) -> Tensor:
    """Skill score ``1 - err_model / err_baseline`` per step, on episode means of an error.

    ``[B, H]`` (or ``[H]``) x2 -> ``[H]``. 1 is perfect, 0 is no better than the baseline, negative is
    worse. A step where the baseline error is 0 gets -inf if the model errs there, else 0.
    """
    m = err_model.mean(0) if err_model.dim() == 2 else err_model
    b = err_baseline.mean(0) if err_baseline.dim() == 2 else err_baseline
    out = 1 - m / b.clamp_min(1e-300)
    return torch.where(b > 0, out, torch.where(m > 0, -math.inf, 0.0))


def latent_mean(latents: Tensor) -> Tensor:
    """The data set's mean latent per token position: ``[B, T, N, D] -> [N, D]``."""
    return latents.double().mean((0, 1))


def chance_level(latents: Tensor, n_pairs: int = 1000, seed: int = 0) -> float:
    """Mean cosine between latents of unrelated frames: ``[B, T, N, D] -> float``.

    Pairs are drawn (seeded) from different episodes. With a single episode, from frames at least
    T//2 apart. A model's cosine means something only well above this level.
    """
    e1, t1, e2, t2 = chance_pairs(latents.shape[0], latents.shape[1], n_pairs, seed)
    return pair_cosine(latents[e1, t1], latents[e2, t2])


def chance_pairs(b: int, t: int, n_pairs: int = 1000, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The frames ``chance_level`` pairs for ``b`` episodes of ``t`` frames: ``(e1, t1, e2, t2)``, each
    ``[n_pairs]``. Drawn from ``b`` and ``t`` alone, so a streaming evaluation knows before it reads a
    frame which latents it must keep."""
    g = torch.Generator().manual_seed(seed)
    if b >= 2:
        e1 = torch.randint(0, b, (n_pairs,), generator=g)
        e2 = (e1 + torch.randint(1, b, (n_pairs,), generator=g)) % b
        t1 = torch.randint(0, t, (n_pairs,), generator=g)
        t2 = torch.randint(0, t, (n_pairs,), generator=g)
        return e1, t1, e2, t2
    gap = t // 2
    if gap < 1:
        raise ValueError(f"latents: chance level needs >= 2 episodes or >= 2 frames, found {b} episode(s) of {t} frame(s)")
    e1 = e2 = torch.zeros(n_pairs, dtype=torch.long)
    t1 = torch.randint(0, t - gap, (n_pairs,), generator=g)
    room = t - gap - t1  # choices for t2 in [t1 + gap, t - 1], at least 1
    t2 = t1 + gap + (torch.rand(n_pairs, generator=g, dtype=torch.float64) * room).long()
    return e1, t1, e2, t2


def pair_cosine(a: Tensor, z: Tensor) -> float:
    """Mean cosine of paired frames ``[P, N, D] x2 -> float`` (over tokens, then pairs)."""
    return float(_token_cosine(a, z).mean())


# --- curve summaries ---------------------------------------------------------------------------


def drift_horizon(curve_: Tensor, threshold: float = 0.5) -> int | None:
    """First step (1-based) whose value falls below ``threshold``; None if it never does within H.

    None is distinct from H: "still above at step H" is not "fell at step H".
    """
    below = (torch.as_tensor(curve_, dtype=torch.float64) < threshold).nonzero()
    return int(below[0, 0]) + 1 if len(below) else None


def horizon_steps(horizon: int | None, h: int) -> int:
    """A drift horizon as a number to compare: never falling below the threshold within the ``h``
    rolled-out steps (None) counts as ``h + 1``, one step beyond anything measured."""
    return h + 1 if horizon is None else horizon


def auc(curve_: Tensor) -> float:
    """Normalised area under a curve over steps 1..H: the mean of the curve (1.0 for a perfect cosine)."""
    return float(torch.as_tensor(curve_, dtype=torch.float64).mean())


def max_rise(curve_: Tensor) -> tuple[float, int | None]:
    """How far the curve ever climbs above its lowest earlier value, and at which step (1-based).

    A decaying curve is *monotone up to noise* with tolerance ``tol`` iff ``max_rise <= tol``, i.e.
    ``c[j] <= c[i] + tol`` for every ``i < j``. (A per-step limit would let a slow staircase climb
    arbitrarily far; this bounds the total climb.) Returns ``(0.0, None)`` for a non-increasing curve.
    """
    c = torch.as_tensor(curve_, dtype=torch.float64)
    if len(c) < 2:
        return 0.0, None
    running_min = torch.cummin(c, 0).values
    rise = c[1:] - running_min[:-1]
    j = int(rise.argmax())
    worst = float(rise[j])
    return (worst, j + 2) if worst > 0 else (0.0, None)


def worst_gap(closed: Tensor, open_: Tensor) -> tuple[float, int]:
    """Smallest ``closed - open`` over the steps and its step (1-based): ``[H] x2 -> (gap, step)``."""
    d = torch.as_tensor(closed, dtype=torch.float64) - torch.as_tensor(open_, dtype=torch.float64)
    j = int(d.argmin())
    return float(d[j]), j + 1


def bootstrap_ci(
    per_episode: Tensor, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Percentile bootstrap confidence interval of the episode mean, per step.

    per_episode ``[B, H]`` -> ``(lo [H], hi [H])``. Seeded, so the same input gives the same band.
    With one episode the band collapses onto the value (there is nothing to resample).
    """
    if per_episode.dim() != 2:
        raise ValueError(f"per_episode: expected [B, H], found shape {tuple(per_episode.shape)}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    x = per_episode.double()
    b = x.shape[0]
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, b, (n_boot, b), generator=g)
    # resampled means a block of resamples at a time: memory stays flat in the number of episodes
    block = max(1, 2**20 // max(1, b * x.shape[1]))
    means = torch.cat([x[idx[i : i + block]].mean(1) for i in range(0, n_boot, block)])  # [n_boot, H]
    alpha = (1 - level) / 2
    q = torch.tensor([alpha, 1 - alpha], dtype=torch.float64)
    lo, hi = torch.quantile(means, q, dim=0)
    return lo, hi


# --- one loop's summary ----------------------------------------------------------


@dataclass(frozen=True)
class LoopStats:
    """Everything measured for one rollout mode (or baseline), as plain lists for JSON.

    Curves have length H and are indexed by step - 1.
    """

    cosine: list[float]
    cosine_lo: list[float]
    cosine_hi: list[float]
    centred_cosine: list[float]
    l1: list[float]
    mse: list[float]
    drift_horizon: int | None
    auc: float
    skill: dict[str, list[float]] = field(default_factory=dict)
    # per-episode curves [B][H] (float32 precision: 7 significant digits), "cosine", "centred_cosine",
    # "mse"; in the order of the report's data.episode_ids. None in reports of schema version 1.
    per_episode: dict[str, list[list[float]]] | None = None

    def at(self, step: int) -> float:
        """Cosine at a 1-based step."""
        return self.cosine[step - 1]


def loop_stats(
    pred: Tensor,
    target: Tensor,
    *,
    mean: Tensor,
    baselines: dict[str, Tensor] | None = None,
    threshold: float = 0.5,
    n_boot: int = 1000,
    seed: int = 0,
) -> LoopStats:
    """Summarise predictions ``pred`` against ``target`` (both ``[B, H, N, D]``).

    ``mean``: the data set's mean latent (``latent_mean``); ``baselines``: name -> baseline predictions
    ``[B, H, N, D]`` for MSE skill scores.
    """
    return loop_stats_from_rows(loop_rows(pred, target, mean), {k: mse(v, target) for k, v in (baselines or {}).items()},
                                threshold=threshold, n_boot=n_boot, seed=seed)


def loop_rows(pred: Tensor, target: Tensor, mean: Tensor) -> dict[str, Tensor]:
    """The per-episode values ``loop_stats`` summarises: ``cosine``, ``centred_cosine``, ``l1``, ``mse``,
    each float64 ``[B, H]`` on the CPU. Rows of separate chunks of episodes, concatenated in order, are
    the rows of the whole batch: a streaming evaluation keeps only these."""
    return {"cosine": cosine(pred, target).cpu(), "centred_cosine": centred_cosine(pred, target, mean).cpu(),
            "l1": l1(pred, target).cpu(), "mse": mse(pred, target).cpu()}


def loop_stats_from_rows(
    rows: dict[str, Tensor], baselines: dict[str, Tensor] | None = None, *, threshold: float = 0.5,
    n_boot: int = 1000, seed: int = 0,
) -> LoopStats:
    """``loop_stats`` from ``loop_rows`` (``[B, H]`` each) and the baselines' per-episode MSE ``[B, H]``."""
    cos, cen, err = rows["cosine"], rows["centred_cosine"], rows["mse"]
    lo, hi = bootstrap_ci(cos, n_boot=n_boot, seed=seed)
    c = curve(cos)
    return LoopStats(
        cosine=c.tolist(),
        cosine_lo=lo.tolist(),
        cosine_hi=hi.tolist(),
        centred_cosine=curve(cen).tolist(),
        l1=curve(rows["l1"]).tolist(),
        mse=curve(err).tolist(),
        drift_horizon=drift_horizon(c, threshold),
        auc=auc(c),
        skill={k: skill(err, v).tolist() for k, v in (baselines or {}).items()},
        per_episode={"cosine": float32_rows(cos), "centred_cosine": float32_rows(cen), "mse": float32_rows(err)},
    )


def float32_rows(x: Tensor) -> list[list[float]]:
    """``[B, H]`` -> nested lists at float32 precision (7 significant digits: a JSON number of about
    10 characters instead of 19; per-episode curves need no more)."""
    return [[float(f"{v:.7g}") for v in row] for row in x.double().tolist()]


# --- helpers -----------------------------------------------------------------------------------


def _same_shape(pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape [B, H, N, D], found {tuple(pred.shape)} "
            f"and {tuple(target.shape)}"
        )
    if pred.dim() < 2:
        raise ValueError(f"pred: expected [B, H, N, D], found shape {tuple(pred.shape)}")


def _enough(latents: Tensor, need: int, what: str) -> None:
    if latents.dim() != 4 or latents.shape[1] < need:
        raise ValueError(
            f"latents: {what} needs [B, >= {need}, N, D], found shape {tuple(latents.shape)}"
        )
