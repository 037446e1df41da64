"""`nn.MultiheadAttention` by composition: projections drawn from their own inputs, attention
output as measured."""
import math
import warnings

import pytest
import torch
from torch import nn

import initlab


class CrossAttention(nn.Module):
    def __init__(self, kdim=None, dropout=0.0):
        super().__init__()
        self.attn = nn.MultiheadAttention(32, 4, dropout=dropout, batch_first=True, kdim=kdim,
                                          vdim=kdim)

    def forward(self, q, kv):
        return self.attn(q, kv, kv)[0]


@pytest.mark.parametrize("kdim,dropout", [(None, 0.0), (None, 0.3), (16, 0.0)])
def test_multihead_attention_by_composition_matches_monte_carlo(kdim, dropout):
    model = CrossAttention(kdim, dropout).train()
    g = torch.Generator().manual_seed(5)
    q = 1.3 * torch.randn(512, 12, 32, generator=g) + 0.4 if kdim is None else \
        torch.randn(512, 12, 32, generator=g)
    kv = q if kdim is None else torch.randn(512, 9, 16, generator=g)
    moments = (0.4, 1.69) if kdim is None else "standard"
    with warnings.catch_warnings():
        warnings.simplefilter("error")             # MHA has a map: nothing passes unknown
        report = initlab.autoinit(model, (q[:4], kv[:4]), input_moments=moments, seed=0)
    h = {e["layer"]: e for e in report.history}
    m = model.attn
    # the query block: AutoInit's variance from the query's own E[x^2] (0.4^2 + 1.69)
    q_block = next(n for n in h if n.endswith("[q]") or n.endswith("q_proj_weight"))
    assert h[q_block]["input_var"] == pytest.approx(1.69 if kdim is None else 1.0)
    assert torch.all(m.in_proj_bias == 0) and torch.all(m.out_proj.bias == 0)
    with torch.no_grad():
        y = model(q, kv)
    # head size 8, 9-12 keys: the composition treats a key and its value as independent (they
    # share their input), which puts the measurement a little above the prediction
    assert float(y.var()) == pytest.approx(1.0, rel=0.2)
    assert math.isclose(h["attn.out_proj"]["output_var"], 1.0)
