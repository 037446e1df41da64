"""AutoInit's scale classes: a mean square over n normal elements, and widening."""
import pytest

from initlab.methods.autoinit.scales import chi_square_scales, spread


def test_sample_scale_classes():
    n = 50
    g = chi_square_scales(n)
    assert float(g.mean()) == pytest.approx(1.0)
    assert float(g.var(unbiased=False)) == pytest.approx(2 / n, rel=0.15)   # chi^2_n / n
    wider = spread(g, 0.04)
    assert float(wider.mean()) == pytest.approx(1.0)
    assert float(wider.var(unbiased=False)) == pytest.approx(2 / n + 0.04, rel=0.2)

