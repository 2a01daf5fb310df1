"""What ``wmcore train`` runs (its options are in ``wmcore.cli``): ``model_config`` (an architecture's
config from defaults and a ``--model-config`` JSON) and ``run(args)`` (raises WMError on bad input)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from ..errors import WMError
from .loop import RECIPES, TrainConfig, train

__all__ = ["model_config", "run"]

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
