"""Episode, Batch, stack: the one in-memory episode type (frames, the actions taken between them,
optional states), stacking and content hashes. The ground floor: imports nothing of wmcore but errors."""

from __future__ import annotations

__all__ = ["Batch", "Episode", "EpisodeSet", "content_sha256", "episode_digests", "episodes_sha256", "stack", "video_summary"]

import hashlib
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from .errors import WMError


@dataclass(frozen=True)
class Episode:
    """One recorded episode.

    frames: uint8 ``[T+1, H, W, 3]``; actions: float ``[T, A]`` (``actions[t]`` leads from frame t to
    t+1); states: float ``[T+1, S]`` or None; fps of the recording; id names it in reports; video:
    the ``wmcore.video.VideoSource`` that says which reader decoded its frames and their codec (None
    for frames that never were a video file), for the report's ``data["video"]``.
    """

    frames: Tensor
    actions: Tensor
    states: Tensor | None = None
    fps: float = 10.0
    id: str = "episode"
    video: Any = None

    def __post_init__(self) -> None:
        f, a, s = self.frames, self.actions, self.states
        if not isinstance(f, Tensor) or f.dim() != 4 or f.shape[-1] != 3 or f.dtype != torch.uint8:
            found = f"{tuple(f.shape)} {f.dtype}" if isinstance(f, Tensor) else type(f).__name__
            raise WMError(f"episode {self.id!r}: frames must be uint8 [T+1, H, W, 3], found {found}")
        if not isinstance(a, Tensor) or a.dim() != 2 or not a.is_floating_point():
            found = f"{tuple(a.shape)} {a.dtype}" if isinstance(a, Tensor) else type(a).__name__
            raise WMError(f"episode {self.id!r}: actions must be float [T, A], found {found}")
        if a.shape[0] != f.shape[0] - 1:
            raise WMError(
                f"episode {self.id!r}: {f.shape[0]} frames need {f.shape[0] - 1} actions (one per "
                f"transition), found {a.shape[0]}; check that video and action file belong together"
            )
        if not torch.isfinite(a).all():
            raise WMError(f"episode {self.id!r}: actions contain NaN or inf")
        if s is not None and (s.dim() != 2 or s.shape[0] != f.shape[0]):
            raise WMError(
                f"episode {self.id!r}: states must be [T+1={f.shape[0]}, S], found {tuple(s.shape)}"
            )
        if not self.fps > 0:
            raise WMError(f"episode {self.id!r}: fps must be > 0, found {self.fps}")

    @property
    def steps(self) -> int:
        """Number of recorded transitions T."""
        return int(self.actions.shape[0])


@dataclass(frozen=True)
class Batch:
    """Episodes cut to a common length and stacked.

    frames uint8 ``[B, T+1, H, W, 3]``, actions ``[B, T, A]``, states ``[B, T+1, S]`` or None;
    videos: each episode's ``VideoSource`` (or None), see ``video_summary``.
    """

    frames: Tensor
    actions: Tensor
    states: Tensor | None
    ids: list[str]
    fps: float
    videos: list | None = None


def stack(episodes: Sequence[Episode], steps: int | None = None) -> Batch:
    """Stack episodes, each cut to its first ``steps`` transitions (default: the shortest one's)."""
    if not episodes:
        raise WMError("no episodes to evaluate: the data set is empty")
    shortest = min(e.steps for e in episodes)
    steps = shortest if steps is None else steps
    if steps > shortest:
        short = [e.id for e in episodes if e.steps < steps]
        raise WMError(f"episodes {short} have fewer than the {steps} steps asked for (shortest {shortest})")
    shapes = {tuple(e.frames.shape[1:]) for e in episodes}
    if len(shapes) > 1:
        raise WMError(f"episodes have different frame sizes {sorted(shapes)}; resize them to one size")
    adims = {e.actions.shape[1] for e in episodes}
    if len(adims) > 1:
        raise WMError(f"episodes have different action dimensions {sorted(adims)}")
    with_states = [e.states is not None for e in episodes]
    states = None
    if all(with_states):
        states = torch.stack([e.states[: steps + 1].float() for e in episodes])
    return Batch(
        frames=torch.stack([e.frames[: steps + 1] for e in episodes]),
        actions=torch.stack([e.actions[:steps].float() for e in episodes]),
        states=states,
        ids=[e.id for e in episodes],
        fps=float(episodes[0].fps),
        videos=[e.video for e in episodes],
    )


def video_summary(sources: Sequence[Any] | None) -> dict[str, Any] | None:
    """How the episodes' frames were decoded, for a report's ``data["video"]``; None when no episode
    came from a video file. ``backend`` / ``codec`` / ``reason`` are the one reader's (``"mixed"``
    where episodes differ); ``sources`` counts the episodes per distinct (backend, version, codec,
    reason), in order of first appearance; frames from memory count under backend None."""
    if not sources or all(s is None for s in sources):
        return None
    keys = [None if s is None else (s.backend, s.version, s.codec, s.reason) for s in sources]
    counts = Counter(keys)
    entries = [
        {"backend": None, "version": None, "codec": None, "reason": "frames from memory, not a video file",
         "episodes": counts[k]} if k is None else
        {"backend": k[0], "version": k[1], "codec": k[2], "reason": k[3], "episodes": counts[k]}
        for k in dict.fromkeys(keys)
    ]

    def one(field: str) -> Any:
        values = {e[field] for e in entries}
        return values.pop() if len(values) == 1 else "mixed"

    return {"backend": one("backend"), "codec": one("codec"), "reason": one("reason"), "sources": entries}


def content_sha256(*tensors: Tensor | None) -> str:
    """sha256 over the bytes, dtypes and shapes of tensors (None entries are marked, not skipped)."""
    h = hashlib.sha256()
    for t in tensors:
        if t is None:
            h.update(b"<none>")
            continue
        t = t.detach().to("cpu").contiguous()
        h.update(f"{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def episode_digests(batch: Batch) -> list[str]:
    """``content_sha256`` of each episode of a batch (its frames, actions and states as stacked)."""
    st = batch.states
    return [content_sha256(batch.frames[i], batch.actions[i], None if st is None else st[i])
            for i in range(batch.frames.shape[0])]


def episodes_sha256(digests: Sequence[str]) -> str:
    """The data set's sha256 (a report's ``data.sha256`` from schema 4): sha256 over the episodes'
    ``content_sha256`` digests in episode order. Each process of a sharded run hashes its own episodes;
    the result depends neither on the batch size nor on the number of processes."""
    h = hashlib.sha256(f"wmcore.episodes|{len(digests)}".encode())
    for d in digests:
        h.update(bytes.fromhex(d))
    return h.hexdigest()


@dataclass(frozen=True)
class EpisodeSet:
    """Episodes known by id and length, read on demand a range at a time, so that an evaluation can
    stream a data set far larger than memory. ``read(lo, hi)`` returns episodes ``lo..hi-1`` in order.
    ``EpisodeSet.of`` wraps episodes already in memory."""

    ids: tuple[str, ...]
    steps: tuple[int, ...]  # recorded transitions of each episode (from an index, without reading frames)
    reader: Callable[[int, int], list[Episode]]

    def __len__(self) -> int:
        return len(self.ids)

    def read(self, r: range) -> list[Episode]:
        """The episodes of ``r`` (a range of indices), checked against the ids and lengths known before."""
        eps = list(self.reader(r.start, r.stop))
        got = [(e.id, e.steps) for e in eps]
        want = [(self.ids[i], self.steps[i]) for i in r]
        if got != want:
            raise WMError(f"episodes {r.start}..{r.stop - 1}: read {got[:3]}..., but the index lists {want[:3]}...; "
                          "the data changed while it was evaluated: evaluate it again")
        return eps

    @staticmethod
    def of(episodes: Sequence[Episode]) -> "EpisodeSet":
        eps = list(episodes)
        return EpisodeSet(ids=tuple(e.id for e in eps), steps=tuple(e.steps for e in eps),
                          reader=lambda lo, hi: eps[lo:hi])
