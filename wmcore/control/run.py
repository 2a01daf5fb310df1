"""Run controllers on a task set in the simulator: the executed actions, success and distance of
every task, replayable (``replay``).

A controller gets the start and goal frame, and then, every time its last chunk of actions is spent,
the current frame and proprioceptive state; it returns the next chunk of environment actions. An
episode ends at the first step that meets the success rule, or when the budget is spent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np

from .. import dist
from ..errors import WMError
from .oracle import SimulatorCost, SimulatorLatentCost, distance
from .planners import ActionPrior, CEMConfig, CEMPlanner, LatentGoalCost, coloured_noise
from .sim.pusht import PushTSim, success
from .tasks import Task

__all__ = [
    "Controller",
    "DriveToGoal",
    "EncoderOracleCEM",
    "OracleCEM",
    "RandomSmooth",
    "Stay",
    "TaskResult",
    "WorldModelCEM",
    "replay",
    "run_sharded",
    "run_task",
    "run_tasks",
]


class Controller(Protocol):
    name: str

    def reset(self, task: Task, start_frame: np.ndarray, goal_frame: np.ndarray) -> None: ...

    def act(self, frame: np.ndarray, state: np.ndarray, velocity: np.ndarray, last: np.ndarray) -> np.ndarray:
        """The next chunk of actions ``[k >= 1, A]``."""


@dataclass(frozen=True)
class TaskResult:
    """One task's outcome. ``actions`` ``[steps, 2]`` as executed; ``final`` the state after them."""

    id: str
    success: bool
    steps: int
    final: list[float]
    start_distance: float
    final_distance: float
    score: float  # final_distance / start_distance: 0 at the goal, 1 no progress
    seconds: float
    seconds_per_action: float
    actions: list[list[float]] = field(repr=False)
    # ranking fidelity at the task's start (control.fidelity), for controllers that measure it
    fidelity: dict | None = field(default=None, repr=False)


def run_task(sim: PushTSim, task: Task, controller: Controller) -> TaskResult:
    goal = np.asarray(task.goal, dtype=np.float64)
    goal_frame = sim.reset_to(goal)
    frame = sim.reset_to(task.start)
    controller.reset(task, frame, goal_frame)
    last = np.asarray(task.start[:2], dtype=np.float64)  # the agent's target: where it is
    executed: list[np.ndarray] = []
    done = bool(success(sim.state, goal))
    see = getattr(controller, "see", None)  # optional: a controller that remembers the frames between its calls
    t0 = time.perf_counter()
    while not done and len(executed) < task.budget:
        chunk = np.asarray(controller.act(frame, sim.state, sim.velocity, last), dtype=np.float64)
        if chunk.ndim != 2 or chunk.shape[0] < 1 or chunk.shape[1] != sim.action_dim:
            raise WMError(f"controller {controller.name!r}: expected an action chunk [k >= 1, {sim.action_dim}], "
                          f"found shape {chunk.shape}")
        for a in chunk[: task.budget - len(executed)]:
            a = a.astype(np.float32).astype(np.float64)  # as saved: float32, so replay is exact
            frame = sim.step(a)
            executed.append(a)
            last = a
            if see is not None:
                see(frame)
            if success(sim.state, goal):
                done = True
                break
    seconds = time.perf_counter() - t0
    d0, d1 = float(distance(task.start, goal)), float(distance(sim.state, goal))
    return TaskResult(
        id=task.id, success=done, steps=len(executed), final=sim.state.tolist(), start_distance=d0,
        final_distance=d1, score=d1 / d0 if d0 > 0 else 0.0, seconds=seconds,
        seconds_per_action=seconds / max(1, len(executed)), actions=[a.tolist() for a in executed],
        fidelity=getattr(controller, "fidelity", None),
    )


def run_tasks(tasks: Sequence[Task], controller: Controller, *, size: int = 96,
              progress: Callable[[int, int, TaskResult], None] | None = None) -> list[TaskResult]:
    out = []
    with PushTSim(size) as sim:
        for i, task in enumerate(tasks):
            out.append(run_task(sim, task, controller))
            if progress:
                progress(i + 1, len(tasks), out[-1])
    return out


def run_sharded(tasks: Sequence[Task], controller: Controller, *, size: int = 96,
                progress: Callable[[int, int, TaskResult], None] | None = None) -> list[TaskResult]:
    """``run_tasks`` shared out over the ranks of a torchrun (``wmcore.dist``): each rank runs every
    world-th task (chunks of one task; a task's seeds come from the task, never from the rank), the
    results come back to every rank in task order, and an error on any rank stops every rank. One
    process: ``run_tasks``."""
    mine = [tasks[i] for r in dist.my_chunks(len(tasks), 1) for i in r]
    with dist.together():
        done = run_tasks(mine, controller, size=size, progress=progress)
    return dist.gather_ordered(done, len(tasks))


def replay(start, goal, actions: Sequence[Sequence[float]], *, sim: PushTSim | None = None) -> tuple[bool, np.ndarray]:
    """Re-run saved actions from a task's ``start`` state towards its ``goal`` (``[5]`` each):
    ``(success at any step, final state [5])``."""
    own = sim is None
    sim = PushTSim() if own else sim
    try:
        goal = np.asarray(goal, dtype=np.float64)
        sim.reset_to(start, render=False)
        ok = bool(success(sim.state, goal))
        for a in actions:
            if ok:
                break
            sim.step(np.asarray(a, dtype=np.float64), render=False)
            ok = bool(success(sim.state, goal))
        return ok, sim.state
    finally:
        if own:
            sim.close()


# --- controllers -------------------------------------------------------------------------------


class Stay:
    """Hold the agent where it is."""

    name = "stay"

    def reset(self, task, start_frame, goal_frame) -> None:
        pass

    def act(self, frame, state, velocity, last) -> np.ndarray:
        return np.repeat(last[None], 5, axis=0)


class RandomSmooth:
    """A random walk of the action target with the recorded per-step change (``ActionPrior``), seeded
    per task."""

    name = "random"

    def __init__(self, prior: ActionPrior, seed: int = 0):
        self.prior, self.seed = prior, seed

    def reset(self, task, start_frame, goal_frame) -> None:
        self.rng = np.random.default_rng([self.seed, task.start_step, sum(map(ord, task.episode))])

    def act(self, frame, state, velocity, last) -> np.ndarray:
        steps = self.rng.standard_normal((5, len(last))) * np.asarray(self.prior.step_std)
        return np.clip(last + np.cumsum(steps, 0), self.prior.low, self.prior.high)


class DriveToGoal:
    """Move the agent straight to the goal's agent position (``speed`` units per step), ignoring the
    block: succeeds only where the block is already close enough."""

    name = "drive-to-goal"

    def __init__(self, speed: float = 10.0):
        self.speed = speed

    def reset(self, task, start_frame, goal_frame) -> None:
        self.target = np.asarray(task.goal[:2], dtype=np.float64)

    def act(self, frame, state, velocity, last) -> np.ndarray:
        out, p = [], np.asarray(last, dtype=np.float64)
        for _ in range(5):
            d = self.target - p
            n = np.linalg.norm(d)
            p = self.target if n <= self.speed else p + d / n * self.speed
            out.append(p)
        return np.stack(out)


class WorldModelCEM:
    """CEM with a world model's latent goal cost (plus its proprio term, ``CEMConfig.proprio_weight``).
    With ``fidelity`` on, each task's first call also measures ranking fidelity (``control.fidelity``):
    one draw of first-iteration candidates (from its own generator, so the plan is unchanged) costed by
    the model and by the encoder oracle; the result is in ``self.fidelity`` until the next reset."""

    def __init__(self, model, prior: ActionPrior, cfg: CEMConfig = CEMConfig(), *, device: str = "cpu",
                 name: str | None = None, fidelity: bool = True):
        self.model, self.cfg, self.device = model, cfg, device
        self.planner = CEMPlanner(prior, cfg)
        self.name = name or f"cem[{model.name}]"
        self.reads_state = hasattr(model, "propagate_state")
        self.measure = fidelity
        self.sim = None
        if cfg.proprio_weight > 0 and not self.reads_state:
            raise WMError(f"--proprio-weight {cfg.proprio_weight}: model {model.name!r} reads no proprioception "
                          "(it has no propagate_state), so there is no proprio term to weigh; leave it at 0")

    def reset(self, task, start_frame, goal_frame) -> None:
        self.planner.reset(seed=self.cfg.seed + task.start_step)
        # the goal observation: its frame and the goal's agent position (proprioception), never the block's state
        self.goal_proprio = np.asarray(task.goal[:2], dtype=np.float64)
        self.cost = LatentGoalCost(self.model, goal_frame, cost=self.cfg.cost, device=self.device,
                                   proprio_weight=self.cfg.proprio_weight, goal_proprio=self.goal_proprio)
        self.fidelity, self.first, self.task = None, True, task
        self.chunk, self.seen = None, []

    def see(self, frame) -> None:
        """A frame after one executed action (``run_task``), kept for a model that plans from past frames."""
        if self.cost.history > 1:
            self.seen.append(frame)

    def act(self, frame, state, velocity, last) -> np.ndarray:
        self.cost.observe(frame, state if self.reads_state else None, executed=self.chunk, seen=self.seen)
        self.seen = []
        if self.first and self.measure:
            self.fidelity = self.ranking_fidelity(np.concatenate([state, velocity]), last)
        self.first = False
        plan, _ = self.planner.plan(self.cost, last)
        self.chunk = np.asarray(plan[: self.cfg.execute], dtype=np.float32)  # as run_task executes it
        return plan[: self.cfg.execute]

    def ranking_fidelity(self, state7, last) -> dict:
        from .fidelity import FIDELITY_SAMPLES, compare_rankings, oracle_terms

        c, p = self.cfg, self.planner
        n = min(c.samples, FIDELITY_SAMPLES)
        rng = np.random.default_rng([c.seed, self.task.start_step, 0xF1DE])
        std = c.init_std * p.step_std
        acts = p.candidates(np.asarray(last, dtype=np.float64),
                            p.mean + std * coloured_noise(rng, c.noise_beta, (n, *p.mean.shape)))
        if self.sim is None:
            self.sim = PushTSim()
        oracle = oracle_terms(self.model, self.sim, state7, self.cost.z_goal, self.goal_proprio, acts, self.device)
        k = max(1, round(n * c.elites / c.samples))
        return compare_rankings(self.cost.terms(acts), oracle, k)


class OracleCEM:
    """CEM with the simulator as the model (``control.oracle``): validates planner and task set."""

    def __init__(self, prior: ActionPrior, cfg: CEMConfig = CEMConfig(samples=64, elites=8, iterations=4)):
        self.cfg = cfg
        self.planner = CEMPlanner(prior, cfg)
        self.name = "cem[oracle]"

    def reset(self, task, start_frame, goal_frame) -> None:
        self.planner.reset(seed=self.cfg.seed + task.start_step)
        if getattr(self, "cost", None) is not None:
            self.cost.close()
        self.cost = self.make_cost(task, goal_frame)

    def make_cost(self, task, goal_frame):
        """The simulated cost of the candidates (``observe(state [7])``, ``close()``)."""
        return SimulatorCost(task.goal, cost=self.cfg.cost)

    def act(self, frame, state, velocity, last) -> np.ndarray:
        self.cost.observe(np.concatenate([state, velocity]))
        plan, _ = self.planner.plan(self.cost, last)
        return plan[: self.cfg.execute]


class EncoderOracleCEM(OracleCEM):
    """CEM with the simulator as the dynamics and a world model's encoder as the cost
    (``control.oracle.SimulatorLatentCost``): how far the model's latent distance alone gets."""

    def __init__(self, model, prior: ActionPrior, cfg: CEMConfig = CEMConfig(samples=64, elites=8, iterations=4),
                 *, device: str = "cpu"):
        super().__init__(prior, cfg)
        self.model, self.device = model, device
        self.name = f"cem[simulator + {model.name} encoder]"

    def make_cost(self, task, goal_frame):
        return SimulatorLatentCost(self.model, goal_frame, device=self.device)
