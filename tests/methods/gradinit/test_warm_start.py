"""The warm start: every Linear/Conv layer's output at unit RMS on the batch, measured here with
plain forward hooks on the returned model (an independent computation)."""
import pytest
import torch
from torch import nn

import initlab


def rms_per_layer(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    seen: dict[str, float] = {}

    def record(name):
        def hook(module, inputs, out):
            seen.setdefault(name, out.pow(2).mean().sqrt().item())  # the first call's output
        return hook
    hooks = [m.register_forward_hook(record(n)) for n, m in model.named_modules()
             if isinstance(m, (nn.Linear, nn.Conv2d))]
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return seen


def batch(shape=(32, 12), classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * 3 + 1, torch.randint(0, classes, (shape[0],), generator=g)


@pytest.mark.parametrize("factor", [0.2, 1.0, 3.0])
def test_every_layer_at_unit_rms_whatever_the_start(factor):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 20), nn.ReLU(), nn.Linear(20, 20), nn.Tanh(),
                          nn.Linear(20, 3))  # PyTorch's init: biases non-zero
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(factor)
    x, y = batch()
    report = initlab.initialize(model, "gradinit-warmstart", data=[(x, y)])
    assert report.history == [] and report.outcome["stop"] == "warm start only"
    for name, rms in rms_per_layer(model, x).items():
        assert rms == pytest.approx(1.0, rel=1e-5), name
    # weights and biases of a layer share its scale
    assert report.scales["0.weight"] == pytest.approx(report.scales["0.bias"])


def test_cnn_and_an_unscaled_bias_keeps_its_value():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3),
                          nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    x = torch.randn(8, 2, 6, 6)
    bias = model[2].bias.detach().clone()
    report = initlab.initialize(model, "gradinit-warmstart", data=[(x, torch.zeros(8).long())],
                                exclude=r"^2\.bias$")
    assert "2.bias" not in report.scales and torch.equal(model[2].bias, bias)
    for name, rms in rms_per_layer(model, x).items():
        assert rms == pytest.approx(1.0, rel=1e-5), name


def test_tied_and_repeated_layers():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 6)
            self.mid = nn.Linear(6, 6)
            self.out = nn.Linear(6, 10, bias=False)
            self.out.weight = self.emb.weight  # tied: left to the search

        def forward(self, x):
            h = self.emb(x)
            h = torch.tanh(self.mid(torch.tanh(self.mid(h))))  # one layer called twice
            return self.out(h)

    torch.manual_seed(2)
    model = Net()
    x = torch.randint(0, 10, (5, 7))
    emb = model.emb.weight.detach().clone()
    report = initlab.initialize(model, "gradinit-warmstart", data=[(x, x)])
    assert torch.equal(model.emb.weight, emb)
    assert report.scales["emb.weight"] == 1.0
    first = rms_per_layer(model, x)["mid"]  # the first call's output
    assert first == pytest.approx(1.0, rel=1e-5)


def test_floors_and_caps_bound_the_warm_start():
    model = nn.Sequential(nn.Linear(12, 4))
    with torch.no_grad():
        model[0].weight.mul_(1e-4)
        model[0].bias.zero_()
    report = initlab.initialize(model, "gradinit-warmstart", data=[batch()], max_scale=50.0)
    assert report.scales["0.weight"] == pytest.approx(50.0, rel=1e-12)


def test_warm_start_alone_refuses_the_authors_search():
    with pytest.raises(ValueError, match="warm start"):
        initlab.initialize(nn.Linear(12, 3), "gradinit-warmstart", data=[batch()], faithful=True)
