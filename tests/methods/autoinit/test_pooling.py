"""AutoInit's pooling, softmax and attention maps against Monte Carlo."""
import torch.nn.functional as F
from torch import nn

from helpers.autoinit import check_outputs


class Pools(nn.Module):
    def __init__(self):
        super().__init__()
        self.pool, self.avg, self.smax = nn.MaxPool2d(2), nn.AvgPool2d(2), nn.Softmax(dim=-1)
        self.c = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):                                      # x: (B, 3, 8, 8)
        r = F.relu(self.c(x))
        return (self.pool(x), self.avg(x), self.smax(x), x.mean(dim=(2, 3)), self.pool(r),
                r.mean(dim=(2, 3)), F.adaptive_avg_pool2d(r, 2), x.sum(dim=1))


def test_pooling_maps_match_monte_carlo():
    check_outputs(Pools(), (3, 8, 8), ["pool", "avg", "smax", "mean", "pool_1", "mean_1",
                                       "adaptive_avg_pool2d", "sum_1"])


class Causal(nn.Module):
    def __init__(self, d=32, heads=4):
        super().__init__()
        self.heads, self.q, self.k, self.v = heads, nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x):                                      # x: (B, T, d)
        b, t, d = x.shape
        q, k, v = (p(x).view(b, t, self.heads, -1).transpose(1, 2) for p in (self.q, self.k, self.v))
        return (F.scaled_dot_product_attention(q, k, v, is_causal=True),)


def test_causal_attention_matches_monte_carlo():
    # the first query sees one key (its value whole), the last all of them
    check_outputs(Causal(), (10, 32), ["scaled_dot_product_attention"], rel=0.1, n=2000)
