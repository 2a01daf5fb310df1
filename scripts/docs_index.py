"""Write docs/index.md, the docs site's home page: the README with its links made relative to docs/.

``python scripts/docs_index.py`` (``make docs`` runs it); ``--check`` exits 1 when docs/index.md is not
what the README gives (tests/test_docs.py), so the two never diverge.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTE = "<!-- written by scripts/docs_index.py from README.md: edit the README -->\n"


def index_text(readme: str) -> str:
    """The README's text with ``](docs/X)`` links as ``](X)``, and links to files outside docs/ as code."""
    text = readme.replace("](docs/", "](")
    # a link to a file outside docs/ (none today) would break the site's build: show it as code instead
    text = re.sub(r"\[([^\]]+)\]\((?!https?://|#)([^)]*\.\./[^)]*)\)", r"\1 (`\2`)", text)
    return NOTE + text


def main(argv: list[str]) -> int:
    want = index_text((ROOT / "README.md").read_text())
    path = ROOT / "docs" / "index.md"
    if "--check" in argv:
        if not path.is_file() or path.read_text() != want:
            print(f"{path} is not current: run python scripts/docs_index.py", file=sys.stderr)
            return 1
        return 0
    path.write_text(want)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
