"""A small V-JEPA 2-AC world model trained from pixels: the ``pusht-ac-tiny`` embedded model.

The architecture is V-JEPA 2-AC's at toy size: transformers' ``VJEPA2Model`` video ViT as the encoder
(each frame fed as a 2-frame tubelet of itself, as the official AC pipeline does) and wmcore's
``ACPredictor`` (the official layout: block-causal frames, action and state tokens, 3D RoPE) as the
predictor, wrapped in ``VJEPA2ACWorldModel`` so that rollouts use its exact KV cache; the adapter reads
actions and states through this module's ``PositionTargetCodec`` (``world_model``).

The loss (``wmcore.train``) is LeWM's recipe: teacher-forced L1 (or MSE, ``pred_loss``) between the
layer-normed predictions and the layer-normed encodings of the next frames (gradient through both, no
EMA target) plus SIGReg on the raw encoder tokens, which keeps the encoder from collapsing; optionally
an inverse-dynamics term. The official V-JEPA 2-AC trains its predictor on a frozen pretrained
encoder; ``freeze_encoder`` with ``--encoder-from`` does that with an encoder trained here.

Actions and states (PushT). A PushT action is an absolute target for the agent (2-d, in the 512-px
workspace). One model step is ``frameskip`` recorded actions, normalised by the training set's mean
and std and concatenated: the predictor's action input (``action_embed_dim = width * frameskip``).
The official predictor takes a state token as wide as the action; here it is the agent's position
(the data set's state columns ``state_columns``), normalised as the actions and tiled ``frameskip``
times. Open loop may not read recorded states after the context, so ``propagate_state`` puts the
agent at the last target of the step's actions (the agent is PD-driven towards it; on the fixture
episodes it is off by 11 px on average after the 5 steps, against 37 px of motion); the other state
columns are carried unchanged and never read. Training draws, per window, recorded or propagated
positions (``state_mix``), so that neither loop meets states it was not trained on.

How ``pusht-ac-tiny`` is made (``make train-ac-tiny``; the model card has the figures): two runs.
1. Encoder + predictor from pixels, ``patch_size`` 32 (4 tokens per frame), L1 + SIGReg and an
   ``inverse_dynamics`` head (the action block guessed from the mean tokens of consecutive frames;
   the head is not part of the model that is shipped).
2. A fresh predictor on the frozen stage-1 encoder (``freeze_encoder``, ``--encoder-from``), MSE,
   as V-JEPA 2-AC trains its predictor on a frozen encoder.

Why (runs of 600-3000 steps on 150 PushT episodes, 2 CPU cores). End to end, with L1 or MSE, at
patch 8, 16, 32 or 64 (64, 16, 4 or 1 tokens per frame), with SIGReg pooled over tokens, per
position, per frame's mean token or on the tokens' frame-to-frame changes, the predictor ended at
the copy-last baseline (held-out step-1 MSE skill between -0.03 and +0.04) and ignored its action and
state tokens: shuffling them across the batch moved the skill by at most 1e-4, and the action
encoder's weights hardly left their initial values. Two things had to change.
- The encoder settles on what copy-last predicts. Its tokens came to change less and less from frame
  to frame (next-frame cosine 0.999-1.000) while SIGReg kept them diverse across episodes: the block's
  pose, which is still in most steps, and not the moving agent. The inverse-dynamics term makes the
  encoder keep the agent's motion.
- The predictor learns to read its action tokens only when the encoder stands still, and with few
  tokens per frame. On frozen embeddings (predictor alone, 600-3000 steps): pusht-lewm's CLS
  embedding (1 token), skill 0.51 after 1000 steps, -0.10 with shuffled actions; pusht-lewm's 64
  patch tokens, 0.007, whatever the actions; the stage-1 encoder above (4 tokens), 0.06 with L1 and
  0.27-0.33 with MSE after 3000 steps. At init an action token's effect on a patch token's output,
  and the gradient that reaches the action encoder, shrink with the tokens per frame (attention
  spreads over them): with random inputs, the action encoder's gradient at 64 tokens per frame is
  150 times smaller than at 1.
Before the two stages, these were tried and reverted: ``residual`` off, unit-scale action/state
encoder init, lr 1e-3/2e-3, window 2/4, a frozen random encoder (skill +0.02 to +0.05), and a
single run with inverse dynamics (skill +0.04 after 3000 steps at patch 32: the encoder then carries
the motion, yet the predictor, chasing a moving target, barely learns to use it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import WMError
from .checkpoint import config_from_json, load_model_dir, save_model_dir
from .vjepa2_ac import ACPredictor, ACPredictorConfig, VJEPA2ACWorldModel, VJEPA2VideoEncoder, shape_of

__all__ = [
    "ACJEPA", "ACTinyConfig", "CONFIG_FILE", "ENCODER_FIELDS", "FORMAT", "PositionTargetCodec", "WEIGHTS_FILE",
    "canonical_state_dict", "copy_encoder", "load_checkpoint", "load_world_model", "normalise_actions",
    "propagate_position", "save_pretrained", "state_tokens", "tiny_config", "training_state_tokens", "world_model",
]

FORMAT = "wmcore-ac-tiny"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PRED_LOSSES = ("l1", "mse")  # pred_loss's choices; the losses are wmcore.train.losses.PREDICTION_LOSSES


@dataclass(frozen=True)
class ACTinyConfig:
    """Architecture, action/state convention and loss of a small AC world model (about 1.5M parameters)."""

    name: str = "ac-tiny"
    # encoder: transformers VJEPA2Model (video ViT with 3D RoPE)
    image_size: int = 64
    patch_size: int = 8
    tubelet_size: int = 2
    encoder_hidden: int = 128
    encoder_layers: int = 4
    encoder_heads: int = 4
    encoder_mlp_ratio: float = 4.0
    # predictor: ACPredictor (official layout)
    predictor_dim: int = 128
    predictor_depth: int = 3
    predictor_heads: int = 4
    max_frames: int = 6  # frames the block-causal mask covers (num_frames = max_frames * tubelet)
    # actions: one model step = frameskip recorded actions of action_width each
    frameskip: int = 5
    action_width: int = 2
    state_columns: tuple[int, ...] = (0, 1)  # the agent's position among the data set's state columns
    action_mean: tuple[float, ...] | None = None  # per recorded action dimension (from the training split)
    action_std: tuple[float, ...] | None = None
    # loss
    sigreg_lambda: float = 0.09
    sigreg_num_proj: int = 256
    sigreg_knots: int = 17
    sigreg_tokens: int = 64  # tokens drawn per time step from the batch's B x N for each SIGReg test
    state_mix: float = 0.5  # probability that a training window reads propagated, not recorded, positions
    residual: bool = True  # the predictor's output is added to the last frame's latent (then layer-normed)
    freeze_encoder: bool = False  # train the predictor only, on the encoder as initialised (no SIGReg term)
    pred_loss: str = "l1"  # "l1" (V-JEPA 2-AC's) or "mse" (LeWM's) between predicted and encoded next latents
    inverse_dynamics: float = 0.0  # weight of an inverse-dynamics head's action MSE (0 = no head; see above)

    def __post_init__(self) -> None:
        for key in ("state_columns", "action_mean", "action_std"):
            v = getattr(self, key)
            if isinstance(v, list):  # from JSON
                object.__setattr__(self, key, tuple(v))
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.type in ("int", int) and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise WMError(f"ACTinyConfig.{f.name}: expected a positive integer, found {v!r}")
        if self.image_size % self.patch_size:
            raise WMError(f"ACTinyConfig: patch_size {self.patch_size} must divide image_size {self.image_size}")
        for width, heads in (("encoder_hidden", "encoder_heads"), ("predictor_dim", "predictor_heads")):
            if getattr(self, width) % getattr(self, heads):
                raise WMError(f"ACTinyConfig: {width} {getattr(self, width)} must be a multiple of {heads}")
        cols = self.state_columns
        if len(cols) != self.action_width or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in cols):
            raise WMError(
                f"ACTinyConfig.state_columns: expected {self.action_width} column indices (the agent's position, "
                f"as wide as one recorded action), found {cols!r}"
            )
        if (self.action_mean is None) != (self.action_std is None):
            raise WMError("ACTinyConfig: give both action_mean and action_std, or neither")
        if self.action_mean is not None and (
            len(self.action_mean) != self.action_width or len(self.action_std) != self.action_width
            or min(self.action_std) <= 0
        ):
            raise WMError(f"ACTinyConfig: action_mean/action_std need {self.action_width} entries and positive stds")
        if not 0 <= self.state_mix <= 1 or self.sigreg_lambda < 0 or self.encoder_mlp_ratio <= 0:
            raise WMError("ACTinyConfig: state_mix must be in [0, 1], sigreg_lambda >= 0, encoder_mlp_ratio > 0")
        if self.pred_loss not in PRED_LOSSES:
            raise WMError(f"ACTinyConfig.pred_loss: expected one of {sorted(PRED_LOSSES)}, found {self.pred_loss!r}")
        if not isinstance(self.inverse_dynamics, (int, float)) or isinstance(self.inverse_dynamics, bool) \
                or not 0 <= self.inverse_dynamics < float("inf"):
            raise WMError(f"ACTinyConfig.inverse_dynamics: expected a weight >= 0, found {self.inverse_dynamics!r}")
        if self.inverse_dynamics and self.freeze_encoder:
            raise WMError("ACTinyConfig: inverse_dynamics shapes the encoder; it has no use with freeze_encoder")

    @property
    def action_dim(self) -> int:
        """Width of one model step's action block (what rollouts pass)."""
        return self.action_width * self.frameskip

    def predictor_config(self) -> ACPredictorConfig:
        return ACPredictorConfig(
            img_size=(self.image_size, self.image_size), patch_size=self.patch_size,
            num_frames=self.max_frames * self.tubelet_size, tubelet_size=self.tubelet_size,
            embed_dim=self.encoder_hidden, predictor_embed_dim=self.predictor_dim, depth=self.predictor_depth,
            num_heads=self.predictor_heads, action_embed_dim=self.action_dim,
        )

    def encoder_config(self):
        """transformers ``VJEPA2Config`` of the encoder (its own masked predictor is built minimal: unused)."""
        from transformers import VJEPA2Config

        return VJEPA2Config(
            crop_size=self.image_size, patch_size=self.patch_size, frames_per_clip=self.tubelet_size,
            tubelet_size=self.tubelet_size, hidden_size=self.encoder_hidden, num_attention_heads=self.encoder_heads,
            num_hidden_layers=self.encoder_layers, mlp_ratio=float(self.encoder_mlp_ratio), qkv_bias=True,
            layer_norm_eps=1e-6, hidden_act="gelu", pred_hidden_size=self.encoder_heads * 4,
            pred_num_attention_heads=self.encoder_heads, pred_num_hidden_layers=1,
        )

    def to_json(self) -> dict:
        d = {"format": FORMAT, "version": 1, **dataclasses.asdict(self)}
        for key in ("state_columns", "action_mean", "action_std"):
            if d[key] is not None:
                d[key] = list(d[key])
        return d

    @classmethod
    def from_json(cls, d: Any, source: str = CONFIG_FILE, name: str | None = None) -> "ACTinyConfig":
        return config_from_json(cls, d, FORMAT, source, name)


def tiny_config(**overrides) -> ACTinyConfig:
    """A few-thousand-parameter ACTinyConfig at 16 px for tests (fields overridable)."""
    base = dict(name="tiny-ac", image_size=16, patch_size=8, encoder_hidden=24, encoder_layers=1, encoder_heads=2,
                predictor_dim=24, predictor_depth=2, predictor_heads=2, max_frames=4, sigreg_num_proj=16,
                sigreg_tokens=16)
    return ACTinyConfig(**{**base, **overrides})


class ACJEPA(nn.Module):
    """Encoder + predictor, trainable. Pixels are normalised floats ``[B, T, 3, S, S]``; actions and
    states the normalised predictor inputs ``[B, T, action_dim]``."""

    def __init__(self, cfg: ACTinyConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or ACTinyConfig()
        self.encoder = VJEPA2VideoEncoder.from_config(cfg.encoder_config())
        self.predictor = ACPredictor.from_config(cfg.predictor_config())
        if cfg.inverse_dynamics:  # (mean token of frame t, of frame t+1) -> the action block between them
            d = cfg.encoder_hidden
            self.inverse = nn.Sequential(nn.Linear(2 * d, 4 * d), nn.GELU(), nn.Linear(4 * d, cfg.action_dim))
        if cfg.freeze_encoder:
            self.encoder.requires_grad_(False)

    def encode_raw(self, pixels: Tensor) -> Tensor:
        """``[B, T, 3, S, S]`` -> encoder tokens ``[B, T, N, D]`` (before the layer norm)."""
        if pixels.dim() != 5 or pixels.shape[2] != 3:
            raise WMError(f"pixels: expected [B, T, 3, S, S], found {tuple(pixels.shape)}")
        b, t = pixels.shape[:2]
        clip = pixels.flatten(0, 1).unsqueeze(2).expand(-1, -1, self.cfg.tubelet_size, -1, -1)
        return self.encoder(clip).reshape(b, t, self.predictor.config.tokens_per_frame, -1)

    @staticmethod
    def norm(z: Tensor) -> Tensor:
        return F.layer_norm(z, (z.shape[-1],))

    def embed(self, pixels: Tensor) -> Tensor:
        return self.norm(self.encode_raw(pixels))

    def predict_next(self, emb: Tensor, actions: Tensor, states: Tensor) -> Tensor:
        """Layer-normed latents ``[B, T, N, D]`` -> layer-normed predictions ``[B, T, N, D]`` (slot t: frame t+1);
        with ``residual`` the predictor's output is a change added to frame t's latent."""
        b, t, n, d = emb.shape
        z = self.predictor(emb.flatten(1, 2), actions, states).reshape(b, t, n, d)
        return self.norm(emb + z if self.cfg.residual else z)


# --------------------------------------------------------------------------------------------------
# actions and states


def _action_stats(cfg: ACTinyConfig, like: Tensor) -> tuple[Tensor, Tensor]:
    """The per-recorded-dimension action mean and std ``[width]``, on ``like``'s device and dtype."""
    return (torch.tensor(cfg.action_mean, dtype=like.dtype, device=like.device),
            torch.tensor(cfg.action_std, dtype=like.dtype, device=like.device))


def normalise_actions(a: Tensor, cfg: ACTinyConfig) -> Tensor:
    """Recorded action blocks ``[..., frameskip * width]`` -> the predictor's action input."""
    if cfg.action_mean is None:
        return a
    mean, std = _action_stats(cfg, a)
    return (a - mean.repeat(cfg.frameskip)) / std.repeat(cfg.frameskip)


def state_tokens(states: Tensor, cfg: ACTinyConfig) -> Tensor:
    """Data-set states ``[..., S]`` -> the predictor's state input: the agent's position (``state_columns``),
    normalised as an action, tiled ``frameskip`` times ``[..., action_dim]``."""
    pos = states[..., list(cfg.state_columns)]
    if cfg.action_mean is not None:
        mean, std = _action_stats(cfg, pos)
        pos = (pos - mean) / std
    return pos.repeat(*([1] * (pos.dim() - 1)), cfg.frameskip)


def propagate_position(states: Tensor, actions: Tensor, cfg: ACTinyConfig) -> Tensor:
    """The next state with the agent at the last target of the action block; other columns unchanged.
    states ``[..., S]``, actions ``[..., frameskip * width]`` -> ``[..., S]``."""
    out = states.clone()
    out[..., list(cfg.state_columns)] = actions.unflatten(-1, (cfg.frameskip, cfg.action_width))[..., -1, :].to(out)
    return out


def training_state_tokens(states: Tensor, actions: Tensor, cfg: ACTinyConfig, mix: Tensor | None) -> Tensor:
    """The predictor's state input for a training window: states ``[B, T, S]``, action blocks
    ``[B, T, action_dim]``, ``mix`` ``[B]`` (bool) or None -> ``[B, T, action_dim]``. Where ``mix`` is
    True, frames 1.. read the position propagated from the previous frame's recorded state and action
    block, as open loop reads it (``propagate_position``); elsewhere the recorded one (``state_mix``)."""
    if mix is not None and bool(mix.any()):
        prop = torch.cat([states[:, :1], propagate_position(states[:, 1:], actions[:, :-1], cfg)], 1)
        states = torch.where(mix[:, None, None], prop, states)
    return state_tokens(states, cfg)


@dataclass(frozen=True)
class PositionTargetCodec:
    """The ``VJEPA2ACWorldModel`` codec of absolute position-target actions (PushT; see the module
    docstring): an action block is ``frameskip`` recorded targets, normalised (``normalise_actions``);
    the state token is the agent's position (``state_tokens``), propagated to the block's last target
    (``propagate_position``); with ``residual`` the predictor's output is a change to the last latent."""

    cfg: ACTinyConfig

    @property
    def action_width(self) -> int:
        return self.cfg.action_width

    @property
    def state_dim(self) -> int:
        """At least this many data-set state columns."""
        return max(self.cfg.state_columns) + 1

    def check(self, cfg: ACPredictorConfig, frameskip: int) -> None:
        if frameskip != self.cfg.frameskip or cfg.action_embed_dim != self.cfg.action_dim:
            raise WMError(
                f"PositionTargetCodec: frameskip {frameskip} and a predictor of {cfg.action_embed_dim}-d actions; "
                f"the ac-tiny config has frameskip {self.cfg.frameskip} and action_dim {self.cfg.action_dim}"
            )

    def describe_actions(self, frameskip: int) -> str:
        return f"{frameskip} recorded {self.cfg.action_width}-d position targets"

    def actions(self, blocks: Tensor) -> Tensor:
        """``[..., frameskip, width]`` -> ``[..., action_dim]``, normalised."""
        return normalise_actions(blocks.flatten(-2), self.cfg)

    def states(self, states: Tensor | None, b: int, t: int, model: str) -> Tensor:
        """``[B, T, S]`` -> ``[B, T, action_dim]`` (``state_tokens``), the position columns finite."""
        cols = self.cfg.state_columns
        if states is None:
            raise WMError(
                f"states: model {model!r} reads the agent's position (state columns {list(cols)}) of every "
                "context frame; none were given (use a data set that records states, e.g. wmcore's PushT episodes)"
            )
        if (not isinstance(states, Tensor) or states.dim() != 3 or tuple(states.shape[:2]) != (b, t)
                or states.shape[2] < self.state_dim):
            raise WMError(f"states: expected [B={b}, Tc={t}, S >= {self.state_dim}], found {shape_of(states)}")
        if not torch.isfinite(states[..., list(cols)]).all():
            raise WMError(f"states: the agent's position (columns {list(cols)}) contains NaN or inf")
        return state_tokens(states, self.cfg)

    def check_state(self, state: Tensor, model: str) -> None:
        if not isinstance(state, Tensor) or state.dim() != 2 or state.shape[1] < self.state_dim:
            raise WMError(f"state: expected [B, S >= {self.state_dim}], found {shape_of(state)}")

    def propagate(self, state: Tensor, blocks: Tensor) -> Tensor:
        """state ``[B, S]``, block ``[B, frameskip, width]`` -> next state ``[B, S]``: the agent at the last target."""
        return propagate_position(state, blocks.flatten(-2), self.cfg)

    def output(self, z: Tensor, last: Tensor) -> Tensor:
        return last + z if self.cfg.residual else z

    def config(self) -> dict:
        return {"ac_tiny": self.cfg.to_json()}


def world_model(model: ACJEPA, name: str | None = None, compile: bool = False) -> VJEPA2ACWorldModel:
    """An ``ACJEPA`` as a WorldModel: its predictor and encoder in ``VJEPA2ACWorldModel`` (exact KV-cached
    rollout), reading actions and states through ``PositionTargetCodec``, in eval mode."""
    cfg = model.cfg
    model.eval()
    return VJEPA2ACWorldModel(model.predictor, model.encoder, name=name or cfg.name, frameskip=cfg.frameskip,
                              codec=PositionTargetCodec(cfg), compile=compile)


# --------------------------------------------------------------------------------------------------
# saving and loading


def canonical_state_dict(model: ACJEPA) -> dict[str, Tensor]:
    """``encoder.*`` (transformers VJEPA2Model names) and ``predictor.*`` (official names), on the CPU."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_pretrained(model: ACJEPA, directory: str | Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``directory``; refuses if either exists."""
    return save_model_dir(directory, canonical_state_dict(model), model.cfg.to_json(), FORMAT, CONFIG_FILE, WEIGHTS_FILE)


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu", name: str | None = None) -> ACJEPA:
    """An ``ACJEPA`` from ``directory`` (config.json + model.safetensors), strict, in eval mode."""
    model = load_model_dir(directory, FORMAT, lambda d, src: ACTinyConfig.from_json(d, src, name=name), ACJEPA,
                           CONFIG_FILE, WEIGHTS_FILE)
    return model.to(device).eval()


ENCODER_FIELDS = ("image_size", "patch_size", "tubelet_size", "encoder_hidden", "encoder_layers", "encoder_heads",
                  "encoder_mlp_ratio")


def copy_encoder(model: ACJEPA, directory: str | Path) -> None:
    """Load the encoder of the ac-tiny model in ``directory`` into ``model`` (the start of a predictor-only
    stage on a frozen encoder); the encoder fields of both configs must agree."""
    src = load_checkpoint(directory)
    differ = [f"{k} {getattr(src.cfg, k)!r} (this run: {getattr(model.cfg, k)!r})"
              for k in ENCODER_FIELDS if getattr(src.cfg, k) != getattr(model.cfg, k)]
    if differ:
        raise WMError(f"{directory}: its encoder differs from this run's: {', '.join(differ)}")
    model.encoder.load_state_dict(src.encoder.state_dict(), strict=True)


def load_world_model(directory: str | Path, device: str | torch.device = "cpu", name: str | None = None,
                     compile: bool = False) -> VJEPA2ACWorldModel:
    """``load_checkpoint`` as a WorldModel with the exact KV-cached rollout (``world_model``)."""
    return world_model(load_checkpoint(directory, device), name=name, compile=compile)
