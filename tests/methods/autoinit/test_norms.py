"""AutoInit's normalization and dropout maps against Monte Carlo."""
import pytest
import torch
from torch import nn

import initlab
from helpers.autoinit import check_outputs


class Norms(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 6, 3, padding=1)
        self.ln, self.bn, self.gn = nn.LayerNorm(6), nn.BatchNorm2d(6), nn.GroupNorm(2, 6)
        self.drop, self.drop2 = nn.Dropout(0.3), nn.Dropout2d(0.3)

    def forward(self, x):                                      # x: (B, 3, 6, 6)
        h = torch.relu(self.c(x))                              # channels of different means
        return (self.ln(h.permute(0, 2, 3, 1)), self.bn(h), self.gn(h), self.drop(h),
                self.drop2(h))


def test_norm_and_dropout_maps_match_monte_carlo():
    check_outputs(Norms().train(), (3, 6, 6), ["ln", "bn", "gn", "drop", "drop2"])


def test_inverted_dropout_formula():
    layer = nn.Sequential(nn.Dropout(0.3)).train()
    _, est = initlab.autoinit(layer, torch.randn(4, 5), input_moments=(0.4, 1.7),
                              return_estimates=True)
    assert est["_0"][1] == pytest.approx((1.7 + 0.16) / 0.7 - 0.16)
