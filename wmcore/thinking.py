"""The thinking curve: a thinking world model (``protocol.ThinkingWorldModel``) measured along its
budget K. For each K on the same episodes (encoded once: the encoder does not think): open-loop AUC
with its 95% CI over episodes and the paired change against K = 1 (``stats.paired_delta``), the
drift horizon, the closed-loop step-1 skill against copy-last, the energy landscape's ranks, the time
per predicted step, the refinement's inner residual ``|z_k - z_(k-1)|`` per inner step where the model
exposes it (does it converge?), and, given tasks, planning success (Wilson CI; the paired change
against K = 1 over the same tasks) and time per planned action.

``think_no_worse``: more thinking must not be significantly worse than K = 1 (the paired AUC change
below -0.02 with its 95% CI excluding 0 fails: ``wmcore compare``'s regression rule), an optional gate; ``scripts/thinking_curve.py`` and the bench's thinking
case call ``curve``, ``render`` and ``plot``.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .drift import Prepared, prepare
from .errors import WMError
from .evaluate import evaluate
from .plot import save_png
from .report import DriftReport
from .settings import EvalConfig, Thresholds, Tolerances, apply_think
from .stats import mean_ci, paired_delta

__all__ = ["ablations", "curve", "plot", "render", "render_ablations", "think_no_worse", "time_per_step"]

Log = Callable[[str], None]


def _auc_rows(report: DriftReport) -> np.ndarray:
    per = report.loops["open_loop"].per_episode
    if not per:
        raise WMError("the report has no per-episode curves (schema 1); re-run it")
    return np.asarray(per["cosine"], dtype=np.float64).mean(1)


def think_no_worse(base: DriftReport, other: DriftReport, tolerance: float = Tolerances().auc_drop) -> dict:
    """The paired change of open-loop AUC, ``other`` (K) minus ``base`` (K = 1), over the same episodes,
    judged as ``wmcore compare`` judges a new model version (``stats.paired_delta``): ``passed`` unless
    it *regressed*: the change is below ``-tolerance`` (the compare's ``auc_drop``, 0.02) and its 95% CI
    excludes 0."""
    if base.data.get("episode_ids") != other.data.get("episode_ids"):
        raise WMError("think_no_worse: the two reports ran over different episodes")
    d = paired_delta(_auc_rows(base), _auc_rows(other), tolerance)
    return {"delta": d.delta, "lo": d.lo, "hi": d.hi, "episodes": d.episodes, "tolerance": tolerance,
            "verdict": d.verdict, "passed": d.verdict != "regressed"}


def time_per_step(model: Any, prep: Prepared, k: int, batch: int = 32, repeats: int = 50) -> float:
    """Median seconds of one ``predict`` at budget ``k`` on ``batch`` contexts of the prepared episodes."""
    apply_think(model, k)
    ctx = min(model.max_context or 1, prep.actions.shape[1])
    idx = torch.arange(batch) % prep.latents.shape[0]
    z, a = prep.latents[idx, :ctx], prep.actions[idx, :ctx]
    st = None if prep.states is None else prep.states[idx, :ctx]
    times = []
    with torch.inference_mode():
        model.predict(z, a, st)  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.predict(z, a, st)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _residuals(model: Any, prep: Prepared, k: int, batch: int = 256) -> list[float] | None:
    """The mean inner residual of each refinement pass at budget ``k`` (None: the model exposes none)."""
    if not callable(getattr(model, "residuals", None)):
        return None
    if k < 2:
        return []
    b, s = prep.latents.shape[:2]
    e = torch.arange(batch) % b
    t = (torch.arange(batch) * 7) % (s - 1)
    r = model.residuals(prep.latents[e, t][:, None], prep.actions[e, t][:, None], k)  # [batch, k-1]
    return [float(x) for x in r.mean(0)]


def curve(model: Any, episodes, ks: Sequence[int], cfg: EvalConfig, thresholds: Thresholds, *, spec: str,
          data_id: str, plan: Callable[[int], Any] | None = None, log: Log = lambda s: None) -> dict:
    """The thinking curve of ``model`` at each budget in ``ks`` (K = 1 first, as the reference).
    ``plan(k)``: a function that plans the task set with the model at budget ``k`` and returns its
    ControlReport (None: no planning). Returns a JSON-able document; the DriftReports are in
    ``doc["reports"]`` (not JSON) for the caller to save."""
    ks = sorted(set(int(k) for k in ks))
    if not ks or ks[0] != 1:
        raise WMError(f"thinking budgets {ks}: the curve needs K = 1 (the reference) among them")
    for k in ks:
        apply_think(model, k)  # every K checked before any work
    apply_think(model, 1)
    t0 = time.perf_counter()
    prep = episodes if isinstance(episodes, Prepared) else prepare(model, episodes, cfg)
    log(f"encoded {len(prep.ids)} episodes ({time.perf_counter() - t0:.0f} s)")
    rows, reports, controls = [], {}, {}
    for k in ks:
        t1 = time.perf_counter()
        rep = evaluate(model, prep, dataclasses.replace(cfg, think=k), thresholds, spec=spec, data_id=data_id)
        reports[k] = rep
        op, cl = rep.loops["open_loop"], rep.loops["closed_loop"]
        row: dict[str, Any] = {
            "think": k, **_drift_row(rep), "drift_horizon": op.drift_horizon, "step1_cosine": cl.cosine[0],
            "open_cosine_at_h": op.cosine[-1],
            "seconds_per_step": time_per_step(model, prep, k),
            "residuals": _residuals(model, prep, k),
            "energy": None if rep.energy is None else {r["name"]: r["rank"] for r in rep.energy["rows"]},
        }
        if k != 1:
            row["vs_k1"] = think_no_worse(reports[1], rep)
        if plan is not None:
            ctl = plan(k)
            controls[k] = ctl
            s = ctl.summary
            row["success"] = {"successes": s["successes"], "tasks": s["tasks"], "rate": s["success_rate"],
                              "lo": s["success_lo"], "hi": s["success_hi"],
                              "seconds_per_action": s["seconds_per_action_median"]}
            if k != 1:
                from .control.compare import compare_control

                d = compare_control(controls[1], ctl)["success_rate"]
                row["success"]["vs_k1"] = {"delta": d.delta, "lo": d.lo, "hi": d.hi, "verdict": d.verdict}
        rows.append(row)
        log(f"K={k}: AUC {row['auc']:.4f} [{row['auc_lo']:.4f}, {row['auc_hi']:.4f}], {row['seconds_per_step'] * 1e3:.2f} ms/step"
            + (f", success {row['success']['successes']}/{row['success']['tasks']}" if plan is not None else "")
            + f" ({time.perf_counter() - t1:.0f} s)")
    apply_think(model, 1)
    gate = all(r.get("vs_k1", {"passed": True})["passed"] for r in rows)
    return {"model": spec, "name": model.name, "data": data_id, "episodes": len(prep.ids), "horizon": cfg.horizon,
            "ks": ks, "rows": rows, "think_no_worse": gate, "reports": reports, "controls": controls}


def render(doc: dict) -> str:
    """The thinking-curve table, one line per K."""
    lines = [f"thinking curve of {doc['name']} ({doc['model']}) on {doc['data']}: {doc['episodes']} episodes, "
             f"horizon {doc['horizon']} model steps; AUC = open-loop mean cosine over steps 1..H, 95% CI over "
             "episodes; change vs K=1 paired over episodes",
             f"{'K':>3} {'AUC':>7} {'95% CI':>17} {'vs K=1':>26} {'horizon':>7} {'skill@1':>8} {'closed':>7} {'ms/step':>8} "
             f"{'residuals (units)':>20} {'success':>18} {'ms/action':>9}"]
    for r in doc["rows"]:
        v = r.get("vs_k1")
        vs = "reference" if v is None else f"{v['delta']:+.4f} [{v['lo']:+.4f}, {v['hi']:+.4f}]"
        res = r["residuals"]
        res_s = "-" if not res else " ".join(f"{x:.2f}" for x in res[:4]) + (" ..." if len(res) > 4 else "")
        s = r.get("success")
        succ = "-" if s is None else f"{s['successes']}/{s['tasks']} [{s['lo']:.2f}, {s['hi']:.2f}]"
        spa = "-" if s is None else f"{s['seconds_per_action'] * 1e3:.1f}"
        lines.append(f"{r['think']:>3} {r['auc']:>7.4f} [{r['auc_lo']:.4f}, {r['auc_hi']:.4f}] {vs:>26} "
                     f"{'never' if r['drift_horizon'] is None else r['drift_horizon']:>7} {r['step1_skill']:>+8.3f} "
                     f"{r.get('closed_auc', float('nan')):>7.4f} "
                     f"{r['seconds_per_step'] * 1e3:>8.2f} {res_s:>20} {succ:>18} {spa:>9}")
    lines.append(f"think_no_worse: {'PASS' if doc['think_no_worse'] else 'FAIL'} (no K regressed against K=1 in AUC: "
                 "a drop beyond 0.02 with its 95% CI excluding 0, as wmcore compare rules); closed = the teacher-forced "
                 "AUC (the model reads the real past frames)")
    return "\n".join(lines)


def ablations(model: Any, prep: Prepared, reference: dict[int, DriftReport], cfg: EvalConfig, thresholds: Thresholds, *,
              spec: str, data_id: str, variants: Sequence[str] = ("zero", "shuffle"), log: Log = lambda s: None) -> list[dict]:
    """A thinker's ablations (``model.ablation``, e.g. ``wmcore.models.thinker``): at each budget K of
    ``reference`` (K -> the intact model's DriftReport on ``prep``) but 1, the drift with the thinker's
    features zeroed and shuffled across the episodes of a batch; each row's AUC with its CI and its paired
    change against the intact model at the same K. The model is left intact."""
    if not hasattr(model, "ablation"):
        raise WMError(f"{model.name}: has no thinker to ablate (no `ablation` attribute)")
    rows = []
    for k in sorted(reference):
        if k == 1:
            continue
        for v in variants:
            t0 = time.perf_counter()
            model.ablation = v
            try:
                rep = evaluate(model, prep, dataclasses.replace(cfg, think=k), thresholds, spec=spec, data_id=data_id)
            finally:
                model.ablation = None
            rows.append({"variant": v, "think": k, **_drift_row(rep), "vs_intact": think_no_worse(reference[k], rep)})
            log(f"K={k} {v}: AUC {rows[-1]['auc']:.4f} ({time.perf_counter() - t0:.0f} s)")
    return rows


def _drift_row(rep: DriftReport) -> dict:
    """Open-loop AUC with its 95% CI over episodes, closed-loop AUC and step-1 skill of one report."""
    aucs = _auc_rows(rep)
    lo, hi = mean_ci(aucs)
    cl = rep.loops["closed_loop"]
    return {"auc": float(aucs.mean()), "auc_lo": lo, "auc_hi": hi, "closed_auc": cl.auc,
            "step1_skill": cl.skill["copy_last"][0]}


def control_row(other: DriftReport, reference: DriftReport, label: str) -> dict:
    """A parameter-matched control's drift against the thinker at one budget (``reference``), paired
    over the same episodes."""
    return {"variant": label, "think": reference.config.get("think", 1), **_drift_row(other),
            "vs_intact": think_no_worse(reference, other)}


def render_ablations(rows: list[dict]) -> str:
    """The ablation table: each variant's AUC against the intact thinker at the same K."""
    lines = [f"{'variant':>22} {'K':>3} {'AUC':>7} {'95% CI':>17} {'vs intact (paired)':>26} {'closed':>7} {'skill@1':>8}"]
    for r in rows:
        v = r["vs_intact"]
        lines.append(f"{r['variant']:>22} {r['think']:>3} {r['auc']:>7.4f} [{r['auc_lo']:.4f}, {r['auc_hi']:.4f}] "
                     f"{v['delta']:>+8.4f} [{v['lo']:+.4f}, {v['hi']:+.4f}] {r['closed_auc']:>7.4f} {r['step1_skill']:>+8.3f}")
    return "\n".join(lines)


def plot(doc: dict, path: str | Path) -> Path:
    """Metrics and cost against K: AUC with its CI, step-1 skill, success with its Wilson CI, and the
    time per predicted step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = doc["rows"]
    ks = [r["think"] for r in rows]
    fig, ax = plt.subplots(1, 4 if any("success" in r for r in rows) else 3, figsize=(14, 3.4))
    a = ax[0]
    a.errorbar(ks, [r["auc"] for r in rows], yerr=[[r["auc"] - r["auc_lo"] for r in rows],
                                                  [r["auc_hi"] - r["auc"] for r in rows]], marker="o", capsize=3)
    a.set_title("open-loop AUC (95% CI)", fontsize=9)
    ax[1].plot(ks, [r["step1_skill"] for r in rows], marker="o")
    ax[1].set_title("closed-loop step-1 skill vs copy-last", fontsize=9)
    ax[2].plot(ks, [r["seconds_per_step"] * 1e3 for r in rows], marker="o", color="tab:red")
    ax[2].set_title("ms per predicted step (batch 32)", fontsize=9)
    if len(ax) > 3:
        s = [r["success"] for r in rows]
        ax[3].errorbar(ks, [x["rate"] for x in s], yerr=[[x["rate"] - x["lo"] for x in s], [x["hi"] - x["rate"] for x in s]],
                       marker="o", capsize=3, color="tab:green")
        ax[3].set_title(f"planning success ({s[0]['tasks']} tasks, Wilson 95% CI)", fontsize=9)
        ax[3].set_ylim(0, 1.05)
    for a in ax:
        a.set_xscale("log", base=2)
        a.set_xticks(ks, [str(k) for k in ks])
        a.set_xlabel("thinking budget K")
        a.grid(alpha=0.3)
    fig.suptitle(f"{doc['name']}: thinking curve on {doc['data']} ({doc['episodes']} episodes)", fontsize=10)
    fig.tight_layout()
    return save_png(fig, Path(path))
