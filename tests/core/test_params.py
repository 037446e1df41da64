"""Which tensors a method touches, as properties over drawn models and filters: `trainable_params`
lists each distinct trainable floating-point tensor once, with the module that owns it, and
`select_params` keeps exactly the tensors a brute-force reading of the filters picks; GradInit
scales exactly those."""
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import initlab
from helpers.methods import batches
from initlab.core.params import select_params, trainable_params

KINDS = {
    "linear": lambda: nn.Linear(4, 4),
    "linear_nobias": lambda: nn.Linear(4, 4, bias=False),
    "conv": lambda: nn.Conv1d(4, 4, 3),
    "layernorm": lambda: nn.LayerNorm(4),
    "batchnorm": lambda: nn.BatchNorm1d(4),
    "embedding": lambda: nn.Embedding(5, 4),
    "nested": lambda: nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.LayerNorm(4))),
    "gain": lambda: Gain(),
}
TYPES = [nn.Linear, nn.Conv1d, nn.LayerNorm, nn.BatchNorm1d, nn.Embedding, nn.Sequential]


class Gain(nn.Module):
    """A module with raw parameters of its own (one a scalar) and an integer buffer."""

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(4))
        self.scale = nn.Parameter(torch.ones(()))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))


def matrices(name, p, m):
    return p.dim() >= 2


def in_a_norm(name, p, m):
    return isinstance(m, (nn.LayerNorm, nn.BatchNorm1d))


@st.composite
def models(draw):
    kinds = draw(st.lists(st.sampled_from(sorted(KINDS)), min_size=1, max_size=6))
    model = nn.Sequential(*[KINDS[k]() for k in kinds])
    params = list(model.parameters())
    for p in params:                                   # some frozen tensors
        if draw(st.booleans()) and draw(st.booleans()):
            p.requires_grad_(False)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if len(linears) >= 2 and draw(st.booleans()):      # a tied weight
        linears[-1].weight = linears[0].weight
    return model


@st.composite
def filters(draw, model):
    names = [n for n, _ in model.named_parameters()]
    leaf = st.one_of(
        st.sampled_from(names).map(re.escape),                         # one name, as a regex
        st.sampled_from([r"bias$", r"weight", r"^0\.", r"\.1\.", r"gain", r"^$x"]),
        st.sampled_from(TYPES),
        st.lists(st.sampled_from(TYPES), min_size=1, max_size=2).map(tuple),
        st.sampled_from([matrices, in_a_norm]),
    )
    return draw(st.one_of(st.none(), leaf, st.lists(leaf, min_size=2, max_size=3)))


def picks(f, name, p, m) -> bool:
    """The filter semantics of the docs, read directly: regex (re.search on the full name),
    module type or tuple of types (of the owning module), callable, or a list (any of them)."""
    if isinstance(f, str):
        return re.search(f, name) is not None
    if isinstance(f, type):
        return isinstance(m, f)
    if isinstance(f, tuple):
        return any(isinstance(m, t) for t in f)
    if isinstance(f, list):
        return any(picks(g, name, p, m) for g in f)
    return f(name, p, m)


def owners(model):
    """(full name, tensor, owning module, attribute) for every distinct trainable float tensor,
    from a walk over each module's own parameters; tied tensors under their first name."""
    found, seen = {}, set()
    for prefix, module in model.named_modules():
        for attr, p in module.named_parameters(recurse=False):
            name = f"{prefix}.{attr}" if prefix else attr
            found[name] = (p, module, attr)
    out = []
    for name, p in model.named_parameters():           # registration order, ties once
        if id(p) in seen or not (p.requires_grad and p.is_floating_point()):
            continue
        seen.add(id(p))
        out.append((name, *found[name]))
    return out


@settings(max_examples=100)   # cheap: no model is run
@given(data=st.data())
def test_trainable_params_and_filters_match_a_brute_force_reading(data):
    model = data.draw(models(), label="model")
    include = data.draw(filters(model), label="params")
    exclude = data.draw(filters(model), label="exclude")
    specs = trainable_params(model)
    want = owners(model)
    assert [(s.name, s.attr) for s in specs] == [(n, a) for n, _, _, a in want]
    assert all(s.param is p and s.module is m for s, (_, p, m, _) in zip(specs, want))
    mask = select_params(specs, include, exclude)
    expected = [(include is None or picks(include, n, p, m))
                and not (exclude is not None and picks(exclude, n, p, m)) for n, p, m, _ in want]
    assert mask == expected


@given(include=st.sampled_from([None, nn.Linear, r"bias$", [r"^0\.", matrices], (nn.Linear,)]),
       exclude=st.sampled_from([None, r"^4\.", nn.BatchNorm1d, [r"weight", in_a_norm]]))
def test_gradinit_scales_exactly_the_selected_tensors(include, exclude):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 8),
                          nn.Tanh(), nn.Linear(8, 3))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    want = {n for n, p, m, _ in owners(model)
            if (include is None or picks(include, n, p, m))
            and not (exclude is not None and picks(exclude, n, p, m))
            and bool(p.detach().abs().sum() > 0)}            # zero tensors cannot be scaled
    if not want:                                            # nothing to scale: refused
        with pytest.raises(ValueError):
            initlab.gradinit(model, batches(3), steps=2, params=include, exclude=exclude)
        return
    report = initlab.gradinit(model, batches(3), steps=2, gamma=1e-3, params=include,
                              exclude=exclude)
    assert set(report.scales) == want
    for n, p in model.named_parameters():
        if n not in want:
            assert torch.equal(p, before[n]), n
        else:
            torch.testing.assert_close(p, before[n] * report.scales[n], rtol=1e-6, atol=0)
