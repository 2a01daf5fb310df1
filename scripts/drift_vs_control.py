"""Does drift predict control? Versions of world models measured on drift, energy, ranking fidelity
and planning, all on the same held-out episodes and the same tasks.

    python scripts/drift_vs_control.py --version LABEL=SPEC [LABEL=SPEC ...] [--noisy LABEL=SPEC@X ...]
        [--tasks 64] [--out DIR]
    python scripts/drift_vs_control.py --from-reports DIR      # the table, correlations and plot again

A version is a model spec (``pusht-wm``, ``keypoint:runs/train-pusht-wm/snapshots/step-002000``,
``pusht-lewm``, ...) or a degraded one (``SPEC@X``: Gaussian noise of X x each predictor weight
matrix's own std, seeded). For each: the DriftReport on wmcore/fixtures/pusht (open-loop AUC, drift horizon,
closed-loop step-1 MSE skill vs copy-last, the energy ranks) saved as ``DIR/LABEL/drift.json``, and
CEM planning on the first ``--tasks`` tasks of the seeded task set (one ``--planner-preset`` for every
version, or each model's own bench settings: ``wmcore/suites/test_control.py``'s ``planner_config``) with
ranking fidelity, saved as
``DIR/LABEL/control.json``. The table is computed from those saved reports only, so ``--from-reports``
reproduces it. Spearman's rho of each drift/energy/fidelity measure with the success rate and with the
mean score, with a percentile bootstrap 95% CI over versions (versions resampled with replacement);
the scatter plot ``DIR/drift_vs_control.png`` and ``DIR/drift_vs_control.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

MEASURES = {  # column -> (header, higher is better)
    "open_auc": "open-loop AUC", "drift_horizon": "drift horizon", "step1_skill": "step-1 skill",
    "energy_rank_close": "energy rank (close)", "energy_rank_random": "energy rank (random)",
    "fidelity_spearman": "ranking fidelity (Spearman)", "fidelity_topk": "ranking fidelity (top-k)",
}


def degraded(model, noise: float, seed: int = 0):
    """The model with Gaussian noise of ``noise`` x each predictor weight matrix's std (seeded)."""
    if noise == 0:
        return model
    bad = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in bad.model.predictor.parameters():
            if p.dim() > 1:
                p.add_(noise * p.std() * torch.randn(p.shape, generator=g))
    return bad


def energy_ranks(energy: dict | None) -> tuple[float | None, float | None]:
    """The energy ranking of the recorded actions among the closest perturbations (the smallest scale)
    and among unrelated recorded blocks (None, None without an energy section)."""
    if not energy:
        return None, None
    scaled = [r for r in energy["rows"] if r.get("scale") is not None]
    close = min(scaled, key=lambda r: r["scale"])["rank"] if scaled else None
    rand = next((r["rank"] for r in energy["rows"] if r.get("scale") is None), None)
    return close, rand


def row_from_reports(label: str, directory: Path) -> dict:
    """One version's row, from its saved ``drift.json`` and ``control.json`` alone."""
    from wmcore.control.report import ControlReport
    from wmcore.report import DriftReport

    d = DriftReport.load(directory / "drift.json")
    c = ControlReport.load(directory / "control.json")
    op, cl = d.loops["open_loop"], d.loops["closed_loop"]
    horizon = len(op.cosine)
    fid = (c.summary.get("ranking_fidelity") or {}).get("latent") or {}
    s = c.summary
    return {"version": label, "model": (c.controller.get("model") or {}).get("spec"),
            "open_auc": op.auc, "drift_horizon": op.drift_horizon or horizon + 1,
            "step1_skill": (cl.skill.get("copy_last") or [None])[0],
            **dict(zip(("energy_rank_close", "energy_rank_random"), energy_ranks(d.energy))),
            "fidelity_spearman": (fid.get("spearman") or {}).get("mean"),
            "fidelity_topk": (fid.get("topk_overlap") or {}).get("mean"),
            "success": s["success_rate"], "successes": s["successes"], "tasks": s["tasks"], "score": s["score_mean"],
            "planner": c.controller.get("planner")}


def correlations(rows: list[dict], seed: int = 0) -> dict:
    """Spearman rho of each measure with success and with score, percentile bootstrap 95% CI over versions."""
    from scipy.stats import bootstrap, spearmanr

    def rho(x, y):
        return spearmanr(x, y).statistic if np.ptp(x) > 0 and np.ptp(y) > 0 else 0.0

    out = {}
    for k in MEASURES:
        xs = [r[k] for r in rows]
        if any(x is None for x in xs):
            continue
        for target in ("success", "score"):
            x, y = np.asarray(xs, dtype=float), np.asarray([r[target] for r in rows], dtype=float)
            res = bootstrap((x, y), rho, paired=True, vectorized=False, n_resamples=2000, method="percentile",
                            rng=np.random.default_rng(seed))
            lo, hi = res.confidence_interval
            out[f"{k}~{target}"] = {"rho": float(rho(x, y)), "lo": None if np.isnan(lo) else float(lo),
                                    "hi": None if np.isnan(hi) else float(hi), "versions": len(rows)}
    return out


def table(rows: list[dict], corr: dict) -> str:
    def cell(v, fmt):
        return "-" if v is None else format(v, fmt)

    lines = [f"{'version':<16} {'open AUC':>8} {'horizon':>7} {'skill@1':>8} {'E-close':>8} {'E-rand':>7} "
             f"{'fid rho':>8} {'fid top':>8} {'success':>9} {'score':>6}"]
    for r in rows:
        lines.append(f"{r['version']:<16} {r['open_auc']:>8.3f} {r['drift_horizon']:>7} {cell(r['step1_skill'], '+8.3f')} "
                     f"{cell(r['energy_rank_close'], '8.3f')} {cell(r['energy_rank_random'], '7.3f')} "
                     f"{cell(r['fidelity_spearman'], '+8.2f')} {cell(r['fidelity_topk'], '8.2f')} "
                     f"{r['successes']:>3}/{r['tasks']:<5} {r['score']:>6.3f}")
    lines.append("")
    for k, v in corr.items():
        measure, target = k.split("~")
        ci = "-" if v["lo"] is None else f"[{v['lo']:+.2f}, {v['hi']:+.2f}]"
        lines.append(f"Spearman {MEASURES[measure]} ~ {target}: rho {v['rho']:+.2f}, 95% CI {ci} ({v['versions']} versions)")
    return "\n".join(lines)


def plot(rows: list[dict], corr: dict, path: Path) -> Path:
    """Success against each of four measures, one point per version."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from wmcore.plot import save_png

    keys = [k for k in ("open_auc", "step1_skill", "energy_rank_close", "fidelity_spearman")
            if all(r[k] is not None for r in rows)]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 4), dpi=110, squeeze=False)
    for ax, k in zip(axes[0], keys):
        ax.scatter([r[k] for r in rows], [r["success"] for r in rows])
        for i, r in enumerate(rows):
            ax.annotate(r["version"], (r[k], r["success"]), textcoords="offset points", xytext=(4, 5 - 9 * (i % 3)),
                        fontsize=7)
        c = corr.get(f"{k}~success")
        ci = "" if c is None or c["lo"] is None else f" [{c['lo']:+.2f}, {c['hi']:+.2f}]"
        ax.set_title(f"rho {c['rho']:+.2f}{ci}" if c else "", fontsize=9)
        if k == "step1_skill" and min(r[k] for r in rows) < -1:
            ax.set_xscale("symlog", linthresh=1.0)  # a badly degraded version's skill is far below -1
        ax.set_xlabel(MEASURES[k] + (" (lower is better)" if k.startswith("energy") else ""))
        ax.set_ylabel("planning success rate")
    fig.suptitle(f"drift vs control: {len(rows)} versions, the same tasks and held-out episodes "
                 "(Spearman rho with success, bootstrap 95% CI over versions)", fontsize=9)
    fig.tight_layout()
    return save_png(fig, path)


def measure(label: str, spec: str, noise: float, out: Path, tasks: int, planner_preset: str = "") -> None:
    """Write ``out/LABEL/drift.json`` and ``control.json`` for one version (skipped where both exist)."""
    from wmcore.suites.test_control import planner_config  # the bench's per-model CEM budgets

    from wmcore.control.command import controller_meta
    from wmcore.control.planners import ActionPrior
    from wmcore.control.report import ControlReport
    from wmcore.control.run import WorldModelCEM, run_tasks
    from wmcore.control.tasks import build
    from wmcore.data import load as load_data
    from wmcore.evaluate import evaluate
    from wmcore.models import load as load_model
    from wmcore.settings import resolve

    d = out / label
    if (d / "drift.json").exists() and (d / "control.json").exists():
        return
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    episodes = load_data("pusht")
    taskset = build(episodes, data_id="pusht")
    prior = ActionPrior.from_actions([e.actions for e in episodes])
    base = load_model(spec)
    model = degraded(base, noise)
    cfg, thresholds = resolve(base.name)  # the base model's evaluation settings for every version of it
    if not (d / "drift.json").exists():
        evaluate(model, episodes, cfg, thresholds, spec=f"{spec}@{noise:g}" if noise else spec, data_id="pusht").save(d / "drift.json")
    plan_cfg = planner_config(base.name, base, planner_preset or thresholds.planner)
    ctrl = WorldModelCEM(model, prior, plan_cfg)
    chosen = taskset.tasks[:tasks]
    results = run_tasks(chosen, ctrl)
    meta = controller_meta(ctrl, "cem", plan_cfg, model, f"{spec}@{noise:g}" if noise else spec, prior)
    ControlReport.build(meta, taskset, chosen, results).save(d / "control.json")
    print(f"{label}: {sum(r.success for r in results)}/{len(results)} ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    from wmcore.fsio import write_replace

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--version", "--noisy", dest="items", nargs="*", action="extend", default=[],
                    metavar="LABEL=SPEC[@X]", help="versions in the table's order: a model spec, or a degraded one "
                    "(@X: predictor noise of X x each weight matrix's std)")
    ap.add_argument("--tasks", type=int, default=64)
    ap.add_argument("--planner-preset", default="", help="plan every version with this preset (control.planners."
                    "PRESETS) instead of each model's own bench settings")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--out", default="runs/drift-vs-control")
    ap.add_argument("--from-reports", metavar="DIR", help="only recompute the table, correlations and plot from DIR")
    args = ap.parse_args(argv)
    out = Path(args.from_reports or args.out)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.from_reports:
        for item in args.items:
            label, _, spec = item.partition("=")
            spec, _, noise = spec.partition("@")
            if not label or not spec:
                ap.error(f"{item!r}: expected LABEL=SPEC or LABEL=SPEC@X")
            measure(label, spec, float(noise or 0), out, args.tasks, args.planner_preset)
    order = json.loads((out / "versions.json").read_text()) if (out / "versions.json").exists() else []
    for item in args.items:
        if item.partition("=")[0] not in order:
            order.append(item.partition("=")[0])
    if not args.from_reports:
        write_replace(out / "versions.json", json.dumps(order).encode())
    rows = [row_from_reports(label, out / label) for label in order]
    corr = correlations(rows)
    print(table(rows, corr))
    write_replace(out / "drift_vs_control.json", json.dumps({"rows": rows, "spearman": corr}, indent=1).encode())
    png = out / "drift_vs_control.png"
    if png.exists():  # nothing is overwritten: delete it to redraw
        print(f"{png}: exists, kept (delete it to redraw)")
    else:
        print(plot(rows, corr, png))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
