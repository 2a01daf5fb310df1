"""scripts/drift_vs_control.py: the README's drift-vs-control table comes from the saved reports alone
(docs/drift_vs_control/), and its correlations behave on known data."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAVED = ROOT / "docs" / "drift_vs_control"


def _script():
    spec = importlib.util.spec_from_file_location("drift_vs_control", ROOT / "scripts" / "drift_vs_control.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_correlations_on_known_orderings():
    dvc = _script()
    rows = [{k: None for k in dvc.MEASURES} | {"open_auc": a, "drift_horizon": 5, "step1_skill": -a, "success": s,
             "score": 1 - s} for a, s in [(0.1, 0.0), (0.2, 0.3), (0.4, 0.5), (0.5, 0.9), (0.9, 1.0)]]
    c = dvc.correlations(rows)
    assert c["open_auc~success"]["rho"] == pytest.approx(1.0) and c["open_auc~score"]["rho"] == pytest.approx(-1.0)
    assert c["step1_skill~success"]["rho"] == pytest.approx(-1.0)
    assert c["drift_horizon~success"]["rho"] == 0.0  # a constant measure ranks nothing
    assert "energy_rank_close~success" not in c  # a measure missing for a version is left out
    assert c["open_auc~success"]["versions"] == 5


@pytest.mark.skipif(not (SAVED / "versions.json").exists(), reason="no saved study in docs/drift_vs_control")
def test_the_saved_study_reproduces_from_its_reports(tmp_path):
    work = tmp_path / "study"
    shutil.copytree(SAVED, work)
    (work / "drift_vs_control.json").unlink()
    (work / "drift_vs_control.png").unlink()
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "drift_vs_control.py"), "--from-reports", str(work)],
                         capture_output=True, text=True, cwd=ROOT, check=True).stdout
    again = json.loads((work / "drift_vs_control.json").read_text())
    saved = json.loads((SAVED / "drift_vs_control.json").read_text())
    assert again == saved
    versions = json.loads((SAVED / "versions.json").read_text())
    assert len(saved["rows"]) == len(versions) >= 8
    assert all(r["tasks"] == 64 for r in saved["rows"])  # every version on the same 64 tasks
    assert "Spearman open-loop AUC ~ success" in out and (work / "drift_vs_control.png").stat().st_size > 10_000
