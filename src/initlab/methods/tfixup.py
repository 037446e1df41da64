"""T-Fixup: initialize an encoder-decoder Transformer so it trains without warmup.

Huang, Perez, Ba & Volkovs, "Improving Transformer Optimization Through Better Initialization",
ICML 2020. With N_e encoder and N_d decoder layers and embedding dimension d:
- Xavier-uniform for every projection (q, k, v each on its own (d, d) block, attention output,
  feed-forward, any other Linear such as the output head); biases 0;
- input embeddings N(0, d^(-1/2)) (std), the padding row kept at 0;
- encoder layers: value, attention-output and both feed-forward weights x 0.67 * N_e^(-1/4);
- decoder layers: the same weights of the self- and cross-attention and feed-forward
  x (9 N_d)^(-1/4);
- encoder input embeddings x (9 N_e)^(-1/4), decoder input embeddings x (9 N_d)^(-1/4)
  (an embedding shared by both gets the decoder's factor, as in the paper's shared setting).

It works on `nn.Transformer` and on any model built from `nn.TransformerEncoderLayer` /
`nn.TransformerDecoderLayer` and `nn.Embedding`. Embeddings are told apart by name (`src`,
`source`, `enc`, `encoder` vs `tgt`, `trg`, `target`, `dec`, `decoder`) or by the
`encoder_embeddings=` / `decoder_embeddings=` settings; others (e.g. learned positions) are left
alone with a warning.

Where initlab departs from the authors' code, and why: the paper also removes LayerNorm, while
initlab only sets weights (the architecture is the user's); `nn.MultiheadAttention`'s packed
(3d, d) input projection gets Xavier on each (d, d) block, as separate q/k/v projections would.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from ..core.checks import integer, require
from ..core.finish import unchanged_on_error
from ..core.rules import Staged, draw, generator
from ..registry import register

log = logging.getLogger(__name__)

ENC_NAME = re.compile(r"(^|[._])(src|source|enc|encoder)")
DEC_NAME = re.compile(r"(^|[._])(tgt|trg|target|dec|decoder)")


@dataclass
class TFixupConfig:
    n_encoder: Optional[int] = None   # N_e; default: the model's TransformerEncoderLayer count
    n_decoder: Optional[int] = None   # N_d; default: its TransformerDecoderLayer count
    encoder_embeddings: Optional[list[str]] = None  # module names; default: matched by name
    decoder_embeddings: Optional[list[str]] = None
    seed: Optional[int] = None        # draws; None: torch's global generator


def encoder_factor(n_encoder: int) -> float:
    return 0.67 * n_encoder ** -0.25


def decoder_factor(n_decoder: int) -> float:
    return (9 * n_decoder) ** -0.25


def embedding_factor(n_layers: int) -> float:
    return (9 * n_layers) ** -0.25


def _xavier_attention(attn: nn.MultiheadAttention, plan: Staged,
                      gen: Optional[torch.Generator]) -> None:
    if attn.in_proj_weight is not None:  # (3d, d): q, k, v stacked; Xavier on each block
        blocks = [draw(b, torch.nn.init.xavier_uniform_, gen) for b in attn.in_proj_weight.chunk(3)]
        plan.set(attn.in_proj_weight, torch.cat(blocks))
    else:
        for w in (attn.q_proj_weight, attn.k_proj_weight, attn.v_proj_weight):
            plan.set(w, draw(w, torch.nn.init.xavier_uniform_, gen))
    plan.zero(attn.in_proj_bias)


def _scale_value_out(attn: nn.MultiheadAttention, plan: Staged, factor: float) -> None:
    if attn.in_proj_weight is not None:
        w = plan.get(attn.in_proj_weight).clone()
        d = w.shape[0] // 3
        w[2 * d:] *= factor                                   # rows of v in [q; k; v]
        plan.set(attn.in_proj_weight, w)
    else:
        plan.scale(attn.v_proj_weight, factor)
    plan.scale(attn.out_proj.weight, factor)


def _embedding_roles(model: nn.Module, cfg: TFixupConfig) -> dict[str, str]:
    embeddings = {n: m for n, m in model.named_modules() if isinstance(m, nn.Embedding)}
    roles: dict[str, str] = {}
    explicit = cfg.encoder_embeddings is not None or cfg.decoder_embeddings is not None
    for role, names in (("encoder", cfg.encoder_embeddings), ("decoder", cfg.decoder_embeddings)):
        for n in names or []:
            require(n in embeddings, f"{role}_embeddings names {n!r}, which is not an nn.Embedding "
                    f"of the model (embeddings: {', '.join(embeddings) or 'none'})")
            require(n not in roles, f"embedding {n!r} is named as both encoder and decoder")
            roles[n] = role
    if not explicit:
        for n in embeddings:
            enc, dec = bool(ENC_NAME.search(n)), bool(DEC_NAME.search(n))
            if enc != dec:
                roles[n] = "encoder" if enc else "decoder"
    left = [n for n in embeddings if n not in roles]
    if left:
        log.warning("tfixup: embeddings %s are neither encoder nor decoder inputs and keep their "
                    "values; pass encoder_embeddings=/decoder_embeddings= to include them",
                    ", ".join(left))
    return roles


@register("tfixup", config=TFixupConfig,
          description="Transformer init without warmup: Xavier, depth-scaled value/"
          "output/FFN weights and embeddings", paper="Huang, Perez, Ba & Volkovs, ICML 2020")
def tfixup(model: nn.Module, **settings: Any) -> None:
    """Initialize an encoder-decoder Transformer with T-Fixup, in place (model unchanged on error).

    Settings: fields of `TFixupConfig` (n_encoder, n_decoder, encoder_embeddings, ...).
    """
    cfg = TFixupConfig(**settings)
    enc = [m for m in model.modules() if isinstance(m, nn.TransformerEncoderLayer)]
    dec = [m for m in model.modules() if isinstance(m, nn.TransformerDecoderLayer)]
    require(bool(enc or dec), "tfixup needs nn.TransformerEncoderLayer / nn.TransformerDecoderLayer"
            " modules (nn.Transformer, or a model built from those layers); found none")
    n_e = len(enc) if cfg.n_encoder is None else cfg.n_encoder
    n_d = len(dec) if cfg.n_decoder is None else cfg.n_decoder
    if enc or cfg.n_encoder is not None:
        integer("n_encoder", n_e)
    if dec or cfg.n_decoder is not None:
        integer("n_decoder", n_d)
    roles = _embedding_roles(model, cfg)
    require(n_e >= 1 or "encoder" not in roles.values(), "an encoder embedding needs N_e >= 1: "
            "the model has no TransformerEncoderLayer; pass n_encoder=")
    gen, plan = generator(cfg.seed), Staged()
    with unchanged_on_error("tfixup"):
        embedding_weights = {id(model.get_submodule(n).weight) for n in roles}
        for m in model.modules():
            if isinstance(m, nn.MultiheadAttention):
                _xavier_attention(m, plan, gen)
            elif isinstance(m, nn.Linear) and id(m.weight) not in embedding_weights:
                plan.set(m.weight, draw(m.weight, torch.nn.init.xavier_uniform_, gen))
                plan.zero(m.bias)
        for layer in enc:
            _scale_value_out(layer.self_attn, plan, encoder_factor(n_e))
            for lin in (layer.linear1, layer.linear2):
                plan.scale(lin.weight, encoder_factor(n_e))
        for layer in dec:
            for attn in (layer.self_attn, layer.multihead_attn):
                _scale_value_out(attn, plan, decoder_factor(n_d))
            for lin in (layer.linear1, layer.linear2):
                plan.scale(lin.weight, decoder_factor(n_d))
        by_weight: dict[int, tuple[nn.Embedding, set[str]]] = {}
        for n, role in roles.items():
            emb = model.get_submodule(n)
            by_weight.setdefault(id(emb.weight), (emb, set()))[1].add(role)
        for emb, found in by_weight.values():
            w = draw(emb.weight, torch.nn.init.normal_, gen, std=emb.embedding_dim ** -0.5)
            if emb.padding_idx is not None:
                w[emb.padding_idx] = 0
            shared = "decoder" in found   # a shared embedding takes the decoder's factor
            plan.set(emb.weight, w * embedding_factor(n_d if shared else n_e))
        plan.commit("tfixup")
    log.info("tfixup: N_e=%d, N_d=%d, %d embeddings", n_e, n_d, len(by_weight))
    return None
