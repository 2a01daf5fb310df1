"""pytest-benchmark's JSON files written the way wmcore writes its own (``wmcore.fsio``): complete or
not at all. The pytest plugin calls ``atomic_benchmark_writes`` once its session has started."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from .errors import WMError
from .fsio import write_new, write_replace

__all__ = ["atomic_benchmark_writes"]


def atomic_benchmark_writes(config: Any) -> None:
    """pytest-benchmark's ``FileStorage.save`` opens the final ``NNNN_*.json`` and then writes into it,
    and ``--benchmark-json`` truncates its file before writing: a run killed in between leaves an empty
    or partial JSON, which breaks a later ``--benchmark-compare`` and ``wmcore compare`` (or destroys
    the previous ``--benchmark-json``). Route both writes through ``wmcore.fsio``: the same file name
    and content, written under a hidden temporary name beside it and linked (a new record, never
    replacing one) or renamed (``--benchmark-json``, which pytest-benchmark rewrites) into place, with
    the umask's mode. Left alone: no pytest-benchmark, another storage (elasticsearch), a subclass
    with its own ``save``, or a pytest-benchmark whose layout is not the one this was written for."""
    bs = getattr(config, "_benchmarksession", None)
    if bs is None or getattr(bs, "_wmcore_atomic", False):
        return
    try:
        from pytest_benchmark.storage.file import FileStorage
        from pytest_benchmark.utils import safe_dumps
    except ImportError:
        return
    storage = getattr(bs, "storage", None)
    upstream_layout = (callable(getattr(storage, "get", None))
                       and isinstance(getattr(type(storage), "_next_num", None), property))
    if isinstance(storage, FileStorage) and type(storage).save is FileStorage.save and upstream_layout:
        storage.save = lambda output_json, save: _save_benchmark_record(storage, safe_dumps, output_json, save)
    original = getattr(bs, "save_json", None)
    if callable(original):
        bs.save_json = lambda output_json: _save_benchmark_json(bs, original, safe_dumps, output_json)
    bs._wmcore_atomic = True


def _save_benchmark_record(storage: Any, dumps: Any, output_json: dict, save: str) -> None:
    """``FileStorage.save`` made atomic: ``NNNN_<save>.json`` with the next free number, linked into
    place complete (a concurrent run that took the number meanwhile makes this take the next one)."""
    data = dumps(output_json, ensure_ascii=True, indent=4).encode()
    for _ in range(100):
        path = storage.get(f"{storage._next_num}_{save}.json")
        try:
            write_new(path, data)
        except WMError:
            if os.path.lexists(path):
                continue
            raise
        storage.logger.info(f"Saved benchmark data in: {path}")
        return
    raise WMError(f"{storage.path}: could not find a free record number for {save!r} (100 tries)")


def _save_benchmark_json(bs: Any, original: Any, dumps: Any, output_json: dict) -> None:
    """``--benchmark-json PATH`` written atomically: the complete new file replaces the old one, or
    the old one stays. A PATH that is not a plain file (``/dev/stdout``, a pipe, a symlink) is written
    through as pytest-benchmark does."""
    if not isinstance(bs.json, (str, os.PathLike)):  # a file pytest-benchmark opened itself (FileType)
        return original(output_json)
    path = Path(bs.json)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError:
        return original(output_json)
    if st is not None and not stat.S_ISREG(st.st_mode):
        return original(output_json)
    write_replace(path, dumps(output_json, ensure_ascii=True, indent=4).encode())
    bs.logger.info(f"Wrote benchmark data in: {bs.json}", purple=True)
