"""`initlab.gradinit` as a library call: modes, failure safety, settings, batch drawing, replay;
and on every kind of model (CNNs with batch norm, Transformers, LSTMs, tied and parametrized
weights, dict batches)."""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations

import initlab
from initlab.core.loss import default_loss

# ---- behaviour ---------------------------------------------------------------------------------

def bn_net() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(16, 3))


def data(n=4, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 6, generator=g), torch.randint(0, 3, (size,), generator=g))
            for _ in range(n)]


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(model, saved):
    now = model.state_dict()
    assert now.keys() == saved.keys()
    for k in saved:
        assert torch.equal(now[k], saved[k]), k


def test_running_stats_and_modes_untouched():
    model = bn_net()
    model.train()
    model[3].eval()  # a mixed mode the user chose
    before = state(model)
    initlab.gradinit(model, data(), steps=5, guard=False)
    bn = model[1]
    assert torch.equal(bn.running_mean, before["1.running_mean"])
    assert torch.equal(bn.num_batches_tracked, before["1.num_batches_tracked"])
    assert bn.track_running_stats and model.training and bn.training and not model[3].training
    assert not torch.equal(model[0].weight, before["0.weight"])  # and something did change


def test_dropout_off_and_batch_statistics_used_during_search():
    seen = []

    def loss_fn(m, batch):
        seen.append((m._model[3].training, m._model[1].training, m._model[1].track_running_stats))
        return default_loss(m, batch)

    initlab.gradinit(bn_net(), data(), loss_fn=loss_fn, steps=2)
    assert seen and all(s == (False, True, False) for s in seen)


class Boom(Exception):
    pass


@pytest.mark.parametrize("kind", ["loss_raises", "interrupt", "nan_loss", "nan_after"])
def test_model_restored_bitwise_on_failure(kind):
    model = bn_net()
    model.train()
    before = state(model)
    calls = {"n": 0}

    def loss_fn(m, batch):
        calls["n"] += 1
        loss = default_loss(m, batch)
        if calls["n"] == (6 if kind == "nan_after" else 5):
            if kind == "loss_raises":
                raise Boom("user loss failed")
            if kind == "interrupt":
                raise KeyboardInterrupt
            return loss * float("nan")
        return loss

    err = {"loss_raises": Boom, "interrupt": KeyboardInterrupt,
           "nan_loss": FloatingPointError, "nan_after": FloatingPointError}[kind]
    with pytest.raises(err) as info:
        initlab.gradinit(model, data(), loss_fn=loss_fn, steps=10, gamma=1e9, faithful=True)
    assert_same(model, before)
    assert model.training and model[1].track_running_stats
    if kind.startswith("nan"):
        assert "iteration 2" in str(info.value)  # calls 1-2: iteration 0, 3-4: 1, 5-6: 2


def test_failure_while_writing_restores(monkeypatch):
    model = bn_net()
    before = state(model)
    original = torch.Tensor.copy_
    count = {"n": 0}

    def flaky(self, src, *a, **k):
        count["n"] += 1
        if count["n"] == 3:
            raise KeyboardInterrupt
        return original(self, src, *a, **k)

    monkeypatch.setattr(torch.Tensor, "copy_", flaky)
    with pytest.raises(KeyboardInterrupt):
        initlab.gradinit(model, data(), steps=2)
    monkeypatch.undo()
    assert_same(model, before)


@pytest.mark.parametrize("bad,match", [
    (dict(target="rmsprop"), "unknown target"), (dict(lr=-0.1), "lr must be"),
    (dict(steps=0, faithful=True), "steps must be"), (dict(steps=-1), "steps must be"),
    (dict(steps=0, warm_start=False), "steps must be"), (dict(patience=1), "patience"),
    (dict(scale_lr=0.0), "scale_lr"),
    (dict(gamma=float("nan")), "gamma"), (dict(min_scale=-1.0), "min_scale"),
    (dict(batching="zip"), "batching"),
])
def test_invalid_settings(bad, match):
    model = bn_net()
    before = state(model)
    with pytest.raises(ValueError, match=match):
        initlab.gradinit(model, data(), **bad)
    assert_same(model, before)


def test_clear_errors_for_bad_inputs():
    with pytest.raises(ValueError, match="no batches"):
        initlab.gradinit(bn_net(), [], steps=1)
    with pytest.raises(ValueError, match="re-iterable"):
        initlab.gradinit(bn_net(), iter(data(n=2)), steps=3)
    frozen = bn_net().requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to scale"):
        initlab.gradinit(frozen, data(), steps=1)
    with pytest.raises(ValueError, match="nothing to scale"):
        initlab.gradinit(bn_net(), data(), steps=1, params="no_such_tensor")
    with pytest.raises(ValueError, match="scalar"):
        initlab.gradinit(bn_net(), data(), steps=1,
                         loss_fn=lambda m, b: F.cross_entropy(m(b[0]), b[1], reduction="none"))
    real = bn_net()
    with pytest.raises(ValueError, match="call the `model` it was given"):
        initlab.gradinit(real, data(), steps=1, loss_fn=lambda m, b: real(b[0]).sum())
    with pytest.raises(TypeError, match="iterable of batches"):
        initlab.gradinit(bn_net(), torch.randn(3, 6), steps=1)
    with pytest.raises(ValueError, match="dict batches"):
        initlab.gradinit(bn_net(), [(torch.randn(4, 6), torch.zeros(4).long(), 1)], steps=1)


def test_draw_order_is_the_contract():
    drawn = []

    class Recording:
        def __init__(self, batches):
            self.batches = batches

        def __iter__(self):
            for i, b in enumerate(self.batches):
                drawn.append(i)
                yield b

    batches = data(n=20)
    faithful = dict(faithful=True)
    initlab.gradinit(bn_net(), Recording(batches), steps=2, gamma=1e9, **faithful)  # 3 per step
    assert drawn == [0, 1, 2, 3, 4, 5]
    drawn.clear()
    initlab.gradinit(bn_net(), Recording(batches), steps=2, gamma=1e9, overlap=False, **faithful)
    assert drawn == list(range(8))
    drawn.clear()
    initlab.gradinit(bn_net(), Recording(batches), steps=3, gamma=1e-9, **faithful)  # 2 per step
    assert drawn == list(range(6))


def test_objective_batches_are_B0_B2_or_B3_B2():
    batches = data(n=8)
    seen = []

    def loss_fn(m, batch):
        seen.append(batch[0])
        return default_loss(m, batch)

    for overlap, want in [(True, (0, 2)), (False, (3, 2))]:
        seen.clear()
        initlab.gradinit(bn_net(), batches, loss_fn=loss_fn, steps=1, gamma=1e9, overlap=overlap,
                         faithful=True)
        assert torch.equal(seen[0], torch.cat([batches[0][0], batches[1][0]]))
        assert torch.equal(seen[1], torch.cat([batches[want[0]][0], batches[want[1]][0]]))


def test_deterministic_bitwise():
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        model = bn_net()
        runs.append(initlab.gradinit(model, data(), steps=6).scales)
    assert runs[0] == runs[1]


def test_optimizer_built_earlier_stays_valid():
    model = bn_net()
    ids = [id(p) for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    initlab.gradinit(model, data(), steps=3)
    assert [id(p) for p in model.parameters()] == ids
    x, y = data(n=1)[0]
    before = model[0].weight.detach().clone()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    assert not torch.equal(model[0].weight, before)


def test_selection_floors_and_caps():
    model = bn_net()
    before = state(model)
    report = initlab.gradinit(model, data(), steps=30, scale_lr=0.5, gamma=1e-9,
                              params=nn.Linear, exclude=r"^4\.", min_scale=0.3)
    assert set(report.scales) == {"0.weight", "0.bias"}
    assert torch.equal(model[1].weight, before["1.weight"])
    assert torch.equal(model[4].weight, before["4.weight"])
    assert report.scales["0.weight"] >= 0.3 and report.scales["0.bias"] >= 0.0
    torch.testing.assert_close(model[0].weight, before["0.weight"] * report.scales["0.weight"])
    capped = initlab.gradinit(bn_net(), data(), steps=30, scale_lr=0.5, gamma=1e9,
                              max_scale=1.05, norm_max_scale=1.01)
    assert max(capped.scales.values()) <= 1.05
    assert capped.scales["1.weight"] <= 1.01


@pytest.mark.parametrize("faithful", [False, True])
def test_min_scale_floor_binds_for_weights_not_biases(faithful):
    """Constraint steps only (gamma ~ 0) drive the scales down; a floor of 0.3 must stop each
    weight's scale exactly there, while biases (floor 0) may go lower."""
    settings = dict(steps=30, scale_lr=0.5, gamma=1e-9, faithful=faithful)
    torch.manual_seed(0)
    free = initlab.gradinit(bn_net(), data(), min_scale=0.01, **settings)
    assert free.scales["4.weight"] < 0.25 and free.scales["1.weight"] < 0.25  # would go below
    torch.manual_seed(0)
    model = bn_net()
    before = state(model)
    report = initlab.gradinit(model, data(), min_scale=0.3, **settings)
    assert report.scales["4.weight"] == 0.3 and report.scales["1.weight"] == 0.3
    assert report.scales["4.bias"] < 0.3                          # biases' floor is 0
    assert min(report.scales.values()) >= 0.0
    assert all(v >= 0.3 for k, v in report.scales.items() if not k.endswith("bias"))
    torch.testing.assert_close(model[4].weight, 0.3 * before["4.weight"], rtol=1e-6, atol=0)


def test_report_roundtrip_and_apply(tmp_path):
    torch.manual_seed(11)
    model = bn_net()
    report = initlab.gradinit(model, data(), steps=4, progress=False)
    assert len(report.history) == 4 and report.version == initlab.__version__
    assert {"iteration", "branch", "loss", "loss_after", "grad_norm"} <= set(report.history[0])
    path = tmp_path / "init.pt"
    report.save(path)
    loaded = initlab.InitReport.load(path)
    assert loaded == report
    torch.manual_seed(11)
    fresh = bn_net()
    initlab.apply(fresh, path)
    for (n, p), (_, q) in zip(model.named_parameters(), fresh.named_parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)
    with pytest.raises(RuntimeError, match="scale twice"):
        initlab.apply(fresh, report)
    other = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5),
                          nn.Linear(16, 4))
    with pytest.raises(ValueError, match="'4.weight'"):
        initlab.apply(other, report)
    fig_path = tmp_path / "scales.png"
    report.plot(fig_path)
    assert fig_path.stat().st_size > 1000


# ---- every kind of model ----------------------------------------------------------------------

def finite_and_changed(model, before, report):
    assert report.scales and all(math.isfinite(v) for v in report.scales.values())
    changed = any(not torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert changed


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_cnn_with_batchnorm():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    data = [(torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))) for _ in range(3)]
    before = snapshot(model)
    finite_and_changed(model, before, initlab.gradinit(model, data, steps=4, guard=False))


def test_transformer_sequence_to_sequence():
    d, vocab = 16, 11
    net = nn.Transformer(d_model=d, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
                         dim_feedforward=32, dropout=0.1, batch_first=True)
    emb, head = nn.Embedding(vocab, d), nn.Linear(d, vocab)
    model = nn.ModuleDict(dict(net=net, emb=emb, head=head))

    def loss_fn(m, batch):  # teacher forcing: predict tgt[1:] from tgt[:-1]
        src, tgt = batch
        return F.cross_entropy(m(src, tgt[:, :-1]).reshape(-1, vocab), tgt[:, 1:].reshape(-1))

    class Seq2Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, src, tgt_in):
            mask = nn.Transformer.generate_square_subsequent_mask(tgt_in.shape[1])
            return self.m["head"](self.m["net"](self.m["emb"](src), self.m["emb"](tgt_in),
                                                tgt_mask=mask))

    s2s = Seq2Seq()
    data = [(torch.randint(0, vocab, (6, 5)), torch.randint(0, vocab, (6, 7))) for _ in range(3)]
    before = snapshot(s2s)
    recipe = {**initlab.TRANSFORMER_RECIPE, "steps": 3}
    report = initlab.gradinit(s2s, data, loss_fn=loss_fn, **recipe)
    finite_and_changed(s2s, before, report)
    assert any("norm" in n for n in report.scales)  # LayerNorm weights got scales too


def test_lstm_with_variable_length_batches_splits_in_thirds():
    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(20, 8)
            self.lstm = nn.LSTM(8, 12, batch_first=True)
            self.out = nn.Linear(12, 5)

        def forward(self, x):
            return self.out(self.lstm(self.emb(x))[0])  # (N, T, 5)

    model = Tagger()
    # sequence lengths differ between batches: S cannot be B0 u B1, so thirds of one batch
    data = [(torch.randint(0, 20, (6, t)), torch.randint(0, 5, (6, t))) for t in (4, 7, 5)]
    before = snapshot(model)
    report = initlab.gradinit(model, data, steps=4, guard=False)
    finite_and_changed(model, before, report)
    assert "lstm.weight_hh_l0" in report.scales


def test_tied_embedding_is_scaled_once():
    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(30, 8)
            self.mid = nn.Linear(8, 8)
            self.out = nn.Linear(8, 30, bias=False)
            self.out.weight = self.emb.weight  # tied

        def forward(self, x):
            return self.out(torch.tanh(self.mid(self.emb(x))))

    model = LM()
    w = model.emb.weight.detach().clone()
    data = [(torch.randint(0, 30, (4, 6)), torch.randint(0, 30, (4, 6))) for _ in range(3)]
    report = initlab.gradinit(model, data, steps=5, scale_lr=0.1)
    assert "emb.weight" in report.scales and "out.weight" not in report.scales
    assert model.out.weight is model.emb.weight
    torch.testing.assert_close(model.emb.weight, w * report.scales["emb.weight"])
    assert report.scales["emb.weight"] != 1.0


def test_module_registered_under_two_names_keeps_its_parameters():
    class Shared(nn.Module):  # one Linear reachable as .enc and .dec (a shared encoder/decoder)
        def __init__(self):
            super().__init__()
            self.enc = nn.Linear(6, 6)
            self.dec = self.enc
            self.head = nn.Linear(6, 3)

        def forward(self, x):
            return self.head(torch.tanh(self.dec(torch.tanh(self.enc(x)))))

    model = Shared()
    params = dict(model.named_parameters())
    w = {n: p.detach().clone() for n, p in params.items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = [(torch.randn(8, 6), torch.randint(0, 3, (8,))) for _ in range(3)]
    report = initlab.gradinit(model, data, steps=5, scale_lr=0.1)
    assert model.dec is model.enc
    for n, p in model.named_parameters():  # the same Parameter objects, scaled in place
        assert p is params[n] and isinstance(p, nn.Parameter)
        torch.testing.assert_close(p.detach(), w[n] * report.scales[n])
    assert report.scales["enc.weight"] != 1.0  # the search saw the substituted tensor
    opt.zero_grad()
    F.cross_entropy(model(data[0][0]), data[0][1]).backward()
    opt.step()  # the optimizer made before still holds the model's parameters
    assert all(p.grad is not None for p in model.parameters())


def test_parametrized_weight():
    model = nn.Sequential(parametrizations.weight_norm(nn.Linear(6, 10)), nn.ReLU(),
                          nn.Linear(10, 3))
    data = [(torch.randn(5, 6), torch.randint(0, 3, (5,))) for _ in range(3)]
    before = snapshot(model)
    report = initlab.gradinit(model, data, steps=4, scale_lr=0.1)
    finite_and_changed(model, before, report)
    names = set(report.scales)
    assert {"0.parametrizations.weight.original0", "0.parametrizations.weight.original1"} <= names


def test_dict_batch_and_output_with_loss():
    class HFLike(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2))

        def forward(self, input_values, labels):
            logits = self.body(input_values)
            return SimpleNamespace(loss=F.cross_entropy(logits, labels), logits=logits)

    model = HFLike()
    data = [dict(input_values=torch.randn(4, 4), labels=torch.randint(0, 2, (4,)))
            for _ in range(3)]
    before = snapshot(model)
    finite_and_changed(model, before, initlab.gradinit(model, data, steps=4, guard=False))


def test_mlp_reduces_the_look_ahead_loss():
    """The point of the method: after the search, one SGD step of length lr helps more."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                          nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    g = torch.Generator().manual_seed(0)
    X = torch.randn(256, 16, generator=g)
    Y = (X[:, :4]).argmax(1)
    data = [(X[i:i + 32], Y[i:i + 32]) for i in range(0, 256, 32)]
    report = initlab.gradinit(model, data, steps=60, scale_lr=0.05, gamma=10.0, lr=0.5)
    h = report.history
    first = sum(x["loss_after"] for x in h[:10]) / 10
    last = sum(x["loss_after"] for x in h[-10:]) / 10
    assert last < first - 0.05, (first, last)


def test_attention_constraint_steps_use_a_double_backward_kernel():
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    model = nn.Sequential(layer, nn.Flatten(), nn.Linear(5 * 16, 3))
    data = [(torch.randn(4, 5, 16), torch.randint(0, 3, (4,))) for _ in range(3)]
    before = snapshot(model)
    report = initlab.gradinit(model, data, steps=3, gamma=1e-9, guard=False)  # constraint only
    assert {h["branch"] for h in report.history} == {"constraint"}
    finite_and_changed(model, before, report)
