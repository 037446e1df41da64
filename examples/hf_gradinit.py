"""GradInit on a Hugging Face model built from a config: a tiny GPT-2 (or LLaMA / BERT),
character-level, trained with Adam and no warmup, against the same model without GradInit.

    pip install 'initlab[hf]'            # transformers, with your torch pinned
    python examples/hf_gradinit.py --model gpt2 --steps 30 --train-steps 200

Text: any file (--text), by default this repository's README (no download). The batches are
dicts with `labels`, so GradInit and training both use the model's own `.loss`; the tied input and
output embeddings are one tensor and get one scale.
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
import transformers

import initlab
from initlab.integrations.hf import causal_lm_batches, masked_lm_batches, tied_parameter_names, token_stream


def build(kind: str, vocab: int, seq_len: int, width: int, layers: int) -> torch.nn.Module:
    if kind == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=seq_len, n_embd=width,
                                      n_layer=layers, n_head=4, bos_token_id=0, eos_token_id=0)
        return transformers.AutoModelForCausalLM.from_config(cfg)
    if kind == "llama":
        cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=width, intermediate_size=4 * width,
                                       num_hidden_layers=layers, num_attention_heads=4,
                                       num_key_value_heads=2, max_position_embeddings=seq_len,
                                       tie_word_embeddings=True, bos_token_id=0, eos_token_id=0)
        return transformers.AutoModelForCausalLM.from_config(cfg)
    cfg = transformers.BertConfig(vocab_size=vocab + 1, hidden_size=width, num_hidden_layers=layers,
                                  num_attention_heads=4, intermediate_size=4 * width,
                                  max_position_embeddings=seq_len)
    return transformers.BertForMaskedLM(cfg)


def train(model: torch.nn.Module, batches: list[dict], steps: int, lr: float) -> list[float]:
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)  # no warmup, as in the paper's study
    losses = []
    for step in range(steps):
        loss = model(**batches[step % len(batches)]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=("gpt2", "llama", "bert"), default="gpt2")
    ap.add_argument("--text", default=str(Path(__file__).resolve().parents[1] / "README.md"))
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30, help="GradInit iterations")
    ap.add_argument("--train-steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam lr (training and GradInit's target)")
    a = ap.parse_args()

    ids, vocab = token_stream(Path(a.text).read_text(encoding="utf-8"))
    if a.model == "bert":  # one extra id for [MASK]
        batches = masked_lm_batches(ids, a.seq_len, a.batch_size, mask_token_id=len(vocab),
                                    vocab_size=len(vocab))
    else:
        batches = causal_lm_batches(ids, a.seq_len, a.batch_size)
    torch.manual_seed(0)
    base = build(a.model, len(vocab), a.seq_len, a.width, a.layers)
    print(f"{a.model}: {sum(p.numel() for p in base.parameters()):,} parameters, {len(vocab)} "
          f"characters, {len(batches)} batches; tied: {tied_parameter_names(base)}")

    model = copy.deepcopy(base)
    start = time.perf_counter()
    recipe = dict(initlab.TRANSFORMER_RECIPE, lr=a.lr, steps=a.steps)
    report = initlab.gradinit(model, batches, **recipe)
    print(f"GradInit: {time.perf_counter() - start:.1f} s\n{report.summary()}")
    for name, init in (("default init", base), ("GradInit", model)):
        losses = train(init, batches, a.train_steps, a.lr)
        k = max(1, len(losses) // 10)
        print(f"{name:>12}: training loss first {sum(losses[:k]) / k:.3f}, "
              f"last {sum(losses[-k:]) / k:.3f} (means over {k} steps)")


if __name__ == "__main__":
    main()
