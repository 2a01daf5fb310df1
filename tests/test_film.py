"""Pictures of plans (wmcore.control.film, wmcore replay --video): the simulator's frames with the task's
goal as a green ghost, one MP4 per filmed task, a contact sheet per report; nothing overwritten."""

from __future__ import annotations

import numpy as np
import pytest

from wmcore.cli import main
from wmcore.control.film import film_report, film_task, goal_frame
from wmcore.control.report import ControlReport
from wmcore.control.sim.pusht import PushTSim
from wmcore.errors import WMError
from wmcore.video import read_video

LIGHT_GREEN = np.array([144, 238, 144])  # gym-pusht's goal colour


def _green(frame: np.ndarray) -> int:
    return int((np.abs(frame.astype(int) - LIGHT_GREEN).sum(-1) < 30).sum())


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("plan")
    assert main(["plan", "--planner", "oracle", "--limit", "2", "--samples", "32", "--elites", "4", "--iterations", "2",
                 "--out", str(out), "--success-min", "0"]) == 0
    return out / "control-oracle.json"


def test_a_filmed_task_shows_its_goal_and_ends_where_the_report_says(report):
    r = ControlReport.load(report)
    with PushTSim() as sim:
        for res in r.results:
            frames, ok = film_task(res, sim)
            assert ok == res["success"] and frames.dtype == np.uint8
            assert len(frames) == res["steps"] + 1 and frames.shape[1] == frames.shape[2]
            assert _green(frames[0]) > 500  # the goal's ghost, drawn where the block must go
            if ok:  # the block covers its ghost at the end
                assert _green(frames[-1]) < _green(frames[0]) / 2
            goal = goal_frame(res, sim)
            assert _green(goal) < _green(frames[0]) / 2  # the block sits on the ghost in the goal frame


def test_replay_video_writes_videos_and_a_contact_sheet_and_never_overwrites(report, tmp_path, capsys):
    out = tmp_path / "film"
    assert main(["replay", str(report), "--video", "--tasks", "1", "--out", str(out)]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert len(files) == 2 and files[0].endswith(".mp4") and files[1] == "control-oracle-sheet.png"
    r = ControlReport.load(report)
    video = read_video(out / files[0])
    assert video.shape[0] == r.results[0]["steps"] + 1
    from matplotlib.image import imread

    sheet = imread(out / files[1])
    assert sheet.shape[0] > 2 * sheet.shape[1] / 3 * len(r.results) / 2  # a row per task, three tiles wide
    capsys.readouterr()
    assert main(["replay", str(report), "--video", "--tasks", "1", "--out", str(out)]) == 2
    assert "exists already" in capsys.readouterr().err
    with pytest.raises(WMError, match="exists already"):
        film_report(r.results, out, "control-oracle", videos=1)
    assert sorted(p.name for p in out.iterdir()) == files  # nothing added, nothing replaced
