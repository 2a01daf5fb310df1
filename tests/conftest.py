"""Fixtures shared by the test modules."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

# Property tests draw the same examples on every run (CI stays reproducible: a red run can be
# replayed); WMCORE_HYPOTHESIS=explore draws new ones each run, for a search beyond them.
settings.register_profile("wmcore", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile("explore" if os.environ.get("WMCORE_HYPOTHESIS") == "explore" else "wmcore")


@pytest.fixture(scope="module")
def few_threads():
    """One torch thread for a module: on a shared 2-core machine a thread does not wait on a
    descheduled other (modules opt in with ``pytestmark = pytest.mark.usefixtures("few_threads")``)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
