"""AutoInit's convolution map (`autoinit_conv.py`) against Monte Carlo on small feature maps, where
most positions are borders: the output's mean and variance with the input's mean leaking
through the padding, the per-channel offsets a global average pool keeps, and padding by F.pad."""
import pytest
import torch
from torch import nn

import initlab
from initlab.methods.autoinit_conv import _classes_of, _gather, _reads


def _classes(conv: nn.Module, sizes: tuple) -> list:
    """Output positions grouped by their real taps: (mask, count)."""
    return _classes_of(_gather(conv, sizes, torch.ones(sizes, dtype=torch.float64))[0])


class ConvGap(nn.Module):
    """conv, then the mean over positions (what a classifier after global pooling reads)."""

    def __init__(self, conv: nn.Module):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        y = self.conv(x)
        return y, y.flatten(2).mean(2)


CONVS = [
    (lambda: nn.Conv2d(16, 24, 3, padding=1), (16, 4, 4)),
    (lambda: nn.Conv2d(16, 24, 3, padding=1, stride=2), (16, 5, 5)),
    (lambda: nn.Conv2d(16, 24, 3, padding=2, dilation=2), (16, 6, 6)),
    (lambda: nn.Conv2d(16, 16, 3, padding=1, groups=16), (16, 4, 4)),     # depthwise
    (lambda: nn.Conv2d(16, 24, 4, padding="same"), (16, 5, 5)),           # uneven padding
    (lambda: nn.Conv1d(8, 24, 5, padding=2), (8, 6)),
    (lambda: nn.Conv3d(4, 12, 3, padding=1), (4, 3, 3, 3)),
]


@pytest.mark.parametrize("build,shape", CONVS)
@pytest.mark.parametrize("centered", [False, True])
def test_padded_conv_matches_monte_carlo(build, shape, centered):
    """Input i.i.d. N(1, 0.25): a large mean, so the leak through the borders matters."""
    torch.manual_seed(0)
    model = ConvGap(build())
    _, est = initlab.autoinit(model, torch.randn(4, *shape), input_moments=(1.0, 0.25),
                              centered=centered, seed=1, return_estimates=True)
    x = 1.0 + 0.5 * torch.randn(4000, *shape)
    with torch.no_grad():
        y, gap = model(x)
    y, gap = y.double(), gap.double()
    mean, var = est["conv"]
    assert var == pytest.approx(float(y.var()), rel=0.02)
    assert mean == pytest.approx(float(y.mean()), abs=0.02 * float(y.std()))


@pytest.mark.parametrize("centered", [False, True])
def test_channel_offsets_survive_global_pooling(centered):
    """Without padding, a unit's offset mu * sum(W_j) is the same at every position: the mean
    over positions keeps it (shared), the rest averages out."""
    torch.manual_seed(0)
    model = ConvGap(nn.Conv2d(16, 24, 3))
    _, est = initlab.autoinit(model, torch.randn(4, 16, 6, 6), input_moments=(1.0, 0.25),
                              centered=centered, seed=1, return_estimates=True)
    with torch.no_grad():
        _, gap = model(1.0 + 0.5 * torch.randn(4000, 16, 6, 6))
    assert est["mean"][1] == pytest.approx(float(gap.double().var()), rel=0.05)


def test_position_classes_cover_every_output_position_once():
    """Brute force: the mask of real taps at each output position, from the padded index."""
    conv = nn.Conv2d(1, 1, (3, 4), stride=(2, 1), padding=(1, 2), dilation=(1, 2))
    h, w = 7, 6
    classes = _classes(conv, (h, w))
    out = conv(torch.zeros(1, 1, h, w)).shape[-2:]
    assert sum(n for _, n in classes) == out[0] * out[1]
    brute: dict[tuple, int] = {}
    for i in range(out[0]):
        for j in range(out[1]):
            mask = tuple(0 <= i * 2 - 1 + a < h and 0 <= j - 2 + 2 * b < w
                         for a in range(3) for b in range(4))
            brute[mask] = brute.get(mask, 0) + 1
    assert {tuple(m.reshape(-1).tolist()): n for m, n in classes} == brute
    assert _reads(conv, 0, h).shape == (out[0], 3)


def test_reflect_padding_reads_real_values_everywhere():
    conv = nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect")
    assert all(bool(m.all()) for m, _ in _classes(conv, (4, 4)))


def test_spatial_and_channel_padding_by_f_pad():
    """F.pad over positions: the fill is a positional pattern, not a per-channel offset; over
    channels it is a per-channel offset. Both seen through a mean over positions."""
    class Pad(nn.Module):
        def forward(self, x):
            s = torch.nn.functional.pad(x, (1, 1, 1, 1))
            c = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, 8))
            return s.flatten(2).mean(2), c.flatten(2).mean(2)

    torch.manual_seed(0)
    model = Pad()
    _, est = initlab.autoinit(model, torch.randn(4, 8, 4, 4), input_moments=(1.0, 0.25),
                              return_estimates=True)
    with torch.no_grad():
        s, c = model(1.0 + 0.5 * torch.randn(4000, 8, 4, 4))
    # spatial padding: no per-channel offset appears (a mixture would put (1 - 16/36) * 16/36
    # of the mean's square, ~0.25, there); what is left is the local part over 36 positions
    assert est["mean"][1] < 4 * float(s.double().var())
    assert est["mean_1"][1] == pytest.approx(float(c.double().var()), rel=0.05)
