"""Valid inputs of every kind the harness reads (episodes, a clip, reports, a benchmark JSON, a
checkpoint, a LeRobot set), for the bad-input and fuzzing tests to damage."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import av
import numpy as np
import torch

from wmcore.settings import Thresholds
from wmcore.data.episodes import save_episode, write_index
from wmcore.evaluate import EvalConfig, evaluate
from wmcore.models.analytic import AnalyticConfig, AnalyticModel, make_episodes
from wmcore.video import write_video

H = 6  # horizon of the cases (the valid episodes have H + 4 steps)


@dataclass(frozen=True)
class Valid:
    root: Path
    episodes: Path  # an episode directory (index.json) of the analytic world, 3 episodes
    clip: Path  # clip.mp4 with clip.npy beside it
    report: Path  # a DriftReport JSON
    bench: Path  # a pytest-benchmark JSON with a wmcore record
    lewm: Path  # a tiny LeWM checkpoint directory (config.json + model.safetensors)
    lerobot: Path  # a LeRobot v3.0 dataset


def make_valid(root: Path) -> Valid:
    """Write one valid input of each kind into ``root``."""
    from test_compare import bench_doc, report  # the compare tests' pytest-benchmark layout
    from test_lerobot import make_v3

    from wmcore.models.lewm import LeWorldModel, save_pretrained, tiny_config

    eps = make_episodes(AnalyticConfig(), episodes=3, steps=H + 4, seed=5)
    d = root / "episodes"
    d.mkdir()
    write_index(d, {"fps": 10.0, "height": 16, "width": 16}, [save_episode(d, i, e, seed=i) for i, e in enumerate(eps)])
    write_video(root / "clip.mp4", eps[0].frames.numpy(), fps=10.0, crf=0)
    np.save(root / "clip.npy", eps[0].actions.numpy())
    r = evaluate(AnalyticModel(AnalyticConfig()), eps, EvalConfig(horizon=H), Thresholds(bootstrap=20))
    r.save(root / "report.json")
    (root / "bench.json").write_text(json.dumps(bench_doc((report(), 0.01))))
    torch.manual_seed(0)
    save_pretrained(LeWorldModel(tiny_config(image_size=32, encoder_layers=1, action_dim=2, frameskip=1)), root / "lewm")
    make_v3(root / "lerobot")
    return Valid(root, d, root / "clip.mp4", root / "report.json", root / "bench.json", root / "lewm", root / "lerobot")


def copy(src: Path, dst: Path) -> Path:
    (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
    return dst


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def edit_json(path: Path, change: Callable[[dict], object]) -> Path:
    doc = json.loads(path.read_text())
    out = change(doc)
    path.write_text(json.dumps(doc if out is None else out))
    return path


def edit_npz(path: Path, **arrays) -> Path:
    with np.load(path) as z:
        data = dict(z)
    data.update(arrays)
    path.unlink()
    np.savez(path, **data)
    return path


def write_av1(path: Path, frames: np.ndarray, fps: int = 10) -> Path:
    """AV1 as lerobot's ``encode_video_frames`` writes it by default: libsvtav1, yuv420p, g=2, crf=30."""
    path.parent.mkdir(parents=True, exist_ok=True)
    before = os.environ.get("SVT_LOG")
    os.environ["SVT_LOG"] = "1"  # SVT-AV1 prints a 24-line banner to stderr unless told: errors only
    try:
        with av.open(str(path), "w") as c:
            s = c.add_stream("libsvtav1", fps, options={"g": "2", "crf": "30"})
            s.pix_fmt, s.height, s.width = "yuv420p", frames.shape[1], frames.shape[2]
            for f in frames:
                c.mux(s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")))
            c.mux(s.encode())
    finally:
        if before is None:
            os.environ.pop("SVT_LOG", None)
        else:
            os.environ["SVT_LOG"] = before
    return path
