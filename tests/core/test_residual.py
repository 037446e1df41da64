"""Residual sums: the plain sum at multiplier 1, a buffer that is saved but never trained, stacks
read from PyTorch's Transformer layers, old state dicts loading."""
import pytest
import torch
from torch import nn

import initlab
from initlab.core.residual import pre_ln_layers


def test_multiplier_one_is_the_plain_sum_and_a_buffer():
    s = initlab.ResidualSum()
    x, f = torch.randn(4, 8), torch.randn(4, 8)
    assert torch.equal(s(x, f), x + f)
    s.multiplier.fill_(1.7)
    torch.testing.assert_close(s(x, f), 1.7 * x + f)
    assert list(s.state_dict()) == ["multiplier"] and not list(s.parameters())


class Layered(nn.Module):
    """Sums inside an encoder layer, inside a decoder layer, and loose ones."""

    def __init__(self):
        super().__init__()
        self.enc = nn.TransformerEncoderLayer(8, 2, 16)
        self.enc.extra = initlab.ResidualSum(branch=self.enc.linear1)
        self.dec = nn.TransformerDecoderLayer(8, 2, 16, norm_first=True)
        self.dec.extra = initlab.ResidualSum()
        self.loose = initlab.ResidualSum()
        self.named = initlab.ResidualSum(stack="decoder")


def test_sites_know_their_stack_and_layer():
    sites = initlab.residual_sums(Layered())
    got = [(s.name, s.stack, s.layer[0] if s.layer else None) for s in sites]
    assert got == [("enc.extra", "encoder", "enc"), ("dec.extra", "decoder", "dec"),
                   ("loose", None, None), ("named", "decoder", None)]
    assert pre_ln_layers(sites) == ["dec"]
    assert sites[0].sum.branch == (sites[0].layer[1].linear1,)


def test_a_state_dict_from_before_the_multiplier_loads_as_one():
    model = Layered()
    model.loose.multiplier.fill_(3.0)
    old = {k: v for k, v in model.state_dict().items() if "multiplier" not in k}
    fresh = Layered()
    fresh.loose.multiplier.fill_(2.0)
    fresh.load_state_dict(old)                       # strict: the multipliers are filled in
    assert float(fresh.loose.multiplier) == 1.0
    fresh.load_state_dict(model.state_dict())
    assert float(fresh.loose.multiplier) == 3.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="'encoder', 'decoder' or None"):
        initlab.ResidualSum(stack="middle")
    with pytest.raises(TypeError, match="branch="):
        initlab.ResidualSum(branch=[nn.Linear(2, 2), "linear"])
