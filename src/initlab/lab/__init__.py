"""The lab: real data, reference models, a training loop and comparisons of initialization methods.

    from initlab.lab import CompareConfig, compare, format_table
    results = compare(CompareConfig(data="digits", model="vgg", depth=11), out="runs/vgg11")
    print(format_table(results))

Needs the `lab` extra (scikit-learn, matplotlib, tqdm): `pip install 'initlab[lab]'`.
"""
from .compare import CompareConfig, compare, format_table
from .data import Batches, DataNotFoundError, Dataset, load_dataset
from .models import MLP, VGG, BasicBlock, ResNet, build_model
from .train import RunResult, TrainConfig, evaluate, train

__all__ = [
    "MLP", "VGG", "BasicBlock", "Batches", "CompareConfig", "DataNotFoundError", "Dataset",
    "ResNet", "RunResult", "TrainConfig", "build_model", "compare", "evaluate", "format_table",
    "load_dataset", "train",
]
