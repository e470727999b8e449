"""Fixtures for the reward tests."""

from __future__ import annotations

import psutil
import pytest


@pytest.fixture
def kill_strays():
    """Kill anything a failed containment test left behind, so one failure cannot cascade."""
    left: list[psutil.Process] = []
    yield left
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            pass
