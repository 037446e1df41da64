import os

import pytest
import torch

# Tests run on CPU unless INITLAB_TEST_DEVICE names another device (e.g. "cuda").
DEVICE = torch.device(os.environ.get("INITLAB_TEST_DEVICE", "cpu"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def device() -> torch.device:
    return DEVICE
