"""DeepNet (DeepNorm): an up-weighted residual and down-scaled branch weights, from the depths.

Wang, Ma, Dong, Huang, Zhang & Wei, "DeepNet: Scaling Transformers to 1,000 Layers", 2022
(arXiv 2203.00555), Fig. 2 and Table 1. Each Post-LN sublayer computes

    x_{l+1} = LN(alpha * x_l + G_l(x_l)),

and the branch weights are drawn Xavier-normal with gain beta for the feed-forward layers and
the attention's value and output projections, gain 1 for its query and key projections.
With N encoder and M decoder layers:

    encoder-decoder:  encoder alpha = 0.81 (N^4 M)^(1/16),  beta = 0.87 (N^4 M)^(-1/16)
                      decoder alpha = (3M)^(1/4),           beta = (12M)^(-1/4)
    encoder-only:     alpha = (2N)^(1/4),  beta = (8N)^(-1/4)
    decoder-only:     alpha = (2M)^(1/4),  beta = (8M)^(-1/4)

The model exposes its sums as `initlab.ResidualSum(branch=..., stack=...)` modules (see
`core.residual`; the lab's Transformer layers have them). The shape comes from the stacks
present; N and M count the `nn.TransformerEncoderLayer` / `nn.TransformerDecoderLayer` modules
holding the sums, or are given (`n_encoder=`, `n_decoder=`). In each sum's branch, an
`nn.MultiheadAttention` gets q, k at gain 1 and v, out at gain beta (a packed (3d, d) input
projection is drawn block by block, as the authors' separate projections are), every other
Linear gain beta; biases, embeddings, LayerNorms and the output layer keep their values.
No departure from the paper.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from ..core.checks import integer, require
from ..core.finish import finish, plain_settings, unchanged_on_error
from ..core.report import ResidualReport
from ..core.residual import NO_SUMS, SumSite, pre_ln_layers, residual_sums
from ..core.rules import Staged, draw, generator
from ..registry import register

log = logging.getLogger(__name__)


@dataclass
class DeepNetConfig:
    n_encoder: Optional[int] = None   # N; default: encoder layers holding residual sums
    n_decoder: Optional[int] = None   # M; default: decoder layers holding residual sums
    seed: Optional[int] = None        # draws; None: torch's global generator


@dataclass(frozen=True)
class DeepNorm:
    alpha: float   # the residual multiplier
    beta: float    # the Xavier gain of the FFN and value/output projections


def deepnorm_constants(n_encoder: int = 0, n_decoder: int = 0) -> dict[str, DeepNorm]:
    """alpha and beta per stack present (a depth of 0: no such stack), the paper's Table 1."""
    if n_encoder and n_decoder:
        n4m = n_encoder ** 4 * n_decoder
        return {"encoder": DeepNorm(0.81 * n4m ** (1 / 16), 0.87 * n4m ** (-1 / 16)),
                "decoder": DeepNorm((3 * n_decoder) ** 0.25, (12 * n_decoder) ** -0.25)}
    depth, stack = (n_encoder, "encoder") if n_encoder else (n_decoder, "decoder")
    require(depth >= 1, "deepnet needs at least one encoder or decoder layer")
    return {stack: DeepNorm((2 * depth) ** 0.25, (8 * depth) ** -0.25)}


def _depths(sites: list[SumSite], cfg: DeepNetConfig) -> dict[str, int]:
    depths = {}
    for stack in ("encoder", "decoder"):
        given = getattr(cfg, f"n_{stack}")
        ours = [s for s in sites if s.stack == stack]
        if given is not None:
            integer(f"n_{stack}", given)
            depths[stack] = given
        elif ours:
            require(all(s.layer for s in ours), f"deepnet cannot count the {stack} layers: some "
                    f"of its residual sums are not inside an nn.Transformer{stack.title()}Layer; "
                    f"pass n_{stack}=<number of {stack} layers>")
            depths[stack] = len({s.layer[0] for s in ours if s.layer})
    return depths


def _stage_branch(branch: tuple[nn.Module, ...], beta: float, plan: Staged,
                  gen: Optional[torch.Generator]) -> int:
    """Stage Xavier-normal draws for one sum's branch; returns how many tensors it drew."""
    def xavier(w: torch.Tensor, gain: float) -> torch.Tensor:
        return draw(w, nn.init.xavier_normal_, gen, gain=gain)

    done: set[int] = set()
    count = 0
    for top in branch:
        for m in top.modules():
            if isinstance(m, nn.MultiheadAttention):
                if m.in_proj_weight is not None:   # (3d, d): [q; k; v], each its own Xavier
                    q, k, v = m.in_proj_weight.chunk(3)
                    plan.set(m.in_proj_weight, torch.cat([xavier(q, 1.0), xavier(k, 1.0),
                                                          xavier(v, beta)]))
                else:
                    for w, gain in ((m.q_proj_weight, 1.0), (m.k_proj_weight, 1.0),
                                    (m.v_proj_weight, beta)):
                        plan.set(w, xavier(w, gain))
                plan.set(m.out_proj.weight, xavier(m.out_proj.weight, beta))
                done.add(id(m.out_proj))
                count += 2
            elif isinstance(m, nn.Linear) and id(m) not in done:
                plan.set(m.weight, xavier(m.weight, beta))
                count += 1
    return count


@register("deepnet", description="DeepNorm: residual multiplier alpha and Xavier gain beta "
          "from the depths (Post-LN)", paper="Wang, Ma, Dong, Huang, Zhang & Wei, 2022",
          config=DeepNetConfig)
def deepnet(model: nn.Module, **settings: Any) -> ResidualReport:
    """Set every `ResidualSum`'s multiplier to alpha and re-draw its branch's weights with
    gain beta, in place. The model is unchanged on error."""
    cfg = DeepNetConfig(**settings)
    sites = residual_sums(model)
    if not sites:
        raise ValueError(NO_SUMS.format(method="deepnet"))
    pre = pre_ln_layers(sites)
    require(not pre, f"deepnet is for Post-LN Transformers; these layers normalize first "
            f"(Pre-LN): {', '.join(pre)}")
    loose = [s.name for s in sites if s.stack is None]
    require(not loose, f"deepnet needs each residual sum's stack; {', '.join(loose)} have none: "
            "build them as ResidualSum(branch=..., stack='encoder' or 'decoder')")
    bare = [s.name for s in sites if not s.sum.branch]
    require(not bare, f"deepnet re-draws each branch's weights, and {', '.join(bare)} name no "
            "branch: build them as ResidualSum(branch=<the sublayer's module(s)>, ...)")
    depths = _depths(sites, cfg)
    constants = deepnorm_constants(depths.get("encoder", 0), depths.get("decoder", 0))
    gen, plan = generator(cfg.seed), Staged()
    with unchanged_on_error("deepnet"):
        for s in sites:
            c = constants[s.stack]
            plan.set(s.sum.multiplier, torch.full_like(s.sum.multiplier, c.alpha))
            require(_stage_branch(s.sum.branch, c.beta, plan, gen) > 0, f"deepnet: the branch "
                    f"of {s.name} holds no Linear or MultiheadAttention to re-draw")
        plan.commit("deepnet")
    log.info("deepnet: %s", ", ".join(f"{k} (N={depths[k]}) alpha={c.alpha:.4g} beta={c.beta:.4g}"
                                      for k, c in constants.items()))
    history = [dict(sum=s.name, stack=s.stack, multiplier=constants[s.stack].alpha,
                    gain=constants[s.stack].beta, layers=depths[s.stack]) for s in sites]
    return finish(model, "deepnet", settings=plain_settings(cfg), history=history,
                  report=ResidualReport)
