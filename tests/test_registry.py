"""The registries: ``wmcore.models.load(spec)`` (embedded models under $WMCORE_FIXTURES, families,
unknown specs) and ``wmcore.data.load(path)`` (episode directories, fixtures set names, the shipped
PushT set, bad paths)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from wmcore.cli import main as cli_main
from wmcore.data import Episode
from wmcore.data import load as load_data
from wmcore.data.episodes import save_episode, write_index
from wmcore.errors import WMError
from wmcore.models import EMBEDDED, FAMILIES
from wmcore.paths import fixtures_dir
from wmcore.models import load as load_model
from wmcore.models.lewm import LeWMWorldModel, LeWorldModel, save_pretrained, tiny_config
from wmcore.protocol import WorldModel

REPO = Path(__file__).resolve().parents[1]
TINY = tiny_config(
    name="tiny-registry", action_dim=4, frameskip=2, action_mean=(1.0, -2.0), action_std=(3.0, 0.5)
)


pytestmark = pytest.mark.usefixtures("few_threads")


# --------------------------------------------------------------------------------------------------
# models


def test_fixtures_dir_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("WMCORE_FIXTURES", str(tmp_path))
    assert fixtures_dir() == tmp_path
    monkeypatch.delenv("WMCORE_FIXTURES")
    assert fixtures_dir() == REPO / "wmcore" / "fixtures"


def test_embedded_model_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("WMCORE_FIXTURES", str(tmp_path))
    with pytest.raises(WMError) as e:
        load_model("pusht-lewm")
    assert str(tmp_path / "models" / "pusht-lewm") in str(e.value) and "WMCORE_FIXTURES" in str(e.value)


def test_embedded_model_directory_without_a_checkpoint(monkeypatch, tmp_path):
    (tmp_path / "models" / "pusht-lewm").mkdir(parents=True)
    monkeypatch.setenv("WMCORE_FIXTURES", str(tmp_path))
    with pytest.raises(WMError, match="config.json"):
        load_model("pusht-lewm")


def _tiny_model(seed: int = 0) -> LeWorldModel:
    """A tiny model whose actions matter: the AdaLN-zero blocks (identity at init) get random values."""
    torch.manual_seed(seed)
    m = LeWorldModel(TINY)
    with torch.no_grad():
        for blk in m.predictor.transformer.layers:
            for p in blk.adaLN_modulation[-1].parameters():
                p.copy_(0.3 * torch.randn(p.shape))
    return m.eval()


def test_embedded_model_loads_from_the_fixtures_dir(monkeypatch, tmp_path):
    saved = _tiny_model()
    save_pretrained(saved, tmp_path / "models" / "pusht-lewm")
    monkeypatch.setenv("WMCORE_FIXTURES", str(tmp_path))

    m = load_model("pusht-lewm")
    assert isinstance(m, WorldModel) and m.name == "pusht-lewm"
    assert m.action_dim == TINY.action_dim and m.frameskip == TINY.frameskip
    assert m.fingerprint() == LeWMWorldModel(saved).fingerprint()  # the same weights and config

    g = torch.Generator().manual_seed(1)
    frames = torch.randint(0, 256, (2, 4, 24, 24, 3), dtype=torch.uint8, generator=g)
    z = m.encode(frames)
    assert z.shape == (2, 4, 1, TINY.embed_dim) and torch.isfinite(z).all()
    assert torch.allclose(z, LeWMWorldModel(saved).encode(frames), atol=1e-5)
    actions = torch.randn(2, 3, TINY.action_dim, generator=g)
    nxt = m.predict(z[:, :3], actions)
    assert nxt.shape == (2, 1, TINY.embed_dim) and torch.isfinite(nxt).all()
    assert (nxt - m.predict(z[:, :3], actions + 5.0)).abs().max() > 1e-3  # the actions reach the prediction


def test_family_spec_loads_a_directory(tmp_path):
    save_pretrained(_tiny_model(), tmp_path / "ckpt")
    m = load_model(f"lewm:{tmp_path / 'ckpt'}")
    assert isinstance(m, WorldModel) and m.name == TINY.name
    assert m.encode(torch.zeros(1, 2, 16, 16, 3, dtype=torch.uint8)).shape == (1, 2, 1, TINY.embed_dim)


@pytest.mark.parametrize("spec", ["nope", "nope:x", "pusht-lewm:extra", ""])
def test_unknown_specs_list_the_names_and_families(spec):
    with pytest.raises(WMError) as e:
        load_model(spec)
    msg = str(e.value)
    assert repr(spec) in msg
    for name in (*EMBEDDED, *FAMILIES):
        assert name in msg


def test_family_without_its_argument():
    with pytest.raises(WMError, match="lewm:DIR"):
        load_model("lewm")
    with pytest.raises(WMError, match="not a directory"):
        load_model("lewm:/no/such/checkpoint")


def test_analytic_spec_options_and_bad_ones():
    m = load_model("analytic:delta=0.1,frameskip=2")
    assert m.cfg.delta == 0.1 and m.action_dim == 4 and m.name == "analytic[delta=0.1,frameskip=2]"
    with pytest.raises(WMError, match="option 'colour=1': expected key=value"):
        load_model("analytic:colour=1")
    with pytest.raises(WMError, match="delta='x': expected a number"):
        load_model("analytic:delta=x")
    with pytest.raises(WMError, match="keep pixels in range"):
        load_model("analytic:offset=0.9")


def test_analytic_on_other_frames_is_bad_input_that_says_how_to_make_its_episodes(tmp_path, capsys):
    """The analytic model reads only its own world's frames: the default PushT data is the user's
    mistake (exit 2, with what to do), not a bug in wmcore (exit 3, with a traceback)."""
    m = load_model("analytic")
    with pytest.raises(WMError, match=r"expected uint8 \[B, T, 16, 16, 3\], found \(1, 2, 96, 96, 3\).*make_episodes"):
        m.encode(torch.zeros(1, 2, 96, 96, 3, dtype=torch.uint8))
    code = cli_main(["evaluate", "--model", "analytic", "--episodes", "1", "--horizon", "2",
                     "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "make_episodes" in err and "--data DIR" in err and "Traceback" not in err


# --------------------------------------------------------------------------------------------------
# data


def _episode(steps: int, seed: int) -> Episode:
    g = np.random.default_rng(seed)
    frames = g.integers(0, 256, (steps + 1, 16, 16, 3), dtype=np.uint8)
    actions = g.normal(size=(steps, 2)).astype(np.float32)
    return Episode(frames=torch.from_numpy(frames), actions=torch.from_numpy(actions), states=None, fps=10.0,
                   id=f"ep{seed}")


def _write_set(d: Path, n: int = 3, steps: int = 5) -> list[Episode]:
    eps = [_episode(steps + i, seed=i) for i in range(n)]
    entries = [save_episode(d, i, e, seed=i) for i, e in enumerate(eps)]
    write_index(d, {"fps": 10.0, "height": 16, "width": 16}, entries)
    return eps


def test_episode_directory_with_limit(tmp_path):
    eps = _write_set(tmp_path / "set")
    back = load_data(str(tmp_path / "set"), limit=2)
    assert [e.id for e in back] == ["set/episode_000", "set/episode_001"]
    for a, b in zip(eps, back):
        assert torch.equal(a.actions, b.actions) and b.frames.shape == a.frames.shape
    assert len(load_data(str(tmp_path / "set"))) == len(eps)
    assert len(load_data(tmp_path / "set", limit=10)) == len(eps)  # a Path, and a limit beyond the set


@pytest.mark.parametrize("limit", [0, -1, 1.5, True])
def test_bad_limit(tmp_path, limit):
    _write_set(tmp_path / "set", n=1)
    with pytest.raises(WMError, match="limit"):
        load_data(str(tmp_path / "set"), limit=limit)


def test_fixtures_set_name_resolves_through_the_environment(monkeypatch, tmp_path):
    eps = _write_set(tmp_path / "fx" / "myset", n=2)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("WMCORE_FIXTURES", str(tmp_path / "fx"))
    back = load_data("myset")
    assert [e.id for e in back] == ["myset/episode_000", "myset/episode_001"]
    assert all(torch.equal(a.actions, b.actions) for a, b in zip(eps, back))
    with pytest.raises(WMError, match="does not exist"):
        load_data("otherset")  # not a set there


def test_missing_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(WMError, match="does not exist") as e:
        load_data(str(missing))
    assert str(missing) in str(e.value)


def test_directory_of_neither_layout(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hello")
    with pytest.raises(WMError, match=r"neither an episode directory \(index.json\) nor a LeRobot dataset") as e:
        load_data(str(tmp_path / "junk"))
    assert str(tmp_path / "junk") in str(e.value)


def _check_pusht(eps: list[Episode], d: Path) -> None:
    index = json.loads((d / "index.json").read_text())
    assert len(eps) == 2
    for e, entry in zip(eps, index["episodes"][:2]):
        t = entry["steps"]
        assert e.frames.dtype == torch.uint8 and tuple(e.frames.shape) == (t + 1, 96, 96, 3)
        assert e.actions.shape == (t, 2) and torch.isfinite(e.actions).all()
        assert e.id.endswith(entry["name"])
        assert e.frames.float().std() > 0  # real pictures, not blanks


def test_shipped_pusht_set(monkeypatch):
    d = REPO / "wmcore" / "fixtures" / "pusht"
    if not (d / "index.json").is_file():
        pytest.fail(f"{d}: the shipped PushT evaluation set is missing")
    monkeypatch.delenv("WMCORE_FIXTURES", raising=False)
    monkeypatch.chdir(REPO)
    _check_pusht(load_data("wmcore/fixtures/pusht", limit=2), d)


def test_shipped_pusht_set_by_name(monkeypatch, tmp_path):
    monkeypatch.delenv("WMCORE_FIXTURES", raising=False)
    monkeypatch.chdir(tmp_path)  # no 'pusht' here: the name resolves to the repository's wmcore/fixtures/
    _check_pusht(load_data("pusht", limit=2), REPO / "wmcore" / "fixtures" / "pusht")
