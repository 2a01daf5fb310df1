"""wmcore.video: both readers agree, sampling and writing are right, bad input says what to fix."""

import os
import re
import types

import av
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from inputs import write_av1

from wmcore import video
from wmcore.errors import WMError
from wmcore.video import (
    VideoInfo,
    VideoSource,
    decode_video,
    notices,
    read_video,
    sample_indices,
    video_info,
    write_video,
)

T, H, W = 20, 48, 64

try:  # decord is optional (x86_64 only): the tests that need it say so
    import decord as DECORD
except ImportError:
    DECORD = None
needs_decord = pytest.mark.skipif(DECORD is None, reason="decord is not installed here")


def moving_blocks(t=T, h=H, w=W):
    """uint8 [t, h, w, 3]: a horizontal red gradient with a green and a blue block that move."""
    frames = np.zeros((t, h, w, 3), np.uint8)
    frames[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, None, :]
    for k in range(t):
        frames[k, 8:24, 2 * k:2 * k + 16, 1] = 255
        frames[k, 28:44, w - 16 - k:w - k, 2] = 200
    return frames


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    frames = moving_blocks()
    path = write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", frames, fps=10)
    return path, frames


def named(path):
    """A regex matching ``path`` literally: error messages must name the input."""
    return re.escape(str(path))


# --------------------------------------------------------------------------------------------------
# reading


def test_read_video_is_close_to_what_was_written(clip):
    path, frames = clip
    got = read_video(path)
    assert got.dtype == torch.uint8 and got.shape == (T, H, W, 3)
    err = np.abs(got.numpy().astype(np.float64)[:, None] - frames[None]).mean((2, 3, 4))  # [read, written]
    assert np.diag(err).max() < 6  # every frame, not just on average
    assert (err.argmin(1) == np.arange(T)).all()  # each read frame is closest to its own original


@pytest.mark.parametrize("backend", ["pyav", pytest.param("decord", marks=needs_decord)])
def test_rgb24_at_crf0_is_bit_exact(tmp_path, backend):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (6, 96, 96, 3), dtype=np.uint8)  # noise: nothing to hide an error in
    path = write_video(tmp_path / "x.mp4", frames, fps=10, crf=0, pix_fmt="rgb24")
    assert np.array_equal(read_video(path, backend=backend).numpy(), frames)


def test_yuv420p_loses_colour_detail_that_rgb24_keeps(tmp_path):
    frames = moving_blocks()
    frames[:, 1::2, :, 2] = 255  # one-pixel blue stripes: chroma at half resolution cannot hold them
    lossy = read_video(write_video(tmp_path / "a.mp4", frames, crf=0)).numpy().astype(int)
    exact = read_video(write_video(tmp_path / "b.mp4", frames, crf=0, pix_fmt="rgb24")).numpy().astype(int)
    assert np.abs(lossy - frames).max() > 50 and np.array_equal(exact, frames)


def test_unknown_pix_fmt(tmp_path):
    with pytest.raises(WMError, match="pix_fmt='yuv422'.*rgb24"):
        write_video(tmp_path / "x.mp4", moving_blocks(), pix_fmt="yuv422")
    assert not (tmp_path / "x.mp4").exists()


@needs_decord
def test_decord_and_pyav_return_identical_frames(clip):
    path, _ = clip
    a = read_video(path, backend="decord")
    b = read_video(path, backend="pyav")
    assert a.shape == (T, H, W, 3)
    assert torch.equal(a, b)


@needs_decord
@pytest.mark.parametrize("indices", [[13, 2, 19, 2, 7], np.array([19, 0]), torch.tensor([5]), range(3, 12, 4)])
def test_both_backends_agree_on_unsorted_subsets(clip, indices):
    path, _ = clip
    everything = read_video(path, backend="pyav")
    expect = everything[torch.as_tensor(list(indices))]
    for backend in ("decord", "pyav", "auto"):
        assert torch.equal(read_video(path, indices, backend=backend), expect), backend


def test_auto_falls_back_to_pyav_without_decord(clip, monkeypatch, tmp_path):
    path, _ = clip
    expect = read_video(path, backend="pyav")
    monkeypatch.setattr(video, "_decord", None)
    assert torch.equal(read_video(path), expect)
    assert torch.equal(read_video(path, [4, 1]), expect[[4, 1]])
    assert video_info(path).backend == "pyav"
    with pytest.raises(WMError, match="decord is not installed"):
        read_video(path, backend="decord")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(WMError, match="PyAV cannot decode it") as e:
        read_video(bad)
    assert "decord failed" not in str(e.value)  # a missing decord did not fail, it was not there


def _exploding_reader(*args, **kwargs):
    raise RuntimeError("decord exploded")


def _empty_reader(*args, **kwargs):
    return []  # what decord would say of a file whose frame count it cannot find


@pytest.mark.parametrize("reader,reason", [(_exploding_reader, "decord exploded"), (_empty_reader, "0 frames")])
def test_auto_falls_back_to_pyav_when_decord_fails(clip, monkeypatch, reader, reason):
    path, _ = clip
    expect = read_video(path, backend="pyav")
    monkeypatch.setattr(video, "_decord", types.SimpleNamespace(VideoReader=reader, cpu=lambda i: None))
    assert torch.equal(read_video(path), expect)
    assert video_info(path).backend == "pyav"
    with pytest.raises(WMError, match="decord cannot decode it.*" + reason):
        read_video(path, backend="decord")


@needs_decord
def test_auto_reads_mpeg_ts_that_decord_cannot(tmp_path):
    # decord gives up on MPEG-TS ("Unable to handle EOF ... DECORD_REWIND_RETRY_MAX"): a real fallback
    path = write_video(tmp_path / "clip.ts", moving_blocks())
    with pytest.raises(WMError, match="decord cannot decode it"):
        read_video(path, backend="decord")
    assert torch.equal(read_video(path), read_video(path, backend="pyav"))
    assert video_info(path) == VideoInfo(T, 10.0, H, W, "pyav")


def test_pyav_counts_frames_where_the_container_does_not_record_them(tmp_path):
    path = write_video(tmp_path / "clip.mkv", moving_blocks())
    with av.open(str(path)) as c:
        assert c.streams.video[0].frames == 0  # Matroska keeps no frame count
    assert video_info(path, backend="pyav").num_frames == T


@needs_decord
def test_backends_agree_across_keyframes(tmp_path):
    # a keyframe every 8 frames with B-frames: decord seeks for unsorted indices, PyAV decodes in order
    path = tmp_path / "gop.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt, s.gop_size = W, H, "yuv420p", 8
        s.options = {"crf": "18", "bf": "3"}
        for f in moving_blocks(40):
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode())
    everything = read_video(path, backend="pyav")
    assert everything.shape[0] == 40
    idx = [33, 3, 17, 9, 39, 0, 16, 33]
    assert torch.equal(read_video(path, idx, backend="decord"), everything[idx])


def test_pyav_stops_decoding_after_the_last_requested_frame(clip, monkeypatch):
    path, _ = clip
    decoded = []
    real_open = av.open

    class Counting:  # the container PyAV opens, counting the frames it hands out
        def __init__(self, *args, **kwargs):
            self.container = real_open(*args, **kwargs)
            self.streams = self.container.streams

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.container.__exit__(*exc)

        def decode(self, *args, **kwargs):
            for frame in self.container.decode(*args, **kwargs):
                decoded.append(frame)
                yield frame

    monkeypatch.setattr(video.av, "open", Counting)
    assert read_video(path, [5, 2], backend="pyav").shape == (2, H, W, 3)
    assert len(decoded) == 6


@pytest.mark.parametrize("backend", ["auto", "pyav", pytest.param("decord", marks=needs_decord)])
def test_video_info(clip, backend):
    path, _ = clip
    info = video_info(path, backend=backend)
    assert (info.num_frames, info.fps, info.height, info.width) == (T, 10.0, H, W)
    assert info.backend == {"auto": "decord" if DECORD is not None else "pyav"}.get(backend, backend)
    with pytest.raises(Exception):  # frozen: a recorded VideoInfo cannot drift
        info.num_frames = 1
    assert isinstance(info, VideoInfo)


# --------------------------------------------------------------------------------------------------
# which reader decoded it, and saying so: AV1 (LeRobot's default codec), which decord 0.6 cannot open


def _has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
        return True
    except Exception:  # noqa: BLE001 - PyAV raises UnknownCodecError (or ValueError in older versions)
        return False


needs_av1_encoder = pytest.mark.skipif(not _has_encoder("libsvtav1"),
                                       reason="this PyAV's FFmpeg has no SVT-AV1 encoder to write an AV1 clip")


@pytest.fixture
def fresh_notices(monkeypatch):
    """Each test starts as a fresh process would: nothing said yet."""
    monkeypatch.setattr(video, "_SAID", {})


@pytest.fixture(scope="module")
def av1_clip(tmp_path_factory):
    if not _has_encoder("libsvtav1"):
        pytest.skip("this PyAV's FFmpeg has no SVT-AV1 encoder to write an AV1 clip")
    frames = moving_blocks()
    return write_av1(tmp_path_factory.mktemp("av1") / "clip.mp4", frames), frames


@needs_decord
def test_h264_is_decoded_by_decord_and_says_so(clip, fresh_notices, capsys):
    path, _ = clip
    frames, source = decode_video(path)
    assert torch.equal(frames, read_video(path))
    assert source == VideoSource(backend="decord", version=video._decord.__version__, codec="h264", reason=None)
    assert capsys.readouterr().err == "" and notices() == []  # nothing to report when decord did it


def test_pyav_when_asked_for_says_so_quietly(clip, fresh_notices, capsys):
    path, _ = clip
    _, source = decode_video(path, [3, 1], backend="pyav")
    assert source == VideoSource("pyav", av.__version__, "h264", "backend='pyav' asked for")
    assert source.to_dict() == {"backend": "pyav", "version": av.__version__, "codec": "h264",
                                "reason": "backend='pyav' asked for"}
    assert capsys.readouterr().err == ""  # the caller chose it: no news


@needs_decord
@needs_av1_encoder
def test_av1_is_read_by_pyav_because_decord_cannot(av1_clip, fresh_notices, capsys):
    path, written = av1_clip
    with av.open(str(path)) as c:  # really AV1, as LeRobot writes it
        assert c.streams.video[0].codec_context.codec.canonical_name == "av1"
    with pytest.raises(WMError, match="decord cannot decode it"):  # decord 0.6 really cannot
        read_video(path, backend="decord")
    frames, source = decode_video(path)
    assert frames.shape == (T, H, W, 3) and torch.equal(frames, read_video(path, backend="pyav"))
    err = np.abs(frames.numpy().astype(np.float64)[:, None] - written[None]).mean((2, 3, 4))
    assert np.diag(err).max() < 6 and (err.argmin(1) == np.arange(T)).all()  # the right frames, in order
    assert source == VideoSource("pyav", av.__version__, "av1",
                                 f"decord {video._decord.__version__} cannot decode this av1 video")
    said = capsys.readouterr().err
    assert said.count("\n") == 1 and said.startswith(f"wmcore: video decoded by PyAV {av.__version__}, not decord")
    assert "codec av1" in said and str(path) in said and "cannot find video stream" in said
    assert notices() == [said.rstrip("\n")]


@needs_decord
@needs_av1_encoder
def test_the_fallback_is_said_once_per_run_not_per_file(av1_clip, tmp_path, fresh_notices, capsys):
    path, written = av1_clip
    other = write_av1(tmp_path / "other.mp4", written[:5])
    for p, idx in ((path, None), (other, [4, 0]), (path, [2]), (other, None)):
        assert decode_video(p, idx)[1].codec == "av1"
    assert video_info(other).backend == "pyav"
    assert capsys.readouterr().err.count("wmcore: video decoded by PyAV") == 1
    assert len(notices()) == 1


def test_without_decord_every_video_is_pyavs_and_that_is_said_once(clip, monkeypatch, fresh_notices, capsys):
    path, _ = clip
    monkeypatch.setattr(video, "_decord", None)
    sources = {decode_video(path, [i])[1] for i in range(3)}
    assert sources == {VideoSource("pyav", av.__version__, "h264", "decord is not installed")}
    said = capsys.readouterr().err
    assert said.count("\n") == 1 and "codec h264; decord is not installed" in said


@pytest.mark.parametrize("reader,reason", [(_exploding_reader, "decord exploded"), (_empty_reader, "0 frames")])
def test_a_failing_decord_is_named_in_the_source_and_the_notice(clip, monkeypatch, fresh_notices, capsys,
                                                                  reader, reason):
    path, _ = clip
    monkeypatch.setattr(video, "_decord", types.SimpleNamespace(VideoReader=reader, cpu=lambda i: None))
    _, source = decode_video(path)
    assert source == VideoSource("pyav", av.__version__, "h264", "decord unknown cannot decode this h264 video")
    assert reason in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# bad input to the readers


def test_missing_path(tmp_path):
    p = tmp_path / "nope.mp4"
    with pytest.raises(WMError, match=named(p) + ".*no such file.*check the path"):
        read_video(p)
    with pytest.raises(WMError, match="no such file"):
        video_info(p)


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(WMError, match="directory"):
        read_video(tmp_path)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.mp4"
    p.touch()
    with pytest.raises(WMError, match=named(p) + r".*empty file \(0 bytes\).*again"):
        read_video(p)


@pytest.mark.parametrize("content", [np.random.default_rng(0).bytes(4000), b"just some text, not a video\n"])
def test_corrupt_file_names_both_backends(tmp_path, content):
    p = tmp_path / "bad.mp4"
    p.write_bytes(content)
    if DECORD is not None:
        with pytest.raises(WMError, match=named(p) + ".*decord failed.*PyAV failed too.*ffprobe") as e:
            read_video(p)
        assert "InvalidData" in str(e.value)  # PyAV's own reason is passed on
    with pytest.raises(WMError, match=named(p) + ".*PyAV cannot decode it.*expected a video file"):
        read_video(p, backend="pyav")
    with pytest.raises(WMError, match="cannot decode"):
        video_info(p)


def _zero_frame_video(path, codec):
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=10)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        c.start_encoding()
    return path


@pytest.mark.parametrize("name,codec", [("zero.mp4", "libx264"), ("zero.avi", "mpeg4")])
@pytest.mark.parametrize("backend", ["auto", "pyav"])
def test_video_with_zero_frames(tmp_path, name, codec, backend):
    # the mp4 muxer drops a stream that got no packets; the avi keeps an empty video stream
    p = _zero_frame_video(tmp_path / name, codec)
    assert p.stat().st_size > 0
    with pytest.raises(WMError, match=named(p) + ".*0 frames"):
        read_video(p, backend=backend)
    with pytest.raises(WMError, match="0 frames"):
        video_info(p, backend=backend)


@pytest.mark.parametrize("backend", ["auto", "pyav", pytest.param("decord", marks=needs_decord)])
def test_index_past_the_end(clip, backend):
    path, _ = clip
    with pytest.raises(WMError, match=named(path) + r".*index 25 is past the end.*has 20 frames.*0\.\.19"):
        read_video(path, [3, 25, 1], backend=backend)
    with pytest.raises(WMError, match="index 20 is past the end"):
        read_video(path, [20], backend=backend)


def test_negative_index(clip):
    path, _ = clip
    with pytest.raises(WMError, match=named(path) + ".*index -1 is negative.*num_frames - k"):
        read_video(path, [0, -1])


@pytest.mark.parametrize(
    "indices,found",
    [
        ([[0, 1]], r"\[0, 1\] \(list\)"),
        ([0.5], r"0\.5 \(float\)"),
        ([True, False], r"True \(bool\)"),
        (np.array([1.0, 2.0]), "float64 array of shape"),
        (torch.tensor([[0, 1]]), r"int64 array of shape \(1, 2\)"),
        ("012", "str"),
        (3, "int 3"),
    ],
)
def test_indices_must_be_1d_ints(clip, indices, found):
    path, _ = clip
    with pytest.raises(WMError, match=named(path) + ".*indices must be 1-D ints, found.*" + found + ".*e.g."):
        read_video(path, indices)


def test_empty_indices_and_unknown_backend(clip):
    path, _ = clip
    with pytest.raises(WMError, match="indices is empty"):
        read_video(path, [])
    with pytest.raises(WMError, match="backend='ffmpeg'.*auto, decord, pyav"):
        read_video(path, backend="ffmpeg")


# --------------------------------------------------------------------------------------------------
# sampling


def test_sample_indices_30_to_4_fps():
    # 30 / 4 = 7.5 frames apart: 0, 7.5, 15, 22.5, ... rounded half up
    assert sample_indices(60, 30, 4) == [0, 8, 15, 23, 30, 38, 45, 53]
    assert sample_indices(60, 30, 4, start=2) == [2, 10, 17, 25, 32, 40, 47, 55]
    assert sample_indices(61, 30.0, 4.0) == [0, 8, 15, 23, 30, 38, 45, 53, 60]
    assert sample_indices(60, 30, 10) == list(range(0, 60, 3))


def test_sample_indices_every_frame_and_cap():
    assert sample_indices(5, 30) == [0, 1, 2, 3, 4]
    assert sample_indices(5, 30, start=3) == [3, 4]
    assert sample_indices(60, 30, 4, max_frames=3) == [0, 8, 15]
    assert sample_indices(5, 30, max_frames=2) == [0, 1]
    assert sample_indices(60, 30, 30) == list(range(60))


@settings(max_examples=60, deadline=None)
@given(
    num_frames=st.integers(1, 400),
    src=st.floats(1, 120),
    ratio=st.floats(0.01, 1),
    start_frac=st.floats(0, 0.999),
)
def test_sample_indices_properties(num_frames, src, ratio, start_frac):
    target = src * ratio
    start = int(start_frac * num_frames)
    idx = sample_indices(num_frames, src, target, start=start)
    step = src / target
    assert idx[0] == start and idx[-1] < num_frames
    gaps = np.diff(idx)
    assert np.all(gaps >= np.floor(step) - 1e-9) and np.all(gaps <= np.ceil(step) + 1e-9)
    assert idx[-1] + np.ceil(step) >= num_frames  # the next one would be past the end
    assert abs(len(idx) - (num_frames - start) / step) <= 1


def test_sample_indices_target_above_source():
    with pytest.raises(WMError, match="target_fps=60 is above src_fps=30.*cannot make up frames"):
        sample_indices(100, 30, 60)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_frames=0, src_fps=30), "num_frames=0"),
        (dict(num_frames=10, src_fps=0), "src_fps=0"),
        (dict(num_frames=10, src_fps=float("nan")), "src_fps=nan"),
        (dict(num_frames=10, src_fps=30, target_fps=-4), "target_fps=-4"),
        (dict(num_frames=10, src_fps=30, max_frames=0), "max_frames=0"),
        (dict(num_frames=10, src_fps=30, start=10), r"start=10, expected an int in 0\.\.9"),
        (dict(num_frames=10, src_fps=30, start=-1), "start=-1"),
    ],
)
def test_sample_indices_bad_arguments(kwargs, match):
    with pytest.raises(WMError, match="sample_indices: " + match) as e:
        sample_indices(**kwargs)
    assert "expected" in str(e.value)


# --------------------------------------------------------------------------------------------------
# writing


def test_write_video_refuses_to_overwrite(clip, tmp_path):
    _, frames = clip
    p = tmp_path / "taken.mp4"
    p.write_bytes(b"precious")
    with pytest.raises(WMError, match=named(p) + ".*exists already.*overwrite=True"):
        write_video(p, frames)
    assert p.read_bytes() == b"precious"
    assert os.listdir(tmp_path) == ["taken.mp4"]  # no temporary left behind


def test_write_video_overwrite_replaces(clip, tmp_path):
    _, frames = clip
    p = write_video(tmp_path / "v.mp4", frames[:4])
    write_video(p, frames[:6], fps=5, overwrite=True)
    info = video_info(p, backend="pyav")
    assert (info.num_frames, info.fps) == (6, 5.0)
    assert os.listdir(tmp_path) == ["v.mp4"]


@pytest.mark.parametrize(
    "frames,match",
    [
        (np.zeros((2, 47, 64, 3), np.uint8), "even height and width, found 47x64"),
        (np.zeros((2, 48, 63, 3), np.uint8), "found 48x63"),
        (np.zeros((0, 48, 64, 3), np.uint8), "T >= 1"),
        (np.zeros((48, 64, 3), np.uint8), r"\[T, H, W, 3\].*\(48, 64, 3\)"),
        (np.zeros((2, 48, 64, 3), np.float32), "expected uint8"),
    ],
)
def test_write_video_rejects_bad_frames(tmp_path, frames, match):
    with pytest.raises(WMError, match=match):
        write_video(tmp_path / "x.mp4", frames)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "frames,found",
    [
        (torch.zeros(2, 8, 8, 3), r"torch\.float32 of shape \(2, 8, 8, 3\)"),
        (torch.zeros(2, 8, 8, 4, dtype=torch.uint8), r"torch\.uint8 of shape \(2, 8, 8, 4\)"),
        (torch.zeros(2, 3, 8, 8, dtype=torch.uint8), r"\(2, 3, 8, 8\)"),
        (torch.zeros(8, 3, dtype=torch.uint8), r"\(8, 3\)"),
        ([[1, 2, 3]], "list"),
    ],
)
def test_write_video_says_what_frames_it_takes_and_how_to_convert_floats(tmp_path, frames, found):
    with pytest.raises(WMError, match=r"expected .*uint8.*\[\.\.\., H, W, 3\], found .*" + found) as e:
        write_video(tmp_path / "x.mp4", frames)
    assert "(x * 255).round().to(torch.uint8)" in str(e.value) or "list" in str(e.value)
    assert os.listdir(tmp_path) == []


def test_write_video_rejects_bad_settings(tmp_path):
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(WMError, match="fps=0"):
        write_video(tmp_path / "x.mp4", frames, fps=0)
    with pytest.raises(WMError, match="crf=99.*0..51"):
        write_video(tmp_path / "x.mp4", frames, crf=99)
    with pytest.raises(WMError, match="encoding failed"):
        write_video(tmp_path / "x.notacontainer", frames)
    assert os.listdir(tmp_path) == []
