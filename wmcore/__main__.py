"""``python -m wmcore ...``: the ``wmcore`` command, also as ``torchrun ... -m wmcore ...``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
