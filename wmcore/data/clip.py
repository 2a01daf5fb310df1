"""One clip: a video file and the actions taken between its frames (the drift lab's one-clip flow).

Actions come from a file beside the video or named explicitly:

- ``.npy``: an array ``[T, A]``;
- ``.npz``: key ``actions`` ``[T, A]`` (and optionally ``states`` ``[T+1, S]``);
- ``.csv``: T rows of A numbers (a header row of names is skipped);
- ``.json``: a list of T lists, or an object with ``actions`` (and optionally ``states``).

``actions[t]`` leads from frame t to frame t+1, so a clip of T+1 frames needs at least T actions
(extra trailing actions are dropped: recorders often log one per frame). Without an action file,
``actions="zeros"`` gives zero actions of a given width (the classic mock-action setting).
"""

from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import WMError
from ..episode import Episode
from .episodes import load_npz

__all__ = ["ACTION_SUFFIXES", "VIDEO_SUFFIXES", "find_actions", "is_video", "load_clip", "read_actions"]

VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".ts")
ACTION_SUFFIXES = (".npz", ".npy", ".csv", ".json")


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def find_actions(video: str | Path) -> Path | None:
    """The action file beside ``video``: same stem, one of ACTION_SUFFIXES (also ``STEM.actions.*``)."""
    v = Path(video)
    for stem in (v.stem, f"{v.stem}.actions"):
        for suffix in ACTION_SUFFIXES:
            p = v.with_name(stem + suffix)
            if p.is_file():
                return p
    return None


def _load_npy(p: Path) -> np.ndarray:
    try:
        return np.load(p, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - numpy raises many types for a damaged header (SyntaxError too)
        raise WMError(f"{p}: unreadable action file ({type(e).__name__}: {str(e)[:200] or 'empty or cut short'}); "
                      "save it again with np.save(path, actions)") from None


def read_actions(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """``(actions [T, A], states [T+1, S] or None)`` from an action file (see the module docstring)."""
    p = Path(path)
    if not p.is_file():
        raise WMError(f"{p}: no such action file")
    suffix = p.suffix.lower()
    states = None
    csv_lines: list[int] | None = None
    try:
        if suffix == ".npy":
            actions = _load_npy(p)
        elif suffix == ".npz":
            if not zipfile.is_zipfile(p):
                raise WMError(f"{p}: not an .npz archive (an .npz is a zip of arrays, e.g. from np.savez); "
                              "save it with np.savez(path, actions=...) or name a single array .npy")
            z = load_npz(p, "save it again with np.savez(path, actions=...)")
            if "actions" not in z:
                raise WMError(f"{p}: no 'actions' array; it has {sorted(z)}")
            actions, states = z["actions"], z.get("states")
        elif suffix == ".csv":
            with open(p, newline="") as f:
                reader = csv.reader(f)
                # (line number in the file, cells) of the non-blank rows
                rows = [(reader.line_num, r) for r in reader if r and any(c.strip() for c in r)]
            if rows and not any(_numeric([c]) for c in rows[0][1]):
                rows = rows[1:]  # a header: names only (a row with some numbers is data, checked below)
            bad = next((i for i, (_, r) in enumerate(rows) if not _numeric(r)), None)
            if bad is not None:
                raise WMError(f"{p}: line {rows[bad][0]} (action row {bad}, counting from 0) is not all numbers: "
                              f"{rows[bad][1][:6]}")
            widths = sorted({len(r) for _, r in rows})
            if len(widths) > 1:
                line, r = next((n, r) for n, r in rows if len(r) != len(rows[0][1]))
                raise WMError(f"{p}: rows have different numbers of columns {widths} (line {line} has {len(r)})")
            csv_lines = [n for n, _ in rows]
            actions = np.array([[float(c) for c in r] for _, r in rows], dtype=np.float64) if rows else np.zeros((0, 0))
        elif suffix == ".json":
            doc = json.loads(p.read_text())
            if isinstance(doc, dict):
                if "actions" not in doc:
                    raise WMError(f"{p}: a JSON object needs an 'actions' key; found {sorted(doc)}")
                states = np.asarray(doc["states"], dtype=np.float64) if doc.get("states") is not None else None
                doc = doc["actions"]
            actions = np.asarray(doc, dtype=np.float64)
        else:
            raise WMError(f"{p}: unknown action file type {suffix!r}; use one of {', '.join(ACTION_SUFFIXES)}")
    except WMError:
        raise
    except (ValueError, TypeError, OSError) as e:  # e.g. JSON that is no array of numbers
        raise WMError(f"{p}: unreadable action file ({type(e).__name__}: {e or 'empty or cut short'})") from None
    actions = np.asarray(actions)
    if actions.ndim == 1:
        actions = actions[:, None]
    if actions.ndim != 2 or actions.shape[0] == 0 or not np.issubdtype(actions.dtype, np.number):
        raise WMError(f"{p}: expected numeric actions [T, A] with T >= 1, found shape {actions.shape} ({actions.dtype})")
    if not np.isfinite(actions).all():
        t = int(np.argwhere(~np.isfinite(actions))[0][0])
        where = f"line {csv_lines[t]}, " if csv_lines else ""
        raise WMError(f"{p}: actions contain NaN or inf (first at {where}action row {t}, counting from 0)")
    if states is not None:
        states = np.asarray(states)
        if states.dtype.kind not in "biuf" or states.ndim != 2:
            raise WMError(f"{p}: expected numeric states [T+1, S], found shape {states.shape} ({states.dtype})")
        if not np.isfinite(states).all():
            t = int(np.argwhere(~np.isfinite(states))[0][0])
            raise WMError(f"{p}: states contain NaN or inf (first at state row {t}, counting from 0)")
        states = states.astype(np.float32)
    return actions.astype(np.float32), states


def load_clip(
    video: str | Path,
    actions: str | Path | None = None,
    action_dim: int | None = None,
    fps: float | None = None,
) -> Episode:
    """An Episode from ``video`` and its actions: a file, None (the file beside the video), or
    ``"zeros"`` (needs ``action_dim``, the width of one recorded action)."""
    from ..video import decode_video, video_info

    v = Path(video)
    frames, source = decode_video(v)
    if frames.shape[0] < 2:
        raise WMError(f"{v}: {frames.shape[0]} frame(s); a rollout needs at least 2")
    n = frames.shape[0] - 1
    states = None
    if isinstance(actions, str) and actions == "zeros":
        if not action_dim:
            raise WMError("zero actions need the action width (the model's action_dim / frameskip)")
        acts = np.zeros((n, action_dim), np.float32)
    else:
        path = Path(actions) if actions is not None else find_actions(v)
        if path is None:
            raise WMError(
                f"{v}: no action file given and none beside it ({v.stem}{{{','.join(ACTION_SUFFIXES)}}}); "
                "pass one, or use zero actions"
            )
        acts, states = read_actions(path)
        if acts.shape[0] < n:
            raise WMError(
                f"{path}: {acts.shape[0]} actions for {n + 1} frames of {v}; need {n} (one per transition). "
                "Check that video and action file belong together, or cut the video"
            )
        acts = acts[:n]
        if states is not None:
            if states.ndim != 2 or states.shape[0] < n + 1:
                raise WMError(f"{path}: states must be [T+1={n + 1}, S], found {states.shape}")
            states = states[: n + 1]
    rate = fps or video_info(v).fps or 10.0
    return Episode(
        frames=frames,
        actions=torch.from_numpy(np.ascontiguousarray(acts)),
        states=None if states is None else torch.from_numpy(np.ascontiguousarray(states)),
        fps=float(rate),
        id=v.name,
        video=source,
    )


def _numeric(row: list[str]) -> bool:
    try:
        [float(c) for c in row]
        return True
    except ValueError:
        return False
