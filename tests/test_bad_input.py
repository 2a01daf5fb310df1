"""Bad input as a new user gives it, through the three entry points: the ``wmcore`` command (exit 2),
the pytest plugin (``pytest bench``: exit 4, a usage error at start-up) and the Python API
(``wmcore.models.load``, ``wmcore.data.load``, ``wmcore.evaluate``: ``WMError``).

Every case asserts the exit code (or the WMError), that the message names the input, that no
traceback is shown, and that no file was created or changed anywhere a run could write (the case's
own directory, the valid inputs it was made from, the working directory).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from inputs import H, Valid, copy, edit_json, edit_npz, make_valid, truncate

from wmcore.cli import main
from wmcore.settings import Thresholds
from wmcore.data.episodes import save_episode, write_index
from wmcore.errors import WMError
from wmcore.evaluate import EvalConfig, evaluate
from wmcore.models.analytic import AnalyticConfig, AnalyticModel, make_episodes

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "wmcore" / "suites" / "test_drift.py"
FIXTURES = ROOT / "wmcore" / "fixtures"
# a CUDA device this machine lacks: any on a CPU-only torch, else the one past the last GPU
MISSING_CUDA = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> Valid:
    return make_valid(tmp_path_factory.mktemp("valid"))


def episodes_with(v: Valid, d: Path, damage: Callable[[Path], object]) -> Path:
    """A copy of the valid episode directory with ``damage(copy)`` applied; index.json's checksums
    are not touched (a damaged file must be caught by what it is, not only by its sha256)."""
    e = copy(v.episodes, d / "eps")
    damage(e)
    return e


def snapshot(*roots: Path) -> dict[str, str]:
    out = {}
    for r in roots:
        for p in sorted(r.rglob("*")):
            if p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
            elif p.is_dir():
                out[str(p)] = "<dir>"
    return out


# ------------------------------------------------------------------------------------------------
# the ``wmcore`` command: (id, build(valid, case_dir) -> (argv, what the message must name))

def _ev(*args: str) -> list[str]:
    return ["evaluate", "--model", "analytic", "--horizon", str(H), *args]


CLI: list[tuple[str, Callable[[Valid, Path], tuple[list[str], str]]]] = [
    # options
    ("evaluate-horizon-0", lambda v, d: (_ev("--data", str(v.episodes), "--horizon", "0"), "--horizon")),
    ("evaluate-horizon-negative", lambda v, d: (_ev("--data", str(v.episodes), "--horizon", "-3"), "--horizon")),
    ("evaluate-horizon-not-a-number", lambda v, d: (_ev("--data", str(v.episodes), "--horizon", "ten"), "--horizon")),
    ("evaluate-episodes-0", lambda v, d: (_ev("--data", str(v.episodes), "--episodes", "0"), "--episodes")),
    ("evaluate-start-negative", lambda v, d: (_ev("--data", str(v.episodes), "--start", "-1"), "--start")),
    ("evaluate-start-past-the-end", lambda v, d: (_ev("--data", str(v.episodes), "--start", "500"), "start 500")),
    ("evaluate-horizon-longer-than-episodes", lambda v, d: (_ev("--data", str(v.episodes), "--horizon", "400"),
                                                           "horizon 400")),
    ("evaluate-dtype-on-a-model-without-to", lambda v, d: (_ev("--data", str(v.episodes), "--dtype", "bfloat16"),
                                                           "cannot be moved")),
    ("evaluate-cuda-device-not-there", lambda v, d: (_ev("--data", str(v.episodes), "--device", MISSING_CUDA),
                                                     f"'{MISSING_CUDA}'")),
    ("evaluate-device-not-a-device", lambda v, d: (_ev("--data", str(v.episodes), "--device", "gpu7"), "'gpu7'")),
    ("evaluate-dtype-unknown", lambda v, d: (_ev("--data", str(v.episodes), "--dtype", "float8"), "--dtype")),
    # models
    ("model-unknown-spec", lambda v, d: (["evaluate", "--model", "nope", "--data", str(v.episodes)], "'nope'")),
    ("model-family-without-path", lambda v, d: (["evaluate", "--model", "lewm:", "--data", str(v.episodes)], "lewm")),
    ("model-dir-missing", lambda v, d: (["evaluate", "--model", f"lewm:{d / 'gone'}"], str(d / "gone"))),
    ("model-file-instead-of-dir", lambda v, d: (["evaluate", "--model", f"lewm:{v.clip}"], str(v.clip))),
    ("model-config-truncated", lambda v, d: (
        ["evaluate", "--model", f"lewm:{truncate(copy(v.lewm, d / 'ck') / 'config.json').parent}"], "config.json")),
    ("model-config-wrong-type", lambda v, d: (
        ["evaluate", "--model", f"lewm:{edit_json(copy(v.lewm, d / 'ck') / 'config.json', lambda c: [1, 2]).parent}"],
        "config.json")),
    ("model-weights-truncated", lambda v, d: (
        ["evaluate", "--model", f"lewm:{truncate(copy(v.lewm, d / 'ck') / 'model.safetensors').parent}"],
        "model.safetensors")),
    ("model-weights-empty", lambda v, d: (
        ["evaluate", "--model", f"lewm:{truncate(copy(v.lewm, d / 'ck') / 'model.safetensors', 0).parent}"],
        "model.safetensors")),
    ("model-weights-not-tensors", lambda v, d: (["evaluate", "--model", f"lewm:{_pt_of(copy(v.lewm, d / 'ck'), [1, 2])}"],
                                                "weights.pt")),
    ("model-ac-tiny-config-not-an-object", lambda v, d: (
        ["evaluate", "--model",
         f"ac-tiny:{edit_json(copy(FIXTURES / 'models' / 'pusht-ac-tiny', d / 'ac') / 'config.json', lambda c: 'x').parent}"],
        "config.json")),
    ("model-ac-tiny-config-absurd-size", lambda v, d: (  # found by fuzzing: was a 475 GB allocation, killed by the OOM killer
        ["evaluate", "--model",
         f"ac-tiny:{edit_json(copy(FIXTURES / 'models' / 'pusht-ac-tiny', d / 'ac') / 'config.json', lambda c: c.update(tubelet_size=302272)).parent}"],
        "config.json")),
    ("model-lewm-config-absurd-size", lambda v, d: (
        ["evaluate", "--model", f"lewm:{edit_json(copy(v.lewm, d / 'ck') / 'config.json', _absurd_lewm).parent}"],
        "config.json")),
    ("model-vjepa2-ac-random-bytes", lambda v, d: (["evaluate", "--model", f"vjepa2-ac:{_random_file(d / 'ck.pt')}"],
                                                   "ck.pt")),
    ("model-vjepa2-ac-directory", lambda v, d: (["evaluate", "--model", f"vjepa2-ac:{d}"], str(d))),
    ("model-analytic-bad-option", lambda v, d: (["evaluate", "--model", "analytic:delta=fast"], "delta")),
    # data
    ("data-missing", lambda v, d: (_ev("--data", str(d / "nowhere")), "nowhere")),
    ("data-empty-directory", lambda v, d: (_ev("--data", str(_mkdir(d / "empty"))), "empty")),
    ("data-text-file", lambda v, d: (_ev("--data", str(_text(d / "notes.txt"))), "notes.txt")),
    ("data-index-truncated", lambda v, d: (_ev("--data", str(episodes_with(v, d, lambda e: truncate(e / "index.json")))),
                                           "index.json")),
    ("data-index-not-an-object", lambda v, d: (
        _ev("--data", str(episodes_with(v, d, lambda e: edit_json(e / "index.json", lambda x: [])))), "index.json")),
    ("data-index-episodes-wrong-type", lambda v, d: (
        _ev("--data", str(episodes_with(v, d, lambda e: edit_json(e / "index.json", lambda x: x.update(episodes=7))))),
        "index.json")),
    ("data-video-missing", lambda v, d: (_ev("--data", str(episodes_with(v, d, lambda e: (e / "episode_001.mp4").unlink()))),
                                         "episode_001.mp4")),
    ("data-video-truncated", lambda v, d: (_ev("--data", str(episodes_with(v, d, lambda e: truncate(e / "episode_001.mp4")))),
                                           "episode_001")),
    ("data-video-is-a-directory", lambda v, d: (
        _ev("--data", str(episodes_with(v, d, lambda e: ((e / "episode_002.mp4").unlink(), (e / "episode_002.mp4").mkdir())))),
        "episode_002.mp4")),
    ("data-npz-truncated", lambda v, d: (_ev("--data", str(episodes_with(v, d, lambda e: truncate(e / "episode_000.npz")))),
                                         "episode_000")),
    ("data-actions-nan", lambda v, d: (_ev("--data", str(episodes_with(v, d, lambda e: edit_npz(
        e / "episode_000.npz", actions=_with(np.load(e / "episode_000.npz")["actions"], np.nan))))), "episode_000")),
    ("data-actions-inf", lambda v, d: (_ev("--data", str(episodes_with(v, d, lambda e: edit_npz(
        e / "episode_002.npz", actions=_with(np.load(e / "episode_002.npz")["actions"], np.inf))))), "episode_002")),
    ("data-actions-wrong-width", lambda v, d: (_ev("--data", str(episodes_with(v, d, lambda e: edit_npz(
        e / "episode_000.npz", actions=np.zeros((H + 4, 3), np.float32))))), "episode_000")),
    ("data-actions-too-few", lambda v, d: (_ev("--data", str(episodes_with(v, d, lambda e: edit_npz(
        e / "episode_001.npz", actions=np.zeros((3, 2), np.float32))))), "episode_001")),
    ("data-width-does-not-fit-the-model", lambda v, d: (
        _ev("--data", str(_episodes_of_width(d / "wide", 3))), "action")),
    ("data-lerobot-info-truncated", lambda v, d: (
        _ev("--data", str(_damaged(copy(v.lerobot, d / "lr"), "meta/info.json", truncate))), "info.json")),
    ("data-lerobot-info-without-features", lambda v, d: (
        _ev("--data", str(_damaged(copy(v.lerobot, d / "lr"), "meta/info.json",
                                   lambda p: edit_json(p, lambda i: i.pop("features"))))), "info.json")),
    ("data-lerobot-parquet-random-bytes", lambda v, d: (
        _ev("--data", str(_damaged(copy(v.lerobot, d / "lr"), "data/chunk-000/file-000.parquet", _random_file)),
            "--camera", "observation.images.top"), "file-000.parquet")),
    ("data-lerobot-unknown-camera", lambda v, d: (_ev("--data", str(v.lerobot), "--camera", "observation.images.nose"),
                                                  "observation.images.nose")),
    ("data-path-with-spaces-and-non-ascii", lambda v, d: (_ev("--data", str(_mkdir(d / "mes données ✓"))),
                                                          "mes données ✓")),
    # outputs
    ("evaluate-out-is-a-file", lambda v, d: (_ev("--data", str(v.episodes), "--out", str(_text(d / "taken.txt"))),
                                             "taken.txt")),
    ("evaluate-out-under-a-file", lambda v, d: (
        _ev("--data", str(v.episodes), "--out", str(_text(d / "file") / "sub")), "file")),
    ("evaluate-out-holds-the-report-already", lambda v, d: (
        _ev("--data", str(v.episodes), "--out", str(_with_file(d / "out", "analytic-recorded.json"))),
        "analytic-recorded.json")),
    # one clip
    ("rollout-video-missing", lambda v, d: (["rollout", "--model", "analytic", "--video", str(d / "none.mp4"),
                                             "--out", str(d / "x.png")], "none.mp4")),
    ("rollout-video-truncated", lambda v, d: (_rollout(d, truncate(copy(v.clip, d / "c.mp4")),
                                                       copy(v.clip.with_suffix(".npy"), d / "c.npy")), "c.mp4")),
    ("rollout-actions-wrong-width", lambda v, d: (_rollout(d, copy(v.clip, d / "c.mp4"),
                                                           _npy(d / "c.npy", np.zeros((H + 4, 5)))), "c.npy")),
    ("rollout-actions-nan", lambda v, d: (_rollout(d, copy(v.clip, d / "c.mp4"),
                                                   _npy(d / "c.npy", _with(np.zeros((H + 4, 2)), np.nan))), "c.npy")),
    ("rollout-actions-short", lambda v, d: (_rollout(d, copy(v.clip, d / "c.mp4"), _npy(d / "c.npy", np.zeros((2, 2)))),
                                            "c.npy")),
    ("rollout-actions-csv-text", lambda v, d: (_rollout(d, copy(v.clip, d / "c.mp4"), _text(d / "c.csv", "a,b\nx,y\n")),
                                               "c.csv")),
    ("rollout-actions-json-not-a-list", lambda v, d: (_rollout(d, copy(v.clip, d / "c.mp4"),
                                                               _text(d / "c.json", '{"a": 1}')), "c.json")),
    ("rollout-actions-npy-empty-file", lambda v, d: (_rollout(d, copy(v.clip, d / "c.mp4"), _text(d / "c.npy", "")),
                                                     "c.npy")),
    ("rollout-out-not-png", lambda v, d: (["rollout", "--model", "analytic", "--video", str(v.clip),
                                           "--out", str(d / "x.json")], "x.json")),
    # saved reports
    ("show-report-truncated", lambda v, d: (["show", str(truncate(copy(v.report, d / "r.json")))], "r.json")),
    ("show-report-a-list", lambda v, d: (["show", str(_text(d / "r.json", "[1, 2]"))], "r.json")),
    ("show-report-newer-schema", lambda v, d: (
        ["show", str(edit_json(copy(v.report, d / "r.json"), lambda r: r.update(schema_version=r["schema_version"] + 1)))],
        "r.json")),
    ("show-report-curve-wrong-type", lambda v, d: (
        ["show", str(edit_json(copy(v.report, d / "r.json"),
                               lambda r: r["loops"]["open_loop"].update(cosine="high")))], "r.json")),
    ("show-a-directory", lambda v, d: (["show", str(d)], str(d))),
    ("plot-report-binary", lambda v, d: (["plot", str(_random_file(d / "r.json"))], "r.json")),
    ("plot-out-under-a-file", lambda v, d: (["plot", str(v.report), "--out", str(_text(d / "f") / "x.png")], "x.png")),
    ("rollout-out-under-a-file", lambda v, d: (["rollout", "--model", "analytic", "--video", str(v.clip), "--horizon", "3",
                                                "--out", str(_text(d / "f") / "x.png")], "x.png")),
    # comparisons
    ("compare-missing-run", lambda v, d: (["compare", str(v.bench), str(d / "new.json")], "new.json")),
    ("compare-benchmark-json-truncated", lambda v, d: (
        ["compare", str(v.bench), str(truncate(copy(v.bench, d / "new.json")))], "new.json")),
    ("compare-benchmark-json-without-benchmarks", lambda v, d: (
        ["compare", str(v.bench), str(edit_json(copy(v.bench, d / "new.json"), lambda b: b.pop("benchmarks")))],
        "new.json")),
    ("compare-negative-tolerance", lambda v, d: (["compare", str(v.bench), str(v.bench), "--max-step1-drop", "-1"],
                                                 "step1")),
    # training and fixtures
    ("train-data-missing", lambda v, d: (["train", "--data", str(d / "nodata"), "--out", str(d / "run")], "nodata")),
    ("train-steps-0", lambda v, d: (["train", "--data", str(v.episodes), "--out", str(d / "run"), "--steps", "0"],
                                    "steps")),
    ("train-model-config-not-json", lambda v, d: (
        ["train", "--data", str(v.episodes), "--out", str(d / "run"), "--model-config", str(_text(d / "m.json", "{oops"))],
        "m.json")),
    ("make-fixtures-unknown-kind", lambda v, d: (["make-fixtures", "cubes", "--out", str(d / "x")], "cubes")),
]


def _absurd_lewm(cfg: dict) -> None:
    """A LeWM config whose encoder would need about 10^12 parameters."""
    cfg["encoder"]["hidden_size"] = cfg["encoder"]["intermediate_size"] = 10**6


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True)
    return p


def _text(p: Path, text: str = "hello\n") -> Path:
    p.write_text(text)
    return p


def _with_file(d: Path, name: str) -> Path:
    _text(_mkdir(d) / name, "{}")
    return d


def _random_file(p: Path) -> Path:
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return p


def _npy(p: Path, a: np.ndarray) -> Path:
    np.save(p, a)
    return p


def _with(a: np.ndarray, value: float) -> np.ndarray:
    a = np.array(a, dtype=np.float32)
    a.flat[len(a.flat) // 2] = value
    return a


def _pt_of(d: Path, obj) -> Path:
    (d / "model.safetensors").unlink()
    torch.save(obj, d / "weights.pt")
    return d


def _damaged(root: Path, rel: str, damage: Callable[[Path], object]) -> Path:
    damage(root / rel)
    return root


def _episodes_of_width(d: Path, width: int) -> Path:
    """A well-formed episode set whose actions are ``width`` wide (the analytic model takes 2)."""
    eps = make_episodes(AnalyticConfig(action_dim=width, gain=(0.1,) * width), episodes=2, steps=H + 2, seed=1)
    d.mkdir()
    write_index(d, {"fps": 10.0, "height": 16, "width": 16}, [save_episode(d, i, e, seed=i) for i, e in enumerate(eps)])
    return d


def _rollout(d: Path, video: Path, actions: Path) -> list[str]:
    return ["rollout", "--model", "analytic", "--video", str(video), "--actions", str(actions), "--horizon", "3",
            "--out", str(d / "clip.png")]


@pytest.mark.parametrize("build", [c[1] for c in CLI], ids=[c[0] for c in CLI])
def test_command_bad_input_exits_2_naming_it(build, valid, tmp_path, monkeypatch, capsys):
    case = tmp_path / "case"
    case.mkdir()
    work = tmp_path / "cwd"  # where runs/ would be created
    work.mkdir()
    monkeypatch.chdir(work)
    argv, names = build(valid, case)
    before = snapshot(valid.root, tmp_path)
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, f"exit {code}; stderr:\n{err}"
    assert "Traceback" not in err + out
    assert names in err, f"the message does not name {names!r}:\n{err}"
    assert "error" in err
    assert snapshot(valid.root, tmp_path) == before, "a file was created or changed"


def test_the_command_cases_are_distinct():
    ids = [c[0] for c in CLI]
    assert len(ids) == len(set(ids)) and len(ids) >= 60


# ------------------------------------------------------------------------------------------------
# the pytest plugin: bad --wm-* options, data or models are usage errors (exit 4) at start-up

PLUGIN: list[tuple[str, Callable[[Valid, Path], tuple[list[str], str]]]] = [
    ("wm-data-no-dataset", lambda v, d: (["--wm-model", "analytic", "--wm-data", str(_mkdir(d / "plain"))], "--wm-data")),
    ("wm-data-index-truncated", lambda v, d: (
        ["--wm-model", "analytic", "--wm-data", str(episodes_with(v, d, lambda e: truncate(e / "index.json")))],
        "index.json")),
    ("wm-data-lerobot-parquet-damaged", lambda v, d: (
        ["--wm-model", "analytic", "--wm-data", str(_damaged(copy(v.lerobot, d / "lr"), "data/chunk-000/file-000.parquet",
                                                             truncate)), "--wm-camera", "observation.images.top"],
        "file-000.parquet")),
    ("wm-actions-file-wrong-width", lambda v, d: (
        ["--wm-model", "analytic", "--wm-data", str(copy(v.clip, d / "c.mp4")),
         "--wm-actions-file", str(_npy(d / "a.npy", np.zeros((H + 4, 7))))], "a.npy")),
    ("wm-model-missing-dir", lambda v, d: (["--wm-model", f"lewm:{d / 'gone'}", "--wm-data", str(v.episodes)],
                                           "--wm-model")),
    ("wm-model-truncated-weights", lambda v, d: (
        ["--wm-model", f"lewm:{truncate(copy(v.lewm, d / 'ck') / 'model.safetensors').parent}",
         "--wm-data", str(v.episodes)], "model.safetensors")),
    ("wm-device-cuda-not-there", lambda v, d: (["--wm-model", "analytic", "--wm-device", MISSING_CUDA], "--wm-device")),
    ("wm-dtype-on-a-model-without-to", lambda v, d: (
        ["--wm-model", "analytic", "--wm-dtype", "bfloat16", "--wm-data", str(v.episodes)], "cannot be moved")),
    ("wm-horizon-negative", lambda v, d: (["--wm-horizon", "-3"], "--wm-horizon")),
    ("wm-threshold-not-a-number", lambda v, d: (["--wm-threshold", "step1_min=high"], "step1_min")),
]


@pytest.mark.parametrize("build", [c[1] for c in PLUGIN], ids=[c[0] for c in PLUGIN])
def test_plugin_bad_input_is_a_usage_error(build, valid, pytester, tmp_path):
    pytester.makepyfile(test_drift=BENCH.read_text())
    case = tmp_path / "case"
    case.mkdir(exist_ok=True)
    args, names = build(valid, case)
    before = snapshot(valid.root, case)
    listing = _written(pytester.path)
    r = pytester.runpytest("--benchmark-only", "-p", "no:cacheprovider", "--wm-horizon", str(H),
                           "--wm-artifacts", str(pytester.path / "runs"), *args)
    err = r.stderr.str()
    assert r.ret == pytest.ExitCode.USAGE_ERROR, r.stdout.str()[-2000:] + err
    assert names in err and "Traceback" not in err + r.stdout.str()
    assert snapshot(valid.root, case) == before
    assert _written(pytester.path) == listing  # no runs/ directory either


def _written(root: Path) -> list[str]:
    """Files and directories under ``root``, but pytest's own (bytecode, pytest-benchmark's empty
    storage directory, which it makes at start-up whatever happens next)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if "__pycache__" not in p.parts and not (p.name == ".benchmarks" and not any(p.iterdir())))


# ------------------------------------------------------------------------------------------------
# the Python API: WMError naming the input, nothing written

def _api_cases():
    """(id, build(valid, case_dir) -> the call to make, what the WMError must name)."""
    return [
        ("models.load-truncated-safetensors", lambda v, d: (
            lambda spec=f"lewm:{truncate(copy(v.lewm, d / 'ck') / 'model.safetensors').parent}": _load_model(spec)),
         "model.safetensors"),
        ("data.load-limit-0", lambda v, d: lambda: _load_data(v.episodes, limit=0), "limit"),
        ("data.load-missing-npz", lambda v, d: (
            lambda e=episodes_with(v, d, lambda e: (e / "episode_000.npz").unlink()): _load_data(e)), "episode_000.npz"),
        ("evaluate-horizon-0", lambda v, d: lambda: _evaluate(v, EvalConfig(horizon=0)), "horizon"),
        ("evaluate-unknown-action-source", lambda v, d: lambda: _evaluate(v, EvalConfig(horizon=H, action_source="sideways")),
         "sideways"),
        ("evaluate-action-width-mismatch", lambda v, d: lambda: _evaluate(v, EvalConfig(horizon=H), model_width=3), "action"),
        ("evaluate-no-episodes", lambda v, d: lambda: evaluate(AnalyticModel(AnalyticConfig()), [], EvalConfig(horizon=H)),
         "episodes"),
    ]


def _load_model(spec: str):
    from wmcore.models import load

    return load(spec)


def _load_data(path: Path, **kw):
    from wmcore.data import load

    return load(str(path), **kw)


def _evaluate(v: Valid, cfg: EvalConfig, model_width: int = 2):
    from wmcore.data import load

    model = AnalyticModel(AnalyticConfig(action_dim=model_width, gain=(0.1,) * model_width))
    return evaluate(model, load(str(v.episodes)), cfg, Thresholds(bootstrap=20))


@pytest.mark.parametrize("case", _api_cases(), ids=[c[0] for c in _api_cases()])
def test_api_bad_input_raises_wmerror(case, valid, tmp_path, monkeypatch):
    _, build, names = case
    monkeypatch.chdir(tmp_path)
    d = tmp_path / "case"
    d.mkdir()
    call = build(valid, d)
    before = snapshot(valid.root, tmp_path)
    with pytest.raises(WMError) as e:
        call()
    assert names in str(e.value)
    assert snapshot(valid.root, tmp_path) == before
