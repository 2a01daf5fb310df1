"""The embedded default (wmcore/fixtures/models/pusht-lewm) on the committed held-out set (wmcore/fixtures/pusht):
it loads offline as documented, passes its gates, and a degraded copy (noise on the predictor's
weights) fails them with readable messages while ``wmcore compare`` flags the regression."""

from __future__ import annotations

import copy
import os
import json
from pathlib import Path

import pytest
import torch

from wmcore.cli import main as cli_main
from wmcore.settings import load_thresholds
from wmcore.data import load as load_data
from wmcore.evaluate import EvalConfig, evaluate
from wmcore.models import load
from wmcore.paths import fixtures_dir

# of the 32: enough for stable curves, quick on 2 cores; WMCORE_EMBEDDED_EPISODES=32 runs them all
EPISODES = int(os.environ.get("WMCORE_EMBEDDED_EPISODES", "12"))
# relative to each predictor tensor's own std. NOISE: the gates fail with 95% confidence (12 episodes:
# step-1 skill -2.25, 90% CI [-9.48, -0.28] against min 0.3). At 0.5 the absolute gates do not
# reliably notice (32 episodes: step-1 skill 0.39, CI [0.07, 0.58], passes even the mean rule), though
# the open-loop AUC falls from 0.57 to 0.22: that is compare's job, as is SUBTLE.
NOISE = 1.0
SUBTLE = 0.3  # open-loop AUC roughly halves, yet every absolute gate still passes: compare's job


@pytest.fixture(scope="module")
def model():
    return load("pusht-lewm")


@pytest.fixture(scope="module")
def episodes():
    return load_data("pusht", limit=EPISODES)


@pytest.fixture(scope="module")
def thresholds():
    return load_thresholds("pusht-lewm", overrides={"bootstrap": 200})


@pytest.fixture(scope="module")
def cfg(thresholds):
    return EvalConfig(horizon=30, start=thresholds.start)  # start: see [tool.wmcore.models.pusht-lewm]


@pytest.fixture(scope="module")
def baseline(model, episodes, thresholds, cfg):
    return evaluate(model, episodes, cfg, thresholds, spec="pusht-lewm", data_id="pusht")


def _degraded(model, noise: float):
    bad = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in bad.model.predictor.parameters():
            if p.dim() > 1:  # weight matrices, not norms and biases
                p.add_(noise * p.std() * torch.randn(p.shape, generator=g))
    return bad


def test_shipped_files_and_model_card():
    d = fixtures_dir() / "models" / "pusht-lewm"
    assert {"config.json", "model.safetensors", "MODEL_CARD.md"} <= {p.name for p in d.iterdir()}
    assert (d / "model.safetensors").stat().st_size <= 30 * 2**20
    card = (d / "MODEL_CARD.md").read_text()
    cfg = json.loads((d / "config.json").read_text())
    assert "wmcore train" in card and "--seed 0" in card  # the exact command that made it
    assert cfg["wmcore"]["name"] == "pusht-lewm" and cfg["wmcore"]["frameskip"] == 5


def test_the_embedded_model_passes_its_gates(baseline, model):
    assert model.name == "pusht-lewm" and model.frameskip == 5 and model.action_dim == 10
    failed = [g.message for g in baseline.gates if not g.passed]
    assert not failed, failed
    cl, op = baseline.loops["closed_loop"], baseline.loops["open_loop"]
    assert cl.cosine[0] > baseline.chance_level + 0.5  # far above unrelated frames
    assert cl.skill["copy_last"][0] >= 0.3
    assert sum(op.skill["copy_first"][:10]) > 0
    assert op.auc < cl.auc  # open loop drifts faster than teacher-forced


def test_a_degraded_model_fails_the_gates_readably(model, episodes, thresholds, baseline, cfg):
    bad = _degraded(model, NOISE)
    assert bad.fingerprint() != model.fingerprint()
    r = evaluate(bad, episodes, cfg, thresholds, spec="pusht-lewm", data_id="pusht")
    failed = [g for g in r.gates if not g.passed]
    assert failed, "noise on the predictor went unnoticed: " + "; ".join(g.message for g in r.gates)
    for g in failed:  # each message shows the measured value and the limit
        assert f"{g.limit:+.4f}" in g.message or f"{g.limit:.4f}" in g.message or str(int(g.limit)) in g.message
    assert r.loops["closed_loop"].cosine[0] < baseline.loops["closed_loop"].cosine[0]


def test_compare_flags_the_degraded_model(model, episodes, thresholds, baseline, cfg, tmp_path, capsys):
    bad = evaluate(_degraded(model, SUBTLE), episodes, cfg, thresholds, spec="pusht-lewm", data_id="pusht")
    assert bad.loops["open_loop"].auc < baseline.loops["open_loop"].auc - 0.05
    base_dir, bad_dir = tmp_path / "base", tmp_path / "bad"
    baseline.save(base_dir / "pusht-lewm-recorded.json")
    bad.save(bad_dir / "pusht-lewm-recorded.json")
    before = (base_dir / "pusht-lewm-recorded.json").read_bytes()
    assert cli_main(["compare", str(base_dir), str(bad_dir), "--out", str(tmp_path / "a.png")]) == 1
    assert "REGRESSION" in capsys.readouterr().out
    assert cli_main(["compare", str(base_dir), str(base_dir), "--out", str(tmp_path / "b.png")]) == 0
    assert (base_dir / "pusht-lewm-recorded.json").read_bytes() == before
    assert Path(tmp_path / "a.png").stat().st_size > 0
