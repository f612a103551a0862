"""Shared fixtures: one native cluster for the whole session (test_cluster.py and
test_herald_js.py both use it; each test brings back whatever edge it stopped)."""

import pytest

from herald_cluster import start_cluster


@pytest.fixture(scope="session")
def cluster(request):
    return start_cluster(request)
