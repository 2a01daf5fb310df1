"""The drift plot (cosine vs rollout step, open and closed loop with CI bands, baselines, threshold),
the energy-landscape plot (rank of the recorded actions and goal energy vs perturbation scale), and the
comparison overlay (several models' curves on one axes, for `wmcore compare`)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: CI and robots have no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter  # noqa: E402

from .fsio import write_new  # noqa: E402
from .report import DriftReport  # noqa: E402

__all__ = [
    "Curves",
    "Panel",
    "drift_figure",
    "energy_figure",
    "overlay_axes",
    "overlay_figure",
    "plot_drift",
    "plot_energy",
    "plot_overlay",
    "save_png",
]

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
    per = report.loops["open_loop"].per_episode  # the spread behind the mean: one thin line per episode
    for i, row in enumerate((per or {}).get("cosine", [])):
        ax.plot(steps, [float("nan") if v is None else v for v in row], color=_STYLE["open_loop"]["color"], lw=0.6,
                alpha=0.18, label="open loop, each episode" if i == 0 else None)
    for name in ("closed_loop", "open_loop"):
        s = report.loops[name]
        st = _STYLE[name]
        ax.plot(steps, s.cosine, color=st["color"], lw=2, marker="o", ms=3, label=st["label"] + ", mean, 95% CI")
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
    return save_png(drift_figure(report), path)


# --- energy landscape ----------------------------------------------------------------------------


def energy_figure(report: DriftReport):
    """The energy landscape of ``report`` (caller closes it): left, the rank of the recorded actions per
    perturbation scale (mean, 95% CI over episodes, each episode a thin line) and for the random group;
    right, the candidates' mean goal energy per scale against the recorded actions' and the random
    group's. ValueError if the report has no energy landscape."""
    e = report.energy
    if not e or not e.get("rows"):
        raise ValueError(f"report of {report.model.get('name')!r} has no energy landscape (schema < 3, switched "
                         "off, or actions other than the recorded ones)")
    scaled = [r for r in e["rows"] if r.get("scale") is not None]
    rand = next((r for r in e["rows"] if r.get("scale") is None), None)
    xs = [r["scale"] for r in scaled]
    fig, (ax_r, ax_e) = plt.subplots(1, 2, figsize=(11, 4.3), dpi=110)
    per = [r["per_episode_rank"] for r in scaled]
    for i in range(len(per[0]) if per else 0):  # the spread behind the mean: one thin line per episode
        ax_r.plot(xs, [p[i] for p in per], color="tab:blue", lw=0.6, alpha=0.15,
                  label="each episode" if i == 0 else None)
    ranks = [r["rank"] for r in scaled]
    err = [[r["rank"] - r["rank_lo"] for r in scaled], [r["rank_hi"] - r["rank"] for r in scaled]]
    ax_r.errorbar(xs, ranks, yerr=err, color="tab:blue", lw=2, marker="o", ms=4, capsize=3,
                  label="perturbed recorded actions: mean rank, 95% CI")
    if rand is not None:
        ax_r.axhspan(rand["rank_lo"], rand["rank_hi"], color="tab:orange", alpha=0.2, lw=0)
        ax_r.axhline(rand["rank"], color="tab:orange", lw=1.5,
                     label=f"random (other recorded blocks): {rand['rank']:.3f}")
    ax_r.axhline(0.5, color="black", ls=":", lw=1, label="chance (0.5)")
    for ax in (ax_r, ax_e):  # the scales themselves as ticks: 0.1, 0.25, ... rather than powers of ten
        ax.set_xscale("log")
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax_r.set_ylim(-0.02, 1.0)
    ax_r.set_xlabel("perturbation scale (x the recorded actions' std)")
    ax_r.set_ylabel("rank of the recorded actions (0 = best)")
    ax_r.set_title("does the energy prefer the recorded actions?", fontsize=9.5)
    ax_r.grid(alpha=0.3)
    ax_r.legend(fontsize=7.5, loc="upper right")
    energies = [r["energy"] for r in scaled]
    ax_e.plot(xs, energies, color="tab:blue", lw=2, marker="o", ms=4, label="perturbed: mean energy")
    for x, r in zip(xs, scaled):
        if r.get("energy_ratio") is not None and r["energy_ratio"] != float("inf"):
            ax_e.annotate(f"x{r['energy_ratio']:.2g}", (x, r["energy"]), textcoords="offset points", xytext=(0, 6),
                          ha="center", fontsize=7.5)
    ax_e.axhline(e["energy_recorded"], color="tab:green", lw=1.5, label=f"recorded: {e['energy_recorded']:.3g}")
    if rand is not None:
        ax_e.axhline(rand["energy"], color="tab:orange", lw=1.5, label=f"random: {rand['energy']:.3g}")
    if min([*energies, e["energy_recorded"]]) > 0:
        ax_e.set_yscale("log")
        ax_e.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax_e.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax_e.yaxis.set_minor_formatter(NullFormatter())
    ax_e.set_xlabel("perturbation scale (x the recorded actions' std)")
    ax_e.set_ylabel("goal energy (mean squared latent distance)")
    ax_e.set_title("energy vs perturbation (labels: ratio to the recorded actions')", fontsize=9.5)
    ax_e.grid(alpha=0.3)
    ax_e.legend(fontsize=7.5, loc="lower right")
    fig.suptitle(f"{report.model.get('name')} — energy landscape, goals k={e['k']} model steps ahead, "
                 f"{len(e.get('starts') or [])} starts x {report.data.get('episodes', '?')} episodes", fontsize=10)
    fig.tight_layout()
    return fig


def plot_energy(report: DriftReport, path: str | os.PathLike) -> Path:
    """Write the energy-landscape plot of ``report`` as a PNG to a new file ``path`` (never overwritten)."""
    return save_png(energy_figure(report), path)


# --- comparison overlay ------------------------------------------------------------------------

#: One model's curves in an overlay: (legend label, open-loop cosine [H], closed-loop cosine [H]) and,
#: optionally, its per-episode open-loop cosine curves [n][H] (drawn as thin lines: the spread).
Curves = tuple  # (str, Sequence[float], Sequence[float]) or (str, ..., ..., Sequence[Sequence[float]] | None)
#: One panel of an overlay: (the curves it overlays, drift threshold, panel title).
Panel = tuple[Sequence[Curves], float, str]

_OVERLAY_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink")


def overlay_axes(ax, curves: Sequence[Curves], threshold: float = 0.5, title: str = "") -> None:
    """Draw several models' curves on one axes: open loop solid, closed loop dashed, one colour per
    model (in order: old, new, ...), the threshold line, y from 0 to 1."""
    if not curves:
        raise ValueError("overlay: no curves to draw")
    h = max(len(c[1]) for c in curves)
    for i, (label, open_, closed, *rest) in enumerate(curves):
        colour = _OVERLAY_COLOURS[i % len(_OVERLAY_COLOURS)]
        for j, row in enumerate((rest[0] if rest else None) or []):
            ax.plot(range(1, len(row) + 1), list(row), color=colour, lw=0.6, alpha=0.15,
                    label=f"{label}, open loop, each episode" if j == 0 else None)
        under = i == 0 and len(curves) > 1  # drawn wide and light, so an identical later curve still shows it
        lw, alpha = (3.5, 0.55) if under else (1.8, 1.0)
        ax.plot(range(1, len(open_) + 1), list(open_), color=colour, lw=lw, alpha=alpha, marker="o", ms=3,
                label=f"{label}, open loop")
        ax.plot(range(1, len(closed) + 1), list(closed), color=colour, lw=lw, alpha=alpha, ls="--",
                label=f"{label}, closed loop")
    ax.axhline(threshold, color="red", ls=":", lw=1.2, label=f"threshold {threshold:g}")
    ax.set_xlim(0.5, h + 0.5)
    ax.set_ylim(0, 1)
    ax.set_xlabel("rollout step")
    ax.set_ylabel("cosine to ground-truth latent")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")


def overlay_figure(panels: Sequence[Panel], title: str = ""):
    """A Figure with one overlay panel per ``(curves, threshold, title)`` (caller closes it)."""
    if not panels:
        raise ValueError("overlay: no panels to draw")
    n = len(panels)
    cols = 1 if n == 1 else 2
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(7.5 * cols, 4.5 * rows), dpi=110, squeeze=False)
    for ax, (curves, threshold, panel_title) in zip(axes.flat, panels):
        overlay_axes(ax, curves, threshold, panel_title)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_overlay(panels: Sequence[Panel], path: str | os.PathLike, title: str = "") -> Path:
    """Write the overlay of ``panels`` (see ``overlay_figure``) as a PNG to a new file ``path``
    (never overwritten)."""
    return save_png(overlay_figure(panels, title), path)


# --- policy training curves ---------------------------------------------------------------------

#: One policy's curves: (legend label, its training history: dicts with step, imitation, aux (or
#: None), val_action_mse).
PolicyCurves = tuple


def policy_curves_figure(runs: Sequence[PolicyCurves], title: str = ""):
    """Imitation loss, auxiliary world-model loss and held-out action error against the step, one line
    per policy (``runs``)."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    names = ("imitation", "aux", "val_action_mse")
    heads = ("imitation loss (training)", "auxiliary world-model loss", "held-out action error (MSE)")
    for i, (label, hist) in enumerate(runs):
        colour = _OVERLAY_COLOURS[i % len(_OVERLAY_COLOURS)]
        steps = [h["step"] for h in hist]
        for ax, key in zip(axes, names):
            ys = [h.get(key) for h in hist]
            if any(y is not None for y in ys):
                ax.plot(steps, [float("nan") if y is None else y for y in ys], color=colour, label=label, lw=1.3)
    for ax, head in zip(axes, heads):
        ax.set_title(head, fontsize=10)
        ax.set_xlabel("optimiser step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    if not axes[1].lines:
        axes[1].text(0.5, 0.5, "no auxiliary loss\n(variants gcbc, imagined)", ha="center", va="center",
                     transform=axes[1].transAxes, color="grey")
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def plot_policy_curves(runs: Sequence[PolicyCurves], path: str | os.PathLike, title: str = "") -> Path:
    """Write ``policy_curves_figure`` as a PNG to a new file ``path`` (never overwritten)."""
    return save_png(policy_curves_figure(runs, title), path)


def save_png(fig, path: str | os.PathLike) -> Path:
    """Render ``fig`` as PNG into a new file ``path`` (never overwritten) and close it."""
    try:
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return write_new(path, buf.getvalue())
