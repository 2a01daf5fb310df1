"""PushT episodes from gym-pusht, driven by a seeded smooth exploration policy.

    wmcore make-fixtures pusht --out DIR --episodes N --steps T --seed S [--size PX]

(``generate`` from Python) writes ``DIR/episode_NNN.mp4`` + ``episode_NNN.npz`` + ``index.json`` (format: ``wmcore.data.episodes``).
Needs the ``[sim]`` extra (gym-pusht and its deps; gym-pusht itself installed with ``--no-deps`` so
that the headless OpenCV build is used). Rendering is headless (``SDL_VIDEODRIVER=dummy``).

The environment (gym-pusht 0.1.8): a 512 x 512 workspace, walls at 5 and 506; the agent is a
kinematic disc of radius 15 driven by PD control towards the action, an absolute 2-d target position
in [0, 512]; the T block rests where it is left (pymunk damping 0: a body loses its velocity at
once), so the block moves exactly in the steps in which the agent pushes it. One environment step
is 0.1 s (10 physics substeps); recordings are 10 fps.

Frames are the environment's own ``pixels`` observation (the 512 px canvas resized by gym-pusht) at
``--size`` px, 96 by default: gym-pusht's default and the resolution of the common PushT data sets.
The agent is a disc 30 units wide: 5.6 px at 96 px (7.5 at 128), against 3.75 px at 64 px, where
gym-pusht's bilinear resize of the 512 px canvas leaves about 8 agent pixels per frame, and its
motion of ~8 units per step is 1.5 px at 96 but 1 px at 64. A model that wants 64 px resizes the
96 px frames with area averaging, which gives a cleaner small image than rendering at 64.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import WMError

__all__ = [
    "ACTION_DIM",
    "AGENT_RADIUS",
    "DEFAULT_FRAMESKIP",
    "DEFAULT_SIZE",
    "ENV_ID",
    "FPS",
    "INSTALL_HINT",
    "STATE_DIM",
    "STATE_NAMES",
    "WORKSPACE",
    "ExplorationPolicy",
    "PolicyConfig",
    "block_moved",
    "env_state",
    "generate",
    "make_env",
    "rollout",
    "simulator_versions",
]

ENV_ID = "gym_pusht/PushT-v0"
WORKSPACE = 512.0
FPS = 10.0
ACTION_DIM = 2
STATE_DIM = 5
STATE_NAMES = ["agent_x", "agent_y", "block_x", "block_y", "block_angle"]
DEFAULT_SIZE = 96
DEFAULT_FRAMESKIP = 5
AGENT_RADIUS = 15.0
INSTALL_HINT = (
    "install the simulator: pip install 'gymnasium>=0.29.1,<2' 'pygame>=2.5.2,<2.7' 'pymunk>=6.6,<7' "
    "'shapely>=2.0.3,<3' 'opencv-python-headless>=4.9,<5' && pip install --no-deps gym-pusht==0.1.8 "
    "(or pip install -e '.[sim]' followed by the --no-deps line)"
)


@dataclass(frozen=True)
class PolicyConfig:
    """The exploration policy, in workspace units (the workspace is 512 wide) and environment steps.

    The policy moves a target point (the action) like a particle with momentum towards a goal, so
    that nothing jumps: consecutive actions are at most ``max_speed`` apart and paths curve (velocity
    noise). A fraction ``p_push`` of the goals are pushes: pick a direction, go round the T block
    to just behind it as seen from that direction (``clearance`` off its outline; "approach"), then
    drive through it, aiming ``overshoot`` past its centre of mass with a sideways ``offset`` so
    that pushes also turn it ("push"). The other goals are random points ("wander"), touching the
    block only by chance. Walls: the kinematic agent could squeeze the block through a wall, so a
    push stops (dead) before the block comes within ``safe`` of a wall it heads for, near the walls
    pushes go towards the middle (which keeps the block out of corners, where no push can reach
    it), and nothing but a push may drive into a block that lies near a wall. On a 300-step episode
    the block moves in 44 % of the steps (median of 100 seeds; 10th percentile 33 %) and the agent
    moves ~8 units per step.
    """

    margin: float = 24.0  # keep the target this far from the workspace edge (walls at 5 and 506)
    p_push: float = 0.85  # fraction of goals that are pushes
    speed: tuple[float, float] = (5.0, 14.0)  # cruise speed per goal, units per step (uniform)
    max_speed: float = 18.0
    approach_speed: float = 10.0  # at least this fast on the way round to a push
    gain: float = 0.25  # how fast the velocity turns towards the goal (per step)
    noise: float = 1.5  # std of the velocity noise, units per step
    clearance: float = 8.0  # a push starts this far (plus the agent's radius) behind the block's outline
    overshoot: tuple[float, float] = (40.0, 110.0)  # how far past the block centre a push aims
    offset: float = 30.0  # std of the sideways offset of a push (turns the block)
    safe: float = 85.0  # a push stops when the block centre comes this close to a wall ahead of it
    lookahead: float = 30.0  # ... or will in this many units (the agent lags its target)
    centre: float = 60.0  # within safe + centre of a wall pushes go towards the middle (no corners)
    goal_steps: tuple[int, int] = (15, 45)  # a goal lasts this many steps (a push: at the block)
    give_up: int = 60  # steps after which any goal is given up (a push that never got there)


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.hypot(*v))
    return v / n if n > 1e-6 else np.array([1.0, 0.0])


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    ab = b - a
    t = float(np.clip(np.dot(p - a, ab) / max(float(np.dot(ab, ab)), 1e-9), 0.0, 1.0))
    return float(np.hypot(*(a + t * ab - p)))


def _outline_distance(p: np.ndarray, outline: np.ndarray) -> tuple[float, np.ndarray]:
    """Distance from ``p`` to the T (two convex boxes, vertices ``outline[0:4]``, ``[4:8]``) and the nearest point."""
    best, nearest = math.inf, p
    for box in (outline[0:4], outline[4:8]):
        edges = np.roll(box, -1, axis=0) - box
        cross = edges[:, 0] * (p[1] - box[:, 1]) - edges[:, 1] * (p[0] - box[:, 0])
        if np.all(cross >= 0) or np.all(cross <= 0):
            return 0.0, p.copy()  # inside
        for a, e in zip(box, edges):
            t = float(np.clip(np.dot(p - a, e) / max(float(np.dot(e, e)), 1e-9), 0.0, 1.0))
            q = a + t * e
            dist = float(np.hypot(*(q - p)))
            if dist < best:
                best, nearest = dist, q
    return best, nearest


class ExplorationPolicy:
    """Seeded smooth exploration policy for PushT.

    ``act(com, outline)`` takes the block's centre of mass ``[2]`` and outline vertices ``[K, 2]``
    (world coordinates) and returns the next target ``[2]``.
    """

    def __init__(self, rng: np.random.Generator, start: np.ndarray, config: PolicyConfig = PolicyConfig()):
        self.rng, self.cfg = rng, config
        self.pos = np.asarray(start, dtype=np.float64).copy()
        self.vel = np.zeros(2)
        self.left = 0  # steps left for the current goal (a push's count only while near the block)
        self.age = 0  # steps spent on the current goal
        self.mode = "wander"  # wander | approach | push
        self.point = self.pos.copy()  # wander goal
        self.dir = np.array([1.0, 0.0])  # push direction
        self.aim = np.zeros(2)  # push aim point relative to the block centre
        self.cruise = config.speed[0]
        self.start = self.pos.copy()  # where the current push starts
        self.orbit, self.best, self.stall = 0, math.inf, 0  # going round: direction, progress

    def _towards_middle(self, com: np.ndarray) -> np.ndarray:
        c = self.cfg
        target = self.rng.uniform(c.safe + c.margin, WORKSPACE - c.safe - c.margin, size=2)
        return _unit(target - com)

    def _near_wall(self, com: np.ndarray, within: float | None = None) -> bool:
        within = self.cfg.safe if within is None else within
        return bool(np.any(np.abs(com - WORKSPACE / 2) > WORKSPACE / 2 - within))

    def _blocked(self, com: np.ndarray, d: np.ndarray) -> bool:
        # Near a wall (or about to be) and heading into it: lo/hi per axis bound the block centre.
        lo, hi = self.cfg.safe, WORKSPACE - self.cfg.safe
        p = com + d * self.cfg.lookahead
        return any((p[k] < lo and d[k] < 0) or (p[k] > hi and d[k] > 0) for k in range(2))

    def _start(self, com: np.ndarray, outline: np.ndarray, d: np.ndarray) -> np.ndarray | None:
        """Where a push along ``d`` starts (just behind the outline), or None if it is out of reach."""
        c = self.cfg
        reach = float(np.max((outline - com) @ -d))  # the outline's extent behind the centre
        start = com - d * (reach + AGENT_RADIUS + c.clearance)
        return start if np.all((start >= c.margin) & (start <= WORKSPACE - c.margin)) else None

    def _new_goal(self, com: np.ndarray, outline: np.ndarray) -> None:
        c, r = self.cfg, self.rng
        self.cruise = float(r.uniform(*c.speed))
        self.left = int(r.integers(c.goal_steps[0], c.goal_steps[1] + 1))
        self.age = 0
        if r.random() < c.p_push:
            # The first candidate direction is the way the agent already faces (it drives on through
            # the block); then fresh directions, towards the middle, where the agent first goes round.
            for i in range(16):
                if i == 0:
                    d = _unit(com - self.pos)
                elif i < 5:
                    d = self._towards_middle(com)
                else:  # near a wall or in a corner only some directions are open: along the wall
                    d = np.array([math.cos(a := r.uniform(0, 2 * math.pi)), math.sin(a)])
                start = self._start(com, outline, d)
                outward = self._near_wall(com, c.safe + c.centre) and np.dot(d, WORKSPACE / 2 - com) < 0
                if start is not None and not self._blocked(com, d) and not outward:
                    self.dir, self.start = d, start
                    side = np.array([-d[1], d[0]]) * r.normal(0.0, c.offset)
                    self.aim = d * r.uniform(*c.overshoot) + side
                    facing = i == 0 and np.dot(start - self.pos, d) > 0  # the start lies ahead
                    self.mode = "push" if facing else "approach"
                    self.orbit, self.best, self.stall = 0, math.inf, 0
                    return
        # A wander, or a push with no reachable start (the block is stuck in a corner). Near a wall
        # the way to a wander goal must not cross the block, which would push it into the wall.
        radius = float(np.max(np.hypot(*(outline - com).T))) + AGENT_RADIUS + c.clearance
        for _ in range(16):
            self.mode, self.point = "wander", r.uniform(c.margin, WORKSPACE - c.margin, size=2)
            if not self._near_wall(com) or _segment_distance(com, self.pos, self.point) > radius:
                break

    def act(self, com: np.ndarray, outline: np.ndarray) -> np.ndarray:
        """Advance the target one step and return it (float64 ``[2]``, inside the margins)."""
        c = self.cfg
        com, outline = np.asarray(com, dtype=np.float64), np.asarray(outline, dtype=np.float64)
        if self.left <= 0 or self.age > c.give_up or (self.mode == "push" and self._blocked(com, self.dir)):
            if self.mode == "push":  # stop dead: coasting on would push the block on
                self.vel[:] = 0.0
            self._new_goal(com, outline)
        if self.mode == "approach":
            start = self._start(com, outline, self.dir)
            if start is None:  # the block moved (we bumped it) and the start is out of reach now
                self._new_goal(com, outline)
            else:
                self.start = start
        if self.mode == "approach":
            goal = self.start
            # Go round the block, not through it: while the straight way to the start passes closer
            # to the block's centre than the start itself, circle the block (a goal a little further
            # round, the short way; the other way if the agent makes no headway, as when the block
            # and a wall leave no room to pass; then it gives up).
            r_start = float(np.hypot(*(self.start - com)))
            dist = float(np.hypot(*(self.start - self.pos)))
            self.best, self.stall = (dist, 0) if dist < self.best - 2.0 else (self.best, self.stall + 1)
            if dist < 15.0:
                self.mode = "push"
            elif self.stall > 12 and abs(self.orbit) == 2:
                self.left = 0  # new goal next step
            elif _segment_distance(com, self.pos, self.start) < 0.9 * r_start:
                a_pos = math.atan2(*(self.pos - com)[::-1])
                a_start = math.atan2(*(self.start - com)[::-1])
                turn = (a_start - a_pos + math.pi) % (2 * math.pi) - math.pi
                if self.orbit == 0:
                    self.orbit = 1 if turn >= 0 else -1
                if self.stall > 12:
                    self.orbit, self.best, self.stall = 2 * -self.orbit, dist, 0  # |2|: flipped once
                turn = turn % (2 * math.pi) if self.orbit > 0 else -((-turn) % (2 * math.pi))
                a = a_pos + max(-0.7, min(0.7, turn))
                goal = com + (r_start + 5.0) * np.array([math.cos(a), math.sin(a)])
        if self.mode == "push":
            goal = com + self.aim
        elif self.mode == "wander":
            goal = self.point
        goal = np.clip(goal, c.margin, WORKSPACE - c.margin)
        d = goal - self.pos
        dist = float(np.hypot(*d))
        if dist < 10.0:  # arrived (a push arrives when the agent slid off the block): next goal
            self.left = 0
        cruise = max(self.cruise, c.approach_speed) if self.mode == "approach" else self.cruise
        want = d / max(dist, 1e-6) * min(cruise, dist)  # slow down on arrival
        self.vel += c.gain * (want - self.vel) + self.rng.normal(0.0, c.noise, size=2)
        if self.mode != "push" and self._near_wall(com):
            # Only a push, which stops short of the walls, may drive the block near a wall: the
            # kinematic agent could squeeze it through. Close to the block, drop the velocity
            # towards it (the agent slides round it instead).
            gap, nearest = _outline_distance(self.pos, outline)
            if gap < AGENT_RADIUS + c.clearance:
                u = _unit(nearest - self.pos)
                self.vel -= max(0.0, float(np.dot(self.vel, u))) * u
        speed = float(np.hypot(*self.vel))
        if speed > c.max_speed:
            self.vel *= c.max_speed / speed
        self.pos = self.pos + self.vel
        lo, hi = c.margin, WORKSPACE - c.margin
        for k in range(2):  # stop at the margin instead of sticking to it with a pushing velocity
            if self.pos[k] < lo or self.pos[k] > hi:
                self.pos[k] = min(max(self.pos[k], lo), hi)
                self.vel[k] = 0.0
        self.age += 1
        reach = float(np.max(np.hypot(*(outline - com).T))) + AGENT_RADIUS + c.clearance
        near = np.hypot(*(com - self.pos)) < reach
        self.left -= 1 if self.mode == "wander" or (self.mode == "push" and near) else 0
        return self.pos.copy()


def _import_env():
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # pygame draws off screen; no display needed
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    try:
        import gymnasium as gym
        import gym_pusht  # noqa: F401  (registers gym_pusht/PushT-v0)
    except ImportError as e:
        raise WMError(f"PushT generation needs gym-pusht, which did not import ({e}); {INSTALL_HINT}") from None
    return gym


def make_env(size: int = DEFAULT_SIZE):
    """The unwrapped gym-pusht environment rendering ``size`` x ``size`` RGB pixel observations.

    Unwrapped: gym's TimeLimit (300 steps) would cut episodes and its checkers only add warnings;
    and an episode goes on when the T reaches the goal (``terminated``), since this is recorded
    exploration, not a task.
    """
    if not isinstance(size, int) or size < 16 or size % 2:
        raise WMError(f"render size must be an even number of pixels >= 16 (H.264 needs even sizes), found {size!r}")
    gym = _import_env()
    env = gym.make(ENV_ID, obs_type="pixels", observation_width=size, observation_height=size,
                   render_mode="rgb_array")
    return env.unwrapped


def env_state(env) -> np.ndarray:
    """The environment's 5-d state ``[5]`` (float64), as recorded in episodes: agent xy, block xy (body
    origin), block angle mod 2 pi."""
    a, b = env.agent.position, env.block.position
    return np.array([a.x, a.y, b.x, b.y, env.block.angle % (2 * math.pi)], dtype=np.float64)


def _block_geometry(env) -> tuple[np.ndarray, np.ndarray]:
    """The block's centre of mass ``[2]`` and its outline, the vertices of its two boxes ``[8, 2]``."""
    b = env.block
    com = b.local_to_world(b.center_of_gravity)
    verts = [b.local_to_world(v) for shape in b.shapes for v in shape.get_vertices()]
    return np.array([com.x, com.y]), np.array([[v.x, v.y] for v in verts])


def rollout(seed: int, steps: int, size: int = DEFAULT_SIZE, policy: PolicyConfig = PolicyConfig(), env=None):
    """Run one episode in memory.

    Returns ``(frames uint8 [T+1, size, size, 3], actions float32 [T, 2], states float32 [T+1, 5])``.
    ``seed`` seeds both the environment's reset (initial agent and block pose) and the policy.
    ``env``: one from ``make_env`` to reuse (its size wins over ``size``).
    """
    if steps < 1:
        raise WMError(f"steps must be >= 1, found {steps}")
    own = env is None
    env = make_env(size) if own else env
    try:
        obs, _ = env.reset(seed=int(seed))
        policy_rng = np.random.default_rng([int(seed), 0x9057])  # independent of the env's stream
        pi = ExplorationPolicy(policy_rng, start=env_state(env)[:2], config=policy)
        frames = np.empty((steps + 1, *obs.shape), dtype=np.uint8)
        actions = np.empty((steps, ACTION_DIM), dtype=np.float32)  # float32 as stored: replayable
        states = np.empty((steps + 1, STATE_DIM), dtype=np.float64)
        frames[0], states[0] = obs, env_state(env)
        for t in range(steps):
            actions[t] = pi.act(*_block_geometry(env))
            obs, *_ = env.step(actions[t].astype(np.float64))
            frames[t + 1], states[t + 1] = obs, env_state(env)
    finally:
        if own:
            env.close()
    return frames, actions, states.astype(np.float32)


def block_moved(states: np.ndarray, eps: float = 0.05) -> np.ndarray:
    """bool ``[T]``: did the block move (by > eps units, or > eps/100 rad) in each transition of ``states [T+1, 5]``?"""
    s = np.asarray(states, dtype=np.float64)
    dxy = np.hypot(*(s[1:, 2:4] - s[:-1, 2:4]).T)
    dth = np.abs((s[1:, 4] - s[:-1, 4] + math.pi) % (2 * math.pi) - math.pi)
    return (dxy > eps) | (dth > eps / 100)


def simulator_versions() -> dict[str, str]:
    """The installed versions of the simulator's packages (recorded in a generated set's index, so a
    later run knows whether it can reproduce the set)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("gym-pusht", "gymnasium", "pymunk", "pygame", "shapely", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _progress(total: int, enabled: bool):
    """tqdm over episodes if it is installed, else a line every ~10 % (or nothing)."""
    if not enabled:
        return None
    try:
        from tqdm import tqdm

        return tqdm(total=total, unit="ep", desc="pusht", file=sys.stderr)
    except ImportError:
        return None


def generate(
    out_dir: str | os.PathLike,
    episodes: int,
    steps: int,
    seed: int,
    render_size: int = DEFAULT_SIZE,
    policy: PolicyConfig = PolicyConfig(),
    crf: int | None = None,
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Generate ``episodes`` PushT episodes of ``steps`` environment steps into a fresh ``out_dir``.

    Episode i is seeded with ``seed + i`` (environment reset and policy), so sets made with seeds
    further apart than their episode counts share no episode. Writes the format of
    ``wmcore.data.episodes`` and returns the index document (with a ``summary``: contact fraction,
    frames per second of generation, bytes per episode).
    """
    from ..episode import Episode
    from ..video import read_video
    from .episodes import CRF, read_index, save_episode, video_format, write_index

    import torch

    if not isinstance(episodes, int) or episodes < 1:
        raise WMError(f"episodes must be an int >= 1, found {episodes!r}")
    if not isinstance(steps, int) or steps < 1:
        raise WMError(f"steps must be an int >= 1, found {steps!r}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise WMError(f"{out}: exists and is not empty; generate into a fresh directory (nothing is overwritten)")
    crf = CRF if crf is None else crf
    env = make_env(render_size)
    bar = _progress(episodes, progress)
    entries, moved, t_sim, t_io = [], [], 0.0, 0.0
    try:
        for i in range(episodes):
            t0 = time.perf_counter()
            frames, actions, states = rollout(seed + i, steps, render_size, policy, env=env)
            t1 = time.perf_counter()
            m = block_moved(states)
            moved.append(m)
            ep = Episode(torch.from_numpy(frames), torch.from_numpy(actions), torch.from_numpy(states), FPS,
                         id=f"pusht/{i}")
            extra = {"contact_fraction": round(float(m.mean()), 4)}
            entries.append(save_episode(out, i, ep, seed=seed + i, extra=extra, crf=crf))
            if i == 0:  # what the codec loses, measured on the first episode
                decoded = read_video(out / entries[0]["video"]).numpy().astype(np.int16)
                err = np.abs(decoded - frames.astype(np.int16))
                codec = {**video_format(out / entries[0]["video"]), "crf": crf,
                         "mean_abs_error": round(float(err.mean()), 4), "max_abs_error": int(err.max())}
            t_sim += t1 - t0
            t_io += time.perf_counter() - t1
            if bar is not None:
                bar.update(1)
            elif progress and (i + 1) % max(1, episodes // 10) == 0:
                print(f"pusht: {i + 1}/{episodes} episodes", file=sys.stderr, flush=True)
    finally:
        env.close()
        if bar is not None:
            bar.close()
    frames_total = episodes * (steps + 1)
    nbytes = sum(e["bytes"]["video"] + e["bytes"]["data"] for e in entries)
    meta = {
        "source": "gym-pusht",
        "env": ENV_ID,
        "fps": FPS,
        "height": render_size,
        "width": render_size,
        "steps": steps,
        "seed": seed,
        "episode_seed": "seed + episode number (environment reset and policy)",
        "frameskip": DEFAULT_FRAMESKIP,
        "frameskip_note": (
            f"models step {DEFAULT_FRAMESKIP} environment steps at a time; a model step's action is its "
            f"{DEFAULT_FRAMESKIP} recorded actions concatenated ({DEFAULT_FRAMESKIP * ACTION_DIM}-d)"
        ),
        "actions": {
            "dim": ACTION_DIM,
            "names": ["target_x", "target_y"],
            "units": "workspace units, 0..512 (the image spans the workspace: pixel = unit * size / 512; "
            "x right, y down)",
            "meaning": "absolute target position of the agent (PD-controlled towards it); actions[t] leads "
            "from frame t to t+1",
        },
        "states": {
            "dim": STATE_DIM,
            "names": STATE_NAMES,
            "units": "workspace units 0..512 for positions; block_angle in radians in [0, 2 pi)",
            "meaning": "gym-pusht's 5-d state observation: agent centre, block body origin (the middle of the "
            "T's top edge, not its centre of mass), block angle; states[t] is the state shown in frame t",
        },
        "video": codec,
        "generator": {
            "command": command or f"wmcore make-fixtures pusht --out {out} --episodes {episodes} --steps {steps} "
            f"--seed {seed} --size {render_size}",
            "policy": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(policy).items()},
            "versions": simulator_versions(),
        },
        "summary": {
            "episodes": episodes,
            "contact_fraction": round(float(np.concatenate(moved).mean()), 4),
            "generation_frames_per_s": round(frames_total / max(t_sim + t_io, 1e-9), 1),
            "simulation_frames_per_s": round(frames_total / max(t_sim, 1e-9), 1),
            "bytes": nbytes,
            "bytes_per_episode": round(nbytes / episodes),
        },
    }
    write_index(out, meta, entries)
    return read_index(out)
