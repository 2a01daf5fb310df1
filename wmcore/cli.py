"""The ``wmcore`` command: every subcommand's parser and body. Bad input exits 2 with a message naming
what was wrong; nothing is overwritten (exit codes: ``wmcore.errors``).

evaluate, rollout, show, plot (DriftReports), compare (two saved runs), make-fixtures (episode sets),
train (``wmcore.train``: the options are TrainConfig's fields), plan, replay, policy, and bench (the
installed suites through pytest: its arguments are pytest's).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
import sys
from pathlib import Path

from .errors import WMError, run_command
from .fsio import safe_name
from .paths import DEFAULT_DATA, DEFAULT_MODEL, DEFAULT_TRAIN_DATA
from .rollout import ACTION_SOURCES
from .settings import DTYPES, GATE_RULES, Tolerances

__all__ = ["build_parser", "main"]

# the option that sets each compare tolerance, for messages about its value
_TOLERANCE_FLAGS = {"step1_drop": "--max-step1-drop", "auc_drop": "--max-auc-drop",
                    "horizon_drop": "--max-horizon-drop", "slowdown": "--max-slowdown"}


# --- DriftReports ------------------------------------------------------------------------------


def _cmd_plot(args: argparse.Namespace) -> int:
    from .plot import plot_drift, plot_energy
    from .report import DriftReport

    report = DriftReport.load(args.report)
    out = Path(args.out or Path(args.report).with_suffix(".png"))
    if args.filmstrip:
        return _filmstrip(report, out.with_name(out.stem + "-filmstrip.png"), args)
    print(plot_drift(report, out))
    if report.energy is not None:  # beside the drift plot
        print(plot_energy(report, out.with_name(out.stem + "-energy.png")))
    return 0


def _filmstrip(report, out: Path, args: argparse.Namespace) -> int:
    """``wmcore plot REPORT --filmstrip``: the report's model and data loaded again, its first episodes
    rolled out open loop, and what the model imagines drawn (``wmcore.imagine``)."""
    import re

    from .data import load as load_data
    from .imagine import filmstrip_of_episodes
    from .models import load
    from .settings import EvalConfig

    if out.exists():
        raise WMError(f"{out}: exists already; give another --out (nothing is overwritten)")
    spec, data = report.model.get("spec"), args.data or report.data.get("id")
    m = re.fullmatch(r"(.*)\[:(\d+)\]", str(data))  # the pytest plugin's "DATA[:N]" for --wm-episodes N
    path = m.group(1) if m else str(data)
    limit = len(report.data.get("episode_ids") or []) or None  # the first N, as the report's run read them
    cfg = EvalConfig(**{k: v for k, v in report.config.items() if k in EvalConfig.__dataclass_fields__})
    if cfg.action_source != "recorded":
        raise WMError(f"{args.report}: a filmstrip rolls out the recorded actions; this report's are {cfg.action_source}")
    print(f"loading {spec} and {path} ...", file=sys.stderr, flush=True)
    try:
        model, episodes = load(spec), load_data(path, limit=limit)
    except WMError as e:
        raise WMError(f"{args.report}: cannot load its model or data again ({e}); give the data with --data") from None
    if [e.id for e in episodes] != report.data.get("episode_ids"):
        raise WMError(f"{args.report}: the episodes of {path} are not the report's; give its data with --data")
    print(filmstrip_of_episodes(model, episodes, cfg, out))
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from .fsio import read_json
    from .report import DriftReport, markdown_table, render_text

    doc = read_json(Path(args.report), hint="was the report truncated?") if Path(args.report).is_file() else None
    if isinstance(doc, dict) and doc.get("format") == "wmcore.control":  # a control report (wmcore plan, the bench)
        from .control.report import ControlReport, control_table

        c = ControlReport.load(args.report)
        print(control_table([(Path(args.report).stem, c)]) + "\n\n" + c.render_text())
        return 0 if c.passed else 1
    r = DriftReport.load(args.report)
    print(markdown_table(r) if args.markdown else render_text([r]))
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


def _say(msg: str) -> None:
    """Progress on stderr, from rank 0 only (every rank of a torchrun would repeat it)."""
    from .dist import is_main

    if is_main():
        print(msg, file=sys.stderr, flush=True)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from . import dist
    from .data import open_set
    from .evaluate import evaluate
    from .fsio import new_run_dir
    from .models import load
    from .plot import plot_drift, plot_energy
    from .report import render_text
    from .settings import apply_think, check_placement, place_model, resolve

    device = dist.device(args.device)
    with dist.together():  # a rank that cannot load the model or read the data stops every rank
        check_placement(device, args.dtype)  # before anything slow
        out = _out_dir(args.out)
        model = apply_think(place_model(load(args.model), device, args.dtype), args.think, "--think")
        stem = safe_name(f"{model.name}-{args.actions}" + (f"-think{args.think}" if args.think != 1 else ""))
        if out is not None:
            for suffix in (".json", ".png", "-energy.png"):
                if (out / f"{stem}{suffix}").exists():
                    raise WMError(f"--out {args.out!r}: {stem}{suffix} exists already; choose another directory "
                                  "(nothing is overwritten)")
        cfg, thresholds = resolve(model.name, horizon=args.horizon, start=args.start, action_source=args.actions,
                                  device=device, dtype=args.dtype, energy=not args.no_energy,
                                  overrides={"gate_rule": args.gate_rule} if args.gate_rule else None)
        cfg = dataclasses.replace(cfg, think=args.think)
        if args.batch_size is not None:
            cfg = dataclasses.replace(cfg, batch_size=args.batch_size)
        data = args.data or DEFAULT_DATA
        _say(f"loading {data} ...")
        episodes = open_set(data, limit=args.episodes, camera=args.camera)
    rank, world = dist.world()
    n_chunks = -(-len(episodes) // cfg.batch_size)
    _say(f"evaluating {model.name} on {len(episodes)} episodes, horizon {cfg.horizon}, {n_chunks} chunk(s) of "
         f"{cfg.batch_size}" + (f" over {world} processes" if world > 1 else "") + " ...")
    t0 = time.perf_counter()

    def progress(phase: str, done: int, total: int) -> None:
        if rank == 0 and (done == total or time.perf_counter() - progress.last > 10):
            progress.last = time.perf_counter()
            _say(f"  {phase}: {done}/{total} chunk(s) of rank 0 ({time.perf_counter() - t0:.0f} s)")

    progress.last = t0
    r = evaluate(model, episodes, cfg, thresholds, spec=args.model, data_id=data, progress=progress)
    if rank == 0:  # rank 0 alone writes and prints; every rank has the same report and exit code
        out = out if out is not None else new_run_dir(Path("runs"))  # fsio creates --out, or says why it cannot
        print(render_text([r]))
        print(r.save(out / f"{stem}.json"))
        print(plot_drift(r, out / f"{stem}.png"))
        if r.energy is not None:
            print(plot_energy(r, out / f"{stem}-energy.png"))
    return 0 if r.passed else 1


def _cmd_rollout(args: argparse.Namespace) -> int:
    from .data.clip import load_clip
    from .evaluate import evaluate
    from .models import load
    from .plot import plot_drift
    from .report import render_text
    from .settings import resolve

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
    # a clip is taken whole: its first frame is the context, whatever start the model's table sets
    cfg, thresholds = resolve(model.name, horizon=args.horizon, start=0, action_source="zeros" if zeros else "recorded")
    r = evaluate(model, [episode], cfg, thresholds, spec=args.model, data_id=Path(args.video).name)
    print(f"{model.name} on {Path(args.video).name}: {episode.steps + 1} frames, {cfg.action_source} actions, "
          f"horizon {r.horizon} model steps (frameskip {model.frameskip})")
    print(render_text([r]))
    print(plot_drift(r, out))
    print(r.save(report_path))
    return 0


# --- saved runs and episode sets ---------------------------------------------------------------


def _cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare_runs, overlay_panels, parse_pair, summary_lines, verdict_lines
    from .fsio import fresh_path
    from .plot import plot_overlay
    from .runs import load_run
    from .settings import load_tolerances

    flags = {"step1_drop": args.max_step1_drop, "auc_drop": args.max_auc_drop,
             "horizon_drop": args.max_horizon_drop, "slowdown": args.max_slowdown}
    tol, pyproject = load_tolerances(args.pyproject, flags, _TOLERANCE_FLAGS)
    from .control.compare import SUCCESS_DROP, compare_control, control_pairs, is_control, render_comparison

    if is_control(args.base) or is_control(args.new):
        drop = SUCCESS_DROP if args.max_success_drop is None else args.max_success_drop
        regressed = False
        for name, b, n in control_pairs(args.base, args.new):
            res = compare_control(b, n, drop)
            print("\n".join(render_comparison(name, b, n, res)))
            regressed |= res["success_rate"].verdict == "regressed"
        print("REGRESSION: the success rate dropped significantly" if regressed else "no regression in success rate")
        return 1 if regressed else 0
    for arg in args.pair:
        parse_pair(arg)  # syntax first: a typo should not wait for the runs to load
    if args.out and Path(args.out).exists():
        raise WMError(f"--out {args.out}: exists already; wmcore never overwrites a file, choose a new name")
    base, new = load_run(args.base), load_run(args.new)
    c = compare_runs(base, new, tol, args.pair, rule="means" if args.means else "paired")
    given = ", ".join(f"{k}={v}" for k, v in flags.items() if v is not None)
    print("\n".join(summary_lines(c, given, pyproject)))
    out = plot_overlay(overlay_panels(c), Path(args.out) if args.out else fresh_path("runs", "compare", ".png"),
                       title=f"BASE {base.path.name} vs NEW {new.path.name}")
    print(f"overlay: {out}")
    print("\n".join(verdict_lines(c)))
    return 1 if c.regressed else 0


def _cmd_make_pusht(args: argparse.Namespace) -> int:
    from .data.pusht import generate

    doc = generate(args.out, args.episodes, args.steps, args.seed, args.size, crf=args.crf,
                   progress=not args.quiet, command="wmcore " + " ".join(args.argv))
    s = doc["summary"]
    print(
        f"{args.out}: {s['episodes']} episodes x {args.steps} steps at {args.size} px; block moved in "
        f"{100 * s['contact_fraction']:.1f}% of steps; {s['generation_frames_per_s']:.0f} frames/s; "
        f"{s['bytes_per_episode'] / 1024:.1f} KiB per episode, {s['bytes'] / 2**20:.2f} MiB in all"
    )
    return 0


# --- the parser --------------------------------------------------------------------------------


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


def _add_report_commands(sub) -> None:
    sp = sub.add_parser("plot", help="draw the drift plot of a saved DriftReport JSON")
    sp.add_argument("report", help="a DriftReport JSON written by a run")
    sp.add_argument("--out", help="PNG to write (default: the report's name with .png; never overwritten)")
    sp.add_argument("--filmstrip", action="store_true", help="instead: what the model imagines, REPORT-filmstrip.png "
                    "(the report's model and data loaded again; per episode the true frames and, under each, the real "
                    "frame nearest to the imagined latent)")
    sp.add_argument("--data", help="with --filmstrip: where the report's data is now (default: its data id)")
    sp.set_defaults(func=_cmd_plot)
    ss = sub.add_parser("show", help="print a saved DriftReport's or control report's summary and gates (exit 1 if a gate failed)")
    ss.add_argument("report")
    ss.add_argument("--markdown", action="store_true", help="print the curves as a Markdown table instead")
    ss.set_defaults(func=_cmd_show)
    sr = sub.add_parser("rollout", help="one clip: roll a model out on a video and its actions, print its drift "
                        "summary, write the drift plot (and its JSON beside it)")
    sr.add_argument("--model", default=DEFAULT_MODEL, help=f"model spec (default {DEFAULT_MODEL})")
    sr.add_argument("--video", required=True, help="the clip (mp4, mkv, ...)")
    sr.add_argument("--actions", help="action file (.npy [T,A], .npz 'actions', .csv, .json) or 'zeros'; "
                    "default: the file beside the video with the same stem")
    sr.add_argument("--horizon", type=_count(1), default=30, help="model steps to roll out (default 30)")
    sr.add_argument("--out", required=True, help="PNG to write (the DriftReport goes to the same name .json); never overwritten")
    sr.set_defaults(func=_cmd_rollout)
    se = sub.add_parser("evaluate", help="roll a model out on episodes, print the drift summary and gates, "
                        "write the DriftReport JSON and drift PNG (exit 1 if a gate failed)")
    se.add_argument("--model", default=DEFAULT_MODEL,
                    help=f"model spec: embedded name or FAMILY:PATH (default {DEFAULT_MODEL})")
    se.add_argument("--data", help=f"episode directory, LeRobot dataset, or fixtures set name (default {DEFAULT_DATA})")
    se.add_argument("--camera", help="camera key of a LeRobot dataset with several")
    se.add_argument("--horizon", type=_count(1), help="model steps to roll out (default: [tool.wmcore] horizon)")
    se.add_argument("--episodes", type=_count(1), help="use the first N episodes (default all)")
    se.add_argument("--start", type=_count(0), help="recorded steps to skip at the start of each episode "
                    "(default: start in [tool.wmcore])")
    se.add_argument("--actions", default="recorded", choices=ACTION_SOURCES, help="action source (default recorded)")
    se.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps (default cpu)")
    se.add_argument("--dtype", default="float32", choices=DTYPES, help="model and latent dtype (default float32)")
    se.add_argument("--gate-rule", choices=GATE_RULES, help="how the gates decide: ci fails only a violation "
                    "shown with 95%% confidence over episodes (a 90%% CI wholly beyond the limit), mean fails any "
                    "violation of the mean curve "
                    "(default: gate_rule in [tool.wmcore], ci)")
    se.add_argument("--no-energy", action="store_true", help="skip the offline energy landscape (a few seconds; "
                    "measured by default with recorded actions, see README 'Energy landscape')")
    se.add_argument("--batch-size", type=_count(1), help="episodes per chunk: read, encoded and rolled out together, "
                    "and the unit shared out over torchrun's processes (memory, not results; default 16)")
    se.add_argument("--think", type=_count(1), default=1, help="thinking budget K a thinking model spends per "
                    "prediction (refine:DIR, pusht-refine, thinker:DIR, pusht-thinker; recorded in the report's config; default 1, the base path; "
                    "a model that cannot think runs at 1 only)")
    se.add_argument("--out", help="directory for the JSON and PNG (default: a new runs/run-*/); files are never overwritten")
    se.set_defaults(func=_cmd_evaluate)


def _add_compare(sub) -> None:
    p = sub.add_parser(
        "compare", help="diff two saved runs (pytest-benchmark JSON or run directories): table, overlay plot, "
        "exit 1 on a drift regression",
        description="Compare two saved runs pair by pair: a side-by-side table of drift metrics, an overlay "
        "PNG of the curves, and exit status 1 if NEW regressed beyond the tolerances (0 otherwise, 2 on "
        "unusable input). Tolerances: the flags, else [tool.wmcore.compare] of the nearest pyproject.toml "
        "(keys step1_drop, auc_drop, horizon_drop, slowdown), else the defaults.",
    )
    p.add_argument("base", metavar="BASE", help="the reference run: a pytest-benchmark JSON (--benchmark-json / "
                   "--benchmark-autosave), a wmcore run directory runs/run-*/ of DriftReport JSONs, or a control "
                   "report of wmcore plan (or a directory of them)")
    p.add_argument("new", metavar="NEW", help="the run to check against BASE (same kinds)")
    p.add_argument("--pair", action="append", default=[], metavar="OLD=NEW",
                   help="pair model OLD of BASE with model NEW of NEW (names or specs), repeatable; models with "
                   "the same name pair by themselves, and so do the models of two one-model runs")
    p.add_argument("--out", metavar="PNG", help="overlay PNG to write (default runs/compare-YYYYmmdd-HHMMSS.png); "
                   "an existing file is never overwritten")
    p.add_argument("--max-step1-drop", type=float, metavar="D",
                   help=f"tolerated drop of the closed-loop step-1 cosine (default {Tolerances.step1_drop})")
    p.add_argument("--max-auc-drop", type=float, metavar="D",
                   help=f"tolerated drop of the open-loop AUC (default {Tolerances.auc_drop})")
    p.add_argument("--max-horizon-drop", type=int, metavar="N",
                   help=f"open-loop drift horizon shortened by N steps or more regresses (default "
                   f"{Tolerances.horizon_drop}; never reached within H counts as H+1)")
    p.add_argument("--max-slowdown", type=float, metavar="RATIO",
                   help="tolerated ratio of NEW's to BASE's median time, e.g. 1.2 (default: timings not gated)")
    p.add_argument("--max-success-drop", type=float, metavar="D",
                   help="control reports (wmcore plan): tolerated drop of the success rate over the same tasks "
                   "(default 0.1); regressed only when the drop exceeds it and its paired 95%% CI excludes 0")
    p.add_argument("--means", action="store_true",
                   help="compare the mean curves against the tolerances, without confidence intervals (the rule "
                   "before per-episode records; runs without them always use it). Default: paired statistics over "
                   "the episodes, regressed only when the drop exceeds the tolerance and its 95%% CI excludes 0")
    p.add_argument("--pyproject", metavar="PATH", help="pyproject.toml to read [tool.wmcore.compare] from "
                   "(default: the nearest one with a [tool.wmcore] table)")
    p.set_defaults(func=_cmd_compare)


def _add_make_fixtures(sub) -> None:
    from .data.pusht import DEFAULT_SIZE

    mf = sub.add_parser("make-fixtures", help="generate episode sets: make-fixtures pusht --out DIR "
                        "(wmcore make-fixtures pusht --help for its options; needs the [sim] extra)")
    kinds = mf.add_subparsers(dest="kind", metavar="KIND", required=True)
    p = kinds.add_parser(
        "pusht", help="PushT episodes from gym-pusht",
        description="Generate PushT episodes (gym-pusht, headless) with a seeded smooth exploration policy: "
        "episode_NNN.mp4 + episode_NNN.npz + index.json in a fresh directory.",
    )
    p.add_argument("--out", required=True, help="directory to create (must not exist or be empty)")
    p.add_argument("--episodes", type=int, default=16, help="number of episodes (default 16)")
    p.add_argument("--steps", type=int, default=200, help="environment steps per episode, 10 per second (default 200)")
    p.add_argument("--seed", type=int, default=0, help="episode i uses seed + i (default 0; the committed "
                   "evaluation set uses 10000, so training sets should stay below it)")
    p.add_argument("--size", type=int, default=DEFAULT_SIZE,
                   help=f"frame size in pixels, even (default {DEFAULT_SIZE})")
    p.add_argument("--crf", type=int, default=None, help="H.264 crf (default 0: lossless in YUV)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_cmd_make_pusht)


TRAIN_HELP = {"encoder_from": "an ac-tiny model directory whose encoder weights start this run (its encoder "
                              "config must match); with freeze_encoder in --model-config, a predictor-only stage"}


def add_train_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``wmcore train``'s options on ``p`` (one per ``TrainConfig`` field, with its default); returns ``p``."""
    import dataclasses

    from .train import RECIPES, TrainConfig

    p.add_argument("--data", required=True, help="directory of episodes (wmcore make-fixtures pusht --out DIR)")
    p.add_argument("--out", required=True, help="training directory: checkpoint, log, and model/ at the end")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda:0, ...")
    for f in dataclasses.fields(TrainConfig):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default,
                       help=f"(default {f.default!r})" + (f": {TRAIN_HELP[f.name]}" if f.name in TRAIN_HELP else ""))
    p.add_argument("--arch", choices=sorted(RECIPES), default="lewm",
                   help="; ".join(f"{a}: {r.help}" for a, r in RECIPES.items()) + " (default lewm)")
    p.add_argument("--name", help="the model's name in reports and plots (default: the architecture's)")
    p.add_argument("--model-config", help="JSON file of the architecture's config fields ("
                   + ", ".join(r.config.__name__ for r in RECIPES.values()) + ")")
    return p


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import run

    return run(args)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a world model on PushT episodes: the LeWorldModel-style default, or "
                       "--arch ac-tiny (wmcore train --help for its options)",
                       description="The recipe that trains the embedded models: a JEPA from pixels on PushT "
                       "episodes; seeded and resumable (rerun the same command to continue).")
    add_train_arguments(p)
    p.set_defaults(func=_cmd_train)


def _cmd_train_keypoint(args: argparse.Namespace) -> int:
    from .train.keypoint import run_recipe

    run_recipe(args.data, args.out, args.recipe, seed=args.seed, threads=args.threads, episodes=args.episodes,
               encoder_from=args.encoder_from, predictor_steps=args.predictor_steps, log=lambda s: print(s, flush=True))
    return 0


def _add_train_keypoint(sub) -> None:
    p = sub.add_parser("train-keypoint", help="train a keypoint world model (the embedded pusht-wm: make train-wm)",
                       description="Two stages on one pass over the episodes: an encoder fitted to the recorded "
                       "simulator state's keypoints, then a block-frame predictor on its frozen latents "
                       "(wmcore.train.keypoint). Seeded and resumable: rerun the same command to continue.")
    p.add_argument("--data", required=True, nargs="+", help="directories of PushT episodes with states "
                   "(wmcore make-fixtures pusht --out DIR), read in this order")
    p.add_argument("--out", required=True, help="training directory: stage checkpoints, snapshots/, and model/ at the end")
    p.add_argument("--recipe", required=True, help="JSON file {\"model\": KeypointConfig fields, \"train\": "
                   "KeypointTrainConfig fields} (recipes/pusht-wm.json)")
    p.add_argument("--seed", type=int, help="overrides the recipe's seed")
    p.add_argument("--threads", type=int, help="torch threads (overrides the recipe's; 0 = torch's default)")
    p.add_argument("--episodes", type=int, help="train on the first N episodes only (a smaller-data variant)")
    p.add_argument("--predictor-steps", type=int, help="overrides the recipe's predictor_steps (a shorter-training variant)")
    p.add_argument("--encoder-from", help="a keypoint model directory whose encoder is reused (stage 1 skipped)")
    p.set_defaults(func=_cmd_train_keypoint)


def _keypoint_base(base: str, what: str) -> str:
    """``--base``: an embedded keypoint model's directory, or a keypoint directory; WMError otherwise."""
    from .models import EMBEDDED
    from .paths import fixtures_dir

    given = base
    if base in EMBEDDED:
        if EMBEDDED[base] != "keypoint":
            raise WMError(f"--base {base}: the {what} goes on a keypoint model (pusht-wm or a keypoint "
                          f"directory), not a {EMBEDDED[base]} one")
        base = str(fixtures_dir() / "models" / base)
    if not Path(base).is_dir():
        raise WMError(f"--base {given!r}: no such keypoint model directory (config.json + model.safetensors)")
    return base


def _train_over_keypoint(args: argparse.Namespace, read_recipe, train, what: str) -> int:
    fields, cfg = read_recipe(args.recipe)
    over = {k: v for k, v in (("seed", args.seed), ("threads", args.threads), ("predictor_steps", args.steps)) if v is not None}
    cfg = dataclasses.replace(cfg, **over) if over else cfg
    base = _keypoint_base(args.base, what)
    train(args.data, args.out, base, fields, cfg, log=lambda s: print(s, flush=True), limit=args.episodes)
    return 0


def _cmd_train_refine(args: argparse.Namespace) -> int:
    from .train.refine import read_refine_recipe, train_refine

    return _train_over_keypoint(args, read_refine_recipe, train_refine, "refinement block")


def _cmd_train_thinker(args: argparse.Namespace) -> int:
    from .train.thinker import read_thinker_recipe, train_thinker

    return _train_over_keypoint(args, read_thinker_recipe, train_thinker, "thinker")


def _add_over_keypoint_args(p, ckpt: str, recipe: str, fields: str) -> None:
    p.add_argument("--data", required=True, nargs="+", help="directories of PushT episodes (the base's training set)")
    p.add_argument("--out", required=True, help=f"training directory: {ckpt}, and model/ at the end")
    p.add_argument("--recipe", required=True, help=f"JSON {{\"model\": {fields} fields, \"train\": "
                   f"KeypointTrainConfig fields}} ({recipe})")
    p.add_argument("--base", default="pusht-wm", help="the frozen keypoint model: pusht-wm or a directory (default pusht-wm)")
    p.add_argument("--seed", type=int, help="overrides the recipe's seed")
    p.add_argument("--threads", type=int, help="torch threads (0 = torch's default)")
    p.add_argument("--steps", type=int, help="overrides the recipe's predictor_steps (the optimiser steps)")
    p.add_argument("--episodes", type=int, help="train on the first N episodes only")


def _add_train_refine(sub) -> None:
    p = sub.add_parser("train-refine", help="train the refinement thinking model over a frozen keypoint model "
                       "(the embedded pusht-refine: make train-refine)",
                       description="A weight-shared refinement block after a frozen keypoint world model's "
                       "predictor, K - 1 gated residual passes at thinking budget K (wmcore.models.refine, "
                       "wmcore.train.refine). Seeded and resumable: rerun the same command to continue.")
    _add_over_keypoint_args(p, "refine.pt", "recipes/pusht-refine.json", "RefineConfig")
    p.set_defaults(func=_cmd_train_refine)


def _add_train_thinker(sub) -> None:
    p = sub.add_parser("train-thinker", help="train the ThinkJEPA-style thinker model over a frozen keypoint model "
                       "(the embedded pusht-thinker: make train-thinker)",
                       description="A thinker over sparse past frames whose per-layer features FiLM every block "
                       "of a frozen keypoint world model's predictor (tanh gates at 0); thinking budget K = K - 1 "
                       "past frames read (wmcore.models.thinker, wmcore.train.thinker). \"past\": false in the "
                       "recipe trains the parameter-matched control. Seeded and resumable: rerun the same command "
                       "to continue.")
    _add_over_keypoint_args(p, "thinker.pt", "recipes/pusht-thinker.json", "ThinkerConfig")
    p.set_defaults(func=_cmd_train_thinker)


PRESET_FIELDS = ("samples", "elites", "iterations", "horizon", "execute")


def _cem_config(args: argparse.Namespace, frameskip: int = 1, model_preset: str = ""):
    """The planner settings of ``wmcore plan``: a --preset (its horizon in model steps of ``frameskip``),
    else the model's own ``planner`` preset from pyproject.toml when no planner field is given, else the
    defaults, with the options given on top; a preset's own fields may not be given too."""
    from .control.planners import CEMConfig, preset

    common = dict(init_std=args.init_std, noise_beta=args.noise_beta, cost=args.cost, seed=args.seed,
                  proprio_weight=args.proprio_weight)
    if not args.preset and model_preset and all(getattr(args, f) is None for f in PRESET_FIELDS):
        return preset(model_preset, frameskip, **common)
    if args.preset and args.preset != "default":
        given = [f"--{f}" for f in PRESET_FIELDS if getattr(args, f) is not None]
        if given:
            raise WMError(f"--preset {args.preset} sets {', '.join(given)} itself; leave {'them' if len(given) > 1 else 'it'} "
                          "out, or plan without a preset")
        return preset(args.preset, frameskip, **common)
    d = CEMConfig()
    return CEMConfig(**{f: getattr(d, f) if getattr(args, f) is None else getattr(args, f) for f in PRESET_FIELDS},
                     **common)


def _cmd_plan(args: argparse.Namespace) -> int:
    from . import dist
    from .control.command import NEEDS_MODEL, plan
    from .control.planners import CEMConfig
    from .fsio import new_run_dir
    from .control.tasks import TaskSpec
    from .data import load as load_data
    from .models import load
    from .settings import apply_think, check_placement, load_thresholds, place_model

    if args.planner in NEEDS_MODEL and not args.model:
        raise WMError(f"wmcore plan --planner {args.planner} needs --model SPEC (e.g. pusht-lewm); the baselines "
                      "(--planner oracle, stay, random, drive) need none")
    device = dist.device(args.device)
    with dist.together():  # a rank that cannot load the model or the data stops every rank
        check_placement(device, "float32")
        cfg = _cem_config(args)  # bad planner options fail before anything is loaded or written
        model = place_model(load(args.model), device, "float32") if args.model and args.planner in NEEDS_MODEL else None
        if args.think != 1 and model is None:
            raise WMError(f"--think {args.think}: the {args.planner} planner has no world model to think with; "
                          "--think goes with --planner cem and --model")
        if model is not None:
            apply_think(model, args.think, "--think")
        t = load_thresholds(model.name if args.planner == "cem" else args.planner,
                            overrides={"success_min": args.success_min} if args.success_min is not None else None)
        if model is not None:
            cfg = _cem_config(args, model.frameskip, t.planner if args.planner == "cem" else "")
        out = _out_dir(args.out)
        data = args.data or DEFAULT_DATA
        _say(f"loading {data} ...")
        episodes = load_data(data)
    out = dist.share(out if out is not None or not dist.is_main() else new_run_dir(Path("runs")))
    spec = TaskSpec(count=args.count, goal_offset=args.goal_offset, budget=args.budget, seed=args.seed)
    r = plan(kind=args.planner, model=model, model_spec=args.model, episodes=episodes, data_id=data, tasks=args.tasks,
             spec=spec, limit=args.limit, cfg=cfg, out=out, success_min=t.success_min, rule=t.gate_rule,
             device=device, fidelity=not args.no_fidelity)
    if dist.is_main():
        print(r.render_text())
        print(out)
    return 0 if r.passed else 1


def _cmd_replay(args: argparse.Namespace) -> int:
    from .control.command import replay_command

    if (args.out or args.tasks != 4) and not args.video:
        raise WMError("--out and --tasks are options of --video (filming the replay); add --video")
    return replay_command(args.report, video=args.video, tasks=args.tasks,
                          out=_out_dir(args.out) if args.out else None)


def _add_control(sub) -> None:
    from .control.command import CONTROLLERS
    from .control.planners import COSTS, PRESETS, CEMConfig
    from .control.tasks import TaskSpec

    c, t = CEMConfig(), TaskSpec()
    p = sub.add_parser("plan", help="plan to goals in the PushT simulator with a world model (CEM) or a baseline; "
                       "writes a replayable control report (exit 1 if success falls below success_min)")
    p.add_argument("--model", help="world model spec (for --planner cem), e.g. pusht-lewm, lewm:DIR")
    p.add_argument("--planner", default="cem", choices=CONTROLLERS, help="cem: the world model's latent goal cost; "
                   "oracle: the simulator as the model; encoder-oracle: the simulator as the dynamics and --model's "
                   "encoder as the cost (is the latent distance good enough to plan with?); stay, random, drive: "
                   "baselines (default cem)")
    p.add_argument("--data", help=f"held-out episodes with states to cut tasks from (default {DEFAULT_DATA})")
    p.add_argument("--tasks", help="a task-set JSON (tasks.json of an earlier run) instead of cutting tasks from --data")
    p.add_argument("--count", type=_count(1), default=t.count, help=f"tasks to cut (default {t.count})")
    p.add_argument("--limit", type=_count(1), help="run only the first N tasks of the set (default all)")
    p.add_argument("--goal-offset", type=_count(1), default=t.goal_offset,
                   help=f"goal = the recorded state this many env steps after the start (default {t.goal_offset})")
    p.add_argument("--budget", type=_count(1), default=t.budget, help=f"env steps allowed per task (default {t.budget})")
    p.add_argument("--preset", choices=["default", *sorted(PRESETS)], help="named planner settings: lewm = le-wm's "
                   "published PushT evaluation (CEM 300 samples, 30 elites, 30 iterations, horizon 5 model steps, the "
                   "whole plan executed before replanning); default = the defaults below. Sets --samples/--elites/"
                   "--iterations/--horizon/--execute. Without it a model planned with a preset of its own "
                   "(planner in its [tool.wmcore.models.NAME], e.g. pusht-wm: lewm) uses that one")
    p.add_argument("--proprio-weight", type=float, default=c.proprio_weight,
                   help="weight of the proprio term (the propagated agent position against the goal's; models that "
                   f"read proprioception only) (default {c.proprio_weight})")
    p.add_argument("--no-fidelity", action="store_true", help="skip the ranking-fidelity measurement (cem: each "
                   "task's first candidates costed by the model and by the simulator + the model's encoder)")
    p.add_argument("--samples", type=_count(1), default=None, help=f"CEM candidates per iteration (default {c.samples})")
    p.add_argument("--elites", type=_count(1), default=None, help=f"CEM elites (default {c.elites})")
    p.add_argument("--iterations", type=_count(1), default=None, help=f"CEM iterations per plan (default {c.iterations})")
    p.add_argument("--horizon", type=_count(1), default=None, help=f"env steps planned ahead (default {c.horizon})")
    p.add_argument("--execute", type=_count(1), default=None, help=f"env steps executed before replanning (default {c.execute})")
    p.add_argument("--init-std", type=float, default=c.init_std,
                   help=f"initial CEM std, in recorded per-step action changes (default {c.init_std})")
    p.add_argument("--noise-beta", type=float, default=c.noise_beta,
                   help=f"coloured noise exponent of the candidates' changes (0 white, 2 momentum; default {c.noise_beta})")
    p.add_argument("--cost", default=c.cost, choices=COSTS, help="latent distance to the goal at the last step, or "
                   f"summed over every step (default {c.cost})")
    p.add_argument("--seed", type=int, default=0, help="task selection and planner seed (default 0)")
    p.add_argument("--success-min", type=float, help="gate: minimum success rate (default: success_min in "
                   "[tool.wmcore.models.NAME]; none: no gate)")
    p.add_argument("--think", type=_count(1), default=1, help="thinking budget K of a thinking world model "
                   "(recorded in the report's controller; default 1, the base path)")
    p.add_argument("--device", default="cpu", help="torch device of the world model (default cpu)")
    p.add_argument("--out", help="directory for tasks.json and the control report (default: a new runs/run-*/)")
    p.set_defaults(func=_cmd_plan)
    r = sub.add_parser("replay", help="re-run a control report's saved actions in the simulator and check that "
                       "every success and final state reproduces (exit 1 if not)")
    r.add_argument("report", help="a control report JSON written by wmcore plan")
    r.add_argument("--video", action="store_true", help="also film the replay: an MP4 per task (the goal drawn as a "
                   "green ghost, each action's target as a red cross, task id, step and success written on it) and "
                   "one contact sheet PNG (per task: start, goal, final frame, success)")
    r.add_argument("--tasks", type=_count(1), default=4, help="with --video: film the first N tasks (the contact "
                   "sheet shows every task; default 4)")
    r.add_argument("--out", help="with --video: directory for the videos and the sheet (default: the report's own "
                   "directory); nothing is overwritten")
    r.set_defaults(func=_cmd_replay)


def _policy_config(args: argparse.Namespace):
    from .control.policy import PolicyConfig

    return PolicyConfig(variant=args.variant, aux_weight=args.aux_weight, steps=args.steps, seed=args.seed,
                        val_episodes=args.val_episodes)


def _load_train_data(path: str):
    from .data import load as load_data

    if not Path(path).exists():
        raise WMError(f"--train-data {path!r}: no such data set; generate the PushT training set with `make pusht-data` "
                      f"(it writes {DEFAULT_TRAIN_DATA}) or `wmcore make-fixtures pusht --out DIR --episodes 150 --steps 300`, "
                      "or give your own episodes with actions")
    print(f"loading {path} ...", file=sys.stderr, flush=True)
    return load_data(path)


def _cmd_policy_train(args: argparse.Namespace) -> int:
    from .control.command import policy_train
    from .fsio import new_run_dir
    from .models import load
    from .plot import plot_policy_curves

    cfg = _policy_config(args)
    out = _out_dir(args.out)
    out = out if out is not None else new_run_dir(Path("runs"))
    model = load(args.model)
    episodes = _load_train_data(args.train_data)
    net, doc = policy_train(model=model, model_spec=args.model, episodes=episodes, data_id=args.train_data, cfg=cfg,
                            out=out)
    plot_policy_curves([(cfg.label, doc["history"])], out / "policy-curves.png",
                       title=f"policy {cfg.label} on {model.name}'s latents (seed {cfg.seed})")
    last = doc["history"][-1]
    print(f"policy {cfg.label}: held-out action error {last['val_action_mse']:.4f} after {last['step']} steps "
          f"({doc['seconds']['train']:.0f} s training)")
    print(out)
    return 0


def _cmd_policy_evaluate(args: argparse.Namespace) -> int:
    from . import dist
    from .control.command import policy_evaluate, policy_train
    from .control.policy import load_policy
    from .control.tasks import TaskSpec
    from .data import load as load_data
    from .fsio import new_run_dir
    from .models import load
    from .settings import load_thresholds

    if dist.world()[1] > 1 and not args.policy:
        raise WMError("wmcore policy evaluate under torchrun shards the evaluation of a trained policy: train it "
                      "first (wmcore policy train --out DIR), then give --policy DIR")
    with dist.together():
        out = _out_dir(args.out)
        model = load(args.model)
        if args.policy:
            net, doc = load_policy(args.policy)
            doc = {**doc, "source": args.policy}
    out = dist.share(out if out is not None or not dist.is_main() else new_run_dir(Path("runs")))
    if not args.policy:  # the default variant, trained here on the training set (one process)
        cfg = _policy_config(args)
        net, doc = policy_train(model=model, model_spec=args.model, episodes=_load_train_data(args.train_data),
                                data_id=args.train_data, cfg=cfg, out=out / f"policy-{cfg.label}")
        doc = {**doc, "source": str(out / f"policy-{cfg.label}")}
    t = load_thresholds(f"policy-{net.cfg.label}",
                        overrides={"success_min": args.success_min} if args.success_min is not None else None)
    data = args.data or DEFAULT_DATA
    _say(f"loading {data} ...")
    with dist.together():
        episodes = load_data(data)
    r = policy_evaluate(model=model, model_spec=args.model, net=net, policy=doc, episodes=episodes, data_id=data,
                        tasks=args.tasks, spec=TaskSpec(count=args.count, seed=args.task_seed), limit=args.limit,
                        out=out, success_min=t.success_min, rule=t.gate_rule)
    if dist.is_main():
        print(r.render_text())
        print(out)
    return 0 if r.passed else 1


def _add_policy(sub) -> None:
    from .control.policy import VARIANTS, PolicyConfig
    from .control.tasks import TaskSpec

    c, t = PolicyConfig(), TaskSpec()
    p = sub.add_parser("policy", help="world-model-conditioned imitation policies: train one, or evaluate one in the "
                       "PushT simulator (wmcore policy train|evaluate --help)",
                       description="Goal-conditioned behaviour cloning on a world model's frozen encoder, with the "
                       "world model's imagined next latent as an input (imagined) or its prediction as an auxiliary "
                       "loss (aux, weight lambda); evaluated closed loop on the planning task set.")
    ps = p.add_subparsers(dest="policy_command", required=True)

    def common(q, train_default: str) -> None:
        q.add_argument("--model", required=True, help="world model spec whose encoder the policy reads (pusht-lewm, "
                       "pusht-ac-tiny, lewm:DIR, ...)")
        q.add_argument("--variant", default=c.variant, choices=VARIANTS,
                       help=f"gcbc: behaviour cloning; imagined: + the world model's imagined next latent under "
                       f"the policy's own proposal; aux: + the world model's prediction as an auxiliary loss "
                       f"(default {c.variant})")
        q.add_argument("--aux-weight", type=float, default=c.aux_weight,
                       help="lambda of the auxiliary loss, in [0, 1] (variant aux; typical 0.1-0.5)")
        q.add_argument("--steps", type=_count(1), default=c.steps, help=f"optimiser steps (default {c.steps})")
        q.add_argument("--seed", type=int, default=c.seed, help=f"training seed (default {c.seed})")
        q.add_argument("--val-episodes", type=_count(1), default=c.val_episodes,
                       help=f"the last N training episodes are held out for the action error (default {c.val_episodes})")
        q.add_argument("--train-data", default=DEFAULT_TRAIN_DATA,
                       help=f"training episodes with actions {train_default}(default {DEFAULT_TRAIN_DATA}: "
                       "make pusht-data)")
        q.add_argument("--out", help="directory to write into (default: a new runs/run-*/)")

    tr = ps.add_parser("train", help="train one policy variant; writes policy.safetensors, policy.json and "
                       "policy-curves.png")
    common(tr, "")
    tr.set_defaults(func=_cmd_policy_train)
    ev = ps.add_parser("evaluate", help="run a policy closed loop on the planning task set; writes a replayable "
                       "control report (exit 1 if success falls below success_min)")
    common(ev, "for a policy trained here when --policy is not given ")
    ev.add_argument("--policy", help="a directory written by wmcore policy train (default: train the --variant here)")
    ev.add_argument("--data", help=f"held-out episodes with states to cut tasks from (default {DEFAULT_DATA})")
    ev.add_argument("--tasks", help="a task-set JSON (tasks.json of an earlier plan or policy run)")
    ev.add_argument("--count", type=_count(1), default=t.count, help=f"tasks to cut (default {t.count})")
    ev.add_argument("--task-seed", type=int, default=t.seed, help=f"task selection seed (default {t.seed})")
    ev.add_argument("--limit", type=_count(1), help="run only the first N tasks of the set (default all)")
    ev.add_argument("--success-min", type=float, help="gate: minimum success rate (default: success_min in "
                    "[tool.wmcore.models.policy-VARIANT]; none: no gate)")
    ev.set_defaults(func=_cmd_policy_evaluate)


# --- bench: the installed suites through pytest --------------------------------------------------

SUITES_DIR = Path(__file__).resolve().parent / "suites"
BENCH_HELP = """usage: wmcore bench [--suite NAME ...] [PYTEST ARGS ...]

Run wmcore's benchmark suites (installed with the package, wmcore/suites) through pytest, from any
directory: the same run as `make bench` in a wmcore checkout, and as
`pytest --pyargs wmcore.suites --benchmark-only`.

  --suite NAME   run only this suite, repeatable; one of: {suites}; `none` runs only the paths
                 you give (your own bench/, with the plugin's fixtures)
  -h, --help     this text (pytest's own: pytest --help, the wmcore group lists the --wm-* options)

Every other argument goes to pytest, after these defaults (a later option wins):
  -p no:randomly --benchmark-only --benchmark-autosave --benchmark-storage=runs/benchmarks
e.g. --wm-model SPEC, --wm-data PATH, --wm-episodes N, --wm-artifacts DIR (default runs/: each run
writes runs/run-*/ under the current directory), --wm-baseline PATH, -k EXPR, paths of your own cases
(wmcore bench bench/). Your project's conftest.py (in the current directory) is loaded first: register
your model family there (wmcore.models.register_family).

Exit codes are pytest's: 0 all passed, 1 a gate, a test or the --wm-baseline comparison failed,
2 interrupted, 3 internal error, 4 usage error (bad --wm-* option, unreadable data or model), 5 no
test collected."""


def suite_names() -> list[str]:
    """The installed suites: ``wmcore/suites/test_NAME.py`` -> NAME."""
    return sorted(p.stem[len("test_"):] for p in SUITES_DIR.glob("test_*.py"))


def bench_args(argv: list[str]) -> list[str] | None:
    """pytest's arguments for ``wmcore bench ARGV`` (None: help was printed). ``--suite`` is taken out
    wherever it stands; everything else is passed on in order."""
    suites, rest, i = [], [], 0
    known = suite_names()
    while i < len(argv):
        a = argv[i]
        if a in ("-h", "--help"):
            print(BENCH_HELP.format(suites=", ".join(known)))
            return None
        if a == "--suite" or a.startswith("--suite="):
            if a == "--suite":
                if i + 1 >= len(argv):
                    raise WMError("--suite needs a suite's name: " + ", ".join(known + ["none"]))
                name, i = argv[i + 1], i + 2
            else:
                name, i = a.partition("=")[2], i + 1
            if name not in known + ["none"]:
                raise WMError(f"--suite {name!r}: no such suite; the installed ones: {', '.join(known)} (or none)")
            suites.append(name)
            continue
        if a == "--":  # the rest is pytest's, verbatim
            rest.extend(argv[i + 1:])
            break
        rest.append(a)
        i += 1
    chosen = [n for n in (suites or known) if n != "none"]
    if suites and "none" in suites and len(set(suites)) > 1:
        raise WMError("--suite none runs no installed suite; give either none or suite names, not both")
    # the package, not its modules: node ids then read test_drift.py::test_drift[...] (a module given
    # alone would be its own initial path, and its tests' ids lose the file's name); suites left out
    # are --ignore'd
    skipped = [f"--ignore={SUITES_DIR / f'test_{n}.py'}" for n in known if n not in chosen]
    pkg = ["wmcore.suites"] if chosen else []
    return ["-p", "no:randomly", "--benchmark-only", "--benchmark-autosave", "--benchmark-storage=runs/benchmarks",
            *skipped, "--pyargs", *pkg, *rest]


def _cmd_bench(argv: list[str]) -> int:
    """``wmcore bench``: ``python -m pytest`` over the installed suites, in a fresh interpreter of this
    one (so that pytest, not this command, imports wmcore first and rewrites its asserts; under
    torchrun the child inherits the rank's environment); pytest's exit code."""
    import subprocess

    args = bench_args(argv)
    if args is None:
        return 0
    proc = subprocess.Popen([sys.executable, "-m", "pytest", *args])
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:  # pytest got the same SIGINT: it ends its session, and its code is passed on
            continue


class _Version(argparse.Action):
    """``--version``: the package version, and the commit where wmcore runs from a git checkout (asked
    of git only when the option is given)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0,
                         help=help or "print wmcore's version (and git commit, in a checkout) and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        from .paths import fixtures_dir
        from .version import describe

        print(f"wmcore {describe()}\npackage: {Path(__file__).resolve().parent}\nfixtures: {fixtures_dir()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wmcore", description="Latent-drift benchmarks for action-conditioned world models.")
    p.add_argument("--version", action=_Version)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("bench", add_help=False, help="run the installed benchmark suites through pytest, from any "
                   "directory (wmcore bench --help; every other argument goes to pytest)")
    _add_report_commands(sub)
    _add_compare(sub)
    _add_make_fixtures(sub)
    _add_train(sub)
    _add_train_keypoint(sub)
    _add_train_refine(sub)
    _add_train_thinker(sub)
    _add_control(sub)
    _add_policy(sub)
    return p


# commands that shard their work over the processes of a torchrun (wmcore.dist)
SHARDED = ("evaluate", "plan", "policy evaluate")


def main(argv: list[str] | None = None) -> int:
    """The ``wmcore`` command; exit codes as in ``wmcore.errors`` (2 bad input, 3 a bug with its traceback).
    Under ``torchrun`` (``WORLD_SIZE`` > 1) the sharded commands join the process group first."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # a command's errors name it, as argparse's own usage errors do (an unknown command is one of those)
    prog = f"wmcore {argv[0]}" if argv and not argv[0].startswith("-") else "wmcore"

    if argv and argv[0] == "bench":  # pytest parses the rest; under torchrun the plugin joins the group
        return run_command(prog, lambda: _cmd_bench(argv[1:]))

    def body() -> int:
        from . import dist

        args = build_parser().parse_args(argv)
        args.argv = argv
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            command = " ".join(x for x in (args.command, getattr(args, "policy_command", None)) if x)
            if command not in SHARDED:
                raise WMError(f"wmcore {command} runs in one process; run it without torchrun (the commands "
                              f"that shard over processes: {', '.join(SHARDED)})")
            dist.init_from_env()
        try:
            return args.func(args)
        finally:
            dist.close()

    return run_command(prog, body)


if __name__ == "__main__":
    sys.exit(main())
