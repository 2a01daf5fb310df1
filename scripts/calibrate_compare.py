"""Calibration of ``wmcore compare``'s paired verdict on a world with a known truth.

The analytic world (``wmcore.models.analytic``) with per-episode noise: a version's model turns the
latent by ``delta + d_e + v_e`` per step, where ``d_e ~ N(0, EPISODE_SD)`` is the episode's own
difficulty (shared by every version: the same episode is hard for all of them) and
``v_e ~ N(0, VERSION_SD)`` is the version's own error on that episode (a retrained version draws it
anew). Expected open-loop cosine at step k is then a known function of delta, so two versions with the
same delta have the same expected drift (any regression verdict between them is a false alarm), and a
version with a larger delta has a known expected AUC drop.

For each of REPS repetitions (a fresh world seed and fresh noise) the script evaluates version A and
A' (same delta) and versions B with an expected open-loop AUC drop of 0.03 and 0.05, on 32 episodes,
through ``wmcore.evaluate`` and the saved-report reader (``wmcore.runs``), then compares A with each
on the first 8, 16 and 32 episodes with ``wmcore.compare.compare_pair`` at the default tolerances.
It prints the share of comparisons with verdict "regressed" on the open-loop AUC row and on any gated
row (false-alarm rate for A vs A', power for the drops).

    python scripts/calibrate_compare.py [--reps 200] [--seed 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from wmcore.compare import Pair, compare_pair
from wmcore.evaluate import EvalConfig, evaluate
from wmcore.models.analytic import AnalyticConfig, AnalyticModel, make_episodes, rotate_pairs
from wmcore.runs import load_run
from wmcore.settings import Thresholds, Tolerances

H = 20
EPISODES = 32
SIZES = (8, 16, 32)
DELTA = 0.05
EPISODE_SD = 0.02  # episode difficulty, shared by the versions
VERSION_SD = 0.01  # a version's own per-episode error
DROPS = (0.03, 0.05)


def expected_auc(delta: float) -> float:
    """E[mean_k cos(k (delta + d + v))] over the noise, k = 1..H (Gaussian: E cos(kX) = cos(k mu) exp(-k^2 s^2 / 2))."""
    s2 = EPISODE_SD ** 2 + VERSION_SD ** 2
    return float(np.mean([math.cos(k * delta) * math.exp(-(k ** 2) * s2 / 2) for k in range(1, H + 1)]))


def delta_for_drop(drop: float) -> float:
    lo, hi = DELTA, 1.0
    for _ in range(80):  # bisection: expected_auc falls as delta grows over this range
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expected_auc(DELTA) - expected_auc(mid) < drop else (lo, mid)
    return (lo + hi) / 2


class NoisyVersion(AnalyticModel):
    """The analytic model with an extra angle error per episode (``extra``: [episodes] radians)."""

    def __init__(self, cfg: AnalyticConfig, extra: torch.Tensor, name: str) -> None:
        super().__init__(cfg, name=name)
        self.extra = extra.double()

    def _turn(self, z: torch.Tensor) -> torch.Tensor:
        return rotate_pairs(z.double(), self.extra[: z.shape[0]]).to(z.dtype)  # offset 0: rotate about 0

    def predict(self, context, actions, states=None):
        return self._turn(super().predict(context, actions, states))

    def step(self, cache, latent, action, state=None):
        out, cache = super().step(cache, latent, action, state)
        return self._turn(out), cache


def entry(report, d: Path):
    d.mkdir()
    report.save(d / "r.json")
    (e,) = load_run(d).entries
    return e


def first(e, n: int):
    """The entry restricted to its first n episodes (mean curves recomputed from the rows)."""
    per = {k: v[:n] for k, v in e.per_episode.items()}
    return dataclasses.replace(e, episode_ids=e.episode_ids[:n], per_episode=per,
                               open_loop=tuple(np.mean(per["open_loop"], 0)), closed_loop=tuple(np.mean(per["closed_loop"], 0)))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = AnalyticConfig(delta=DELTA)
    versions = {"same": DELTA, **{f"drop {d}": delta_for_drop(d) for d in DROPS}}
    tol = Tolerances()
    counts = {(v, n, what): 0 for v in versions for n in SIZES for what in ("auc", "any")}
    tmp = Path(tempfile.mkdtemp(prefix="wmcore-calibration-"))
    t0 = time.time()
    for r in range(args.reps):
        seed = args.seed * 100_000 + r
        g = torch.Generator().manual_seed(seed)
        eps = make_episodes(cfg, episodes=EPISODES, steps=H + 1, seed=seed)
        difficulty = EPISODE_SD * torch.randn(EPISODES, generator=g)

        def run(delta: float, name: str):
            model = NoisyVersion(AnalyticConfig(delta=delta), difficulty + VERSION_SD * torch.randn(EPISODES, generator=g), name)
            # one batch for all episodes: the model indexes its per-episode noise by the row in the batch
            rep = evaluate(model, eps, EvalConfig(horizon=H, batch_size=EPISODES, energy=False), Thresholds(bootstrap=50), spec=name,
                           data_id=f"analytic-{seed}")
            return entry(rep, tmp / f"{r}-{name}")

        base = run(DELTA, "A")
        for v, delta in versions.items():
            new = run(delta, "B-" + v.replace(" ", ""))
            for n in SIZES:
                res = compare_pair(Pair(first(base, n), first(new, n)), tol)
                verdicts = {row.metric: row.verdict for row in res.rows if row.verdict}
                counts[(v, n, "auc")] += verdicts["open loop, AUC (mean cosine)"] == "regressed"
                counts[(v, n, "any")] += bool(res.regressions)
        if (r + 1) % 20 == 0:
            print(f"  {r + 1}/{args.reps} repetitions, {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    print(f"{args.reps} repetitions; analytic world, H = {H}, delta {DELTA}, episode sd {EPISODE_SD}, version sd "
          f"{VERSION_SD}; default tolerances (AUC drop {tol.auc_drop}); B's delta for an expected AUC drop of "
          + ", ".join(f"{d}: {delta_for_drop(d):.4f}" for d in DROPS))
    print("| versions | episodes | 'regressed' on open-loop AUC | 'regressed' on any gated metric |")
    print("|---|---|---|---|")
    for v in versions:
        for n in SIZES:
            a, b = counts[(v, n, "auc")] / args.reps, counts[(v, n, "any")] / args.reps
            label = "same expected drift (false alarms)" if v == "same" else f"expected AUC {v} (power)"
            print(f"| {label} | {n} | {100 * a:.1f}% | {100 * b:.1f}% |")
    print(f"({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
