"""Video in and out: a decord reader with a PyAV fallback, frame sampling, a writer.

Frames are uint8 ``[T, H, W, 3]`` RGB torch tensors wherever they leave this module. Frame indices
are 0-based positions in decode order. Everything here is plain torch + numpy (no torchvision, cv2
or PIL). Turning frames into a model's pixels is each model family's ``preprocess`` (in
``wmcore.models``), which reads the ImageNet statistics from here.

The fallback is never silent: ``decode_video`` says which reader decoded a file and its codec (a
``VideoSource``, which the data loaders attach to each Episode and the DriftReport records under
``data["video"]``), and the first time in a process that PyAV stands in for decord for a codec
(decord 0.6 cannot open AV1, LeRobot's default codec) one line goes to stderr (see ``notices``).
"""

from __future__ import annotations

import math
import numbers
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import av
import numpy as np
import torch

from .errors import WMError
from .fsio import file_mode, link_new

try:  # decord is fast at random access but has wheels for x86_64 only; PyAV reads everywhere
    import decord as _decord
except (ImportError, OSError):
    _decord = None

__all__ = [
    "BACKENDS", "IMAGENET_MEAN", "IMAGENET_STD", "PIX_FMTS", "VideoInfo", "VideoSource", "decode_video", "notices",
    "read_video", "sample_indices", "video_info", "write_video",
]

# the RGB statistics of ImageNet that LeWM's and V-JEPA 2's normalisations use (the one definition)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BACKENDS = ("auto", "decord", "pyav")

_FIX = (
    "expected a video file that ffmpeg can decode (e.g. an H.264 .mp4) with at least one frame; "
    "check that the file is complete and really a video (`ffprobe FILE` shows what it holds), "
    "or re-encode / re-download it"
)

_T = TypeVar("_T")


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float
    height: int
    width: int
    backend: str  # which reader produced these numbers: "decord" or "pyav"


@dataclass(frozen=True)
class VideoSource:
    """Which reader decoded a video file, and its codec: what a report needs to say how frames were read.

    backend: "decord" or "pyav"; version: that library's version; codec: FFmpeg's name of the
    stream's codec ("h264", "av1", "hevc", ...; "unknown" if PyAV cannot tell); reason: why PyAV and
    not decord read it (None where decord did). Deterministic: no paths, times or library messages.
    """

    backend: str
    version: str
    codec: str
    reason: str | None = None

    def to_dict(self) -> dict:
        return {"backend": self.backend, "version": self.version, "codec": self.codec, "reason": self.reason}


class _Unreadable(Exception):
    """A backend could not decode the file; the message is its reason, for the user-facing WMError."""


# --------------------------------------------------------------------------------------------------
# reading


def video_info(path: str | os.PathLike, backend: str = "auto") -> VideoInfo:
    """Frame count, frame rate and frame size of the video at ``path``.

    Read from the container where it records them; PyAV decodes to count frames where it does not
    (Matroska, MPEG-TS).
    """
    path = _check_file(path)
    return _dispatch(path, backend, _decord_info, _pyav_info)[0]


def read_video(
    path: str | os.PathLike,
    indices: Sequence[int] | np.ndarray | torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Decode frames of the video at ``path`` -> uint8 ``[T, H, W, 3]`` RGB.

    indices: 1-D non-negative frame indices, in any order, repeats allowed (T = len(indices));
    None reads every frame. backend: "auto" (decord, else PyAV when decord is missing or fails on
    the file), "decord" or "pyav"; both give identical frames. ``decode_video`` also says which
    reader it was.
    """
    return decode_video(path, indices, backend)[0]


def decode_video(
    path: str | os.PathLike,
    indices: Sequence[int] | np.ndarray | torch.Tensor | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, VideoSource]:
    """``read_video``, and the ``VideoSource`` that says which reader decoded the file and its codec.

    With backend "auto", the first file in this process that PyAV decodes for want of decord (not
    installed, or failing on the file: decord 0.6 cannot open AV1) prints one line to stderr for
    its codec; later files like it are silent (``notices()`` lists what was said).
    """
    path = _check_file(path)
    idx = _check_indices(path, indices)
    frames, used, failed = _dispatch(path, backend, lambda p: _decord_read(p, idx), lambda p: _pyav_read(p, idx))
    codec = _probe_codec(path)
    reason = None
    if used == "pyav":
        if backend == "pyav":
            reason = "backend='pyav' asked for"
        elif _decord is None:
            reason = "decord is not installed"
        else:
            reason = f"decord {_version(_decord)} cannot decode this {codec} video"
    source = VideoSource(backend=used, version=_version(_decord if used == "decord" else av), codec=codec,
                         reason=reason)
    if used == "pyav" and backend == "auto":
        _notice(source, path, failed)
    return frames, source


def _dispatch(path: Path, backend: str, with_decord: Callable[[Path], _T],
              with_pyav: Callable[[Path], _T]) -> tuple[_T, str, str | None]:
    """(result, the backend that produced it, decord's reason to fail where PyAV stood in for it)"""
    if backend not in BACKENDS:
        raise WMError(f"backend={backend!r}: expected one of {', '.join(BACKENDS)}")
    if backend == "decord" and _decord is None:
        raise WMError(f"{path}: backend='decord' asked for, but decord is not installed; "
                      "install decord (x86_64 only) or use backend='auto' or 'pyav'")
    if backend == "pyav" or (backend == "auto" and _decord is None):
        try:
            return with_pyav(path), "pyav", None
        except _Unreadable as e:
            raise WMError(f"{path}: PyAV cannot decode it ({e}); {_FIX}") from None
    try:
        return with_decord(path), "decord", None
    except _Unreadable as e:
        if backend == "decord":
            raise WMError(f"{path}: decord cannot decode it ({e}); {_FIX}") from None
        first = e
    try:
        return with_pyav(path), "pyav", str(first)
    except _Unreadable as e:
        raise WMError(f"{path}: cannot decode the video: decord failed ({first}) and PyAV failed too ({e}); "
                      f"{_FIX}") from None


def _version(module) -> str:
    return str(getattr(module, "__version__", "unknown"))


def _probe_codec(path: Path) -> str:
    """FFmpeg's name of the first video stream's codec ("h264", "av1"; not the decoder, e.g. libdav1d)."""
    try:
        with av.open(str(path)) as container:
            codec = container.streams.video[0].codec_context.codec
            return str(getattr(codec, "canonical_name", None) or codec.name)
    except Exception:  # noqa: BLE001 - the frames are decoded already; the codec is only reported
        return "unknown"


_SAID: dict[tuple[str, str, str | None], str] = {}  # (backend, codec, reason) -> the line printed for it


def _notice(source: VideoSource, path: Path, detail: str | None) -> None:
    key = (source.backend, source.codec, source.reason)
    if key in _SAID:
        return
    why = source.reason or ""
    if detail:  # decord's own words, without its time stamp and source location
        detail = detail.rsplit("ERROR ", 1)[-1] if "ERROR " in detail else detail
        detail = re.sub(r"\[\d\d:\d\d:\d\d\] |\S+\.(cc|h|cpp):\d+: ", "", detail)
        why += ": " + detail[:160].strip()
    line = (f"wmcore: video decoded by PyAV {source.version}, not decord (codec {source.codec}; {why}); "
            f"first such file: {path}")
    _SAID[key] = line
    print(line, file=sys.stderr, flush=True)


def notices() -> list[str]:
    """The lines ``decode_video`` printed to stderr in this process (each once): for a caller whose
    stderr is captured (a pytest plugin) to repeat in its summary."""
    return list(_SAID.values())


def _check_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise WMError(f"{path}: no such file; expected a video file, check the path")
    if not path.is_file():
        raise WMError(f"{path}: is a directory or special file, expected a video file")
    if path.stat().st_size == 0:
        raise WMError(f"{path}: empty file (0 bytes), expected a video; it was probably cut short "
                      "while being written or downloaded: write or download it again")
    return path


def _check_indices(path: Path, indices) -> list[int] | None:
    if indices is None:
        return None
    fix = "pass a 1-D sequence of non-negative ints, e.g. [0, 4, 8] or range(0, 16, 2)"
    if isinstance(indices, torch.Tensor):
        indices = indices.detach().cpu().numpy()
    if isinstance(indices, np.ndarray):
        if indices.ndim != 1 or indices.dtype.kind not in "iu":
            raise WMError(f"{path}: indices must be 1-D ints, found a {indices.dtype} array of shape "
                          f"{tuple(indices.shape)}; {fix}")
        out = indices.tolist()
    elif isinstance(indices, (list, tuple, range)):
        out = list(indices)
        bad = [i for i in out if isinstance(i, bool) or not isinstance(i, numbers.Integral)]
        if bad:
            raise WMError(f"{path}: indices must be 1-D ints, found {bad[0]!r} ({type(bad[0]).__name__}) "
                          f"in the {type(indices).__name__}; {fix}")
        out = [int(i) for i in out]
    else:
        raise WMError(f"{path}: indices must be 1-D ints, found {type(indices).__name__} {indices!r}; {fix}")
    if not out:
        raise WMError(f"{path}: indices is empty, expected at least one frame index; {fix}")
    if min(out) < 0:
        raise WMError(f"{path}: frame index {min(out)} is negative, expected indices 0..num_frames-1 "
                      "(counting from the end is not supported: use video_info(path).num_frames - k)")
    return out


def _past_end(path: Path, index: int, num_frames: int) -> WMError:
    return WMError(f"{path}: frame index {index} is past the end: the video has {num_frames} frames "
                   f"(valid indices 0..{num_frames - 1}); ask for fewer frames or check the index")


def _reason(e: BaseException) -> str:
    # decord appends a C++ stack trace to its messages: the first line is the reason
    lines = str(e).strip().splitlines()
    text = lines[0] if lines else ""
    return f"{type(e).__name__}: {text[:300]}"


def _decord_open(path: Path):
    try:
        vr = _decord.VideoReader(str(path), ctx=_decord.cpu(0))
    except Exception as e:  # decord raises RuntimeError or its own DECORDError, from C++
        raise _Unreadable(_reason(e)) from e
    if len(vr) == 0:
        raise _Unreadable("the video stream has 0 frames")
    return vr


def _decord_info(path: Path) -> VideoInfo:
    vr = _decord_open(path)
    try:  # decord has no getter for the frame size: decode the first frame
        h, w = vr[0].shape[:2]
        fps = float(vr.get_avg_fps())
    except Exception as e:
        raise _Unreadable(_reason(e)) from e
    return VideoInfo(num_frames=len(vr), fps=fps, height=int(h), width=int(w), backend="decord")


def _decord_read(path: Path, idx: list[int] | None) -> torch.Tensor:
    vr = _decord_open(path)
    n = len(vr)
    if idx is not None and max(idx) >= n:
        raise _past_end(path, max(idx), n)
    try:
        frames = vr.get_batch(list(range(n)) if idx is None else idx).asnumpy()
    except Exception as e:
        raise _Unreadable(_reason(e)) from e
    return torch.from_numpy(frames)


def _pyav_info(path: Path) -> VideoInfo:
    try:
        with av.open(str(path)) as container:
            stream = _pyav_stream(container)
            ctx = stream.codec_context
            rate = stream.average_rate or stream.guessed_rate or 0
            # stream.frames is container metadata and is 0 where the container does not record it
            n = stream.frames or sum(1 for _ in container.decode(stream))
            h, w = ctx.height, ctx.width
    except _Unreadable:
        raise
    except Exception as e:  # PyAV raises FFmpegError subclasses, OSError, EOFError, ...
        raise _Unreadable(_reason(e)) from e
    if n == 0:
        raise _Unreadable("the video stream has 0 frames")
    return VideoInfo(num_frames=int(n), fps=float(rate), height=int(h), width=int(w), backend="pyav")


def _pyav_read(path: Path, idx: list[int] | None) -> torch.Tensor:
    wanted = None if idx is None else set(idx)
    last = None if idx is None else max(idx)
    kept: dict[int, np.ndarray] = {}
    n = 0
    try:
        with av.open(str(path)) as container:
            stream = _pyav_stream(container)
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                if wanted is None or n in wanted:
                    kept[n] = frame.to_ndarray(format="rgb24")
                n += 1
                if last is not None and n > last:
                    break  # decoding on would only throw frames away
    except _Unreadable:
        raise
    except Exception as e:
        raise _Unreadable(_reason(e)) from e
    if n == 0:
        raise _Unreadable("the video stream has 0 frames")
    if last is not None and last >= n:
        raise _past_end(path, last, n)
    order = range(n) if idx is None else idx
    return torch.from_numpy(np.stack([kept[i] for i in order]))


def _pyav_stream(container):
    if not container.streams.video:
        raise _Unreadable("the file has no video stream (0 frames)")
    return container.streams.video[0]


# --------------------------------------------------------------------------------------------------
# sampling


def sample_indices(
    num_frames: int,
    src_fps: float,
    target_fps: float | None = None,
    max_frames: int | None = None,
    start: int = 0,
) -> list[int]:
    """Frame indices that resample a ``num_frames``-frame video recorded at ``src_fps`` to ``target_fps``.

    Index k is round-half-up(start + k * src_fps / target_fps), kept while < num_frames, at most
    ``max_frames`` of them. V-JEPA 2-AC was trained at 4 fps: from 30 fps that is every 7.5th frame,
    0, 8, 15, 23, 30, ... (round half up keeps the gaps alternating 8, 7, 8, 7; Python's round-half-
    even would not). target_fps None takes every frame from ``start``.
    """
    if not _is_int(num_frames) or num_frames < 1:
        raise WMError(f"sample_indices: num_frames={num_frames!r}, expected an int >= 1 (the video's frame count)")
    for name, fps in (("src_fps", src_fps), ("target_fps", target_fps)):
        if fps is not None and not (_is_real(fps) and math.isfinite(fps) and fps > 0):
            raise WMError(f"sample_indices: {name}={fps!r}, expected a positive finite number of frames per second")
    if max_frames is not None and (not _is_int(max_frames) or max_frames < 1):
        raise WMError(f"sample_indices: max_frames={max_frames!r}, expected an int >= 1 or None (no cap)")
    if not _is_int(start) or not 0 <= start < num_frames:
        raise WMError(f"sample_indices: start={start!r}, expected an int in 0..{num_frames - 1} "
                      f"(the video has {num_frames} frames)")
    cap = num_frames if max_frames is None else max_frames
    if target_fps is None:
        return list(range(start, num_frames))[:cap]
    if target_fps > src_fps:
        raise WMError(f"sample_indices: target_fps={target_fps} is above src_fps={src_fps}: resampling "
                      "cannot make up frames; expected target_fps <= src_fps, lower it or pass None for every frame")
    src, target = float(src_fps), float(target_fps)
    out: list[int] = []
    while len(out) < cap:
        i = math.floor(start + len(out) * src / target + 0.5)
        if i >= num_frames:
            break
        out.append(i)
    return out


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


# --------------------------------------------------------------------------------------------------
# writing


def _check_frames(frames, name: str) -> torch.Tensor:
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(frames)
    if not isinstance(frames, torch.Tensor):
        raise WMError(f"{name}: expected a uint8 tensor or array [..., H, W, 3], found {type(frames).__name__}")
    if frames.dtype != torch.uint8 or frames.dim() < 3 or frames.shape[-1] != 3 or 0 in frames.shape[-3:]:
        raise WMError(f"{name}: expected uint8 RGB frames [..., H, W, 3], found {frames.dtype} of shape "
                      f"{tuple(frames.shape)}; decode with read_video, or convert floats in [0, 1] with "
                      "(x * 255).round().to(torch.uint8)")
    return frames


def write_video(
    path: str | os.PathLike,
    frames: torch.Tensor | np.ndarray,
    fps: float = 10,
    crf: int = 18,
    overwrite: bool = False,
    pix_fmt: str = "yuv420p",
) -> Path:
    """Encode uint8 frames ``[T, H, W, 3]`` (T >= 1; H, W even) to H.264 at ``path``.

    pix_fmt: ``yuv420p`` (default; plays everywhere; colour at half resolution, so small coloured
    shapes get fringes), ``yuv444p`` (full-resolution colour; RGB -> YUV rounding of a level or two),
    or ``rgb24`` (libx264rgb: H.264 in RGB, with ``crf=0`` bit-exact lossless; the data-set format).

    The container follows the suffix (.mp4, .mkv, ...). The file is written under a temporary name
    in the same directory and renamed, so a reader never sees half a video; an existing ``path`` is
    refused unless ``overwrite``.
    """
    path = Path(path)
    frames = _check_frames(frames, f"write_video({path})")
    if frames.dim() != 4 or frames.shape[0] == 0:
        raise WMError(f"write_video({path}): expected frames [T, H, W, 3] with T >= 1, found shape {tuple(frames.shape)}")
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise WMError(f"write_video({path}): H.264 needs an even height and width, found {h}x{w}; "
                      "crop or pad the frames by one pixel")
    if not (_is_real(fps) and math.isfinite(fps) and fps > 0):
        raise WMError(f"write_video({path}): fps={fps!r}, expected a positive number")
    if pix_fmt not in PIX_FMTS:
        raise WMError(f"write_video({path}): pix_fmt={pix_fmt!r}, expected one of {sorted(PIX_FMTS)}")
    if not _is_int(crf) or not 0 <= crf <= 51:
        raise WMError(f"write_video({path}): crf={crf!r}, expected an int in 0..51 (lower is better quality)")
    if path.exists() and not overwrite:
        raise WMError(f"{path}: exists already; write_video does not overwrite, choose a new name or pass overwrite=True")
    path.parent.mkdir(parents=True, exist_ok=True)
    # the suffix stays last so that ffmpeg picks the container from it
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        _encode(tmp, frames.cpu().numpy(), fps, crf, path, pix_fmt)
        if overwrite:
            os.chmod(tmp, file_mode())  # mkstemp made it 0600; link_new does this for the other branch
            os.replace(tmp, path)
        else:
            link_new(tmp, path)  # fails if the name was taken meanwhile; replace would clobber it
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


PIX_FMTS = {"yuv420p": "libx264", "yuv444p": "libx264", "rgb24": "libx264rgb"}


def _encode(tmp: str, frames: np.ndarray, fps: float, crf: int, path: Path, pix_fmt: str = "yuv420p") -> None:
    try:
        with av.open(tmp, "w") as container:
            # 1001 admits NTSC rates (30000/1001) and decimal ones (29.97 -> 2997/100)
            stream = container.add_stream(PIX_FMTS[pix_fmt], rate=Fraction(fps).limit_denominator(1001))
            stream.height, stream.width = frames.shape[1:3]
            stream.pix_fmt = pix_fmt
            stream.options = {"crf": str(crf)}
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())  # flush the encoder's delayed frames
    except Exception as e:
        raise WMError(f"write_video({path}): encoding failed ({_reason(e)}); expected a container suffix "
                      "that holds H.264, such as .mp4 or .mkv") from e
