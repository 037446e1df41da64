"""Architecture-aware scaling: path counting against brute-force enumeration, in-degree init,
the learning-rate rule, failure safety and the registry."""
import itertools
import math
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import initlab
from helpers.methods import assert_same, snapshot
from initlab.core.graph import TraceError, trace
from initlab.methods.archscale import in_degrees, kernel_size, path_depths


class EdgeDAG(nn.Module):
    """Nodes 0..n-1; node j sums its incoming edges (i, j, kind): "linear" = Linear(relu(x_i)),
    "skip" = x_i. Node 0 is the stem's output; the head reads node n-1."""

    def __init__(self, n, edges, width=8):
        super().__init__()
        self.n, self.edges = n, edges
        self.stem, self.head = nn.Linear(4, width), nn.Linear(width, 3)
        self.ops = nn.ModuleDict({f"{i}_{j}": nn.Linear(width, width)
                                  for i, j, kind in edges if kind == "linear"})

    def forward(self, x):
        nodes = [self.stem(x)]
        for j in range(1, self.n):
            terms = [self.ops[f"{i}_{j}"](F.relu(nodes[i])) if kind == "linear" else nodes[i]
                     for i, jj, kind in self.edges if jj == j]
            total = terms[0]
            for t in terms[1:]:
                total = total + t
            nodes.append(total)
        return self.head(nodes[-1])


def random_dag(seed, n=5):
    rng = random.Random(seed)
    edges = [(j - 1, j, rng.choice(["linear", "skip"])) for j in range(1, n)]  # connected
    for i, j in itertools.combinations(range(n), 2):
        if j > i + 1 and rng.random() < 0.5:
            edges.append((i, j, rng.choice(["linear", "skip"])))
    return n, edges


def brute_force(n, edges):
    """{L: paths} by enumerating every path 0 -> n-1 explicitly (stem and head add 2)."""
    out = {}

    def walk(node, depth):
        if node == n - 1:
            out[depth + 2] = out.get(depth + 2, 0) + 1
            return
        for i, j, kind in edges:
            if i == node:
                walk(j, depth + (kind == "linear"))
    walk(0, 0)
    return dict(sorted(out.items()))


@pytest.mark.parametrize("seed", range(8))
def test_path_depths_match_brute_force_enumeration(seed):
    n, edges = random_dag(seed, n=4 + seed % 3)
    assert path_depths(EdgeDAG(n, edges)) == brute_force(n, edges)


def test_in_degree_and_init_variance():
    # node 3 sums three edges (two linear, one skip); node 2 one linear edge
    edges = [(0, 1, "linear"), (1, 2, "linear"), (0, 3, "linear"), (1, 3, "skip"),
             (2, 3, "linear")]
    torch.manual_seed(0)
    model = EdgeDAG(4, edges, width=400)
    deg = in_degrees(trace(model))
    assert deg == {"stem": 1, "ops.0_1": 1, "ops.1_2": 1, "ops.0_3": 3, "ops.2_3": 3, "head": 1}
    report = initlab.archscale_init(model, seed=0)
    for h in report.history:
        w = model.get_submodule(h["layer"]).weight.detach()
        assert float(w.var()) == pytest.approx(2 / (w.shape[1] * deg[h["layer"]]), rel=0.15)
        assert h["weight_std"] ** 2 == pytest.approx(2 / (w.shape[1] * deg[h["layer"]]))
        assert torch.all(model.get_submodule(h["layer"]).bias == 0)


def test_learning_rate_rule():
    base = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))      # one path, L = 2
    assert initlab.archscale_lr(base, 0.1) == pytest.approx(0.1)
    chain = nn.Sequential(*[m for _ in range(3) for m in (nn.Linear(8, 8), nn.ReLU())],
                          nn.Linear(8, 3))                                  # one path, L = 4
    assert initlab.archscale_lr(chain, 0.1) == pytest.approx(0.1 * math.sqrt(8 / 64))
    n, edges = random_dag(3)
    total = sum(c * d ** 3 for d, c in brute_force(n, edges).items())
    assert initlab.archscale_lr(EdgeDAG(n, edges), 1.0, base_model=chain) == \
        pytest.approx(math.sqrt(64 / total))
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 5), nn.Flatten())
    assert kernel_size(cnn) == 5
    assert initlab.archscale_lr(cnn, 1.0, base_model=base) == pytest.approx(1 / 5)   # L = 2
    assert initlab.archscale_lr(cnn, 1.0) == pytest.approx(1.0)      # default base: same q
    with pytest.raises(ValueError, match="path"):
        initlab.archscale_lr(nn.Sequential(nn.ReLU()), 0.1)


def test_failure_leaves_model_unchanged_and_registry():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return self.lin(x) if x.sum() > 0 else x

    model = Branchy()
    before = snapshot(model)
    with pytest.raises(TraceError, match="leaf_modules"):
        initlab.initialize(model, "archscale")
    assert_same(model, before)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    initlab.initialize(model, "archscale", nonlinearity="relu", seed=1)
    assert torch.all(model[0].bias == 0)
    with pytest.raises(ValueError, match="distribution"):
        initlab.archscale_init(model, distribution="cauchy")


class Guarded(EdgeDAG):
    """The same DAG behind a check on the input's shape: torch.fx cannot trace it (control
    flow on a traced value), torch.export can (shapes are known)."""

    def forward(self, x):
        if x.shape[-1] != 4:
            raise ValueError("4 features")
        return super().forward(x)


def test_a_model_fx_cannot_trace_is_traced_by_export_with_an_example_input():
    edges = [(0, 1, "linear"), (0, 2, "linear"), (1, 2, "linear"), (0, 2, "skip")]
    plain, guarded = EdgeDAG(3, edges), Guarded(3, edges)
    x = torch.randn(5, 4)
    with pytest.raises(TraceError, match="example input"):
        path_depths(guarded)
    assert path_depths(guarded, example_input=x) == path_depths(plain)
    gm = trace(guarded, (nn.Linear,), example_input=x)        # export: Linear calls folded
    assert in_degrees(gm) == in_degrees(trace(plain))
    report = initlab.archscale_init(guarded, example_input=x, seed=0)
    assert {h["layer"] for h in report.history} == {n for n, m in guarded.named_modules()
                                                     if isinstance(m, nn.Linear)}


def test_llama_from_config_through_export():
    transformers = pytest.importorskip("transformers")
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, vocab_size=64, max_position_embeddings=32))
    ids = torch.randint(0, 64, (2, 8))
    depths = path_depths(model, example_input=ids)
    assert max(depths) >= 2 * 2 + 1          # q/k/v/o and gate/up/down layers, then lm_head
    report = initlab.archscale_init(model, example_input=ids, seed=0)
    drawn = {h["layer"] for h in report.history}
    assert "lm_head" in drawn and "model.layers.1.mlp.down_proj" in drawn
    # residual sums: o_proj and down_proj outputs are summed with the stream (in-degree 2)
    assert {h["layer"]: h["in_degree"] for h in report.history}[
        "model.layers.0.self_attn.o_proj"] == 2
