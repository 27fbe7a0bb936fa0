"""A fixture for tests that run tiny models: one torch thread.

A tiny model's matrices are too small to share out, and on a machine busy with other work (parallel test runs, CI
neighbours) threads waiting on each other make a tiny `generate` several times slower than on one thread.
"""

import pytest
import torch


@pytest.fixture
def single_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
