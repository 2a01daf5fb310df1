"""Does a model's latent distance track the task distance? Pairs of frames of the held-out fixture
episodes (``wmcore/fixtures/pusht``), 5..50 env steps apart (60 pairs per episode, seeded): the Spearman
correlation of the latent distance (mean squared difference over tokens and dims) with the success
distance (position error / 20 + angle error / (pi/9)), with the agent's displacement, the block's and
the block's rotation; overall and among near pairs (task distance in [0, 2), [0, 4), [2, 6)), where a
planner decides whether it has arrived.

``python scripts/latent_metric.py MODEL_SPEC`` (e.g. pusht-lewm, lewm:runs/train-v2/model)
"""

import sys
import numpy as np, torch
from scipy.stats import spearmanr
from wmcore.models import load
from wmcore.data.episodes import load_episodes
from wmcore.control.oracle import distance
from wmcore.control.sim.pusht import angle_error
spec = sys.argv[1]
m = load(spec)
eps = load_episodes("wmcore/fixtures/pusht")
rng = np.random.default_rng(0)
L, D, A, B, ANG = [], [], [], [], []
with torch.inference_mode():
    for e in eps:
        fr = e.frames[::5]
        st = e.states[::5].numpy().astype(np.float64)
        z = torch.cat([m.encode(fr[i:i+64][None]) for i in range(0, len(fr), 64)], 1)[0].float()  # [T,N,D]
        T = len(fr)
        for _ in range(60):
            i = rng.integers(0, T - 1); j = min(T - 1, i + rng.integers(1, 11))
            L.append(float((z[i] - z[j]).pow(2).mean())); D.append(float(distance(st[i], st[j])))
            A.append(np.linalg.norm(st[i, :2] - st[j, :2])); B.append(np.linalg.norm(st[i, 2:4] - st[j, 2:4]))
            ANG.append(float(angle_error(st[i, 4], st[j, 4])))
L = np.array(L)
out = {k: spearmanr(L, v).statistic for k, v in dict(task=D, agent=A, block_xy=B, block_angle=ANG).items()}
print(spec, len(L), "pairs; Spearman of latent MSE with:", {k: round(v, 3) for k, v in out.items()})
# block sensitivity at fixed agent move: among pairs with agent moving < 15 units
sel = np.array(A) < 15
print("  pairs with agent move < 15:", sel.sum(), "Spearman latent vs block_xy", round(spearmanr(L[sel], np.array(B)[sel]).statistic, 3),
      "vs angle", round(spearmanr(L[sel], np.array(ANG)[sel]).statistic, 3))
Dn = np.array(D)
for lo, hi in ((0, 2), (0, 4), (2, 6)):
    s = (Dn >= lo) & (Dn < hi)
    print(f"  task distance in [{lo},{hi}): {s.sum()} pairs, Spearman latent vs task {spearmanr(L[s], Dn[s]).statistic:.3f}",
          f"vs agent {spearmanr(L[s], np.array(A)[s]).statistic:.3f} vs block_xy {spearmanr(L[s], np.array(B)[s]).statistic:.3f}",
          f"vs angle {spearmanr(L[s], np.array(ANG)[s]).statistic:.3f}")
