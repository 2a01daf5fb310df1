"""The bodies of ``wmcore plan`` and ``wmcore replay`` (their parsers live in ``wmcore.cli``)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from .. import dist
from ..errors import WMError
from ..fsio import safe_name
from .planners import ActionPrior, CEMConfig
from .policy import (
    PolicyConfig, PolicyController, PolicyData, PolicyNet, embed_episodes, encode, progress_printer, save_policy, train_policy,
)
from .report import ControlReport, replay_report
from .run import DriveToGoal, EncoderOracleCEM, OracleCEM, RandomSmooth, Stay, TaskResult, WorldModelCEM, run_sharded, run_tasks
from .sim.pusht import ACTION_DIM
from .tasks import TaskSet, TaskSpec, build, load as load_tasks

__all__ = [
    "CONTROLLERS", "NEEDS_MODEL", "check_model", "controller_meta", "make_controller", "plan", "policy_evaluate", "policy_train",
    "replay_command",
]

# cem: CEM with the world model's latent goal cost; oracle: CEM with the simulator as the model;
# encoder-oracle: the simulator as the dynamics, the world model's encoder as the cost (a diagnosis);
# stay, random, drive: baselines that need no model
CONTROLLERS = ("cem", "oracle", "encoder-oracle", "stay", "random", "drive")
NEEDS_MODEL = ("cem", "encoder-oracle")


def check_model(model, horizon: int, execute: int) -> None:
    """A model can plan PushT when its action blocks are frameskip x 2-d targets and the planning
    horizon and the executed chunk are whole model steps."""
    k = getattr(model, "frameskip", 1)
    if model.action_dim != k * ACTION_DIM:
        raise WMError(f"model {model.name!r} takes {model.action_dim}-d actions per model step (frameskip {k}); "
                      f"PushT actions are {ACTION_DIM}-d targets, so it needs {k * ACTION_DIM}: this model was not "
                      "trained on PushT actions")
    for what, v in (("--horizon", horizon), ("--execute", execute)):
        if v % k:
            raise WMError(f"{what} {v}: must be a multiple of the model's frameskip {k} (whole model steps)")


def make_controller(kind: str, prior: ActionPrior, cfg: CEMConfig, model=None, device: str = "cpu",
                    fidelity: bool = True):
    if kind == "cem":
        if model is None:
            raise WMError("--planner cem needs --model SPEC (the world model to plan with)")
        check_model(model, cfg.horizon, cfg.execute)
        return WorldModelCEM(model, prior, cfg, device=device, fidelity=fidelity)
    if cfg.proprio_weight > 0:
        raise WMError(f"--proprio-weight is a setting of --planner cem (the world model's goal cost), not of {kind}")
    if kind == "oracle":
        return OracleCEM(prior, cfg)
    if kind == "encoder-oracle":
        if model is None:
            raise WMError("--planner encoder-oracle needs --model SPEC (the world model whose encoder is the cost)")
        return EncoderOracleCEM(model, prior, cfg, device=device)
    if kind == "stay":
        return Stay()
    if kind == "random":
        return RandomSmooth(prior, cfg.seed)
    if kind == "drive":
        return DriveToGoal()
    raise WMError(f"--planner {kind!r}: expected one of {', '.join(CONTROLLERS)}")


def controller_meta(ctrl, kind: str, cfg: CEMConfig, model=None, spec: str | None = None, prior: ActionPrior | None = None) -> dict:
    """What a control report records of its controller: name, kind, planner settings, model identity."""
    return {"name": ctrl.name, "kind": kind, "planner": cfg.to_dict() if kind in ("cem", "oracle", "encoder-oracle") else None,
            "model": None if model is None or kind not in NEEDS_MODEL else model_meta(model, spec),
            "prior": None if prior is None else prior.__dict__}


def task_set(episodes, tasks: str | None, spec: TaskSpec, data_id: str) -> TaskSet:
    """``tasks``: None (cut from the episodes by ``spec``) or a task-set JSON file."""
    if tasks is None:
        return build(episodes, spec, data_id=data_id)
    if not Path(tasks).is_file():
        raise WMError(f"--tasks {tasks!r}: no such task-set file; give a JSON written by wmcore plan "
                      "(tasks.json in its --out directory) or leave --tasks out to cut tasks from --data")
    return load_tasks(tasks)


def _progress(i: int, n: int, r: TaskResult, t0: float) -> None:
    print(f"  [{i}/{n}] {r.id}: {'success' if r.success else 'no'} after {r.steps} steps, score {r.score:.3f} "
          f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)


def plan(*, kind: str, model, model_spec: str | None, episodes, data_id: str, tasks: str | None, spec: TaskSpec,
         limit: int | None, cfg: CEMConfig, out: Path, success_min: float | None, rule: str, device: str = "cpu",
         quiet: bool = False, fidelity: bool = True, shard: bool = True) -> ControlReport:
    """Run one controller on a task set; write ``out/tasks.json`` (if new) and the control report.
    ``shard``: under torchrun, share the tasks out over the ranks (rank 0 writes); False: this process
    runs every task and writes (a rank busy with its own job of a sharded study)."""
    ts = task_set(episodes, tasks, spec, data_id)
    chosen = ts.subset(limit).tasks
    prior = ActionPrior.from_actions([e.actions for e in episodes])
    ctrl = make_controller(kind, prior, cfg, model, device, fidelity)
    think = int(getattr(model, "think", 1)) if model is not None else 1
    name = (model.name + (f"-think{think}" if think != 1 else "")) if model is not None else ""
    path = _new_report(out, {"cem": f"control-{name}",
                             "encoder-oracle": f"control-encoder-oracle-{model.name if model else ''}"}.get(kind, f"control-{kind}"))
    return _run_and_save(ctrl, controller_meta(ctrl, kind, cfg, model, model_spec, prior), ts, chosen, out, path,
                         success_min, rule, quiet, f"planning with {ctrl.name} on {len(chosen)} tasks ...", shard)


def _new_report(out: Path, stem: str) -> Path:
    """``out/STEM.json``, which must not exist yet (nothing is overwritten)."""
    path = out / f"{safe_name(stem)}.json"
    if path.exists():
        raise WMError(f"{path}: exists already; choose another --out (nothing is overwritten)")
    return path


def _run_and_save(ctrl, controller: dict, ts: TaskSet, chosen, out: Path, path: Path, success_min: float | None,
                  rule: str, quiet: bool, announce: str | None, shard: bool = True) -> ControlReport:
    """Run ``ctrl`` on ``chosen`` (progress unless ``quiet``; ``announce`` printed first), then write
    ``out/tasks.json`` (if new) and the control report at ``path``. ``shard``: as for ``plan``."""
    t0 = time.perf_counter()
    rank, world = dist.world() if shard else (0, 1)
    quiet = quiet or rank != 0  # rank 0 alone reports progress (of its own tasks) and writes
    if announce and not quiet:
        print(announce + (f" over {world} processes" if world > 1 else ""), file=sys.stderr, flush=True)
    progress = None if quiet else (lambda i, n, r: _progress(i, n, r, t0))
    results = run_sharded(chosen, ctrl, progress=progress) if shard else run_tasks(chosen, ctrl, progress=progress)
    report = ControlReport.build(controller, ts, chosen, results, success_min=success_min, rule=rule)
    if rank == 0:
        if not (out / "tasks.json").exists():
            ts.save(out / "tasks.json")
        report.save(path)
    return report


def model_meta(model, spec: str | None) -> dict:
    """A controller's model: identity, and the thinking budget it planned with (1: the base path)."""
    return {"spec": spec, "name": model.name, "fingerprint": model.fingerprint(), "frameskip": model.frameskip,
            "think": int(getattr(model, "think", 1))}


def policy_train(*, model, model_spec: str | None, episodes, data_id: str, cfg: PolicyConfig, out: Path | None,
                 quiet: bool = False, data: PolicyData | None = None) -> tuple[PolicyNet, dict]:
    """Embed the training episodes with the model's frozen encoder (or take ``data``, embedded before),
    train one policy variant, and (with ``out``) save it: ``out/policy.safetensors`` + ``policy.json``.
    Returns (net, the policy.json document)."""
    say = (lambda s: None) if quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    if out is not None and (out / "policy.safetensors").exists():
        raise WMError(f"{out}: a policy is already there; choose another --out (nothing is overwritten)")
    t0 = time.perf_counter()
    if data is None:
        say(f"embedding {len(episodes)} training episodes with {model.name}'s encoder ...")
        data = embed_episodes(model, episodes, progress=None if quiet else progress_printer("episodes"))
    t_embed = time.perf_counter() - t0
    say(f"training policy {cfg.label} ({cfg.steps} steps, seed {cfg.seed}) ...")
    net, history = train_policy(model, data, cfg, log=say)
    doc = {"model": model_meta(model, model_spec), "data": {"id": data_id, "episodes": len(data.z),
           "held_out": cfg.val_episodes}, "history": history,
           "seconds": {"embed": t_embed, "train": time.perf_counter() - t0 - t_embed}}
    if out is not None:
        save_policy(net, out, doc)
        say(f"saved {out}")
    return net, {"config": cfg.to_dict(), **doc}


def policy_evaluate(*, model, model_spec: str | None, net: PolicyNet, policy: dict, episodes, data_id: str,
                    tasks: str | None, spec: TaskSpec, limit: int | None, out: Path, success_min: float | None,
                    rule: str, quiet: bool = False, shard: bool = True) -> ControlReport:
    """Run a trained policy closed loop on a task set (as ``plan`` runs a planner); write the control report.
    ``shard``: as for ``plan``."""
    fp = (policy.get("model") or {}).get("fingerprint")
    if fp is not None and fp != model.fingerprint():
        raise WMError(f"the policy was trained on the latents of model {policy['model'].get('name')!r} "
                      f"(fingerprint {fp[:12]}), not on those of {model.name!r} ({model.fingerprint()[:12]}); "
                      "evaluate it with that model or train one for this model (wmcore policy train)")
    encode(model, episodes[0].frames[:1], f"the task frames of {data_id}")  # WMError if it cannot
    ts = task_set(episodes, tasks, spec, data_id)
    chosen = ts.subset(limit).tasks
    prior = ActionPrior.from_actions([e.actions for e in episodes])
    ctrl = PolicyController(net, model, low=prior.low, high=prior.high)
    path = _new_report(out, f"control-policy-{net.cfg.label}-{model.name}")
    controller = {"name": ctrl.name, "kind": "policy", "planner": None, "model": model_meta(model, model_spec),
                  "prior": prior.__dict__, "policy": policy}
    return _run_and_save(ctrl, controller, ts, chosen, out, path, success_min, rule, quiet,
                         None if quiet else f"running {ctrl.name} on {len(chosen)} tasks ...", shard)


def replay_command(path: str, *, video: bool = False, tasks: int = 4, out: Path | None = None) -> int:
    """Replay every task of a saved control report; 0 when all reproduce, 1 otherwise. ``video``: also
    film the first ``tasks`` tasks and draw the contact sheet of all (``control.film``) into ``out``
    (default: the report's directory)."""
    report = ControlReport.load(path)
    bad = replay_report(report)
    n = len(report.results)
    if bad:
        print(f"{len(bad)} of {n} tasks did not reproduce:\n  " + "\n  ".join(bad))
    else:
        k = sum(r["success"] for r in report.results)
        print(f"all {n} tasks reproduced: {k} successes, final states equal to 1e-9")
    if video:
        from .film import film_report

        for p in film_report(report.results, out if out is not None else Path(path).parent, Path(path).stem,
                             videos=tasks):
            print(p)
    return 1 if bad else 0
