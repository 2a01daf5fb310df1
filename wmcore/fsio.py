"""Files that never clobber and are never seen half written: atomic writes that refuse to replace what
exists (``write_new``), atomic replacement of a file that is ours to rewrite (``write_replace``), fresh
run dirs and file names (``new_run_dir``, ``fresh_path``, ``safe_name``), and the one JSON reader
(``read_json``) whose failures are WMErrors naming the file.

Every file is written under a hidden temporary name (``.NAME.XXXXXXXX.tmp``) in the directory of its
final name, flushed to disk, given the mode the user's umask asks for (``0o666 & ~umask``, like any
file a shell creates; a temporary file starts 0600) and only then linked or renamed into place. A
process killed at any point (SIGINT, SIGKILL, power loss) leaves the complete file or none, plus at
most a hidden ``.tmp`` leftover (which no reader of ``*.json`` / ``*.png`` picks up).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Union

from . import __version__
from .errors import WMError

__all__ = [
    "Data",
    "current_umask",
    "file_mode",
    "fresh_path",
    "link_new",
    "new_run_dir",
    "read_json",
    "read_versioned",
    "safe_name",
    "write_new",
    "write_replace",
]

#: What a write takes: the bytes, or a callable that writes into the open binary file it is given
#: (e.g. ``lambda f: torch.save(obj, f)``, which then needs no second copy in memory).
Data = Union[bytes, bytearray, memoryview, Callable[[BinaryIO], object]]

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, without changing it where the system can tell (Linux >= 4.7:
    ``/proc/self/status``). Elsewhere it is read by setting and restoring it (``os.umask`` can only
    be read that way), serialised against other callers of this function."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8) & 0o777
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)  # the briefest and safest value in between
        os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode of a newly created file under the current umask: ``0o666 & ~umask`` (0644 for 022)."""
    return 0o666 & ~current_umask()


def _write_temp(path: Path, data: Data) -> str:
    """Write ``data`` to a fresh temporary file beside ``path``, flushed to disk and with the umask's
    mode; return its name (the caller publishes and removes it). Removed again if writing fails."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _unwritable(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), file_mode())
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):  # a full disk, a quota, an I/O error: the place, not wmcore
            raise _unwritable(path, e) from None
        raise
    return tmp


def _unwritable(path: Path, e: OSError) -> WMError:
    return WMError(f"{path}: cannot write it ({e.strerror or e}); choose a writable place with free space")


def write_new(path: str | os.PathLike, data: Data) -> Path:
    """Write ``data`` (bytes, or a callable writing into a binary file) to ``path`` atomically;
    refuse if ``path`` exists.

    The bytes go to a temporary file in the same directory, which is then hard-linked to the final
    name (``link`` fails if the name exists, so a concurrent writer cannot be clobbered either) and
    removed. A reader never sees a half-written file; the file gets the umask's mode (``file_mode``).
    """
    path = Path(path)
    if os.path.lexists(path):
        raise WMError(f"{path}: exists already; wmcore never overwrites a file, choose a new name")
    tmp = _write_temp(path, data)
    try:
        link_new(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_replace(path: str | os.PathLike, data: Data) -> Path:
    """Write ``data`` to ``path`` atomically, replacing the file there if any: for files that are
    ours to rewrite (a resumable training run's checkpoint and log). A reader, or the next run after
    a crash, finds the old file or the new one, never a partial one. The umask's mode, as above."""
    path = Path(path)
    tmp = _write_temp(path, data)
    try:
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def link_new(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Give the finished temporary file ``tmp`` the name ``path``, refusing if ``path`` exists (a hard
    link fails on an existing name, so a concurrent writer is not clobbered either). ``tmp`` first gets
    the umask's mode (``file_mode``: a ``mkstemp`` file is 0600, unreadable to other users such as a CI
    artifact uploader). The caller removes ``tmp`` afterwards (it may be gone already where hard links
    are unsupported and it was renamed)."""
    os.chmod(tmp, file_mode())
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise WMError(f"{path}: exists already; wmcore never overwrites a file, choose a new name") from None
    except OSError:  # file systems without hard links: rename after a last check
        if os.path.lexists(path):
            raise WMError(f"{path}: exists already; wmcore never overwrites a file") from None
        os.replace(tmp, path)


def new_run_dir(root: str | os.PathLike, label: str = "run") -> Path:
    """Create and return a fresh directory ``root/<label>-YYYYmmdd-HHMMSS[-n]``; never reuses one.
    Directories are created with ``0o777 & ~umask``, like the files in them."""
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WMError(f"{root}: cannot create the run directory's parent ({e.strerror or e}); choose a writable place") from None
    for d in _stamped(root, label):
        try:
            d.mkdir()
            return d
        except FileExistsError:
            continue
    raise WMError(f"{root}: could not create a fresh run directory (1000 tries)")


def fresh_path(root: str | os.PathLike, label: str, suffix: str = "") -> Path:
    """The first free name ``root/<label>-YYYYmmdd-HHMMSS[-n]<suffix>`` (nothing is created: the
    writer still refuses a name that appears meanwhile, see ``write_new``)."""
    for p in _stamped(Path(root), label, suffix):
        if not os.path.lexists(p):
            return p
    raise WMError(f"{root}: could not find a fresh name {label}-*{suffix} (1000 tries); choose a name yourself")


def _stamped(root: Path, label: str, suffix: str = "") -> Iterator[Path]:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        yield root / (f"{label}-{stamp}" + (f"-{n}" if n else "") + suffix)


def safe_name(name: str) -> str:
    """``name`` as a portable file name: every character but letters, digits and ``-_.`` becomes ``_``
    (model names such as ``analytic[delta=0.05]`` hold glob and shell characters)."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def read_json(path: str | os.PathLike, *, strict: bool = False, hint: str = "was the file truncated?") -> Any:
    """The JSON document in ``path``; WMError naming the file if it cannot be read, is not UTF-8 or
    not JSON (``hint`` ends that message). ``strict``: refuse NaN and Infinity, which Python's json
    writes but standard JSON lacks (pytest-benchmark may write them: its readers pass False)."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise WMError(f"{p}: cannot read it ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise WMError(f"{p}: not a JSON file (not UTF-8 text)") from None
    try:
        return json.loads(text, parse_constant=_reject_constant if strict else None)
    except ValueError as e:  # json.JSONDecodeError is a ValueError, and so is _reject_constant's
        raise WMError(f"{p}: not valid JSON ({e}); {hint}") from None


def read_versioned(path: str | os.PathLike, fmt: str, version: int, what: str, hint: str) -> dict:
    """A JSON object whose ``format`` is ``fmt`` and ``version`` is ``version`` (``what`` names the kind
    of file in the messages); WMError otherwise."""
    d = read_json(path, hint=hint)
    found = d.get("format") if isinstance(d, dict) else None
    if found != fmt:
        raise WMError(f"{path}: not a wmcore {what} (format {found!r}, expected {fmt!r})")
    if d.get("version") != version:
        env = d.get("environment")
        by = env.get("wmcore") if isinstance(env, dict) else None
        raise WMError(f"{path}: {what} version {d.get('version')!r}" + (f" (written by wmcore {by})" if by else "")
                      + f"; this wmcore ({__version__}) reads version {version}"
                      + ("; upgrade wmcore to read it" if isinstance(d.get("version"), int) and d["version"] > version else ""))
    return d


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")
