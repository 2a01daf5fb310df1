"""Task sets: (start, goal) pairs cut from recorded episodes, for planning and policies.

A task starts at a recorded state s_t and asks for the recorded state s_{t+k} (``goal_offset`` k,
25 environment steps by default) within a ``budget`` of environment steps (50). Only tasks in which
the block must move are kept: its position changes by more than the success tolerance (20 units)
or its angle by more than pi/9 between start and goal; otherwise "stay" would succeed trivially.
Selection is seeded: all valid starts of all episodes (every ``stride`` steps) are shuffled by
``seed`` and taken in that order, at most ``per_episode`` per episode, until ``count`` are chosen.

Frames are not stored: the simulator renders start and goal bit-exactly from their states
(``control.sim.pusht.PushTSim.reset_to``). A task set is JSON (``FORMAT``, ``VERSION``) and records the
episodes' data sha256 and the selection parameters, so it can be rebuilt and checked.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..episode import Episode, content_sha256
from ..errors import WMError
from ..fsio import read_versioned, write_new
from .sim.pusht import ANGLE_TOL, POSITION_TOL, angle_error

__all__ = ["FORMAT", "VERSION", "Task", "TaskSet", "TaskSpec", "build", "load"]

FORMAT = "wmcore.tasks"
VERSION = 1


@dataclass(frozen=True)
class TaskSpec:
    """How a task set is cut from episodes (all in environment steps)."""

    count: int = 64
    goal_offset: int = 25
    budget: int = 50
    seed: int = 0
    stride: int = 5
    per_episode: int = 2
    start_min: int = 10  # the episodes begin with the agent at rest: skip the first second

    def __post_init__(self) -> None:
        for k in ("count", "goal_offset", "budget", "stride", "per_episode"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise WMError(f"task spec {k}: expected an int >= 1, found {v!r}")
        if isinstance(self.start_min, bool) or not isinstance(self.start_min, int) or self.start_min < 0:
            raise WMError(f"task spec start_min: expected an int >= 0, found {self.start_min!r}")


@dataclass(frozen=True)
class Task:
    """One task: ``start``/``goal`` states ``[5]`` (agent xy, block xy, block angle) taken from episode
    ``episode`` at steps ``start_step`` and ``goal_step``; at most ``budget`` environment steps."""

    id: str
    episode: str
    start_step: int
    goal_step: int
    start: list[float]
    goal: list[float]
    budget: int
    # the recorded actions from start to goal: the demonstration (for the energy landscape and the
    # imitation baselines), never shown to a planner
    actions: list[list[float]] = field(default_factory=list)


@dataclass(frozen=True)
class TaskSet:
    tasks: list[Task]
    spec: TaskSpec
    data: dict

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "spec": asdict(self.spec), "data": self.data,
                "tasks": [asdict(t) for t in self.tasks]}

    def save(self, path: str | os.PathLike) -> Path:
        return write_new(path, json.dumps(self.to_dict(), indent=1).encode())

    def subset(self, n: int | None) -> "TaskSet":
        """The first ``n`` tasks (the selection order is already seeded and shuffled)."""
        return self if n is None else TaskSet(self.tasks[:n], self.spec, self.data)


def block_must_move(start, goal) -> bool:
    s, g = np.asarray(start, dtype=np.float64), np.asarray(goal, dtype=np.float64)
    return bool(np.hypot(*(g[2:4] - s[2:4])) > POSITION_TOL or angle_error(s[4], g[4]) > ANGLE_TOL)


def build(episodes: Sequence[Episode], spec: TaskSpec = TaskSpec(), data_id: str = "episodes") -> TaskSet:
    """A task set cut from ``episodes`` (which need recorded states) by ``spec``."""
    if not episodes:
        raise WMError("no episodes to cut tasks from")
    k = spec.goal_offset
    candidates = []
    for e in episodes:
        if e.states is None:
            raise WMError(f"episode {e.id!r} has no recorded states: tasks need the simulator state at start "
                          "and goal (generate the data with wmcore make-fixtures pusht, which records them)")
        if e.states.shape[1] != 5:
            raise WMError(f"episode {e.id!r}: states have {e.states.shape[1]} dimensions; PushT tasks need "
                          "the 5-d state (agent xy, block xy, block angle)")
        s = e.states.double().numpy()
        for t in range(spec.start_min, e.steps - k + 1, spec.stride):
            if block_must_move(s[t], s[t + k]):
                candidates.append((e, t))
    if not candidates:
        longest = max(e.steps for e in episodes)
        raise WMError(f"no task found: the goal offset {k} needs episodes longer than start_min + {k} steps "
                      f"(longest: {longest}) in which the block moves by more than the success tolerance")
    order = np.random.default_rng(spec.seed).permutation(len(candidates))
    used: dict[str, int] = {}
    tasks = []
    for i in order:
        e, t = candidates[i]
        if used.get(e.id, 0) >= spec.per_episode:
            continue
        used[e.id] = used.get(e.id, 0) + 1
        s = e.states.double()
        tasks.append(Task(
            id=f"{e.id}@{t}", episode=e.id, start_step=t, goal_step=t + k, start=s[t].tolist(),
            goal=s[t + k].tolist(), budget=spec.budget, actions=e.actions[t : t + k].double().tolist(),
        ))
        if len(tasks) == spec.count:
            break
    data = {"id": data_id, "sha256": content_sha256(*(x for e in episodes for x in (e.actions, e.states))),
            "episodes": len(episodes), "candidates": len(candidates)}
    return TaskSet(tasks, spec, data)


def load(path: str | os.PathLike) -> TaskSet:
    """A task set saved by ``TaskSet.save``."""
    d = read_versioned(path, FORMAT, VERSION, "task set",
                       "was the task file truncated? wmcore plan without --tasks cuts a new one")
    try:
        tasks = [Task(**t) for t in d["tasks"]]
        spec = TaskSpec(**d["spec"])
    except (KeyError, TypeError) as e:
        raise WMError(f"{path}: malformed task set ({e}); rebuild it") from None
    for t in tasks:
        if len(t.start) != 5 or len(t.goal) != 5 or not all(map(math.isfinite, [*t.start, *t.goal])):
            raise WMError(f"{path}: task {t.id!r}: start and goal must be finite 5-d PushT states")
    return TaskSet(tasks, spec, d.get("data", {}))
