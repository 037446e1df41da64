import os

import pytest
import torch
from hypothesis import settings

# Property tests: few examples on tiny models, the same ones on every run (no flaky CI, no
# example database); HYPOTHESIS_PROFILE=explore draws new ones, more of them.
settings.register_profile("ci", max_examples=8, deadline=None, derandomize=True, database=None)
settings.register_profile("explore", max_examples=100, deadline=None, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# The tests' models are tiny: intra-op threads buy nothing and, on a busy 2-core machine, threads
# waiting for each other made single tests 100x slower. Subprocesses (torchrun, spawn) inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# Tests run on CPU unless INITLAB_TEST_DEVICE names another device (e.g. "cuda").
DEVICE = torch.device(os.environ.get("INITLAB_TEST_DEVICE", "cpu"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def device() -> torch.device:
    return DEVICE
