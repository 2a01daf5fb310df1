"""Behaviour snapshot: the DriftReports a refactoring must leave unchanged.

``python scripts/behaviour_snapshot.py save DIR`` evaluates the embedded models (recorded and random
actions) and ``analytic`` (on its own episodes, written once into DIR/analytic-data) through the command line, one report per case, into DIR.
``python scripts/behaviour_snapshot.py check DIR`` evaluates again into a fresh directory and compares
every number of every report with DIR's (absolute tolerance 1e-6; strings and lists must match exactly);
exit 1 on any difference. Run-specific fields (time stamps, durations, environment, paths of the
outputs) are left out of the comparison.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

CASES = [(m, a) for m in ("pusht-lewm", "pusht-ac-tiny", "analytic") for a in ("recorded", "random")]
SKIP = {"created", "environment", "timings", "seconds", "elapsed_s", "wall_s", "plot", "json", "path", "out"}
TOL = 1e-6


def analytic_data(d: Path) -> None:
    """The analytic world's episodes (16 x 40 steps, seed 0), written once with the snapshot: lossless
    RGB video, so the frames come back bit-exact."""
    from wmcore.data.episodes import save_episode, write_index
    from wmcore.models.analytic import AnalyticConfig, make_episodes

    cfg = AnalyticConfig()
    eps = make_episodes(cfg, episodes=16, steps=40, seed=0)
    d.mkdir(parents=True)
    h, w = eps[0].frames.shape[1:3]
    write_index(d, {"fps": 10.0, "height": int(h), "width": int(w)},
                [save_episode(d, i, e, seed=i) for i, e in enumerate(eps)])


def evaluate(out: Path, data: Path) -> None:
    for model, actions in CASES:
        d = out / f"{model}-{actions}"
        cmd = [sys.executable, "-m", "wmcore.cli", "evaluate", "--model", model, "--actions", actions, "--out", str(d)]
        if model == "analytic":
            cmd += ["--data", str(data), "--horizon", "20"]
        print("+", " ".join(cmd), flush=True)
        rc = subprocess.run(cmd, stdout=subprocess.DEVNULL).returncode
        if rc not in (0, 1):  # 1: a gate failed, which random actions are meant to do
            raise SystemExit(f"{' '.join(cmd)} exited {rc}")


def diff(a, b, path: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k in SKIP:
                continue
            if k not in a or k not in b:
                out.append(f"{path}.{k}: only in {'new' if k in b else 'saved'}")
            else:
                diff(a[k], b[k], f"{path}.{k}", out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{path}: length {len(a)} != {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            diff(x, y, f"{path}[{i}]", out)
    elif isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        if not (a == b or (math.isnan(a) and math.isnan(b)) or abs(a - b) <= TOL):
            out.append(f"{path}: {a!r} != {b!r} (|diff| {abs(a - b):.3g})")
    elif a != b:
        out.append(f"{path}: {a!r} != {b!r}")


def report(d: Path) -> dict:
    (f,) = [p for p in d.glob("*.json")]
    return json.loads(f.read_text())


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("save", "check"):
        print(__doc__)
        return 2
    saved = Path(argv[1])
    if argv[0] == "save":
        analytic_data(saved / "analytic-data")
        evaluate(saved, saved / "analytic-data")
        return 0
    new = Path(tempfile.mkdtemp(prefix="wmcore-behaviour-"))
    evaluate(new, saved / "analytic-data")
    problems: list[str] = []
    numbers = 0
    for model, actions in CASES:
        name = f"{model}-{actions}"
        a, b = report(saved / name), report(new / name)
        numbers += json.dumps(a).count(",")
        diff(a, b, name, problems)
    for p in problems[:50]:
        print(p)
    print(f"{len(CASES)} reports compared ({new} against {saved}): {len(problems)} differences")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
