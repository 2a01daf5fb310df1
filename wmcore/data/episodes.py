"""The on-disk episode format: one H.264 video and one npz per episode, and a JSON index.

    DIR/index.json          format, version, fps, what actions and states mean, how it was made,
                            and per episode: name, steps, seed, file sizes and sha256
    DIR/episode_NNN.mp4     frames uint8 [T+1, H, W, 3]: H.264 (wmcore.video.write_video), crf 0
    DIR/episode_NNN.npz     actions float32 [T, A] (actions[t] leads from frame t to t+1),
                            states float32 [T+1, S] (optional), fps, seed, extra (JSON text)

Files are written to a temporary name and linked into place; nothing existing is overwritten.
``load_episodes`` checks everything against the index and names the file, the fault and the fix.
Videos are H.264 in RGB (libx264rgb, ``pix_fmt`` rgb24) at crf 0: bit-exact lossless, so a model
sees exactly the rendered frames, and decord and PyAV decode them identically. The usual yuv420p
keeps colour at half resolution: the small coloured shapes of a simulator (the PushT agent is a 6 px
disc at 96 px) got colour fringes with errors up to ~120 levels at their edges, and latents written
as frames by tests came back wrong by up to 94 levels; yuv444p still rounds RGB -> YUV by a level.
RGB H.264 plays in ffmpeg-based players (ffplay, VLC, mpv), not in every browser.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ..errors import WMError
from ..fsio import write_new
from ..episode import Episode, EpisodeSet

__all__ = [
    "CRF",
    "FORMAT",
    "INDEX",
    "PIX_FMT",
    "VERSION",
    "episode_name",
    "episode_set",
    "iter_episodes",
    "load_episodes",
    "load_npz",
    "read_index",
    "save_episode",
    "video_format",
    "write_index",
]

FORMAT = "wmcore.episodes"
VERSION = 1
INDEX = "index.json"
CRF = 0
PIX_FMT = "rgb24"


def episode_name(index: int) -> str:
    """``episode_NNN`` (at least three digits)."""
    if not isinstance(index, (int, np.integer)) or isinstance(index, bool) or index < 0:
        raise WMError(f"episode index must be an int >= 0, found {index!r}")
    return f"episode_{int(index):03d}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _encode_video(path: Path, frames: torch.Tensor, fps: float, crf: int) -> None:
    from ..video import write_video

    write_video(path, frames, fps=fps, crf=crf, pix_fmt=PIX_FMT)  # see the module docstring


def video_format(path: str | os.PathLike) -> dict[str, Any]:
    """Codec, profile and pixel format of a video file (PyAV), for the index."""
    import av

    with av.open(str(path)) as c:
        ctx = c.streams.video[0].codec_context
        return {"codec": ctx.name, "profile": ctx.profile, "pix_fmt": ctx.pix_fmt}


def _decode_video(path: Path):
    """(frames, the VideoSource that says which reader decoded them)"""
    from ..video import decode_video

    return decode_video(path)


def save_episode(
    dir: str | os.PathLike,
    index: int,
    episode: Episode,
    seed: int,
    extra: dict[str, Any] | None = None,
    crf: int = CRF,
) -> dict[str, Any]:
    """Write ``episode_NNN.mp4`` and ``episode_NNN.npz`` into ``dir``; return the episode's index entry.

    episode: frames uint8 ``[T+1, H, W, 3]`` (H and W even: H.264), actions ``[T, A]``, states
    ``[T+1, S]`` or None; seed: what the episode was generated from; extra: JSON-serialisable
    details kept in the npz and the index entry. Refuses (WMError) if either file exists.
    """
    dir = Path(dir)
    if not isinstance(episode, Episode):
        raise WMError(f"save_episode: expected a wmcore.data.Episode, found {type(episode).__name__}")
    name = episode_name(index)
    video, data = dir / f"{name}.mp4", dir / f"{name}.npz"
    for p in (video, data):
        if p.exists():
            raise WMError(f"{p}: exists already; wmcore never overwrites an episode, write to a fresh directory")
    h, w = int(episode.frames.shape[1]), int(episode.frames.shape[2])
    if h % 2 or w % 2:
        raise WMError(f"episode {name}: frames are {h}x{w}; H.264 needs even height and width, resize or pad")
    try:
        extra_json = json.dumps(extra or {}, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise WMError(f"episode {name}: extra must be JSON-serialisable ({e})") from None
    arrays: dict[str, np.ndarray] = {
        "actions": episode.actions.detach().cpu().numpy().astype(np.float32),
        "fps": np.float64(episode.fps),
        "seed": np.int64(seed),
        "extra": np.array(extra_json),
    }
    if episode.states is not None:
        arrays["states"] = episode.states.detach().cpu().numpy().astype(np.float32)
    buf = io.BytesIO()
    np.savez(buf, **arrays)

    dir.mkdir(parents=True, exist_ok=True)
    _encode_video(video, episode.frames.detach().cpu(), float(episode.fps), crf)  # atomic, no clobber
    try:
        write_new(data, buf.getvalue())
    except BaseException:
        video.unlink(missing_ok=True)  # no half episodes: the video alone is useless
        raise
    return {
        "name": name,
        "video": video.name,
        "data": data.name,
        "steps": episode.steps,
        "seed": int(seed),
        "bytes": {"video": video.stat().st_size, "data": data.stat().st_size},
        "sha256": {"video": _sha256(video), "data": _sha256(data)},
        **({"extra": json.loads(extra_json)} if extra else {}),
    }


def write_index(dir: str | os.PathLike, meta: dict[str, Any], episodes: list[dict[str, Any]]) -> Path:
    """Write ``dir/index.json``: ``meta`` (fps, height, width, action/state semantics, generator
    command, seed, frameskip hint, ...) and the entries ``save_episode`` returned. Never overwrites."""
    dir = Path(dir)
    for key in ("fps", "height", "width"):
        if key not in meta:
            raise WMError(f"write_index: meta needs {key!r}; found keys {sorted(meta)}")
    names = [e.get("name") for e in episodes]
    if len(set(names)) != len(names):
        raise WMError(f"write_index: episode names repeat: {names}")
    doc = {"format": FORMAT, "version": VERSION, **meta, "episodes": list(episodes)}
    try:
        text = json.dumps(doc, indent=1, allow_nan=False) + "\n"
    except (TypeError, ValueError) as e:
        raise WMError(f"write_index: meta is not JSON-serialisable ({e})") from None
    return write_new(dir / INDEX, text.encode())


def read_index(dir: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``index.json`` of an episode directory, checked for format and version."""
    dir = Path(dir)
    path = dir / INDEX
    if not dir.is_dir():
        raise WMError(f"{dir}: no such episode directory")
    if not path.is_file():
        raise WMError(
            f"{path}: missing; {dir} is not a complete wmcore episode directory (an interrupted "
            "generation leaves no index): generate it again into a fresh directory"
        )
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WMError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise WMError(f"{path}: format must be {FORMAT!r}, found {found!r}")
    if doc.get("version") != VERSION:
        raise WMError(f"{path}: version {doc.get('version')!r} is not supported (this wmcore reads {VERSION})")
    if not isinstance(doc.get("episodes"), list) or not doc["episodes"]:
        raise WMError(f"{path}: lists no episodes")
    return doc


def load_npz(path: str | os.PathLike, what: str = "regenerate the episode") -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` (no pickles); WMError naming ``path`` if it cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - numpy and zipfile raise a dozen types for a damaged file
        raise WMError(f"{path}: not a readable npz ({type(e).__name__}: {str(e)[:200]}); {what}") from None


def load_episodes(dir: str | os.PathLike, limit: int | None = None, verify: bool = True) -> list[Episode]:
    """Read the episodes of a directory written by ``save_episode`` + ``write_index``, in index order.

    limit: read only the first ``limit``; verify: check each file's sha256 against the index.
    Returns Episodes with frames uint8 ``[T+1, H, W, 3]``, actions float32 ``[T, A]``, states
    float32 ``[T+1, S]`` (or None), ids ``<dir name>/episode_NNN``.
    """
    return list(iter_episodes(dir, limit, verify))


def iter_episodes(dir: str | os.PathLike, limit: int | None = None, verify: bool = True) -> Iterator[Episode]:
    """``load_episodes`` one episode at a time (the index is read and checked first), so that a large
    set can be streamed in the memory of one episode."""
    dir = Path(dir)
    doc = read_index(dir)
    entries = doc["episodes"] if limit is None else doc["episodes"][: max(0, int(limit))]
    return _iter_entries(dir, entries, float(doc["fps"]), doc["height"], doc["width"], verify)


def episode_set(dir: str | os.PathLike, limit: int | None = None, verify: bool = True) -> EpisodeSet:
    """The episodes of a directory as an ``EpisodeSet``: the index is read and checked now, each range
    of episodes when it is read (``iter_episodes``' checks, one range at a time)."""
    dir = Path(dir)
    doc = read_index(dir)
    entries = doc["episodes"] if limit is None else doc["episodes"][: max(0, int(limit))]
    for e in entries:
        if isinstance(e.get("steps"), bool) or not isinstance(e.get("steps"), int) or e["steps"] < 1:
            raise WMError(f"{dir / INDEX}: episode {e.get('name')!r} lists steps {e.get('steps')!r}; expected a "
                          "positive integer: regenerate the set")
    fps, height, width = float(doc["fps"]), doc["height"], doc["width"]
    return EpisodeSet(
        ids=tuple(f"{dir.name}/{e.get('name')}" for e in entries),
        steps=tuple(int(e["steps"]) for e in entries),
        reader=lambda lo, hi: list(_iter_entries(dir, entries[lo:hi], fps, height, width, verify)),
    )


def _iter_entries(dir: Path, entries: list, fps: float, height: int, width: int, verify: bool) -> Iterator[Episode]:
    for e in entries:
        name = e.get("name")
        video, data = dir / str(e.get("video")), dir / str(e.get("data"))
        for p in (video, data):
            if not p.is_file():
                raise WMError(f"{p}: missing (listed in {dir / INDEX} for {name}); restore it or regenerate the set")
        if verify:
            for kind, p in (("video", video), ("data", data)):
                want = e.get("sha256", {}).get(kind)
                if want != _sha256(p):
                    raise WMError(
                        f"{p}: sha256 differs from {dir / INDEX}; the file was changed or the index belongs "
                        "to other files: regenerate the set (or load with verify=False at your own risk)"
                    )
        z = load_npz(data)
        if "actions" not in z:
            raise WMError(f"{data}: has no 'actions' array (keys {sorted(z)})")
        actions = z["actions"]
        if actions.ndim != 2 or not np.issubdtype(actions.dtype, np.floating):
            raise WMError(f"{data}: actions must be float [T, A], found {actions.shape} {actions.dtype}")
        steps = int(actions.shape[0])
        if steps != e.get("steps"):
            raise WMError(f"{data}: {steps} actions, but {dir / INDEX} says {name} has {e.get('steps')} steps")
        if "fps" in z and float(z["fps"]) != fps:
            raise WMError(f"{data}: fps {float(z['fps'])} differs from the index's {fps}")
        states = z.get("states")
        if states is not None and (states.ndim != 2 or states.shape[0] != steps + 1):
            raise WMError(f"{data}: states must be [T+1={steps + 1}, S], found {states.shape}")
        frames, source = _decode_video(video)
        frames = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.asarray(frames))
        if frames.dim() != 4 or frames.shape[0] != steps + 1:
            raise WMError(
                f"{video}: {frames.shape[0] if frames.dim() else 0} frames, but {data} has {steps} actions, "
                f"which need {steps + 1} frames; the two files do not belong together: regenerate the episode"
            )
        if (frames.shape[1], frames.shape[2]) != (height, width):
            raise WMError(f"{video}: frames are {frames.shape[1]}x{frames.shape[2]}, the index says {height}x{width}")
        yield Episode(
            frames=frames,
            actions=torch.from_numpy(actions.astype(np.float32)),
            states=torch.from_numpy(states.astype(np.float32)) if states is not None else None,
            fps=fps,
            id=f"{dir.name}/{name}",
            video=source,
        )
