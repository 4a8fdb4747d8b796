"""Fixtures of the Dagster tests: a tiny release landed through the data pillar (defs/dagster_support.py)."""

import pytest

from rlhf_assets_tests.defs.dagster_support import land_release
from rlhf_assets_tests.support import learnable_pairs


@pytest.fixture
def release(storage_root, dagster_instance):
    """Release RELEASE of learnable comparisons, landed and run through the data pillar: its Storage."""
    return land_release(storage_root, dagster_instance, learnable_pairs())
