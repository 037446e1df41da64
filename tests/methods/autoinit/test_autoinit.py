"""AutoInit: moment maps against Monte Carlo, variance preservation, unknown ops, tracing errors,
failure safety, registry and lab path, diagnostics."""
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import initlab
from helpers.methods import assert_same, bn_dropout_mlp, snapshot
from initlab.core.graph import TraceError
from initlab.diagnostics import layer_moments, plot_autoinit
from initlab.methods.autoinit_maps import moments, quadrature


def mc_moments(t: torch.Tensor) -> tuple[float, float]:
    t = t.double()
    return float(t.mean()), float(t.var(unbiased=False))


@pytest.mark.parametrize("f", [torch.tanh, torch.relu, F.gelu, F.silu, torch.sigmoid,
                               nn.LeakyReLU(0.2), nn.ELU(), nn.Softplus()])
@pytest.mark.parametrize("mu,var", [(0.0, 1.0), (0.7, 0.3), (-0.5, 2.5)])
def test_quadrature_matches_monte_carlo(f, mu, var):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2_000_000, generator=g, dtype=torch.float64) * math.sqrt(var) + mu
    m_mc, v_mc = mc_moments(f(z))
    got = quadrature(lambda t: f(t).double(), moments(mu, var), 128)
    assert abs(float(got.mean) - m_mc) < 5e-3 * (1 + abs(m_mc))
    assert abs(float(got.var) - v_mc) < 1e-2 * v_mc + 1e-4


def test_shared_part_through_a_nonlinearity_matches_monte_carlo():
    # X = mu + S + L per (sample, channel): S constant over positions, L fresh per position.
    g = torch.Generator().manual_seed(1)
    s = torch.randn(4000, 1, generator=g, dtype=torch.float64) * math.sqrt(0.6)
    loc = torch.randn(4000, 500, generator=g, dtype=torch.float64) * math.sqrt(0.9)
    y = torch.tanh(0.3 + s + loc)
    got = quadrature(torch.tanh, moments(0.3, 1.5, 0.6), 128)
    assert abs(float(got.var) - y.var().item()) < 0.01
    assert abs(float(got.shared) - y.mean(1).var().item()) < 0.01   # variance of position means


class Ops(nn.Module):
    """Every map kind on one input; each result is an output so estimates cover them all."""

    def __init__(self):
        super().__init__()
        self.drop, self.pool, self.avg = nn.Dropout(0.3), nn.MaxPool2d(2), nn.AvgPool2d(2)
        self.smax = nn.Softmax(dim=-1)

    def forward(self, x):                                      # x: (B, 3, 8, 8)
        return (self.drop(x), self.pool(x), self.avg(x), self.smax(x), x * 3.0 + 1.0,
                x * x, torch.cat([x, 2 * x[:, :1]], dim=1), x.mean(dim=(2, 3)), torch.exp(x))


def test_op_maps_match_monte_carlo_on_iid_inputs():
    torch.manual_seed(0)
    mu, var = 0.4, 1.7
    x = torch.randn(2000, 3, 8, 8, dtype=torch.float64) * math.sqrt(var) + mu
    model = Ops().train()
    _, est = initlab.autoinit(model, x, input_moments=(mu, var), return_estimates=True, seed=0)
    outs = model(x)
    names = ["drop", "pool", "avg", "smax", "add", "mul_1", "cat", "mean", "exp"]
    for name, out in zip(names, outs):
        m_mc, v_mc = mc_moments(out)
        m, v = est[name]
        assert abs(m - m_mc) < 0.03 * (1 + abs(m_mc)), (name, m, m_mc)
        assert abs(v - v_mc) < 0.05 * v_mc + 1e-4, (name, v, v_mc)
    # the exact inverted-dropout formula
    assert est["drop"][1] == pytest.approx((var + mu ** 2) / 0.7 - mu ** 2, rel=0.02)


@pytest.mark.parametrize("layer,shape", [
    (nn.Linear(300, 200), (300,)),
    (nn.Conv2d(12, 48, 3, padding=1, groups=3), (12, 10, 10)),
    (nn.Conv2d(32, 32, 5, padding=2, groups=32), (32, 10, 10)),   # depthwise
    (nn.Conv1d(8, 32, 3), (8, 40)),
])
def test_weighted_layer_output_has_the_signal_variance(layer, shape):
    torch.manual_seed(0)
    x = 1.5 * torch.randn(512, *shape) + 0.5                      # mean 0.5, variance 2.25
    report = initlab.autoinit(layer, x, input_moments="measure", signal_variance=4.0, seed=0)
    with torch.no_grad():
        y = layer(x)
    h = report.history[0]
    if not any(getattr(layer, "padding", (0,))):   # zero padding lowers what the taps see
        assert h["input_mean"] == pytest.approx(0.5, abs=0.01)
        assert h["input_var"] == pytest.approx(2.25, rel=0.02)
    fan_in = layer.weight.shape[1] * math.prod(layer.weight.shape[2:])
    assert h["fan_in"] == fan_in
    assert float(layer.weight.detach().std()) == pytest.approx(h["weight_std"], rel=0.1)
    assert torch.all(layer.bias == 0)
    # the prediction (from the drawn weights, zero padding counted) matches the measurement,
    # and the target holds up to the sampling error of one draw of the weights
    assert float(y.var()) == pytest.approx(h["output_var"], rel=0.05)
    assert float(y.var()) == pytest.approx(4.0, rel=0.2)


class Gated(nn.Module):
    def __init__(self, width=128, depth=4):
        super().__init__()
        self.f = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.g = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))

    def forward(self, h):
        for f, g in zip(self.f, self.g):
            h = torch.tanh(f(h)) * torch.sigmoid(g(h))
        return h


class Attention(nn.Module):
    def __init__(self, d=32, heads=4):
        super().__init__()
        self.heads, self.ln = heads, nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ff1, self.ff2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        b, t, d = x.shape
        h = self.ln(x)
        q, k, v = (p(h).view(b, t, self.heads, -1).transpose(1, 2) for p in (self.q, self.k, self.v))
        x = x + self.o(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d))
        return x + self.ff2(F.gelu(self.ff1(x)))


def tanh_mlp():
    layers = []
    for i in range(8):
        layers += [nn.Linear(32 if i == 0 else 128, 128), nn.Tanh(), nn.Dropout(0.2)]
    return nn.Sequential(*layers)


@pytest.mark.parametrize("build,shape", [(tanh_mlp, (32,)), (Gated, (128,)),
                                         (lambda: nn.Sequential(Attention(), Attention()), (12, 32))])
def test_variance_preserved_on_small_architectures(build, shape):
    torch.manual_seed(0)
    model = build().train()
    before = layer_moments(model, torch.randn(256, *shape))
    assert min(v for _, v in before.values()) < 0.5          # PyTorch's default init shrinks it
    report = initlab.autoinit(model, torch.randn(64, *shape), seed=0)
    measured = layer_moments(model, torch.randn(512, *shape))
    assert set(measured) == {h["layer"] for h in report.history}
    for name, (_, v) in measured.items():
        assert v == pytest.approx(1.0, rel=0.25), name


def test_unknown_op_warns_then_a_registered_map_is_used():
    class Cum(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(10, 10)

        def forward(self, x):
            return self.lin(torch.cumsum(x, dim=1))

    x = torch.randn(64, 10)
    with pytest.warns(UserWarning, match="cumsum"):
        initlab.autoinit(Cum(), x)
    calls = []

    def cumsum_map(ctx):
        calls.append(ctx.node.name)
        x = ctx.first()
        return moments(x.mean * 5.5, x.var * 38.5)      # the sum of 1..10 terms, on average
    initlab.register_moment_map(torch.cumsum, cumsum_map)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            rep, est = initlab.autoinit(Cum(), x, return_estimates=True)
    finally:
        from initlab.methods.autoinit_maps import FUNCTION_MAPS
        FUNCTION_MAPS.pop(torch.cumsum)
    assert calls == ["cumsum"] and est["cumsum"][1] == pytest.approx(38.5, rel=0.2)
    assert rep.history[0]["input_var"] == pytest.approx(38.5, rel=0.2)


class Branchy(nn.Module):
    def forward(self, x):
        return x * 2 if x.sum() > 0 else x


class NeedsLeaf(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(8, 8), Branchy(), nn.Linear(8, 8)

    def forward(self, x):
        return self.c(self.b(self.a(x)))


def test_untraceable_model_says_so_and_a_leaf_fixes_it():
    model = NeedsLeaf()
    before = snapshot(model)
    with pytest.raises(TraceError, match="leaf_modules") as info:
        initlab.autoinit(model, torch.randn(16, 8))
    assert any("unchanged" in n for n in info.value.__notes__)
    assert_same(model, before)
    with pytest.warns(UserWarning, match="Branchy"):
        initlab.autoinit(model, torch.randn(16, 8), leaf_modules=(Branchy,))
    assert not torch.equal(model.c.weight, before["params"]["c.weight"])


def test_failure_in_a_map_leaves_model_bitwise_unchanged():
    class Boom(nn.Module):
        def forward(self, x):
            return x

    def explode(ctx):
        raise RuntimeError("map failed")
    initlab.register_moment_map(Boom, explode)
    model = bn_dropout_mlp()
    model.insert(3, Boom())
    before = snapshot(model)
    try:
        with pytest.raises(RuntimeError, match="map failed") as info:
            initlab.autoinit(model, torch.randn(32, 6))
    finally:
        from initlab.methods.autoinit_maps import MODULE_MAPS
        MODULE_MAPS.pop(Boom)
    assert any("unchanged" in n for n in info.value.__notes__)
    assert_same(model, before)


def test_modes_and_buffers_kept_and_registry_path():
    model = bn_dropout_mlp()
    before = snapshot(model)
    initlab.initialize(model, "autoinit", example_input=torch.randn(32, 6))
    assert_same(model, before, params=False)
    assert not torch.equal(model[0].weight, before["params"]["0.weight"])
    with pytest.raises(ValueError, match="example_input"):
        initlab.initialize(nn.Linear(3, 3), "autoinit")
    with pytest.raises(ValueError, match="signal_variance"):
        initlab.autoinit(nn.Linear(3, 3), torch.randn(4, 3), signal_variance=0)


def test_lab_passes_the_first_batch_as_example_input():
    from initlab.lab.compare import init_model
    model = tanh_mlp()
    batches = [(torch.randn(16, 32), torch.randint(0, 3, (16,))) for _ in range(2)]
    init_model(model, "autoinit", batches, {})
    assert layer_moments(model, torch.randn(256, 32))["0"][1] == pytest.approx(1.0, rel=0.2)


def test_diagnostic_hooks_and_plot(tmp_path):
    model = tanh_mlp().eval()
    x = torch.randn(128, 32)
    report = initlab.autoinit(model, x)
    measured = layer_moments(model, x)
    h = x
    for m in model:           # the first layer's output, computed by hand
        h = m(h)
        break
    assert measured["0"] == pytest.approx(mc_moments(h.detach()), rel=1e-9)
    plot_autoinit(report, measured, tmp_path / "v.png")
    assert (tmp_path / "v.png").stat().st_size > 1000


# -- weight distributions (autoinit_draws.py) -----------------------------------------------------
def _blocks(w, groups):
    """(groups, out/groups, fan_in) view of a weight."""
    return w.detach().double().reshape(groups, w.shape[0] // groups, -1)


@pytest.mark.parametrize("layer,shape,groups", [
    (nn.Linear(300, 200), (300,), 1),                       # rows < fan_in: orthonormal rows
    (nn.Linear(60, 150), (60,), 1),                         # rows > fan_in: orthonormal columns
    (nn.Conv2d(12, 48, 3, padding=1, groups=3), (12, 8, 8), 3),
])
def test_orthogonal_draws_are_orthogonal_with_autoinits_mean_square(layer, shape, groups):
    x = 1.5 * torch.randn(256, *shape) + 0.5
    report = initlab.autoinit(layer, x, input_moments="measure", distribution="orthogonal", seed=0)
    std = report.history[0]["weight_std"]
    w = layer.weight.detach().double()
    assert float(w.pow(2).mean()) == pytest.approx(std ** 2, rel=1e-5)
    for b in _blocks(w, groups):                              # (rows, fan_in) per group
        rows, fan = b.shape
        gram = b @ b.T if rows <= fan else b.T @ b
        c = std ** 2 * max(rows, fan)
        assert torch.allclose(gram, c * torch.eye(min(rows, fan), dtype=torch.float64),
                              atol=1e-5 * c)


def test_square_orthogonal_layer_preserves_every_input_length():
    layer = nn.Linear(64, 64, bias=False).double()
    initlab.autoinit(layer, torch.randn(8, 64, dtype=torch.float64), distribution="orthogonal",
                     signal_variance=2.0, seed=1)
    x = torch.randn(50, 64, dtype=torch.float64) * torch.linspace(0.1, 5, 50)[:, None]
    ratio = layer(x).detach().pow(2).sum(1) / x.pow(2).sum(1)
    assert torch.allclose(ratio, torch.full_like(ratio, 2.0), rtol=1e-6)   # sigma^2 / E[x^2]


def test_delta_orthogonal_conv_reads_the_center_tap_only():
    # 6x6 maps, 3x3 kernel: spread over all taps 21 % of the reads would be zero padding; the
    # center tap never reads padding, and the prediction must say so
    conv = nn.Conv2d(16, 16, 3, padding=1)
    x = 1.5 * torch.randn(1024, 16, 6, 6) + 0.5
    report = initlab.autoinit(conv, x, input_moments="measure", distribution="delta-orthogonal",
                              signal_variance=4.0, seed=0)
    w = conv.weight.detach().double()
    center = w[:, :, 1, 1]
    assert torch.count_nonzero(w) == torch.count_nonzero(center) == 16 * 16
    c = float(center[0] @ center[0])
    assert torch.allclose(center @ center.T, c * torch.eye(16, dtype=torch.float64), atol=1e-5 * c)
    assert float(w.pow(2).mean()) == pytest.approx(report.history[0]["weight_std"] ** 2, rel=1e-5)
    with torch.no_grad():
        y = conv(x)
    assert float(y.var()) == pytest.approx(report.history[0]["output_var"], rel=0.03)
    assert float(y.var()) == pytest.approx(4.0, rel=0.1)


@pytest.mark.parametrize("distribution", ["normal", "orthogonal", "delta-orthogonal"])
def test_centered_rows_sum_to_zero_and_hit_the_variance(distribution):
    conv = nn.Conv2d(8, 24, 3)
    x = 1.5 * torch.randn(512, 8, 9, 9) + 2.0               # a large common mean
    report = initlab.autoinit(conv, x, input_moments="measure", distribution=distribution,
                              centered=True, seed=0)
    sums = conv.weight.detach().double().flatten(1).sum(1)
    assert float(sums.abs().max()) < 1e-5 * float(conv.weight.detach().abs().max())
    with torch.no_grad():
        y = conv(x).double()
    assert float(y.mean((0, 2, 3)).abs().max()) < 0.1       # no unit inherits the input mean
    # scaled from the drawn values to exactly 1 (the recorded figure adds the per-sample spread)
    assert report.history[0]["output_var"] == pytest.approx(1.0, rel=0.01)
    assert float(y.var()) == pytest.approx(1.0, rel=0.05)


def test_deep_gelu_mlp_within_target_with_orthogonal_centered_weights():
    torch.manual_seed(0)
    layers = [m for i in range(12) for m in (nn.Linear(32 if i == 0 else 256, 256), nn.GELU())]
    model = nn.Sequential(*layers)
    initlab.autoinit(model, torch.randn(64, 32), distribution="orthogonal", centered=True, seed=0)
    for name, (_, v) in layer_moments(model, torch.randn(512, 32)).items():
        assert v == pytest.approx(1.0, rel=0.25), name


def test_bad_distribution_settings_say_what_to_do_and_change_nothing():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 2))
    before = snapshot(model)
    with pytest.raises(ValueError, match="odd kernel") as info:
        initlab.autoinit(model, torch.randn(4, 3, 8, 8), distribution="delta-orthogonal")
    assert "'orthogonal'" in str(info.value) and "2.0" not in str(info.value)
    assert_same(model, before)
    with pytest.raises(ValueError, match="delta-orthogonal"):
        initlab.autoinit(model, torch.randn(4, 3, 8, 8), distribution="cauchy")


class CrossAttention(nn.Module):
    def __init__(self, kdim=None, dropout=0.0):
        super().__init__()
        self.attn = nn.MultiheadAttention(32, 4, dropout=dropout, batch_first=True, kdim=kdim,
                                          vdim=kdim)

    def forward(self, q, kv):
        return self.attn(q, kv, kv)[0]


@pytest.mark.parametrize("kdim,dropout", [(None, 0.0), (None, 0.3), (16, 0.0)])
def test_multihead_attention_by_composition_matches_monte_carlo(kdim, dropout):
    torch.manual_seed(0)
    model = CrossAttention(kdim, dropout).train()
    q = 1.3 * torch.randn(512, 12, 32) + 0.4
    kv = q if kdim is None else torch.randn(512, 9, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")             # MHA has a map: nothing passes unknown
        report = initlab.autoinit(model, (q, kv), input_moments="measure", seed=0)
    h = {e["layer"]: e for e in report.history}
    m = model.attn
    wq = m.in_proj_weight.chunk(3)[0] if kdim is None else m.q_proj_weight
    # the query block: AutoInit's variance from the query's own E[x^2], its output as predicted
    assert h[next(n for n in h if "q" in n.split(".")[-1])]["weight_std"] == pytest.approx(
        math.sqrt(1 / (32 * float(q.pow(2).mean()))), rel=0.02)
    with torch.no_grad():
        assert float(F.linear(q, wq).var()) == pytest.approx(1.0, rel=0.05)
        y = model(q, kv)
    assert torch.all(m.in_proj_bias == 0) and torch.all(m.out_proj.bias == 0)
    # attention weights by Monte Carlo, head size 8: within 15 % of the measurement (the
    # composition treats a key and its value as independent; they share their input, which
    # puts the measurement 5-15 % above the prediction here)
    assert float(y.var()) == pytest.approx(h["attn.out_proj"]["output_var"], rel=0.15)
    assert float(y.var()) == pytest.approx(1.0, rel=0.2)
