"""Scale-out suite: the speed-up of ``torchrun --nproc-per-node=2`` (2 processes x 1 thread) over one
process with 1 thread, for ``wmcore evaluate`` and ``wmcore plan`` on this machine. Recorded, never
asserted (a figure measured while other work shares the cores says nothing about the code): the
benchmark times the 2-process command; ``extra_info`` holds both wall times and the speed-up of the
whole command, and the speed-up of the sharded work alone: for ``evaluate`` rank 0's wall time of
both passes (``timings.wall_s`` of the drift report), for ``plan`` the planning time of the slowest
rank (the sum of its tasks' ``seconds``; tasks are dealt out strided) against all tasks' sum. The
rest of a command (interpreter start-up, imports, loading the model and the data, statistics and
plots) is paid by every process and is not sharded.

What is asserted is what must hold on any machine: both runs succeed and write equal reports
(timings aside), as ``tests/test_torchrun.py`` checks on smaller runs.

``WMCORE_SCALING_EPISODES`` (default 32, the fixture set) and ``WMCORE_SCALING_TASKS`` (default 8)
size the work.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

EPISODES = int(os.environ.get("WMCORE_SCALING_EPISODES", "32"))
TASKS = int(os.environ.get("WMCORE_SCALING_TASKS", "8"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
COMMANDS = {
    "evaluate": (["evaluate", "--model", "pusht-lewm", "--episodes", str(EPISODES), "--batch-size", "4"],
                 "pusht-lewm-recorded.json"),
    "plan": (["plan", "--model", "pusht-wm", "--limit", str(TASKS)], "control-pusht-wm.json"),
}
CLOCK = {"timings", "created", "seconds", "seconds_per_action", "seconds_per_action_median", "seconds_total"}


def _run(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True)
    took = time.perf_counter() - t0
    assert r.returncode in (0, 1), r.stderr[-3000:]  # 1: a gate failed, still a finished run
    return took


def _clockless(doc):
    if isinstance(doc, dict):
        return {k: _clockless(v) for k, v in doc.items() if k not in CLOCK}
    if isinstance(doc, list):
        return [_clockless(v) for v in doc]
    return doc


@pytest.mark.parametrize("command", list(COMMANDS))
def test_two_processes_over_one(benchmark, command, tmp_path):
    args, name = COMMANDS[command]
    one = _run([sys.executable, "-m", "wmcore", *args, "--out", str(tmp_path / "one")], tmp_path)
    two_cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "wmcore",
               *args, "--out", str(tmp_path / "two")]
    two = benchmark.pedantic(_run, args=(two_cmd, tmp_path), rounds=1, iterations=1)
    a, b = (json.loads((tmp_path / d / name).read_text()) for d in ("one", "two"))
    assert _clockless(a) == _clockless(b)
    info = {"processes": 2, "threads_per_process": 1, "one_process_s": one, "two_processes_s": two,
            "speedup": one / two}
    if command == "evaluate":
        info.update(one_process_in_run_s=a["timings"]["wall_s"], two_processes_in_run_s=b["timings"]["wall_s"],
                    in_run_speedup=a["timings"]["wall_s"] / b["timings"]["wall_s"], episodes=EPISODES)
    else:
        one_plan = sum(r["seconds"] for r in a["results"])
        ranks = [sum(r["seconds"] for r in b["results"][i::2]) for i in range(2)]
        info.update(one_process_in_run_s=one_plan, two_processes_in_run_s=max(ranks),
                    in_run_speedup=one_plan / max(ranks), tasks=TASKS)
    benchmark.extra_info["scaling"] = info
    print(f"\n{command}: 1 process x 1 thread {one:.1f} s, 2 processes x 1 thread {two:.1f} s: x{one / two:.2f}; "
          f"the sharded work {info['one_process_in_run_s']:.1f} s -> {info['two_processes_in_run_s']:.1f} s: "
          f"x{info['in_run_speedup']:.2f}")
