"""wmcore.data.lerobot: LeRobotDataset v2.1 and v3.0 directories give the right frames, actions and
states of the right episodes, and every way a dataset can be broken says what to fix.

The builders write the layouts of huggingface/lerobot (``src/lerobot/datasets/utils.py``): v2.1 one
parquet and one mp4 per episode (and camera) in ``chunk-{episode_chunk}`` folders, v3.0 several
episodes per ``file-NNN`` parquet / mp4 with ``meta/episodes/chunk-000/file-000.parquet`` giving each
episode's files and its ``from_timestamp`` inside the shared mp4. Paths are spelled out here, not
formatted from the templates in info.json, so a reader that formats a template wrongly fails.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from inputs import write_av1

from wmcore import video
from wmcore.data import Episode, load
from wmcore.data.lerobot import load_lerobot
from wmcore.errors import WMError
from wmcore.video import VideoSource, write_video

try:  # as wmcore.video imports it: decord where it has a wheel, PyAV everywhere
    import decord as DECORD
except (ImportError, OSError):
    DECORD = None

FPS = 10
H = W = 32
LENGTHS = (8, 10, 6)  # rows (= frames) of episodes 0, 1, 2
CAMS = ("observation.images.top", "observation.images.wrist")
V3_FILES = ((0, 1), (2,))  # v3: episodes 0 and 1 share file-000 (data and video), 2 is in file-001
V2_DATA = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V2_VIDEO = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
V3_DATA = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V3_VIDEO = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"


# --------------------------------------------------------------------------------------------------
# content: every frame, action and state says which episode, step (and camera) it belongs to


def _colour(ep: int, t: int, cam: int) -> tuple[int, int, int]:
    return 10 + 20 * t, 30 + 70 * ep, 40 if cam == 0 else 210


def _frames(ep: int, n: int, cam: int) -> np.ndarray:
    """uint8 [n, H, W, 3]: solid colours, red = step, green = episode, blue = camera (index in CAMS),
    20+ levels apart."""
    out = np.empty((n, H, W, 3), np.uint8)
    for t in range(n):
        out[t] = _colour(ep, t, cam)
    return out


def _actions(ep: int, n: int) -> np.ndarray:
    t = np.arange(n, dtype=np.float32)
    return np.stack([100 * ep + t, -0.25 * t, np.full(n, 0.5, np.float32)], -1)


def _states(ep: int, n: int) -> np.ndarray:
    return np.stack([np.full(n, ep, np.float32), np.arange(n, dtype=np.float32) + 0.5], -1)


def _rows(ep: int, n: int, start: int, fixed: bool, nan_at: int | None = None) -> pa.Table:
    a, s = _actions(ep, n), _states(ep, n)
    if nan_at is not None:
        a[nan_at, 1] = np.nan
    lt = (lambda d: pa.list_(pa.float32(), d)) if fixed else (lambda d: pa.list_(pa.float32()))
    return pa.table({
        "action": pa.array(a.tolist(), type=lt(a.shape[1])),
        "observation.state": pa.array(s.tolist(), type=lt(s.shape[1])),
        "timestamp": pa.array(np.arange(n, dtype=np.float32) / FPS),
        "frame_index": pa.array(np.arange(n, dtype=np.int64)),
        "episode_index": pa.array(np.full(n, ep, np.int64)),
        "index": pa.array(np.arange(start, start + n, dtype=np.int64)),
        "task_index": pa.array(np.zeros(n, np.int64)),
    })


def _info(version: str, lengths, cams, chunks_size: int, state: bool, codec: str = "h264") -> dict:
    feats = {
        "action": {"dtype": "float32", "shape": [3], "names": ["x", "y", "grip"]},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
    }
    if state:
        feats["observation.state"] = {"dtype": "float32", "shape": [2], "names": ["ep", "t"]}
    for cam in cams:
        feats[cam] = {
            "dtype": "video", "shape": [H, W, 3], "names": ["height", "width", "channels"],
            "info": {"video.fps": float(FPS), "video.height": H, "video.width": W, "video.codec": codec,
                     "video.pix_fmt": "yuv420p", "video.is_depth_map": False, "has_audio": False},
        }
    v3 = version.startswith("v3")
    info = {
        "codebase_version": version, "robot_type": "test", "total_episodes": len(lengths),
        "total_frames": sum(lengths), "total_tasks": 1, "chunks_size": chunks_size, "fps": FPS,
        "splits": {"train": f"0:{len(lengths)}"},
        "data_path": V3_DATA if v3 else V2_DATA, "video_path": V3_VIDEO if v3 else V2_VIDEO,
        "features": feats,
    }
    if v3:
        info.update(data_files_size_in_mb=100, video_files_size_in_mb=500)
    else:
        info.update(total_chunks=math.ceil(len(lengths) / chunks_size), total_videos=len(lengths) * len(cams))
    return info


def make_v2(root: Path, lengths=LENGTHS, cams=CAMS, chunks_size: int = 2, state: bool = True,
            short: dict[int, int] | None = None, nan: tuple[int, int] | None = None,
            reverse_rows: bool = False) -> Path:
    """A v2.1 dataset; chunks_size 2 puts episode 2 into chunk-001. short: episode -> frames in its
    videos (fewer than its rows); nan: (episode, step) of a NaN action; reverse_rows: parquet rows in
    reverse frame order."""
    short = short or {}
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(_info("v2.1", lengths, cams, chunks_size, state), indent=4))
    (root / "meta" / "episodes.jsonl").write_text("".join(
        json.dumps({"episode_index": ep, "tasks": ["push"], "length": n}) + "\n" for ep, n in enumerate(lengths)))
    start = 0
    for ep, n in enumerate(lengths):
        chunk = f"chunk-{ep // chunks_size:03d}"
        table = _rows(ep, n, start, fixed=False, nan_at=nan[1] if nan and nan[0] == ep else None)
        if not state:
            table = table.drop(["observation.state"])
        if reverse_rows:
            table = table.take(pa.array(np.arange(n)[::-1]))
        (root / "data" / chunk).mkdir(parents=True, exist_ok=True)
        pq.write_table(table, root / "data" / chunk / f"episode_{ep:06d}.parquet")
        for cam in cams:
            write_video(root / "videos" / chunk / cam / f"episode_{ep:06d}.mp4",
                        _frames(ep, short.get(ep, n), CAMS.index(cam)), fps=FPS, crf=0)
        start += n
    return root


def _has_av1_encoder() -> bool:
    try:
        av.codec.Codec("libsvtav1", "w")
        return True
    except Exception:  # noqa: BLE001 - UnknownCodecError, or ValueError in older PyAV
        return False


def make_v3(root: Path, lengths=LENGTHS, cams=CAMS, files=V3_FILES, state: bool = True,
            short: dict[int, int] | None = None, nan: tuple[int, int] | None = None,
            meta_short: dict[int, int] | None = None, codec: str = "h264") -> Path:
    """A v3.0 dataset; files groups episodes into data / video files (all in chunk 0). short: episode
    -> frames it has in the shared videos (fewer than its rows; the metadata says so); meta_short:
    episode -> frames its to_timestamp claims, the videos being complete; codec: "h264" (lossless,
    wmcore's writer) or "av1" (lerobot's default encoding, see ``write_av1``)."""
    short, meta_short = short or {}, meta_short or {}
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(_info("v3.0", lengths, cams, 1000, state, codec), indent=4))
    meta: dict[str, list] = {k: [] for k in (
        "episode_index", "tasks", "length", "data/chunk_index", "data/file_index", "dataset_from_index",
        "dataset_to_index", "meta/episodes/chunk_index", "meta/episodes/file_index", "stats/action/mean")}
    for cam in cams:
        for k in ("chunk_index", "file_index", "from_timestamp", "to_timestamp"):
            meta[f"videos/{cam}/{k}"] = []
    start = 0
    for f, eps in enumerate(files):
        tables, video = [], {cam: [] for cam in cams}
        t0 = 0.0
        for ep in eps:
            n = lengths[ep]
            tables.append(_rows(ep, n, start, fixed=True, nan_at=nan[1] if nan and nan[0] == ep else None))
            in_video = short.get(ep, n)
            for cam in cams:
                video[cam].append(_frames(ep, in_video, CAMS.index(cam)))
            meta["episode_index"].append(ep)
            meta["tasks"].append(["push"])
            meta["length"].append(n)
            meta["data/chunk_index"].append(0)
            meta["data/file_index"].append(f)
            meta["dataset_from_index"].append(start)
            meta["dataset_to_index"].append(start + n)
            meta["meta/episodes/chunk_index"].append(0)
            meta["meta/episodes/file_index"].append(0)
            meta["stats/action/mean"].append(_actions(ep, n).mean(0).tolist())
            for cam in cams:
                meta[f"videos/{cam}/chunk_index"].append(0)
                meta[f"videos/{cam}/file_index"].append(f)
                meta[f"videos/{cam}/from_timestamp"].append(t0)
                meta[f"videos/{cam}/to_timestamp"].append(t0 + meta_short.get(ep, in_video) / FPS)
            t0 += in_video / FPS
            start += n
        table = pa.concat_tables(tables)
        if not state:
            table = table.drop(["observation.state"])
        (root / "data" / "chunk-000").mkdir(parents=True, exist_ok=True)
        pq.write_table(table, root / "data" / "chunk-000" / f"file-{f:03d}.parquet")
        for cam in cams:
            path, frames = root / "videos" / cam / "chunk-000" / f"file-{f:03d}.mp4", np.concatenate(video[cam])
            write_av1(path, frames) if codec == "av1" else write_video(path, frames, fps=FPS, crf=0)
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    pq.write_table(pa.table(meta), root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    return root


MAKERS = {"v2": make_v2, "v3": make_v3}


@pytest.fixture(params=sorted(MAKERS))
def make(request, tmp_path):
    """make(**kwargs) -> root of a fresh dataset of the parametrised layout."""
    counter = iter(range(100))
    return lambda **kw: MAKERS[request.param](tmp_path / f"{request.param}-{next(counter)}", **kw)


def _data_file(root: Path, ep: int) -> Path:
    if json.loads((root / "meta" / "info.json").read_text())["codebase_version"].startswith("v3"):
        return root / "data" / "chunk-000" / f"file-{0 if ep < 2 else 1:03d}.parquet"
    return root / "data" / f"chunk-{ep // 2:03d}" / f"episode_{ep:06d}.parquet"


def _video_file(root: Path, ep: int, cam: str) -> Path:
    if json.loads((root / "meta" / "info.json").read_text())["codebase_version"].startswith("v3"):
        return root / "videos" / cam / "chunk-000" / f"file-{0 if ep < 2 else 1:03d}.mp4"
    return root / "videos" / f"chunk-{ep // 2:03d}" / cam / f"episode_{ep:06d}.mp4"


def _per_frame_error(frames: torch.Tensor, ep: int, cam: int) -> torch.Tensor:
    """Mean abs difference of each frame from the colour it must have (crf 0 yuv420p: ~1 level)."""
    want = torch.from_numpy(_frames(ep, frames.shape[0], cam)).float()
    return (frames.float() - want).abs().mean(dim=(1, 2, 3))


def _check(e: Episode, ep: int, cam: int, n: int | None = None, state: bool = True) -> None:
    n = LENGTHS[ep] if n is None else n
    assert e.frames.dtype == torch.uint8 and tuple(e.frames.shape) == (n, H, W, 3)
    err = _per_frame_error(e.frames, ep, cam)
    assert (err < 3).all(), f"episode {ep} camera {cam}: frames differ from the expected ones by {err.tolist()}"
    # actions[t] leads from frame t to t+1: the first n-1 rows of the action column
    assert e.actions.dtype == torch.float32 and tuple(e.actions.shape) == (n - 1, 3)
    torch.testing.assert_close(e.actions, torch.from_numpy(_actions(ep, n)[:-1]))
    if state:
        torch.testing.assert_close(e.states, torch.from_numpy(_states(ep, n)))
    else:
        assert e.states is None
    assert e.fps == FPS
    assert e.id.endswith(f"episode_{ep:06d}")


# --------------------------------------------------------------------------------------------------
# reading


@pytest.mark.parametrize("cam", [0, 1])
def test_all_episodes_of_each_camera(make, cam):
    root = make()
    eps = load_lerobot(root, camera=CAMS[cam])
    assert len(eps) == len(LENGTHS)
    for i, e in enumerate(eps):
        _check(e, i, cam)


def test_the_camera_chosen_is_the_one_read(make):
    root = make()
    top, wrist = (load_lerobot(root, camera=c, episodes=[1])[0] for c in CAMS)
    # blue tells the cameras apart: 40 and 210
    assert abs(top.frames[..., 2].float().mean().item() - 40) < 3
    assert abs(wrist.frames[..., 2].float().mean().item() - 210) < 3
    torch.testing.assert_close(top.actions, wrist.actions)


@pytest.mark.parametrize("wanted", [[1], [2], [2, 0], [1, 1]])
def test_episode_selection(make, wanted):
    # v3 episode 1 starts 8 frames into the shared mp4 (from_timestamp 0.8 s); v2 episode 2 is in chunk-001
    eps = load_lerobot(make(), camera=CAMS[1], episodes=wanted)
    assert [e.id.rsplit("_", 1)[1] for e in eps] == [f"{i:06d}" for i in wanted]
    for e, i in zip(eps, wanted):
        _check(e, i, 1)


def test_v3_episode_inside_a_shared_video_starts_at_its_from_timestamp(tmp_path):
    root = make_v3(tmp_path / "d", files=((0, 1, 2),))  # all three episodes in one mp4
    e = load_lerobot(root, camera=CAMS[0], episodes=[2])[0]
    _check(e, 2, 0)
    # one frame early would be episode 1's last frame; the reader must not return it
    assert _per_frame_error(e.frames[:1], 1, 0).item() > 20


@pytest.mark.parametrize("jitter", [-1e-6, 1e-6])
def test_v3_from_timestamp_is_rounded_to_the_nearest_frame(tmp_path, jitter):
    # from_timestamp is a float sum of episode durations: 0.8 s may be stored as 0.7999999
    root = make_v3(tmp_path / "d")
    f = root / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    t = pq.read_table(f)
    for k in t.column_names:
        if k.endswith("_timestamp"):
            t = t.set_column(t.column_names.index(k), k, pc.add(t.column(k), jitter))
    pq.write_table(t, f)
    for e, i in zip(load_lerobot(root, camera=CAMS[0]), range(3)):
        _check(e, i, 0)


def test_single_camera_needs_no_choice(make):
    eps = load_lerobot(make(cams=CAMS[1:]), episodes=[0, 2])
    _check(eps[0], 0, 1)
    _check(eps[1], 2, 1)


def test_states_optional(make):
    root = make(state=False)
    for e, i in zip(load_lerobot(root, camera=CAMS[0]), range(3)):
        _check(e, i, 0, state=False)  # the default state key is optional
    with_states = make()
    assert all(e.states is None for e in load_lerobot(with_states, camera=CAMS[0], state_key=None))


def test_other_action_and_state_columns(make):
    root = make()
    e = load_lerobot(root, camera=CAMS[0], action_key="observation.state", state_key="action", episodes=[1])[0]
    torch.testing.assert_close(e.actions, torch.from_numpy(_states(1, LENGTHS[1])[:-1]))
    torch.testing.assert_close(e.states, torch.from_numpy(_actions(1, LENGTHS[1])))


def test_rows_are_put_in_frame_order(tmp_path):
    root = make_v2(tmp_path / "d", reverse_rows=True)
    for e, i in zip(load_lerobot(root, camera=CAMS[0]), range(3)):
        _check(e, i, 0)


def test_v2_without_episodes_jsonl_uses_total_episodes(tmp_path):
    root = make_v2(tmp_path / "d")
    (root / "meta" / "episodes.jsonl").unlink()
    assert [e.id[-1] for e in load_lerobot(root, camera=CAMS[0])] == ["0", "1", "2"]


def test_data_load_finds_a_lerobot_dataset(make):
    eps = load(str(make()), limit=2, camera=CAMS[0])
    assert len(eps) == 2
    _check(eps[1], 1, 0)


# --------------------------------------------------------------------------------------------------
# which reader decoded the videos: H.264 (decord) and AV1, LeRobot's default codec (PyAV)


def test_each_episode_records_its_reader_and_codec(make):
    """The lossless H.264 sets: decord where it is installed, and no word on the terminal."""
    for e in load_lerobot(make(), camera=CAMS[0]):
        assert e.video.codec == "h264"
        if DECORD is not None:
            assert e.video == VideoSource("decord", DECORD.__version__, "h264", None)
        else:
            assert e.video.backend == "pyav" and e.video.reason == "decord is not installed"


@pytest.mark.skipif(not _has_av1_encoder(), reason="this PyAV's FFmpeg has no SVT-AV1 encoder to write AV1")
def test_v3_in_av1_as_lerobot_writes_it_reads_and_says_how(tmp_path, capsys):
    """A v3.0 set encoded the way the lerobot library encodes by default (SVT-AV1, crf 30, a key frame
    every 2 frames): decord 0.6 cannot open AV1, so PyAV reads it; every episode (including those
    that start inside a shared file) has the right frames, and the report says PyAV / av1, once on
    the terminal, and in its data["video"] (which survives save and load)."""
    from wmcore.settings import Thresholds
    from wmcore.evaluate import EvalConfig, evaluate
    from wmcore.models.analytic import AnalyticConfig, AnalyticModel
    from wmcore.report import DriftReport

    said_before = any("codec av1" in line for line in video.notices())  # by an earlier test of this process
    root = make_v3(tmp_path / "d", codec="av1")
    with av.open(str(root / "videos" / CAMS[0] / "chunk-000" / "file-000.mp4")) as c:
        assert c.streams.video[0].codec_context.codec.canonical_name == "av1"
    eps = load_lerobot(root, camera=CAMS[0])
    for i, e in enumerate(eps):
        _check(e, i, 0)  # frames within 3 levels of their colours: lossy, but the right frames
    reason = ("decord is not installed" if DECORD is None
              else f"decord {DECORD.__version__} cannot decode this av1 video")
    assert {e.video for e in eps} == {VideoSource("pyav", av.__version__, "av1", reason)}
    said = capsys.readouterr().err  # once per process, however many episodes and files
    assert said.count("wmcore: video decoded by PyAV") == (0 if said_before else 1)
    assert any("codec av1" in line for line in video.notices())

    model = AnalyticModel(AnalyticConfig(height=H, width=W, action_dim=3, gain=(0.1, -0.05, 0.0)))
    r = evaluate(model, eps, EvalConfig(horizon=4), Thresholds(bootstrap=50), data_id=str(root))
    want = {"backend": "pyav", "codec": "av1", "reason": reason,
            "sources": [{"backend": "pyav", "version": av.__version__, "codec": "av1", "reason": reason,
                         "episodes": 3}]}
    assert r.data["video"] == want
    back = DriftReport.load(r.save(tmp_path / "r.json"))
    assert back.data["video"] == want
    assert capsys.readouterr().err == ""  # said once per run, not again for the evaluation


# --------------------------------------------------------------------------------------------------
# bad input: a WMError that names what is wrong


def _raises(match: str, root, **kw) -> WMError:
    with pytest.raises(WMError, match=match) as e:
        load_lerobot(root, **kw)
    return e.value


def test_no_info_json(tmp_path):
    _raises(r"no meta/info\.json", tmp_path)


@pytest.mark.parametrize("text", ["{", "", "[1, 2]", '"v2.1"'])
def test_bad_info_json(tmp_path, text):
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "info.json").write_text(text)
    _raises(r"info\.json", tmp_path)


def test_info_json_not_json(tmp_path):
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "info.json").write_text("{")
    _raises(r"info\.json: not valid JSON", tmp_path)


def test_unknown_camera_lists_the_cameras(make):
    err = _raises(r"no camera 'observation\.images\.side'", make(), camera="observation.images.side")
    assert all(c in str(err) for c in CAMS)


def test_two_cameras_need_a_choice(make):
    err = _raises(r"2 cameras", make())
    assert all(c in str(err) for c in CAMS) and "camera=" in str(err)


def test_no_camera_at_all(make):
    _raises(r"no video feature", make(cams=()))


def test_missing_action_key_lists_the_features(make):
    err = _raises(r"no action key 'actions'", make(), camera=CAMS[0], action_key="actions")
    assert "'observation.state'" in str(err) and "'action'" in str(err)


def test_missing_explicit_state_key(make):
    err = _raises(r"no state key 'observation\.velocity'", make(), camera=CAMS[0], state_key="observation.velocity")
    assert "'observation.state'" in str(err)


def test_missing_parquet(make):
    root = make()
    _data_file(root, 2).unlink()
    _raises(r"parquet.*missing", root, camera=CAMS[0])
    assert len(load_lerobot(root, camera=CAMS[0], episodes=[0, 1])) == 2  # the others still read


def test_missing_video(make):
    root = make()
    _video_file(root, 2, CAMS[1]).unlink()
    _raises(r"episode_000002\.mp4|file-001\.mp4", root, camera=CAMS[1])
    _raises(r"missing video of camera 'observation\.images\.wrist' for episode 2", root, camera=CAMS[1])
    assert len(load_lerobot(root, camera=CAMS[1], episodes=[0, 1])) == 2  # the other episodes read
    assert len(load_lerobot(root, camera=CAMS[0])) == 3  # the other camera is complete


def test_corrupt_parquet(make):
    root = make()
    _data_file(root, 1).write_bytes(b"PAR1 this is not a parquet file PAR1")
    _raises(r"unreadable parquet", root, camera=CAMS[0], episodes=[1])


def test_corrupt_episode_metadata_v3(tmp_path):
    root = make_v3(tmp_path / "d")
    (root / "meta" / "episodes" / "chunk-000" / "file-000.parquet").write_bytes(b"garbage")
    _raises(r"file-000\.parquet: unreadable parquet", root, camera=CAMS[0])


def test_missing_episode_metadata_v3(tmp_path):
    root = make_v3(tmp_path / "d")
    (root / "meta" / "episodes" / "chunk-000" / "file-000.parquet").unlink()
    _raises(r"meta/episodes", root, camera=CAMS[0])


def test_nan_in_actions(make):
    root = make(nan=(1, 3))
    _raises(r"episode 1 column 'action' contains NaN", root, camera=CAMS[0])
    assert len(load_lerobot(root, camera=CAMS[0], episodes=[0, 2])) == 2


@pytest.mark.parametrize("ep", [0, 1, 2])
def test_fewer_video_frames_than_rows(make, ep):
    # v3 episode 0 or 1 with a short video would silently borrow the next episode's frames; episode 2
    # would run past the end of its file
    root = make(short={ep: LENGTHS[ep] - 2})
    err = _raises(rf"episode {ep}.*{LENGTHS[ep]} rows.*{LENGTHS[ep] - 2} frames", root, camera=CAMS[0])
    assert "IndexError" not in str(err)
    others = [i for i in range(3) if i != ep]
    for e, i in zip(load_lerobot(root, camera=CAMS[0], episodes=others), others):
        _check(e, i, 0)


def test_v3_to_timestamp_shorter_than_the_episode(tmp_path):
    root = make_v3(tmp_path / "d", meta_short={0: 5})
    _raises(r"episode 0.*8 rows.*5 frames", root, camera=CAMS[0], episodes=[0])


def test_fewer_rows_than_the_metadata_says(tmp_path):
    root = make_v2(tmp_path / "d")
    p = root / "meta" / "episodes.jsonl"
    p.write_text(p.read_text().replace('"length": 10', '"length": 12'))
    _raises(r"episode 1 has 10 rows.*length 12", root, camera=CAMS[0], episodes=[1])


def test_gap_in_frame_index(tmp_path):
    root = make_v2(tmp_path / "d")
    f = _data_file(root, 0)
    t = pq.read_table(f)
    t = t.set_column(t.column_names.index("frame_index"), "frame_index", pa.array([0, 1, 2, 4, 5, 6, 7, 8]))
    pq.write_table(t, f)
    _raises(r"episode 0: frame_index is not 0\.\.7", root, camera=CAMS[0], episodes=[0])


def test_bad_episodes_jsonl(tmp_path):
    root = make_v2(tmp_path / "d")
    (root / "meta" / "episodes.jsonl").write_text('{"episode_index": 0}\n{oops\n')
    _raises(r"episodes\.jsonl: line 2", root, camera=CAMS[0])


@pytest.mark.parametrize("wanted", [[7], [0, 3], [-1]])
def test_nonexistent_episode(make, wanted):
    err = _raises(rf"no episode {wanted[-1]}\b", make(), camera=CAMS[0], episodes=wanted)
    assert "0, 1, 2" in str(err) or "0..2" in str(err)


@pytest.mark.parametrize("bad", ["1", 1.0, True])
def test_episode_index_must_be_int(make, bad):
    _raises(r"episode", make(), camera=CAMS[0], episodes=[bad])


def test_unsupported_codebase_version(tmp_path):
    root = make_v2(tmp_path / "d")
    info = json.loads((root / "meta" / "info.json").read_text())
    info["codebase_version"] = "v1.6"
    (root / "meta" / "info.json").write_text(json.dumps(info))
    _raises(r"codebase_version 'v1\.6'", root, camera=CAMS[0])


def test_episode_of_one_frame(make):
    _raises(r"episode 0 has 1 frame", make(lengths=(1, 4, 4)), camera=CAMS[0], episodes=[0])

