"""Shared test settings: offline, small thread counts, a private data cache."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Several workers share the cores: one thread each, also in the processes they start.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
else:
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    """Every test gets the thread count back that it started with (pretrain() restores its own
    `trainer.num_threads`; this also covers tests that set threads themselves)."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
