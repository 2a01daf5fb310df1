"""Which wmcore made a result: the package version and, where wmcore runs from a git checkout (not
an installed wheel), the commit and whether the checkout has uncommitted changes. The ground floor:
imports nothing of wmcore but its version."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from . import __version__

__all__ = ["__version__", "describe", "provenance", "source_commit"]


@functools.lru_cache(maxsize=1)
def source_commit() -> tuple[str, bool] | None:
    """``(commit, dirty)`` of the git checkout this wmcore is imported from; None for an installed
    package (no ``.git`` beside the package), or where git is missing or fails."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0 or status.returncode != 0:
        return None
    return head.stdout.strip(), bool(status.stdout.strip())


def provenance() -> dict:
    """What every report records: ``{"wmcore": version, "wmcore_commit": sha or None, "wmcore_dirty": bool or None}``."""
    src = source_commit()
    return {"wmcore": __version__, "wmcore_commit": src[0] if src else None, "wmcore_dirty": src[1] if src else None}


def describe() -> str:
    """``0.1.0``, or ``0.1.0 (git 48b18c3, uncommitted changes)`` from a checkout; ``wmcore --version``."""
    src = source_commit()
    if src is None:
        return __version__
    return f"{__version__} (git {src[0][:12]}{', uncommitted changes' if src[1] else ''})"
