"""Which wmcore made a result: ``wmcore --version`` and every report carry the package version and,
from a git checkout, the commit; a report of a newer format is refused naming both versions."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import wmcore
from wmcore.cli import main
from wmcore.errors import WMError
from wmcore.evaluate import EvalConfig, evaluate
from wmcore.fsio import read_versioned
from wmcore.models.analytic import AnalyticConfig, AnalyticModel, make_episodes
from wmcore.report import DriftReport
from wmcore.settings import Thresholds
from wmcore.version import provenance, source_commit

REPO = Path(__file__).resolve().parents[1]
CHECKOUT = (REPO / ".git").exists() and Path(wmcore.__file__).resolve().parent == REPO / "wmcore"


def _head() -> str:
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_version_names_the_package_and_in_a_checkout_its_commit(capsys):
    assert main(["--version"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"wmcore {wmcore.__version__}")
    assert out[1] == f"package: {Path(wmcore.__file__).resolve().parent}"
    if CHECKOUT:  # make test runs from a clone: the commit is HEAD's (the wheel's case: tests/test_installed.py)
        assert f"(git {_head()[:12]}" in out[0]
    else:
        assert "git" not in out[0]


def test_reports_carry_version_and_commit(tmp_path):
    eps = make_episodes(AnalyticConfig(), episodes=2, steps=8, seed=0)
    r = evaluate(AnalyticModel(AnalyticConfig()), eps, EvalConfig(horizon=4), Thresholds(bootstrap=10))
    r.save(tmp_path / "r.json")
    env = json.loads((tmp_path / "r.json").read_text())["environment"]
    assert env["wmcore"] == wmcore.__version__
    assert env == {**env, **provenance()}
    if CHECKOUT:
        assert env["wmcore_commit"] == _head() and isinstance(env["wmcore_dirty"], bool)
        assert source_commit() == (env["wmcore_commit"], env["wmcore_dirty"])


def test_a_newer_drift_report_is_refused_naming_both_versions(tmp_path):
    eps = make_episodes(AnalyticConfig(), episodes=2, steps=8, seed=0)
    r = evaluate(AnalyticModel(AnalyticConfig()), eps, EvalConfig(horizon=4), Thresholds(bootstrap=10))
    d = r.to_dict()
    d["schema_version"] += 1
    d["environment"]["wmcore"] = "9.0.0"
    p = tmp_path / "r.json"
    p.write_text(json.dumps(d))
    with pytest.raises(WMError) as e:
        DriftReport.load(p)
    msg = str(e.value)
    assert f"schema_version {d['schema_version']}" in msg and "written by wmcore 9.0.0" in msg
    assert f"this wmcore ({wmcore.__version__}) reads versions" in msg and "upgrade wmcore" in msg


def test_a_newer_versioned_file_is_refused_naming_both_versions(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"format": "wmcore-control", "version": 7, "environment": {"wmcore": "9.0.0"}}))
    with pytest.raises(WMError) as e:
        read_versioned(p, "wmcore-control", 1, "control report", "")
    msg = str(e.value)
    assert "control report version 7 (written by wmcore 9.0.0)" in msg
    assert f"this wmcore ({wmcore.__version__}) reads version 1" in msg and "upgrade wmcore" in msg
