"""An analytic world and world model whose drift is known in closed form.

The world: an image is cut into ``patch x patch`` patches; the latent of a frame is its pixels
scaled to [-1, 1], one token per patch (``N = (H/p)(W/p)``, ``D = 3 p^2``). Between frames every
consecutive pair of latent channels, minus a shared ``offset``, rotates by the same angle
``theta_t = omega + b . a_t`` (a_t the action). Frames are these latents quantised to uint8.

The model knows the world except for an angle error ``delta`` per model step. Because every channel
pair of every token turns by the same angle, the cosine between truth and prediction (offset removed)
is exactly ``cos(angle error)``: open loop after k steps ``cos(k delta)``, closed loop ``cos(delta)``
at every step; with zero actions instead of recorded ones the error is ``k delta - b . sum(a)``.
With offset 0 the raw cosine is that value too; with a large offset the raw cosine of unrelated frames
is high, which is what the chance level and the centred cosine exist to expose.

The model reads only frames of this world (``make_episodes``), not PushT or any other video: its
"encoder" is the world's own pixel layout. Written to an episode directory, they are data for the
command line and the plugin (see ``AnalyticModel.encode``'s error message).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from ..episode import Episode
from ..errors import WMError
from ..protocol import fingerprint as _fingerprint

__all__ = [
    "AnalyticConfig", "AnalyticModel", "expected_open_cosine", "make_episodes", "offset_latent", "parse_spec",
    "patchify", "rotate_pairs", "unpatchify", "world_latents",
]

# How to make data this model can read, for its error message.
_MAKE_EPISODES = (
    "episodes = wmcore.models.analytic.make_episodes(AnalyticConfig(...)), written to a directory with "
    "wmcore.data.episodes.save_episode and write_index (as scripts/behaviour_snapshot.py's analytic_data does), "
    "then --data DIR (pytest: --wm-data DIR)"
)


@dataclass(frozen=True)
class AnalyticConfig:
    """The world's and the model's shared constants (``delta`` is the model's error alone)."""

    height: int = 16
    width: int = 16
    patch: int = 4
    action_dim: int = 2  # recorded action width
    omega: float = 0.1  # drift angle per recorded step with zero action
    gain: tuple[float, ...] = (0.1, -0.05)  # b: angle per unit of each action dimension
    offset: float = 0.0  # shared offset in [0, 0.45]: a constant latent added to every frame
    radius: float = 0.5  # norm bound of each rotating channel pair
    delta: float = 0.05  # the model's angle error per model step
    frameskip: int = 1  # recorded steps per model step

    def __post_init__(self) -> None:
        if self.patch % 2 or self.height % self.patch or self.width % self.patch:
            raise WMError(f"patch must be even and divide the frame size, got {self}")
        if len(self.gain) != self.action_dim:
            raise WMError(f"gain needs {self.action_dim} entries, got {len(self.gain)}")
        if not 0 <= self.offset <= 0.45 or not 0 < self.radius <= 1 - self.offset:
            raise WMError("offset in [0, 0.45] and radius in (0, 1 - offset] keep pixels in range")

    @property
    def tokens(self) -> int:
        return (self.height // self.patch) * (self.width // self.patch)

    @property
    def channels(self) -> int:
        return 3 * self.patch * self.patch


def rotate_pairs(x: Tensor, angle: Tensor) -> Tensor:
    """Rotate each consecutive channel pair of ``x [B, N, D]`` by ``angle [B]`` (radians)."""
    b, n, d = x.shape
    p = x.reshape(b, n, d // 2, 2)
    c, s = angle.cos()[:, None, None], angle.sin()[:, None, None]
    out = torch.stack((c * p[..., 0] - s * p[..., 1], s * p[..., 0] + c * p[..., 1]), -1)
    return out.reshape(b, n, d)


def offset_latent(cfg: AnalyticConfig) -> Tensor:
    """The shared offset ``[N, D]``: alternating +offset/-offset so that its mean pixel is grey."""
    sign = torch.ones(cfg.channels, dtype=torch.float64)
    sign[1::2] = -1
    return (cfg.offset * sign).expand(cfg.tokens, -1).clone()


def patchify(frames: Tensor, patch: int) -> Tensor:
    """uint8 ``[B, T, H, W, 3]`` -> float64 latents ``[B, T, N, D]`` in [-1, 1]."""
    b, t, h, w, _ = frames.shape
    x = frames.double() / 127.5 - 1
    x = x.reshape(b, t, h // patch, patch, w // patch, patch, 3).permute(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(b, t, (h // patch) * (w // patch), patch * patch * 3)


def unpatchify(z: Tensor, cfg: AnalyticConfig) -> Tensor:
    """Latents ``[B, T, N, D]`` -> uint8 frames ``[B, T, H, W, 3]`` (rounded: error <= 1/255)."""
    b, t = z.shape[:2]
    p, gh, gw = cfg.patch, cfg.height // cfg.patch, cfg.width // cfg.patch
    x = z.reshape(b, t, gh, gw, p, p, 3).permute(0, 1, 2, 4, 3, 5, 6).reshape(b, t, cfg.height, cfg.width, 3)
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def world_latents(cfg: AnalyticConfig, episodes: int, steps: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """The exact world: latents ``[B, T+1, N, D]`` (float64) and actions ``[B, T, A]`` (float32).

    Actions are a seeded smooth random walk (so consecutive actions are related, as a robot's are).
    """
    g = torch.Generator().manual_seed(seed)
    n, d = cfg.tokens, cfg.channels
    # each channel pair gets a random norm in [0.3, 1] * radius and a random phase
    r = cfg.radius * (0.3 + 0.7 * torch.rand(episodes, n, d // 2, generator=g, dtype=torch.float64))
    phase = 2 * math.pi * torch.rand(episodes, n, d // 2, generator=g, dtype=torch.float64)
    u = torch.stack((r * phase.cos(), r * phase.sin()), -1).reshape(episodes, n, d)
    steps_noise = torch.randn(episodes, steps, cfg.action_dim, generator=g, dtype=torch.float64)
    # rounded to float32 first: the world must run on exactly the actions that it hands out
    actions = torch.cumsum(0.3 * steps_noise, 1).clamp(-1, 1).float().double()
    gain = torch.tensor(cfg.gain, dtype=torch.float64)
    zs = [u]
    for t in range(steps):
        zs.append(rotate_pairs(zs[-1], cfg.omega + actions[:, t] @ gain))
    z = torch.stack(zs, 1) + offset_latent(cfg)
    return z, actions.float()


def make_episodes(cfg: AnalyticConfig, episodes: int = 8, steps: int = 40, seed: int = 0) -> list[Episode]:
    """Episodes of the analytic world as uint8 frames (the latents, quantised) and actions."""
    z, a = world_latents(cfg, episodes, steps, seed)
    frames = unpatchify(z, cfg)
    return [Episode(frames[i], a[i], fps=10.0, id=f"analytic-{seed}-{i:03d}") for i in range(episodes)]


class AnalyticModel:
    """The world's dynamics with an angle error ``delta`` per model step (see the module docstring).

    Markov: ``predict`` reads only the last context frame. It also implements the incremental
    interface, so the rollout's cached path is exercised by the same known answer.
    """

    tokens_per_frame: int
    max_context = None

    def __init__(self, cfg: AnalyticConfig | None = None, name: str = "analytic") -> None:
        self.cfg = cfg or AnalyticConfig()
        self.name = name
        self.frameskip = self.cfg.frameskip
        self.action_dim = self.cfg.action_dim * self.cfg.frameskip
        self.tokens_per_frame = self.cfg.tokens
        self._offset = offset_latent(self.cfg).float()
        self._gain = torch.tensor(self.cfg.gain, dtype=torch.float64)

    def encode(self, frames: Tensor) -> Tensor:
        """uint8 ``[B, T, H, W, 3]`` (frames of the analytic world) -> float32 latents ``[B, T, N, D]``."""
        c = self.cfg
        if (not isinstance(frames, Tensor) or frames.dim() != 5 or frames.dtype != torch.uint8
                or tuple(frames.shape[2:]) != (c.height, c.width, 3)):
            found = f"{tuple(frames.shape)} {frames.dtype}" if isinstance(frames, Tensor) else type(frames).__name__
            raise WMError(
                f"frames: expected uint8 [B, T, {c.height}, {c.width}, 3], found {found}: model {self.name!r} "
                f"reads only episodes of its own analytic world, not PushT or other videos. Make them: {_MAKE_EPISODES}"
            )
        return patchify(frames, c.patch).float()

    def predict(self, context: Tensor, actions: Tensor, states: Tensor | None = None) -> Tensor:
        """context ``[B, Tc, N, D]``, actions ``[B, Tc, A]`` -> next latent ``[B, N, D]``."""
        return self._advance(context[:, -1], actions[:, -1])

    def start(self, batch: int, window: int | None) -> dict:
        return {"batch": batch, "window": window, "frames": 0}

    def step(self, cache: dict, latent: Tensor, action: Tensor, state: Tensor | None = None) -> tuple[Tensor, dict]:
        """One frame in, the next predicted out: ``[B, N, D]``, ``[B, A]`` -> ``[B, N, D]``."""
        return self._advance(latent, action), {**cache, "frames": cache["frames"] + 1}

    def _advance(self, z: Tensor, action: Tensor) -> Tensor:
        k = self.cfg.frameskip
        block = action.double().reshape(action.shape[0], k, self.cfg.action_dim)
        angle = k * self.cfg.omega + self.cfg.delta + (block @ self._gain).sum(1)
        off = self._offset.to(z)
        return (rotate_pairs((z - off).double(), angle) + off.double()).to(z.dtype)

    def fingerprint(self) -> str:
        return _fingerprint({"offset": self._offset}, asdict(self.cfg))

    def config(self) -> dict:
        return asdict(self.cfg)


def expected_open_cosine(cfg: AnalyticConfig, horizon: int) -> Tensor:
    """Known answer, recorded actions, offset removed: ``cos(k delta)`` for k = 1..H, ``[H]``."""
    return torch.cos(cfg.delta * torch.arange(1, horizon + 1, dtype=torch.float64))


def parse_spec(arg: str) -> AnalyticConfig:
    """``"delta=0.1,offset=0.3,frameskip=2"`` -> AnalyticConfig (empty string = defaults)."""
    kw: dict = {}
    fields = AnalyticConfig.__dataclass_fields__
    for item in filter(None, (s.strip() for s in arg.split(","))):
        key, sep, val = item.partition("=")
        if not sep or key not in fields or key == "gain":
            known = ", ".join(k for k in fields if k != "gain")
            raise WMError(f"analytic model option {item!r}: expected key=value with key one of {known}")
        typ = int if fields[key].type in ("int", int) else float
        try:
            kw[key] = typ(val)
        except ValueError:
            raise WMError(f"analytic model option {key}={val!r}: expected a number") from None
    return AnalyticConfig(**kw)

