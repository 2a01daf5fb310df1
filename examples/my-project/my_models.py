"""A world model of this project's own, in the shape wmcore measures (``wmcore.protocol.WorldModel``):
``pixels:GRID`` encodes each frame as GRID x GRID patch tokens of its downsampled, centred pixels and
predicts that nothing moves (the next latent is the last one). A pixel-space persistence baseline: it
ignores its actions, so it is measured with recorded actions only (the drift suite's random-actions
case fails any model that ignores its actions, as it should). Swap in your own encoder and predictor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wmcore.protocol import fingerprint

SIDE = 32  # frames are resized to SIDE x SIDE before they are cut into patches


class PixelPersistence:
    frameskip = 1
    max_context = None

    def __init__(self, grid: int = 4, action_dim: int = 2):
        if grid < 1 or SIDE % grid:
            raise ValueError(f"pixels:GRID needs a GRID that divides {SIDE}, got {grid}")
        self.grid, self.action_dim = grid, action_dim
        self.tokens_per_frame = grid * grid
        self.name = f"pixels[{grid}]"

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, T, H, W, 3]`` -> ``[B, T, GRID*GRID, 3*(SIDE/GRID)^2]``, centred on mid-grey."""
        b, t, h, w, c = frames.shape
        x = frames.reshape(b * t, h, w, c).permute(0, 3, 1, 2).float() / 255.0 - 0.5
        x = F.interpolate(x, size=(SIDE, SIDE), mode="area")
        p = SIDE // self.grid
        tokens = F.unfold(x, kernel_size=p, stride=p).transpose(1, 2)  # [B*T, GRID*GRID, 3*p*p]
        return tokens.reshape(b, t, self.tokens_per_frame, -1)

    def predict(self, context: torch.Tensor, actions: torch.Tensor, states=None) -> torch.Tensor:
        return context[:, -1]

    def fingerprint(self) -> str:
        return fingerprint({}, {"family": "pixels", "grid": self.grid, "side": SIDE})


def load(arg: str) -> PixelPersistence:
    """``pixels`` or ``pixels:GRID`` (default 4)."""
    try:
        grid = int(arg) if arg else 4
    except ValueError:
        raise ValueError(f"pixels:{arg}: expected pixels:GRID with GRID an integer, e.g. pixels:4") from None
    return PixelPersistence(grid)
