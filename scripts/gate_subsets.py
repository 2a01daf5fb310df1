"""How often the embedded models pass their own gates on 8-episode subsets of the fixtures.

``python scripts/gate_subsets.py [--subsets 30] [--size 8] [--models pusht-lewm pusht-ac-tiny]``

For each model: load it, encode the 32 fixture episodes and roll both loops out once (episodes are
independent rows of a batch, so a subset's predictions are the rows of the full run's), then build
the report of each subset under both gate rules (``ci``, the default, and ``mean``, the old one) and
count the subsets that pass every gate. Subsets: the 4 consecutive blocks of 8 (the first is what
``wmcore evaluate --episodes 8`` uses), then random ones (seeded). Prints one table; exit 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
from collections import Counter

from wmcore.data import load as load_data
from wmcore.evaluate import build_report, prepare, rollouts
from wmcore.models import load as load_model
from wmcore.paths import DEFAULT_DATA
from wmcore.settings import GATE_RULES, resolve


def subsets(n: int, size: int, count: int, seed: int = 0) -> list[list[int]]:
    """The consecutive blocks of ``size`` first, then distinct random draws, ``count`` in all."""
    out = [list(range(i, i + size)) for i in range(0, n - size + 1, size)][:count]
    rng, seen = random.Random(seed), {tuple(s) for s in out}
    while len(out) < count:
        s = tuple(sorted(rng.sample(range(n), size)))
        if s not in seen:
            seen.add(s)
            out.append(list(s))
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["pusht-lewm", "pusht-ac-tiny"])
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--subsets", type=int, default=30)
    ap.add_argument("--size", type=int, default=8)
    args = ap.parse_args(argv)
    episodes = load_data(args.data)
    rows, extremes = [], []
    for name in args.models:
        model = load_model(name)
        cfg, thresholds = resolve(model.name, energy=False)  # the gates only: no energy landscape per subset
        prep = prepare(model, episodes, cfg)
        pred_open, pred_closed = rollouts(model, prep, cfg)
        picks = subsets(len(prep.ids), args.size, args.subsets)
        print(f"{name}: {len(picks)} subsets of {args.size} of {len(prep.ids)} episodes", file=sys.stderr, flush=True)
        for rule in GATE_RULES:
            t = dataclasses.replace(thresholds, gate_rule=rule)
            passed, failed, worst = 0, Counter(), {}
            for idx in picks:
                sub = dataclasses.replace(
                    prep, latents=prep.latents[idx], actions=prep.actions[idx], ids=[prep.ids[i] for i in idx],
                    states=None if prep.states is None else prep.states[idx],
                )
                r = build_report(model, sub, pred_open[idx], pred_closed[idx], cfg, t)
                passed += r.passed
                failed.update(g.name for g in r.gates if not g.passed)
                for g in r.gates:  # the value nearest to failing (rule ci: the bound it tests)
                    tested = rule == "ci" and g.lo is not None
                    v = (g.lo if g.name == "monotone_decay" else g.hi) if tested else g.measured
                    worse = max if g.name == "monotone_decay" else min
                    worst[g.name] = v if g.name not in worst else worse(worst[g.name], v)
            rows.append((name, rule, len(picks), passed, ", ".join(f"{k} {v}" for k, v in sorted(failed.items())) or "-"))
            limits = {g.name: g.limit for g in r.gates}
            extremes.append((name, rule, ", ".join(f"{k} {v:+.3f} (limit {limits[k]:+.3f})" for k, v in worst.items())))
    print(f"{'model':<15} {'rule':<5} {'subsets':>7} {'pass all':>8}  failures per gate")
    for name, rule, n, p, f in rows:
        print(f"{name:<15} {rule:<5} {n:>7} {p:>8}  {f}")
    print("\nworst value over the subsets (monotone_decay: largest; others: smallest; ci rule: the bound it tests)")
    for name, rule, text in extremes:
        print(f"{name:<15} {rule:<5} {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
