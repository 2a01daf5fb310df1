"""Pictures of plans: each task of a control report replayed in the simulator and filmed (an MP4 per
task), and one contact sheet per report (per task: start, goal, final frame, success in the corner).

The frames are the simulator's own (gym-pusht's renderer at its visualisation size). Its goal pose is
set to the task's goal, so the goal is drawn as gym-pusht draws it: a light-green T under the block,
the ghost the block should cover. The target of each action is marked with a red cross (gym-pusht's
own marker), and a caption gives the task id, the step and, once reached, "success". Text is drawn
with OpenCV (a requirement of the simulator); the video is H.264 through ``wmcore.video.write_video``
(PyAV), so a headless machine needs nothing more.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import WMError
from ..fsio import safe_name, write_new
from .sim.pusht import PushTSim, success

__all__ = ["captioned", "contact_sheet", "film_report", "film_task", "goal_frame"]

GREEN, RED, INK = (40, 150, 60), (200, 40, 40), (20, 20, 20)


def film_task(result: dict, sim: PushTSim) -> tuple[np.ndarray, bool]:
    """Replay one task (a control report's result: ``start``, ``goal``, ``actions``) and render every
    step: ``uint8 [steps + 1, S, S, 3]`` with the goal ghost and action marks (``captioned`` adds the
    text), and whether it succeeded. Stops at success, as the run and ``replay`` do."""
    env = sim.env
    goal = np.asarray(result["goal"], dtype=np.float64)
    sim.reset_to(result["start"], render=False)
    env.goal_pose = goal[2:5].copy()  # gym-pusht draws its goal pose: the task's goal, as a green T
    env._last_action = None
    frames = [env._render(visualize=True)]
    ok = bool(success(sim.state, goal))
    actions = result["actions"]
    for step, a in enumerate(actions, 1):
        if ok:
            break
        sim.step(np.asarray(a, dtype=np.float64), render=False)
        ok = bool(success(sim.state, goal))
        frames.append(env._render(visualize=True))
    return np.stack(frames), ok


def goal_frame(result: dict, sim: PushTSim) -> np.ndarray:
    """The task's goal state rendered (the block on its green ghost)."""
    sim.reset_to(result["goal"], render=False)
    sim.env.goal_pose = np.asarray(result["goal"], dtype=np.float64)[2:5].copy()  # _setup reset it
    sim.env._last_action = None
    return sim.env._render(visualize=True)


def captioned(frames: np.ndarray, task_id: str, ok: bool) -> np.ndarray:
    """The frames of ``film_task`` with the task id and the step written on each, "success" on the last
    one when the task succeeded."""
    total = len(frames) - 1
    return np.stack([_caption(f, f"{task_id}  step {i}/{total}", ok and i == total) for i, f in enumerate(frames)])


def _caption(frame: np.ndarray, text: str, reached: bool) -> np.ndarray:
    import cv2

    img = np.ascontiguousarray(frame.copy())
    scale = img.shape[0] / 680
    cv2.putText(img, text, (int(10 * scale), int(28 * scale)), cv2.FONT_HERSHEY_SIMPLEX, 0.7 * scale, INK,
                max(1, int(2 * scale)), cv2.LINE_AA)
    if reached:
        cv2.putText(img, "success", (int(10 * scale), int(60 * scale)), cv2.FONT_HERSHEY_SIMPLEX, 0.9 * scale, GREEN,
                    max(1, int(2 * scale)), cv2.LINE_AA)
    return img


def contact_sheet(rows: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray, bool]], path: str | os.PathLike,
                  tile: int = 192) -> Path:
    """One PNG: a row per task ``(id, start frame, goal frame, final frame, success)``, tiles of ``tile``
    px with the column's name, the task id and SUCCESS / FAILED in the corner. Written atomically, never
    over an existing file."""
    import cv2

    if not rows:
        raise WMError(f"{path}: no tasks to draw")
    head = 28
    sheet = np.full((head + len(rows) * tile, 3 * tile, 3), 255, np.uint8)
    for j, name in enumerate(("start", "goal", "final")):
        cv2.putText(sheet, name, (j * tile + 8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, INK, 1, cv2.LINE_AA)
    for i, (tid, start, goal, final, ok) in enumerate(rows):
        y = head + i * tile
        for j, img in enumerate((start, goal, final)):
            sheet[y : y + tile, j * tile : (j + 1) * tile] = cv2.resize(np.ascontiguousarray(img), (tile, tile),
                                                                        interpolation=cv2.INTER_AREA)
        cv2.putText(sheet, tid, (6, y + tile - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.4, INK, 1, cv2.LINE_AA)
        mark, colour = ("SUCCESS", GREEN) if ok else ("FAILED", RED)
        cv2.putText(sheet, mark, (2 * tile + 6, y + 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, colour, 2, cv2.LINE_AA)
        cv2.rectangle(sheet, (0, y), (3 * tile - 1, y + tile - 1), (200, 200, 200), 1)
    ok, png = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    if not ok:
        raise WMError(f"{path}: the contact sheet could not be encoded as PNG")
    return write_new(path, png.tobytes())


def film_report(results: Sequence[dict], out: str | os.PathLike, stem: str, *, videos: int = 4,
                fps: float = 10.0) -> list[Path]:
    """Film the first ``videos`` tasks of a control report's ``results`` (``out/STEM-TASK.mp4``) and draw
    the contact sheet of all of them (``out/STEM-sheet.png``); returns the files written. Nothing is
    overwritten: an existing file is an error before anything is rendered."""
    from ..video import write_video

    out = Path(out)
    names = [out / (safe_name(f"{stem}-{r['id']}") + ".mp4") for r in results[:videos]]
    names.append(out / (safe_name(stem) + "-sheet.png"))
    for p in names:
        if p.exists():
            raise WMError(f"{p}: exists already; choose another directory (nothing is overwritten)")
    written, rows = [], []
    with PushTSim() as sim:
        for i, r in enumerate(results):
            frames, ok = film_task(r, sim)
            if i < videos:
                written.append(write_video(names[i], captioned(frames, str(r["id"]), ok), fps=fps))
            rows.append((str(r["id"]), frames[0], goal_frame(r, sim), frames[-1], ok))
    written.append(contact_sheet(rows, names[-1]))
    return written
