"""ControlReport: one controller on one task set, every task replayable, as versioned JSON.

Each result keeps the task's start and goal states and the executed actions (float32 values, as
executed), so ``replay_report`` re-runs them in the simulator and checks that success and final
state come out the same. The summary gives the success rate with its Wilson 95% CI, the continuous
score (final / start distance to the goal) with a BCa bootstrap CI, and the time per planned action.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import WMError
from ..fsio import read_versioned, write_new
from ..version import provenance
from ..gates import GATE_LEVEL, Gate, gate_at_least
from ..stats import bootstrap_mean_ci, wilson_ci
from .fidelity import summarise_fidelity
from .run import TaskResult, replay
from .sim.pusht import PushTSim
from .tasks import Task, TaskSet

__all__ = ["FORMAT", "VERSION", "ControlReport", "control_table", "gate_success", "replay_report", "summarise"]

FORMAT = "wmcore.control"
VERSION = 1


def summarise(results: Sequence[TaskResult], seed: int = 0) -> dict:
    """Success rate (Wilson 95% CI), mean score (BCa bootstrap 95% CI), time per planned action."""
    if not results:
        raise WMError("no task results to summarise")
    n, k = len(results), sum(r.success for r in results)
    lo, hi = wilson_ci(k, n)
    scores = np.array([r.score for r in results])
    slo, shi = bootstrap_mean_ci(scores, seed=seed)
    per_action = np.array([r.seconds_per_action for r in results])
    fidelity = summarise_fidelity([r.fidelity for r in results], seed=seed)
    return {
        "tasks": n, "successes": k, "success_rate": k / n, "success_lo": lo, "success_hi": hi,
        "score_mean": float(scores.mean()), "score_lo": slo, "score_hi": shi,
        "score_median": float(np.median(scores)),
        "seconds_per_action_median": float(np.median(per_action)), "seconds_total": float(sum(r.seconds for r in results)),
        **({"ranking_fidelity": fidelity} if fidelity else {}),
    }


def gate_success(summary: dict, minimum: float, rule: str = "ci") -> Gate:
    """Success rate must be at least ``minimum``. Rule ``ci`` (as the drift gates): fail only when the
    one-sided 95% upper bound (the upper end of the two-sided 90% Wilson interval) is below it."""
    k, n = summary["successes"], summary["tasks"]
    if n < 2:  # one task: no interval, judged on the value alone
        return gate_at_least("success_rate", f"success {k}/{n} =", k / n, minimum, None, "mean",
                             "one task gives no interval", sign="",
                             note=f" (n/a: {n} task, no interval; judged on the value alone)")
    return gate_at_least("success_rate", f"success {k}/{n} =", k / n, minimum, wilson_ci(k, n, GATE_LEVEL), rule,
                         "the CI is Wilson's score interval over the tasks", sign="")


@dataclass
class ControlReport:
    controller: dict  # name, kind, model spec and fingerprint, planner configuration
    tasks: dict  # the task set's spec, data, and the ids run
    results: list[dict]  # per task: TaskResult fields + start, goal, budget
    summary: dict
    gates: list[Gate] = field(default_factory=list)
    environment: dict = field(default_factory=dict)
    version: int = VERSION

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    @classmethod
    def build(cls, controller: dict, taskset: TaskSet, tasks: Sequence[Task], results: Sequence[TaskResult],
              *, success_min: float | None = None, rule: str = "ci", environment: dict | None = None) -> "ControlReport":
        summary = summarise(results)
        rows = [{**asdict(r), "start": t.start, "goal": t.goal, "budget": t.budget, "episode": t.episode,
                 "start_step": t.start_step} for t, r in zip(tasks, results)]
        gates = [] if success_min is None else [gate_success(summary, success_min, rule)]
        meta = {"spec": asdict(taskset.spec), "data": taskset.data, "ids": [t.id for t in tasks]}
        return cls(controller, meta, rows, summary, gates, environment or _environment())

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": self.version, "controller": self.controller, "tasks": self.tasks,
                "summary": self.summary, "gates": [asdict(g) for g in self.gates], "environment": self.environment,
                "results": self.results}

    def save(self, path: str | os.PathLike) -> Path:
        return write_new(path, json.dumps(self.to_dict(), indent=1).encode())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ControlReport":
        d = read_versioned(path, FORMAT, VERSION, "control report", "was the control report truncated?")
        try:
            return cls(d["controller"], d["tasks"], d["results"], d["summary"], [Gate(**g) for g in d["gates"]],
                       d.get("environment", {}), d["version"])
        except (KeyError, TypeError) as e:
            raise WMError(f"{path}: malformed control report ({e})") from None

    def render_text(self) -> str:
        s = self.summary
        few = s["tasks"] < 2  # one task: no interval over tasks
        na = f"n/a: {s['tasks']} task"
        success_ci = na if few else f"95% CI [{s['success_lo']:.1%}, {s['success_hi']:.1%}]"
        score_ci = na if few else f"95% CI [{s['score_lo']:.3f}, {s['score_hi']:.3f}]"
        lines = [
            f"{self.controller.get('name')}: success {s['successes']}/{s['tasks']} = {s['success_rate']:.1%} "
            f"({success_ci}); score {s['score_mean']:.3f} ({score_ci}, 0 = at the goal, 1 = no progress); "
            f"{s['seconds_per_action_median'] * 1e3:.1f} ms per action (median)",
        ]
        f = s.get("ranking_fidelity")
        for term in ("latent", "proprio") if f else ():
            if term in f:
                rho, top = f[term]["spearman"], f[term]["topk_overlap"]
                lines.append(f"  ranking fidelity ({term}, {f['candidates']} candidates x {f['tasks']} tasks): Spearman "
                             f"{rho['mean']:+.2f} [{rho['lo']:+.2f}, {rho['hi']:+.2f}], top-{f['k']} overlap "
                             f"{top['mean']:.2f} [{top['lo']:.2f}, {top['hi']:.2f}] (chance {f['topk_chance']:.2f})")
        lines += [f"  [{'PASS' if g.passed else 'FAIL'}] {g.name}: {g.message}" for g in self.gates]
        return "\n".join(lines)


def control_table(reports: Sequence[tuple[str, ControlReport]]) -> str:
    """One line per control report (name, report): controller, model, success k/n with its Wilson 95%
    CI, mean score, median time per planned action, gate verdict. Fewer than 2 tasks: no interval."""
    head = f"{'run':<28} {'controller':<24} {'success':>7} {'95% CI':>15} {'score':>6} {'ms/action':>9}  verdict"
    lines = [head, "-" * len(head)]
    for name, r in reports:
        s = r.summary
        n = s["tasks"]
        ci = f"[{s['success_lo']:.0%}, {s['success_hi']:.0%}]" if n >= 2 else f"n/a: {n} task"
        failed = [g.name for g in r.gates if not g.passed]
        verdict = ("FAIL " + ", ".join(failed)) if failed else ("pass" if r.gates else "(no gate)")
        lines.append(f"{name[:28]:<28} {str(r.controller.get('name'))[:24]:<24} {s['successes']:>3}/{n:<3} {ci:>15} "
                     f"{s['score_mean']:>6.3f} {s['seconds_per_action_median'] * 1e3:>9.1f}  {verdict}")
    lines.append("(success: tasks whose block reached the goal pose, Wilson 95% CI over tasks; score: final / start "
                 "distance to the goal, 0 = at the goal)")
    return "\n".join(lines)


def replay_report(report: ControlReport, *, atol: float = 1e-9) -> list[str]:
    """Re-run every result's actions from its start state; the mismatches (empty: all reproduced)."""
    bad = []
    with PushTSim() as sim:
        for r in report.results:
            ok, final = replay(r["start"], r["goal"], r["actions"], sim=sim)
            if ok != r["success"] or not np.allclose(final, r["final"], atol=atol, rtol=0):
                bad.append(f"{r['id']}: recorded success {r['success']} final {np.round(r['final'], 3).tolist()}, "
                           f"replayed {ok} final {np.round(final, 3).tolist()}")
    return bad


def _environment() -> dict:
    import torch

    from ..data.pusht import simulator_versions

    return {**provenance(), "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform(), **simulator_versions()}
