"""Compare initialization methods on real data: methods x seeds -> curves, a table, JSON, a plot.

For each seed, every method starts from the *same* freshly built model (the seed fixes the
constructor's draws and the data order), is initialized through the registry
(`initlab.initialize`), then trained with the same `TrainConfig`. A method "a+b" applies a, then
b to its result (e.g. "kaiming+gradinit": GradInit starting from He init, as in the paper).

`gradinit-authors` in the lab follows the authors' CIFAR recipe (Zhu et al. 2021; target = the
training optimizer, eta = its learning rate, gamma = 1, normalized SGD step, floor 0.01, clip 1)
with two choices scaled to small data:
- its batches are the training set in half-size batches (S = 2 x batch/2, like the authors'
  64 + 64 at batch 128), in their own seeded order;
- steps = one epoch of training batches, at least 100 and at most the authors' 390;
- scale_lr follows the authors' per-architecture values: VGG 1e-2 without BN / 1e-1 with BN,
  ResNet 5e-2 / 1e-3, MLP 1e-2. With an Adam target, gamma = 1000 (L1) as in their recipe.
The default `gradinit` gets only the target optimizer and its learning rate (it chooses its own
budget) and batches of the training batch size (S = one training batch).
Every choice can be overridden per method with `method_settings`, e.g. {"gradinit": {"steps": 50}}.
"""
from __future__ import annotations

import datetime
import inspect
import json
import logging
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..registry import initialize, method_info
from . import distributed
from .data import Batches, Dataset, load_dataset
from .models import build_model, count_params
from .train import RunResult, TrainConfig, train

log = logging.getLogger(__name__)

GRADINIT_SCALE_LR = {("vgg", False): 1e-2, ("vgg", True): 1e-1, ("resnet", False): 5e-2,
                     ("resnet", True): 1e-3, ("mlp", False): 1e-2}


@dataclass
class CompareConfig:
    data: str = "digits"
    data_dir: str | None = None
    model: str = "vgg"
    depth: int | None = None          # None: the model's default
    width: int | None = None
    bn: bool = False
    activation: str = "relu"             # MLP only
    methods: list[str] = field(default_factory=lambda: ["default", "gradinit"])
    seeds: int = 3                       # runs use seeds 0 .. seeds-1
    batch_size: int = 128
    subset: int | None = None         # training examples kept (None: all)
    test_subset: int | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    method_settings: dict[str, dict[str, Any]] = field(default_factory=dict)


def method_settings(name: str, cfg: CompareConfig, train_batches: Batches) -> dict[str, Any]:
    """Keyword settings passed to `initialize` for method `name` (lab defaults + overrides)."""
    settings: dict[str, Any] = {}
    t = cfg.train
    if name == "gradinit":
        settings = {"target": t.optimizer, "lr": t.lr}
    elif name == "gradinit-authors":
        settings = {"target": t.optimizer, "lr": t.lr,
                    "steps": min(390, max(100, len(train_batches))),
                    "scale_lr": GRADINIT_SCALE_LR.get((cfg.model, cfg.bn), 1e-2)}
        if t.optimizer == "adam":
            settings["gamma"] = 1000.0
    settings.update(cfg.method_settings.get(name, {}))
    return settings


def check_methods(spec: str) -> list[str]:
    """"a+b" means method a, then method b on its result; every part must be registered."""
    parts = spec.split("+")
    for part in parts:
        method_info(part)  # a KeyError listing the available names
    return parts


def init_model(model: torch.nn.Module, spec: str, init_batches: Batches,
               settings: dict[str, dict[str, Any]]) -> float:
    """Initialize `model` in place with `spec` ("gradinit", "kaiming+gradinit", ...);
    `settings` maps each method name to its keyword settings. Returns the seconds it took."""
    device = next(model.parameters()).device
    _sync(device)
    start = time.perf_counter()
    for name in check_methods(spec):
        info = method_info(name)
        takes_data = info.needs_data or "example_input" in inspect.signature(info.fn).parameters
        initialize(model, name, data=init_batches if takes_data else None,
                   **settings.get(name, {}))
    _sync(device)
    return time.perf_counter() - start


def run_one(cfg: CompareConfig, data: Dataset, name: str, seed: int) -> dict[str, Any]:
    device = torch.device(cfg.train.device)
    torch.manual_seed(seed)  # the same constructor draws for every method
    model = build_model(cfg.model, in_channels=data.in_channels, image_size=data.image_size,
                        num_classes=data.num_classes, depth=cfg.depth, width=cfg.width,
                        bn=cfg.bn, activation=cfg.activation).to(device)
    train_batches = distributed.shard(Batches(data.x_train, data.y_train, cfg.batch_size,
                                              shuffle=True, seed=1000 * seed, device=device))
    test_batches = Batches(data.x_test, data.y_test, 1000, device=device)
    # the default gradinit: S = one training batch; other methods: half-size batches (the
    # authors' GradInit draws S = B0 u B1 of them)
    init_size = cfg.batch_size if "gradinit" in check_methods(name) else max(1, cfg.batch_size // 2)
    init_batches = distributed.shard(Batches(  # under torchrun: this rank's rows of each batch
        data.x_train, data.y_train, init_size, shuffle=True,
        seed=1000 * seed + 500, drop_last=True, device=device))
    settings = {part: method_settings(part, cfg, train_batches) for part in check_methods(name)}
    init_seconds = init_model(model, name, init_batches, settings)
    torch.manual_seed(seed)
    result: RunResult = train(distributed.wrap(model), train_batches, test_batches, cfg.train,
                              desc=f"{name} seed {seed}")
    parts = [] if result.best_acc is None else [
        f"first-epoch acc {result.first_epoch_acc:.4f}", f"best acc {result.best_acc:.4f}"]
    if result.diverged:
        parts.append(f"diverged in epoch {result.diverged_epoch}")
    log.info("%s seed %d: %s (init %.1f s, training %.0f s)", name, seed, ", ".join(parts),
             init_seconds, result.seconds)
    return dict(seed=seed, init_seconds=init_seconds, settings=settings, **result.to_dict())


def _mean_std(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "n": len(values)}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean/std over seeds. Accuracies count the runs that reached an evaluation (a diverged
    run keeps its best before blowing up); `final_acc` only the runs that did not diverge."""
    epochs = max((len(r["test_acc"]) for r in runs), default=0)
    return {
        "first_epoch_acc": _mean_std([r["first_epoch_acc"] for r in runs
                                   if r["first_epoch_acc"] is not None]),
        "best_acc": _mean_std([r["best_acc"] for r in runs if r["best_acc"] is not None]),
        "final_acc": _mean_std([r["test_acc"][-1] for r in runs if not r["diverged"]]),
        "diverged": sum(r["diverged"] for r in runs), "runs": len(runs),
        "init_seconds": _mean_std([r["init_seconds"] for r in runs]),
        "mean_curve": [statistics.fmean(r["test_acc"][e] for r in runs if len(r["test_acc"]) > e)
                    for e in range(epochs)],
    }


def compare(cfg: CompareConfig, out: str | Path | None = None) -> dict[str, Any]:
    """Run every method x seed; write `results.json` and `accuracy.png` under `out` if given."""
    for name in cfg.methods:
        check_methods(name)  # fail early on a typo, listing the available names
    data = load_dataset(cfg.data, cfg.data_dir, subset=cfg.subset, test_subset=cfg.test_subset)
    log.info("comparing %s on %r", ", ".join(cfg.methods), data)
    results: dict[str, Any] = {
        "config": asdict(cfg), "data": repr(data), "machine": machine_info(cfg.train.device),
        "date": datetime.date.today().isoformat(), "methods": {},
        "processes": distributed.rank_and_size()[1]}
    torch.manual_seed(0)
    probe = build_model(cfg.model, in_channels=data.in_channels, image_size=data.image_size,
                        depth=cfg.depth, width=cfg.width, bn=cfg.bn, activation=cfg.activation)
    results["parameters"] = count_params(probe)
    for name in cfg.methods:
        entry: dict[str, Any] = {"runs": [], "error": None}
        results["methods"][name] = entry
        for seed in range(cfg.seeds):
            try:
                entry["runs"].append(run_one(cfg, data, name, seed))
            except Exception as e:  # noqa: BLE001  (a method that cannot handle the model: go on)
                log.warning("%s failed on seed %d: %s: %s", name, seed, type(e).__name__, e)
                entry["error"] = f"{type(e).__name__}: {e}"
                break
        entry["summary"] = summarize(entry["runs"])
        if out is not None and distributed.is_main():  # after every method: a stopped run keeps it
            write_results(results, out)
    return results


def write_results(results: dict[str, Any], out: str | Path) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot_accuracy(results, out / "accuracy.png")
    log.info("wrote %s and %s", out / "results.json", out / "accuracy.png")


def _pct(s: dict[str, float] | None) -> str:
    return "-" if s is None else f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}"


def format_table(results: dict[str, Any], markdown: bool = False) -> str:
    """The comparison table: accuracies in %, mean ± std over seeds."""
    head = ["method", "first-epoch acc", "best acc", "final acc", "diverged", "init s"]
    rows = []
    for name, entry in results["methods"].items():
        s = entry["summary"]
        init = s["init_seconds"]
        rows.append([name, _pct(s["first_epoch_acc"]), _pct(s["best_acc"]), _pct(s["final_acc"]),
                     f"{s['diverged']}/{s['runs']}" + (" (error)" if entry["error"] else ""),
                     "-" if init is None else f"{init['mean']:.1f}"])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    return "\n".join("  ".join(str(x).ljust(w) for x, w in zip(r, widths)) for r in [head, *rows])


def plot_accuracy(results: dict[str, Any], path: str | Path) -> None:
    """Test accuracy per epoch: thin lines per seed, a thick line for the mean, x = divergence."""
    from ..core.plotting import pyplot
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    methods = results["methods"]
    palette = plt.get_cmap("tab20" if len(methods) > 10 else "tab10")
    for i, (name, entry) in enumerate(methods.items()):
        color = palette(i % palette.N)
        for r in entry["runs"]:
            acc = [100 * a for a in r["test_acc"]]
            ax.plot(range(1, len(acc) + 1), acc, color=color, alpha=0.3, lw=0.8)
            if r["diverged"]:
                ax.plot([r["diverged_epoch"]], [acc[-1] if acc else 10.0], "x", color=color)
        curve = [100 * a for a in entry["summary"]["mean_curve"]]
        if curve:
            ax.plot(range(1, len(curve) + 1), curve, color=color, lw=2, label=name, marker=".")
        else:  # every run diverged or failed: still named in the legend
            ax.plot([], [], color=color, marker="x", ls="", label=f"{name} (no run finished)")
    c = results["config"]
    width = f" width {c['width']}" if c["width"] else ""
    ax.set_title(f"{c['data']}, {c['model']}{c['depth'] or ''}{width} "
                 f"{'BN' if c['bn'] else 'no BN'}, "
                 f"{c['train']['optimizer']} lr {c['train']['lr']}, {c['seeds']} seeds",
                 fontsize=10)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7 if len(methods) > 6 else 10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def machine_info(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                                "torch": torch.__version__, "device": device,
                                "cpu_threads": torch.get_num_threads()}
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
