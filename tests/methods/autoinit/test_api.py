"""AutoInit end to end: variance preserved on small networks, Hugging Face models, tracing
errors, failure safety, the registry and lab paths, the report."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import initlab
from helpers.methods import assert_same, bn_dropout_mlp, snapshot
from initlab.core.graph import TraceError
from initlab.diagnostics import layer_moments


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


class SmallCNN(nn.Module):
    """Padded convs down to 4x4 maps, max pooling, a global mean: borders matter here."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.c, self.head = nn.Conv2d(16, 32, 3, padding=1), nn.Linear(32, 10)

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.b(F.relu(self.a(x)))), 2)
        return self.head(F.relu(self.c(h)).mean(dim=(2, 3)))


def tanh_mlp():
    layers = []
    for i in range(8):
        layers += [nn.Linear(32 if i == 0 else 128, 128), nn.Tanh(), nn.Dropout(0.2)]
    return nn.Sequential(*layers)


@pytest.mark.parametrize("build,shape", [(tanh_mlp, (32,)), (Gated, (128,)),
                                         (lambda: nn.Sequential(Attention(), Attention()), (12, 32)),
                                         (SmallCNN, (3, 8, 8))])
def test_variance_preserved_on_small_architectures(build, shape):
    model = build().train()
    before = layer_moments(model, torch.randn(256, *shape))
    assert min(v for _, v in before.values()) < 0.5          # PyTorch's default init shrinks it
    report = initlab.autoinit(model, torch.randn(64, *shape), seed=0)
    g = torch.Generator().manual_seed(99)
    measured = layer_moments(model, torch.randn(512, *shape, generator=g))
    assert set(measured) == {h["layer"] for h in report.history}
    for name, (_, v) in measured.items():
        assert v == pytest.approx(1.0, rel=0.25), name


def _hf_variances(model, ids):
    from transformers.pytorch_utils import Conv1D
    out = {}

    def hook(name):
        def record(module, args, output):
            out.setdefault(name, float(output.detach().double().var()))
        return record
    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(m, (nn.Linear, Conv1D))]
    with torch.no_grad():
        model(ids)
    for h in handles:
        h.remove()
    return out


def _hf(kind):
    transformers = pytest.importorskip("transformers")
    if kind == "gpt2":
        return transformers.GPT2LMHeadModel(transformers.GPT2Config(
            n_layer=2, n_embd=32, n_head=4, vocab_size=64, n_positions=32, bos_token_id=0,
            eos_token_id=0))
    if kind == "llama":
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(
            num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=64, vocab_size=64, max_position_embeddings=32))
    return transformers.BertModel(transformers.BertConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64,
        vocab_size=64, max_position_embeddings=32))


@pytest.mark.parametrize("kind", ["gpt2", "llama", "bert"])
def test_hugging_face_models_from_config(kind):
    model = _hf(kind).train()
    with warnings.catch_warnings():
        warnings.simplefilter("error")                 # every operation has a map
        report = initlab.autoinit(model, torch.randint(0, 64, (4, 12)), seed=0)
    measured = _hf_variances(model, torch.randint(0, 64, (64, 12)))
    assert len(measured) >= 8
    for name, v in measured.items():
        assert v == pytest.approx(1.0, rel=0.45), name
    if kind == "gpt2":                                  # tied: one tensor, drawn once
        assert model.lm_head.weight is model.transformer.wte.weight
        assert [h["layer"] for h in report.history].count("transformer.wte") == 1
        assert "lm_head" not in [h["layer"] for h in report.history]


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
        return initlab.moments(x.mean * 5.5, x.var * 38.5)   # sum of 1..10 terms, on average
    initlab.register_moment_map(torch.cumsum, cumsum_map)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            rep, est = initlab.autoinit(Cum(), x, return_estimates=True)
    finally:
        initlab.unregister_moment_map(torch.cumsum)
    assert calls == ["cumsum"] and est["cumsum"][1] == pytest.approx(38.5, rel=0.01)
    assert rep.history[0]["input_var"] == pytest.approx(38.5, rel=0.01)


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


def test_modes_and_buffers_kept_and_registry_path():
    model = bn_dropout_mlp()
    before = snapshot(model)
    x = torch.randn(32, 6)
    rng = torch.get_rng_state()
    initlab.initialize(model, "autoinit", example_input=x, seed=0)
    assert torch.equal(rng, torch.get_rng_state())      # the shape run's dropout drew nothing
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


def test_same_seed_same_weights_and_the_report():
    a, b = tanh_mlp(), tanh_mlp()
    ra = initlab.autoinit(a, torch.randn(8, 32), seed=5)
    initlab.autoinit(b, torch.randn(8, 32), seed=5)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert isinstance(ra, initlab.VarianceReport)
    assert [h["layer"] for h in ra.history] == [str(i) for i in range(0, 24, 3)]
    assert all(h["output_var"] == pytest.approx(1.0) for h in ra.history)
