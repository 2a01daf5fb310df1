"""What the model imagines (wmcore.imagine): the nearest real frame to each imagined latent, from the
other episodes; the filmstrip PNG from the bench and from ``wmcore plot --filmstrip``."""

from __future__ import annotations

import pytest
import torch

from wmcore.cli import main
from wmcore.data import load
from wmcore.errors import WMError
from wmcore.evaluate import EvalConfig
from wmcore.imagine import filmstrip_of_episodes, nearest_frames
from wmcore.models.analytic import AnalyticConfig, AnalyticModel, make_episodes


def test_the_nearest_frame_is_the_most_similar_latent_outside_the_episode():
    g = torch.Generator().manual_seed(0)
    bank = torch.randn(12, 3, 5, generator=g)
    exclude = torch.zeros(12, dtype=torch.bool)
    exclude[:4] = True  # the episode itself
    pred = torch.stack([bank[2], bank[7] * 3.0, -bank[9]])  # a frame of its own, a scaled copy, an opposite
    idx, cos = nearest_frames(pred, bank, exclude)
    assert idx[0] >= 4  # its own frame 2 is excluded even though it matches exactly
    assert idx[1] == 7 and cos[1] == pytest.approx(1.0)  # cosine ignores the scale
    assert idx[2] != 9 and cos[2] < 1.0


def test_a_filmstrip_is_drawn_for_two_or_more_episodes(tmp_path):
    cfg = AnalyticConfig(delta=0.05)
    model, eps = AnalyticModel(cfg), make_episodes(cfg, episodes=3, steps=14, seed=1)
    path = filmstrip_of_episodes(model, eps, EvalConfig(horizon=10), tmp_path / "f.png", episodes=2, columns=4)
    from matplotlib.image import imread

    assert imread(path).shape[0] > 200
    with pytest.raises(WMError, match="2 or more episodes"):
        filmstrip_of_episodes(model, eps[:1], EvalConfig(horizon=10), tmp_path / "g.png")
    with pytest.raises(WMError, match="exists already"):
        filmstrip_of_episodes(model, eps, EvalConfig(horizon=10), path)


def test_plot_filmstrip_loads_the_reports_model_and_data_again(tmp_path, capsys):
    out = tmp_path / "ev"
    assert main(["evaluate", "--model", "pusht-wm", "--episodes", "3", "--horizon", "10", "--no-energy",
                 "--out", str(out)]) in (0, 1)
    report = out / "pusht-wm-recorded.json"
    capsys.readouterr()
    assert main(["plot", str(report), "--filmstrip"]) == 0
    assert (out / "pusht-wm-recorded-filmstrip.png").is_file()
    assert main(["plot", str(report), "--filmstrip"]) == 2  # never overwritten
    assert "exists already" in capsys.readouterr().err
    other = tmp_path / "other"
    assert main(["plot", str(report), "--filmstrip", "--out", str(other / "x.png"), "--data", "/no/such/set"]) == 2
    assert "cannot load its model or data again" in capsys.readouterr().err
    assert load("pusht", limit=1)


def test_a_model_that_reads_states_gets_them_in_its_filmstrip(tmp_path):
    """pusht-ac-tiny reads the agent's position of every context frame: the filmstrip's open loop is the
    evaluation's own, states and all."""
    from wmcore.models import load as load_model

    model = load_model("pusht-ac-tiny")
    path = filmstrip_of_episodes(model, load("pusht", limit=3), EvalConfig(horizon=5), tmp_path / "f.png",
                                 episodes=1, columns=2)
    assert path.is_file()
