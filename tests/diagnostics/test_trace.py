"""Residual sums found by tracing: which additions are residual, which side is the branch, and
their RMS against a computation by hand."""
import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from helpers.methods import ResMLP, batches
from initlab.diagnostics import diagnose
from initlab.diagnostics.trace import LeafTracer, residual_sums


class Block(nn.Module):
    """Unmarked: h + gain * f(h)."""

    def __init__(self, width: int, gain: float):
        super().__init__()
        self.f = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))
        self.gain = gain

    def forward(self, h):
        return h + self.gain * self.f(h)


class Plain(nn.Module):
    def __init__(self, gains=(0.5, 4.0), control_flow: bool = False):
        super().__init__()
        self.stem, self.head = nn.Linear(6, 8), nn.Linear(8, 3)
        self.blocks = nn.Sequential(*[Block(8, g) for g in gains])
        self.control_flow = control_flow

    def forward(self, x):
        if self.control_flow and x.sum() > 1e9:  # data-dependent: the root does not trace
            x = x / 2
        return self.head(self.blocks(self.stem(x)))


@pytest.mark.parametrize("control_flow", [False, True])
def test_traced_sums_match_the_operands_by_hand_on_the_first_batch(control_flow):
    torch.manual_seed(0)
    model, data = Plain(control_flow=control_flow), batches(4)
    d = diagnose(model, data, lr=0.1)
    assert [b.name for b in d.branches] == ["blocks.0", "blocks.1"]
    assert all(b.source == "traced" for b in d.branches)
    with torch.no_grad():
        h = model.stem(data[0][0])
        for block, stat in zip(model.blocks, d.branches):
            branch = block.gain * block.f(h)
            assert stat.branch_rms == pytest.approx(float(branch.double().square().mean().sqrt()), rel=1e-6)
            assert stat.skip_rms == pytest.approx(float(h.double().square().mean().sqrt()), rel=1e-6)
            h = h + branch
    in_branch = {s.name for s in d.layers if s.in_branch}
    assert in_branch == {"blocks.0.f.0", "blocks.0.f.1", "blocks.0.f.2", "blocks.1.f.0",
                         "blocks.1.f.1", "blocks.1.f.2"}


class Shapes(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.proj = nn.Linear(4, 4)
        self.f = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
        self.bias = nn.Parameter(torch.zeros(4))

    def forward(self, x):
        parallel = self.a(x) + self.b(x)            # one layer each side: not residual
        shifted = parallel + self.bias              # a parameter, not a computed branch
        return F.relu(self.proj(shifted) + self.f(shifted))  # projection shortcut vs 2 layers


def test_which_additions_are_residual_and_which_side_is_the_branch():
    gm = fx.GraphModule(Shapes(), LeafTracer().trace(Shapes()))
    branch_modules: set[str] = set()
    found = residual_sums(gm, "net", branch_modules)
    assert len(found) == 1
    ((node, (name, side)),) = found.items()
    assert name == "net" and node.args[side].target == "f.2"
    assert branch_modules == {"net.f.0", "net.f.1", "net.f.2"}


def test_marked_branches_are_used_instead_of_tracing():
    d = diagnose(ResMLP(n_blocks=2, width=8), batches(3), lr=0.1)
    assert [(b.name, b.source) for b in d.branches] == [("blocks.0.branch", "marked"),
                                                        ("blocks.1.branch", "marked")]
