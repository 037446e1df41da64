"""GradInit on tiny Hugging Face models built from config objects (no hub download): GPT-2 and
LLaMA-style causal LMs and BERT, dict batches and the model's own .loss, tied embeddings scaled
once; the batch helpers against their definitions."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import transformers  # the `hf` extra; `make test` installs it

import initlab
from helpers.dist_workers import one_thread
from initlab.integrations.hf import causal_lm_batches, masked_lm_batches, tied_parameter_names, token_stream

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)

V, T = 40, 12  # vocabulary, sequence length
IDS = torch.randint(0, V, (2000,), generator=torch.Generator().manual_seed(0))


def gpt2():
    cfg = transformers.GPT2Config(vocab_size=V, n_positions=T, n_embd=16, n_layer=2, n_head=2,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.AutoModelForCausalLM.from_config(cfg), ("transformer.wte.weight", "lm_head.weight")


def llama():
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=32,
                                   num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                   max_position_embeddings=T, tie_word_embeddings=True,
                                   bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return transformers.AutoModelForCausalLM.from_config(cfg), ("model.embed_tokens.weight", "lm_head.weight")


def bert():
    cfg = transformers.BertConfig(vocab_size=V, hidden_size=16, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=32,
                                  max_position_embeddings=T, pad_token_id=0)
    return (transformers.BertForMaskedLM(cfg),
            ("bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight"))


# gamma: about the first L1 gradient norm, so that both branches occur.
@pytest.mark.parametrize("build,gamma", [(gpt2, 32.0), (llama, 18.0), (bert, 33.0)])
def test_gradinit_scales_tied_embeddings_once(build, gamma):
    torch.manual_seed(0)
    model, (emb, head) = build()
    assert [emb, head] in tied_parameter_names(model)
    if build is bert:
        batches = masked_lm_batches(IDS, T, 4, mask_token_id=1, vocab_size=V, mask_prob=0.3)
    else:
        batches = causal_lm_batches(IDS, T, 4)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # Constraint steps need a double backward through the attention.
    report = initlab.gradinit(model, batches, target="adam", lr=1e-3, gamma=gamma, steps=6,
                              scale_lr=0.05, betas=(0.9, 0.98), faithful=True)
    assert {h["branch"] for h in report.history} == {"constraint", "objective"}
    assert head not in report.scales and emb in report.scales
    params = dict(model.named_parameters(remove_duplicate=False))
    assert params[head] is params[emb]  # still one tensor
    for name, w0 in before.items():  # every tensor is its start times its one scale
        torch.testing.assert_close(params[name].detach(), w0 * report.scales.get(name, 1.0))
    assert report.scales[emb] != pytest.approx(1.0, abs=1e-4)  # really scaled


def test_dict_batches_and_the_models_own_loss():
    """The first recorded loss is the causal-LM loss on S = B0 u B1, computed by hand."""
    torch.manual_seed(0)
    model, _ = gpt2()
    batches = causal_lm_batches(IDS, T, 4)
    report = initlab.gradinit(model, batches, steps=1, target="adam", lr=1e-3, gamma=1e9,
                              faithful=True)
    torch.manual_seed(0)
    fresh, _ = gpt2()
    fresh.eval()
    ids = torch.cat([batches[0]["input_ids"], batches[1]["input_ids"]])
    with torch.no_grad():
        logits = fresh(input_ids=ids).logits
    want = F.cross_entropy(logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1))
    assert report.history[0]["loss"] == pytest.approx(want.item(), rel=1e-5)


def test_batch_helpers():
    b = causal_lm_batches(torch.arange(100), seq_len=5, batch_size=3)
    assert len(b) == 6 and b[0]["input_ids"].shape == (3, 5)
    assert torch.equal(b[1]["input_ids"][0], torch.arange(15, 20))
    assert torch.equal(b[0]["labels"], b[0]["input_ids"]) and b[0]["attention_mask"].all()
    ids = torch.randint(2, 50, (60_000,), generator=torch.Generator().manual_seed(1))
    m = masked_lm_batches(ids, 20, 50, mask_token_id=1, vocab_size=50, mask_prob=0.15,
                          special_ids=(2,))
    orig = torch.cat([x["input_ids"] for x in causal_lm_batches(ids, 20, 50)])
    inp, lab = torch.cat([x["input_ids"] for x in m]), torch.cat([x["labels"] for x in m])
    chosen = lab != -100
    assert torch.equal(lab[chosen], orig[chosen]) and torch.equal(inp[~chosen], orig[~chosen])
    assert not chosen[orig == 2].any()
    frac = chosen.float().mean().item()
    assert frac == pytest.approx(0.15 * (orig != 2).float().mean().item(), abs=0.005)
    masked = (inp[chosen] == 1).float().mean().item()
    kept = (inp[chosen] == orig[chosen]).float().mean().item()
    assert masked == pytest.approx(0.8, abs=0.02)
    assert kept == pytest.approx(0.1 + 0.1 / 50, abs=0.02)  # 10% kept + random hits itself
    tokens, vocab = token_stream("abca")
    assert tokens.tolist() == [0, 1, 2, 0] and vocab == {"a": 0, "b": 1, "c": 2}
