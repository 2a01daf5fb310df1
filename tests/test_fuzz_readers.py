"""Fuzzing every reader of user files (hypothesis): random bytes, truncations, flipped bytes and, for
JSON files, valid JSON with one value replaced or removed. A reader may accept what it is given or
raise WMError; any other exception is a bug (it would reach the user as a traceback).

``WMCORE_FUZZ_EXAMPLES`` sets the examples per reader (default 25, enough for CI; the closing note
of the hardening issue gives a deeper run). Examples are derandomized, so CI sees the same inputs
every time; a deeper local run with another count explores others.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from inputs import Valid, make_valid

from wmcore.errors import WMError

EXAMPLES = int(os.environ.get("WMCORE_FUZZ_EXAMPLES", "25"))
FIXTURES = Path(__file__).resolve().parents[1] / "wmcore" / "fixtures"


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> Valid:
    return make_valid(tmp_path_factory.mktemp("valid"))


# ------------------------------------------------------------------------------------------------
# how a valid file is damaged

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (keys / indices) into a JSON document, the root included."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:8]):
            out += _paths(v, prefix + (i,))
    return out


def _mutate_json(data, text: bytes) -> bytes:
    doc = json.loads(text)
    path = data.draw(st.sampled_from(_paths(doc)), label="path")
    if not path:
        return json.dumps(data.draw(json_values, label="root")).encode()
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if isinstance(parent, dict) and data.draw(st.booleans(), label="delete"):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(json_values, label="value")
    return json.dumps(doc).encode()


def damage(data, original: bytes, is_json: bool) -> bytes:
    """One damaged version of ``original``."""
    kinds = ["random", "truncate", "flip"] + (["json"] * 3 if is_json else [])
    kind = data.draw(st.sampled_from(kinds), label="kind")
    if kind == "random":
        return data.draw(st.binary(max_size=2048), label="bytes")
    if kind == "truncate":
        return original[: data.draw(st.integers(0, max(len(original) - 1, 0)), label="keep")]
    if kind == "flip":
        out = bytearray(original)
        for _ in range(data.draw(st.integers(1, 8), label="flips")):
            out[data.draw(st.integers(0, len(out) - 1))] = data.draw(st.integers(0, 255))
        return bytes(out)
    return _mutate_json(data, original)


# ------------------------------------------------------------------------------------------------
# the readers: (id, the tree to copy, the file in it to damage, the reader called on the copy)

def _read_index(root: Path):
    from wmcore.data.episodes import read_index

    return read_index(root)


def _load_episodes(root: Path):
    from wmcore.data.episodes import load_episodes

    return load_episodes(root, limit=1, verify=False)  # past the checksums: the parsers themselves


def _read_actions(path: Path):
    from wmcore.data.clip import read_actions

    return read_actions(path)


def _decode(path: Path):
    from wmcore.video import decode_video

    return decode_video(path)


def _lerobot(root: Path):
    from wmcore.data.lerobot import load_lerobot

    return load_lerobot(root, camera="observation.images.top", episodes=[0])


def _report(path: Path):
    from wmcore.report import DriftReport

    return DriftReport.load(path)


def _run(path: Path):
    from wmcore.runs import load_run

    return load_run(path)


def _thresholds(path: Path):
    from wmcore.settings import load_thresholds

    return load_thresholds("pusht-lewm", pyproject=path)


def _model(spec_family: str) -> Callable[[Path], Any]:
    def load(root: Path):
        from wmcore.models import load as load_model

        return load_model(f"{spec_family}:{root}")

    return load


def _actions_file(v: Valid, suffix: str) -> Callable[[Path], Path]:
    """A directory holding the clip's actions in the format of ``suffix``."""
    def make(d: Path) -> Path:
        import numpy as np

        a = np.load(v.clip.with_suffix(".npy"))
        p = d / f"actions{suffix}"
        if suffix == ".npy":
            np.save(p, a)
        elif suffix == ".npz":
            np.savez(p, actions=a)
        elif suffix == ".csv":
            p.write_text("a0,a1\n" + "".join(f"{x},{y}\n" for x, y in a))
        else:
            p.write_text(json.dumps(a.tolist()))
        return p

    return make


def _readers(v: Valid) -> list[tuple[str, Callable[[Path], Path], str, Callable[[Path], Any], bool]]:
    """(id, make(dir) -> the tree, file to damage relative to it ('' = the tree is the file), reader, json?)"""
    def tree(src: Path) -> Callable[[Path], Path]:
        return lambda d: (shutil.copytree if src.is_dir() else shutil.copy2)(src, d / src.name) and d / src.name

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    return [
        ("episodes-index.json", tree(v.episodes), "index.json", _read_index, True),
        ("episodes-npz", tree(v.episodes), "episode_000.npz", _load_episodes, False),
        ("episodes-mp4", tree(v.episodes), "episode_000.mp4", _load_episodes, False),
        ("video", tree(v.clip), "", _decode, False),
        ("actions.npy", _actions_file(v, ".npy"), "", _read_actions, False),
        ("actions.npz", _actions_file(v, ".npz"), "", _read_actions, False),
        ("actions.csv", _actions_file(v, ".csv"), "", _read_actions, False),
        ("actions.json", _actions_file(v, ".json"), "", _read_actions, True),
        ("lerobot-info.json", tree(v.lerobot), "meta/info.json", _lerobot, True),
        ("lerobot-parquet", tree(v.lerobot), "data/chunk-000/file-000.parquet", _lerobot, False),
        ("lerobot-episodes-meta", tree(v.lerobot), "meta/episodes/chunk-000/file-000.parquet", _lerobot, False),
        ("drift-report", tree(v.report), "", _report, True),
        ("benchmark-json", tree(v.bench), "", _run, True),
        ("pyproject", tree(pyproject), "", _thresholds, False),
        ("lewm-config.json", tree(v.lewm), "config.json", _model("lewm"), True),
        ("lewm-safetensors", tree(v.lewm), "model.safetensors", _model("lewm"), False),
        ("ac-tiny-config.json", tree(FIXTURES / "models" / "pusht-ac-tiny"), "config.json", _model("ac-tiny"), True),
        ("vjepa2-ac-checkpoint", _vjepa_checkpoint, "", _vjepa_load, False),
    ]


def _vjepa_checkpoint(d: Path) -> Path:
    """A tiny official-layout V-JEPA 2-AC checkpoint (as tests/test_vjepa2_ac.py builds it)."""
    import torch
    from test_vjepa2_ac import tiny_state

    p = d / "vjepa2-ac.pt"
    torch.save({"encoder": {"module.backbone.patch_embed.proj.weight": torch.ones(2)},
                "predictor": {f"module.backbone.{k}": v for k, v in tiny_state(3).items()}, "epoch": 315}, p)
    return p


def _vjepa_load(path: Path):
    from wmcore.models.vjepa2_ac import load_official_checkpoint

    return load_official_checkpoint(path, img_size=32, num_frames=64, num_heads=2)


READER_IDS = [r[0] for r in _readers(Valid(*[Path("x")] * 7))]


@pytest.mark.parametrize("reader", READER_IDS)
def test_a_damaged_file_is_read_or_refused_with_wmerror(reader, valid, tmp_path_factory):
    name, make, rel, read, is_json = next(r for r in _readers(valid) if r[0] == reader)
    seed_dir = tmp_path_factory.mktemp(f"seed-{name}")
    seed = make(seed_dir)
    target = seed / rel if rel else seed
    original = target.read_bytes()
    read(seed)  # the undamaged input is read without error
    work = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp()))

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(data=st.data())
    def fuzz(data):
        d = Path(tempfile.mkdtemp(dir=work))
        try:
            copy = d / seed.name
            (shutil.copytree if seed.is_dir() else shutil.copy2)(seed, copy)
            (copy / rel if rel else copy).write_bytes(damage(data, original, is_json))
            try:
                read(copy)
            except WMError:
                pass
        finally:
            shutil.rmtree(d, ignore_errors=True)

    fuzz()
