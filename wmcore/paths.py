"""Where things are and what they are called by default: the fixtures directory, the default data
set and model. The ground floor: imports nothing of wmcore."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["BENCHED", "DEFAULT_DATA", "DEFAULT_MODEL", "DEFAULT_TRAIN_DATA", "EMBEDDED", "fixtures_dir"]

DEFAULT_DATA = "pusht"  # wmcore/fixtures/pusht: the held-out PushT evaluation set
DEFAULT_TRAIN_DATA = "data/pusht-train"  # what `make pusht-data` generates (the embedded models' training set)
# Embedded models: NAME -> the family whose loader reads wmcore/fixtures/models/NAME. The drift bench
# measures all of them by default; the command line's default model is DEFAULT_MODEL.
EMBEDDED: dict[str, str] = {"pusht-lewm": "lewm", "pusht-ac-tiny": "ac-tiny", "pusht-wm": "keypoint",
                            "pusht-refine": "refine", "pusht-thinker": "thinker"}
# What the drift and throughput suites measure without --wm-model: the embedded models but the thinking
# ones, whose budget K = 1 is pusht-wm bit for bit (the thinking suite measures it along K).
BENCHED: tuple[str, ...] = ("pusht-lewm", "pusht-ac-tiny", "pusht-wm")
DEFAULT_MODEL = "pusht-lewm"


def fixtures_dir() -> Path:
    """The package's ``fixtures/`` (``wmcore/fixtures``, installed with it as package data), or
    ``$WMCORE_FIXTURES``: embedded models, their thresholds (``wmcore.toml``) and episode sets."""
    env = os.environ.get("WMCORE_FIXTURES")
    return Path(env) if env else Path(__file__).resolve().parent / "fixtures"
