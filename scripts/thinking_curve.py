"""The thinking curve of a thinking world model (``make thinking-curve``): for each budget K, drift on
the 32 held-out PushT episodes (AUC with CIs, paired change vs K = 1, drift horizon, step-1 skill,
energy ranks), time per predicted step, inner residuals, and planning success on the 64 tasks (Wilson
CI, paired change vs K = 1) with the model's own planner preset (``wmcore.thinking.curve``).

Writes into ``--out``: ``thinking.json``, ``thinking.md`` (the table), ``thinking.png``, each K's
DriftReport (``drift-thinkK.json``) and control report (``control-thinkK.json``). Resumable: a K whose
control report exists is not planned again (delete it to re-plan). Progress on stderr.

    python scripts/thinking_curve.py --model pusht-refine --think 1 2 4 8 --out runs/thinking-refine
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
from wmcore.errors import WMError, run_command
from wmcore.fsio import write_new
from wmcore.models import load as load_model
from wmcore.settings import apply_think, resolve
from wmcore.thinking import curve, plot, render


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="pusht-refine", help="a thinking model spec (default pusht-refine)")
    p.add_argument("--think", type=int, nargs="+", default=[1, 2, 4, 8], help="budgets K (default 1 2 4 8)")
    p.add_argument("--tasks", type=int, default=64, help="planning tasks, the first N of the set (default 64; 0: none)")
    p.add_argument("--episodes", type=int, help="the first N held-out episodes (default all 32)")
    p.add_argument("--threads", type=int, help="torch threads")
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

        def plan(k: int) -> ControlReport:
            path = out / f"control-think{k}.json"
            if path.exists():
                say(f"K={k}: planning read back from {path}")
                return ControlReport.load(path)
            apply_think(model, k)
            t0 = time.perf_counter()
            ctrl = make_controller("cem", prior, planner, model)
            results = run_tasks(tasks, ctrl, progress=lambda i, n, r: say(
                f"  K={k} [{i}/{n}] {r.id}: {'success' if r.success else 'no'} ({time.perf_counter() - t0:.0f} s)"))
            report = ControlReport.build(controller_meta(ctrl, "cem", planner, model, args.model, prior), taskset, tasks,
                                         results, success_min=None, rule=thresholds.gate_rule)
            report.save(path)
            return report

        doc = curve(model, episodes, args.think, cfg, thresholds, spec=args.model, data_id="pusht",
                    plan=plan if args.tasks else None, log=say)
        for k, rep in doc["reports"].items():
            if not (out / f"drift-think{k}.json").exists():
                rep.save(out / f"drift-think{k}.json")
        table = render(doc)
        print(table)
        write_new(out / "thinking.md", (table + "\n").encode())
        plot(doc, out / "thinking.png")
        write_new(out / "thinking.json", (json.dumps({k: v for k, v in doc.items() if k not in ("reports", "controls")},
                                                     indent=2) + "\n").encode())
        print(out)
        return 0

    return run_command("thinking_curve", body)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
