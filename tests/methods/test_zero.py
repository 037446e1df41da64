"""ZerO: exact identity / Hadamard matrices, kernel centers, groups; no randomness."""
import math

import pytest
import torch
from torch import nn

import initlab
from helpers.methods import assert_same, snapshot
from initlab.methods.zero import sylvester_hadamard, zero_matrix, zero_weight


def kron_hadamard(p):
    """Sylvester's construction as a Kronecker power of [[1, 1], [1, -1]], built independently."""
    h2 = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    h = torch.ones(1, 1, dtype=torch.float64)
    for _ in range(int(math.log2(p))):
        h = torch.kron(h, h2)
    return h


@pytest.mark.parametrize("p", [1, 2, 4, 8, 32])
def test_sylvester_hadamard(p):
    h = sylvester_hadamard(p)
    assert torch.equal(h, kron_hadamard(p))
    assert torch.equal(h @ h.T, p * torch.eye(p, dtype=torch.float64))


@pytest.mark.parametrize("n_out,n_in", [(5, 5), (3, 7), (6, 4), (8, 3), (9, 9), (13, 2)])
def test_linear_weights_are_exact(n_out, n_in):
    model = nn.Sequential(nn.Linear(n_in, n_out))
    initlab.initialize(model, "zero")
    w = model[0].weight.detach().double()
    if n_out <= n_in:
        expected = torch.zeros(n_out, n_in, dtype=torch.float64)
        expected[range(n_out), range(n_out)] = 1.0
    else:
        p = 2 ** math.ceil(math.log2(n_out))
        expected = kron_hadamard(p)[:n_out, :n_in] / math.sqrt(p)
    assert torch.equal(w, expected.float().double())
    assert torch.all(model[0].bias == 0)


def test_expanding_layer_has_orthogonal_columns():
    w = zero_matrix(16, 5)            # out = p = 16: columns of H_16 / 4 are orthonormal
    torch.testing.assert_close(w.T @ w, torch.eye(5, dtype=torch.float64), rtol=0, atol=1e-15)


@pytest.mark.parametrize("conv,kernel",
                         [(nn.Conv1d, 3), (nn.Conv2d, 3), (nn.Conv2d, 4), (nn.Conv3d, 3)])
def test_convolutions_put_the_matrix_at_the_kernel_center(conv, kernel):
    layer = conv(3, 6, kernel)
    initlab.initialize(nn.Sequential(layer), "zero")
    w = layer.weight.detach().double()
    center = (slice(None), slice(None)) + (kernel // 2,) * (w.dim() - 2)
    p = 8
    assert torch.equal(w[center], (kron_hadamard(p)[:6, :3] / math.sqrt(p)).float().double())
    rest = w.clone()
    rest[center] = 0
    assert torch.count_nonzero(rest) == 0


def test_depthwise_convolution_is_the_identity():
    layer = nn.Conv2d(4, 4, 3, padding=1, groups=4)
    initlab.initialize(nn.Sequential(layer), "zero")
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(layer(x), x, rtol=0, atol=0)


def test_grouped_convolution_is_block_wise():
    layer = nn.Conv1d(4, 6, 1, groups=2)                     # per group: (3, 2)
    initlab.initialize(nn.Sequential(layer), "zero")
    w = layer.weight.detach()[:, :, 0].double()               # (6, 2)
    block = kron_hadamard(4)[:3, :2] / 2
    assert torch.equal(w, torch.cat([block, block]).float().double())


def test_deterministic_and_leaves_other_modules():
    def build():
        torch.manual_seed(int(torch.randint(0, 1000, ()).item()))
        return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 2))
    a, b = build(), build()
    ln_before = a[1].weight.detach().clone()
    initlab.initialize(a, "zero")
    initlab.initialize(b, "zero")
    for p, q in zip(a.parameters(), b.parameters()):
        if p.shape != ln_before.shape:
            assert torch.equal(p, q)
    assert torch.equal(a[1].weight, ln_before)


def test_refuses_a_model_without_layers_unchanged():
    model = nn.Sequential(nn.LayerNorm(3))
    before = snapshot(model)
    with pytest.raises(ValueError, match="Linear/Conv"):
        initlab.initialize(model, "zero")
    assert_same(model, before)


def test_zero_weight_alone_defaults_to_one_group():
    torch.testing.assert_close(zero_weight(torch.empty(3, 5)), torch.eye(3, 5), rtol=0, atol=0)
    w = zero_weight(torch.empty(4, 2, 3))               # a Conv1d weight: the center tap
    torch.testing.assert_close(w[:, :, 1], zero_matrix(4, 2).float(), rtol=0, atol=0)
    assert torch.count_nonzero(w[:, :, [0, 2]]) == 0


@pytest.mark.parametrize("p", [0, -4, 3, 6, 12])
def test_sylvester_hadamard_needs_a_power_of_two(p):
    with pytest.raises(ValueError, match="power of 2"):
        sylvester_hadamard(p)


def test_zero_weight_center_of_a_wide_kernel_and_groups_that_do_not_divide():
    w = zero_weight(torch.empty(2, 2, 5, 7))            # center (2, 3), not (3, 5) or (1, 2)
    assert torch.equal(w[:, :, 2, 3], torch.eye(2))
    assert torch.count_nonzero(w) == 2
    with pytest.raises(ValueError, match="do not split into 2 groups"):
        zero_weight(torch.empty(5, 1, 3), groups=2)
