"""The front page and the docs site: README short, docs/index.md its current copy, and the strict
MkDocs build (which make test runs) failing on a broken link."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MKDOCS = Path(sys.executable).with_name("mkdocs")


def test_the_readme_is_a_short_front_page_and_the_home_page_is_its_copy():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "docs_index.py"), "--check"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr


def _build(root: Path) -> subprocess.CompletedProcess:
    # not --quiet: it hides the warnings, and then --strict has nothing to count
    return subprocess.run([str(MKDOCS), "build", "--strict", "--site-dir", str(root / "site")], cwd=root,
                          capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


def test_the_strict_build_passes_and_fails_on_a_broken_link(tmp_path):
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path)
    ok = _build(tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert (tmp_path / "site" / "scaling" / "index.html").is_file()
    page = tmp_path / "docs" / "control.md"
    page.write_text(page.read_text() + "\nSee [the missing page](no-such-page.md).\n")
    bad = _build(tmp_path)
    assert bad.returncode != 0 and "no-such-page.md" in bad.stdout + bad.stderr
