"""The PushT simulator (gym-pusht) as a control environment: exact reset, stepping, rendering, and
stable-worldmodel's success rule.

Exact reset. gym-pusht's ``reset_to_state`` sets the block's position before its angle; pymunk rotates
a body about its centre of gravity, which for the T is not the body's origin, so the block lands
elsewhere than the state says. ``PushTSim.reset_to`` sets the angle first, then the position, then
takes one physics step as gym-pusht does: the recorded frame is reproduced bit-exactly (see
tests/test_control_sim.py). The agent's velocity is not part of the 5-d recorded state; a reset
starts the agent at rest unless a velocity is given (the oracle model carries it, 7-d).

Success (stable-worldmodel ``PushT.eval_state``): the Euclidean norm of the difference of
``state[:4]`` (agent xy and block xy together) below 20 workspace units, and the block angle within
pi/9 of the goal's, angles wrapped (the T has no rotational symmetry).
"""

from __future__ import annotations

import math

import numpy as np

from ...data.pusht import ACTION_DIM, DEFAULT_SIZE, STATE_DIM, env_state, make_env
from ...errors import WMError

__all__ = [
    "ANGLE_TOL",
    "POSITION_TOL",
    "PushTSim",
    "angle_error",
    "position_error",
    "success",
]

POSITION_TOL = 20.0  # workspace units, on the norm of state[:4]
ANGLE_TOL = math.pi / 9


def angle_error(a, b) -> np.ndarray:
    """The absolute difference of two angles, wrapped into [0, pi]."""
    d = np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) % (2 * math.pi)
    return np.minimum(d, 2 * math.pi - d)


def position_error(state, goal) -> np.ndarray:
    """``|goal[:4] - state[:4]|`` (Euclidean, agent and block positions together) of states ``[..., 5]``."""
    s, g = np.asarray(state, dtype=np.float64), np.asarray(goal, dtype=np.float64)
    return np.linalg.norm(g[..., :4] - s[..., :4], axis=-1)


def success(state, goal) -> np.ndarray:
    """stable-worldmodel's PushT rule on states ``[..., 5]``: position error < 20 and angle error < pi/9."""
    s, g = np.asarray(state, dtype=np.float64), np.asarray(goal, dtype=np.float64)
    return (position_error(s, g) < POSITION_TOL) & (angle_error(s[..., 4], g[..., 4]) < ANGLE_TOL)


def _check_state(state, what: str = "state") -> np.ndarray:
    s = np.asarray(state, dtype=np.float64)
    if s.shape not in ((STATE_DIM,), (STATE_DIM + 2,)):
        raise WMError(f"{what}: expected a PushT state [5] (agent xy, block xy, block angle) or [7] (with the "
                      f"agent's velocity), found shape {s.shape}")
    if not np.isfinite(s).all():
        raise WMError(f"{what}: not finite: {s.tolist()}")
    return s


class PushTSim:
    """One gym-pusht environment rendering ``size`` px frames, reset exactly to recorded states.

    ``reset_to(state)`` and ``step(action)`` return the rendered frame ``uint8 [size, size, 3]``
    (``render=False``: None, for callers that only need the state, e.g. the oracle model).
    """

    action_dim = ACTION_DIM
    state_dim = STATE_DIM

    def __init__(self, size: int = DEFAULT_SIZE):
        self.size = size
        self.env = make_env(size)
        self.env.reset(seed=0)  # builds the pymunk space; the state is set by reset_to

    @property
    def state(self) -> np.ndarray:
        """The 5-d state ``[5]`` float64: agent xy, block xy (body origin), block angle mod 2 pi."""
        return env_state(self.env)

    @property
    def velocity(self) -> np.ndarray:
        """The agent's velocity ``[2]`` (part of the dynamics, not of the recorded state)."""
        return np.array(self.env.agent.velocity, dtype=np.float64)

    def render(self) -> np.ndarray:
        return self.env._render()

    def reset_to(self, state, *, render: bool = True) -> np.ndarray | None:
        """Put the simulator exactly in ``state`` ``[5]`` (agent at rest) or ``[7]`` (agent velocity last)."""
        s = _check_state(state)
        env = self.env
        env._setup()  # a fresh space: no contact or solver state survives from before
        env.agent.velocity = tuple(s[5:7]) if len(s) == 7 else (0.0, 0.0)
        env.agent.position = tuple(s[:2])
        env.block.angle = float(s[4])  # angle before position: see the module docstring
        env.block.position = tuple(s[2:4])
        env.space.step(env.dt)  # as gym-pusht's own reset: the state takes effect
        return self.render() if render else None

    def step(self, action, *, render: bool = True) -> np.ndarray | None:
        """One environment step (0.1 s, 10 physics substeps of PD control towards ``action`` [2], an
        absolute target in workspace units, as gym-pusht's step, without its reward computation)."""
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (ACTION_DIM,) or not np.isfinite(a).all():
            raise WMError(f"action: expected a finite PushT target position [2], found {a.tolist()}")
        env = self.env
        env._last_action = a
        for _ in range(int(1 / (env.dt * env.control_hz))):
            acc = env.k_p * (a - env.agent.position) + env.k_v * (-np.asarray(env.agent.velocity))
            env.agent.velocity += tuple(acc * env.dt)
            env.space.step(env.dt)
        return self.render() if render else None

    def close(self) -> None:
        self.env.close()

    def __enter__(self) -> "PushTSim":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

