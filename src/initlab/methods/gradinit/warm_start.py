"""The default search's warm start: each layer's scale from one forward pass (scales only).

In forward order, every Linear and Conv layer gets the scale 1/r that brings its output to unit
root-mean-square (r its RMS) on one batch (Mishkin & Matas' LSUV target, ICLR 2016, reached here with
GradInit's parametrization p = alpha * w: nothing is redrawn or orthogonalized). One forward pass
does it exactly: a forward hook measures r on the layer's first call and hands the rescaled
output on, so each layer is measured with every earlier layer already rescaled, as sequential
LSUV would. The output of Z = W x + b is Z / r when both W and b get the scale 1/r; when b is
not scaled (excluded by the user), the weight's scale s solves RMS(s (Z - b) + b) = 1 (a
quadratic; 1 / RMS(Z) when no positive root exists).

A layer in a post-normalized residual branch (`branches.py`: it feeds one side of an addition
whose two sides share an origin and whose sum goes straight into a normalization, as `f` in
`LN(x + f(x))`) is only shrunk, never grown: unit RMS would make the branch as large as the
normalized stream it joins.

Layers taken: modules of exactly these types' forward (subclasses that keep it), whose weight is
a selected, non-zero tensor that no other module holds (a tied weight is left to the search).
Scales are clamped to the floors and caps. Under torch.distributed each layer's r is the root
mean square over the union of the ranks' batches (one all-reduce per layer, in forward order).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
from torch import nn

from ...core.distributed import Ranks, RemoteRankError
from ...core.loss import LossFn, Substituted
from ...core.params import ParamSpec
from .branches import residual_branch_layers

LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
FORWARDS = {t.forward for t in LAYERS}

STATS = 4  # per layer: sums of moved^2, moved * kept, kept^2, and the count
Reduce = Callable[[torch.Tensor], torch.Tensor]  # STATS sums -> the same, over the ranks


Layer = tuple[nn.Module, int, Optional[int], bool]


def layers(model: nn.Module, specs: list[ParamSpec], scaled: torch.Tensor) -> list[Layer]:
    """(module, weight index, bias index or None, whether the bias gets the scale too) of every
    layer the warm start rescales."""
    holders: dict[int, int] = {}
    for m in model.modules():
        for p in m._parameters.values():
            if p is not None:
                holders[id(p)] = holders.get(id(p), 0) + 1
    index = {id(s.param): i for i, s in enumerate(specs)}
    out = []
    for m in model.modules():
        if not isinstance(m, LAYERS) or type(m).forward not in FORWARDS:
            continue
        w = m._parameters.get("weight")
        if w is None or id(w) not in index or holders[id(w)] != 1 or not scaled[index[id(w)]]:
            continue
        b = m._parameters.get("bias")
        bi = index.get(id(b)) if b is not None else None
        out.append((m, index[id(w)], bi, bi is not None and bool(scaled[bi])))
    return out


def warm_start(model: nn.Module, specs: list[ParamSpec], w0: list[torch.Tensor],
               scaled: torch.Tensor, loss_fn: LossFn, batch: Any, floors: torch.Tensor,
               caps: torch.Tensor, ranks: Optional[Ranks] = None) -> tuple[torch.Tensor, list[str]]:
    """Scales (float64, one per tensor; 1 where untouched) bringing each layer's output to unit
    RMS on `batch` (never above 1 in a post-normalized residual branch), and the names of the
    layers found in such branches. Call it in `search_mode(model)`."""
    alpha = torch.ones(len(specs), dtype=torch.float64)
    chosen = layers(model, specs, scaled)
    names = [s.name for s in specs]
    forward = lambda: loss_fn(Substituted(model, dict(zip(names, w0))), batch)  # noqa: E731
    grows: dict[int, bool] = {}  # module -> whether its scale may exceed 1 (not in a branch)

    todo = {id(m): (wi, bi, with_bias) for m, wi, bi, with_bias in chosen}
    done: dict[int, tuple[float, float]] = {}  # module -> (weight scale, bias scale)
    reduce = _reducer(ranks)
    f64 = dict(dtype=torch.float64)

    def hook(module: nn.Module, inputs: Any, out: Any) -> Any:
        if not isinstance(out, torch.Tensor) or id(module) not in todo:
            return None
        wi, bi, with_bias = todo[id(module)]
        b = None
        if module.bias is not None:  # Z = W x + b, with b broadcast like the output
            b = w0[bi] if bi is not None else module.bias.detach()
            b = b.view(-1) if isinstance(module, nn.Linear) else b.view(-1, *[1] * (out.dim() - 2))
        if id(module) not in done:  # the first call measures; later calls reuse the scales
            # the output as s * moved + kept: the bias is kept when it does not share the scale
            kept_bias = b is not None and not with_bias
            moved = (out - b if kept_bias else out).double()
            kept = b.double().expand_as(moved) if kept_bias else torch.zeros_like(moved)
            A, B, C, n = reduce(torch.stack([moved.square().sum(), (moved * kept).sum(),
                                             kept.square().sum(), torch.tensor(float(moved.numel()), **f64)]))
            A, B, C = A / n.clamp_min(1), B / n.clamp_min(1), C / n.clamp_min(1)
            disc = B * B + A * (1 - C)  # RMS(s * moved + kept) = 1:  A s^2 + 2 B s + C = 1
            s = ((-B + disc.sqrt()) / A).item() if A > 0 and disc >= 0 else math.nan
            if not (math.isfinite(s) and s > 0):  # unreachable with the kept bias: 1 / RMS
                total = (A + 2 * B + C).item()
                s = 1 / math.sqrt(total) if total > 0 and math.isfinite(total) else 1.0
            if not grows[id(module)]:  # a post-normalized branch: shrink to unit RMS, never grow
                s = min(s, 1.0)
            sw = float(torch.tensor(s, **f64).clamp(floors[wi], caps[wi]))
            sb = float(torch.tensor(s, **f64).clamp(floors[bi], caps[bi])) if with_bias else 1.0
            done[id(module)] = (sw, sb)
            alpha[wi] = sw
            if with_bias:
                alpha[bi] = sb
        sw, sb = done[id(module)]
        return out * sw if b is None else (out - b) * sw + b * sb

    handles: list = []

    def passes() -> None:  # the residual branches, then the scales (in the hooks)
        in_branch = residual_branch_layers([m for m, _, _, _ in chosen], forward, batch)
        grows.update({id(m): i not in in_branch for i, (m, _, _, _) in enumerate(chosen)})
        handles.extend(m.register_forward_hook(hook) for m, _, _, _ in chosen)
        forward()

    try:
        with torch.no_grad():
            if ranks is None:
                passes()
            else:
                _collective(ranks, passes)
    finally:
        for h in handles:
            h.remove()
    names_of = {id(m): n for n, m in model.named_modules()}
    return alpha, [names_of[id(m)] for m, _, _, _ in chosen if not grows.get(id(m), True)]


def _reducer(ranks: Optional[Ranks]) -> Reduce:
    if ranks is None:
        return lambda stats: stats
    return lambda stats: ranks.average([stats.to(ranks.device)], [stats.to(ranks.device)], None,
                                       "warm start")[0].cpu()


def _collective(ranks: Ranks, forward: Callable[[], Any]) -> None:
    """Run the forward whose hooks all-reduce per layer, then one closing all-reduce of the same
    shape: a rank that failed sends its failure flag there, which meets the others wherever they
    wait (a layer's all-reduce or the closing one), and every rank raises."""
    _, error = ranks.attempt(forward)
    if isinstance(error, RemoteRankError):  # another rank failed; every rank already knows
        raise error
    like = torch.zeros(STATS, dtype=torch.float64, device=ranks.device)
    ranks.average(None if error is not None else [like], [like], error, "warm start")
