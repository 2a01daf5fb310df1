"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def few_threads():
    """One torch thread for a module: on a shared 2-core machine a thread does not wait on a
    descheduled other (modules opt in with ``pytestmark = pytest.mark.usefixtures("few_threads")``)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
