"""The drift plot: cosine vs rollout step, open and closed loop with CI bands, baselines, threshold."""

from __future__ import annotations

import io
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: CI and robots have no display
import matplotlib.pyplot as plt  # noqa: E402

from .fsio import write_new  # noqa: E402
from .report import DriftReport  # noqa: E402

_STYLE = {
    "open_loop": dict(color="tab:blue", label="open loop (imagined)"),
    "closed_loop": dict(color="tab:green", label="closed loop (teacher forced)"),
    "copy_last": dict(color="tab:gray", ls="--", label="copy-last baseline"),
    "copy_first": dict(color="tab:brown", ls="--", label="copy-first baseline"),
}


def drift_figure(report: DriftReport):
    """The matplotlib Figure of one report (caller closes it)."""
    h = report.horizon
    steps = list(range(1, h + 1))
    thr = float(report.thresholds.get("threshold", 0.5))
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    for name in ("closed_loop", "open_loop"):
        s = report.loops[name]
        st = _STYLE[name]
        ax.plot(steps, s.cosine, color=st["color"], lw=2, marker="o", ms=3, label=st["label"])
        ax.fill_between(steps, s.cosine_lo, s.cosine_hi, color=st["color"], alpha=0.2, lw=0)
    for name in ("copy_last", "copy_first"):
        if name in report.loops:
            st = _STYLE[name]
            ax.plot(steps, report.loops[name].cosine, color=st["color"], ls=st["ls"], lw=1.3, label=st["label"])
    ax.axhline(report.chance_level, color="black", ls=":", lw=1, label=f"chance level {report.chance_level:.2f}")
    ax.axhline(thr, color="red", ls="--", lw=1.2, label=f"threshold {thr:g}")
    dh = report.loops["open_loop"].drift_horizon
    if dh is not None:
        ax.axvline(dh, color="red", lw=0.8, alpha=0.6)
        ax.plot([dh], [report.loops["open_loop"].cosine[dh - 1]], "rv", ms=9, label=f"open-loop drift horizon: step {dh}")
    else:
        ax.plot([], [], " ", label=f"open loop stays above {thr:g} for all {h} steps")
    ax.set_xlim(0.5, h + 0.5)
    ax.set_ylim(0, 1)
    ax.set_xlabel(f"rollout step (1 step = {report.model.get('frameskip', 1)} recorded frame(s))")
    ax.set_ylabel("cosine similarity to ground-truth latent")
    n = report.data.get("episodes", "?")
    verdict = "PASS" if report.passed else "FAIL"
    ax.set_title(
        f"{report.model.get('name')} — latent drift, {n} episodes, actions: "
        f"{report.config.get('action_source')} [{verdict}]",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, loc="lower left")
    fig.tight_layout()
    return fig


def plot_drift(report: DriftReport, path: str | os.PathLike) -> Path:
    """Write the drift plot of ``report`` as a PNG to a new file ``path`` (never overwritten)."""
    fig = drift_figure(report)
    try:
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return write_new(path, buf.getvalue())
