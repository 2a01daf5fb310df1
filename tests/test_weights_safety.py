"""No code from weights: a weights file whose pickle would run code is refused, and the code does not run.

Every path that reads model or checkpoint files is tried, through the public API (``wmcore.models.load``,
``wmcore.train.train``, the ``wmcore evaluate`` command), with a pickle whose ``__reduce__`` creates a
marker file when unpickled: bare, and wrapped the way real checkpoints wrap their state dicts. Each
load must raise a WMError naming the file, and the marker must never appear.
``test_the_payload_runs_when_loaded_unsafely`` shows that the same files do create the marker under
``torch.load(weights_only=False)``: the payload is live, so the refusals above mean something.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch

from wmcore.cli import main as cli_main
from wmcore.errors import WMError
from wmcore.models import load
from wmcore.paths import fixtures_dir

pytestmark = pytest.mark.usefixtures("few_threads")


class Payload:
    """Unpickled, it runs ``exec``: writes the marker file (a real attacker would do anything else)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


class SystemPayload(Payload):
    """The classic form: ``os.system`` with a shell command."""

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def _wrappings(marker: Path) -> dict[str, object]:
    """Each way a checkpoint holds its tensors, with the payload where the tensors would be."""
    evil = Payload(marker)
    return {
        "bare": evil,
        "state_dict": {"state_dict": evil},
        "model": {"model": {"encoder.weight": evil}},
        "predictor": {"predictor": evil, "encoder": {}},
        "system": {"predictor": SystemPayload(marker)},
    }


WRAPPINGS = ["bare", "state_dict", "model", "predictor", "system"]


def _torch_file(path: Path, obj) -> Path:
    """``torch.save`` (zip format), as every .pt in the wild is written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


def _legacy_file(path: Path, obj) -> Path:
    """torch's legacy (pre-1.6, not zip) format: magic number, sys info, then the object's pickle."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path, _use_new_zipfile_serialization=False)
    return path


def _raw_pickle(path: Path, obj) -> Path:
    """A bare pickle stream under a .pt name: torch.load unpickles it while looking for the magic number."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))
    return path


WRITERS = {"zip": _torch_file, "legacy": _legacy_file, "raw": _raw_pickle}


@pytest.fixture
def marker(tmp_path) -> Path:
    m = tmp_path / "PWNED"
    yield m
    assert not m.exists(), "a pickle in a weights file ran code"


def _lewm_dir(d: Path) -> Path:
    """A LeWM checkpoint directory with a real config.json (the embedded model's) and no weights yet."""
    d.mkdir(parents=True)
    shutil.copy(fixtures_dir() / "models" / "pusht-lewm" / "config.json", d / "config.json")
    return d


def _refused(spec: str, file: Path, marker: Path, pickle_read: bool = True) -> WMError:
    """``load(spec)`` raises a WMError naming ``file``, the marker is not there; where torch.load read
    the file (``pickle_read``), the message says it was refused and what the pickle asked for."""
    with pytest.raises(WMError) as e:
        load(spec)
    msg = str(e.value)
    assert str(file) in msg, f"the error does not name {file}: {msg}"
    assert not marker.exists(), f"{spec}: the pickle ran code"
    if pickle_read:
        assert "refused" in msg and re.search(r"asks for (builtins\.)?exec|asks for posix\.system", msg), msg
        assert "weights_only` set to `False`" not in msg  # torch's advice to load it unsafely is not passed on
    return e.value


# --------------------------------------------------------------------------------------------------
# the payload is live


@pytest.mark.parametrize("writer", sorted(WRITERS))
@pytest.mark.parametrize("wrapping", ["bare", "state_dict", "system"])
def test_the_payload_runs_when_loaded_unsafely(tmp_path, writer, wrapping):
    """What the loaders must never do: ``weights_only=False`` runs the pickle's code."""
    m = tmp_path / "PWNED"
    f = WRITERS[writer](tmp_path / "weights.pt", _wrappings(m)[wrapping])
    assert not m.exists()
    try:
        torch.load(f, map_location="cpu", weights_only=False)
    except Exception:  # noqa: BLE001 - the raw pickle is no torch file: torch complains after running it
        assert writer == "raw"
    assert m.exists(), "the payload did not run: the tests of this module would prove nothing"


# --------------------------------------------------------------------------------------------------
# every family's loader


@pytest.mark.parametrize("writer", sorted(WRITERS))
@pytest.mark.parametrize("wrapping", WRAPPINGS)
def test_lewm_release_weights_pt(tmp_path, marker, writer, wrapping):
    d = _lewm_dir(tmp_path / "ckpt")
    f = WRITERS[writer](d / "weights.pt", _wrappings(marker)[wrapping])
    err = _refused(f"lewm:{d}", f, marker)
    assert "cannot read the weights" in str(err)


def test_lewm_any_single_pt_file(tmp_path, marker):
    """A directory with one .pt of another name: the loader takes it, and refuses it the same way."""
    d = _lewm_dir(tmp_path / "ckpt")
    f = _torch_file(d / "lewm_epoch_10.pt", {"state_dict": Payload(marker)})
    _refused(f"lewm:{d}", f, marker)


@pytest.mark.parametrize("family", ["lewm", "ac-tiny"])
def test_a_pickle_named_model_safetensors(tmp_path, marker, family):
    """safetensors never unpickles: a pickle under that name is just an unreadable file."""
    d = tmp_path / "ckpt"
    src = fixtures_dir() / "models" / ("pusht-lewm" if family == "lewm" else "pusht-ac-tiny")
    d.mkdir()
    shutil.copy(src / "config.json", d / "config.json")
    f = _torch_file(d / "model.safetensors", {"state_dict": Payload(marker)})
    _refused(f"{family}:{d}", f, marker, pickle_read=False)


@pytest.mark.parametrize("writer", sorted(WRITERS))
@pytest.mark.parametrize("wrapping", WRAPPINGS)
def test_vjepa2_ac_official_checkpoint(tmp_path, marker, writer, wrapping):
    f = WRITERS[writer](tmp_path / "vjepa2-ac-vitg.pt", _wrappings(marker)[wrapping])
    err = _refused(f"vjepa2-ac:{f}", f, marker)
    assert "cannot read the checkpoint" in str(err)


def _tiny_official_checkpoint(path: Path) -> Path:
    from wmcore.models.vjepa2_ac import ACPredictor

    p = ACPredictor(img_size=32, patch_size=16, num_frames=4, tubelet_size=2, embed_dim=16,
                    predictor_embed_dim=16, depth=1, num_heads=2, action_embed_dim=7)
    return _torch_file(path, {"predictor": p.state_dict()})


def test_vjepa2_ac_encoder_directory(tmp_path, marker):
    """``encoder=DIR``: transformers reads a pytorch_model.bin there; it must not unpickle code either."""
    from transformers import VJEPA2Config

    ckpt = _tiny_official_checkpoint(tmp_path / "ac.pt")
    enc = tmp_path / "encoder"
    VJEPA2Config(crop_size=32, patch_size=16, frames_per_clip=2, tubelet_size=2, hidden_size=16,
                 num_hidden_layers=1, num_attention_heads=2, pred_hidden_size=16, pred_num_hidden_layers=1,
                 pred_num_attention_heads=2).save_pretrained(enc)
    _torch_file(enc / "pytorch_model.bin", {"encoder.embeddings.patch_embeddings.proj.weight": Payload(marker)})
    with pytest.raises(WMError) as e:
        load(f"vjepa2-ac:{ckpt},encoder={enc},num_heads=2")
    assert str(enc) in str(e.value)  # transformers' own message does not name the file in the directory
    assert "Weights only load failed" in str(e.value)  # torch.load(weights_only=True) refused it
    assert not marker.exists()


@pytest.mark.parametrize("name", ["pusht-lewm", "pusht-ac-tiny", "pusht-wm", "pusht-refine"])
def test_embedded_names(tmp_path, marker, monkeypatch, name):
    """The embedded names read wmcore/fixtures/models/NAME (here a copy under WMCORE_FIXTURES)."""
    fx = tmp_path / "fixtures"
    d = fx / "models" / name
    d.mkdir(parents=True)
    shutil.copy(fixtures_dir() / "models" / name / "config.json", d / "config.json")
    # pusht-lewm takes a release weights.pt when there is no model.safetensors; the others read safetensors only
    weights = d / ("weights.pt" if name == "pusht-lewm" else "model.safetensors")
    f = _torch_file(weights, {"state_dict": Payload(marker)})
    monkeypatch.setenv("WMCORE_FIXTURES", str(fx))
    _refused(name, f, marker, pickle_read=name == "pusht-lewm")


# --------------------------------------------------------------------------------------------------
# the training resume checkpoint


def test_train_resume_checkpoint(tmp_path, marker):
    from wmcore.data import Episode
    from wmcore.data.episodes import save_episode, write_index
    from wmcore.models.lewm import tiny_config
    from wmcore.train import TrainConfig, train

    g = torch.Generator().manual_seed(0)
    data = tmp_path / "data"
    entries = [save_episode(data, i, Episode(torch.randint(0, 255, (9, 16, 16, 3), dtype=torch.uint8, generator=g),
                                             torch.randn(8, 2, generator=g)), seed=i) for i in range(4)]
    write_index(data, {"fps": 10.0, "height": 16, "width": 16}, entries)
    out = tmp_path / "run"
    f = _torch_file(out / "checkpoint.pt", {"model": Payload(marker), "step": 3})
    cfg = TrainConfig(steps=2, batch=2, val_every=1, log_every=1, val_episodes=1, warmup=1, window=3, seed=0)
    with pytest.raises(WMError, match=re.escape(str(f)) + ".*cannot read the resume checkpoint: refused.*exec"):
        train(str(data), str(out), tiny_config(action_dim=4, frameskip=2), cfg, device="cpu", log=lambda s: None)
    assert not marker.exists()
    assert not (out / "model").exists()


# --------------------------------------------------------------------------------------------------
# the command line


def test_cli_evaluate_refuses_the_file_with_exit_2(tmp_path, marker, capsys):
    d = _lewm_dir(tmp_path / "ckpt")
    f = _torch_file(d / "weights.pt", {"state_dict": Payload(marker)})
    code = cli_main(["evaluate", "--model", f"lewm:{d}", "--episodes", "1", "--horizon", "2",
                     "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert str(f) in err and "error" in err
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_the_safe_reads_still_load_real_checkpoints(tmp_path):
    """The refusals are not a blanket: the same loaders read honest .pt files."""
    from safetensors.torch import load_file

    d = _lewm_dir(tmp_path / "ckpt")
    state = load_file(fixtures_dir() / "models" / "pusht-lewm" / "model.safetensors")
    buf = io.BytesIO()
    torch.save({"state_dict": state}, buf)
    (d / "weights.pt").write_bytes(buf.getvalue())
    m = load(f"lewm:{d}")
    assert m.fingerprint() == load("pusht-lewm").fingerprint()
    ckpt = _tiny_official_checkpoint(tmp_path / "ac.pt")
    assert load(f"vjepa2-ac:{ckpt},num_heads=2").action_dim == 7
    assert json.loads((d / "config.json").read_text())  # untouched
