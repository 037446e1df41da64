"""AutoInit's elementwise maps against Monte Carlo: constants, products, powers, concatenation."""
import torch
from torch import nn

from helpers.autoinit import check_outputs


class Ops(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 1)

    def forward(self, x):                                      # x: (B, 3, 6, 6)
        h = self.c(x)
        return (x * 3.0 + 1.0, x * x, torch.exp(0.5 * x), torch.cat([x, 2 * x[:, :1]], dim=1),
                torch.cat([x, h[:, :3]], dim=2), torch.tanh(x) * torch.sigmoid(h[:, :3]),
                -x - 1, x / 4)


def test_elementwise_maps_match_monte_carlo():
    check_outputs(Ops(), (3, 6, 6), ["add", "mul_1", "exp", "cat", "cat_1", "mul_4", "sub",
                                     "truediv"])
