"""Episodes from a local LeRobotDataset directory (codebase v2.x or v3.x layout).

v2: ``meta/info.json``, ``meta/episodes.jsonl``, one parquet and one mp4 per episode and camera
(``data_path`` / ``video_path`` templates in info.json, keyed by ``episode_chunk`` and
``episode_index``).
v3: many episodes per parquet and per mp4; ``meta/episodes/chunk-*/file-*.parquet`` gives each
episode's file indices and its ``videos/<camera>/from_timestamp`` / ``to_timestamp`` inside the
shared mp4 (templates keyed by ``chunk_index``, ``file_index`` and ``video_key``).

LeRobot stores the action taken *at* frame t in row t; our Episode wants ``actions[t]`` leading from
frame t to t+1, so an episode of L rows gives L frames and its first L-1 actions. Row t goes with
video frame t of the episode (LeRobot's timestamps are frame_index / fps); an episode whose video
holds fewer frames than it has rows is an error, never a shorter or shifted episode.
"""

from __future__ import annotations

import json
import numbers
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import WMError
from ..episode import Episode

__all__ = ["load_lerobot"]

_FIX = "the dataset is incomplete or damaged: download or convert it again"


def load_lerobot(
    root: str | Path,
    camera: str | None = None,
    action_key: str = "action",
    state_key: str | None = "observation.state",
    episodes: Sequence[int] | None = None,
) -> list[Episode]:
    """Read episodes of a local LeRobot dataset.

    camera: the video feature key (None: the only one there is); action_key / state_key: parquet
    columns (state_key None or absent column with the default: no states); episodes: indices to read,
    in that order (None: all). Returns Episodes with frames uint8 ``[L, H, W, 3]``, actions
    ``[L-1, A]``, states ``[L, S]``.
    """
    from ..video import decode_video, video_info

    root = Path(root)
    info = _info(root)
    features = info.get("features")
    if not isinstance(features, dict):
        raise WMError(f"{root / 'meta' / 'info.json'}: no 'features' mapping, found {type(features).__name__}; {_FIX}")
    cameras = sorted(k for k, v in features.items() if isinstance(v, dict) and v.get("dtype") == "video")
    if camera is None:
        if len(cameras) != 1:
            raise WMError(
                f"{root}: {len(cameras)} cameras {cameras}; choose one with camera=... (--wm-camera)"
                if cameras else f"{root}: meta/info.json lists no video feature; wmcore needs a camera video"
            )
        camera = cameras[0]
    elif camera not in cameras:
        raise WMError(f"{root}: no camera {camera!r}; the dataset has {cameras}")
    if action_key not in features:
        raise WMError(f"{root}: no action key {action_key!r}; features are {sorted(features)}")
    if state_key is not None and state_key not in features:
        if state_key != "observation.state":
            raise WMError(f"{root}: no state key {state_key!r}; features are {sorted(features)}")
        state_key = None  # the default is optional
    fps = _fps(root, info, features[camera])
    reader = _reader(root, info, camera, fps)
    wanted = _wanted(root, episodes, reader.episode_indices())
    columns = ["episode_index", "frame_index", action_key] + ([state_key] if state_key else [])
    num_frames: dict[Path, int] = {}  # v3 episodes share videos
    out = []
    for ep in wanted:
        rows, video, first, span, length = reader.locate(ep, columns)
        n = len(rows[action_key]) if action_key in rows else len(next(iter(rows.values()), []))
        if length is not None and length != n:
            raise WMError(f"{root}: episode {ep} has {n} rows in its parquet file, but the episode metadata "
                          f"says length {length}; {_FIX}")
        if n < 2:
            raise WMError(f"{root}: episode {ep} has {n} frame(s); need at least 2 (one transition)")
        order = _frame_order(rows, n, root, ep)
        actions = _column(rows, action_key, order, root, ep)
        states = _column(rows, state_key, order, root, ep) if state_key else None
        if video not in num_frames:
            num_frames[video] = video_info(video).num_frames
        have = num_frames[video] - first if span is None else min(span, num_frames[video] - first)
        if have < n:
            where = f"frames {first}..{first + n - 1} of {video}" if first else str(video)
            raise WMError(
                f"{root}: episode {ep} has {n} rows in its parquet file but only {max(have, 0)} frames of "
                f"camera {camera!r} ({where}, {num_frames[video]} frames in the file); video and data "
                f"must have one frame per row: {_FIX}"
            )
        frames, source = decode_video(video, range(first, first + n))
        out.append(
            Episode(
                frames=frames,
                actions=torch.from_numpy(actions[:-1]).float(),
                states=torch.from_numpy(states).float() if states is not None else None,
                fps=fps,
                id=f"{root.name}/episode_{ep:06d}",
                video=source,
            )
        )
    return out


def _info(root: Path) -> dict:
    p = root / "meta" / "info.json"
    if not p.is_file():
        raise WMError(f"{root}: not a LeRobot dataset (no meta/info.json); point --wm-data at the dataset root")
    try:
        info = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WMError(f"{p}: not valid JSON ({e}); {_FIX}") from None
    if not isinstance(info, dict):
        raise WMError(f"{p}: expected a JSON object with fps, features, data_path, ..., found a "
                      f"{type(info).__name__}; {_FIX}")
    return info


def _fps(root: Path, info: dict, camera_feature: dict) -> float:
    raw = info.get("fps") or (camera_feature.get("info") or {}).get("video.fps")
    try:
        fps = float(raw)
    except (TypeError, ValueError):
        fps = float("nan")
    if not np.isfinite(fps) or fps <= 0:
        raise WMError(f"{root}: meta/info.json has no usable fps (found {raw!r}); expected a positive number")
    return fps


def _reader(root: Path, info: dict, camera: str, fps: float) -> _V2 | _V3:
    version = str(info.get("codebase_version", ""))
    if version.startswith("v3") or (not version and (root / "meta" / "episodes").is_dir()):
        return _V3(root, info, camera, fps)
    if version.startswith("v2") or not version:
        return _V2(root, info, camera)
    raise WMError(f"{root}: codebase_version {version!r} is not supported; wmcore reads LeRobot v2.x and v3.x "
                  "datasets: convert it with lerobot's conversion scripts")


def _wanted(root: Path, episodes: Sequence[int] | None, available: list[int]) -> list[int]:
    if episodes is None:
        return available
    have = set(available)
    out = []
    for ep in episodes:
        if isinstance(ep, bool) or not isinstance(ep, numbers.Integral):
            raise WMError(f"{root}: episode indices must be ints, found {ep!r} ({type(ep).__name__})")
        if int(ep) not in have:
            raise WMError(f"{root}: no episode {int(ep)}; the dataset has episodes {_describe(available)}")
        out.append(int(ep))
    return out


def _describe(indices: list[int]) -> str:
    if not indices:
        return "none"
    if indices == list(range(indices[0], indices[0] + len(indices))) and len(indices) > 2:
        return f"{indices[0]}..{indices[-1]}"
    return ", ".join(map(str, indices[:20])) + (f", ... ({len(indices)} in all)" if len(indices) > 20 else "")


def _template(root: Path, info: dict, key: str, **fields) -> Path:
    t = info.get(key)
    if not isinstance(t, str) or not t:
        raise WMError(f"{root}: meta/info.json has no {key} template (found {t!r}); {_FIX}")
    try:
        return root / t.format(**fields)
    except (KeyError, IndexError, ValueError) as e:
        raise WMError(f"{root}: meta/info.json {key} {t!r} cannot be filled from {sorted(fields)} ({e!r}); "
                      f"expected the LeRobot layout of its codebase_version") from None


def _read_parquet(path: Path, columns: Sequence[str] | None = None) -> _Table:
    """The given columns (those present; None: all) of a parquet file as numpy arrays; list columns of
    one length become 2-D."""
    import pyarrow.parquet as pq

    if not path.is_file():
        raise WMError(f"{path}: parquet file missing; {_FIX}")
    try:
        names = pq.read_schema(path).names
        table = pq.read_table(path, columns=[c for c in names if columns is None or c in columns])
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise WMError(f"{path}: unreadable parquet ({type(e).__name__}: {e}); {_FIX}") from None
    return _Table({name: _to_numpy(table.column(name)) for name in table.column_names})


def _to_numpy(col) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    t = col.type
    if not (pa.types.is_list(t) or pa.types.is_fixed_size_list(t) or pa.types.is_large_list(t)):
        return col.to_numpy()
    arr = col.combine_chunks()
    lengths = pc.list_value_length(arr)
    if arr.null_count == 0 and len(arr) and pc.min(lengths).as_py() == pc.max(lengths).as_py():
        flat = arr.flatten().to_numpy(zero_copy_only=False)  # null values become NaN
        return flat.reshape(len(arr), pc.min(lengths).as_py())
    out = np.empty(len(arr), dtype=object)  # ragged or null rows: _column says so
    out[:] = arr.to_pylist()
    return out


class _Table(dict):
    """A dict of columns that can be filtered by a boolean mask like a data frame."""

    def __getitem__(self, key):
        if isinstance(key, np.ndarray) and key.dtype == bool:
            return _Table({k: v[key] for k, v in self.items()})
        return super().__getitem__(key)


def _frame_order(rows: _Table, n: int, root: Path, ep: int) -> np.ndarray:
    """Row order by frame_index, which must be 0..n-1 (row t is video frame t of the episode)."""
    if "frame_index" not in rows:
        return np.arange(n)
    fi = np.asarray(rows["frame_index"])
    order = np.argsort(fi, kind="stable")
    if not np.array_equal(fi[order], np.arange(n)):
        raise WMError(f"{root}: episode {ep}: frame_index is not 0..{n - 1} (found {_describe(sorted(fi.tolist()))}); "
                      f"an episode needs one row per video frame, without gaps or repeats; {_FIX}")
    return order


def _column(rows: _Table, key: str, order: np.ndarray, root: Path, ep: int) -> np.ndarray:
    if key not in rows:
        raise WMError(f"{root}: episode {ep} has no column {key!r}; columns are {sorted(rows)}")
    try:
        x = np.asarray(rows[key][order], dtype=np.float64)
    except (TypeError, ValueError):
        raise WMError(f"{root}: episode {ep} column {key!r} is not a number or a list of numbers of one "
                      f"length per row (ragged or null rows); {_FIX}") from None
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise WMError(f"{root}: episode {ep} column {key!r} has shape {x.shape[1:]} per row, expected a vector")
    if not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))[0]
        raise WMError(f"{root}: episode {ep} column {key!r} contains NaN or inf (first at frame {bad[0]}, "
                      f"entry {bad[1]}); clean or drop the episode")
    return x


class _V2:
    """One parquet per episode; one mp4 per episode and camera."""

    def __init__(self, root: Path, info: dict, camera: str):
        self.root, self.info, self.camera = root, info, camera
        self.chunks = int(info.get("chunks_size") or 1000)
        self.lengths: dict[int, int | None] = {}
        p = root / "meta" / "episodes.jsonl"
        if p.is_file():
            for i, line in enumerate(p.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    ep = row["episode_index"]
                except (json.JSONDecodeError, TypeError, KeyError) as e:
                    raise WMError(f"{p}: line {i} is not a JSON object with an episode_index ({e!r}); {_FIX}") from None
                self.lengths[int(ep)] = int(row["length"]) if isinstance(row.get("length"), int) else None
        elif isinstance(info.get("total_episodes"), int):
            self.lengths = dict.fromkeys(range(info["total_episodes"]))
        else:
            raise WMError(f"{root}: no meta/episodes.jsonl and no total_episodes in meta/info.json; {_FIX}")

    def episode_indices(self) -> list[int]:
        return sorted(self.lengths)

    def locate(self, ep: int, columns: list[str]):
        """(rows of the episode, its video, first frame, frames it has there (None: to the end), length)"""
        fmt = {"episode_chunk": ep // self.chunks, "episode_index": ep, "video_key": self.camera}
        data = _template(self.root, self.info, "data_path", **fmt)
        video = _template(self.root, self.info, "video_path", **fmt)
        if not video.is_file():
            raise WMError(f"{video}: missing video of camera {self.camera!r} for episode {ep}; {_FIX}")
        rows = _read_parquet(data, columns)
        if "episode_index" in rows:
            rows = rows[np.asarray(rows["episode_index"]) == ep]
        return rows, video, 0, None, self.lengths[ep]


class _V3:
    """Many episodes per parquet and per mp4, located by meta/episodes/chunk-*/file-*.parquet."""

    def __init__(self, root: Path, info: dict, camera: str, fps: float):
        self.root, self.info, self.camera, self.fps = root, info, camera, fps
        files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
        if not files:
            raise WMError(f"{root}: v3 dataset without meta/episodes/chunk-*/file-*.parquet (the episode "
                          f"index); {_FIX}")
        cam = f"videos/{camera}"
        need = ["episode_index", "data/chunk_index", "data/file_index", f"{cam}/chunk_index",
                f"{cam}/file_index", f"{cam}/from_timestamp"]
        self.meta: dict[int, dict] = {}
        for f in files:
            t = _read_parquet(f, need + ["length", f"{cam}/to_timestamp"])
            missing = [k for k in need if k not in t]
            if missing:
                raise WMError(f"{f}: episode metadata lacks columns {missing}; found {sorted(t)}; {_FIX}")
            for i, ep in enumerate(t["episode_index"]):
                self.meta[int(ep)] = {k: v[i] for k, v in t.items()}
        self._cache: dict[Path, _Table] = {}

    def episode_indices(self) -> list[int]:
        return sorted(self.meta)

    def locate(self, ep: int, columns: list[str]):
        """(rows of the episode, its video, first frame, frames it has there, length)"""
        row, cam = self.meta[ep], f"videos/{self.camera}"
        data = _template(self.root, self.info, "data_path", chunk_index=int(row["data/chunk_index"]),
                         file_index=int(row["data/file_index"]))
        video = _template(self.root, self.info, "video_path", video_key=self.camera,
                          chunk_index=int(row[f"{cam}/chunk_index"]), file_index=int(row[f"{cam}/file_index"]))
        if not video.is_file():
            raise WMError(f"{video}: missing video of camera {self.camera!r} for episode {ep}; {_FIX}")
        if data not in self._cache:
            self._cache[data] = _read_parquet(data, columns)
        table = self._cache[data]
        if "episode_index" not in table:
            raise WMError(f"{data}: no episode_index column; a v3 data file holds several episodes and needs it")
        start = float(row[f"{cam}/from_timestamp"])
        first = int(round(start * self.fps))
        end = row.get(f"{cam}/to_timestamp")
        span = None if end is None or not np.isfinite(end) else int(round((float(end) - start) * self.fps))
        length = int(row["length"]) if "length" in row else None
        return table[np.asarray(table["episode_index"]) == ep], video, first, span, length
