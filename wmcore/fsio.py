"""Files that never clobber: atomic writes that refuse to replace what exists, and fresh run dirs."""

from __future__ import annotations

import datetime as _dt
import os
import tempfile
from pathlib import Path

from .errors import WMError


def write_new(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; refuse if ``path`` exists.

    The bytes go to a temporary file in the same directory, which is then hard-linked to the final
    name (``link`` fails if the name exists, so a concurrent writer cannot be clobbered either) and
    removed. A reader never sees a half-written file.
    """
    path = Path(path)
    if path.exists():
        raise WMError(f"{path}: exists already; wmcore never overwrites a file, choose a new name")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        link_new(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def link_new(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Give the finished temporary file ``tmp`` the name ``path``, refusing if ``path`` exists (a hard
    link fails on an existing name, so a concurrent writer is not clobbered either). The caller removes
    ``tmp`` afterwards (it may be gone already where hard links are unsupported and it was renamed)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise WMError(f"{path}: exists already; wmcore never overwrites a file, choose a new name") from None
    except OSError:  # file systems without hard links: rename after a last check
        if os.path.exists(path):
            raise WMError(f"{path}: exists already; wmcore never overwrites a file") from None
        os.replace(tmp, path)


def new_run_dir(root: str | os.PathLike, label: str = "run") -> Path:
    """Create and return a fresh directory ``root/<label>-YYYYmmdd-HHMMSS[-n]``; never reuses one."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        d = root / (f"{label}-{stamp}" + (f"-{n}" if n else ""))
        try:
            d.mkdir()
            return d
        except FileExistsError:
            continue
    raise WMError(f"{root}: could not create a fresh run directory (1000 tries)")
