"""Training protocols by name: every setting a lab run takes from a recipe, and where it comes from.

    from initlab.lab.recipes import recipe, recipes
    recipe("authors-cnn").resolve(model="resnet", bn=False)   # {"train.lr": 0.1, ...}

A `Recipe` is data: a name, its source (the script and commit it reproduces), the settings it
makes for every model, and `Variant`s whose settings apply only where their `when` matches the
run's context (e.g. `{"bn": False}`). A run's own explicit settings override the recipe's; the
consumer (`compare`, the translation grid) reads the keys it knows:

- `compare` (image classification): `batch_size`, `train.<field>` (a `TrainConfig` field),
  `constructor_init` ("pytorch": the layers' own init; "authors": the GradInit code's),
  `pad_to` (zero-pad images to this side; 0: none), `augment` ("none" or a comma list of
  "crop", "flip", "cutout"), and `method.<name>` (settings for that initialization method).
  In method settings, `steps="epoch"` is one pass over the method's batches, `"train-epoch"`
  the training steps of one epoch, `"train-epoch:100:390"` the same clamped to [100, 390];
  `batch_fraction` sizes the method's batches as a fraction of the training batch. Context:
  `model`, `bn`.

Registered here: `lab-default` (the lab's own protocol) and `authors-cnn` (the GradInit authors'
CIFAR protocol, Zhu et al., NeurIPS 2021). Other modules register their own with
`register_recipe`.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

GRADINIT_CODE = "github.com/zhuchen03/gradinit @ 777c407"


@dataclass(frozen=True)
class Variant:
    """Settings that apply where every `when` key matches the context (a tuple: any of)."""
    when: Mapping[str, Any]
    settings: Mapping[str, Any]
    note: str = ""

    def applies(self, context: Mapping[str, Any]) -> bool:
        for key, want in self.when.items():
            have = context.get(key)
            if not (have in want if isinstance(want, tuple) else have == want):
                return False
        return True


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    source: str                                   # the script(s) and commit it reproduces
    settings: Mapping[str, Any]                   # for every model
    variants: tuple[Variant, ...] = ()            # later variants override earlier ones
    notes: tuple[str, ...] = field(default=())    # what the settings cannot say

    def resolve(self, **context: Any) -> dict[str, Any]:
        """The recipe's settings for a run with this context; `method.*` dicts are merged."""
        out = {k: _copy(v) for k, v in self.settings.items()}
        for variant in self.variants:
            if variant.applies(context):
                for key, value in variant.settings.items():
                    if isinstance(value, Mapping) and isinstance(out.get(key), dict):
                        out[key].update(value)
                    else:
                        out[key] = _copy(value)
        return out

    def describe(self) -> str:
        """Every setting, variant and note, one per line (what `initlab recipes` prints)."""
        lines = [f"{self.name}: {self.description}", f"  source: {self.source}"]
        lines += [f"  {k} = {_show(v)}" for k, v in self.settings.items()]
        for v in self.variants:
            when = ", ".join(f"{k}={_show(x)}" for k, x in v.when.items())
            sets = ", ".join(f"{k} = {_show(x)}" for k, x in v.settings.items())
            lines.append(f"  where {when}: {sets}" + (f"  ({v.note})" if v.note else ""))
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _copy(value: Any) -> Any:
    return dict(value) if isinstance(value, Mapping) else value


def _show(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}={_show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, tuple):
        return "|".join(str(v) for v in value)
    return repr(value) if isinstance(value, str) else str(value)


_RECIPES: dict[str, Recipe] = {}


def register_recipe(recipe: Recipe) -> Recipe:
    """Add `recipe` to the registry (a second, different recipe under one name is refused)."""
    if recipe.name in _RECIPES and _RECIPES[recipe.name] != recipe:
        raise ValueError(f"a recipe named {recipe.name!r} is already registered")
    _RECIPES[recipe.name] = recipe
    return recipe


def recipes() -> list[Recipe]:
    """Every registered recipe, in registration order."""
    return list(_RECIPES.values())


def recipe(name: str) -> Recipe:
    if name not in _RECIPES:
        raise KeyError(f"unknown recipe {name!r}; available: {', '.join(_RECIPES)} "
                       "(`initlab recipes` lists them with their settings)")
    return _RECIPES[name]


# GradInit's scale learning rate tau per model, the authors' values (launch/run_gradinit.sh:
# VGG-19 1e-2 / 1e-1, ResNet-110 5e-2 / 1e-3 without / with BN; the MLP is the lab's own).
_GRADINIT_TAU = (
    Variant({"model": ("vgg", "cifar-vgg"), "bn": False},
            {"method.gradinit-authors": {"scale_lr": 1e-2}}),
    Variant({"model": ("vgg", "cifar-vgg"), "bn": True},
            {"method.gradinit-authors": {"scale_lr": 1e-1}}),
    Variant({"model": "resnet", "bn": False}, {"method.gradinit-authors": {"scale_lr": 5e-2}}),
    Variant({"model": "resnet", "bn": True}, {"method.gradinit-authors": {"scale_lr": 1e-3}}),
)
# The authors' GradInit: target = the training optimizer at its lr (set by compare), gamma 1,
# normalized step, floor 0.01, clip 1 (GradInitConfig's defaults); one epoch of S = one training
# batch of data (their 390 iterations = one CIFAR-10 epoch), clamped to [100, 390] here.
_GRADINIT_AUTHORS = {"steps": "train-epoch:100:390", "batch_fraction": 0.5}

LAB_DEFAULT = register_recipe(Recipe(
    name="lab-default",
    description="the lab's own protocol: SGD with cosine decay, PyTorch's layer init, no "
                "augmentation",
    source="initlab",
    settings={
        "batch_size": 128, "train.epochs": 10, "train.optimizer": "sgd", "train.lr": 0.1,
        "train.momentum": 0.9, "train.weight_decay": 5e-4, "train.decay_norm": True,
        "train.bias_lr_scale": 1.0, "train.schedule": "cosine", "train.warmup_epochs": 0.0,
        "train.clip": None, "constructor_init": "pytorch", "pad_to": 0, "augment": "none",
        "method.gradinit-authors": dict(_GRADINIT_AUTHORS),
    },
    variants=(*_GRADINIT_TAU,
              Variant({"model": "mlp"}, {"method.gradinit-authors": {"scale_lr": 1e-2}})),
    notes=("every initialization method's batches are half training batches "
           "(batch_fraction 0.5)",),
))

AUTHORS_CNN = register_recipe(Recipe(
    name="authors-cnn",
    description="the GradInit authors' CIFAR protocol (Zhu et al., NeurIPS 2021): VGG and "
                "ResNet with and without BN",
    source=f"{GRADINIT_CODE}: train_cifar.py, launch/run_gradinit.sh, models/vgg.py, "
           "models/resnet_cifar.py",
    settings={
        "batch_size": 128, "train.epochs": 200, "train.optimizer": "sgd", "train.lr": 0.1,
        "train.momentum": 0.9, "train.weight_decay": 1e-4, "train.decay_norm": False,
        "train.bias_lr_scale": 1.0, "train.schedule": "cosine", "train.warmup_epochs": 0.0,
        "train.clip": None, "constructor_init": "authors", "pad_to": 32,
        "augment": "crop,flip,cutout",
        "method.gradinit-authors": dict(_GRADINIT_AUTHORS),
        "method.metainit": {"eps": 1e-5, "steps": "epoch", "batch_fraction": 1.0},
    },
    variants=(
        Variant({"bn": False}, {"train.clip": 1.0}, "--train-clip 1 for the BN-free nets"),
        Variant({"model": "resnet", "bn": False}, {"train.bias_lr_scale": 0.1},
                "biases and scalar multipliers at lr/10"),
        Variant({"model": "resnet"}, {"method.metainit": {"batch_fraction": 0.5}},
                "MetaInit's loader: half batches for the ResNet"),
        *_GRADINIT_TAU,
    ),
    notes=(
        "cosine decay per iteration to 0 (CosineAnnealingLR over epochs x steps)",
        "weight decay 0 on normalization layers' parameters (decay_norm=False); with it on "
        "everything else, biases included",
        "constructor init 'authors': convs Kaiming-normal fan_out (ReLU gain), conv biases 0, "
        "BN weight 1 / bias 0, VGG classifier N(0, 0.01) bias 0, ResNet classifier bias 0 "
        "(its weight keeps PyTorch's draw)",
        "augmentation after zero-padding to 32x32: random crop with padding of 1/8 of the image "
        "side (4 px for 32x32), horizontal flip, one cutout hole of half the image side "
        "(16 px for 32x32); the initialization methods' batches are augmented too",
        "gradinit-authors: the training optimizer as target at the training lr, gamma 1, "
        "normalized step, floor 0.01, clip 1, its batches half a training batch (S = one "
        "training batch)",
        "metainit: one pass over the training data at the training batch (half for ResNets), "
        "gradient-quotient eps 1e-5",
        "the paper's models: --model cifar-vgg --depth 19 (width 64), --model resnet --depth "
        "110 (width 16)",
    ),
))
