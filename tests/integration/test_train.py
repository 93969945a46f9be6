"""The training loop on one process: steps, accumulation, logging and checkpoint cadence.

The one-process tests are in ``tests/unit/test_train.py``."""

from __future__ import annotations

import pytest
from train_helpers import _same_step


@pytest.mark.slow
def test_compiled_blocks_compute_the_same_step():
    _same_step("scaling.compile=true", model="resnet10t")  # 4 blocks to compile, not 8
