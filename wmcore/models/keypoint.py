"""A keypoint world model for PushT: the ``pusht-wm`` embedded model, the one that plans.

Encoder: a small CNN over the frame, spatial soft-argmax (each of ``heatmaps`` feature maps turned
into the expected (x, y) of its softmax, sub-pixel precise), then a linear map and a small MLP to the
latent ``[B, T, 1, 8]``: the agent's position and three keypoints of the T block, in workspace units
centred and scaled (``(x - 256) / 256``). What the latent *means* is a training signal: the encoder is
fitted to the keypoints computed from the simulator's state (``keypoints_from_state``), a privileged
signal used in training only; at test time the model reads frames and actions, nothing else.

Predictor: one model step (``frameskip`` environment steps, action = the block of targets) in the
block's own frame. The block's pose (centre ``c``, angle ``theta``) is fitted to the three keypoints
(2-d Kabsch); the agent and the action targets are expressed relative to it; an MLP predicts the
agent's displacement and the block's rigid motion (dx, dy in the block frame, dtheta); the next
keypoints are the block's body points moved rigidly. Pushing a T looks the same wherever the T lies
and however it is turned, so the predictor learns it once instead of for every pose (an equivariant
architecture, as a CNN is translation-equivariant); its weights are learned from data, it has no
physics coded in.

Why this latent (the encoder-oracle table in its MODEL_CARD.md): with the simulator as the dynamics,
the squared distance of these keypoints plans as well as the true state distance, while the CLS
latent of pusht-lewm reached 6/16 and pixel patches 8/16.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import WMError
from ..protocol import fingerprint as _fingerprint
from .checkpoint import config_from_json, load_model_dir, save_model_dir

__all__ = [
    "CENTRE", "CONFIG_FILE", "FORMAT", "KeypointConfig", "KeypointExtension", "KeypointModel", "KeypointWorldModel", "SCALE",
    "WEIGHTS_FILE", "block_pose", "keypoints_from_state", "load_checkpoint", "load_world_model", "pixels", "save_pretrained",
    "tiny_config",
]

FORMAT = "wmcore-keypoint"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CENTRE, SCALE = 256.0, 256.0  # workspace units -> latent units: (x - CENTRE) / SCALE


@dataclass(frozen=True)
class KeypointConfig:
    """Architecture of a keypoint world model (about 0.2M parameters at the defaults)."""

    name: str = "pusht-wm"
    image_size: int = 96  # frames are resized (area) to this before the encoder
    channels: tuple[int, ...] = (32, 32, 32)  # conv widths; the first conv has stride 2
    heatmaps: int = 16  # soft-argmax maps
    # the T block's body points whose positions are the latent (gym-pusht's body frame: the cross bar
    # spans x in [-60, 60], y in [0, 30]; the stem x in [-15, 15], y in [30, 120])
    body_points: tuple[tuple[float, float], ...] = ((-45.0, 15.0), (45.0, 15.0), (0.0, 105.0))
    frameskip: int = 5
    action_width: int = 2  # per recorded step
    hidden: int = 256
    layers: int = 3
    angle_scale: float = 0.5  # radians per unit of the predictor's dtheta output
    # training settings (not part of the fingerprint)
    rollout_steps: int = 5

    def __post_init__(self) -> None:
        for k in ("image_size", "heatmaps", "frameskip", "action_width", "hidden", "layers"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise WMError(f"KeypointConfig.{k}: expected an int >= 1, found {v!r}")
        if not self.channels or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in self.channels):
            raise WMError(f"KeypointConfig.channels: expected a non-empty list of ints >= 1, found {self.channels!r}")
        pts = self.body_points
        if len(pts) < 2 or any(len(p) != 2 for p in pts):
            raise WMError(f"KeypointConfig.body_points: expected >= 2 points (x, y), found {pts!r}")
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "body_points", tuple((float(x), float(y)) for x, y in pts))

    @property
    def latent_dim(self) -> int:
        return 2 * (1 + len(self.body_points))

    @property
    def action_dim(self) -> int:
        return self.frameskip * self.action_width

    def to_json(self) -> dict:
        d = {"format": FORMAT, "version": 1, **dataclasses.asdict(self)}
        d["channels"] = list(self.channels)
        d["body_points"] = [list(p) for p in self.body_points]
        return d

    @classmethod
    def from_json(cls, d: Any, source: str = CONFIG_FILE, name: str | None = None) -> "KeypointConfig":
        return config_from_json(cls, d, FORMAT, source, name)


def tiny_config(**overrides) -> KeypointConfig:
    """A small KeypointConfig for tests (32 px, narrow)."""
    base = dict(name="keypoint-tiny", image_size=32, channels=(8, 8), heatmaps=4, hidden=32, layers=2)
    return KeypointConfig(**{**base, **overrides})


# --- geometry ----------------------------------------------------------------------------------


def _rot(theta: Tensor) -> Tensor:
    """``[...]`` angles -> rotation matrices ``[..., 2, 2]`` (counter-clockwise, pymunk's convention)."""
    c, s = theta.cos(), theta.sin()
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def keypoints_from_state(states: Tensor, cfg: KeypointConfig) -> Tensor:
    """PushT states ``[..., 5]`` (agent xy, block xy, block angle) -> latents ``[..., latent_dim]``:
    the agent's position and the body points moved by the block's pose, normalised. The training
    target of the encoder (the privileged signal), never read at test time."""
    body = torch.tensor(cfg.body_points, dtype=states.dtype, device=states.device)  # [K, 2]
    r = _rot(states[..., 4])  # [..., 2, 2]
    pts = states[..., None, 2:4] + torch.einsum("...ij,kj->...ki", r, body)  # [..., K, 2]
    out = torch.cat([states[..., None, :2], pts], -2)  # [..., 1 + K, 2]
    return ((out - CENTRE) / SCALE).flatten(-2)


def block_pose(points: Tensor, body: Tensor) -> tuple[Tensor, Tensor]:
    """The rigid pose that best maps ``body`` ``[K, 2]`` onto ``points`` ``[..., K, 2]`` (least squares,
    2-d Kabsch): ``(centre [..., 2], angle [...])``, where centre is where the body points' centroid lands."""
    p = points - points.mean(-2, keepdim=True)
    q = body - body.mean(0)
    cross = (q[:, 0] * p[..., 1] - q[:, 1] * p[..., 0]).sum(-1)
    dot = (q * p).sum(-1).sum(-1)
    return points.mean(-2), torch.atan2(cross, dot)


def pixels(frames: Tensor, size: int) -> Tensor:
    """uint8 frames ``[..., H, W, 3]`` -> ``[N, 3, size, size]`` float in [0, 1] (area resize when shrinking)."""
    x = frames.reshape(-1, *frames.shape[-3:]).permute(0, 3, 1, 2).float() / 255.0
    if x.shape[-2:] != (size, size):
        mode = dict(mode="area") if x.shape[-1] >= size else dict(mode="bilinear", align_corners=False)
        x = F.interpolate(x, size=(size, size), **mode)
    return x


# --- the network -------------------------------------------------------------------------------


class SpatialSoftArgmax(nn.Module):
    """Feature maps ``[B, C, H, W]`` -> the expected (x, y) of each map's softmax ``[B, C, 2]`` in [-1, 1]."""

    def __init__(self, channels: int):
        super().__init__()
        self.log_temperature = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        logits = (x * self.log_temperature.exp()[:, None, None]).flatten(2)
        p = logits.softmax(-1).reshape(b, c, h, w)
        ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)
        xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)
        return torch.stack([(p.sum(2) * xs).sum(-1), (p.sum(3) * ys).sum(-1)], -1)


class KeypointEncoder(nn.Module):
    """Pixels ``[B, 3, S, S]`` float in [0, 1] -> latent ``[B, latent_dim]``."""

    def __init__(self, cfg: KeypointConfig):
        super().__init__()
        layers, c_in = [], 3
        for i, c in enumerate(cfg.channels):
            layers += [nn.Conv2d(c_in, c, 5 if i == 0 else 3, stride=2 if i == 0 else 1, padding=2 if i == 0 else 1),
                       nn.GroupNorm(1, c), nn.GELU()]
            c_in = c
        layers.append(nn.Conv2d(c_in, cfg.heatmaps, 1))
        self.conv = nn.Sequential(*layers)
        self.argmax = SpatialSoftArgmax(cfg.heatmaps)
        n = 2 * cfg.heatmaps
        self.linear = nn.Linear(n, cfg.latent_dim)
        self.mlp = nn.Sequential(nn.Linear(n, 128), nn.GELU(), nn.Linear(128, cfg.latent_dim))

    def forward(self, pix: Tensor) -> Tensor:
        xy = self.argmax(self.conv(pix)).flatten(1)
        return self.linear(xy) + self.mlp(xy)


class BlockFramePredictor(nn.Module):
    """One model step in the block's frame: latent ``[B, latent_dim]`` and action block ``[B, k*A]``
    (absolute targets, workspace units) -> next latent ``[B, latent_dim]``."""

    def __init__(self, cfg: KeypointConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("body", torch.tensor(cfg.body_points), persistent=False)
        d_in = 2 + cfg.action_dim  # the agent and the targets, relative to the block
        mods: list[nn.Module] = []
        for i in range(cfg.layers):
            mods += [nn.Linear(d_in if i == 0 else cfg.hidden, cfg.hidden), nn.GELU()]
        mods.append(nn.Linear(cfg.hidden, 5))  # agent dxy, block dxy (block frame), dtheta
        self.mlp = nn.Sequential(*mods)
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, z: Tensor, actions: Tensor, film: Callable[[int, Tensor], Tensor] | None = None) -> Tensor:
        """``film(j, h)``: an optional modulation of hidden block j's activations ``[B, hidden]`` (after
        its GELU), as the thinker's per-block FiLM; None is the plain predictor (the same operations)."""
        cfg = self.cfg
        pts = z.reshape(*z.shape[:-1], -1, 2) * SCALE + CENTRE  # [B, 1 + K, 2] workspace units
        agent, kps = pts[..., 0, :], pts[..., 1:, :]
        centre, theta = block_pose(kps, self.body)
        r = _rot(theta)  # [B, 2, 2]
        rt = r.transpose(-1, -2)
        targets = actions.reshape(*actions.shape[:-1], cfg.frameskip, cfg.action_width)

        def to_block(x: Tensor) -> Tensor:  # world points [B, M, 2] -> block frame, latent scale
            return torch.einsum("bij,bmj->bmi", rt, x - centre[:, None]) / SCALE

        feats = torch.cat([to_block(agent[:, None]).flatten(1), to_block(targets).flatten(1)], -1)
        if film is None:
            out = self.mlp(feats)
        else:
            out = feats
            for i, m in enumerate(self.mlp):
                out = m(out)
                if isinstance(m, nn.GELU):
                    out = film(i // 2, out)
        move = torch.einsum("bij,bmj->bmi", r, out[:, :4].reshape(-1, 2, 2)) * SCALE  # back to world
        agent2 = agent + move[:, 0]
        centre2 = centre + move[:, 1]
        theta2 = theta + out[:, 4] * cfg.angle_scale
        body = self.body - self.body.mean(0)
        kps2 = centre2[:, None] + torch.einsum("bij,kj->bki", _rot(theta2), body)
        nxt = torch.cat([agent2[:, None], kps2], 1)
        return ((nxt - CENTRE) / SCALE).flatten(1)


class KeypointModel(nn.Module):
    """Encoder + predictor of a keypoint world model."""

    def __init__(self, cfg: KeypointConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = KeypointEncoder(cfg)
        self.predictor = BlockFramePredictor(cfg)

    def embed(self, frames: Tensor) -> Tensor:
        """uint8 frames ``[..., H, W, 3]`` -> latents ``[..., latent_dim]``."""
        lead = frames.shape[:-3]
        return self.encoder(pixels(frames, self.cfg.image_size)).reshape(*lead, -1)


# --- as the harness sees it --------------------------------------------------------------------


class KeypointWorldModel:
    """A frozen keypoint model as a ``wmcore.protocol.WorldModel`` (one token of ``latent_dim``)."""

    tokens_per_frame = 1
    max_context = 1
    chunk = 512  # frames per encoder call

    def __init__(self, model: KeypointModel, name: str | None = None):
        self.model = model.eval().requires_grad_(False)
        self.cfg = model.cfg
        self.name = name or self.cfg.name
        self.action_dim = self.cfg.action_dim
        self.frameskip = self.cfg.frameskip

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "KeypointWorldModel":
        self.model.to(device=device, dtype=dtype)
        return self

    @property
    def _param(self) -> Tensor:
        return self.model.encoder.linear.weight

    def encode(self, frames: Tensor) -> Tensor:
        """uint8 frames ``[B, T, H, W, 3]`` -> latents ``[B, T, 1, latent_dim]`` on the frames' device."""
        if frames.dim() != 5 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
            raise ValueError(f"frames: expected uint8 [B, T, H, W, 3], found {frames.dtype} {tuple(frames.shape)}")
        p = self._param
        b, t = frames.shape[:2]
        flat = frames.flatten(0, 1)
        with torch.inference_mode():
            out = [self.model.embed(flat[i : i + self.chunk].to(p.device)).to(p.dtype)
                   for i in range(0, len(flat), self.chunk)]
            z = torch.cat(out) if out else torch.empty(0, self.cfg.latent_dim, device=p.device, dtype=p.dtype)
        return z.reshape(b, t, 1, -1).to(frames.device)

    def predict(self, context: Tensor, actions: Tensor, states: Tensor | None = None) -> Tensor:
        """context ``[B, Tc, 1, D]``, action blocks ``[B, Tc, A]`` -> next latent ``[B, 1, D]`` (from the last
        frame; states are not read)."""
        self._check(context, actions)
        p = self._param
        with torch.inference_mode():
            out = self.model.predictor(context[:, -1, 0].to(p.device, p.dtype), actions[:, -1].to(p.device, p.dtype))
        return out[:, None].to(context.device, context.dtype)

    def _check(self, context: Tensor, actions: Tensor) -> None:
        d = self.cfg.latent_dim
        if context.dim() != 4 or context.shape[2] != 1 or context.shape[3] != d or context.shape[1] < 1:
            raise ValueError(f"context: expected [B, Tc >= 1, 1, {d}], found {tuple(context.shape)}")
        if actions.dim() != 3 or actions.shape[:2] != context.shape[:2] or actions.shape[2] != self.action_dim:
            raise ValueError(f"actions: expected [B={context.shape[0]}, Tc={context.shape[1]}, A={self.action_dim}], "
                             f"found {tuple(actions.shape)}")

    def fingerprint(self) -> str:
        """sha256 of the weights and the config entries that affect predictions (not the name)."""
        cfg = {k: v for k, v in self.cfg.to_json().items() if k not in ("name", "rollout_steps")}
        return _fingerprint(self.model.state_dict(), cfg)

    def config(self) -> dict:
        return self.cfg.to_json()


class KeypointExtension(KeypointWorldModel):
    """A frozen model made of a keypoint model (``full.base``) and parts trained over it (``full``: an
    ``nn.Module`` with ``cfg``, whose ``to_json()`` holds the base's config under ``base``): the
    refinement and thinker models. Encodes and predicts at the base's path until a subclass adds more."""

    def __init__(self, full: nn.Module, name: str | None = None):
        self.full = full.eval().requires_grad_(False)
        super().__init__(full.base, name=name or full.cfg.name)

    def to(self, device=None, dtype=None) -> "KeypointExtension":
        self.full.to(device=device, dtype=dtype)
        return self

    def fingerprint(self) -> str:
        cfg = {k: v for k, v in self.full.cfg.to_json().items() if k != "name"}
        cfg["base"] = {k: v for k, v in cfg["base"].items() if k not in ("name", "rollout_steps")}
        return _fingerprint(self.full.state_dict(), cfg)

    def config(self) -> dict:
        return self.full.cfg.to_json()


def save_pretrained(model: KeypointModel, directory: str | Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``directory``; refuses if either exists."""
    return save_model_dir(directory, model.state_dict(), model.cfg.to_json(), FORMAT, CONFIG_FILE, WEIGHTS_FILE)


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu", name: str | None = None) -> KeypointModel:
    """A ``KeypointModel`` from ``directory`` (config.json + model.safetensors), strict, in eval mode."""
    model = load_model_dir(directory, FORMAT, lambda d, src: KeypointConfig.from_json(d, src, name=name), KeypointModel,
                           CONFIG_FILE, WEIGHTS_FILE)
    return model.to(device).eval()


def load_world_model(directory: str | Path, device: str | torch.device = "cpu", name: str | None = None) -> KeypointWorldModel:
    """``load_checkpoint`` as a WorldModel (the ``keypoint:DIR`` model spec)."""
    return KeypointWorldModel(load_checkpoint(directory, device), name=name)
