"""Drift metrics: pure functions on latents ``[B, H, N, D]`` and curves ``[H]``.

Per-step functions return ``[B, H]`` (one value per episode and step, averaged over tokens); a
*curve* is the mean over episodes, ``[H]``, indexed by step - 1. Errors (L1, MSE) are lower-is-better,
similarities (cosine) higher-is-better.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from .stats import curve_ci, rise_statistic, skill_ci

__all__ = [
    "GATE_RULES",
    "Gate",
    "LoopStats",
    "auc",
    "bootstrap_ci",
    "centred_cosine",
    "chance_level",
    "copy_first",
    "copy_last",
    "cosine",
    "curve",
    "drift_horizon",
    "gate_closed_ge_open",
    "gate_horizon",
    "gate_mean_skill",
    "gate_monotone",
    "gate_skill",
    "gate_step1",
    "horizon_steps",
    "l1",
    "latent_mean",
    "loop_stats",
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
    b, t = latents.shape[:2]
    g = torch.Generator().manual_seed(seed)
    if b >= 2:
        e1 = torch.randint(0, b, (n_pairs,), generator=g)
        e2 = (e1 + torch.randint(1, b, (n_pairs,), generator=g)) % b
        t1 = torch.randint(0, t, (n_pairs,), generator=g)
        t2 = torch.randint(0, t, (n_pairs,), generator=g)
    else:
        gap = t // 2
        if gap < 1:
            raise ValueError(
                f"latents: chance level needs >= 2 episodes or >= 2 frames, found shape {tuple(latents.shape)}"
            )
        e1 = e2 = torch.zeros(n_pairs, dtype=torch.long)
        t1 = torch.randint(0, t - gap, (n_pairs,), generator=g)
        room = t - gap - t1  # choices for t2 in [t1 + gap, t - 1], at least 1
        t2 = t1 + gap + (torch.rand(n_pairs, generator=g, dtype=torch.float64) * room).long()
    a, z = latents[e1, t1], latents[e2, t2]  # [P, N, D]
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
    means = x[idx].mean(1)  # [n_boot, H]
    alpha = (1 - level) / 2
    q = torch.tensor([alpha, 1 - alpha], dtype=torch.float64)
    lo, hi = torch.quantile(means, q, dim=0)
    return lo, hi


# --- one loop's summary and the gates ----------------------------------------------------------


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
    cos = cosine(pred, target)
    lo, hi = bootstrap_ci(cos, n_boot=n_boot, seed=seed)
    err = mse(pred, target)
    cen = centred_cosine(pred, target, mean)
    c = curve(cos)
    return LoopStats(
        cosine=c.tolist(),
        cosine_lo=lo.tolist(),
        cosine_hi=hi.tolist(),
        centred_cosine=curve(cen).tolist(),
        l1=curve(l1(pred, target)).tolist(),
        mse=curve(err).tolist(),
        drift_horizon=drift_horizon(c, threshold),
        auc=auc(c),
        skill={k: skill(err, mse(v, target)).tolist() for k, v in (baselines or {}).items()},
        per_episode={"cosine": float32_rows(cos), "centred_cosine": float32_rows(cen), "mse": float32_rows(err)},
    )


def float32_rows(x: Tensor) -> list[list[float]]:
    """``[B, H]`` -> nested lists at float32 precision (7 significant digits: a JSON number of about
    10 characters instead of 19; per-episode curves need no more)."""
    return [[float(f"{v:.7g}") for v in row] for row in x.double().tolist()]


# The rules of the two shape gates (monotone decay, closed >= open); the threshold gates compare their
# value with the limit under either rule and only report a CI.
#   ci:   fail only when the bootstrap over episodes shows the violation with one-sided 95% confidence
#   mean: fail when the mean curve shows it at all (the rule before gate_rule existed)
GATE_RULES = ("ci", "mean")
# Shape gates: the two-sided 90% interval, whose ends are the one-sided 95% bounds the rule tests;
# basic bootstrap, as their statistics are extremes over steps (see stats.curve_ci).
SHAPE_LEVEL = 0.90
# Threshold gates: the ordinary two-sided 95% interval shown beside the value.
VALUE_LEVEL = 0.95


@dataclass(frozen=True)
class Gate:
    """One asserted drift property: what was measured, against which limit, and whether it held.

    ``lo``/``hi``: the bootstrap CI (over episodes) of ``measured`` when the gate had per-episode
    curves (the level is in the message); None otherwise, and in reports written before they existed.
    """

    name: str
    passed: bool
    measured: float
    limit: float
    message: str
    lo: float | None = None
    hi: float | None = None


def _fmt(c) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in c) + "]"


def _ci_text(level: float, lo: float, hi: float, sign: str = "") -> str:
    return f"{level:.0%} CI [{lo:{sign}.4f}, {hi:{sign}.4f}]"


def _rule(rule: str | None, have_episodes: bool) -> str:
    """``rule`` checked; None means ``ci`` when there are per-episode curves to resample, else ``mean``."""
    if rule is None:
        return "ci" if have_episodes else "mean"
    if rule not in GATE_RULES:
        raise ValueError(f"gate rule {rule!r}: expected one of {', '.join(GATE_RULES)}")
    if rule == "ci" and not have_episodes:
        raise ValueError("gate rule 'ci' needs the per-episode curves [B, H] (nothing to resample without them)")
    return rule


def _rows(x) -> np.ndarray:
    a = np.asarray(x.double().cpu() if isinstance(x, Tensor) else x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"per-episode curves: expected [B, H], found shape {a.shape}")
    return a


def gate_step1(
    curve_: list[float], minimum: float, label: str = "closed loop", *,
    per_episode=None, n_resamples: int = 1000, seed: int = 0,
) -> Gate:
    """Step-1 cosine must be at least ``minimum``. ``per_episode`` ``[B, H]``: the cosines whose mean
    is ``curve_``, for the 95% CI shown beside the value (the verdict is the value's)."""
    v = float(curve_[0])
    ok = v >= minimum
    lo = hi = None
    ci = ""
    if per_episode is not None:
        _, lo, hi = curve_ci([_rows(per_episode)[:, :1]], lambda c: c[..., 0], VALUE_LEVEL, n_resamples, seed)
        ci = f" ({_ci_text(VALUE_LEVEL, lo, hi)})"
    msg = f"{label} step-1 cosine {v:.4f}{ci} {'>=' if ok else '<'} min {minimum:.4f}; curve {_fmt(curve_[:10])}"
    return Gate("step1_cosine", ok, v, minimum, msg, lo, hi)


def gate_monotone(
    curve_: list[float], tol: float, label: str = "open loop", *,
    per_episode=None, rule: str | None = None, n_resamples: int = 1000, seed: int = 0,
) -> Gate:
    """The curve must decay monotonically up to ``tol``: its total climb ``max_rise`` (of the mean
    curve ``curve_``) is the measured value.

    ``per_episode`` ``[B, H]``: the per-episode curves whose mean is ``curve_``; the 90% bootstrap CI
    of the climb (episodes resampled) is then reported. Rule ``ci`` (the default with per-episode
    curves): fail only when the CI's lower end, the one-sided 95% lower bound, exceeds ``tol`` (the
    curve climbs by more than ``tol`` with 95% confidence). Rule ``mean``: fail when the climb itself
    exceeds ``tol``."""
    rule = _rule(rule, per_episode is not None)
    rise, step = max_rise(curve_)
    where = f" at step {step}" if step else ""
    head = f"{label} climbs {rise:.4f}{where} above an earlier step"
    lo = hi = None
    if per_episode is not None:
        _, lo, hi = curve_ci([_rows(per_episode)], rise_statistic, SHAPE_LEVEL, n_resamples, seed, "basic")
        lo, hi = max(lo, 0.0), max(hi, 0.0)  # as max_rise: a curve that never climbs climbs 0
    if rule == "ci":
        ok = lo <= tol
        verdict = ("not above" if ok else "above") + f" the tolerance {tol:.4f} with 95% confidence"
        msg = f"{head}, {_ci_text(SHAPE_LEVEL, lo, hi)}: {verdict} (rule ci: fails if the lower end > tolerance)"
    else:
        ok = rise <= tol
        ci = f"; {_ci_text(SHAPE_LEVEL, lo, hi)}" if lo is not None else ""
        msg = f"{head} (tolerance {tol:.4f}; rule mean{ci})"
    return Gate("monotone_decay", ok, rise, tol, f"{msg}; curve {_fmt(curve_)}", lo, hi)


def gate_closed_ge_open(
    closed: list[float], open_: list[float], tol: float, *,
    closed_episodes=None, open_episodes=None, rule: str | None = None, n_resamples: int = 1000, seed: int = 0,
) -> Gate:
    """Closed loop must not fall below open loop by more than ``tol`` at any step: the worst gap
    ``min_t closed[t] - open[t]`` of the mean curves is the measured value.

    ``closed_episodes``, ``open_episodes`` ``[B, H]``: both loops' per-episode curves on the same
    episodes (rows in the same order), resampled together; the 90% CI of the worst gap is reported.
    Rule ``ci`` (the default with them): fail only when the CI's upper end, the one-sided 95% upper
    bound, is below ``-tol``. Rule ``mean``: fail when the gap itself is below ``-tol``."""
    if (closed_episodes is None) != (open_episodes is None):
        raise ValueError("closed_episodes and open_episodes: give both loops' per-episode curves, or neither")
    rule = _rule(rule, closed_episodes is not None)
    gap, step = worst_gap(closed, open_)
    head = f"closed - open cosine is {gap:+.4f} at step {step}"
    lo = hi = None
    if closed_episodes is not None:
        _, lo, hi = curve_ci([_rows(closed_episodes), _rows(open_episodes)], lambda c, o: (c - o).min(-1),
                             SHAPE_LEVEL, n_resamples, seed, "basic")
    if rule == "ci":
        ok = hi >= -tol
        verdict = ("not below" if ok else "below") + f" {-tol:+.4f} with 95% confidence"
        msg = f"{head}, {_ci_text(SHAPE_LEVEL, lo, hi, '+')}: {verdict} (rule ci: fails if the upper end < {-tol:+.4f})"
    else:
        ok = gap >= -tol
        ci = f"; {_ci_text(SHAPE_LEVEL, lo, hi, '+')}" if lo is not None else ""
        msg = f"{head} (must be >= {-tol:+.4f}; rule mean{ci})"
    return Gate("closed_ge_open", ok, gap, -tol, f"{msg}; closed {_fmt(closed[:10])} open {_fmt(open_[:10])}", lo, hi)


def gate_skill(
    skill_curve: list[float], minimum: float, baseline: str = "copy_last", *,
    errors=None, n_resamples: int = 1000, seed: int = 0,
) -> Gate:
    """Step-1 MSE skill against a persistence baseline must be at least ``minimum``. ``errors``:
    ``(model [B, H], baseline [B, H])`` per-episode MSE, for the 95% CI shown beside the value."""
    v = float(skill_curve[0])
    ok = v >= minimum
    lo = hi = None
    ci = ""
    if errors is not None:
        _, lo, hi = skill_ci(*(_rows(e) for e in errors), 1, VALUE_LEVEL, n_resamples, seed)
        ci = f" ({_ci_text(VALUE_LEVEL, lo, hi, '+')})"
    msg = (f"step-1 MSE skill vs {baseline} {v:+.4f}{ci} {'>=' if ok else '<'} min {minimum:+.4f}; "
           f"curve {_fmt(skill_curve[:10])}")
    return Gate(f"skill_vs_{baseline}", ok, v, minimum, msg, lo, hi)


def gate_mean_skill(
    skill_curve: list[float], steps: int, minimum: float, baseline: str, label: str, *,
    errors=None, n_resamples: int = 1000, seed: int = 0,
) -> Gate:
    """The MSE skill against ``baseline`` averaged over steps 1..``steps`` must be at least ``minimum``.
    ``errors``: ``(model [B, H], baseline [B, H])`` per-episode MSE, for the 95% CI beside the value."""
    n = min(steps, len(skill_curve))
    v = float(sum(skill_curve[:n]) / n)
    ok = v >= minimum
    lo = hi = None
    ci = ""
    if errors is not None:
        _, lo, hi = skill_ci(*(_rows(e) for e in errors), n, VALUE_LEVEL, n_resamples, seed)
        ci = f" ({_ci_text(VALUE_LEVEL, lo, hi, '+')})"
    msg = (
        f"{label} MSE skill vs {baseline} averaged over steps 1..{n} is {v:+.4f}{ci} {'>=' if ok else '<'} "
        f"min {minimum:+.4f}; curve {_fmt(skill_curve[:n])}"
    )
    return Gate(f"mean_skill_{label.replace(' ', '_')}_vs_{baseline}", ok, v, minimum, msg, lo, hi)


def gate_horizon(horizon: int | None, minimum: int, h: int, threshold: float, label: str = "open loop") -> Gate:
    """The drift horizon (first step below ``threshold``) must be at least ``minimum``; a curve that
    never falls below it within the ``h`` steps passes (measured is then ``h + 1``)."""
    v = horizon_steps(horizon, h)
    ok = v >= minimum
    where = f"never falls below {threshold:g} within {h} steps" if horizon is None else f"falls below {threshold:g} at step {horizon}"
    msg = f"{label} {where}; need step >= {minimum}"
    return Gate("drift_horizon", ok, float(v), float(minimum), msg)


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
