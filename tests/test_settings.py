"""Thresholds: defaults < [tool.wmcore] < [tool.wmcore.models.NAME] < overrides; bad files and keys."""

from __future__ import annotations

import dataclasses

import pytest

from wmcore.settings import Thresholds, find_pyproject, load_thresholds
from wmcore.errors import WMError

FIELDS = sorted(f.name for f in dataclasses.fields(Thresholds))

PYPROJECT = """\
[project]
name = "someone-elses-project"

[tool.wmcore]
threshold = 0.4
horizon = 20
step1_min = 0.9

[tool.wmcore.models.mymodel]
step1_min = 0.97
bootstrap = 50

[tool.wmcore.models.other]
threshold = 0.6
"""


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture()
def pyproject(tmp_path):
    return _write(tmp_path / "proj" / "pyproject.toml", PYPROJECT)


def test_defaults_without_any_pyproject(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find_pyproject() is None  # the premise: nothing above tmp_path configures wmcore
    assert load_thresholds() == Thresholds()
    assert load_thresholds("mymodel:weights.pt") == Thresholds()


def test_defaults_are_sane():
    t = Thresholds()
    assert 0 < t.threshold < 1 and 0 < t.step1_min <= 1
    assert isinstance(t.horizon, int) and t.horizon >= 1
    assert isinstance(t.bootstrap, int) and t.bootstrap >= 1
    assert t.to_dict() == {f: getattr(t, f) for f in FIELDS}


def test_global_table_applies_to_any_model(pyproject):
    t = load_thresholds("unlisted", pyproject=pyproject)
    assert (t.threshold, t.horizon, t.step1_min) == (0.4, 20, 0.9)
    assert t.bootstrap == Thresholds().bootstrap and t.seed == Thresholds().seed
    assert isinstance(t.horizon, int)
    assert load_thresholds(None, pyproject=pyproject) == t


def test_model_table_overrides_the_global_values(pyproject):
    t = load_thresholds("mymodel", pyproject=pyproject)
    assert t.step1_min == 0.97 and t.bootstrap == 50
    assert t.threshold == 0.4 and t.horizon == 20  # global values still apply
    assert isinstance(t.bootstrap, int)
    # one model's table does not leak into another's
    o = load_thresholds("other", pyproject=pyproject)
    assert o.threshold == 0.6 and o.step1_min == 0.9 and o.bootstrap == Thresholds().bootstrap


@pytest.mark.parametrize("spec", ["mymodel:/ckpt/weights.safetensors", "mymodel[delta=0.1,offset=0.3]", "mymodel[a=1]:path"])
def test_spec_forms_resolve_to_the_model_name(pyproject, spec):
    assert load_thresholds(spec, pyproject=pyproject) == load_thresholds("mymodel", pyproject=pyproject)
    assert load_thresholds(spec, pyproject=pyproject).step1_min == 0.97


def test_model_name_must_match_exactly(pyproject):
    # "mymodel2" is not "mymodel": it gets the global values only
    assert load_thresholds("mymodel2", pyproject=pyproject).step1_min == 0.9


def test_overrides_beat_the_file(pyproject):
    t = load_thresholds("mymodel", pyproject=pyproject, overrides={"step1_min": 0.5, "threshold": "0.25", "horizon": "7"})
    assert t.step1_min == 0.5 and t.threshold == 0.25 and t.horizon == 7
    assert isinstance(t.horizon, int) and isinstance(t.threshold, float)
    assert t.bootstrap == 50  # not overridden: the model table still applies


def test_overrides_without_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    t = load_thresholds(overrides={"seed": 5})
    assert t == dataclasses.replace(Thresholds(), seed=5)


@pytest.mark.parametrize(
    "text, bad",
    [
        ("[tool.wmcore]\nthreshhold = 0.4\n", "threshhold"),
        ("[tool.wmcore.models.mymodel]\nstep_min = 0.9\n", "step_min"),
    ],
)
def test_unknown_key_lists_the_known_ones(tmp_path, text, bad):
    p = _write(tmp_path / "pyproject.toml", text)
    with pytest.raises(WMError) as e:
        load_thresholds("mymodel", pyproject=p)
    msg = str(e.value)
    assert bad in msg and str(p) in msg
    assert all(f in msg for f in FIELDS), msg


def test_unknown_override_is_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WMError, match="bogus") as e:
        load_thresholds(overrides={"bogus": 1})
    assert all(f in str(e.value) for f in FIELDS)


def test_unknown_table_is_an_error(tmp_path):
    p = _write(tmp_path / "pyproject.toml", "[tool.wmcore.gatez]\nthreshold = 0.4\n")
    with pytest.raises(WMError, match="gatez"):
        load_thresholds(pyproject=p)


@pytest.mark.parametrize(
    "text, overrides",
    [
        ('[tool.wmcore]\nthreshold = "high"\n', None),
        ("[tool.wmcore]\nhorizon = [1, 2]\n", None),
        ("[tool.wmcore]\n", {"step1_min": "most"}),
    ],
)
def test_non_numeric_value_is_an_error(tmp_path, text, overrides):
    p = _write(tmp_path / "pyproject.toml", text)
    with pytest.raises(WMError, match="expected a number"):
        load_thresholds(pyproject=p, overrides=overrides)


def test_non_integer_count_is_an_error(tmp_path):
    p = _write(tmp_path / "pyproject.toml", "[tool.wmcore]\nhorizon = 2.7\n")
    try:
        t = load_thresholds(pyproject=p)
    except WMError as e:
        assert "horizon" in str(e)
    else:
        raise AssertionError(f"horizon = 2.7 was accepted as {t.horizon}")


def test_invalid_toml_is_an_error(tmp_path):
    p = _write(tmp_path / "pyproject.toml", "[tool.wmcore\nthreshold = = 0.4\n")
    with pytest.raises(WMError, match="TOML") as e:
        load_thresholds(pyproject=p)
    assert str(p) in str(e.value)


def test_missing_explicit_pyproject_is_an_error(tmp_path):
    with pytest.raises(WMError, match="nope.toml"):
        load_thresholds(pyproject=tmp_path / "nope.toml")


def test_find_pyproject_walks_upwards_and_skips_other_projects(tmp_path, monkeypatch):
    root = _write(tmp_path / "repo" / "pyproject.toml", PYPROJECT)
    _write(tmp_path / "repo" / "sub" / "pyproject.toml", '[project]\nname = "sub"\n\n[tool.black]\nline-length = 99\n')
    deep = tmp_path / "repo" / "sub" / "a" / "b"
    deep.mkdir(parents=True)
    assert find_pyproject(deep) == root.resolve()
    assert find_pyproject(tmp_path / "repo" / "sub") == root.resolve()
    assert find_pyproject(tmp_path) is None
    # without an argument it starts at the working directory, and load_thresholds uses what it finds
    monkeypatch.chdir(deep)
    assert find_pyproject() == root.resolve()
    assert load_thresholds("mymodel") == load_thresholds("mymodel", pyproject=root)


def test_find_pyproject_prefers_the_nearest_configured_one(tmp_path):
    _write(tmp_path / "repo" / "pyproject.toml", PYPROJECT)
    near = _write(tmp_path / "repo" / "pkg" / "pyproject.toml", "[tool.wmcore]\nthreshold = 0.3\n")
    assert find_pyproject(tmp_path / "repo" / "pkg") == near.resolve()
    assert load_thresholds(pyproject=find_pyproject(tmp_path / "repo" / "pkg")).threshold == 0.3


def test_optional_gates_are_off_by_default_and_typed_when_set(tmp_path):
    assert Thresholds().skill_mean_min is None and Thresholds().horizon_min is None
    p = _write(
        tmp_path / "pyproject.toml",
        "[tool.wmcore]\nskill_mean_min = 0\n[tool.wmcore.models.m]\nhorizon_min = 12\nopen_skill_mean_min = 0.1\n",
    )
    t = load_thresholds("m", pyproject=p)
    assert t.skill_mean_min == 0.0 and isinstance(t.skill_mean_min, float)
    assert t.horizon_min == 12 and isinstance(t.horizon_min, int) and t.open_skill_mean_min == 0.1
    with pytest.raises(WMError, match="horizon_min"):
        load_thresholds("m", pyproject=p, overrides={"horizon_min": "2.5"})


# --- one resolution: the evaluation config and thresholds of a model ------------------------------


def test_resolve_takes_horizon_and_start_from_the_model_table(tmp_path):
    from wmcore.settings import EvalConfig, resolve

    p = _write(tmp_path / "pyproject.toml", "[tool.wmcore]\nhorizon = 20\n[tool.wmcore.models.m]\nstart = 10\n")
    cfg, t = resolve("m:/some/path", pyproject=p)
    assert cfg == EvalConfig(horizon=20, start=10) and (t.horizon, t.start) == (20, 10)
    cfg, _ = resolve("other", pyproject=p, action_source="random", device="cpu", dtype="bfloat16")
    assert (cfg.horizon, cfg.start, cfg.action_source, cfg.dtype) == (20, 0, "random", "bfloat16")


def test_resolve_command_line_values_win_and_the_thresholds_keep_the_configured_ones(tmp_path):
    from wmcore.settings import resolve

    p = _write(tmp_path / "pyproject.toml", "[tool.wmcore]\nhorizon = 20\n[tool.wmcore.models.m]\nstart = 10\n")
    cfg, t = resolve("m", horizon=5, start=0, pyproject=p, overrides={"step1_min": "0.9"})
    assert (cfg.horizon, cfg.start) == (5, 0)  # start=0 given is not "not given"
    assert (t.horizon, t.start, t.step1_min) == (20, 10, 0.9)  # what was configured, recorded in the report


def test_resolve_refuses_what_evalconfig_refuses(tmp_path, monkeypatch):
    from wmcore.settings import resolve

    monkeypatch.chdir(tmp_path)
    with pytest.raises(WMError, match="sideways"):
        resolve(None, action_source="sideways")
    with pytest.raises(WMError, match="float8"):
        resolve(None, dtype="float8")
    with pytest.raises(WMError, match="horizon"):
        resolve(None, overrides={"horizon": 0})


@pytest.mark.parametrize("items, want", [([], {}), (["a=1", " b = x=y "], {"a": "1", "b": "x=y"})])
def test_parse_overrides(items, want):
    from wmcore.settings import parse_overrides

    assert parse_overrides(items, "--opt") == want


@pytest.mark.parametrize("item", ["step1_min", "=0.9", " =1"])
def test_parse_overrides_refuses_what_is_not_key_value(item):
    from wmcore.settings import parse_overrides

    with pytest.raises(WMError, match=r"--opt .*expected KEY=VALUE"):
        parse_overrides([item], "--opt")


def test_tolerances_from_the_table_and_overrides(tmp_path):
    from wmcore.settings import Tolerances, load_tolerances

    p = _write(tmp_path / "pyproject.toml", "[tool.wmcore.compare]\nstep1_drop = 0.05\nhorizon_drop = 3\n")
    tol, path = load_tolerances(p, {"horizon_drop": 4, "auc_drop": None})
    assert tol == Tolerances(step1_drop=0.05, horizon_drop=4) and path == p
    with pytest.raises(WMError, match="--max-slowdown: slowdown=0.5"):
        load_tolerances(p, {"slowdown": 0.5}, {"slowdown": "--max-slowdown"})


def test_the_shipped_thresholds_apply_anywhere_and_a_users_table_overrides_them_key_by_key(tmp_path, monkeypatch):
    from wmcore.settings import read_pyproject, shipped_thresholds

    shipped = read_pyproject(shipped_thresholds())["tool"]["wmcore"]["models"]
    monkeypatch.chdir(tmp_path)  # no pyproject here: the embedded models still get their own limits
    for name in ("pusht-lewm", "pusht-ac-tiny", "pusht-wm"):
        t = load_thresholds(name)
        assert all(getattr(t, k) == v for k, v in shipped[name].items()), name
    assert load_thresholds("pusht-wm").planner == "lewm" and load_thresholds("pusht-lewm").start == 10
    p = _write(tmp_path / "pyproject.toml",
               "[tool.wmcore]\nstart = 3\nstep1_min = 0.5\n[tool.wmcore.models.pusht-wm]\nskill_min = 0.5\n")
    t = load_thresholds("pusht-wm", pyproject=p)
    assert t.skill_min == 0.5  # the user's model table wins
    assert t.step1_min == shipped["pusht-wm"]["step1_min"] and t.start == 10  # a model's own table beats a global
    assert t.horizon_min == shipped["pusht-wm"]["horizon_min"]  # keys the user left out keep the shipped value
    assert load_thresholds("mymodel", pyproject=p).start == 3  # the user's globals for other models
    monkeypatch.setenv("WMCORE_FIXTURES", str(tmp_path / "elsewhere"))  # fixtures without a wmcore.toml
    assert shipped_thresholds() is None and load_thresholds("pusht-lewm") == load_thresholds("not-embedded")


def test_a_bad_shipped_file_is_named(tmp_path, monkeypatch):
    _write(tmp_path / "fx" / "wmcore.toml", "[tool.wmcore.models.pusht-lewm]\nstep_min = 1\n")
    monkeypatch.setenv("WMCORE_FIXTURES", str(tmp_path / "fx"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WMError, match=r"fx/wmcore.toml: unknown threshold"):
        load_thresholds("pusht-lewm")
