"""``wmcore train``: its options (``add_arguments``, for any argparse parser or subparser), ``run(args)``
(raises WMError on bad input) and ``main(argv)`` (exit codes as in ``wmcore.errors``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from ..errors import WMError, run_command
from .loop import RECIPES, TrainConfig, train

__all__ = ["DESCRIPTION", "TRAIN_HELP", "add_arguments", "build_parser", "main", "model_config", "run"]

DESCRIPTION = "The recipe that trains the embedded models: a JEPA from pixels on PushT episodes."
TRAIN_HELP = {"encoder_from": "an ac-tiny model directory whose encoder weights start this run (its encoder "
                              "config must match); with freeze_encoder in --model-config, a predictor-only stage"}


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``wmcore train``'s options to ``p``; returns ``p``."""
    p.add_argument("--data", required=True, help="directory of episodes (python -m wmcore.data.pusht)")
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


def build_parser() -> argparse.ArgumentParser:
    return add_arguments(argparse.ArgumentParser(prog="wmcore train", description=DESCRIPTION))


def model_config(arch: str, path: str | None = None, name: str | None = None):
    """The model config of ``arch``: its defaults, overridden by the ``--model-config`` JSON at ``path``
    (an object of the config's fields) and by ``name``."""
    cls = RECIPES[arch].config
    overrides = _read_overrides(path, cls) if path else {}
    if name:
        overrides["name"] = name
    try:
        return cls(**overrides)
    except TypeError as e:  # a JSON value of the wrong type that a comparison in the config's checks trips on
        raise WMError(f"--model-config {path}: a value has the wrong type ({e})") from None


def _read_overrides(path: str, cls) -> dict:
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WMError(f"--model-config {path}: not a readable JSON file ({e})") from None
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known) if isinstance(d, dict) else None
    if unknown is None or unknown:
        raise WMError(
            f"--model-config {path}: expected a JSON object of {cls.__name__} fields; "
            f"unknown: {unknown if unknown is not None else type(d).__name__}; known: {sorted(known)}"
        )
    return d


def run(args: argparse.Namespace) -> int:
    """Train as the parsed options say; returns 0 (bad input raises WMError)."""
    tcfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    mcfg = model_config(args.arch, args.model_config, args.name)
    train(args.data, args.out, mcfg, tcfg, device=args.device, log=lambda s: print(s, flush=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``wmcore train``; exit codes as in ``wmcore.errors``."""
    return run_command("wmcore train", lambda: run(build_parser().parse_args(argv)))
