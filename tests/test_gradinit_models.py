"""GradInit beyond CNNs: every kind of model the issue names runs, and the result is sane."""
import math
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations

import initlab


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
    finite_and_changed(model, before, initlab.gradinit(model, data, steps=4))


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
    report = initlab.gradinit(model, data, steps=4)
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
    finite_and_changed(model, before, initlab.gradinit(model, data, steps=4))


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
    report = initlab.gradinit(model, data, steps=3, gamma=1e-9)  # constraint steps only
    assert {h["branch"] for h in report.history} == {"constraint"}
    finite_and_changed(model, before, report)
