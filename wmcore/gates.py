"""Drift gates: the properties a DriftReport asserts, each with its measured value, limit and CI.

Two rules (``Thresholds.gate_rule``, ``--gate-rule``, ``--wm-gate-rule``):

- ``ci`` (the default when the per-episode curves are there): a gate fails only when the bootstrap
  over episodes shows the violation with one-sided 95% confidence, i.e. when the 90% CI of the gated
  value lies wholly on the wrong side of the limit. With few episodes the CI is wide and a value
  beyond the limit may pass; the message then says "not with 95% confidence".
- ``mean``: a gate fails when the value of the mean curve is beyond the limit at all (the rule before
  gate_rule existed). The CI is still shown.

Every CI resamples whole episodes (``stats.curve_ci``, ``stats.skill_ci``), seeded. With fewer than
2 episodes there is nothing to resample: no interval is computed or printed ("n/a: 1 episode") and
the gate is judged on the value alone (rule ``mean``), which its message says.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor

from .metrics import horizon_steps, max_rise, worst_gap
from .stats import curve_ci, mean_ci, rise_statistic, skill_ci

__all__ = [
    "GATE_LEVEL",
    "GATE_RULES",
    "Gate",
    "gate_at_least",
    "gate_closed_ge_open",
    "gate_horizon",
    "gate_mean_skill",
    "gate_monotone",
    "gate_skill",
    "gate_step1",
]

GATE_RULES = ("ci", "mean")
# The two-sided 90% interval, whose ends are the one-sided 95% bounds the ci rule tests.
GATE_LEVEL = 0.90
_CONFIDENCE = "95% confidence"


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


def _ci_text(lo: float, hi: float, sign: str = "") -> str:
    return f"{GATE_LEVEL:.0%} CI [{lo:{sign}.4f}, {hi:{sign}.4f}]"


def _rule(rule: str | None, have_episodes: bool) -> str:
    """``rule`` checked; None means ``ci`` when there are per-episode curves to resample, else ``mean``."""
    if rule is None:
        return "ci" if have_episodes else "mean"
    if rule not in GATE_RULES:
        raise ValueError(f"gate rule {rule!r}: expected one of {', '.join(GATE_RULES)}")
    if rule == "ci" and not have_episodes:
        raise ValueError("gate rule 'ci' needs the per-episode curves [B, H] (nothing to resample without them)")
    return rule


def _sample(rows: np.ndarray | None, rule: str | None) -> tuple[np.ndarray | None, str | None, str]:
    """Per-episode rows that can carry an interval (2 or more episodes), the rule to apply, and the note
    for a gate judged without one: ``(None, "mean", "n/a: 1 episode, ...")`` below 2 episodes."""
    if rows is None or rows.shape[0] >= 2:
        return rows, rule, ""
    n = rows.shape[0]
    return None, "mean", f" (n/a: {n} episode{'' if n == 1 else 's'}, no interval; judged on the value alone)"


def _rows(x) -> np.ndarray:
    a = np.asarray(x.double().cpu() if isinstance(x, Tensor) else x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"per-episode curves: expected [B, H], found shape {a.shape}")
    return a


def gate_at_least(
    name: str, what: str, v: float, minimum: float, ci: tuple[float, float] | None, rule: str | None, tail: str,
    sign: str = "+", note: str = "",
) -> Gate:
    """A threshold gate ``v >= minimum`` (``ci``: its ``GATE_LEVEL`` interval, or None). Rule ``ci``:
    fails only when the CI's upper end, the one-sided 95% upper bound, is below ``minimum``; rule
    ``mean``: when ``v`` is. ``sign``: "+" to print the sign of values (skills), "" not to (cosines).
    ``note``: why there is no interval (too few episodes or tasks), printed in its place."""
    rule = _rule(rule, ci is not None)
    lo, hi = ci if ci is not None else (None, None)
    ci_text = f" ({_ci_text(lo, hi, sign)})" if ci is not None else note
    head, limit = f"{what} {v:{sign}.4f}{ci_text}", f"min {minimum:{sign}.4f}"
    if rule == "ci":
        ok = hi >= minimum
        if v >= minimum:
            verdict = f">= {limit}"
        elif ok:
            verdict = f"< {limit}, but not with {_CONFIDENCE} (rule ci: fails if the upper end < min)"
        else:
            verdict = f"< {limit} with {_CONFIDENCE} (rule ci: fails if the upper end < min)"
    else:
        ok = v >= minimum
        verdict = f"{'>=' if ok else '<'} {limit} (rule mean)"
    return Gate(name, ok, v, minimum, f"{head} {verdict}; {tail}", lo, hi)


def gate_step1(
    curve_: list[float], minimum: float, label: str = "closed loop", *,
    per_episode=None, rule: str | None = None, n_resamples: int = 1000, seed: int = 0,
) -> Gate:
    """Step-1 cosine (of the mean curve ``curve_``) must be at least ``minimum``. ``per_episode``
    ``[B, H]``: the cosines whose mean is ``curve_``, for the 90% CI (the t interval of a mean, as
    ``wmcore compare`` uses: ``stats.mean_ci``) and the ``ci`` rule."""
    rows, rule, note = _sample(None if per_episode is None else _rows(per_episode), rule)
    ci = None if rows is None else mean_ci(rows[:, 0], GATE_LEVEL)
    return gate_at_least("step1_cosine", f"{label} step-1 cosine", float(curve_[0]), minimum, ci, rule,
                         f"curve {_fmt(curve_[:10])}", sign="", note=note)


def gate_skill(
    skill_curve: list[float], minimum: float, baseline: str = "copy_last", *,
    errors=None, rule: str | None = None, n_resamples: int = 1000, seed: int = 0,
) -> Gate:
    """Step-1 MSE skill against a persistence baseline must be at least ``minimum``. ``errors``:
    ``(model [B, H], baseline [B, H])`` per-episode MSE, for the 90% CI and the ``ci`` rule."""
    rows, rule, note = _sample(None if errors is None else _rows(errors[0]), rule)
    ci = None if rows is None else skill_ci(*(_rows(e) for e in errors), 1, GATE_LEVEL, n_resamples, seed)[1:]
    return gate_at_least(f"skill_vs_{baseline}", f"step-1 MSE skill vs {baseline}", float(skill_curve[0]), minimum, ci,
                         rule, f"curve {_fmt(skill_curve[:10])}", note=note)


def gate_mean_skill(
    skill_curve: list[float], steps: int, minimum: float, baseline: str, label: str, *,
    errors=None, rule: str | None = None, n_resamples: int = 1000, seed: int = 0,
) -> Gate:
    """The MSE skill against ``baseline`` averaged over steps 1..``steps`` must be at least ``minimum``.
    ``errors``: ``(model [B, H], baseline [B, H])`` per-episode MSE, for the 90% CI and the ``ci`` rule."""
    n = min(steps, len(skill_curve))
    rows, rule, note = _sample(None if errors is None else _rows(errors[0]), rule)
    ci = None if rows is None else skill_ci(*(_rows(e) for e in errors), n, GATE_LEVEL, n_resamples, seed)[1:]
    return gate_at_least(f"mean_skill_{label.replace(' ', '_')}_vs_{baseline}",
                         f"{label} MSE skill vs {baseline} averaged over steps 1..{n} is", float(sum(skill_curve[:n]) / n),
                         minimum, ci, rule, f"curve {_fmt(skill_curve[:n])}", note=note)


def gate_monotone(
    curve_: list[float], tol: float, label: str = "open loop", *,
    per_episode=None, rule: str | None = None, n_resamples: int = 1000, seed: int = 0,
) -> Gate:
    """The curve must decay monotonically up to ``tol``: its total climb ``max_rise`` (of the mean
    curve ``curve_``) is the measured value.

    ``per_episode`` ``[B, H]``: the per-episode curves whose mean is ``curve_``; the 90% bootstrap CI
    of the climb (episodes resampled, basic bootstrap: the climb is an extreme over steps) is then
    reported. Rule ``ci`` (the default with per-episode curves): fail only when the CI's lower end,
    the one-sided 95% lower bound, exceeds ``tol``. Rule ``mean``: fail when the climb exceeds ``tol``."""
    rows, rule, note = _sample(None if per_episode is None else _rows(per_episode), rule)
    rule = _rule(rule, rows is not None)
    rise, step = max_rise(curve_)
    where = f" at step {step}" if step else ""
    head = f"{label} climbs {rise:.4f}{where} above an earlier step{note}"
    lo = hi = None
    if rows is not None:
        _, lo, hi = curve_ci([rows], rise_statistic, GATE_LEVEL, n_resamples, seed, "basic")
        lo, hi = max(lo, 0.0), max(hi, 0.0)  # as max_rise: a curve that never climbs climbs 0
    if rule == "ci":
        ok = lo <= tol
        verdict = ("not above" if ok else "above") + f" the tolerance {tol:.4f} with {_CONFIDENCE}"
        msg = f"{head}, {_ci_text(lo, hi)}: {verdict} (rule ci: fails if the lower end > tolerance)"
    else:
        ok = rise <= tol
        ci = f"; {_ci_text(lo, hi)}" if lo is not None else ""
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
    rows, rule, note = _sample(None if closed_episodes is None else _rows(closed_episodes), rule)
    rule = _rule(rule, rows is not None)
    gap, step = worst_gap(closed, open_)
    head = f"closed - open cosine is {gap:+.4f} at step {step}{note}"
    lo = hi = None
    if rows is not None:
        _, lo, hi = curve_ci([rows, _rows(open_episodes)], lambda c, o: (c - o).min(-1),
                             GATE_LEVEL, n_resamples, seed, "basic")
    if rule == "ci":
        ok = hi >= -tol
        verdict = ("not below" if ok else "below") + f" {-tol:+.4f} with {_CONFIDENCE}"
        msg = f"{head}, {_ci_text(lo, hi, '+')}: {verdict} (rule ci: fails if the upper end < {-tol:+.4f})"
    else:
        ok = gap >= -tol
        ci = f"; {_ci_text(lo, hi, '+')}" if lo is not None else ""
        msg = f"{head} (must be >= {-tol:+.4f}; rule mean{ci})"
    return Gate("closed_ge_open", ok, gap, -tol, f"{msg}; closed {_fmt(closed[:10])} open {_fmt(open_[:10])}", lo, hi)


def gate_horizon(horizon: int | None, minimum: int, h: int, threshold: float, label: str = "open loop") -> Gate:
    """The drift horizon (first step below ``threshold``) must be at least ``minimum``; a curve that
    never falls below it within the ``h`` steps passes (measured is then ``h + 1``). No CI: a step
    count of the mean curve, gated as it is under either rule."""
    v = horizon_steps(horizon, h)
    ok = v >= minimum
    where = f"never falls below {threshold:g} within {h} steps" if horizon is None else f"falls below {threshold:g} at step {horizon}"
    msg = f"{label} {where}; need step >= {minimum}"
    return Gate("drift_horizon", ok, float(v), float(minimum), msg)
