"""Training protocols of the translation grid, registered in `initlab.lab.recipes`: every setting
of a run that is not one of the grid's axes (optimizer, learning rate, momentum, method, seed)
or the model's size.

The grid reads two kinds of keys: `seq2seq.<field>` (a `Seq2SeqConfig` field) and
`transformer.<field>` (a `TransformerConfig` field); the context is the cell's `optimizer`
("adam" or "sgd"). A recipe with no `seq2seq.` key is not a translation recipe.

- `lab-mt`: the lab's own protocol (the grid's default): Adam (0.9, 0.98) without weight decay,
  an inverse-sqrt schedule decaying from the reference's warmup length for every run, dropout 0.1
  everywhere, one tensor for the source and target embeddings and the output projection.
- `authors-mt`: the GradInit authors' IWSLT'14 script (Zhu et al., NeurIPS 2021;
  `fairseq/gradinit/launch/run_iwslt_14_gradinit_no_clipping.sh`, zhuchen03/gradinit @ 777c407)
  scaled to the run: Adam (0.9, 0.98) with weight decay 1e-4 taken from the weights as fairseq's
  Adam does (AdamW), no warmup, the rate decayed linearly to 0 over the run's updates (theirs:
  to 1e-9 over 100k), dropout 0.3 with attention and ReLU dropout 0.1, label smoothing 0.1, no
  gradient clipping, the decoder's input and output embeddings shared
  (`--share-decoder-input-output-embed`; the source embedding is its own). Batches: theirs are
  up to 4,096 tokens; the grid's are `--batch-size` sentences (32: about 600 source tokens).
  SGD cells (the paper's SGD script is not public) take SGD with momentum and the same decay,
  dropout and schedule, the weight decay as PyTorch's SGD applies it (in the gradient).

The reference method `warmup` adds linear warmup over the grid's `--warmup` updates to either
protocol (under `authors-mt` the rate then decays linearly from the peak to 0 at the last update).
"""
from __future__ import annotations

from typing import Any

from ..recipes import GRADINIT_CODE, Recipe, Variant, recipe, recipes, register_recipe

LAB_MT = register_recipe(Recipe(
    name="lab-mt",
    description="the translation lab's protocol: inverse-sqrt decay from the reference's warmup "
                "length, dropout 0.1, all embeddings shared",
    source="initlab",
    settings={
        "seq2seq.betas": [0.9, 0.98], "seq2seq.weight_decay": 0.0,
        "seq2seq.decoupled_weight_decay": False, "seq2seq.schedule": "inverse_sqrt",
        "seq2seq.label_smoothing": 0.1, "seq2seq.clip": None,
        "transformer.dropout": 0.1, "transformer.attention_dropout": None,
        "transformer.activation_dropout": None, "transformer.shared_embeddings": True,
        "transformer.tie_output": False,
    },
    notes=("batches of --batch-size sentences; warmup only for the `warmup` method",),
))

AUTHORS_MT = register_recipe(Recipe(
    name="authors-mt",
    description="the GradInit authors' IWSLT'14 Post-LN Transformer script (Zhu et al., "
                "NeurIPS 2021), scaled to the run",
    source=f"{GRADINIT_CODE}: fairseq/gradinit/launch/run_iwslt_14_gradinit_no_clipping.sh",
    settings={
        "seq2seq.betas": [0.9, 0.98], "seq2seq.weight_decay": 1e-4,
        "seq2seq.decoupled_weight_decay": True, "seq2seq.schedule": "linear",
        "seq2seq.label_smoothing": 0.1, "seq2seq.clip": None,
        "transformer.dropout": 0.3, "transformer.attention_dropout": 0.1,
        "transformer.activation_dropout": 0.1, "transformer.shared_embeddings": False,
        "transformer.tie_output": True,
    },
    variants=(Variant({"optimizer": "sgd"}, {"seq2seq.decoupled_weight_decay": False},
                      "SGD cells: weight decay in the gradient (the paper's SGD script is not "
                      "public)"),),
    notes=("Adam's weight decay as fairseq's Adam applies it: p -= lr * wd * p (AdamW)",
           "linear decay to 0 at the run's last update, from the first (theirs: to 1e-9 over "
           "100k updates, warmup of 1 update)",
           "batches of --batch-size sentences (theirs: up to 4,096 tokens)",
           "the decoder's input and output embeddings shared, the source embedding separate "
           "(--share-decoder-input-output-embed)"),
))


def mt_recipes() -> list[str]:
    """Names of the registered recipes the translation grid can run."""
    return [r.name for r in recipes() if any(k.startswith("seq2seq.") for k in r.settings)]


def mt_settings(name: str, optimizer: str) -> dict[str, Any]:
    """The recipe's settings for a cell of this optimizer: {"seq2seq": {...}, "transformer": {...}}."""
    try:
        resolved = recipe(name).resolve(optimizer=optimizer)
    except KeyError:
        resolved = {}
    if not any(k.startswith("seq2seq.") for k in resolved):
        raise ValueError(f"{name!r} is not a translation recipe; choose from "
                         f"{', '.join(mt_recipes())}")
    out: dict[str, dict[str, Any]] = {"seq2seq": {}, "transformer": {}}
    for key, value in resolved.items():
        kind, _, field = key.partition(".")
        if kind in out:
            out[kind][field] = tuple(value) if isinstance(value, list) else value
    return out
