"""Fixup: zeros where the rule says, He std times L^(-1/(2m-2)) elsewhere in the branches."""
import math

import pytest
import torch
from torch import nn

import initlab
from helpers.methods import ResMLP, assert_same, mlp, snapshot
from initlab.methods.fixup import branch_factor


def he_std_fan_out(w):
    return math.sqrt(2.0 / w.shape[0])   # Linear (out, in): fan_out = out


@pytest.mark.parametrize("n_blocks,m", [(4, 2), (9, 3)])
def test_zeros_and_scaled_he(n_blocks, m):
    model = ResMLP(n_blocks=n_blocks, m=m, width=96)
    stem = model.stem.weight.detach().clone()
    initlab.initialize(model, "fixup", seed=0)
    factor = n_blocks ** (-1.0 / (2 * m - 2))   # L^(-1/(2m-2)), written from the paper
    assert torch.count_nonzero(model.head.weight) == 0 and torch.count_nonzero(model.head.bias) == 0
    assert torch.equal(model.stem.weight, stem)       # outside the branches: untouched
    for block in model.blocks:
        linears = [lin for lin in block.branch if isinstance(lin, nn.Linear)]
        assert len(linears) == m
        assert torch.count_nonzero(linears[-1].weight) == 0
        for lin in linears:
            assert torch.count_nonzero(lin.bias) == 0
        for lin in linears[:-1]:
            w = lin.weight.detach()
            ratio = w.std().item() / (he_std_fan_out(w) * factor)
            assert abs(ratio - 1) < 0.05, ratio          # 9216 draws: ~0.7 % sampling error
            assert abs(w.mean().item()) < 0.05 * w.std().item()
        assert block.scale.item() == 1.0


def test_output_equals_stem_at_init_and_fan_in_option():
    model = ResMLP(n_blocks=3, m=2, width=32)
    initlab.initialize(model, "fixup", mode="fan_in", seed=1)
    x = torch.randn(5, 6)
    torch.testing.assert_close(model(x), torch.zeros(5, 3))   # zero classifier
    h = model.stem(x)
    torch.testing.assert_close(model.blocks(h), h)            # every branch adds exactly 0


def test_seeded_draws_repeat():
    a, b = ResMLP(), ResMLP()                        # constructors draw different values
    initlab.initialize(a, "fixup", seed=3)
    initlab.initialize(b, "fixup", seed=3)
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q) == (not n.startswith("stem")), n  # the stem is not Fixup's


def test_classifier_by_name_or_none():
    model = ResMLP()
    head = model.head.weight.detach().clone()
    initlab.initialize(model, "fixup", classifier=None)
    assert torch.equal(model.head.weight, head)
    model = ResMLP()
    initlab.initialize(model, "fixup", classifier="stem")
    assert torch.count_nonzero(model.stem.weight) == 0


def test_refuses_without_marked_branches_unchanged():
    model = mlp()
    before = snapshot(model)
    with pytest.raises(ValueError, match="mark_residual_branch"):
        initlab.initialize(model, "fixup")
    assert_same(model, before)


def test_refuses_unknown_classifier_unchanged():
    model = ResMLP()
    before = snapshot(model)
    with pytest.raises(ValueError, match="classifier"):
        initlab.initialize(model, "fixup", classifier="nope")
    assert_same(model, before)


def test_one_layer_branches_are_zeroed_with_nothing_to_scale():
    assert branch_factor(3, 1) == 1.0           # L^(-1/(2m-2)) is undefined at m = 1
    assert branch_factor(16, 3) == pytest.approx(0.5)
    model = ResMLP(n_blocks=3, m=1, width=8)
    initlab.initialize(model, "fixup", seed=0)
    for block in model.blocks:
        assert torch.count_nonzero(block.branch[0].weight) == 0
        assert block.scale.item() == 1.0


class Wrapped(nn.Module):
    """Linears outside the branches before the classifier, and a module registered after it."""

    def __init__(self):
        super().__init__()
        self.net = ResMLP(n_blocks=2, width=8)
        self.proj = nn.Linear(3, 3)
        self.out = nn.Linear(3, 3)
        self.after = nn.Identity()

    def forward(self, x):
        return self.after(self.out(self.proj(self.net(x))))


def test_auto_classifier_is_the_last_linear_outside_the_branches(caplog):
    model = Wrapped()
    kept = {n: p.detach().clone() for n, p in model.named_parameters()
            if n.startswith(("net.stem", "net.head", "proj"))}
    auto = "".join(["au", "to"])      # equal to "auto", not the same object (as from a CLI)
    with caplog.at_level("INFO", logger="initlab.methods.fixup"):
        initlab.initialize(model, "fixup", classifier=auto, seed=0)
    assert torch.count_nonzero(model.out.weight) == 0 and torch.count_nonzero(model.out.bias) == 0
    for n, p in model.named_parameters():
        if n in kept:
            assert torch.equal(p, kept[n]), n
    assert "2 residual branches initialized, classifier zeroed" in caplog.text


def test_classifier_named_before_auto_in_sort_order(caplog):
    model = nn.Sequential(ResMLP(n_blocks=2, width=8))   # names "0.stem", "0.head" sort < "auto"
    head = model[0].head.weight.detach().clone()
    with caplog.at_level("INFO", logger="initlab.methods.fixup"):
        initlab.initialize(model, "fixup", classifier="0.stem", seed=0)
    assert torch.count_nonzero(model[0].stem.weight) == 0
    assert torch.equal(model[0].head.weight, head)
    model = ResMLP(n_blocks=2, width=8)
    with caplog.at_level("INFO", logger="initlab.methods.fixup"):
        initlab.initialize(model, "fixup", classifier=None, seed=0)
    assert caplog.records[-1].getMessage() == "fixup: 2 residual branches initialized"
