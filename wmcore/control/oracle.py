"""The oracle world model: the simulator itself as the model, its state as the latent.

It validates the planner and the task set (if CEM cannot reach the goals with perfect foresight, the
planner or the tasks are at fault, not the world model): every candidate is simulated from the
current state, agent velocity included, and costed by ``distance`` to the goal state.
"""

from __future__ import annotations

import numpy as np
import torch

from .sim.pusht import ANGLE_TOL, POSITION_TOL, PushTSim, angle_error, position_error

__all__ = ["SimulatorCost", "SimulatorLatentCost", "distance", "latent_distance", "simulate_final"]


def distance(state, goal) -> np.ndarray:
    """Distance of states ``[..., 5]`` to a goal in units of the success tolerances, position and angle
    together: ``position_error / 20 + angle_error / (pi/9)``; every success has distance < 2."""
    s, g = np.asarray(state, dtype=np.float64), np.asarray(goal, dtype=np.float64)
    return position_error(s, g) / POSITION_TOL + angle_error(s[..., 4], g[..., 4]) / ANGLE_TOL


def simulate_final(sim: PushTSim, state7, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each candidate of ``actions`` ``[N, L, 2]`` simulated from ``state7`` (state + agent velocity):
    its rendered final frame ``[N, H, W, 3]`` and its final state ``[N, 5]``."""
    frames, finals = [], []
    for seq in actions:
        sim.reset_to(state7, render=False)
        for a in seq[:-1]:
            sim.step(a, render=False)
        frames.append(sim.step(seq[-1]))
        finals.append(sim.state)
    return np.stack(frames), np.stack(finals)


def latent_distance(model, frames: np.ndarray, z_goal: torch.Tensor, device: str = "cpu") -> np.ndarray:
    """Squared latent distance (mean over tokens and dims) of the encoded ``frames`` ``[N, H, W, 3]`` to
    ``z_goal`` ``[1, N_tokens, D]``: ``[N]``."""
    with torch.inference_mode():
        z = model.encode(torch.as_tensor(frames)[:, None].to(device))[:, 0].float()
    return (z - z_goal.float()).pow(2).mean((-2, -1)).double().cpu().numpy()


class SimulatorCost:
    """Planner cost with the simulator as the model: ``observe(state [7])`` (5-d state + agent
    velocity), then candidates ``[N, L, 2]`` -> distance to the goal after the last step (``final``)
    or summed over the steps (``all``)."""

    def __init__(self, goal, *, cost: str = "final", size: int = 96):
        self.goal = np.asarray(goal, dtype=np.float64)
        self.kind = cost
        self.sim = PushTSim(size)
        self.state = None

    def observe(self, state7) -> None:
        self.state = np.asarray(state7, dtype=np.float64)

    def __call__(self, actions: np.ndarray) -> np.ndarray:
        out = np.empty(len(actions))
        for i, seq in enumerate(actions):
            self.sim.reset_to(self.state, render=False)
            total = 0.0
            for a in seq:
                self.sim.step(a, render=False)
                if self.kind == "all":
                    total += float(distance(self.sim.state, self.goal))
            out[i] = total if self.kind == "all" else float(distance(self.sim.state, self.goal))
        return out

    def close(self) -> None:
        self.sim.close()


class SimulatorLatentCost:
    """The encoder oracle: the simulator as the dynamics, a world model's *encoder* as the cost.
    Candidates ``[N, L, 2]`` are simulated from the current state (as ``SimulatorCost``); the cost is
    the squared latent distance (mean over tokens and dims) between the encoded final frame and the
    encoded goal frame. With perfect dynamics, what is left is whether the model's latent distance
    points at the goal: planning with it separates the encoder's share of a failure from the
    predictor's."""

    def __init__(self, model, goal_frame, *, size: int = 96, device: str = "cpu"):
        self.model, self.device = model, device
        self.sim = PushTSim(size)
        with torch.inference_mode():
            self.z_goal = model.encode(torch.as_tensor(goal_frame)[None, None].to(device))[:, 0].float()
        self.state = None

    def observe(self, state7) -> None:
        self.state = np.asarray(state7, dtype=np.float64)

    def __call__(self, actions: np.ndarray) -> np.ndarray:
        frames, _ = simulate_final(self.sim, self.state, actions)
        return latent_distance(self.model, frames, self.z_goal, self.device)

    def close(self) -> None:
        self.sim.close()
