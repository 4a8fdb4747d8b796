"""Fixtures of the reward-model tests: single-threaded torch, tiny synthetic preference files (support.make_pairs)."""

from __future__ import annotations

import pytest

from rlhf_assets_tests.support import make_pairs, write_jsonl


@pytest.fixture(autouse=True)
def one_thread():
    """Run torch single-threaded in these tests (see support.subprocess_env), restoring the setting afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def pairs_files(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", make_pairs(40, seed=1))
    val = write_jsonl(tmp_path / "val.jsonl", make_pairs(16, seed=2))
    return train, val
