"""Training protocols of the translation grid, by name: every setting of a run that is not one of
the grid's axes (optimizer, learning rate, momentum, method, seed) or the model's size.

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
protocol (then `authors-mt` decays linearly from the peak to 0 at the last update).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

GRADINIT_CODE = "github.com/zhuchen03/gradinit @ 777c407"


@dataclass(frozen=True)
class MTRecipe:
    name: str
    description: str
    source: str
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.0
    decoupled_weight_decay: bool = False   # Adam: fairseq's decay (AdamW); SGD: in the gradient
    schedule: str = "inverse_sqrt"         # "inverse_sqrt" (decay from the warmup length) or
    #                                        "linear" (to 0 at the last update)
    dropout: float = 0.1                   # embeddings and each sublayer's output
    attention_dropout: Optional[float] = None   # None: `dropout`
    activation_dropout: Optional[float] = None  # None: `dropout`
    label_smoothing: float = 0.1
    clip: Optional[float] = None           # gradient-norm clipping (None: off)
    shared_embeddings: bool = True         # source, target and output: one tensor
    tie_output: bool = False               # not shared: decoder input and output one tensor

    def settings(self) -> dict[str, Any]:
        """Every setting (what `grid.json` records)."""
        return asdict(self)


LAB_MT = MTRecipe(
    "lab-mt", "the lab's protocol: inverse-sqrt decay from the reference's warmup length, "
    "dropout 0.1, all embeddings shared", source="initlab")

AUTHORS_MT = MTRecipe(
    "authors-mt", "the GradInit authors' IWSLT'14 Post-LN Transformer script, scaled to the run",
    source=f"{GRADINIT_CODE}, fairseq/gradinit/launch/run_iwslt_14_gradinit_no_clipping.sh",
    weight_decay=1e-4, decoupled_weight_decay=True, schedule="linear", dropout=0.3,
    attention_dropout=0.1, activation_dropout=0.1, label_smoothing=0.1, clip=None,
    shared_embeddings=False, tie_output=True)

MT_RECIPES = {r.name: r for r in (LAB_MT, AUTHORS_MT)}


def mt_recipe(name: str) -> MTRecipe:
    if name not in MT_RECIPES:
        raise ValueError(f"unknown translation recipe {name!r}; choose from "
                         f"{', '.join(MT_RECIPES)}")
    return MT_RECIPES[name]
