"""The on-disk episode format (wmcore.data.episodes): round trips and every way a set can be broken."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from wmcore.data import Episode, stack
from wmcore.data.episodes import (
    INDEX,
    episode_name,
    load_episodes,
    read_index,
    save_episode,
    write_index,
)
from wmcore.errors import WMError

META = {"fps": 10.0, "height": 32, "width": 48, "actions": {"dim": 2}, "states": {"dim": 3}}


def _episode(steps: int = 6, seed: int = 0, states: bool = True, grey: bool = True, h: int = 32,
             w: int = 48) -> Episode:
    """A square moving over a gradient; grey frames (R = G = B) survive H.264 at crf 0 up to rounding."""
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    frames = np.empty((steps + 1, h, w, 3), dtype=np.uint8)
    for t in range(steps + 1):
        img = (40 + 2 * xx + yy).astype(np.uint8)
        img[4 + t : 12 + t, 6 + 2 * t : 14 + 2 * t] = 230
        frames[t] = img[..., None] if grey else np.stack([img, 255 - img, img // 2], -1)
    return Episode(
        frames=torch.from_numpy(frames),
        actions=torch.from_numpy(g.uniform(0, 512, (steps, 2)).astype(np.float32)),
        states=torch.from_numpy(g.normal(size=(steps + 1, 3)).astype(np.float32)) if states else None,
        fps=10.0,
        id=f"synthetic-{seed}",
    )


def _write_set(d: Path, episodes: list[Episode], meta: dict | None = None) -> list[dict]:
    entries = [save_episode(d, i, e, seed=100 + i, extra={"k": i}) for i, e in enumerate(episodes)]
    write_index(d, {**META, **(meta or {})}, entries)
    return entries


def _rewrite_index(d: Path, change) -> None:
    doc = json.loads((d / INDEX).read_text())
    change(doc)
    (d / INDEX).unlink()
    (d / INDEX).write_text(json.dumps(doc))


def test_round_trip_actions_states_exact_frames_near(tmp_path):
    eps = [_episode(6, seed=0), _episode(9, seed=1)]
    _write_set(tmp_path, eps)
    back = load_episodes(tmp_path)
    assert [e.id for e in back] == [f"{tmp_path.name}/episode_000", f"{tmp_path.name}/episode_001"]
    for a, b in zip(eps, back):
        assert b.frames.dtype == torch.uint8 and b.frames.shape == a.frames.shape
        assert torch.equal(b.actions, a.actions) and b.actions.dtype == torch.float32
        assert torch.equal(b.states, a.states)
        assert b.fps == 10.0
        err = (b.frames.int() - a.frames.int()).abs()
        assert err.max() <= 2, f"grey frames should survive crf 0 almost exactly, max error {err.max()}"
    z = np.load(tmp_path / "episode_001.npz")
    assert int(z["seed"]) == 101 and float(z["fps"]) == 10.0 and json.loads(str(z["extra"])) == {"k": 1}
    assert stack(back, steps=6).frames.shape == (2, 7, 32, 48, 3)


def test_colour_frames_mean_error_small(tmp_path):
    ep = _episode(5, grey=False)
    _write_set(tmp_path, [ep])
    (back,) = load_episodes(tmp_path)
    assert (back.frames.float() - ep.frames.float()).abs().mean() < 3.0


def test_without_states_and_limit(tmp_path):
    _write_set(tmp_path, [_episode(4, seed=s, states=False) for s in range(3)])
    back = load_episodes(tmp_path, limit=2)
    assert len(back) == 2 and all(e.states is None for e in back)
    assert len(load_episodes(tmp_path)) == 3


def test_index_lists_files_sizes_hashes(tmp_path):
    _write_set(tmp_path, [_episode(4)], meta={"frameskip": 5, "seed": 7})
    doc = read_index(tmp_path)
    assert doc["format"] == "wmcore.episodes" and doc["version"] == 1
    assert doc["frameskip"] == 5 and doc["seed"] == 7
    (e,) = doc["episodes"]
    assert e["name"] == "episode_000" and e["steps"] == 4 and e["seed"] == 100 and e["extra"] == {"k": 0}
    assert e["bytes"]["video"] == (tmp_path / "episode_000.mp4").stat().st_size
    assert len(e["sha256"]["data"]) == 64 and len(e["sha256"]["video"]) == 64


def test_refuses_to_overwrite_an_episode(tmp_path):
    save_episode(tmp_path, 0, _episode(4, seed=0), seed=0)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(WMError, match="exists already"):
        save_episode(tmp_path, 0, _episode(5, seed=1), seed=1)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_refuses_when_only_the_npz_exists(tmp_path):
    (tmp_path / "episode_003.npz").write_bytes(b"old")
    with pytest.raises(WMError, match="episode_003.npz: exists already"):
        save_episode(tmp_path, 3, _episode(4), seed=0)
    assert not (tmp_path / "episode_003.mp4").exists()


def test_refuses_to_overwrite_the_index(tmp_path):
    entries = _write_set(tmp_path, [_episode(4)])
    with pytest.raises(WMError, match="exists already"):
        write_index(tmp_path, META, entries)


def test_no_temporary_files_left(tmp_path):
    _write_set(tmp_path, [_episode(4)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["episode_000.mp4", "episode_000.npz", INDEX]


def test_missing_npz_named(tmp_path):
    _write_set(tmp_path, [_episode(4), _episode(4, seed=1)])
    (tmp_path / "episode_001.npz").unlink()
    with pytest.raises(WMError, match=r"episode_001\.npz: missing"):
        load_episodes(tmp_path)


def test_missing_video_named(tmp_path):
    _write_set(tmp_path, [_episode(4)])
    (tmp_path / "episode_000.mp4").unlink()
    with pytest.raises(WMError, match=r"episode_000\.mp4: missing"):
        load_episodes(tmp_path)


def test_missing_index(tmp_path):
    save_episode(tmp_path, 0, _episode(4), seed=0)
    with pytest.raises(WMError, match="index.json: missing"):
        load_episodes(tmp_path)
    with pytest.raises(WMError, match="no such episode directory"):
        load_episodes(tmp_path / "nope")


def test_frame_count_mismatch(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    ea = _write_set(a, [_episode(5)])[0]
    _write_set(b, [_episode(8)])
    c.mkdir()
    shutil.copy(a / "episode_000.npz", c)
    shutil.copy(b / "episode_000.mp4", c)  # 9 frames for 5 actions
    entry = {**ea, "sha256": {**ea["sha256"], "video": read_index(b)["episodes"][0]["sha256"]["video"]}}
    write_index(c, META, [entry])
    with pytest.raises(WMError, match=r"episode_000\.mp4: 9 frames, but .*episode_000\.npz has 5 actions"):
        load_episodes(c)


def test_changed_file_fails_the_hash_check(tmp_path):
    _write_set(tmp_path, [_episode(5)])
    z = dict(np.load(tmp_path / "episode_000.npz"))
    z["actions"] = z["actions"] + 1
    (tmp_path / "episode_000.npz").unlink()
    np.savez(tmp_path / "episode_000.npz", **z)
    with pytest.raises(WMError, match=r"episode_000\.npz: sha256 differs"):
        load_episodes(tmp_path)
    back = load_episodes(tmp_path, verify=False)  # the check, not the format, refused it
    assert torch.equal(back[0].actions, torch.from_numpy(z["actions"]))


def test_corrupt_npz(tmp_path):
    _write_set(tmp_path, [_episode(5)])
    p = tmp_path / "episode_000.npz"
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(WMError, match=r"episode_000\.npz: not a readable npz"):
        load_episodes(tmp_path, verify=False)


def test_npz_without_actions(tmp_path):
    _write_set(tmp_path, [_episode(5)])
    p = tmp_path / "episode_000.npz"
    p.unlink()
    np.savez(p, states=np.zeros((6, 3), np.float32))
    with pytest.raises(WMError, match="has no 'actions'"):
        load_episodes(tmp_path, verify=False)


def test_index_steps_mismatch(tmp_path):
    _write_set(tmp_path, [_episode(5)])
    _rewrite_index(tmp_path, lambda d: d["episodes"][0].update(steps=7))
    with pytest.raises(WMError, match="5 actions, but .* says episode_000 has 7 steps"):
        load_episodes(tmp_path)


def test_index_frame_size_mismatch(tmp_path):
    _write_set(tmp_path, [_episode(5)])
    _rewrite_index(tmp_path, lambda d: d.update(height=64))
    with pytest.raises(WMError, match="frames are 32x48, the index says 64x48"):
        load_episodes(tmp_path)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(format="other"), "format must be 'wmcore.episodes'"),
        (lambda d: d.update(version=99), "version 99 is not supported"),
        (lambda d: d.update(episodes=[]), "lists no episodes"),
    ],
)
def test_bad_index(tmp_path, change, message):
    _write_set(tmp_path, [_episode(4)])
    _rewrite_index(tmp_path, change)
    with pytest.raises(WMError, match=message):
        load_episodes(tmp_path)


def test_index_not_json(tmp_path):
    _write_set(tmp_path, [_episode(4)])
    (tmp_path / INDEX).unlink()
    (tmp_path / INDEX).write_text("{not json")
    with pytest.raises(WMError, match="not valid JSON"):
        load_episodes(tmp_path)


def test_bad_save_input(tmp_path):
    with pytest.raises(WMError, match="even height and width"):
        save_episode(tmp_path, 0, _episode(3, h=31), seed=0)
    with pytest.raises(WMError, match="JSON-serialisable"):
        save_episode(tmp_path, 0, _episode(3), seed=0, extra={"x": object()})
    with pytest.raises(WMError, match="expected a wmcore.data.Episode"):
        save_episode(tmp_path, 0, {"frames": None}, seed=0)
    with pytest.raises(WMError, match="index must be an int"):
        save_episode(tmp_path, -1, _episode(3), seed=0)
    assert not any(tmp_path.iterdir())
    with pytest.raises(WMError, match="meta needs 'fps'"):
        write_index(tmp_path, {"height": 2, "width": 2}, [])


def test_episode_names():
    assert episode_name(7) == "episode_007" and episode_name(1234) == "episode_1234"


def test_files_are_world_readable(tmp_path):
    _write_set(tmp_path, [_episode(3)])
    umask = os.umask(0)
    os.umask(umask)
    for p in tmp_path.iterdir():
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask, p
