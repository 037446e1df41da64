"""AutoInit's layout maps: each element keeps its statistics wherever the operation puts it."""
import torch.nn.functional as F
from torch import nn

from helpers.autoinit import check_outputs


class Moves(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 6, 3, padding=1)

    def forward(self, x):                                      # x: (B, 3, 5, 5)
        h = F.relu(self.c(x))                                  # per channel and position
        a, b = h.split([2, 4], dim=1)
        return (h.flatten(1), h.permute(0, 2, 3, 1)[:, 1:, :, :4], b, F.pad(h, (1, 1, 0, 2)),
                F.interpolate(h, scale_factor=2, mode="nearest"), F.pad(h, (0, 0, 0, 0, 1, 0)))


def test_layout_maps_match_monte_carlo():
    check_outputs(Moves(), (3, 5, 5), ["flatten", "getitem_2", "getitem_1", "pad",
                                       "interpolate", "pad_1"])
