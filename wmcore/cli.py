"""The ``wmcore`` command. Bad input exits 2 with a message naming what was wrong; nothing is overwritten."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .config import DTYPES
from .errors import WMError, run_command
from .rollout import ACTION_SOURCES


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


def _out_dir(arg: str | None) -> Path | None:
    """``--out DIR`` checked before any work: not a file, and creatable (None: a fresh runs/run-*/ later)."""
    if arg is None:
        return None
    out = Path(arg)
    if out.exists() and not out.is_dir():
        raise WMError(f"--out {arg!r}: exists and is not a directory; give a directory for the JSON and PNG")
    parent = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    if not parent.is_dir():
        raise WMError(f"--out {arg!r}: cannot be created, {parent} is a file, not a directory")
    return out


def _check_fit(model, episodes, what: str) -> None:
    """WMError naming ``what`` (the data option) unless the episodes' actions fit the model."""
    from .evaluate import check_episodes

    try:
        check_episodes(model, episodes)
    except WMError as e:
        raise WMError(f"{what}: {e}") from None


def _safe_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_.[]=," else "_" for ch in name)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .config import check_placement, load_thresholds, place_model
    from .data import DEFAULT_DATA, load as load_data
    from .evaluate import EvalConfig, evaluate
    from .fsio import new_run_dir
    from .models import load
    from .plot import plot_drift

    check_placement(args.device, args.dtype)  # before anything slow
    out = _out_dir(args.out)
    model = place_model(load(args.model), args.device, args.dtype)
    stem = _safe_name(f"{model.name}-{args.actions}")
    if out is not None:
        for suffix in (".json", ".png"):
            if (out / f"{stem}{suffix}").exists():
                raise WMError(f"--out {args.out!r}: {stem}{suffix} exists already; choose another directory "
                              "(nothing is overwritten)")
    thresholds = load_thresholds(model.name)
    data = args.data or DEFAULT_DATA
    print(f"loading {data} ...", file=sys.stderr, flush=True)
    episodes = load_data(data, limit=args.episodes, camera=args.camera)
    _check_fit(model, episodes, f"--data {data!r}")
    start = thresholds.start if args.start is None else args.start
    horizon = thresholds.horizon if args.horizon is None else args.horizon
    cfg = EvalConfig(horizon=horizon, start=start, action_source=args.actions, device=args.device, dtype=args.dtype)
    print(f"evaluating {model.name} on {len(episodes)} episodes, horizon {cfg.horizon} ...", file=sys.stderr, flush=True)
    r = evaluate(model, episodes, cfg, thresholds, spec=args.model, data_id=data)
    out = out if out is not None else new_run_dir(Path("runs"))  # fsio creates --out, or says why it cannot
    _print_report(r)
    print(r.save(out / f"{stem}.json"))
    print(plot_drift(r, out / f"{stem}.png"))
    return 0 if r.passed else 1


def _cmd_make_fixtures(argv: list[str]) -> int:
    has_kind = bool(argv) and not argv[0].startswith("-")
    kind, rest = (argv[0], argv[1:]) if has_kind else ("pusht", argv)
    if kind != "pusht":
        raise WMError(f"make-fixtures: unknown kind {kind!r}; available: pusht (wmcore make-fixtures pusht --out DIR)")
    from .data.pusht import main as pusht_main

    return pusht_main(rest, prog="wmcore make-fixtures pusht")


def _cmd_rollout(args: argparse.Namespace) -> int:
    from .config import load_thresholds
    from .data.clip import load_clip
    from .evaluate import EvalConfig, evaluate
    from .models import load
    from .plot import plot_drift

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        # the report goes to the same name with .json: an --out of x.json would get the PNG written under it
        raise WMError(f"--out {args.out!r}: expected a .png file name (the DriftReport JSON is written beside it)")
    report_path = out.with_suffix(".json")
    for p in (out, report_path):
        if p.exists():
            raise WMError(f"{p}: exists already; choose another --out (nothing is overwritten)")
    model = load(args.model)
    zeros = args.actions == "zeros"
    episode = load_clip(args.video, "zeros" if zeros else args.actions, action_dim=model.action_dim // model.frameskip)
    _check_fit(model, [episode], f"--video {args.video!r} with --actions {args.actions or 'beside it'!r}")
    steps_available = episode.steps // model.frameskip  # model steps after the first (context) frame
    if args.horizon > steps_available:
        raise WMError(
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


def _count(minimum: int):
    """An argparse type: an integer >= ``minimum`` (a usage error, exit 2, otherwise)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, found {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, found {value}")
        return value

    parse.__name__ = "integer"
    return parse


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
    sr.add_argument("--horizon", type=_count(1), default=30, help="model steps to roll out (default 30)")
    sr.add_argument("--out", required=True, help="PNG to write (the DriftReport goes to the same name .json); never overwritten")
    sr.set_defaults(func=_cmd_rollout)
    se = sub.add_parser("evaluate", help="roll a model out on episodes, print the drift summary and gates, "
                        "write the DriftReport JSON and drift PNG (exit 1 if a gate failed)")
    se.add_argument("--model", default="pusht-lewm", help="model spec: embedded name or FAMILY:PATH (default pusht-lewm)")
    se.add_argument("--data", help="episode directory, LeRobot dataset, or fixtures set name (default pusht)")
    se.add_argument("--camera", help="camera key of a LeRobot dataset with several")
    se.add_argument("--horizon", type=_count(1), help="model steps to roll out (default: [tool.wmcore] horizon)")
    se.add_argument("--episodes", type=_count(1), help="use the first N episodes (default all)")
    se.add_argument("--start", type=_count(0), help="recorded steps to skip at the start of each episode "
                    "(default: start in [tool.wmcore])")
    se.add_argument("--actions", default="recorded", choices=ACTION_SOURCES, help="action source (default recorded)")
    se.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps (default cpu)")
    se.add_argument("--dtype", default="float32", choices=DTYPES, help="model and latent dtype (default float32)")
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
    """The ``wmcore`` command; exit codes as in ``wmcore.errors`` (2 bad input, 3 a bug with its traceback)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "compare":
        from .compare import main as compare_main

        return compare_main(argv[1:])
    if argv and argv[0] == "train":
        from .train import main as train_main

        return train_main(argv[1:])
    if argv and argv[0] == "make-fixtures":
        return run_command("wmcore make-fixtures", lambda: _cmd_make_fixtures(argv[1:]))

    def body() -> int:
        args = build_parser().parse_args(argv)
        return args.func(args)

    return run_command("wmcore", body)


if __name__ == "__main__":
    sys.exit(main())
