"""The locked set-up: `make setup` installs requirements/lock.txt (every package, transitive ones
included, written by `make lock`) and requirements/no-deps.txt (gym-pusht, without its
dependencies), and pyproject.toml keeps ranges that admit the lock.

The comparison with the installed versions skips only where WMCORE_UNLOCKED=1 says that the
environment is not the locked one (`make test LOCK=0` sets it: the newest versions, an upgrade
check). torch's build is TORCH_SPEC's choice: the lock pins its version without a local label, and
`2.13.0+cpu` or `2.13.0+cu128` satisfies `torch==2.13.0` as it does for pip (PEP 440). The CUDA builds'
own dependencies (nvidia-*, triton) are pinned exactly by torch and are not in the lock, so the walk
over the installed requirements does not go into torch's."""

from __future__ import annotations

import os
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"
NO_DEPS = ROOT / "requirements" / "no-deps.txt"
EXTRAS = ("dev", "sim")
# Not walked into: torch's dependencies depend on its build (see the module docstring).
BUILD_CHOSEN = {"torch"}

unlocked = pytest.mark.skipif(
    os.environ.get("WMCORE_UNLOCKED") == "1",
    reason="WMCORE_UNLOCKED=1: not the locked environment (make ... LOCK=0)")


def read_pins(text: str) -> dict[str, Requirement]:
    """name -> its `name==version [; marker]` line, of a pip-compile output or a hand-written pin
    list; anything but an exact pin is an error."""
    pins = {}
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"not an exact pin: {line!r}"
        pins[canonicalize_name(req.name)] = req
    return pins


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def version_problems(pins: dict[str, Requirement], installed=installed_version) -> list[str]:
    """One line per pin (whose marker holds here) that the environment does not satisfy."""
    problems = []
    for name, req in sorted(pins.items()):
        if req.marker is not None and not req.marker.evaluate():
            continue
        got = installed(name)
        if got is None:
            problems.append(f"{name}: not installed, the lock says {req.specifier}")
        elif not req.specifier.contains(got, prereleases=True):
            problems.append(f"{name} {got} is installed, the lock says {req.specifier}")
    return problems


def _applies(req: Requirement, extras: set[str]) -> bool:
    return req.marker is None or any(req.marker.evaluate({"extra": e}) for e in (extras or {""}))


def required_names(root: str = "wmcore", extras=EXTRAS, stop=BUILD_CHOSEN) -> set[str]:
    """The installed distributions that `root[extras]` requires, transitively (markers evaluated
    here), not walking into `stop`'s own requirements."""
    done: dict[str, set[str]] = {}
    todo = [(root, set(extras))]
    while todo:
        name, wanted = todo.pop()
        key = canonicalize_name(name)
        if key in done and wanted <= done[key]:
            continue
        done[key] = done.get(key, set()) | wanted
        if key in stop:
            continue
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # version_problems reports a missing pin; an unpinned one is reported below
        todo += [(r.name, set(r.extras)) for r in map(Requirement, requires) if _applies(r, wanted)]
    return set(done) - {canonicalize_name(root)}


def unlocked_names(pins: dict[str, Requirement], needed: set[str]) -> list[str]:
    return sorted(needed - set(pins))


def lock_pins() -> dict[str, Requirement]:
    return read_pins(LOCK.read_text())


def pyproject_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in EXTRAS:
        reqs += project["optional-dependencies"][extra]
    return [Requirement(r) for r in reqs]


@unlocked
def test_installed_versions_equal_the_lock():
    problems = version_problems(lock_pins()) + version_problems(read_pins(NO_DEPS.read_text()))
    assert not problems, ("the environment is not the lock (make setup installs it; a changed lock "
                          "reinstalls):\n  " + "\n  ".join(problems))


@unlocked
def test_every_installed_requirement_is_locked():
    missing = unlocked_names(lock_pins(), required_names())
    assert not missing, (f"required by wmcore[{','.join(EXTRAS)}] but not pinned in {LOCK.name} "
                         f"(installed unpinned; run make lock): {missing}")


def test_the_lock_pins_pyprojects_requirements_within_their_ranges():
    """Every requirement of pyproject.toml (with the dev and sim extras) that applies here is pinned
    in the lock at a version its range admits, and keeps its marker there (decord is x86_64 only:
    the lock must not ask for it on aarch64)."""
    pins = lock_pins()
    problems = []
    for req in pyproject_requirements():
        name = canonicalize_name(req.name)
        if name not in pins:
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                problems.append(f"{req}: not in the lock")
            continue
        (pin,) = pins[name].specifier
        if not req.specifier.contains(pin.version, prereleases=True):
            problems.append(f"{req}: the lock pins {pin.version}")
        if req.marker is not None and str(pins[name].marker) != str(req.marker):
            problems.append(f"{req}: the lock's line has the marker {pins[name].marker}")
    assert not problems, "pyproject.toml and the lock disagree (make lock):\n  " + "\n  ".join(problems)


def test_the_lock_names_no_torch_build_and_no_index():
    text = LOCK.read_text()
    (torch,) = lock_pins()["torch"].specifier
    assert "+" not in torch.version, "torch's local label (the build) is TORCH_SPEC's choice"
    options = [line for line in text.splitlines() if line.startswith("-")]
    assert not options, f"index options are this machine's, not the lock's: {options}"
    assert "gym-pusht" in read_pins(NO_DEPS.read_text())
    assert "gym-pusht" not in lock_pins(), "gym-pusht belongs in no-deps.txt (GUI OpenCV)"


def test_a_version_that_differs_from_the_lock_is_reported():
    """The check above can fail: an edited copy of the lock, one pin moved off what is installed."""
    pins = lock_pins()
    installed = {name: next(iter(req.specifier)).version for name, req in pins.items()}
    assert version_problems(pins, installed.get) == []
    edited = LOCK.read_text().replace(f"\nnumpy=={installed['numpy']}\n", "\nnumpy==1.0.0\n")
    assert edited != LOCK.read_text()
    assert version_problems(read_pins(edited), installed.get) == [
        f"numpy {installed['numpy']} is installed, the lock says ==1.0.0"]
    del installed["pytest"]
    assert version_problems(pins, installed.get) == [f"pytest: not installed, the lock says {pins['pytest'].specifier}"]
    # torch: a local label (the build) satisfies the lock's version, another version does not.
    assert version_problems({"torch": Requirement("torch==2.13.0")}, {"torch": "2.13.0+cu128"}.get) == []
    assert version_problems({"torch": Requirement("torch==2.13.0")}, {"torch": "2.14.0+cpu"}.get) != []


@unlocked
def test_a_requirement_missing_from_the_lock_is_reported():
    edited = "\n".join(line for line in LOCK.read_text().splitlines() if not line.startswith("pytest=="))
    assert unlocked_names(read_pins(edited), required_names()) == ["pytest"]
