"""Crash-safe artifacts: ``wmcore evaluate`` and ``pytest bench`` killed with SIGINT and with SIGKILL
(a subprocess each time) leave every JSON and PNG complete or absent, never touch an earlier run, and
write their files with the user's umask; pytest-benchmark's own records go through the same atomic
writes (``wmcore.benchmark_json.atomic_benchmark_writes``).

Kill points: a random (seeded) delay over most of the run's life, and the moment the first
file of a given kind appears in the output tree (the report JSON, the drift PNG, the pytest-benchmark
record): the moment at which a non-atomic writer has created its file and not yet filled it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from wmcore.data.episodes import save_episode, write_index
from wmcore.models.analytic import AnalyticConfig, make_episodes

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals and umask")

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the last chunk: length 0, type, CRC
MODEL = "analytic:delta=0.05"
HORIZON = "8"
SEED = 1313


@pytest.fixture(scope="module")
def episodes_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("crash-data") / "analytic"
    eps = make_episodes(AnalyticConfig(delta=0.05), episodes=4, steps=12, seed=3)
    entries = [save_episode(d, i, e, seed=i) for i, e in enumerate(eps)]
    write_index(d, {"fps": 10.0, "height": eps[0].frames.shape[1], "width": eps[0].frames.shape[2]}, entries)
    return d


# --- what a tree of artifacts must look like ------------------------------------------------------


def _files(root: Path) -> dict[str, tuple[str, int]]:
    """relative path -> (sha256, permission bits) of every file under ``root``."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
            out[p.relative_to(root).as_posix()] = (digest, stat.S_IMODE(p.stat().st_mode))
    return out


def _is_temp(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return name.startswith(".") and name.endswith(".tmp")


def _check_complete(root: Path, context: str) -> list[str]:
    """Every ``*.json`` parses and every ``*.png`` is a whole PNG; the only other files are hidden
    temp files a SIGKILL left behind. Returns the complete artifacts' relative paths."""
    from PIL import Image

    done = []
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(root).as_posix()
        if p.suffix == ".json":
            try:
                json.loads(p.read_text())  # pytest-benchmark may write NaN: json accepts it
            except ValueError as e:
                pytest.fail(f"{context}: {rel} ({p.stat().st_size} bytes) is not complete JSON: {e}")
        elif p.suffix == ".png":
            data = p.read_bytes()
            assert data.startswith(PNG_MAGIC) and data.endswith(PNG_IEND), (
                f"{context}: {rel} ({len(data)} bytes) is not a complete PNG")
            with Image.open(p) as im:
                im.verify()
        else:
            assert _is_temp(rel), f"{context}: unexpected file {rel}"
            continue
        done.append(rel)
    return done


# --- driving and killing a run --------------------------------------------------------------------


def _start(cmd: list[str], cwd: Path, umask: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("PYTEST_ADDOPTS", None)
    wrapped = ["/bin/sh", "-c", 'umask "$0" && exec "$@"', f"{umask:03o}", *cmd]  # exec: the pid is the run's
    with open(log, "ab") as out:
        return subprocess.Popen(wrapped, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _finish(p: subprocess.Popen, timeout: float = 180) -> int:
    try:
        return p.wait(timeout=timeout)
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)  # children it left (pytest-benchmark's git calls), by group id
        except (ProcessLookupError, PermissionError):
            pass


def _run_to_end(cmd, cwd, umask, log, ok=(0,)) -> float:
    t = time.perf_counter()
    rc = _finish(_start(cmd, cwd, umask, log))
    assert rc in ok, f"{cmd[:4]}... exited {rc}:\n{log.read_text()[-3000:]}"
    return time.perf_counter() - t


def _names(root: Path) -> set[str]:
    """Relative paths of the files under ``root`` (os.walk: cheap enough to poll every 0.2 ms)."""
    out = set()
    for d, _, files in os.walk(root):
        rel = os.path.relpath(d, root)
        out.update(f if rel == "." else f"{rel}/{f}" for f in files)
    return out


def _kill_at(p: subprocess.Popen, signum: int, trigger: tuple, root: Path) -> bool:
    """Send ``signum`` to ``p`` when ``trigger`` fires: ("delay", seconds) or ("appears", predicate on
    a new file's path relative to ``root``: at once, while the file is being written). True if it was
    still running then."""
    if trigger[0] == "delay":
        try:
            p.wait(timeout=trigger[1])
            return False
        except subprocess.TimeoutExpired:
            pass
    else:
        before, match = _names(root), trigger[1]
        while p.poll() is None:
            if any(match(rel) for rel in _names(root) - before):
                break
            time.sleep(0.0002)
        else:
            return False
    try:
        os.kill(p.pid, signum)
    except ProcessLookupError:
        return False
    return True


def _evaluate_cmd(data: Path) -> list[str]:
    script = Path(sys.executable).parent / "wmcore"
    head = [str(script)] if script.exists() else [sys.executable, "-m", "wmcore.cli"]
    return [*head, "evaluate", "--model", MODEL, "--data", str(data), "--horizon", HORIZON]  # into ./runs/run-*/


def _bench_cmd(data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "pytest", str(ROOT / "wmcore" / "suites" / "test_drift.py"), "--benchmark-only",
            "--benchmark-autosave", f"--benchmark-storage={out / 'benchmarks'}", f"--wm-artifacts={out}",
            "--wm-model", MODEL, "--wm-data", str(data), "--wm-horizon", HORIZON, "--wm-actions", "recorded",
            "-p", "no:cacheprovider", "-p", "no:randomly", "-q"]


ENTRY_POINTS = {
    # name: kill triggers besides the random delay
    "evaluate": [("appears", lambda rel: "json" in rel.rsplit("/", 1)[-1]),
                 ("appears", lambda rel: "png" in rel.rsplit("/", 1)[-1])],
    "pytest-bench": [("appears", lambda rel: rel.startswith("benchmarks/") and "json" in rel),
                     ("appears", lambda rel: rel.startswith("run-") and "png" in rel)],
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_killed_runs_leave_complete_artifacts_and_earlier_runs_untouched(entry, episodes_dir, tmp_path):
    """An earlier complete run, then 3 SIGINT + 3 SIGKILL kills of one entry point. After each: every
    JSON/PNG is complete, every file that existed before (the earlier run's, and what earlier kills
    left) is byte-identical with its mode, and new files have the umask's mode. Umasks: the earlier
    run 022 and the kills 077 for evaluate, the other way round for pytest bench (0644 / 0600)."""
    rng = random.Random(f"{SEED}-{entry}")
    first_umask, kill_umask = (0o022, 0o077) if entry == "evaluate" else (0o077, 0o022)
    log = tmp_path / "log.txt"
    if entry == "evaluate":
        cwd = root = tmp_path / "work"
        cwd.mkdir()
        cmd = _evaluate_cmd(episodes_dir)
    else:
        cwd, root = ROOT, tmp_path / "out"
        cmd = _bench_cmd(episodes_dir, root)

    full = _run_to_end(cmd, cwd, first_umask, log)
    earlier = _files(root)
    assert len(_check_complete(root, "earlier run")) >= (2 if entry == "evaluate" else 4), earlier
    modes = {rel: oct(mode) for rel, (_, mode) in earlier.items()}
    assert set(modes.values()) == {oct(0o666 & ~first_umask)}, f"umask {first_umask:03o}: {modes}"

    plan = [(sig, trig) for sig in (signal.SIGINT, signal.SIGKILL)
            for trig in [("delay", rng.uniform(0.3, 0.9) * full), *ENTRY_POINTS[entry]]]
    killed = []
    for signum, trigger in plan:
        seen = _files(root)
        p = _start(cmd, cwd, kill_umask, log)
        was_running = _kill_at(p, signum, trigger, root)
        rc = _finish(p)
        what = f"{entry}, {signal.Signals(signum).name} at {trigger[0]} (rc {rc})"
        killed.append((trigger[0], was_running))
        complete = _check_complete(root, what)
        now = _files(root)
        changed = {rel for rel, v in seen.items() if now.get(rel) != v}
        assert not changed, f"{what}: files of an earlier run changed or vanished: {sorted(changed)}"
        new = {rel: oct(now[rel][1]) for rel in complete if rel not in seen}
        assert set(new.values()) <= {oct(0o666 & ~kill_umask)}, f"{what}: umask {kill_umask:03o}, modes {new}"
    # every kill at a file's appearance hit a running process; a delay may outlast a run on a fast day
    assert all(hit for kind, hit in killed if kind == "appears") and sum(hit for _, hit in killed) >= 4, killed

    if entry == "pytest-bench":  # each kill at the record's write left its run's drift JSON and PNG complete
        fresh = {rel.rsplit(".", 1)[-1] for rel in _check_complete(root, entry) if rel not in earlier}
        assert {"json", "png"} <= fresh, fresh


# --- the pytest-benchmark storage wrapper, in process ---------------------------------------------


class _Log:
    def __init__(self):
        self.lines = []

    def info(self, text, **kw):
        self.lines.append(text)

    warning = error = debug = info


def _session(tmp_path, json_path=None):
    from pytest_benchmark.storage.file import FileStorage

    storage = FileStorage(tmp_path / "store", logger=_Log(), default_machine_id="machine")
    written = []  # what upstream's own save_json (this stand-in) was given
    bs = SimpleNamespace(storage=storage, json=json_path, logger=_Log(), save_json=written.append)
    return SimpleNamespace(_benchmarksession=bs), written


RECORD = {"machine_info": {"node": "x"}, "benchmarks": [{"name": "test_drift", "stats": {"median": 0.5}}],
          "version": "5.3.1"}


def test_the_benchmark_record_is_written_atomically_under_upstreams_name(tmp_path):
    from pytest_benchmark.storage.file import FileStorage

    from wmcore.benchmark_json import atomic_benchmark_writes

    ref = FileStorage(tmp_path / "ref", logger=_Log(), default_machine_id="machine")
    ref.save(RECORD, "20260101_abc")  # upstream's own save: the name and bytes to match
    config, _ = _session(tmp_path)
    storage = config._benchmarksession.storage
    atomic_benchmark_writes(config)
    atomic_benchmark_writes(config)  # idempotent
    old = os.umask(0o022)
    try:
        storage.save(RECORD, "20260101_abc")
        storage.save(RECORD, "20260101_abc")
    finally:
        os.umask(old)
    got = sorted(p.name for p in (tmp_path / "store" / "machine").iterdir())
    assert got == ["0001_20260101_abc.json", "0002_20260101_abc.json"]
    want = (tmp_path / "ref" / "machine" / "0001_20260101_abc.json").read_bytes()
    for name in got:
        p = tmp_path / "store" / "machine" / name
        assert p.read_bytes() == want and stat.S_IMODE(p.stat().st_mode) == 0o644
    assert storage.logger.lines[-1].startswith("Saved benchmark data in: ")


def test_a_record_number_taken_meanwhile_is_not_clobbered(tmp_path):
    from wmcore.benchmark_json import atomic_benchmark_writes

    config, _ = _session(tmp_path)
    storage = config._benchmarksession.storage
    atomic_benchmark_writes(config)
    upstream_get = storage.get

    def get(name):  # another run saves 0001 between our choosing the number and writing
        p = upstream_get(name)
        if name.startswith("0001_") and not p.exists():
            p.write_text('{"other": "run"}')
        return p

    storage.get = get
    storage.save(RECORD, "mine")
    d = tmp_path / "store" / "machine"
    assert sorted(p.name for p in d.iterdir()) == ["0001_mine.json", "0002_mine.json"]
    assert json.loads((d / "0001_mine.json").read_text()) == {"other": "run"}
    assert json.loads((d / "0002_mine.json").read_text()) == RECORD


class _Interrupted(BaseException):
    pass


def test_a_save_interrupted_half_way_leaves_no_record(tmp_path, monkeypatch):
    from wmcore.benchmark_json import atomic_benchmark_writes

    config, _ = _session(tmp_path)
    storage = config._benchmarksession.storage
    atomic_benchmark_writes(config)

    def interrupted(fd):  # the bytes are in the file, not yet on disk nor named: SIGINT here
        raise _Interrupted

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(_Interrupted):
        storage.save(RECORD, "x")
    assert list((tmp_path / "store" / "machine").iterdir()) == []


def test_benchmark_json_replaces_its_file_atomically_or_writes_through(tmp_path):
    from wmcore.benchmark_json import atomic_benchmark_writes

    target = tmp_path / "bench.json"
    target.write_text('{"old": true}')
    config, through = _session(tmp_path, json_path=target)
    atomic_benchmark_writes(config)
    config._benchmarksession.save_json(RECORD)
    assert json.loads(target.read_text()) == RECORD and through == []
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    link = tmp_path / "link.json"  # not a plain file (like /dev/stdout): pytest-benchmark's own write
    link.symlink_to(target)
    config, through = _session(tmp_path, json_path=link)
    atomic_benchmark_writes(config)
    config._benchmarksession.save_json(RECORD)
    assert through == [RECORD] and link.is_symlink()
    # pytest-benchmark 5.2 opens --benchmark-json itself (argparse FileType): its own write, no path to rename
    with open(tmp_path / "opened.json", "wb") as opened:
        config, through = _session(tmp_path, json_path=opened)
        atomic_benchmark_writes(config)
        config._benchmarksession.save_json(RECORD)
    assert through == [RECORD]


def test_other_storages_and_no_benchmark_session_are_left_alone(tmp_path):
    from wmcore.benchmark_json import atomic_benchmark_writes

    atomic_benchmark_writes(SimpleNamespace())  # pytest-benchmark absent or disabled
    own_save = lambda *a: None  # noqa: E731
    other = SimpleNamespace(save=own_save)  # e.g. the elasticsearch storage
    bs = SimpleNamespace(storage=other, json=None, logger=_Log())
    atomic_benchmark_writes(SimpleNamespace(_benchmarksession=bs))
    assert other.save is own_save and not hasattr(bs, "save_json")
