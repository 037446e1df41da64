"""AutoInit: analytic, signal-preserving weight initialization from the model's graph.

Bingham & Miikkulainen, "AutoInit: Analytic Signal-Preserving Weight Initialization for Neural
Networks", AAAI 2023 (arXiv 2109.08958). The model is traced with `torch.fx`; the (mean,
variance) of the signal is propagated node by node from the input's, and each weighted layer
(Linear, Conv1d/2d/3d incl. grouped and depthwise, Embedding) gets

    Var(W) = sigma^2 / (fan_in * (var_in + mean_in^2)),   bias 0     (Embedding: Var = sigma^2)

so its output has mean 0 and variance sigma^2. How each operation changes the moments is in
`autoinit_ops.py`, `autoinit_layers.py`, `autoinit_pooling.py`; users can register maps for
their own operations (`autoinit_maps.py`).

Where initlab departs from the paper (whose code is TensorFlow-only; ours is written from the
formulas), and why:
- A third statistic, the variance shared across positions, makes global average pooling come
  out right (see `autoinit_maps.py`); zero padding of convolutions is counted.
- Statistics are kept per channel where the channel dim can be followed (each output unit of
  a layer has its own mean and gain; a ReLU turns their differences into channel offsets), and
  with each channel's spatial correlation over nearby positions (`autoinit_spatial.py`).
- Downstream statistics use the weights actually drawn, not their expectation, so a layer
  corrects the sampling error of the layers before it.
- Besides the paper's i.i.d. normal (default) and uniform weights, `distribution="orthogonal"`
  / `"delta-orthogonal"` and `centered=True` draw weights whose realized gain fluctuates less
  (`autoinit_draws.py`; measured in RESULTS.md).
- With `centered`, `covariance_limit=N` carries the full covariance of every map of at most N
  elements per sample (`autoinit_gauss.py`), and the rescale uses it: exact for Gaussian
  signals, it stops the slow drift of deep plain CNNs on small maps. Off by default (it costs
  O(N^2) memory and O(N^2 * taps) time per layer; a 30-layer CNN on 16x16 maps at N = 8192
  takes about 90 s instead of 2 s on two CPU cores).
- Statistics follow the model's current mode: dropout and batch statistics as in training
  when the model is in `train()` mode (PyTorch's default for a new model).
Unknown operations pass the statistics of their first input through, with a warning naming
them. Nothing is written to the model until every layer has been computed.
"""
from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import torch
from torch import fx, nn

from ..core.checks import integer, positive, require
from ..core.finish import finish, plain_settings, unchanged_on_error
from ..core.graph import LeafSpec, module_of, op_name, tensor_shapes, trace
from ..core.modes import search_mode
from ..core.report import InitReport, VarianceReport
from ..core.rules import LAYERS, Staged, generator
from ..registry import register
from . import (  # noqa: F401  (register maps)
    autoinit_attention,
    autoinit_layers,
    autoinit_ops,
    autoinit_pooling,
)
from .autoinit_draws import DISTRIBUTIONS, draw
from .autoinit_gauss import Joint
from .autoinit_maps import (
    CHANNEL_MAPS,
    MODULE_MAPS,
    MapContext,
    Moments,
    constant,
    find_map,
    moments,
)

log = logging.getLogger(__name__)

MAX_SAMPLES = 256  # samples whose statistics are propagated separately (see autoinit_layers)
MIN_CENTERED = 0.1  # least share of sigma^2 a centered weight must pass on (`_Layers.centering_lost`)


@dataclass
class AutoInitConfig:
    signal_variance: float = 1.0          # sigma^2: every weighted layer's output variance
    input_moments: Any = "standard"       # "standard": (0, 1); "measure": from example_input;
    #                                       or (mean, variance)
    distribution: str = "normal"          # "normal" (the paper's), "uniform", "orthogonal" or
    #                                       "delta-orthogonal": same mean square; see autoinit_draws
    leaf_modules: Sequence[LeafSpec] = ()  # module types / names not traced into
    quadrature_points: int = 128          # Gauss-Hermite nodes for elementwise functions
    mc_samples: int = 4096                # Monte Carlo draws (per sample) for pooling, softmax
    seed: Optional[int] = None            # weight draws and Monte Carlo; None: torch's generator
    centered: bool = False                # each unit's weights sum to 0 (no input mean passed on)
    covariance_limit: int = 0             # with centered: maps of at most this many elements per
    #                                       sample carry their full covariance (autoinit_gauss);
    #                                       0: off. 8192 for deep plain CNNs on small maps

    def validate(self) -> None:
        positive("signal_variance", self.signal_variance)
        require(self.distribution in DISTRIBUTIONS, f"distribution must be one of "
                f"{', '.join(map(repr, DISTRIBUTIONS))}, got {self.distribution!r}")
        ok = self.input_moments in ("standard", "measure") or (
            isinstance(self.input_moments, (tuple, list)) and len(self.input_moments) == 2
            and float(self.input_moments[1]) > 0)
        require(ok, "input_moments must be 'standard' (mean 0, variance 1), 'measure' (from "
                f"example_input) or (mean, variance > 0), got {self.input_moments!r}")
        integer("quadrature_points", self.quadrature_points, minimum=8)
        require(self.quadrature_points <= 256, "quadrature_points must be <= 256 (numpy's "
                "Gauss-Hermite weights underflow beyond)")
        integer("mc_samples", self.mc_samples, minimum=256)
        integer("covariance_limit", self.covariance_limit, minimum=0)


class _Layers:
    """The weights AutoInit draws, staged until the end; what `ctx.layers` gives the maps."""

    def __init__(self, cfg: AutoInitConfig, gen: Optional[torch.Generator]):
        self.cfg, self.gen = cfg, gen
        self.staged = Staged()
        self.done: set[int] = set()
        self.history: list[dict[str, Any]] = []
        self.profiles: dict[str, list[torch.Tensor]] = {}   # conv output: profile per spatial dim
        self.root: Optional[fx.GraphModule] = None
        self.joint: Optional[Joint] = None                  # full covariances (autoinit_gauss)

    def module(self, node: fx.Node) -> nn.Module:
        return module_of(self.root, node)

    def attr(self, node: fx.Node) -> torch.Tensor:
        """The tensor a get_attr node names (the model's own parameter or buffer)."""
        obj: Any = self.root
        for part in str(node.target).split("."):
            obj = getattr(obj, part)
        return obj

    def value(self, p: torch.Tensor) -> torch.Tensor:
        return self.staged.get(p)

    def _draw(self, like: torch.Tensor, std: float, groups: int = 1,
              centered: Optional[bool] = None) -> torch.Tensor:
        return draw(self.cfg.distribution, like.shape, std, groups, self.gen,
                    self.cfg.centered if centered is None else centered)

    def _just_drawn(self, name: str) -> Optional[dict[str, Any]]:
        """The history entry of layer `name` if it was drawn last and has no output yet."""
        h = self.history[-1] if self.history else None
        return h if h is not None and h["layer"] == name and "output_var" not in h else None

    def fresh(self, name: str, like: torch.Tensor, x: Moments, groups: int = 1,
              centered: Optional[bool] = None) -> torch.Tensor:
        """A new weight shaped like `like` for input statistics `x` (not staged), noted in the
        history. `like` may be a block of a packed parameter (attention's in_proj_weight)."""
        mean, var = x.pooled()
        second = float(x.second.mean())                          # E[x^2] over all samples
        if not second > 0:
            raise ValueError(f"the input of layer '{name}' is predicted to be constant zero "
                             f"(mean {mean:.3g}, variance {var:.3g}); AutoInit cannot scale "
                             "its weights. Is a layer before it dead (e.g. a ReLU of a "
                             "negative constant)?")
        fan_in = like.shape[1] * math.prod(like.shape[2:])       # grouped: in/groups * taps
        std = math.sqrt(self.cfg.signal_variance / (fan_in * second))
        try:
            w = self._draw(like, std, groups, centered)
        except ValueError as e:
            raise ValueError(f"layer '{name}': {e}") from e
        self.history.append(dict(layer=name, fan_in=fan_in, input_mean=mean, input_var=var,
                                 weight_std=std))
        return w

    def weight(self, name: str, weight: torch.Tensor, bias: Optional[torch.Tensor],
               x: Moments, groups: int = 1) -> torch.Tensor:
        if id(weight) in self.done or not weight.requires_grad:
            return self.value(weight)
        w = self.fresh(name, weight, x, groups)
        self.staged.set(weight, w)
        self.staged.zero(bias)
        self.done.add(id(weight))
        return w

    def centering_lost(self, name: str, y: Moments) -> bool:
        """With `centered`: True when the centered weight just drawn passes on less than
        `MIN_CENTERED` of sigma^2, i.e. the layer's input is nearly a constant vector (a global
        mean feeding a classifier). Its output would then hang on the small differences between
        the input's channel means, and rescaling would blow the weight up by over
        sqrt(1 / MIN_CENTERED); the caller draws it again uncentered (`uncentered`)."""
        if not self.cfg.centered or self._just_drawn(name) is None:
            return False
        return y.pooled()[1] < MIN_CENTERED * self.cfg.signal_variance

    def uncentered(self, name: str, weight: torch.Tensor, x: Moments,
                  groups: int = 1) -> torch.Tensor:
        """Draw the weight just drawn for layer `name` again, without centering."""
        h = self.history.pop()
        log.warning("autoinit: layer '%s' reads a nearly constant input (variance %.2g, mean "
                    "%.2g); centered weights would leave its output to the tiny differences "
                    "between channels, so it is drawn uncentered", name, h["input_var"],
                    h["input_mean"])
        w = self.fresh(name, weight, x, groups, centered=False)
        self.history[-1]["centered"] = False
        self.staged.set(weight, w)
        return w

    def rescale(self, name: str, weight: torch.Tensor, y: Moments, node: str,
                exact: Optional[tuple[float, float]] = None) -> Moments:
        """With `centered`: scale a weight just drawn so that its predicted output variance,
        computed from the drawn values, is exactly sigma^2 (its bias is 0: y scales along).
        The prediction is `exact` (from the output's full covariance, `autoinit_gauss`) where
        there is one, else the per-channel statistics `y`; y itself is scaled to sigma^2."""
        h = self._just_drawn(name)
        if not self.cfg.centered or h is None:
            return y
        _, var = y.pooled()
        target = var if exact is None else exact[1]
        if not (var > 0 and target > 0):
            return y
        f, g = self.cfg.signal_variance / target, self.cfg.signal_variance / var
        self.staged.set(weight, self.value(weight) * math.sqrt(f))
        h["weight_std"] *= math.sqrt(f)
        if exact is not None:
            h["covariance"] = True
            self.joint.scale(node, f)
        return y.like(y.mean * math.sqrt(g), y.var * g, y.shared * g)

    def output(self, name: str, y: Moments) -> Moments:
        """Note the predicted output of a layer just initialized (first call only)."""
        h = self._just_drawn(name)
        if h is not None:
            h["output_mean"], h["output_var"] = y.pooled()
        return y

    def embedding(self, name: str, m: nn.Embedding) -> torch.Tensor:
        if id(m.weight) in self.done or not m.weight.requires_grad:
            return self.value(m.weight)
        std = math.sqrt(self.cfg.signal_variance)
        w = self._draw(m.weight, std)
        if m.padding_idx is not None:
            w[m.padding_idx] = 0
        self.staged.set(m.weight, w)
        self.done.add(id(m.weight))
        self.history.append(dict(layer=name, fan_in=1, input_mean=None, input_var=None,
                                 weight_std=std))
        return w


def _input_moments(cfg: AutoInitConfig, x: Any) -> Optional[Moments]:
    """Input statistics for S samples: the configured (mean, variance) for every sample, or, with
    "measure", each sample's own, from `x` (the spread of the sample means beyond what i.i.d.
    noise gives is kept, and a variance shared across positions is estimated)."""
    if not (isinstance(x, torch.Tensor) and x.is_floating_point()):
        return None  # token ids and other non-float inputs have no signal statistics
    if cfg.input_moments != "measure":
        mean, var = (0.0, 1.0) if cfg.input_moments == "standard" else cfg.input_moments
        ones = torch.ones(MAX_SAMPLES, dtype=torch.float64)
        return moments(float(mean) * ones, float(var) * ones, 0.0)
    v = x.detach().double().cpu()
    v = v.reshape(1, -1) if v.dim() < 2 else v[:MAX_SAMPLES]
    flat = v.reshape(v.shape[0], -1)
    second, mean_n, grand = flat.pow(2).mean(1), flat.mean(1), flat.mean()
    noise = float(flat.var(1, unbiased=False).mean()) / flat.shape[1]
    spread = float(mean_n.var(unbiased=False))
    mean_n = grand + (mean_n - grand) * (max(0.0, 1 - noise / spread) if spread > 0 else 0.0)
    total = second - mean_n ** 2
    shared = torch.zeros_like(total)
    if v.dim() >= 3:
        # spread of the channel means within a sample, less what i.i.d. noise would give; one
        # figure for all samples (per sample it is too noisy to clip at 0 without bias)
        pos, c = math.prod(v.shape[2:]), v.shape[1]
        chan = v.flatten(2).mean(2).var(1, unbiased=False).mean()
        shared = (chan - (c - 1) / c * total.mean() / pos).clamp_min(0.0) * torch.ones_like(total)
    return moments(mean_n, total, shared)


def _pooled_unless(value: Any, per_channel: bool) -> Any:
    if isinstance(value, Moments) and not per_channel:
        return value.collapse()
    if isinstance(value, tuple) and not per_channel:
        return tuple(_pooled_unless(v, False) for v in value)
    return value


def propagate(gm: fx.GraphModule, inputs: tuple, layers: _Layers, cfg: AutoInitConfig,
              gen: torch.Generator) -> dict[str, Any]:
    """Moments of every node, in graph order, drawing weights on the way (see `_Layers`)."""
    layers.root = gm
    with search_mode(gm):  # shape propagation must not touch batch-norm statistics
        shapes = tensor_shapes(gm, inputs)
    est: dict[str, Any] = {}
    if cfg.centered and cfg.covariance_limit > 0:
        layers.joint = Joint(cfg.covariance_limit, cfg.quadrature_points, est)
    unknown: dict[str, list[str]] = {}
    placeholders = iter(inputs)
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            est[node.name] = _input_moments(cfg, next(placeholders, None))
            continue
        if node.op == "get_attr":
            attr = layers.attr(node)
            est[node.name] = constant(layers.value(attr) if isinstance(attr, nn.Parameter)
                                      else attr)
            continue
        if node.op == "output":
            continue
        module = module_of(gm, node) if node.op == "call_module" else None
        if shapes.get(node.name) is None:
            est[node.name] = None  # not a tensor (x.size(0), x.shape, ...)
            continue
        fn = find_map(node, module)
        per_channel = fn in CHANNEL_MAPS        # else channels pooled: see autoinit_maps
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n, keep=per_channel:
                                       _pooled_unless(est.get(n.name), keep))
        ctx = MapContext(node, module, args, kwargs, shapes, layers, cfg.quadrature_points,
                         cfg.mc_samples, gen)
        try:
            out = fn(ctx) if fn is not None else None
        except Exception as e:  # noqa: BLE001  (re-raised below with the node named)
            if fn is None or not isinstance(e, (TypeError, StopIteration)):
                if hasattr(e, "add_note"):
                    e.add_note(f"in AutoInit's moment map for node '{node.name}' "
                               f"({op_name(node)})")
                raise
            fn = None
        if fn is None:
            unknown.setdefault(op_name(node), []).append(node.name)
            found = ctx.tensor_inputs()
            out = found[0] if found else None
        est[node.name] = out
        if layers.joint is not None:
            if fn is not None:
                layers.joint.step(ctx)
            layers.joint.done(node)
    for op, names in unknown.items():
        warnings.warn(f"autoinit: no moment map for {op} (nodes {', '.join(names[:5])}"
                      f"{', ...' if len(names) > 5 else ''}); its input statistics pass through "
                      "unchanged. Register one with initlab.register_moment_map.", stacklevel=3)
    return est


def _check_untouched(model: nn.Module, layers: _Layers) -> None:
    missed = [n for n, m in model.named_modules() if isinstance(m, LAYERS + (nn.Embedding,))
              and m.weight.requires_grad and id(m.weight) not in layers.done]
    if missed:
        warnings.warn(f"autoinit: layers never reached in the traced graph keep their weights: "
                      f"{', '.join(missed[:8])}{', ...' if len(missed) > 8 else ''}", stacklevel=3)


@register("autoinit", description="analytic: propagate (mean, variance) through the fx graph, "
          "each layer's output variance set to sigma^2 (needs example_input)",
          paper="Bingham & Miikkulainen, AAAI 2023")
def autoinit(model: nn.Module, example_input: Any = None, *, return_estimates: bool = False,
             **settings: Any) -> Union[InitReport, tuple[InitReport, dict[str, Moments]]]:
    """Initialize every Linear/Conv/Embedding weight of `model` with AutoInit, in place.

    Args:
        model: any `nn.Module` that `torch.fx` can trace (else pass `leaf_modules=`); its mode
            (train/eval) decides whether dropout and batch statistics count. Left bitwise
            unchanged on any error.
        example_input: a tensor, or a tuple of positional inputs, of the shapes the model takes
            (its values matter only with `input_moments="measure"`). A `(inputs, targets)`
            batch is not unpacked: pass `batch[0]`.
        return_estimates: also return the predicted `Moments` of every graph node, by name.
        **settings: fields of `AutoInitConfig`.

    Returns:
        an `InitReport` whose history has one entry per initialized layer (name, fan_in, input
        mean and variance, weight std, predicted output mean and variance; `covariance: True`
        where the scale came from the full covariance, `covariance_limit`); with
        `return_estimates=True`, `(report, estimates)`.
    """
    cfg = AutoInitConfig(**settings)
    cfg.validate()
    if example_input is None:
        raise ValueError("autoinit needs example_input=<a batch of inputs> to trace shapes; "
                         "with initlab.initialize pass example_input=batch[0]")
    inputs = tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)
    gen = generator(cfg.seed) or torch.Generator().manual_seed(int(torch.randint(2**31, ())))
    layers = _Layers(cfg, gen)
    leaves = list(cfg.leaf_modules) + [t for t in MODULE_MAPS if t.__module__ != "torch.nn"
                                       and not t.__module__.startswith("torch.nn.modules")]
    with unchanged_on_error("autoinit"):
        gm = trace(model, leaves)
        est = propagate(gm, inputs, layers, cfg, gen)
        _check_untouched(model, layers)
        layers.staged.commit("autoinit")
    log.info("autoinit: %d layers initialized", len(layers.history))
    report = finish(model, "autoinit", settings=plain_settings(cfg), history=layers.history,
                    report=VarianceReport, target_variance=cfg.signal_variance)
    if return_estimates:
        return report, {k: v.pooled() for k, v in est.items() if isinstance(v, Moments)}
    return report


__all__ = ["AutoInitConfig", "autoinit", "moments"]
