"""SkipInit: every branch scalar to 0 (or <= 1/sqrt(depth)), refusals leave the model alone."""
import math

import pytest
import torch

import initlab
from helpers.methods import ResMLP, assert_same, mlp, snapshot


def test_branch_scalars_zero_and_network_is_identity_through_blocks():
    model = ResMLP(n_blocks=5)
    weights = {n: p.detach().clone() for n, p in model.named_parameters()
               if not n.endswith("scale")}
    initlab.initialize(model, "skipinit")
    assert [b.scale.item() for b in model.blocks] == [0.0] * 5
    for n, p in model.named_parameters():                  # only the scalars changed
        if n in weights:
            assert torch.equal(p, weights[n])
    h = torch.randn(4, 64)
    torch.testing.assert_close(model.blocks(h), h, rtol=0, atol=0)


def test_value_up_to_one_over_sqrt_depth():
    model = ResMLP(n_blocks=4)                    # the blocks' scalars start at 0.5
    for value in (0.3, 1 / math.sqrt(4), 0.0):   # 0.3: a value no scalar holds beforehand
        initlab.initialize(model, "skipinit", value=value)
        assert [b.scale.item() for b in model.blocks] == [pytest.approx(value, abs=1e-7)] * 4
    with torch.no_grad():
        for b in model.blocks:
            b.scale.fill_(0.7)
    initlab.initialize(model, "skipinit", value=0.5)   # the bound 1/sqrt(4) itself is allowed
    assert [b.scale.item() for b in model.blocks] == [0.5] * 4
    before = snapshot(model)
    with pytest.raises(ValueError, match="1/sqrt"):
        initlab.initialize(model, "skipinit", value=0.51)
    with pytest.raises(ValueError, match="1/sqrt"):
        initlab.initialize(model, "skipinit", value=-0.1)
    assert_same(model, before)


def test_refuses_branches_without_a_scalar_unchanged():
    model = ResMLP(with_scale=False)
    before = snapshot(model)
    with pytest.raises(ValueError, match="blocks.0.branch"):
        initlab.initialize(model, "skipinit")
    assert_same(model, before)


def test_refuses_without_marked_branches_unchanged():
    model = mlp()
    before = snapshot(model)
    with pytest.raises(ValueError, match="mark_residual_branch"):
        initlab.initialize(model, "skipinit")
    assert_same(model, before)
