"""Fixtures shared by the test files."""

import os
import shutil

import pytest

SAMPLE = os.path.join(os.path.dirname(__file__), "data", "cifar10-sample")


@pytest.fixture
def sample_copy(tmp_path):
    """A copy of the shipped sample image folder, to break in a test."""
    target = tmp_path / "cifar"
    shutil.copytree(SAMPLE, target)
    return target
