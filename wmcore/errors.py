"""The one error type of wmcore's I/O layers (bad input the user can fix) and the exit-code contract.

Exit codes of every ``wmcore`` command (and of ``python -m wmcore.…`` entry points):

- 0: done; every gate passed, no regression;
- 1: a gate failed, or ``compare`` found a regression;
- 2: bad input (``WMError`` or an argparse usage error): the message says what was wrong and how to fix it;
- 3: an internal error, a bug in wmcore: the traceback is shown, never disguised as bad input;
- 130: interrupted (Ctrl-C).

``wmcore bench`` keeps pytest's own codes (0 passed, 1 a test or gate failed, 4 a bad ``--wm-*``
option, including data or a model that cannot be loaded).
"""

from __future__ import annotations

import sys
import traceback
from typing import Callable

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "WMError",
    "run_command",
]

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class WMError(ValueError):
    """Bad input: the message names the input, what was expected, what was found and how to fix it.

    A subclass of ValueError so that a user's ``except ValueError`` still catches it; but only a
    WMError means bad input to the commands (exit 2). A plain ValueError from inside wmcore is a bug:
    the I/O layers check what users give before it reaches the pure core.
    """


def run_command(prog: str, body: Callable[[], int]) -> int:
    """Run a command's ``body`` under the exit-code contract of this module; returns the exit code.

    argparse's own exits (``--help``: 0, a usage error: 2) pass through as their codes.
    """
    try:
        return body()
    except WMError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except SystemExit as e:  # argparse: --help / --version (0) or a usage error (2), already printed
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(f"{prog}: {e.code}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception:  # noqa: BLE001 - a bug: show it whole, and say it is not the user's input
        traceback.print_exc()
        print(
            f"{prog}: internal error (exit {EXIT_INTERNAL}): this is a bug in wmcore, not a problem with your input; "
            "please report it with the traceback above",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
