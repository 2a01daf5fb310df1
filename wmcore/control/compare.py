"""Paired comparison of two control reports over the same tasks (``wmcore compare`` on control reports).

Success is 0/1 per task; the change of the success rate is the mean of the per-task differences
NEW - BASE, with the paired t interval (``stats.paired_delta``): *regressed* when the rate drops by
more than the tolerance and the CI excludes 0. The score (final / start distance, lower is better)
is compared the same way and reported, not gated. Reports over different tasks are refused.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import WMError
from ..stats import PairedDelta, paired_delta
from .report import FORMAT, ControlReport

__all__ = ["SUCCESS_DROP", "compare_control", "control_pairs", "is_control", "render_comparison"]

SUCCESS_DROP = 0.10  # default tolerated drop of the success rate


def is_control(path: str | os.PathLike) -> bool:
    """A control report file, or a directory holding control reports (and no DriftReport)."""
    p = Path(path)
    if p.is_dir():
        return any(p.glob("control-*.json")) and not any(q for q in p.glob("*.json")
                                                          if not q.name.startswith("control-") and q.name != "tasks.json")
    if p.suffix != ".json" or not p.is_file():
        return False
    with open(p, "rb") as f:
        head = f.read(200)
    return f'"format": "{FORMAT}"'.encode() in head


def control_pairs(base: str | os.PathLike, new: str | os.PathLike) -> list[tuple[str, ControlReport, ControlReport]]:
    """Files: one pair. Directories: the control reports of the same file name in both."""
    b, n = Path(base), Path(new)
    if b.is_file() and n.is_file():
        return [(b.stem, ControlReport.load(b), ControlReport.load(n))]
    if b.is_dir() and n.is_dir():
        names = sorted({p.name for p in b.glob("control-*.json")} & {p.name for p in n.glob("control-*.json")})
        if not names:
            raise WMError(f"{b} and {n}: no control report of the same name in both (control-*.json)")
        return [(Path(x).stem, ControlReport.load(b / x), ControlReport.load(n / x)) for x in names]
    raise WMError(f"compare: give two control report files or two run directories, found {b} and {n}")


def compare_control(base: ControlReport, new: ControlReport, success_drop: float = SUCCESS_DROP) -> dict[str, PairedDelta]:
    """``{"success_rate": ..., "score": ...}`` over the tasks both ran (they must be the same)."""
    ib, inew = [r["id"] for r in base.results], [r["id"] for r in new.results]
    if ib != inew:
        only_b, only_n = sorted(set(ib) - set(inew))[:3], sorted(set(inew) - set(ib))[:3]
        raise WMError(f"the two control reports ran different tasks ({len(ib)} vs {len(inew)}; only in BASE: "
                      f"{only_b}, only in NEW: {only_n}): a paired comparison needs the same task set "
                      "(run NEW with --tasks BASE_DIR/tasks.json)")
    sb = np.array([float(r["success"]) for r in base.results])
    sn = np.array([float(r["success"]) for r in new.results])
    cb = np.array([r["score"] for r in base.results])
    cn = np.array([r["score"] for r in new.results])
    return {"success_rate": paired_delta(sb, sn, success_drop),
            "score": paired_delta(cb, cn, 0.05, higher_is_better=False)}


def render_comparison(name: str, base: ControlReport, new: ControlReport, res: dict[str, PairedDelta]) -> list[str]:
    s, n = base.summary, new.summary
    lines = [f"{name}: {base.controller.get('name')} -> {new.controller.get('name')} on {s['tasks']} tasks (paired)",
             f"  {'metric':<14} {'BASE':>8} {'NEW':>8} {'delta':>8}  {'95% CI of delta':<20} verdict"]
    vals = {"success_rate": (s["success_rate"], n["success_rate"]), "score": (s["score_mean"], n["score_mean"])}
    for k, d in res.items():
        a, b = vals[k]
        sign = 1 if k == "success_rate" else -1  # PairedDelta is signed "positive = better"
        lo, hi = sorted((sign * d.lo, sign * d.hi))
        extra = f" (about {d.needed} tasks would settle it)" if d.needed else ""
        gated = "" if k == "success_rate" else " (not gated)"
        if d.episodes < 2:  # one task: no interval, and the verdict is the value's alone
            ci, extra = f"n/a: {d.episodes} task", extra + " (judged on the value alone)"
        else:
            ci = f"[{lo:+.3f}, {hi:+.3f}]" if hi > lo else "n/a: no spread"
        lines.append(f"  {k:<14} {a:>8.3f} {b:>8.3f} {b - a:>+8.3f}  {ci:<20}{'':<4}{d.verdict}{extra}{gated}")
    return lines
