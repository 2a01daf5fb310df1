"""The second embedded model (wmcore/fixtures/models/pusht-ac-tiny, a small V-JEPA 2-AC) on the committed
held-out set (wmcore/fixtures/pusht): it loads offline by name, passes its own gates, depends on its actions
(the failure of every earlier recipe, see wmcore.models.ac_tiny), and its exact KV-cached rollout
gives the curves of full recompute on trained weights."""

from __future__ import annotations

import dataclasses
import json

import pytest

from wmcore.settings import load_thresholds
from wmcore.data import load as load_data
from wmcore.evaluate import EvalConfig, evaluate
from wmcore.models import load
from wmcore.paths import fixtures_dir
from wmcore.models.ac_tiny import PositionTargetCodec
from wmcore.models.vjepa2_ac import VJEPA2ACWorldModel

NAME = "pusht-ac-tiny"
EPISODES = 32  # all: per-step skill of this model is noisy on fewer (see its MODEL_CARD.md); it evaluates in ~2 s


@pytest.fixture(scope="module")
def model():
    return load(NAME)


@pytest.fixture(scope="module")
def episodes():
    return load_data("pusht", limit=EPISODES)


@pytest.fixture(scope="module")
def thresholds():
    return load_thresholds(NAME, overrides={"bootstrap": 200})


@pytest.fixture(scope="module")
def cfg(thresholds):
    return EvalConfig(horizon=30, start=thresholds.start)


@pytest.fixture(scope="module")
def report(model, episodes, thresholds, cfg):
    return evaluate(model, episodes, cfg, thresholds, spec=NAME, data_id="pusht")


def test_shipped_files_and_model_card():
    d = fixtures_dir() / "models" / NAME
    assert {"config.json", "model.safetensors", "MODEL_CARD.md", "drift.png"} <= {p.name for p in d.iterdir()}
    assert (d / "model.safetensors").stat().st_size <= 30 * 2**20
    card = (d / "MODEL_CARD.md").read_text()
    for command in ("make train-ac-tiny", "--encoder-from", "--seed 0", "recipes/pusht-ac-tiny-stage1.json"):
        assert command in card  # the exact commands that made it
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["name"] == NAME and cfg["frameskip"] == 5 and cfg["freeze_encoder"] and cfg["pred_loss"] == "mse"


def test_the_embedded_ac_model_passes_its_gates(report, model):
    assert isinstance(model, VJEPA2ACWorldModel) and isinstance(model.codec, PositionTargetCodec)
    assert model.name == NAME and model.action_dim == 10 and model.frameskip == 5
    failed = [g.message for g in report.gates if not g.passed]
    assert not failed, failed
    cl, op = report.loops["closed_loop"], report.loops["open_loop"]
    assert cl.skill["copy_last"][0] > 0.1  # it beats "nothing moves" by a margin, not by noise
    assert sum(op.skill["copy_first"][:10]) > 0
    assert op.auc < cl.auc


def test_it_uses_its_actions(report, model, episodes, thresholds, cfg):
    """Random actions (recorded scale, wrong content) must cost the closed loop its skill."""
    shuffled = evaluate(model, episodes, dataclasses.replace(cfg, action_source="random"), thresholds)
    got = shuffled.loops["closed_loop"].skill["copy_last"][:10]
    want = report.loops["closed_loop"].skill["copy_last"][:10]
    assert sum(want) / 10 - sum(got) / 10 > 0.1, (want, got)


def test_cached_rollout_gives_the_curves_of_full_recompute(report, model, episodes, thresholds, cfg):
    full = evaluate(model, episodes, dataclasses.replace(cfg, use_cache=False), thresholds)
    for loop in ("closed_loop", "open_loop"):
        a, b = report.loops[loop], full.loops[loop]
        assert max(abs(x - y) for x, y in zip(a.cosine, b.cosine)) <= 1e-5
        assert max(abs(x - y) for x, y in zip(a.skill["copy_last"], b.skill["copy_last"])) <= 1e-4
