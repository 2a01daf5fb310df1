"""The ``wmcore`` command: show / plot exit codes, output files, bad input, version, console script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import wmcore
from wmcore.cli import main
from wmcore.settings import Thresholds
from wmcore.errors import WMError
from wmcore.evaluate import EvalConfig, evaluate
from wmcore.models.analytic import AnalyticConfig, AnalyticModel, make_episodes

H = 10
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def reports():
    cfg = AnalyticConfig()
    episodes = make_episodes(cfg, episodes=4, steps=H + 2, seed=0)
    ok = evaluate(AnalyticModel(cfg, name="cli-model"), episodes, EvalConfig(horizon=H), Thresholds(bootstrap=200))
    # no cosine reaches 1.01: the step-1 gate must fail
    bad = evaluate(
        AnalyticModel(cfg, name="cli-model"), episodes, EvalConfig(horizon=H), Thresholds(bootstrap=200, step1_min=1.01)
    )
    return ok, bad


@pytest.fixture()
def passing(reports, tmp_path):
    return reports[0].save(tmp_path / "pass.json")


@pytest.fixture()
def failing(reports, tmp_path):
    return reports[1].save(tmp_path / "fail.json")


def test_show_passing_report(passing, reports, capsys):
    assert reports[0].passed
    assert main(["show", str(passing)]) == 0
    out = capsys.readouterr().out
    assert "cli-model" in out
    for g in reports[0].gates:
        assert f"[PASS] {g.name}: {g.message}" in out
    assert "[FAIL]" not in out
    # the summary rows show the measured step-1 cosine of each loop
    for loop, row in reports[0].summary().items():
        line = next(ln for ln in out.splitlines() if ln.strip().startswith(loop))
        assert f"step1={row['step1']:.3f}" in line
    # and the table row, as in the pytest summary: closed loop at step 1, the verdict
    r = reports[0]
    line = next(ln for ln in out.splitlines() if ln.startswith("cli-model "))
    assert line.split()[2] == f"{r.loops['closed_loop'].cosine[0]:.3f}" and line.endswith("PASS")


def test_show_failing_report_exits_1(failing, capsys):
    assert main(["show", str(failing)]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] step1_cosine" in out
    assert "[PASS] monotone_decay" in out
    assert next(ln for ln in out.splitlines() if ln.startswith("cli-model ")).endswith("FAIL step1_cosine")


def test_plot_default_name(passing, capsys):
    assert main(["plot", str(passing)]) == 0
    png = passing.with_suffix(".png")
    assert png.read_bytes().startswith(PNG_MAGIC)
    assert str(png) in capsys.readouterr().out


def test_plot_out_option(passing, tmp_path):
    out = tmp_path / "figs" / "drift.png"
    assert main(["plot", str(passing), "--out", str(out)]) == 0
    assert out.read_bytes().startswith(PNG_MAGIC)
    assert not passing.with_suffix(".png").exists()


def test_plot_refuses_to_overwrite(passing, capsys):
    png = passing.with_suffix(".png")
    png.write_bytes(b"not yours")
    assert main(["plot", str(passing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wmcore plot: error:") and "exists" in err and str(png) in err
    assert png.read_bytes() == b"not yours"
    out = passing.parent / "other.png"
    out.write_bytes(b"mine")
    assert main(["plot", str(passing), "--out", str(out)]) == 2
    assert out.read_bytes() == b"mine"


def test_plot_default_name_for_a_report_without_extension(reports, tmp_path):
    report = reports[0].save(tmp_path / "runs.v2" / "report")
    assert main(["plot", str(report)]) == 0
    assert not (tmp_path / "runs.png").exists(), "written next to the run directory instead of into it"
    assert (tmp_path / "runs.v2" / "report.png").is_file()


@pytest.mark.parametrize("command", ["show", "plot"])
def test_missing_report_exits_2(command, tmp_path, capsys):
    missing = tmp_path / "nope.json"
    assert main([command, str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"wmcore {command}: error:") and str(missing) in err
    assert list(tmp_path.iterdir()) == []  # nothing was written


@pytest.mark.parametrize("command", ["show", "plot"])
def test_corrupt_report_exits_2(command, passing, capsys):
    text = passing.read_text()
    passing.unlink()
    passing.write_text(text[: len(text) // 3])
    assert main([command, str(passing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"wmcore {command}: error:") and str(passing) in err and "JSON" in err
    assert not passing.with_suffix(".png").exists()


def test_no_command_is_a_usage_error(capsys):
    assert main([]) == 2
    assert "usage" in capsys.readouterr().err


def test_console_script_help():
    script = Path(sys.executable).parent / "wmcore"
    assert script.exists(), f"console script not installed next to {sys.executable}"
    r = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "plot" in r.stdout and "show" in r.stdout


@pytest.mark.parametrize(
    "argv, options",
    [
        (["--help"], ["evaluate", "rollout", "show", "plot", "compare", "make-fixtures", "train"]),
        (["evaluate", "--help"], ["--model", "--data", "--horizon", "--start", "--actions", "--dtype", "pusht-lewm"]),
        (["rollout", "--help"], ["--video", "--actions", "--horizon", "--out"]),
        (["compare", "--help"], ["BASE", "NEW", "--pair", "--max-step1-drop", "--max-slowdown", "--pyproject",
                                 "[tool.wmcore.compare]"]),
        (["make-fixtures", "--help"], ["pusht"]),
        (["make-fixtures", "pusht", "--help"], ["--out", "--episodes", "--steps", "--seed", "--size", "--crf"]),
    ],
    ids=["wmcore", "evaluate", "rollout", "compare", "make-fixtures", "make-fixtures-pusht"],
)
def test_every_subcommand_has_a_useful_help(argv, options, capsys):
    assert main(argv) == 0
    out = capsys.readouterr().out
    missing = [o for o in options if o not in out]
    assert not missing, f"wmcore {' '.join(argv)} lacks {missing}:\n{out}"


def test_make_fixtures_needs_a_kind(capsys):
    assert main(["make-fixtures", "--out", "x"]) == 2
    assert "wmcore make-fixtures: error:" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# the exit-code contract (wmcore.errors): 2 only for bad input, 3 and the traceback for a bug

def _raise(exc: BaseException):
    def body() -> int:
        raise exc
    return body


@pytest.mark.parametrize(
    "exc, code, shown",
    [
        (WMError("data.npz: no actions"), 2, "prog: error: data.npz: no actions"),
        (ValueError("an internal shape check"), 3, "Traceback"),  # a plain ValueError is a bug, not bad input
        (KeyError("missing"), 3, "internal error (exit 3)"),
        (KeyboardInterrupt(), 130, "prog: interrupted"),
        (SystemExit(2), 2, ""),  # argparse's usage error, already printed by argparse
        (SystemExit(0), 0, ""),  # --help
    ],
    ids=["wmerror", "valueerror", "keyerror", "ctrl-c", "usage", "help"],
)
def test_exit_code_contract(exc, code, shown, capsys):
    from wmcore.errors import run_command

    assert run_command("prog", _raise(exc)) == code
    err = capsys.readouterr().err
    assert shown in err
    if code == 2:
        assert "Traceback" not in err


def test_a_bug_in_a_subcommand_exits_3_with_its_traceback(passing, monkeypatch, capsys):
    """Only WMError means bad input: a ValueError from inside wmcore (here planted in the report
    reader) is shown with its traceback and exit 3, never disguised as exit 2."""
    from wmcore import report

    def broken(path):
        raise ValueError("planted bug")

    monkeypatch.setattr(report.DriftReport, "load", staticmethod(broken))
    assert main(["show", str(passing)]) == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and "planted bug" in err and "internal error" in err


def test_bench_arguments_put_wmcores_defaults_first_and_pass_the_rest_on(capsys):
    from wmcore.cli import SUITES_DIR, bench_args, suite_names

    assert set(suite_names()) >= {"drift", "control", "policy", "throughput", "scaling", "vjepa2_ac_cache"}
    a = bench_args(["--wm-episodes", "4", "-k", "drift"])
    assert a[:5] == ["-p", "no:randomly", "--benchmark-only", "--benchmark-autosave", "--benchmark-storage=runs/benchmarks"]
    assert a[-4:] == ["--wm-episodes", "4", "-k", "drift"] and a[-5] == "wmcore.suites" and "--pyargs" in a
    assert not [x for x in a if x.startswith("--ignore")]  # every suite
    b = bench_args(["--suite", "drift", "bench/", "--suite=control"])
    ignored = {x.partition("=")[2] for x in b if x.startswith("--ignore=")}
    assert ignored == {str(SUITES_DIR / f"test_{n}.py") for n in suite_names() if n not in ("drift", "control")}
    assert b[-2:] == ["wmcore.suites", "bench/"]
    c = bench_args(["--suite", "none", "bench/", "--", "--suite", "x"])  # after --: pytest's, verbatim
    assert "wmcore.suites" not in c and c[-3:] == ["bench/", "--suite", "x"]
    assert bench_args(["-h"]) is None and "usage: wmcore bench" in capsys.readouterr().out


@pytest.mark.parametrize("argv, words", [
    (["bench", "--suite", "nope"], ["--suite 'nope'", "drift"]),
    (["bench", "--suite"], ["--suite needs"]),
    (["bench", "--suite", "none", "--suite", "drift"], ["none", "not both"]),
])
def test_bench_bad_suite_is_exit_2(argv, words, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("wmcore bench: error:") and all(w in err for w in words), err


def test_register_family_adds_a_users_model_and_refuses_ours():
    from wmcore.models import FAMILIES, load, register_family
    from wmcore.models.analytic import AnalyticConfig, AnalyticModel

    register_family("mine-test", lambda arg: AnalyticModel(AnalyticConfig(delta=float(arg or 0.1)), name="mine"))
    try:
        assert load("mine-test:0.2").name == "mine"
    finally:
        FAMILIES.pop("mine-test")
    for name in ("lewm", "pusht-lewm"):
        with pytest.raises(WMError, match="wmcore's own"):
            register_family(name, lambda arg: None)
    for name in ("", "a:b", "a b", "x[1]"):
        with pytest.raises(WMError, match="family name"):
            register_family(name, lambda arg: None)
    with pytest.raises(WMError, match="callable"):
        register_family("mine-test", 3)
