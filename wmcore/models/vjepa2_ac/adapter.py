"""The V-JEPA 2-AC WorldModel adapter: a frozen ``ACPredictor`` (and optionally an encoder) as a wmcore
WorldModel, with the exact KV-cached rollout.

It follows the official planning code (``notebooks/utils/world_model_wrapper.py``,
``app/vjepa_droid/train.py``): each frame is fed to the encoder as a 2-frame tubelet of itself, the
encoder output and every prediction get a layer norm over channels without affine
(``F.layer_norm(x, (D,))``, eps 1e-5, per token; ``normalize_reps=True``).

Actions and states go through a codec (``ACCodec``), given to the adapter: how a model step's block of
``frameskip`` recorded actions becomes the predictor's action token, how the data set's states become
its state token, how a state propagates over an action block (open loop reads no recorded state after
the context), and how the predictor's output becomes the next latent. The official model's is
``PoseCodec``: 7-d end-effector pose deltas, composed over the block into one delta
(``compose_pose_deltas``), the 7-d pose as the state, propagated by the official ``compute_new_pose``.
``wmcore.models.ac_tiny`` gives its own for PushT's position targets.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import WMError
from ...protocol import fingerprint as _fingerprint
from ...video import IMAGENET_MEAN, IMAGENET_STD
from .config import ACPredictorConfig
from .convert import VJEPA2VideoEncoder
from .poses import POSE_DIM, compose_pose_deltas, compute_new_pose
from .predictor import ACPredictor, KVCache

__all__ = ["ACCodec", "ACRolloutCache", "PoseCodec", "VJEPA2ACWorldModel", "ac_preprocess", "shape_of"]


def ac_preprocess(frames: Tensor, size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Tensor:
    """uint8 frames ``[..., H, W, 3]`` -> float32 ``[..., 3, size, size]`` as the official DROID
    evaluation transform does it (``app/vjepa_droid/transforms.py`` with scale = ratio = 1): the central
    square of side min(H, W), bilinearly resized (no antialiasing) to ``size``, then
    (x - 255 mean) / (255 std) on 0..255 values. (Unlike V-JEPA 2's classifier recipe, there is no
    resize to 292 and crop.) Training (``wmcore.train``) and evaluation both call it."""
    if not isinstance(frames, Tensor) or frames.dtype != torch.uint8 or frames.dim() < 3 or frames.shape[-1] != 3:
        found = f"{frames.dtype} {tuple(frames.shape)}" if isinstance(frames, Tensor) else type(frames).__name__
        raise WMError(f"frames: expected uint8 RGB [..., H, W, 3], found {found}")
    *lead, h, w, _ = frames.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = frames.reshape(-1, h, w, 3)[:, top:top + side, left:left + side].permute(0, 3, 1, 2).float()
    if side != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(3, 1, 1) * 255
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(3, 1, 1) * 255
    return ((x - m) / s).reshape(*lead, 3, size, size)


def shape_of(x: Any) -> str:
    """A tensor's shape (or a non-tensor's type name), for error messages."""
    return str(tuple(x.shape)) if isinstance(x, Tensor) else type(x).__name__


# --------------------------------------------------------------------------------------------------
# action/state codecs


@runtime_checkable
class ACCodec(Protocol):
    """How ``VJEPA2ACWorldModel`` turns the caller's actions and states into the predictor's action and
    state tokens ``[..., A]`` (A = the predictor's ``action_embed_dim``), and its output into a latent.

    The adapter owns ``frameskip`` f; the codec sees one model step's action as a block
    ``[..., f, action_width]`` of recorded actions. ``state_dim``: the data-set state columns it reads
    (the caller's states are at least that wide).
    """

    action_width: int
    state_dim: int

    def check(self, cfg: ACPredictorConfig, frameskip: int) -> None:
        """WMError if a predictor of ``cfg`` cannot take this codec's tokens with this frameskip."""

    def describe_actions(self, frameskip: int) -> str:
        """What an action block is, for error messages ("" when plain)."""

    def actions(self, blocks: Tensor) -> Tensor:
        """Action blocks ``[..., f, action_width]`` -> action tokens ``[..., A]``."""

    def states(self, states: Tensor | None, b: int, t: int, model: str) -> Tensor:
        """The caller's states ``[B, T, S]`` -> state tokens ``[B, T, A]``; WMError naming ``model``
        when they are missing or do not fit."""

    def check_state(self, state: Tensor, model: str) -> None:
        """WMError unless ``state`` ``[B, S]`` is a state ``propagate`` takes."""

    def propagate(self, state: Tensor, blocks: Tensor) -> Tensor:
        """state ``[B, S]``, action block ``[B, f, action_width]`` -> the state after the block ``[B, S]``."""

    def output(self, z: Tensor, last: Tensor) -> Tensor:
        """The predictor's output for the next frame ``[B, N, D]`` and the last context latent
        ``[B, N, D]`` -> the next latent before the layer norm ``[B, N, D]``."""

    def config(self) -> dict:
        """What the codec adds to the model's ``config()`` and fingerprint."""


@dataclass(frozen=True)
class PoseCodec:
    """The official convention: actions are DROID end-effector pose deltas ``[x, y, z, roll, pitch, yaw,
    gripper]``, f of them composed into the one delta the predictor reads; the state is the 7-d pose
    itself, propagated by ``compute_new_pose``; the prediction is the predictor's output.

    ``width``: the predictor's ``action_embed_dim``. Another width than 7 passes actions and states
    through unchanged, with frameskip 1 and no propagation (poses are 7-d)."""

    width: int = POSE_DIM

    @property
    def action_width(self) -> int:
        return self.width

    @property
    def state_dim(self) -> int:
        return self.width

    def check(self, cfg: ACPredictorConfig, frameskip: int) -> None:
        if frameskip > 1 and cfg.action_embed_dim != POSE_DIM:
            raise WMError(
                f"VJEPA2ACWorldModel: frameskip {frameskip} composes 7-d pose deltas; this predictor takes "
                f"{cfg.action_embed_dim}-d actions"
            )
        if cfg.action_embed_dim != self.width:
            raise WMError(f"PoseCodec: width {self.width} != the predictor's action_embed_dim {cfg.action_embed_dim}")

    def describe_actions(self, frameskip: int) -> str:
        return f"{frameskip} x 7-d pose deltas" if frameskip > 1 else ""

    def actions(self, blocks: Tensor) -> Tensor:
        # one delta is passed as it is: composing would round it through a rotation
        return blocks[..., 0, :] if blocks.shape[-2] == 1 else compose_pose_deltas(blocks)

    def states(self, states: Tensor | None, b: int, t: int, model: str) -> Tensor:
        if states is None:
            raise WMError(
                f"states: model {model!r} reads the end-effector state [x, y, z, roll, pitch, yaw, gripper] "
                "of every context frame; none were given (pass states, or use a dataset that records them)"
            )
        if not isinstance(states, Tensor) or states.dim() != 3 or tuple(states.shape) != (b, t, self.width):
            raise WMError(f"states: expected [B={b}, Tc={t}, {self.width}], found {shape_of(states)}")
        return states

    def check_state(self, state: Tensor, model: str) -> None:
        if self.width != POSE_DIM:
            raise WMError(f"propagate_state: defined for 7-d poses, this predictor takes {self.width}-d states")
        if not isinstance(state, Tensor) or state.dim() != 2 or state.shape[1] != POSE_DIM:
            raise WMError(f"state: expected [B, 7] (x, y, z, roll, pitch, yaw, gripper), found {shape_of(state)}")

    def propagate(self, state: Tensor, blocks: Tensor) -> Tensor:
        return compute_new_pose(state, self.actions(blocks))

    def output(self, z: Tensor, last: Tensor) -> Tensor:
        return z

    def config(self) -> dict:
        return {}


# --------------------------------------------------------------------------------------------------
# the WorldModel adapter


@dataclass
class ACRolloutCache:
    """What ``VJEPA2ACWorldModel.step`` carries: the predictor's KV cache and, for re-encoding when
    the window slides, the frames in it (latent ``[B, N, D]``, action token ``[B, A]``, state token ``[B, A]``)."""

    window: int
    kv: KVCache
    frames: list[tuple[Tensor, Tensor, Tensor]] = dataclasses.field(default_factory=list)


class VJEPA2ACWorldModel:
    """A frozen V-JEPA 2-AC predictor (and optionally its encoder) as a ``wmcore`` WorldModel.

    ``encoder``: any callable taking clips ``[B', 3, tubelet_size, S, S]`` (the official video ViT's
    layout; each frame repeated as a tubelet) and returning ``[B', N, D]``, e.g. ``VJEPA2VideoEncoder``
    (transformers' VJEPA2Model); None = predict only.
    ``frameskip`` f: one model step is f recorded steps; its action ``[f * codec.action_width]`` is
    the f recorded actions, concatenated, which ``codec`` turns into the predictor's action token (the
    default ``PoseCodec``: f pose deltas composed into one).
    ``codec``: how actions and states are read (``ACCodec``; default ``PoseCodec`` of the predictor's width).
    ``compile``: ``torch.compile`` the predictor's blocks (dynamic shapes: the cached keys grow every
    step) and a module encoder, in place. Off by default: it pays on GPUs, its first calls are slow,
    and the numbers differ from eager ones by rounding only.

    Precision: whatever ``to(device, dtype)`` sets (float32 on CPU; bfloat16 on GPUs). Attention is
    ``scaled_dot_product_attention`` with the block-causal mask as a boolean mask (no mask for a single
    appended frame), in the predictor and, through transformers' "sdpa" implementation, in the encoder.
    """

    def __init__(
        self,
        predictor: ACPredictor,
        encoder: Callable[[Tensor], Tensor] | None = None,
        *,
        name: str = "vjepa2-ac",
        frameskip: int = 1,
        codec: ACCodec | None = None,
        normalize_reps: bool = True,
        compile: bool = False,
    ):
        cfg = predictor.config
        if cfg.use_extrinsics:
            raise WMError(
                "VJEPA2ACWorldModel: a predictor with use_extrinsics=True needs camera extrinsics, which the "
                "WorldModel protocol does not carry (the released model has use_extrinsics=False)"
            )
        if isinstance(frameskip, bool) or not isinstance(frameskip, int) or frameskip < 1:
            raise WMError(f"VJEPA2ACWorldModel: frameskip must be an int >= 1, found {frameskip!r}")
        self.codec = PoseCodec(cfg.action_embed_dim) if codec is None else codec
        self.codec.check(cfg, frameskip)
        self.predictor = predictor.eval().requires_grad_(False)
        self.encoder = encoder
        if isinstance(encoder, nn.Module):
            encoder.eval().requires_grad_(False)
        self.cfg = cfg
        self.name = name
        self.frameskip = frameskip
        self.normalize_reps = normalize_reps
        self.action_dim = self.codec.action_width * frameskip
        self.state_dim = self.codec.state_dim
        self.tokens_per_frame = cfg.tokens_per_frame
        self.max_context = cfg.max_frames
        self.compiled = bool(compile)
        if compile:
            for blk in self.predictor.predictor_blocks:
                blk.compile(dynamic=True)
            if isinstance(encoder, nn.Module):
                encoder.compile()

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "VJEPA2ACWorldModel":
        self.predictor.to(device=device, dtype=dtype)
        if isinstance(self.encoder, nn.Module):
            self.encoder.to(device=device, dtype=dtype)
        return self

    @property
    def _param(self) -> Tensor:
        return self.predictor.predictor_embed.weight

    def _norm(self, z: Tensor) -> Tensor:
        return F.layer_norm(z, (z.shape[-1],)) if self.normalize_reps else z

    # -- WorldModel

    def encode(self, frames: Tensor, chunk: int = 16) -> Tensor:
        """uint8 frames ``[B, T, H, W, 3]`` -> latents ``[B, T, N, D]`` (layer-normed), on the frames' device."""
        if self.encoder is None:
            raise WMError(f"model {self.name!r}: no encoder was given, so it cannot encode frames; pass latents")
        if not isinstance(frames, Tensor) or frames.dim() != 5:
            found = tuple(frames.shape) if isinstance(frames, Tensor) else type(frames).__name__
            raise WMError(f"frames: expected uint8 [B, T, H, W, 3], found {found}")
        b, t = frames.shape[:2]
        s, n, d = self.cfg.img_size[0], self.tokens_per_frame, self.cfg.embed_dim
        if self.cfg.img_size[0] != self.cfg.img_size[1]:
            raise WMError(
                f"encode: the official transform crops squares; this predictor has img_size {self.cfg.img_size}"
            )
        p = self._param
        if isinstance(self.encoder, nn.Module):
            p = next(iter(self.encoder.parameters()), p)
        out = []
        with torch.inference_mode():
            pix = ac_preprocess(frames, s).flatten(0, 1)  # [B*T, 3, S, S]
            for i in range(0, len(pix), chunk):
                clip = pix[i:i + chunk].to(p.device, p.dtype).unsqueeze(2).repeat(1, 1, self.cfg.tubelet_size, 1, 1)
                h = self.encoder(clip)
                if not isinstance(h, Tensor) or tuple(h.shape) != (len(clip), n, d):
                    found = tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__
                    raise WMError(
                        f"encoder: expected output [{len(clip)}, {n}, {d}] for {len(clip)} clips, found {found}"
                    )
                out.append(self._norm(h))
        return torch.cat(out).reshape(b, t, n, d).to(frames.device)

    def predict(self, context: Tensor, actions: Tensor, states: Tensor | None = None) -> Tensor:
        """context ``[B, Tc, N, D]``, actions ``[B, Tc, action_dim]``, states ``[B, Tc, S]`` (read by the
        codec) -> ``[B, N, D]`` (full recompute over the Tc frames, positions 0..Tc-1; layer-normed)."""
        x, a, s = self._check(context, actions, states)
        with torch.inference_mode():
            z = self.predictor(x.flatten(1, 2), a, s)[:, -self.tokens_per_frame:]
            z = self._output(z, x[:, -1])
        return z.to(context.device, context.dtype)

    def start(self, batch: int, window: int | None) -> ACRolloutCache:
        """An empty rollout cache keeping at most ``window`` frames (None: ``max_context``)."""
        w = self.max_context if window is None else window
        if not 1 <= w <= self.max_context:
            raise WMError(f"window: expected 1..{self.max_context} frames (max_context) or None, found {window}")
        return ACRolloutCache(window=w, kv=self.predictor.new_cache(w))

    def step(
        self, cache: ACRolloutCache, latent: Tensor, action: Tensor, state: Tensor | None = None
    ) -> tuple[Tensor, ACRolloutCache]:
        """Append frame latent ``[B, N, D]`` with its action ``[B, action_dim]`` and state ``[B, S]``; return
        the next latent ``[B, N, D]`` (= ``predict`` on the last ``window`` frames) and the cache.

        Costs one frame's tokens while the window fills; once it is full, the window is re-encoded from
        position 0 (exactness needs it: dropping the oldest frame changes every later frame's states)."""
        if not isinstance(cache, ACRolloutCache):
            raise WMError(f"cache: expected the ACRolloutCache from start(), found {type(cache).__name__}")
        x, a, s = self._check(latent[:, None], action[:, None], None if state is None else state[:, None])
        cache.frames.append((x[:, 0], a[:, 0], s[:, 0]))
        with torch.inference_mode():
            if len(cache.frames) > cache.window:
                del cache.frames[0]
                cache.kv.reset()
                lat, act, st = (torch.stack(v, 1) for v in zip(*cache.frames))
                z = self.predictor.forward_frames(lat.flatten(1, 2), act, st, cache=cache.kv)
            else:
                z = self.predictor.forward_frames(x.flatten(1, 2), a, s, cache=cache.kv)
            z = self._output(z[:, -self.tokens_per_frame:], x[:, 0])
        return z.to(latent.device, latent.dtype), cache

    def propagate_state(self, state: Tensor, action: Tensor) -> Tensor:
        """state ``[B, S]``, action ``[B, action_dim]`` -> the state after the action ``[B, S]`` (the
        codec's rule; ``PoseCodec``: the official ``compute_new_pose``)."""
        self.codec.check_state(state, self.name)
        self._check_action_width(action, "action")
        return self.codec.propagate(state, self._blocks(action))

    def fingerprint(self) -> str:
        """sha256 of the predictor's (and a module encoder's) weights and of what shapes predictions."""
        state = {f"predictor.{k}": v for k, v in self.predictor.state_dict().items()}
        config: dict[str, Any] = {"predictor": self.cfg.to_json(), "frameskip": self.frameskip,
                                  "normalize_reps": self.normalize_reps, **self.codec.config()}
        if isinstance(self.encoder, nn.Module):
            state.update({f"encoder.{k}": v for k, v in self.encoder.state_dict().items()})
            if isinstance(self.encoder, VJEPA2VideoEncoder):  # what the weights do not say (heads, image size)
                config["encoder"] = self.encoder.describe()
        elif self.encoder is not None:
            config["encoder"] = f"{type(self.encoder).__module__}.{type(self.encoder).__qualname__}"
        return _fingerprint(state, config)

    def config(self) -> dict:
        d = {"name": self.name, "frameskip": self.frameskip, "normalize_reps": self.normalize_reps,
             "predictor": self.cfg.to_json(), "compile": self.compiled, **self.codec.config()}
        if isinstance(self.encoder, VJEPA2VideoEncoder):
            d["encoder"] = self.encoder.describe()
        elif self.encoder is not None:
            d["encoder"] = f"{type(self.encoder).__module__}.{type(self.encoder).__qualname__}"
        return d

    def _output(self, z: Tensor, last: Tensor) -> Tensor:
        """The predicted latent ``[B, N, D]`` from the predictor's output ``z [B, N, D]`` for the frame
        after ``last [B, N, D]`` (the codec's, layer-normed)."""
        return self._norm(self.codec.output(z, last))

    # -- checks

    def _blocks(self, a: Tensor) -> Tensor:
        """Actions ``[..., action_dim]`` -> blocks of recorded actions ``[..., frameskip, action_width]``."""
        return a.unflatten(-1, (self.frameskip, self.codec.action_width))

    def _check_action_width(self, a: Tensor, name: str) -> None:
        if not isinstance(a, Tensor) or a.shape[-1:] != (self.action_dim,):
            what = self.codec.describe_actions(self.frameskip)
            hint = f" ({what})" if what else ""
            raise WMError(
                f"{name}: model {self.name!r} takes action_dim {self.action_dim}{hint}, found shape {shape_of(a)}"
            )

    def _check(self, context: Tensor, actions: Tensor, states: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        n, d = self.tokens_per_frame, self.cfg.embed_dim
        ok = isinstance(context, Tensor) and context.dim() == 4 and tuple(context.shape[2:]) == (n, d)
        if not ok or not context.shape[1]:
            raise WMError(f"context: expected [B, Tc >= 1, {n}, {d}], found {shape_of(context)}")
        b, t = context.shape[:2]
        if t > self.max_context:
            raise WMError(
                f"context: {t} frames exceed model {self.name!r}'s max_context {self.max_context} (the official "
                "frame-causal mask covers num_frames // tubelet_size frames); pass a window <= max_context"
            )
        self._check_action_width(actions, "actions")
        if actions.dim() != 3 or tuple(actions.shape[:2]) != (b, t):
            raise WMError(f"actions: expected [B={b}, Tc={t}, {self.action_dim}], found {shape_of(actions)}")
        p = self._param
        return (context.to(p.device, p.dtype), self.codec.actions(self._blocks(actions)).to(p.device, p.dtype),
                self.codec.states(states, b, t, self.name).to(p.device, p.dtype))
