"""Hugging Face transformers models: batches in their dict format, and the tied tensors GradInit
scales once. These helpers use torch alone (the extra `initlab[hf]` only builds the models).

    model = AutoModelForCausalLM.from_config(config)           # GPT-2, LLaMA, ... or BertForMaskedLM
    batches = causal_lm_batches(token_ids, seq_len=128, batch_size=16)
    initlab.gradinit(model, batches, **initlab.TRANSFORMER_RECIPE)   # model(**batch).loss

Contract:
- A batch is a dict of (batch, seq_len) tensors passed to the model as keyword arguments, with
  `labels`, so the model's own `.loss` is the objective (causal LM: the model shifts the labels;
  masked LM: -100 marks the positions without a loss). Equal-length blocks concatenate, so
  GradInit's S = B0 u B1 works as for images.
- Tied input/output embeddings (GPT-2, BERT, LLaMA with `tie_word_embeddings=True`) are one
  tensor: `named_parameters()` lists it once, so it gets one scale and is written once;
  `tied_parameter_names` shows the groups.
- Under torch.distributed, a mean over tokens equals the mean of per-rank means only when every
  rank's batches hold as many loss tokens: fixed-length causal-LM blocks do; randomly masked
  batches only approximately.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn


def _blocks(token_ids: torch.Tensor, seq_len: int) -> torch.Tensor:
    """A 1-D token stream cut into (n_blocks, seq_len) rows; rows of a 2-D tensor kept as is."""
    ids = torch.as_tensor(token_ids)
    if ids.dim() == 1:
        n = ids.numel() // seq_len
        if n < 1:
            raise ValueError(f"{ids.numel()} tokens do not fill one block of seq_len={seq_len}")
        return ids[: n * seq_len].view(n, seq_len)
    if ids.dim() != 2:
        raise ValueError(f"token_ids must be 1-D (a stream) or 2-D (blocks), got shape {tuple(ids.shape)}")
    return ids


def causal_lm_batches(token_ids: torch.Tensor, seq_len: int, batch_size: int) -> list[dict]:
    """Dict batches {input_ids, attention_mask, labels} of shape (batch_size, seq_len) for a
    causal LM; labels = input_ids (the model shifts them). A partial last batch is dropped."""
    blocks = _blocks(token_ids, seq_len).long()
    n = len(blocks) // batch_size
    if n < 1:
        raise ValueError(f"{len(blocks)} blocks do not fill one batch of {batch_size}")
    return [{"input_ids": b, "attention_mask": torch.ones_like(b), "labels": b.clone()}
            for b in blocks[: n * batch_size].split(batch_size)]


def masked_lm_batches(token_ids: torch.Tensor, seq_len: int, batch_size: int, *,
                      mask_token_id: int, vocab_size: int, mask_prob: float = 0.15,
                      special_ids: tuple[int, ...] = (), seed: int = 0) -> list[dict]:
    """BERT's masked-LM batches (Devlin et al. 2019): each token other than `special_ids` is
    chosen with probability `mask_prob`; a chosen token becomes [MASK] 80% of the time, a random
    token 10%, itself 10%; labels hold the original token where chosen and -100 elsewhere."""
    if not 0 < mask_prob < 1:
        raise ValueError(f"mask_prob must lie in (0, 1), got {mask_prob}")
    g = torch.Generator().manual_seed(seed)
    batches = []
    for b in causal_lm_batches(token_ids, seq_len, batch_size):
        ids = b["input_ids"]
        u = torch.rand(ids.shape, generator=g)  # chosen where u < p; then split by u / p
        chosen = u < mask_prob
        for s in special_ids:
            chosen &= ids != s
        r = u / mask_prob
        inputs = torch.where(chosen & (r < 0.8), torch.full_like(ids, mask_token_id), ids)
        random_ids = torch.randint(0, vocab_size, ids.shape, generator=g)
        inputs = torch.where(chosen & (r >= 0.8) & (r < 0.9), random_ids, inputs)
        batches.append({"input_ids": inputs, "attention_mask": b["attention_mask"],
                        "labels": torch.where(chosen, ids, torch.full_like(ids, -100))})
    return batches


def tied_parameter_names(model: nn.Module) -> list[list[str]]:
    """Groups of parameter names that share one tensor (e.g. [['transformer.wte.weight',
    'lm_head.weight']]); GradInit scales each group once, under its first name."""
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def token_stream(text: str, vocab: Optional[dict[str, int]] = None) -> tuple[torch.Tensor, dict[str, int]]:
    """Character-level token ids of `text` (for examples and tests without a tokenizer download)."""
    vocab = vocab if vocab is not None else {c: i for i, c in enumerate(sorted(set(text)))}
    return torch.tensor([vocab[c] for c in text], dtype=torch.long), vocab
