"""Does drift predict control? Versions of a model measured on drift, energy ranking and planning.

``python scripts/drift_vs_control.py [--model pusht-lewm] [--noise 0 0.05 0.1 0.2 0.3 0.5] [--tasks 16]
[--out DIR]``

Versions: the model with Gaussian noise of ``noise`` x each predictor weight matrix's own std (seeded;
0 is the shipped model), as tests/test_embedded.py degrades it. For each version: the DriftReport on
the held-out episodes (open-loop AUC, drift horizon, and the energy ranking when the report has one)
and CEM planning on the first ``--tasks`` tasks of the seeded task set (success, mean score). Prints
the table and the Spearman rank correlations of each drift measure with success and score
(``scipy.stats.spearmanr``), writes ``DIR/drift_vs_control.json`` and a scatter plot
``DIR/drift_vs_control.png``.
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


def degraded(model, noise: float, seed: int = 0):
    if noise == 0:
        return model
    bad = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in bad.model.predictor.parameters():
            if p.dim() > 1:
                p.add_(noise * p.std() * torch.randn(p.shape, generator=g))
    return bad


def short_label(version: str) -> str:
    """'noise 0.3' -> 'n0.3'; 'lewm:runs/x/snapshots/step-000500' -> 's500'; 'lewm:runs/x/model' -> 'x'."""
    if version.startswith("noise "):
        return "n" + version[len("noise "):]
    if ":" not in version:
        return version
    p = Path(version.split(":", 1)[-1])
    if p.name.startswith("step-"):
        return f"s{int(p.name[5:])}"
    return p.parent.name if p.name == "model" else p.name


def energy_ranks(report) -> tuple[float | None, float | None]:
    """The report's energy ranking of the recorded actions: among the closest perturbations (the
    smallest scale) and among unrelated recorded blocks (None, None without an energy section)."""
    e = getattr(report, "energy", None)
    if e is None:
        return None, None
    rows = e.rows if hasattr(e, "rows") else [type("R", (), r) for r in e["rows"]]
    scaled = [r for r in rows if r.scale is not None]
    close = min(scaled, key=lambda r: r.scale).rank if scaled else None
    rand = next((r.rank for r in rows if r.scale is None), None)
    return close, rand


def main(argv: list[str]) -> int:
    from scipy.stats import spearmanr

    from wmcore.control.planners import ActionPrior, CEMConfig
    from wmcore.control.run import WorldModelCEM, run_tasks
    from wmcore.control.tasks import build
    from wmcore.data import load as load_data
    from wmcore.evaluate import evaluate
    from wmcore.fsio import new_run_dir, write_new
    from wmcore.models import load as load_model
    from wmcore.settings import resolve

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="pusht-lewm")
    ap.add_argument("--noise", type=float, nargs="*", default=[0.0, 0.05, 0.1, 0.2, 0.3, 0.5])
    ap.add_argument("--extra", nargs="*", default=[], metavar="SPEC",
                    help="more versions by model spec, e.g. short training runs lewm:runs/train-s150/model")
    ap.add_argument("--tasks", type=int, default=16)
    ap.add_argument("--samples", type=int, default=128, help="CEM candidates (the same for every version)")
    ap.add_argument("--iterations", type=int, default=3, help="CEM iterations (the same for every version)")
    ap.add_argument("--out")
    ap.add_argument("--replot", metavar="JSON", help="only redraw the plot of a saved drift_vs_control.json into --out")
    args = ap.parse_args(argv)
    if args.replot:
        saved = json.loads(Path(args.replot).read_text())
        print(plot(saved["model"], saved["rows"], Path(args.out or ".") / "drift_vs_control.png"))
        return 0
    out = Path(args.out) if args.out else new_run_dir(Path("runs"), "drift-vs-control")
    out.mkdir(parents=True, exist_ok=True)
    episodes = load_data("pusht")
    taskset = build(episodes, data_id="pusht")
    prior = ActionPrior.from_actions([e.actions for e in episodes])
    base = load_model(args.model)
    cfg, thresholds = resolve(base.name)
    rows = []
    versions = [(f"noise {n:g}", n, None) for n in args.noise] + [(spec, 0.0, spec) for spec in args.extra]
    for label, noise, spec in versions:
        t0 = time.time()
        m = load_model(spec) if spec else degraded(base, noise)
        r = evaluate(m, episodes, cfg, thresholds, spec=args.model, data_id="pusht")
        plan_cfg = CEMConfig(samples=args.samples, elites=max(4, args.samples // 10), iterations=args.iterations)
        res = run_tasks(taskset.tasks[: args.tasks], WorldModelCEM(m, prior, plan_cfg))
        op = r.loops["open_loop"]
        row = {"version": label, "noise": noise, "open_auc": op.auc, "drift_horizon": op.drift_horizon or cfg.horizon + 1,
               "closed_step1": r.loops["closed_loop"].cosine[0],
               **dict(zip(("energy_rank_close", "energy_rank_random"), energy_ranks(r))),
               "success": sum(x.success for x in res) / len(res), "successes": sum(x.success for x in res),
               "tasks": len(res), "score": float(np.mean([x.score for x in res]))}
        rows.append(row)
        print(json.dumps(row), f"({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    corr = {}
    for k in ("open_auc", "drift_horizon", "closed_step1", "energy_rank_close", "energy_rank_random"):
        xs = [r[k] for r in rows]
        if any(x is None for x in xs):
            continue
        for target in ("success", "score"):
            rho, p = spearmanr(xs, [r[target] for r in rows])
            corr[f"{k}~{target}"] = {"rho": None if np.isnan(rho) else float(rho), "p": None if np.isnan(p) else float(p)}
    print(f"{'version':<28} {'open AUC':>9} {'horizon':>8} {'step1':>7} {'E-close':>8} {'E-random':>9} {'success':>9} {'score':>7}")
    for r in rows:
        ec, er = (("-" if r[k] is None else f"{r[k]:.3f}") for k in ("energy_rank_close", "energy_rank_random"))
        print(f"{r['version']:<28} {r['open_auc']:>9.3f} {r['drift_horizon']:>8} {r['closed_step1']:>7.3f} {ec:>8} {er:>9} "
              f"{r['successes']:>3}/{r['tasks']:<5} {r['score']:>7.3f}")
    for k, v in corr.items():
        print(f"Spearman {k}: rho {v['rho']}, p {v['p']}")
    write_new(out / "drift_vs_control.json", json.dumps({"model": args.model, "rows": rows, "spearman": corr}, indent=1).encode())
    print(plot(args.model, rows, out / "drift_vs_control.png"))
    return 0


def plot(model: str, rows: list[dict], path: Path) -> Path:
    """The scatter of open-loop AUC against success and against the mean score, one point per version."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from wmcore.plot import save_png

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    for ax, target in zip(axes, ("success", "score")):
        ax.scatter([r["open_auc"] for r in rows], [r[target] for r in rows])
        for i, r in enumerate(rows):  # staggered, so that versions at the same point stay legible
            ax.annotate(short_label(r["version"]), (r["open_auc"], r[target]), textcoords="offset points",
                        xytext=(4, 5 - 10 * (i % 4)), fontsize=8)
        ax.set_xlabel("open-loop AUC (mean cosine, steps 1..H)")
        ax.set_ylabel("planning success rate" if target == "success" else "mean score (final/start distance)")
    fig.suptitle(f"{short_label(model)}: versions (n0 = the model itself, nX = its predictor with noise X x std, "
                 "sN = its training checkpoint at step N)", fontsize=9)
    fig.tight_layout()
    return save_png(fig, path)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
