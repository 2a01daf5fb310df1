"""``python -m wmcore.train``: the ``wmcore train`` command."""

import sys

from .command import main

sys.exit(main())
