"""The ``wmcore`` command. Bad input exits 2 with a message naming what was wrong; nothing is overwritten."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__


def _cmd_plot(args: argparse.Namespace) -> int:
    from .plot import plot_drift
    from .report import DriftReport

    report = DriftReport.load(args.report)
    out = args.out or Path(args.report).with_suffix(".png")
    print(plot_drift(report, out))
    return 0


def _print_report(r) -> None:
    print(f"model {r.model.get('name')}  data {r.data.get('id')}  ({r.data.get('episodes')} episodes, H={r.horizon})")
    print(f"chance level {r.chance_level:.3f} (centred {r.chance_level_centred:.3f})")
    for loop, row in r.summary().items():
        cells = "  ".join(f"{k}={'-' if v is None else (f'{v:.3f}' if isinstance(v, float) else v)}" for k, v in row.items())
        print(f"  {loop:<12} {cells}")
    for g in r.gates:
        print(f"  [{'PASS' if g.passed else 'FAIL'}] {g.name}: {g.message}")


def _cmd_show(args: argparse.Namespace) -> int:
    from .report import DriftReport, markdown_table

    r = DriftReport.load(args.report)
    print(markdown_table(r)) if args.markdown else _print_report(r)
    return 0 if r.passed else 1


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .config import load_thresholds
    from .data import DEFAULT_DATA, load as load_data
    from .evaluate import EvalConfig, evaluate
    from .fsio import new_run_dir
    from .models import load
    from .plot import plot_drift

    model = load(args.model)
    if args.device != "cpu" or args.dtype != "float32":
        import torch

        model = model.to(args.device, getattr(torch, args.dtype))
    data = args.data or DEFAULT_DATA
    print(f"loading {data} ...", file=sys.stderr, flush=True)
    episodes = load_data(data, limit=args.episodes, camera=args.camera)
    thresholds = load_thresholds(model.name)
    start = thresholds.start if args.start is None else args.start
    cfg = EvalConfig(horizon=args.horizon or thresholds.horizon, start=start, action_source=args.actions,
                     device=args.device, dtype=args.dtype)
    print(f"evaluating {model.name} on {len(episodes)} episodes, horizon {cfg.horizon} ...", file=sys.stderr, flush=True)
    r = evaluate(model, episodes, cfg, thresholds, spec=args.model, data_id=data)
    out = Path(args.out) if args.out else new_run_dir(Path("runs"))
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{model.name}-{args.actions}"
    _print_report(r)
    print(r.save(out / f"{stem}.json"))
    print(plot_drift(r, out / f"{stem}.png"))
    return 0 if r.passed else 1


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import main as train_main

    return train_main(args.rest)


def _cmd_make_fixtures(args: argparse.Namespace) -> int:
    if args.kind != "pusht":
        raise ValueError(f"make-fixtures: unknown kind {args.kind!r}; available: pusht")
    from .data.pusht import main as pusht_main

    return pusht_main(args.rest, prog="wmcore make-fixtures pusht")


def _cmd_rollout(args: argparse.Namespace) -> int:
    from .config import load_thresholds
    from .data.clip import load_clip
    from .evaluate import EvalConfig, evaluate
    from .models import load
    from .plot import plot_drift

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        # the report goes to the same name with .json: an --out of x.json would get the PNG written under it
        raise ValueError(f"--out {args.out!r}: expected a .png file name (the DriftReport JSON is written beside it)")
    if args.horizon < 1:
        raise ValueError(f"--horizon {args.horizon}: expected a positive number of model steps")
    report_path = out.with_suffix(".json")
    for p in (out, report_path):
        if p.exists():
            raise ValueError(f"{p}: exists already; choose another --out (nothing is overwritten)")
    model = load(args.model)
    zeros = args.actions == "zeros"
    episode = load_clip(args.video, "zeros" if zeros else args.actions, action_dim=model.action_dim // model.frameskip)
    steps_available = episode.steps // model.frameskip  # model steps after the first (context) frame
    if args.horizon > steps_available:
        raise ValueError(
            f"{args.video}: {episode.steps + 1} frames = {steps_available} model steps at frameskip "
            f"{model.frameskip}, fewer than --horizon {args.horizon}; use --horizon <= {steps_available} or a longer clip"
        )
    cfg = EvalConfig(horizon=args.horizon, action_source="zeros" if zeros else "recorded")
    r = evaluate(model, [episode], cfg, load_thresholds(model.name), spec=args.model, data_id=Path(args.video).name)
    h = r.horizon
    steps = [s for s in (1, 10, h) if s <= h]
    print(f"{model.name} on {Path(args.video).name}: {episode.steps + 1} frames, {cfg.action_source} actions, "
          f"horizon {h} model steps (frameskip {model.frameskip})")
    for loop in ("open_loop", "closed_loop", "copy_last"):
        c = r.loops[loop].cosine
        cells = "  ".join(f"step {s}: {c[s - 1]:.3f}" for s in dict.fromkeys(steps))
        hz = r.loops[loop].drift_horizon
        print(f"  {loop.replace('_', ' '):<12} {cells}  drift horizon {'never' if hz is None else hz}")
    print(f"  chance level {r.chance_level:.3f}")
    print(plot_drift(r, out))
    print(r.save(report_path))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wmcore", description="Latent-drift benchmarks for action-conditioned world models.")
    p.add_argument("--version", action="version", version=f"wmcore {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("plot", help="draw the drift plot of a saved DriftReport JSON")
    sp.add_argument("report", help="a DriftReport JSON written by a run")
    sp.add_argument("--out", help="PNG to write (default: the report's name with .png; never overwritten)")
    sp.set_defaults(func=_cmd_plot)
    ss = sub.add_parser("show", help="print a saved DriftReport's summary and gates (exit 1 if a gate failed)")
    ss.add_argument("report")
    ss.add_argument("--markdown", action="store_true", help="print the curves as a Markdown table instead")
    ss.set_defaults(func=_cmd_show)
    sr = sub.add_parser("rollout", help="one clip: roll a model out on a video and its actions, print step "
                        "1/10/H cosines of open and closed loop, write the drift plot (and its JSON beside it)")
    sr.add_argument("--model", default="pusht-lewm", help="model spec (default pusht-lewm)")
    sr.add_argument("--video", required=True, help="the clip (mp4, mkv, ...)")
    sr.add_argument("--actions", help="action file (.npy [T,A], .npz 'actions', .csv, .json) or 'zeros'; "
                    "default: the file beside the video with the same stem")
    sr.add_argument("--horizon", type=int, default=30, help="model steps to roll out (default 30)")
    sr.add_argument("--out", required=True, help="PNG to write (the DriftReport goes to the same name .json); never overwritten")
    sr.set_defaults(func=_cmd_rollout)
    se = sub.add_parser("evaluate", help="roll a model out on episodes, print the drift summary and gates, "
                        "write the DriftReport JSON and drift PNG (exit 1 if a gate failed)")
    se.add_argument("--model", default="pusht-lewm", help="model spec: embedded name or FAMILY:PATH (default pusht-lewm)")
    se.add_argument("--data", help="episode directory, LeRobot dataset, or fixtures set name (default pusht)")
    se.add_argument("--camera", help="camera key of a LeRobot dataset with several")
    se.add_argument("--horizon", type=int, help="model steps to roll out (default: [tool.wmcore] horizon)")
    se.add_argument("--episodes", type=int, help="use the first N episodes (default all)")
    se.add_argument("--start", type=int, help="recorded steps to skip at the start of each episode "
                    "(default: start in [tool.wmcore])")
    se.add_argument("--actions", default="recorded", choices=["recorded", "zeros", "random"], help="action source")
    se.add_argument("--device", default="cpu")
    se.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    se.add_argument("--out", help="directory for the JSON and PNG (default: a new runs/run-*/); files are never overwritten")
    se.set_defaults(func=_cmd_evaluate)
    # listed for --help; main() hands their arguments over whole (they own their options and exit codes)
    sub.add_parser("compare", help="diff two saved runs (pytest-benchmark JSON or run directories): "
                   "table, overlay plot, exit 1 on a drift regression (wmcore compare --help)")
    sub.add_parser("train", help="train a world model on PushT episodes: the LeWorldModel-style default, or "
                   "--arch ac-tiny (wmcore train --help for its options)")
    sub.add_parser("make-fixtures", help="generate episode sets: make-fixtures pusht --out DIR "
                   "(wmcore make-fixtures pusht --help for its options; needs the [sim] extra)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "compare":
        from .compare import main as compare_main

        return compare_main(argv[1:])
    if argv and argv[0] == "train":
        args = argparse.Namespace(func=_cmd_train, rest=argv[1:])
    elif argv and argv[0] == "make-fixtures":
        has_kind = len(argv) > 1 and not argv[1].startswith("-")
        args = argparse.Namespace(func=_cmd_make_fixtures, kind=argv[1] if has_kind else "pusht",
                                  rest=argv[2:] if has_kind else argv[1:])
    else:
        args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:  # WMError included: bad input the user can fix
        print(f"wmcore: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
