"""The verdict on planted networks names the right layers, tensors and blocks."""
import pytest
import torch
from torch import nn

import initlab
from helpers.methods import batches
from initlab.diagnostics import diagnose


def chain(factors: list[float], width: int = 16) -> nn.Sequential:
    """Linear layers with orthogonal weights times each factor and no activation: layer k
    multiplies the signal's spread by exactly factors[k]."""
    layers = []
    for i, f in enumerate(factors):
        layer = nn.Linear(6 if i == 0 else width, width, bias=False)
        nn.init.orthogonal_(layer.weight)
        with torch.no_grad():
            layer.weight.mul_(f * (width / 6) ** 0.5 if i == 0 else f)  # the first: 6 -> 16 wide
        layers.append(layer)
    head = nn.Linear(width, 3, bias=False)
    nn.init.orthogonal_(head.weight)
    with torch.no_grad():
        head.weight.mul_((width / 3) ** 0.5)
    return nn.Sequential(*layers, head)


def forward(d) -> list:
    return [f for f in d.findings if f.where and f.where[0] != "loss" and
            any(w in {s.name for s in d.layers} for w in f.where)]


def test_layers_that_each_shrink_the_signal_are_named():
    factors = [1, 1, 1 / 3, 1 / 3, 1 / 3, 1 / 3, 1, 1]          # layers 3-6 (1-based) shrink 3x
    d = diagnose(chain(factors), batches(3, size=64), lr=0.01)
    gains = [s.gain for s in d.layers if s.weighted][:8]
    assert gains[2:6] == pytest.approx([1 / 3] * 4, rel=0.15)
    (finding,) = forward(d)
    assert finding.kind == "vanish" and finding.where == ["2", "3", "4", "5"]
    assert "weighted layers 3-6" in finding.text and "3× each" in finding.text
    assert "kaiming" in finding.text


def test_layers_that_each_grow_the_signal_are_named():
    d = diagnose(chain([1, 2.5, 2.5, 2.5, 1, 1]), batches(3, size=64), lr=1e-4)
    (finding,) = forward(d)
    assert finding.kind == "explode" and finding.where == ["1", "2", "3"]


def test_a_healthy_chain_has_no_forward_finding_and_one_lone_layer_is_named():
    assert forward(diagnose(chain([1] * 6), batches(3, size=64), lr=0.01)) == []
    (finding,) = forward(diagnose(chain([1, 1, 0.1, 1, 1]), batches(3, size=64), lr=0.01))
    assert finding.where == ["2"] and "weighted layer 3 (2) shrinks the signal 10×" in finding.text


class Block(nn.Module):
    def __init__(self, width: int, gain: float, marked: bool):
        super().__init__()
        self.branch = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))
        with torch.no_grad():
            self.branch[2].weight.mul_(gain)
        if marked:
            initlab.mark_residual_branch(self.branch)

    def forward(self, h):
        return h + self.branch(h)


@pytest.mark.parametrize("marked", [True, False])
def test_a_dominating_residual_branch_is_named(marked):
    torch.manual_seed(0)
    gains = [0.1, 0.1, 30.0, 0.1]
    model = nn.Sequential(nn.Linear(6, 16), *[Block(16, g, marked) for g in gains], nn.Linear(16, 3))
    d = diagnose(model, batches(3, size=64), lr=1e-3)
    (finding,) = [f for f in d.findings if f.kind == "dominate" and "residual" in f.text]
    assert finding.where == (["3.branch"] if marked else ["3"])
    assert "fixup" in finding.text and "skipinit" in finding.text


def test_a_step_that_raises_the_loss_is_named_with_the_remedy():
    d = diagnose(chain([1] * 4), batches(3, size=64), lr=100.0)
    (finding,) = [f for f in d.findings if f.where == ["loss"]]
    assert finding.kind == "explode" and "raises the held-out loss" in finding.text
    assert "gradinit" in finding.text


def test_a_tensor_that_takes_most_of_the_step_is_named():
    model = chain([1] * 5)
    with torch.no_grad():
        model[2].weight.mul_(1e-3)  # a tiny tensor: its update/weight ratio is far above the rest
    d = diagnose(model, batches(3, size=64), lr=0.01)
    (finding,) = [f for f in d.findings if f.kind == "dominate"]
    assert finding.where == ["2.weight"]


class Collapse(nn.Module):
    """An attention layer whose output makes every token the same (rank one)."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        out = self.attn(x, x, x, need_weights=False)[0]
        return out.mean(dim=1, keepdim=True).expand_as(out)


class Tokens(nn.Module):
    def __init__(self, peaked: bool):
        super().__init__()
        self.proj, self.block, self.head = nn.Linear(4, 8), Collapse(), nn.Linear(8, 3)
        if peaked:  # huge query/key weights: each query attends to one key
            with torch.no_grad():
                self.block.attn.in_proj_weight[:16].mul_(300.0)

    def forward(self, x):
        return self.head(self.block(self.proj(x))).mean(dim=1)


@pytest.mark.parametrize("peaked", [False, True])
def test_rank_collapse_and_peaked_attention_are_named(peaked):
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 6, 4, generator=g), torch.randint(0, 3, (8,), generator=g))
            for _ in range(3)]
    d = diagnose(Tokens(peaked), data, lr=0.01)
    assert d.ranks[0].stable_rank == pytest.approx(1.0, abs=1e-6)
    collapse = [f for f in d.findings if f.kind == "collapse"]
    assert [f.where for f in collapse] == ([["block.attn"], ["block"]] if peaked else [["block"]])
