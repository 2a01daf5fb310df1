"""Peak memory of ``wmcore evaluate`` against the number of episodes: the README's memory table.

Each size runs ``wmcore evaluate`` in a fresh process and reads that process's peak resident set
size (``ru_maxrss`` of the child). Episode directories given with ``--data`` are joined into one set
of symbolic links (no copy), so that 512 and more episodes can come from the two sets
``make pusht-wm-data`` writes (500 episodes each):

    python scripts/memory_table.py --data data/pusht-wm-0 data/pusht-wm-500 --episodes 8 32 128 512 \\
        --out docs/memory_table.json

``--python`` runs another checkout's wmcore (e.g. the code before streaming, for the "before" column).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from wmcore.data.episodes import read_index
from wmcore.fsio import write_new


def joined(dirs: list[Path], into: Path) -> Path:
    """One episode directory over several: links to every episode's files, renumbered, one index."""
    entries, meta = [], None
    into.mkdir()
    for d in dirs:
        doc = read_index(d)
        meta = meta or {k: v for k, v in doc.items() if k != "episodes"}
        for e in doc["episodes"]:
            name = f"episode_{len(entries):05d}"
            new = {**e, "name": name}
            for kind in ("video", "data"):
                link = into / f"{name}{Path(e[kind]).suffix}"
                link.symlink_to((d / e[kind]).resolve())
                new[kind] = link.name
            entries.append(new)
    (into / "index.json").write_text(json.dumps({**meta, "episodes": entries}))
    return into


def measure(python: str, cwd: Path, args: list[str]) -> dict:
    """Run ``python -m wmcore ARGS`` in a child; its peak RSS (bytes) and wall time."""
    probe = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
             "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True); "
             "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.perf_counter() - t); "
             "sys.stderr.write(r.stderr[-3000:] if r.returncode not in (0, 1) else '')")
    out = subprocess.run([sys.executable, "-c", probe, python, "-m", "wmcore", *args], cwd=cwd, capture_output=True,
                         text=True, check=True)
    rc, kib, secs = out.stdout.split()
    if int(rc) not in (0, 1):
        raise SystemExit(f"wmcore {' '.join(args)} failed (exit {rc}):\n{out.stderr}")
    return {"exit": int(rc), "peak_rss_bytes": int(kib) * 1024, "seconds": float(secs)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", required=True, help="episode directories (joined in this order)")
    p.add_argument("--episodes", nargs="+", type=int, default=[8, 32, 128, 512])
    p.add_argument("--model", default="pusht-lewm")
    p.add_argument("--energy", action="store_true", help="measure the energy landscape too (default --no-energy, "
                   "as the issue's figures)")
    p.add_argument("--python", default=sys.executable, help="the interpreter whose wmcore runs")
    p.add_argument("--cwd", default=".", help="run from here (another checkout, with --python)")
    p.add_argument("--out", help="write the table as JSON here (never overwritten)")
    a = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = joined([Path(d) for d in a.data], Path(tmp) / "set")
        for n in a.episodes:
            args = ["evaluate", "--model", a.model, "--data", str(data), "--episodes", str(n),
                    "--out", str(Path(tmp) / f"out-{n}")] + ([] if a.energy else ["--no-energy"])
            row = {"episodes": n, **measure(a.python, Path(a.cwd).resolve(), args)}
            rows.append(row)
            print(f"{n:5d} episodes: peak RSS {row['peak_rss_bytes'] / 2**30:.2f} GiB, {row['seconds']:.0f} s",
                  flush=True)
    doc = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "model": a.model, "energy": a.energy,
           "threads": os.environ.get("OMP_NUM_THREADS"), "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "rows": rows}
    if a.out:
        print(write_new(Path(a.out), (json.dumps(doc, indent=1) + "\n").encode()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
