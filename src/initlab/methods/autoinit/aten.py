"""Maps for the ATen operators of graphs traced by `torch.export` (Hugging Face models): the
same maps as the torch-level functions they come from, registered on each operator's overload
packet. Leaf modules arrive folded into `call_module` nodes (`core.graph`), so only what a
module's own Python does with tensors appears here."""
from __future__ import annotations

import torch

from .arithmetic import add, cat, div, mul, neg, sub
from .elementwise import elementwise
from .layers import conv_function, embedding_function, linear_function, matmul_function
from .norms import dropout, layer_norm
from .pooling import reduce, sdpa, softmax, upsample
from .registry import register_moment_map

aten = torch.ops.aten

ELEMENTWISE = ("relu", "relu6", "gelu", "silu", "tanh", "sigmoid", "elu", "selu", "celu",
               "leaky_relu", "hardtanh", "hardswish", "hardsigmoid", "softplus", "mish",
               "exp", "log", "sqrt", "rsqrt", "pow", "abs", "sin", "cos", "erf", "clamp",
               "clamp_min", "clamp_max", "square", "reciprocal", "log_sigmoid_forward")
LAYOUT = ("view", "_unsafe_view", "reshape", "permute", "transpose", "t", "expand", "clone",
          "contiguous", "alias", "slice", "select", "unsqueeze", "squeeze", "split",
          "split_with_sizes", "chunk", "unbind", "flatten", "unflatten", "repeat", "to",
          "_to_copy", "detach", "lift_fresh_copy", "index", "roll", "flip", "narrow",
          "movedim", "pixel_shuffle", "expand_as", "view_as", "type_as")
ARITHMETIC = {"add": add, "sub": sub, "mul": mul, "div": div, "neg": neg}
OTHERS = {
    "linear": linear_function, "conv1d": conv_function, "conv2d": conv_function,
    "conv3d": conv_function, "mm": matmul_function, "matmul": matmul_function,
    "addmm": matmul_function, "bmm": matmul_function, "embedding": embedding_function,
    "layer_norm": layer_norm, "dropout": dropout, "feature_dropout": dropout,
    "mean": reduce, "sum": reduce, "amax": reduce, "max_pool1d": reduce, "max_pool2d": reduce,
    "max_pool3d": reduce, "avg_pool1d": reduce, "avg_pool2d": reduce, "avg_pool3d": reduce,
    "adaptive_avg_pool1d": reduce, "adaptive_avg_pool2d": reduce, "adaptive_avg_pool3d": reduce,
    "adaptive_max_pool1d": reduce, "adaptive_max_pool2d": reduce,
    "softmax": softmax, "_softmax": softmax, "log_softmax": softmax, "_log_softmax": softmax,
    "scaled_dot_product_attention": sdpa, "cat": cat, "concat": cat, "stack": cat,
    "upsample_nearest1d": upsample, "upsample_nearest2d": upsample,
    "upsample_nearest3d": upsample,
}


def _packet(name: str) -> object:
    return getattr(aten, name, None)


for _name in ELEMENTWISE:
    if _packet(_name) is not None:
        register_moment_map(_packet(_name), elementwise, per_channel=True, elementwise=True)
for _name, _fn in ARITHMETIC.items():
    register_moment_map(_packet(_name), _fn, per_channel=True, elementwise=True)
for _name in LAYOUT:
    if _packet(_name) is not None:
        register_moment_map(_packet(_name), None, per_channel=True, layout=True)
for _name, _fn in OTHERS.items():
    if _packet(_name) is not None:
        register_moment_map(_packet(_name), _fn, per_channel=True)
