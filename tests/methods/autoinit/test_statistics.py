"""AutoInit's statistics: `Moments` as the README builds them."""
import pytest
import torch

import initlab
from initlab.methods.autoinit.statistics import Moments


def test_moments_as_the_readme_builds_them():
    x = initlab.Moments(0.0, 1.0)
    assert x.pooled() == (0.0, 1.0)
    y = initlab.moments(torch.tensor([1.0, -1.0]), 2.0, 0.5, channels=(-1,))
    assert y.pooled() == pytest.approx((0.0, 3.0))
    assert float(y.collapse().shared) == pytest.approx(0.5 + 1.0)  # channel means: shared
    with pytest.raises(RuntimeError):
        Moments(torch.zeros(3), torch.ones(2))                      # shapes must broadcast
