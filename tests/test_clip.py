"""One clip: action files of every format (and the bad ones), a video with its actions as an Episode,
``wmcore.data.load`` of a video, ``wmcore rollout`` and the plugin's ``--wm-data VIDEO
--wm-actions-file F`` on a clip of the analytic world written losslessly, whose drift is known."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from wmcore.cli import main
from wmcore.data import load
from wmcore.data.clip import find_actions, load_clip, read_actions
from wmcore.errors import WMError
from wmcore.models.analytic import AnalyticConfig, expected_open_cosine, make_episodes
from wmcore.report import DriftReport
from wmcore.video import write_video

pytest_plugins = ["pytester"]

BENCH = Path(__file__).resolve().parents[1] / "wmcore" / "suites" / "test_drift.py"
CFG = AnalyticConfig(delta=0.05)
STEPS = 14  # transitions in the clip: 15 frames
FPS = 12.0
MODEL = "analytic:delta=0.05"


# --------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def world():
    """One episode of the analytic world: frames uint8 [15, 16, 16, 3], actions float32 [14, 2]."""
    return make_episodes(CFG, episodes=1, steps=STEPS, seed=5)[0]


@pytest.fixture(scope="module")
def master_video(world, tmp_path_factory) -> Path:
    """The episode's frames as a lossless H.264 (libx264rgb, crf 0) clip, with nothing beside it."""
    return write_video(tmp_path_factory.mktemp("master") / "clip.mp4", world.frames, fps=FPS, crf=0, pix_fmt="rgb24")


@pytest.fixture
def video(master_video, tmp_path) -> Path:
    """A private copy of the clip in an otherwise empty directory."""
    d = tmp_path / "clipdir"
    d.mkdir()
    return Path(shutil.copy(master_video, d / "clip.mp4"))


@pytest.fixture
def clip(video, world) -> Path:
    """The clip with its recorded actions beside it (clip.npy)."""
    np.save(video.with_suffix(".npy"), world.actions.numpy())
    return video


A = np.array([[0.5, -1.25], [2.0, 0.0], [-3.5, 1e-3]], dtype=np.float32)
S = np.arange(8, dtype=np.float32).reshape(4, 2) / 4


def _write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


# --------------------------------------------------------------------------------------------------
# read_actions: every format


def _npy2(p):
    np.save(p / "a.npy", A)
    return p / "a.npy", A, None


def _npy1(p):
    np.save(p / "a.npy", A[:, 0])
    return p / "a.npy", A[:, :1], None


def _npz(p):
    np.savez(p / "a.npz", actions=A, states=S)
    return p / "a.npz", A, S


def _npz_no_states(p):
    np.savez(p / "a.npz", actions=A, other=np.zeros(3))
    return p / "a.npz", A, None


def _csv_header(p):
    return _write(p / "a.csv", "dx,dy\n0.5,-1.25\n2,0\n\n-3.5,0.001\n"), A, None


def _csv_plain(p):
    # the first row is data (integers), not a header
    return _write(p / "a.csv", "1,2\r\n0.5,-1.25\r\n2,0\r\n-3.5, 1e-3\r\n"), np.vstack([[1, 2], A]), None


def _json_list(p):
    return _write(p / "a.json", json.dumps(A.tolist())), A, None


def _json_object(p):
    return _write(p / "a.json", json.dumps({"actions": A.tolist(), "states": S.tolist(), "fps": 10})), A, S


@pytest.mark.parametrize("make", [_npy2, _npy1, _npz, _npz_no_states, _csv_header, _csv_plain, _json_list, _json_object],
                         ids=lambda f: f.__name__.lstrip("_"))
def test_read_actions_formats(make, tmp_path):
    path, want_a, want_s = make(tmp_path)
    actions, states = read_actions(path)
    assert actions.dtype == np.float32 and actions.ndim == 2
    np.testing.assert_array_equal(actions, np.asarray(want_a, dtype=np.float32))
    if want_s is None:
        assert states is None
    else:
        assert states.dtype == np.float32
        np.testing.assert_array_equal(states, want_s)


# --------------------------------------------------------------------------------------------------
# read_actions: bad files


def _bad_cases():
    def npz_without_actions(p):
        np.savez(p / "a.npz", acts=A, states=S)
        return p / "a.npz"

    def npy_3d(p):
        np.save(p / "a.npy", np.zeros((2, 3, 4)))
        return p / "a.npy"

    def npy_nan(p):
        a = A.copy()
        a[2, 1] = np.nan
        np.save(p / "a.npy", a)
        return p / "a.npy"

    def npy_really(p):  # an .npy array under an .npz name
        np.save(p / "a.npy", A)
        return Path(shutil.move(p / "a.npy", p / "a.npz"))

    def npz_string_states(p):
        np.savez(p / "a.npz", actions=A, states=np.array([["a", "b"]] * 4))
        return p / "a.npz"

    def npz_nan_states(p):
        s = S.copy()
        s[3, 0] = np.inf
        np.savez(p / "a.npz", actions=A, states=s)
        return p / "a.npz"

    def npy_bool(p):
        np.save(p / "a.npy", np.ones((3, 2), bool))
        return p / "a.npy"

    return [
        ("missing", lambda p: p / "nope.npy", ["no such action file"]),
        ("unknown suffix", lambda p: _write(p / "a.txt", "1,2\n"), ["unknown action file type '.txt'", ".npz", ".csv"]),
        ("npz without actions", npz_without_actions, ["no 'actions' array", "['acts', 'states']"]),
        ("csv non-numeric row", lambda p: _write(p / "a.csv", "x,y\n1,2\n\n3,oops\n5,6\n"),
         ["line 4", "action row 1", "'oops'"]),
        ("csv non-numeric first row is data", lambda p: _write(p / "a.csv", "1.5,oops\n1,2\n3,4\n"),
         ["line 1", "not all numbers"]),
        ("csv nan", lambda p: _write(p / "a.csv", "x,y\n1,2\n3,4\nnan,6\n"), ["NaN or inf", "line 4", "action row 2"]),
        ("csv ragged", lambda p: _write(p / "a.csv", "1,2\n3\n"), ["different numbers of columns", "line 2"]),
        ("npy nan", npy_nan, ["NaN or inf", "action row 2"]),
        ("json null", lambda p: _write(p / "a.json", "[[1, 2], [3, null]]"), ["NaN or inf", "action row 1"]),
        ("csv empty", lambda p: _write(p / "a.csv", ""), ["T >= 1", "(0, 0)"]),
        ("csv header only", lambda p: _write(p / "a.csv", "x,y\n"), ["T >= 1"]),
        ("npy empty array", lambda p: (np.save(p / "a.npy", np.zeros((0, 2))), p / "a.npy")[1], ["T >= 1", "(0, 2)"]),
        ("json empty list", lambda p: _write(p / "a.json", "[]"), ["T >= 1"]),
        ("npy empty file", lambda p: _write(p / "a.npy", b""), ["unreadable action file"]),
        ("npz empty file", lambda p: _write(p / "a.npz", b""), ["not an .npz archive"]),
        ("json empty file", lambda p: _write(p / "a.json", b""), ["unreadable action file"]),
        ("3-D array", npy_3d, ["[T, A]", "(2, 3, 4)"]),
        ("npy bool", npy_bool, ["numeric actions", "bool"]),
        ("corrupt npy", lambda p: _write(p / "a.npy", b"\x93NUMPY\x01\x00garbage that is no header"),
         ["unreadable action file"]),
        ("npy of random bytes", lambda p: _write(p / "a.npy", b"just some text"), ["unreadable action file"]),
        ("corrupt npz", lambda p: _write(p / "a.npz", b"PK\x03\x04 a cut-short zip"), ["not an .npz archive"]),
        ("npy named npz", npy_really, ["not an .npz archive"]),
        ("corrupt json", lambda p: _write(p / "a.json", '[[1, 2], [3, '), ["unreadable action file"]),
        ("json ragged", lambda p: _write(p / "a.json", "[[1, 2], [3]]"), ["unreadable action file"]),
        ("json object without actions", lambda p: _write(p / "a.json", '{"acts": [[1]]}'), ["'actions' key", "['acts']"]),
        ("npz string states", npz_string_states, ["numeric states", "(4, 2)"]),
        ("npz inf states", npz_nan_states, ["states contain NaN or inf", "state row 3"]),
    ]


@pytest.mark.parametrize("make, fragments", [c[1:] for c in _bad_cases()], ids=[c[0] for c in _bad_cases()])
def test_read_actions_rejects_bad_files(make, fragments, tmp_path):
    path = make(tmp_path)
    with pytest.raises(WMError) as e:
        read_actions(path)
    msg = str(e.value)
    assert str(path) in msg, msg
    for f in fragments:
        assert f in msg, msg


# --------------------------------------------------------------------------------------------------
# load_clip


def test_load_clip_frames_actions_fps(clip, world):
    ep = load_clip(clip)
    assert ep.frames.dtype == torch.uint8 and tuple(ep.frames.shape) == (STEPS + 1, 16, 16, 3)
    assert torch.equal(ep.frames, world.frames)  # lossless: exactly the written frames
    assert torch.equal(ep.actions, world.actions)
    assert ep.states is None and ep.fps == FPS and ep.id == "clip.mp4"
    assert load_clip(clip, fps=5.0).fps == 5.0


def test_load_clip_trims_extra_trailing_actions(video, world, tmp_path):
    extra = np.vstack([world.actions.numpy(), np.full((1, 2), 7.0, np.float32)])  # one per frame
    np.save(tmp_path / "one_per_frame.npy", extra)
    ep = load_clip(video, tmp_path / "one_per_frame.npy")
    assert ep.steps == STEPS and torch.equal(ep.actions, world.actions)


def test_load_clip_too_few_actions_names_both_counts(video, world, tmp_path):
    np.save(tmp_path / "short.npy", world.actions.numpy()[:11])
    with pytest.raises(WMError) as e:
        load_clip(video, tmp_path / "short.npy")
    msg = str(e.value)
    assert "short.npy" in msg and "11 actions" in msg and f"{STEPS + 1} frames" in msg and f"need {STEPS}" in msg


def test_load_clip_states_trimmed_and_checked(video, world, tmp_path):
    states = np.arange((STEPS + 3) * 3, dtype=np.float32).reshape(STEPS + 3, 3)
    np.savez(tmp_path / "with_states.npz", actions=world.actions.numpy(), states=states)
    ep = load_clip(video, tmp_path / "with_states.npz")
    assert torch.equal(ep.states, torch.from_numpy(states[: STEPS + 1]))
    np.savez(tmp_path / "few_states.npz", actions=world.actions.numpy(), states=states[:STEPS])
    with pytest.raises(WMError, match=rf"few_states\.npz: states must be \[T\+1={STEPS + 1}, S\], found \({STEPS}, 3\)"):
        load_clip(video, tmp_path / "few_states.npz")


@pytest.mark.parametrize("name", ["clip.npy", "clip.actions.npy", "clip.csv", "clip.actions.json", "clip.npz"])
def test_load_clip_finds_the_action_file_beside_the_video(video, world, name):
    a = world.actions.numpy()
    p = video.with_name(name)
    if name.endswith(".npy"):
        np.save(p, a)
    elif name.endswith(".npz"):
        np.savez(p, actions=a)
    elif name.endswith(".csv"):
        p.write_text("ax,ay\n" + "".join(f"{x!r},{y!r}\n" for x, y in a.tolist()))
    else:
        p.write_text(json.dumps({"actions": a.tolist()}))
    assert find_actions(video) == p
    ep = load_clip(video)
    assert torch.equal(ep.actions, world.actions)


def test_find_actions_ignores_other_stems(video):
    np.save(video.with_name("other.npy"), np.zeros((STEPS, 2)))
    np.save(video.with_name("clip.mp4.npy"), np.zeros((STEPS, 2)))
    assert find_actions(video) is None


def test_load_clip_without_an_action_file_says_so(video):
    with pytest.raises(WMError) as e:
        load_clip(video)
    msg = str(e.value)
    assert str(video) in msg and "no action file" in msg and "zero actions" in msg


def test_load_clip_zero_actions(video):
    with pytest.raises(WMError, match="action width"):
        load_clip(video, "zeros")
    ep = load_clip(video, "zeros", action_dim=3)
    assert ep.actions.dtype == torch.float32 and tuple(ep.actions.shape) == (STEPS, 3)
    assert not ep.actions.any()


# --------------------------------------------------------------------------------------------------
# wmcore.data.load of a video


def test_data_load_of_a_video(clip, world, tmp_path):
    (ep,) = load(str(clip))
    assert torch.equal(ep.frames, world.frames) and torch.equal(ep.actions, world.actions)
    elsewhere = tmp_path / "elsewhere.csv"
    elsewhere.write_text("\n".join(f"{2 * x!r},{-y!r}" for x, y in world.actions.tolist()) + "\n")
    (ep2,) = load(clip, actions=str(elsewhere))  # the named file wins over the one beside the video
    assert torch.equal(ep2.actions, world.actions * torch.tensor([2.0, -1.0]))


def test_data_load_refuses_a_file_that_is_not_a_video(clip):
    with pytest.raises(WMError) as e:
        load(str(clip.with_suffix(".npy")))
    assert "clip.npy" in str(e.value) and "not a video" in str(e.value)


# --------------------------------------------------------------------------------------------------
# wmcore rollout


def _cosines(out: str, loop: str) -> dict[int, float]:
    """The cosines by step in the summary row of ``loop`` ("open loop": ``  open_loop  step1=0.999 ...``)."""
    line = next(ln for ln in out.splitlines() if ln.strip().startswith(loop.replace(" ", "_") + " "))
    return {int(k): float(v) for k, v in re.findall(r"(?:^|\s)step(\d+)=(\S+)", line)}


def _rollout(*args: str) -> int:
    return main(["rollout", "--model", MODEL, *args])


def test_rollout_prints_the_known_answer_and_writes_png_and_report(clip, tmp_path, capsys):
    png = tmp_path / "out" / "drift.png"
    png.parent.mkdir()
    assert _rollout("--video", str(clip), "--out", str(png), "--horizon", "10") == 0
    out = capsys.readouterr().out
    want = expected_open_cosine(CFG, 10)
    got = _cosines(out, "open loop")
    assert set(got) == {1, 10}
    assert got[1] == pytest.approx(float(want[0]), abs=1e-3)
    assert got[10] == pytest.approx(float(want[9]), abs=1e-3)
    closed = _cosines(out, "closed loop")
    assert closed[10] == pytest.approx(math.cos(CFG.delta), abs=1e-3)
    assert "recorded actions" in out and "15 frames" in out
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    report = DriftReport.load(png.with_suffix(".json"))
    assert report.horizon == 10 and report.config["action_source"] == "recorded"
    np.testing.assert_allclose(report.loops["open_loop"].cosine, want.numpy(), atol=1e-3)

    # the same --out again: refused, nothing touched
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (png, png.with_suffix(".json"))}
    assert _rollout("--video", str(clip), "--out", str(png), "--horizon", "10") == 2
    assert "exists already" in capsys.readouterr().err
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in before} == before
    assert sorted(p.name for p in png.parent.iterdir()) == ["drift.json", "drift.png"]


def test_rollout_with_zero_actions(clip, world, tmp_path, capsys):
    png = tmp_path / "zeros.png"
    assert _rollout("--video", str(clip), "--actions", "zeros", "--out", str(png), "--horizon", "10") == 0
    out = capsys.readouterr().out
    assert "zeros actions" in out
    # the model turns by omega + delta per step; the world by omega + b . a_t: error k delta - b . sum(a)
    k = torch.arange(1, 11, dtype=torch.float64)
    turned = torch.cumsum(world.actions[:10].double() @ torch.tensor(CFG.gain, dtype=torch.float64), 0)
    want = torch.cos(k * CFG.delta - turned)
    report = DriftReport.load(png.with_suffix(".json"))
    assert report.config["action_source"] == "zeros"
    np.testing.assert_allclose(report.loops["open_loop"].cosine, want.numpy(), atol=2e-3)
    assert _cosines(out, "open loop")[10] == pytest.approx(float(want[9]), abs=2e-3)


def test_rollout_with_a_named_action_file(video, world, tmp_path, capsys):
    np.save(tmp_path / "acts.npy", world.actions.numpy())
    png = tmp_path / "named.png"
    assert _rollout("--video", str(video), "--actions", str(tmp_path / "acts.npy"), "--out", str(png), "--horizon", "4") == 0
    got = _cosines(capsys.readouterr().out, "open loop")
    assert set(got) == {1, 4}  # H < 10: steps 1 and H
    assert got[4] == pytest.approx(math.cos(4 * CFG.delta), abs=1e-3)


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--horizon", "20"], ["--horizon 20", "15 frames = 14 model steps", "--horizon <= 14"]),
        (["--horizon", "0"], ["wmcore rollout: error: argument --horizon: expected an integer >= 1, found 0"]),
        (["--video", "MISSING"], ["nope.mp4", "no such file"]),
        (["--actions", "MISSING"], ["nope.npy", "no such action file"]),
        (["--out", "OUT.json"], ["expected a .png"]),
    ],
    ids=["horizon-too-long", "horizon-0", "missing-video", "missing-actions", "json-out"],
)
def test_rollout_bad_input_exits_2_and_writes_nothing(clip, tmp_path, capsys, args, fragments):
    opts = {"--video": str(clip), "--out": str(tmp_path / "o" / "x.png"), "--horizon": "5"}
    (tmp_path / "o").mkdir()
    for flag, value in zip(args[::2], args[1::2]):
        opts[flag] = (value.replace("MISSING", str(tmp_path / ("nope.mp4" if flag == "--video" else "nope.npy")))
                      .replace("OUT", str(tmp_path / "o" / "x")))
    assert _rollout(*[x for kv in opts.items() for x in kv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wmcore rollout: error: ") or err.startswith("usage: wmcore rollout")  # ours, or argparse's
    for f in fragments:
        assert f in err, err
    assert list((tmp_path / "o").iterdir()) == []


# --------------------------------------------------------------------------------------------------
# the plugin on one video


@pytest.fixture
def bench(pytester):
    pytester.makepyfile(test_drift=BENCH.read_text())
    return pytester


def test_plugin_on_a_video_with_an_action_file(bench, video, world, tmp_path):
    actions = tmp_path / "acts" / "recorded.json"  # not beside the video: only --wm-actions-file finds it
    actions.parent.mkdir()
    actions.write_text(json.dumps({"actions": world.actions.tolist()}))
    bj = tmp_path / "bench.json"
    r = bench.runpytest("--benchmark-only", "-p", "no:cacheprovider", "--wm-model", MODEL, "--wm-data", str(video),
                        "--wm-actions-file", str(actions), "--wm-horizon", "10", "--wm-actions", "recorded",
                        "--wm-artifacts", str(tmp_path / "art"), f"--benchmark-json={bj}")
    r.assert_outcomes(passed=1)
    (b,) = json.loads(bj.read_text())["benchmarks"]
    rec = b["extra_info"]["wmcore"]
    assert rec["data"]["episodes"] == 1 and rec["config"]["horizon"] == 10 and rec["passed"]
    np.testing.assert_allclose(rec["curves"]["open_loop"], expected_open_cosine(CFG, 10).numpy(), atol=1e-3)


def test_plugin_missing_actions_file_is_a_usage_error(bench, video):
    r = bench.runpytest("--benchmark-only", "-p", "no:cacheprovider", "--wm-model", MODEL, "--wm-data", str(video),
                        "--wm-actions-file", "/missing/acts.npy")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    assert "--wm-actions-file '/missing/acts.npy': no such file" in r.stderr.str()
