"""Planners over any world model: CEM in the model's action space, receding horizon.

The planner knows nothing of the simulator. It sees a cost function over candidate action sequences
``[N, L, A]`` (environment-step actions, L a multiple of the model's frameskip) and an ``ActionPrior``
measured on recorded actions: the per-dimension bounds and the std of one step's change. Candidates
are smooth and in distribution by construction: a candidate is the last executed action plus the
running sum of per-step changes, and CEM fits a Gaussian over those changes (a random walk from where
the agent is, not independent jumps, which a model trained on smooth exploration has never seen).

Costs: ``LatentGoalCost`` (any ``WorldModel``: encode the current and the goal frame, roll the
candidates out in open loop, squared latent distance to the goal at the last step, or summed over
every step) and, for the oracle, ``control.oracle.SimulatorCost``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ..errors import WMError
from ..protocol import WorldModel
from ..rollout import open_loop

__all__ = ["COSTS", "PRESETS", "PROPRIO_SCALE", "ActionPrior", "CEMConfig", "CEMPlanner", "LatentGoalCost",
           "coloured_noise", "preset"]

COSTS = ("final", "all")
PROPRIO_SCALE = 512.0  # the proprio term compares agent positions divided by this (the workspace's width)
# Named planner settings. lewm: le-wm's published PushT evaluation (CEM 300 samples, 30 elites, 30
# iterations, a horizon of 5 model steps, the whole plan executed before replanning), so that a wmcore
# figure can stand next to the paper's; horizon and execute are in model steps here.
PRESETS: dict[str, dict] = {
    "lewm": {"samples": 300, "elites": 30, "iterations": 30, "horizon_model_steps": 5, "execute_model_steps": 5},
}


@dataclass(frozen=True)
class ActionPrior:
    """What in-distribution actions look like: bounds ``low``/``high`` ``[A]`` and ``step_std`` ``[A]``,
    the std of ``a[t+1] - a[t]`` in recorded episodes."""

    low: list[float]
    high: list[float]
    step_std: list[float]

    @classmethod
    def from_actions(cls, actions: list[Tensor] | Tensor) -> "ActionPrior":
        """From recorded actions: a list of ``[T, A]`` or one ``[B, T, A]``."""
        seqs = list(actions) if not isinstance(actions, Tensor) or actions.dim() == 3 else [actions]
        if not seqs or any(a.dim() != 2 or a.shape[0] < 2 for a in seqs):
            raise WMError("action prior: expected recorded actions [T >= 2, A] per episode")
        flat = torch.cat([a.double() for a in seqs])
        diff = torch.cat([a.double().diff(dim=0) for a in seqs])
        std = diff.std(0).clamp_min(1e-6)
        return cls(flat.min(0).values.tolist(), flat.max(0).values.tolist(), std.tolist())


@dataclass(frozen=True)
class CEMConfig:
    """CEM over per-step action changes. ``horizon``/``execute`` in environment steps (multiples of
    the model's frameskip); ``init_std`` in units of the prior's ``step_std``."""

    samples: int = 256
    elites: int = 24
    iterations: int = 5
    horizon: int = 25
    execute: int = 5
    init_std: float = 1.0
    min_std: float = 0.05
    # iCEM's coloured noise: the changes' noise has power ~ 1/f^beta along time (0 white; 2 a random
    # walk of the changes, i.e. momentum: the agent keeps going where it went)
    noise_beta: float = 0.0
    cost: str = "final"
    seed: int = 0
    # weight of the proprio term: the squared distance of the model's propagated agent position to the
    # goal's (positions / PROPRIO_SCALE), for models that read proprioception (propagate_state); 0 = none
    proprio_weight: float = 0.0
    preset: str = ""  # the PRESETS entry these settings came from, if any (recorded in reports)

    def __post_init__(self) -> None:
        if self.preset and self.preset not in PRESETS:
            raise WMError(f"planner preset {self.preset!r}: expected one of {', '.join(sorted(PRESETS))}")
        if not np.isfinite(self.proprio_weight) or self.proprio_weight < 0:
            raise WMError(f"CEM proprio_weight {self.proprio_weight!r}: expected a finite number >= 0")
        if not 1 <= self.elites <= self.samples:
            raise WMError(f"CEM: elites {self.elites} must be in 1..samples ({self.samples})")
        if self.iterations < 1 or self.horizon < 1 or not 1 <= self.execute <= self.horizon:
            raise WMError(f"CEM: need iterations >= 1 and 1 <= execute ({self.execute}) <= horizon ({self.horizon})")
        if self.cost not in COSTS:
            raise WMError(f"CEM cost {self.cost!r}: expected one of {', '.join(COSTS)}")

    def to_dict(self) -> dict:
        return asdict(self)


def preset(name: str, frameskip: int, **overrides) -> CEMConfig:
    """The ``CEMConfig`` of a named preset (``PRESETS``) for a model of ``frameskip``, with ``overrides``
    (e.g. seed, proprio_weight) on top."""
    if name not in PRESETS:
        raise WMError(f"planner preset {name!r}: expected one of {', '.join(sorted(PRESETS))}")
    p = dict(PRESETS[name])
    p["horizon"] = p.pop("horizon_model_steps") * frameskip
    p["execute"] = p.pop("execute_model_steps") * frameskip
    return CEMConfig(**{**p, **overrides, "preset": name})


Cost = Callable[[np.ndarray], np.ndarray]  # candidates [N, L, A] -> costs [N]


def coloured_noise(rng: np.random.Generator, beta: float, shape: tuple[int, int, int]) -> np.ndarray:
    """Gaussian noise ``[N, L, A]`` with power spectrum ~ 1/f^beta along L, unit std per sequence
    position on average (beta 0: white)."""
    if beta == 0:
        return rng.standard_normal(shape)
    n, length, a = shape
    f = np.fft.rfftfreq(length)
    f[0] = f[1] if length > 1 else 1.0  # no infinite power at f = 0
    spec = (rng.standard_normal((n, len(f), a)) + 1j * rng.standard_normal((n, len(f), a))) * (f ** (-beta / 2))[None, :, None]
    x = np.fft.irfft(spec, n=length, axis=1)
    return x / x.std(axis=(0, 1), keepdims=True).clip(1e-12)


class CEMPlanner:
    """Receding-horizon CEM. ``plan(cost, last_action)`` returns the best sequence ``[L, A]``; the
    caller executes its first ``execute`` actions and calls ``plan`` again (the mean is warm-started
    by shifting the previous one)."""

    def __init__(self, prior: ActionPrior, cfg: CEMConfig = CEMConfig()):
        self.prior, self.cfg = prior, cfg
        self.low, self.high = np.asarray(prior.low), np.asarray(prior.high)
        self.step_std = np.asarray(prior.step_std)
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(self.cfg.seed if seed is None else seed)
        self.mean = np.zeros((self.cfg.horizon, len(self.step_std)))

    def candidates(self, last: np.ndarray, changes: np.ndarray) -> np.ndarray:
        """Per-step changes ``[N, L, A]`` -> actions ``[N, L, A]`` from ``last`` ``[A]``, kept in bounds."""
        return np.clip(last + np.cumsum(changes, axis=1), self.low, self.high)

    def plan(self, cost: Cost, last_action) -> tuple[np.ndarray, float]:
        """The best action sequence ``[L, A]`` found and its cost."""
        c = self.cfg
        last = np.asarray(last_action, dtype=np.float64)
        mean = self.mean
        std = np.broadcast_to(c.init_std * self.step_std, mean.shape).copy()
        best, best_cost = None, np.inf
        for _ in range(c.iterations):
            changes = mean + std * coloured_noise(self.rng, c.noise_beta, (c.samples, *mean.shape))
            changes[0] = mean  # the current mean is always a candidate
            acts = self.candidates(last, changes)
            costs = np.asarray(cost(acts), dtype=np.float64)
            if costs.shape != (c.samples,) or not np.isfinite(costs).all():
                raise WMError(f"planner cost: expected {c.samples} finite costs, found shape {costs.shape} "
                              f"with {int((~np.isfinite(costs)).sum()) if costs.shape == (c.samples,) else '?'} non-finite")
            elite = np.argsort(costs, kind="stable")[: c.elites]
            if costs[elite[0]] < best_cost:
                best, best_cost = acts[elite[0]], float(costs[elite[0]])
            # refit on the changes the clipped elites actually made
            taken = np.diff(np.concatenate([np.broadcast_to(last, (c.elites, 1, len(last))), acts[elite]], 1), axis=1)
            mean, std = taken.mean(0), np.maximum(taken.std(0), c.min_std * self.step_std)
        # warm start: what remains of this plan after the executed steps, then no change
        kept = np.diff(np.concatenate([last[None], best]), axis=0)[c.execute:]
        self.mean = np.concatenate([kept, np.zeros((c.execute, len(last)))])
        return best, best_cost


class LatentGoalCost:
    """Cost of candidates under a world model: squared latent distance (mean over tokens and dims) to
    the encoded goal frame after the last model step (``final``) or summed over the steps (``all``),
    plus ``proprio_weight`` x the squared distance of the agent position that the model propagates
    (``propagate_state``: models that read proprioception) to the goal's, positions / PROPRIO_SCALE.

    ``frame`` and ``goal`` uint8 ``[H, W, 3]``; ``state`` ``[S]`` the proprioceptive state for models
    that read one (None otherwise); ``goal_proprio`` ``[2]`` the goal's agent position, which comes with
    the goal frame (as DINO-WM's goal observation). Candidates ``[N, L, A]`` with L a multiple of the
    frameskip.
    """

    def __init__(self, model: WorldModel, goal: np.ndarray, *, cost: str = "final", device: str = "cpu",
                 batch: int = 256, proprio_weight: float = 0.0, goal_proprio=None):
        self.model, self.kind, self.device, self.batch = model, cost, device, batch
        self.proprio_weight = float(proprio_weight)
        self.reads_state = hasattr(model, "propagate_state")
        if self.proprio_weight > 0:
            if not self.reads_state:
                raise WMError(f"a proprio cost (proprio weight {self.proprio_weight}) needs a model that reads "
                              f"proprioception (propagate_state); {model.name!r} reads frames and actions only: "
                              "set the proprio weight to 0")
            if goal_proprio is None:
                raise WMError("a proprio cost needs the goal's agent position (goal_proprio)")
        self.goal_proprio = None if goal_proprio is None else torch.as_tensor(
            np.asarray(goal_proprio, dtype=np.float64)[:2], dtype=torch.float32).to(device)
        with torch.inference_mode():
            self.z_goal = model.encode(torch.as_tensor(goal)[None, None].to(device))[:, 0]  # [1, N, D]
        # observed frames the model plans from: 1 (the current one), or up to the model's plan_history for
        # a model that reads past frames and no proprioception
        self.history = 1 if self.reads_state else max(1, int(getattr(model, "plan_history", 1) or 1))
        self.z0 = None  # [1, C, N, D]: the observed history, the current frame last
        self.past_blocks = None  # [C - 1, A]: the action blocks executed between them
        self.state = None

    def observe(self, frame: np.ndarray, state: np.ndarray | None = None, *, executed=None, seen=None) -> None:
        """The current observation. For a model that plans from a history of frames (``plan_history`` >
        1: a thinker reading past frames), ``executed`` ``[L, a]`` (the actions run since the last
        observation) and ``seen`` (the L frames after each of them, the last being ``frame``) extend the
        history by the frames every frameskip steps and their action blocks; without them (the task's
        first observation, or a chunk that is not whole model steps) the history starts again here."""
        with torch.inference_mode():
            z = self.model.encode(torch.as_tensor(frame)[None, None].to(self.device))  # [1, 1, N, D]
            k = self.model.frameskip
            if (self.history > 1 and self.z0 is not None and executed is not None and seen is not None
                    and len(executed) == len(seen) and len(executed) % k == 0 and len(executed) > 0):
                frames = np.stack([np.asarray(f) for f in seen[k - 1 :: k]])
                past = self.model.encode(torch.as_tensor(frames)[None].to(self.device))  # [1, L/k, N, D]
                past = torch.cat([past[:, :-1], z], 1)  # the last one is the current frame itself
                blocks = torch.as_tensor(np.asarray(executed, dtype=np.float32)).reshape(-1, k * np.shape(executed)[-1])
                self.z0 = torch.cat([self.z0, past], 1)[:, -self.history :]
                every = torch.cat([self.past_blocks, blocks.to(self.device)])
                self.past_blocks = every[len(every) - (self.z0.shape[1] - 1) :]  # the blocks between the kept frames
            else:
                self.z0 = z
                self.past_blocks = torch.zeros(0, self.model.action_dim, device=self.device)
        self.state = None if state is None else torch.as_tensor(state, dtype=torch.float32).to(self.device)
        if self.proprio_weight > 0 and self.state is None:
            raise WMError("a proprio cost needs the current proprioceptive state: observe(frame, state)")

    def terms(self, actions: np.ndarray) -> dict[str, np.ndarray]:
        """The cost's terms ``[N]`` each: ``latent`` (as ``kind`` says), and ``proprio`` (the final
        propagated agent position's squared distance to the goal's) where the model propagates states
        and the goal's agent position is known."""
        if self.z0 is None:
            raise RuntimeError("LatentGoalCost: call observe(frame) before costing candidates")
        n, length, a = actions.shape
        k = self.model.frameskip
        if length % k:
            raise WMError(f"planner horizon {length} env steps is not a multiple of the model's frameskip {k}")
        h = length // k
        blocks = torch.as_tensor(actions, dtype=torch.float32).reshape(n, h, k * a).to(self.device)
        lat, pro = [], []
        with torch.inference_mode():
            for i in range(0, n, self.batch):
                b = blocks[i : i + self.batch]
                z0 = self.z0.expand(b.shape[0], *self.z0.shape[1:])
                st = None
                if self.state is not None and self.reads_state:
                    st = self.state[None, None].expand(b.shape[0], 1, -1)
                if len(self.past_blocks):
                    b = torch.cat([self.past_blocks[None].expand(b.shape[0], -1, -1), b], 1)
                z = open_loop(self.model, z0, b, h, states=st)  # [n, h, N, D]
                d = (z.float() - self.z_goal[:, None]).pow(2).mean((-2, -1))  # [n, h]
                lat.append(d[:, -1] if self.kind == "final" else d.sum(1))
                if st is not None and self.goal_proprio is not None:
                    s = st[:, 0]
                    for j in range(h):  # as open_loop propagates them
                        s = self.model.propagate_state(s, b[:, j])
                    pro.append((s[:, :2].float() - self.goal_proprio).div(PROPRIO_SCALE).pow(2).sum(-1))
        out = {"latent": torch.cat(lat).double().cpu().numpy()}
        if pro:
            out["proprio"] = torch.cat(pro).double().cpu().numpy()
        return out

    def __call__(self, actions: np.ndarray) -> np.ndarray:
        t = self.terms(actions)
        return t["latent"] + self.proprio_weight * t["proprio"] if self.proprio_weight > 0 else t["latent"]
