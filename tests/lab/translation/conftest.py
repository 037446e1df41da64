import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny models: extra threads only add synchronization cost (10x on a busy 2-core box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
