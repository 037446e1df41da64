"""AutoInit's per-channel statistics and spatial correlation (`autoinit_maps.Moments.axis`,
`autoinit_spatial.py`), each against an independent computation: Monte Carlo on random fields,
brute-force sums over positions, and the measured layers of small networks."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import initlab
from helpers.autoinit import measured_rho
from initlab.methods import autoinit_spatial as spatial


def _field(kernel: torch.Tensor, n: int = 4000, size: int = 24) -> torch.Tensor:
    """(n, 1, size, size) stationary Gaussian field: white noise filtered by `kernel` (k x k),
    'valid' so every position is interior."""
    k = kernel.shape[-1]
    noise = torch.randn(n, 1, size + k - 1, size + k - 1, dtype=torch.float64)
    return F.conv2d(noise, kernel.reshape(1, 1, k, k))


SMOOTH = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], dtype=torch.float64)
EDGE = torch.tensor([[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]], dtype=torch.float64)


@pytest.mark.parametrize("kernel", [SMOOTH, EDGE], ids=["positive", "anti"])
@pytest.mark.parametrize("stride", [1, 2])
def test_conv_on_a_correlated_field_matches_monte_carlo(kernel, stride):
    torch.manual_seed(0)
    x = _field(kernel)
    x = x / x.std()
    rho = measured_rho(x).unsqueeze(0)                               # (1, 5, 5)
    w = torch.randn(3, 1, 9, dtype=torch.float64)                      # 3 units, one channel
    cross, out_rho = spatial.conv(w, (3, 3), (stride, stride), (1, 1),
                                  torch.ones(1, dtype=torch.float64), rho)
    y = F.conv2d(x, w.reshape(3, 1, 3, 3), stride=stride)            # valid: no borders
    for j in range(3):
        predicted = float(w[j].pow(2).sum() + cross[j])
        assert predicted == pytest.approx(float(y[:, j].var()), rel=0.03)
        assert torch.allclose(out_rho[j], measured_rho(y[:, j:j + 1]), atol=0.03)


@pytest.mark.parametrize("f", [torch.relu, torch.tanh], ids=["relu", "tanh"])
def test_elementwise_correlation_matches_monte_carlo(f):
    torch.manual_seed(1)
    x = 0.3 + 1.5 * _field(SMOOTH) / _field(SMOOTH, n=500).std()      # mean 0.3, var ~2.25
    rho = measured_rho(x).unsqueeze(0)
    y = f(x)
    one = lambda v: torch.as_tensor([float(v)], dtype=torch.float64)  # noqa: E731
    got = spatial.elementwise(f, one(x.mean()), one(x.var()), one(0.0), rho, one(y.var()),
                              one(0.0))
    assert torch.allclose(got[0], measured_rho(y), atol=0.02)


def test_average_factor_is_the_brute_force_sum_over_position_pairs():
    rho = torch.rand(2, 5, 5, dtype=torch.float64) - 0.3
    rho = (rho + rho.flip(1, 2)) / 2                                   # rho(e) = rho(-e)
    rho[:, 2, 2] = 1.0
    window = (3, 4)                                # offsets up to 3: beyond the window, 0
    pos = [(i, j) for i in range(window[0]) for j in range(window[1])]

    def at(c: int, e: tuple) -> float:
        return float(rho[c, 2 + e[0], 2 + e[1]]) if max(map(abs, e)) <= 2 else 0.0
    for c in range(2):
        total = sum(at(c, (a[0] - b[0], a[1] - b[1])) for a in pos for b in pos)
        assert float(spatial.average_factor(rho, window)[c]) == pytest.approx(total / len(pos))


class ScaledChannels(nn.Module):
    """Channels of very different scales joined, a ReLU, global average pool, a classifier:
    the ReLU turns the scale differences into channel offsets the classifier passes on."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(3, 6, 3, padding=1)
        self.head = nn.Linear(12, 10)

    def forward(self, x):
        h = torch.cat([self.a(x), 0.2 * self.b(x)], 1)
        return self.head(F.relu(h).mean((2, 3)))


def test_channel_offsets_from_a_concatenation_reach_the_classifier():
    """Pooled statistics see 12 channels of one (mean, var); the classifier's output spread
    comes from the drawn weights against the channels' own ReLU means."""
    x = torch.randn(4096, 3, 8, 8)
    for seed in range(3):
        torch.manual_seed(seed)
        model = ScaledChannels()
        report = initlab.autoinit(model, x, seed=seed)
        predicted = next(h for h in report.history if h["layer"] == "head")["output_var"]
        with torch.no_grad():
            measured = float(model(x).var())
        assert predicted == pytest.approx(measured, rel=0.05)


class Separable(nn.Module):
    """Depthwise 3x3 and pointwise 1x1 convs with ReLUs: centered depthwise taps anti-correlate
    neighbouring positions, which the next depthwise conv's gain depends on."""

    def __init__(self, blocks: int = 5, width: int = 32):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.ReLU()]
        for _ in range(blocks):
            layers += [nn.Conv2d(width, width, 3, padding=1, groups=width),
                       nn.Conv2d(width, width, 1), nn.ReLU()]
        self.features = nn.Sequential(*layers)

    def forward(self, x):
        return self.features(x)


def test_separable_stack_keeps_every_conv_at_the_target():
    torch.manual_seed(0)
    model, x = Separable(), torch.randn(256, 3, 16, 16)
    # the per-channel statistics alone (the full covariance is tested in test_autoinit_gauss)
    initlab.autoinit(model, x, seed=0, distribution="orthogonal", centered=True,
                     covariance_limit=0)
    h, worst = x, 0.0
    with torch.no_grad():
        for m in model.features:
            h = m(h)
            if isinstance(m, nn.Conv2d):
                worst = max(worst, abs(float(h.var()) - 1))
    assert worst < 0.08                    # the pooled, white-noise model: 18-25 %


def test_channel_dim_is_followed_through_reshapes_and_pooled_when_it_is_lost():
    """flatten of (N, C, 1, 1) keeps channels; a permute or a mean over channels pools them.
    Channels of different scales (a batch norm's fixed weights) make the difference. Each
    model's prediction for its Linear layer matches the measurement."""
    class Net(nn.Module):
        def __init__(self, tail: str):
            super().__init__()
            self.conv, self.tail = nn.Conv2d(3, 8, 3, padding=1), tail
            self.bn = nn.BatchNorm2d(8)
            self.bn.weight.data = torch.linspace(0.1, 3.0, 8)
            self.head = nn.Linear(8 if tail != "channel-mean" else 6, 4)

        def features(self, x):
            return F.relu(self.bn(self.conv(x)))

        def forward(self, x):
            h = self.features(x)
            if self.tail == "flatten":
                return self.head(F.adaptive_avg_pool2d(h, 1).flatten(1))
            if self.tail == "permute":
                return self.head(h.permute(0, 2, 3, 1))
            return self.head(h.mean(1))                                # (N, 6, 6) rows of 6

    x = torch.randn(2048, 3, 6, 6)
    for tail in ("flatten", "permute", "channel-mean"):
        torch.manual_seed(0)
        model = Net(tail)
        report = initlab.autoinit(model, x, seed=0)
        predicted = next(e for e in report.history if e["layer"] == "head")["output_var"]
        with torch.no_grad():
            measured = float(model(x).var())
        assert predicted == pytest.approx(measured, rel=0.1), tail


class SeparableClassifier(Separable):
    """The separable stack, a global mean and a classifier: the classifier's input is a
    nearly constant vector (each channel's mean over 256 positions and 3 blocks of ReLUs)."""

    def __init__(self):
        super().__init__(blocks=3, width=32)
        self.classifier = nn.Linear(32, 10)

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


def test_centering_is_dropped_for_a_nearly_constant_input(caplog):
    torch.manual_seed(0)
    model, x = SeparableClassifier(), torch.randn(256, 3, 16, 16)
    report = initlab.autoinit(model, x, seed=0, distribution="orthogonal", centered=True,
                              covariance_limit=0)           # per-channel statistics alone
    assert "reads a nearly constant input" in caplog.text
    flags = {h["layer"]: h.get("centered", True) for h in report.history}
    assert flags.pop("classifier") is False and all(flags.values())
    w = model.classifier.weight.detach()
    assert float(w.sum(1).abs().min()) > 0.1       # not centered: each unit passes on the mean
    assert float(model.features[3].weight.detach().sum((1, 2, 3)).abs().max()) < 1e-5
    with torch.no_grad():
        assert float(model(x).var()) == pytest.approx(1.0, rel=0.25)
