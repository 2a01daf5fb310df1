"""Readers of episode sets: ``load(path)`` picks the reader (our episode directories, LeRobot
datasets, a single clip with its actions; the PushT generator writes the first). Never imports
``wmcore.models``."""

from __future__ import annotations

import os
from pathlib import Path

from ..episode import Batch, Episode, EpisodeSet, content_sha256, stack, video_summary
from ..errors import WMError
from ..paths import DEFAULT_DATA, fixtures_dir

__all__ = ["DEFAULT_DATA", "Batch", "Episode", "EpisodeSet", "content_sha256", "load", "open_set", "stack", "video_summary"]


def open_set(
    path: str, limit: int | None = None, camera: str | None = None, actions: str | None = None
) -> EpisodeSet:
    """``load``'s episodes as an ``EpisodeSet`` read on demand: an episode directory is streamed (only
    its index is read now, a range of episodes whenever the evaluation reaches it); other sources are
    read now and wrapped."""
    p = _resolve(path)
    if p.is_dir() and (p / "index.json").is_file():
        from .episodes import episode_set

        return episode_set(p, limit=_check_limit(limit))
    return EpisodeSet.of(load(path, limit=limit, camera=camera, actions=actions))


def _check_limit(limit: int | None) -> int | None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise WMError(f"limit: expected a positive number of episodes (or None for all), found {limit!r}")
    return limit


def _resolve(path: str) -> Path:
    """``path`` as given, or the set of that name in ``fixtures/``; WMError if neither exists."""
    path = os.fspath(path)
    p = Path(path)
    if not p.exists() and "/" not in path and os.sep not in path:
        if (fixtures_dir() / path).is_dir():
            p = fixtures_dir() / path
    if not p.exists():
        raise WMError(f"data path {path!r} does not exist; give an episode directory, a LeRobot dataset or 'pusht'")
    return p


def load(
    path: str, limit: int | None = None, camera: str | None = None, actions: str | None = None
) -> list[Episode]:
    """Episodes from ``path``: an episode directory (``index.json``, see ``wmcore.data.episodes``), a
    local LeRobot dataset (``meta/info.json``), the name of a set in ``fixtures/`` (``pusht``), or a
    single video file with its actions (``actions``: an action file; default the one beside the
    video, see ``wmcore.data.clip``)."""
    _check_limit(limit)
    p = _resolve(path)
    if p.is_file():
        from .clip import is_video, load_clip

        if not is_video(p):
            raise WMError(f"{p}: a file, but not a video ({p.suffix!r}); give a video with an action file, "
                          "an episode directory or a LeRobot dataset")
        return [load_clip(p, actions)]
    if (p / "index.json").is_file():
        from .episodes import load_episodes

        return load_episodes(p, limit=limit)
    if (p / "meta" / "info.json").is_file():
        from .lerobot import load_lerobot

        eps = load_lerobot(p, camera=camera)
        return eps if limit is None else eps[:limit]
    raise WMError(
        f"{p}: neither an episode directory (index.json) nor a LeRobot dataset (meta/info.json); "
        "generate episodes with `wmcore make-fixtures pusht` or point at a LeRobot dataset root"
    )
