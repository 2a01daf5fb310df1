"""Scale-out with torchrun (gloo, CPU, two processes on this machine): the sharded ``wmcore evaluate``
and ``wmcore plan`` write the one-process reports; a failing, killed or model-less rank ends every rank
with a non-zero exit within 60 s and leaves no report behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wmcore.paths import fixtures_dir

TIMEOUT = 60  # the bound: every rank gone within a minute of a fault
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}  # torchrun's default, also for one process


def _torchrun(*args: str, n: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
            "-m", "wmcore", *args]


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)


def _without(doc, keys: set[str]):
    """The document without wall-clock fields (timings, creation time, seconds per action)."""
    if isinstance(doc, dict):
        return {k: _without(v, keys) for k, v in doc.items() if k not in keys}
    if isinstance(doc, list):
        return [_without(v, keys) for v in doc]
    return doc


def test_a_two_process_evaluate_writes_the_one_process_report(tmp_path):
    args = ["evaluate", "--model", "pusht-wm", "--episodes", "7", "--batch-size", "2", "--horizon", "10"]
    one = _run([sys.executable, "-m", "wmcore", *args, "--out", str(tmp_path / "one")], tmp_path)
    two = _run(_torchrun(*args, "--out", str(tmp_path / "two")), tmp_path)
    # 1: a gate failed, the same in both (at horizon 10 pusht-wm's drift_horizon gate, horizon_min 20
    # from its shipped thresholds, cannot be shown to hold); a finished run either way
    assert one.returncode in (0, 1), one.stderr[-2000:]
    assert two.returncode == one.returncode, two.stderr[-2000:]
    a, b = (json.loads((tmp_path / d / "pusht-wm-recorded.json").read_text()) for d in ("one", "two"))
    assert a["timings"]["processes"] == 1 and b["timings"]["processes"] == 2
    assert a["energy"] is not None and len(a["data"]["episode_ids"]) == 7
    assert _without(a, {"timings", "created"}) == _without(b, {"timings", "created"})
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    assert two.stdout.count("pusht-wm-recorded.json") == 1  # rank 0 alone prints and writes


def test_a_two_process_plan_writes_the_one_process_report(tmp_path):
    args = ["plan", "--model", "pusht-wm", "--limit", "3", "--samples", "24", "--elites", "4", "--iterations", "2"]
    one = _run([sys.executable, "-m", "wmcore", *args, "--out", str(tmp_path / "one")], tmp_path)
    two = _run(_torchrun(*args, "--out", str(tmp_path / "two")), tmp_path)
    assert one.returncode in (0, 1) and two.returncode == one.returncode, two.stderr[-2000:]
    a, b = (json.loads((tmp_path / d / "control-pusht-wm.json").read_text()) for d in ("one", "two"))
    clock = {"seconds", "seconds_per_action", "seconds_per_action_median", "seconds_total", "created"}
    assert len(a["results"]) == 3 and [r["id"] for r in b["results"]] == [r["id"] for r in a["results"]]
    assert _without(a, clock) == _without(b, clock)
    assert (tmp_path / "one" / "tasks.json").read_bytes() == (tmp_path / "two" / "tasks.json").read_bytes()


def _broken_set(tmp_path: Path, bad: int) -> Path:
    """A copy of 6 fixture episodes whose episode ``bad`` no longer matches the index's sha256."""
    dst = tmp_path / "set"
    src = fixtures_dir() / "pusht"
    dst.mkdir()
    doc = json.loads((src / "index.json").read_text())
    doc["episodes"] = doc["episodes"][:6]
    for e in doc["episodes"]:
        for kind in ("video", "data"):
            shutil.copy(src / e[kind], dst / e[kind])
    (dst / "index.json").write_text(json.dumps(doc))
    data = dst / doc["episodes"][bad]["data"]
    data.write_bytes(data.read_bytes()[:-7] + b"garbage")
    return dst


def test_an_error_on_one_rank_ends_every_rank(tmp_path):
    # chunks of 2: episode 2 is in chunk 1, which rank 1 reads; rank 0's chunks are fine
    data = _broken_set(tmp_path, bad=2)
    out = tmp_path / "out"
    t0 = time.monotonic()
    r = _run(_torchrun("evaluate", "--model", "pusht-lewm", "--data", str(data), "--batch-size", "2",
                       "--horizon", "8", "--out", str(out)), tmp_path)
    assert time.monotonic() - t0 < TIMEOUT
    assert r.returncode != 0
    assert "sha256 differs" in r.stderr and "episode_002" in r.stderr  # the failing rank's own message
    assert "rank(s) [1] failed, so rank 0 stops too" in r.stderr  # and rank 0 says why it stopped
    assert not out.exists() or not any(out.iterdir())  # nothing written, nothing half-written


def _rank_pids(parent: int, rank: int) -> list[int]:
    """Pids of the torchrun workers below ``parent`` with RANK=rank."""
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            env = (p / "environ").read_bytes().split(b"\0")
            stat = (p / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if f"RANK={rank}".encode() in env and b"TORCHELASTIC_RUN_ID=" in b"\0".join(env) and ppid == parent:
            found.append(int(p.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's process in /proc (Linux)")
def test_a_killed_rank_ends_every_rank(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(_torchrun("evaluate", "--model", "pusht-lewm", "--batch-size", "2", "--out", str(out)),
                            cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        victims = []
        while not victims and time.monotonic() < deadline and proc.poll() is None:
            victims = _rank_pids(proc.pid, 1)
            time.sleep(0.2)
        assert victims, "rank 1 never started"
        time.sleep(3)  # into its work: the model is loaded, chunks are being encoded
        assert proc.poll() is None, "the run ended before rank 1 could be killed"
        t0 = time.monotonic()
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        text, _ = proc.communicate(timeout=TIMEOUT)
        assert time.monotonic() - t0 < TIMEOUT
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "SIGKILL" in text and "rank      : 1" in text  # torchrun names the rank that died first
    assert not out.exists() or not any(out.iterdir())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_rank_that_cannot_load_the_model_ends_every_rank(tmp_path):
    """Two processes launched by hand, as on two nodes: the second node lacks the checkpoint."""
    port, out = _free_port(), tmp_path / "out"
    procs = []
    for rank, model in ((0, "pusht-lewm"), (1, f"lewm:{tmp_path / 'not-on-this-node'}")):
        env = {**ENV, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2", "RANK": str(rank),
               "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}
        procs.append(subprocess.Popen([sys.executable, "-m", "wmcore", "evaluate", "--model", model, "--episodes", "4",
                                       "--horizon", "8", "--out", str(out)], cwd=tmp_path, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    t0 = time.monotonic()
    try:
        results = [p.communicate(timeout=TIMEOUT) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert time.monotonic() - t0 < TIMEOUT
    assert [p.returncode for p in procs] == [2, 2]  # bad input on both, as wmcore's exit codes say
    assert "not-on-this-node" in results[1][1]
    assert "rank(s) [1] failed" in results[0][1] and "not-on-this-node" in results[0][1]
    assert not out.exists() or not any(out.iterdir())


def test_a_command_that_does_not_shard_refuses_torchrun(tmp_path):
    r = _run(_torchrun("make-fixtures", "pusht", "--out", str(tmp_path / "x")), tmp_path)
    assert r.returncode != 0 and "runs in one process; run it without torchrun" in r.stderr


def _pytest_torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "pytest",
            "-p", "no:randomly", "-p", "no:cacheprovider", *args]


def test_ranks_that_collected_different_tests_stop_with_a_usage_error(tmp_path):
    (tmp_path / "test_ranks.py").write_text(
        "import os, pytest\n\n"
        "@pytest.mark.parametrize('i', range(int(os.environ.get('RANK', '0')) + 1))\n"
        "def test_one(i):\n    assert i >= 0\n")
    t0 = time.monotonic()
    r = _run(_pytest_torchrun(str(tmp_path / "test_ranks.py"), "-q"), tmp_path)
    assert time.monotonic() - t0 < TIMEOUT
    assert r.returncode != 0
    assert "torchrun ranks collected different tests" in r.stdout + r.stderr
    assert "exitcode  : 4" in r.stderr  # pytest's usage error, on the rank torchrun saw fail first


def test_a_sharded_bench_run_writes_one_report_equal_to_the_evaluation(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    art = tmp_path / "art"
    r = _run(_pytest_torchrun(str(repo / "wmcore" / "suites" / "test_drift.py"), "--benchmark-only", "-q", "--wm-model", "pusht-wm",
                              "--wm-episodes", "5", "--wm-actions", "recorded",
                              "--wm-artifacts", str(art), f"--benchmark-json={tmp_path / 'b.json'}"), repo)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    runs = list(art.iterdir())
    assert len(runs) == 1  # one run directory: rank 0's
    bench = json.loads((tmp_path / "b.json").read_text())
    assert [b["extra_info"]["processes"] for b in bench["benchmarks"]] == [2]
    got = json.loads((runs[0] / "pusht-wm-recorded.json").read_text())
    one = _run([sys.executable, "-m", "wmcore", "evaluate", "--model", "pusht-wm", "--episodes", "5",
                "--out", str(tmp_path / "one")], repo)  # the repo's pyproject: pusht-wm's thresholds and start
    assert one.returncode == 0, one.stderr[-2000:]
    want = json.loads((tmp_path / "one" / "pusht-wm-recorded.json").read_text())
    for k in ("loops", "energy", "chance_level", "gates"):
        assert got[k] == want[k], k
    assert got["data"]["sha256"] == want["data"]["sha256"] and got["data"]["id"] == "pusht[:5]"
