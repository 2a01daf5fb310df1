"""Ranking fidelity: does the model order a planner's candidates as reality does?

A planner only needs its cost to *rank* candidate action sequences well; a predictor can have a small
MSE and still rank them badly (the block barely moves in most candidates, and the ones where it does
are the ones that matter). At a task's start, one draw of the planner's first-iteration candidates
is costed twice: by the model (its predictor's open loop, ``LatentGoalCost.terms``) and by the encoder
oracle (every candidate simulated from the true state, its final frame encoded by the same model's
encoder: the cost a perfect predictor would give). Per term (``latent``; ``proprio`` where the model
propagates proprioception) the report keeps the Spearman correlation of the two costings and the
overlap of their top-k sets (k as the planner's elite fraction of the candidates; chance is k / n).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr

from ..stats import bootstrap_mean_ci
from .oracle import latent_distance, simulate_final
from .planners import PROPRIO_SCALE
from .sim.pusht import PushTSim

__all__ = ["FIDELITY_SAMPLES", "compare_rankings", "oracle_terms", "summarise_fidelity"]

FIDELITY_SAMPLES = 64  # candidates costed twice per task (the simulator renders each one's final frame)


def oracle_terms(model, sim: PushTSim, state7, z_goal, goal_proprio, actions: np.ndarray,
                 device: str = "cpu") -> dict[str, np.ndarray]:
    """The encoder oracle's terms ``[N]`` for candidates ``[N, L, 2]`` from ``state7`` (state + agent
    velocity): ``latent`` (squared distance of the encoded final frame to the encoded goal ``z_goal``
    ``[1, N_tokens, D]``, as ``oracle.SimulatorLatentCost``) and ``proprio`` (the final agent position's
    squared distance to ``goal_proprio``, positions / PROPRIO_SCALE)."""
    frames, finals = simulate_final(sim, state7, actions)
    proprio = (((finals[:, :2] - np.asarray(goal_proprio, dtype=np.float64)[:2]) / PROPRIO_SCALE) ** 2).sum(-1)
    return {"latent": latent_distance(model, frames, z_goal, device), "proprio": proprio}


def compare_rankings(model_terms: dict[str, np.ndarray], oracle: dict[str, np.ndarray], k: int) -> dict:
    """Per term present in both: Spearman rho and the top-``k`` overlap (a fraction) of the model's
    ranking against the oracle's."""
    out: dict = {"candidates": int(len(next(iter(model_terms.values())))), "k": int(k)}
    for name, m in model_terms.items():
        if name not in oracle:
            continue
        o = oracle[name]
        rho = spearmanr(m, o).statistic if np.ptp(m) > 0 and np.ptp(o) > 0 else 0.0
        top_m, top_o = set(np.argsort(m, kind="stable")[:k]), set(np.argsort(o, kind="stable")[:k])
        out[name] = {"spearman": float(rho), "topk_overlap": len(top_m & top_o) / k}
    return out


def summarise_fidelity(rows: list[dict | None], seed: int = 0) -> dict | None:
    """Means over tasks with BCa bootstrap 95% CIs, per term; None where no task has fidelity."""
    rows = [r for r in rows if r]
    if not rows:
        return None
    out: dict = {"tasks": len(rows), "candidates": rows[0]["candidates"], "k": rows[0]["k"],
                 "topk_chance": rows[0]["k"] / rows[0]["candidates"]}
    for term in ("latent", "proprio"):
        have = [r[term] for r in rows if term in r]
        if not have:
            continue
        out[term] = {}
        for key in ("spearman", "topk_overlap"):
            v = np.array([h[key] for h in have], dtype=np.float64)
            lo, hi = bootstrap_mean_ci(v, seed=seed)
            out[term][key] = {"mean": float(v.mean()), "lo": float(lo), "hi": float(hi)}
    return out
