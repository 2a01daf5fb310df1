"""The thinking curve of a thinking world model (``make thinking-curve``): for each budget K, drift on
the 32 held-out PushT episodes (AUC with CIs, paired change vs K = 1, drift horizon, step-1 skill,
energy ranks), time per predicted step, inner residuals, and planning success on the 64 tasks (Wilson
CI, paired change vs K = 1) with the model's own planner preset (``wmcore.thinking.curve``).

Writes into ``--out``: ``thinking.json``, ``thinking.md`` (the table), ``thinking.png``, each K's
DriftReport (``drift-thinkK.json``) and control report (``control-thinkK.json``). Resumable: a K whose
control report exists is not planned again (delete it to re-plan). Progress on stderr.

For a thinker (``wmcore.models.thinker``), ``--ablations`` adds its ablations: at every K > 1 the
drift with the thinker's features zeroed and shuffled across episodes (paired against the intact
model), and planning with them zeroed at the largest K; ``--control SPEC`` adds the
parameter-matched control (the same networks reading the current frame only): its drift paired
against every K, and its planning on the same tasks.

    python scripts/thinking_curve.py --model pusht-refine --think 1 2 4 8 --out runs/thinking-refine
    python scripts/thinking_curve.py --model pusht-thinker --think 1 2 4 8 --ablations \
        --control thinker:runs/train-pusht-thinker-control/model --out runs/thinking-thinker
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from wmcore.control.command import controller_meta, make_controller
from wmcore.control.planners import ActionPrior, CEMConfig, preset
from wmcore.control.report import ControlReport
from wmcore.control.run import run_tasks
from wmcore.control.tasks import build
from wmcore.data import load as load_data
from wmcore.drift import prepare
from wmcore.errors import WMError, run_command
from wmcore.evaluate import evaluate
from wmcore.fsio import write_new
from wmcore.models import load as load_model
from wmcore.settings import apply_think, resolve
from wmcore.thinking import ablations, control_row, curve, plot, render, render_ablations


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="pusht-refine", help="a thinking model spec (default pusht-refine)")
    p.add_argument("--think", type=int, nargs="+", default=[1, 2, 4, 8], help="budgets K (default 1 2 4 8)")
    p.add_argument("--tasks", type=int, default=64, help="planning tasks, the first N of the set (default 64; 0: none)")
    p.add_argument("--episodes", type=int, help="the first N held-out episodes (default all 32)")
    p.add_argument("--threads", type=int, help="torch threads")
    p.add_argument("--ablations", action="store_true", help="a thinker's ablations: features zeroed and shuffled")
    p.add_argument("--control", help="the parameter-matched control model's spec (no thinker), measured beside it")
    p.add_argument("--out", required=True, help="directory to write into (made if missing)")
    args = p.parse_args(argv)

    def body() -> int:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        if (out / "thinking.json").exists():
            raise WMError(f"{out / 'thinking.json'} exists; choose another --out (nothing is overwritten)")
        say = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
        model = load_model(args.model)
        held_out = load_data("pusht")  # read once: the drift episodes, the task set and the action prior
        episodes = held_out[: args.episodes] if args.episodes else held_out
        taskset = build(held_out, data_id="pusht")
        prior = ActionPrior.from_actions([e.actions for e in held_out])
        cfg, thresholds = resolve(model.name)
        planner = preset(thresholds.planner, model.frameskip) if thresholds.planner else CEMConfig()
        tasks = taskset.tasks[: args.tasks]

        def plan_with(wm, spec: str, tag: str, k: int | None) -> ControlReport:
            path = out / f"control-{tag}.json"
            if path.exists():
                say(f"{tag}: planning read back from {path}")
                return ControlReport.load(path)
            if k is not None:
                apply_think(wm, k)
            t0 = time.perf_counter()
            ctrl = make_controller("cem", prior, planner, wm)
            results = run_tasks(tasks, ctrl, progress=lambda i, n, r: say(
                f"  {tag} [{i}/{n}] {r.id}: {'success' if r.success else 'no'} ({time.perf_counter() - t0:.0f} s)"))
            report = ControlReport.build(controller_meta(ctrl, "cem", planner, wm, spec, prior), taskset, tasks,
                                         results, success_min=None, rule=thresholds.gate_rule)
            report.save(path)
            return report

        def plan(k: int) -> ControlReport:
            return plan_with(model, args.model, f"think{k}", k)

        prep = prepare(model, episodes, cfg)  # the encoder does not think: the episodes are encoded once
        doc = curve(model, prep, args.think, cfg, thresholds, spec=args.model, data_id="pusht",
                    plan=plan if args.tasks else None, log=say)
        for k, rep in doc["reports"].items():
            if not (out / f"drift-think{k}.json").exists():
                rep.save(out / f"drift-think{k}.json")
        table = render(doc)
        extra: dict = {}
        if args.ablations or args.control:
            from wmcore.control.compare import compare_control

            rows = []
            if args.ablations:
                rows += ablations(model, prep, doc["reports"], cfg, thresholds, spec=args.model, data_id="pusht", log=say)
            plans: dict[str, ControlReport] = {}
            if args.control:
                other = load_model(args.control)
                rep = evaluate(other, prepare(other, episodes, cfg), cfg, thresholds, spec=args.control, data_id="pusht")
                if not (out / "drift-control.json").exists():
                    rep.save(out / "drift-control.json")
                rows += [control_row(rep, doc["reports"][k], "control (no past)") for k in sorted(doc["reports"])]
                if args.tasks:
                    plans["control (no past)"] = plan_with(other, args.control, "control", None)
            if args.ablations and args.tasks:
                kmax = max(doc["ks"])
                model.ablation = "zero"
                try:
                    plans[f"zeroed, K={kmax}"] = plan_with(model, args.model, f"think{kmax}-zero", kmax)
                finally:
                    model.ablation = None
            lines = [render_ablations(rows)] if rows else []
            extra["ablations"] = rows
            extra["ablation_plans"] = {}
            for label, ctl in plans.items():
                s_ = ctl.summary
                d1 = compare_control(doc["controls"][1], ctl)["success_rate"]
                dm = compare_control(doc["controls"][max(doc["ks"])], ctl)["success_rate"]
                extra["ablation_plans"][label] = {
                    "successes": s_["successes"], "tasks": s_["tasks"], "lo": s_["success_lo"], "hi": s_["success_hi"],
                    "vs_k1": {"delta": d1.delta, "lo": d1.lo, "hi": d1.hi}, "vs_kmax": {"delta": dm.delta, "lo": dm.lo, "hi": dm.hi}}
                lines.append(f"planning, {label}: {s_['successes']}/{s_['tasks']} [{s_['success_lo']:.2f}, {s_['success_hi']:.2f}]; "
                             f"vs K=1 {d1.delta:+.3f} [{d1.lo:+.3f}, {d1.hi:+.3f}], vs K={max(doc['ks'])} "
                             f"{dm.delta:+.3f} [{dm.lo:+.3f}, {dm.hi:+.3f}] (paired over the same tasks)")
            table += "\n\nablations (AUC: open loop; vs intact: paired over episodes, the same K)\n" + "\n".join(lines)
        print(table)
        write_new(out / "thinking.md", (table + "\n").encode())
        plot(doc, out / "thinking.png")
        write_new(out / "thinking.json", (json.dumps({**{k: v for k, v in doc.items() if k not in ("reports", "controls")},
                                                      **extra}, indent=2) + "\n").encode())
        print(out)
        return 0

    return run_command("thinking_curve", body)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
