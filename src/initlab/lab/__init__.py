"""The lab: real data, reference models, a training loop and comparisons of initialization methods.

    from initlab.lab import CompareConfig, compare, format_table
    results = compare(CompareConfig(data="digits", model="vgg", depth=11), out="runs/vgg11")
    results = compare(CompareConfig(recipe="authors-cnn", data="fashion-mnist", model="cifar-vgg",
                                    width=16, methods=["default", "default+gradinit-authors"]))
    print(format_table(results))

Needs the `lab` extra (scikit-learn, matplotlib, tqdm): `pip install 'initlab[lab]'`.
"""
from .compare import CompareConfig, compare, format_table
from .data import Augment, Batches, DataNotFoundError, Dataset, load_dataset
from .models import MLP, VGG, BasicBlock, CifarVGG, ResNet, authors_init, build_model
from .recipes import Recipe, Variant, recipe, recipes, register_recipe
from .train import RunResult, TrainConfig, evaluate, train

__all__ = [
    "MLP", "VGG", "Augment", "BasicBlock", "Batches", "CifarVGG", "CompareConfig",
    "DataNotFoundError", "Dataset", "Recipe", "ResNet", "RunResult", "TrainConfig", "Variant",
    "authors_init", "build_model", "compare", "evaluate", "format_table", "load_dataset",
    "recipe", "recipes", "register_recipe", "train",
]
