"""Compare initialization methods on real data: methods x seeds -> curves, a table, JSON, plots.

For each seed, every method starts from the *same* freshly built model (the seed fixes the
constructor's draws, the data order and the augmentation), is initialized through the registry
(`initlab.initialize`), then trained with the same `TrainConfig`. A method "a+b" applies a, then
b to its result (e.g. "kaiming+gradinit": GradInit starting from He init, as in the paper).

A recipe (`initlab.lab.recipes`, default `lab-default`) sets every setting the config leaves at
None: batch size, training, the constructor init that `default` keeps, padding, augmentation,
and method settings; `method_settings` and explicit fields override it. Method settings:
- `gradinit` (the library's default search) gets the training optimizer and lr as its target
  and chooses the rest itself;
- `gradinit-authors` gets that target too, and from the recipe the authors' per-model scale lr
  and one epoch of iterations (clamped to [100, 390]);
- in a method's settings, `steps="epoch"` is one pass over its batches, `steps="train-epoch"`
  the number of training steps in an epoch (GradInit's S is one training batch), either
  clamped to [LO, HI] with ":LO:HI"; `batch_fraction` (default 1/2; 1 for `gradinit`, whose S
  is one of its batches, and `gradinit-warmstart`) sizes its batches as a fraction of the training batch.

With `out`, every finished run is stored as `<out>/runs/<method>--seed<k>.json` (`lab.store`):
a stopped table continues where it stopped, and several processes given the same settings fill
one table together. `results.json` and the plots are rewritten from the stored runs after each.
"""
from __future__ import annotations

import datetime
import inspect
import json
import logging
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..registry import initialize, method_info
from . import distributed
from .data import Augment, Batches, Dataset, load_dataset
from .models import authors_init, build_model, count_params
from .recipes import recipe as find_recipe
from .store import claim, plain_outcome, write_atomic
from .tables import format_table, plot_curves, summarize_table
from .train import TrainConfig, describe_groups, param_groups, train

log = logging.getLogger(__name__)
__all__ = ["CompareConfig", "compare", "format_table"]
RECIPE_FIELDS = ("batch_size", "constructor_init", "pad_to", "augment")


@dataclass
class CompareConfig:
    recipe: str = "lab-default"       # fills every setting left at None (`initlab recipes`)
    data: str = "digits"
    data_dir: str | None = None
    model: str = "vgg"
    depth: int | None = None          # None: the model's default
    width: int | None = None
    bn: bool = False
    activation: str = "relu"          # MLP only
    methods: list[str] = field(default_factory=lambda: ["default", "gradinit"])
    seeds: int = 3                    # runs use seeds 0 .. seeds-1
    subset: int | None = None         # training examples kept (None: all)
    test_subset: int | None = None
    batch_size: int | None = None
    constructor_init: str | None = None   # "pytorch" or "authors": what `default` keeps
    pad_to: int | None = None             # zero-pad images to this side (0: no padding)
    augment: str | None = None            # "none" or a comma list of crop, flip, cutout
    train: TrainConfig = field(default_factory=TrainConfig)
    method_settings: dict[str, dict[str, Any]] = field(default_factory=dict)

    def resolved(self) -> CompareConfig:
        """A copy with every None setting taken from the recipe (for this model and BN), and
        the recipe's method settings under the explicit ones."""
        settings = find_recipe(self.recipe).resolve(model=self.model, bn=self.bn)
        methods = {k.removeprefix("method."): dict(v) for k, v in settings.items()
                   if k.startswith("method.")}
        for name, given in self.method_settings.items():
            methods[name] = {**methods.get(name, {}), **given}
        return replace(self, train=self.train.filled(settings), method_settings=methods,
                       **{f: settings[f] for f in RECIPE_FIELDS if getattr(self, f) is None})


def method_settings(name: str, cfg: CompareConfig, n_train: int) -> dict[str, Any]:
    """Keyword settings for method `name` of a resolved config, for `n_train` training
    examples; `batch_fraction` stays in (`init_model` leaves it out)."""
    # the default gradinit's S (and its warm start's batch) is one training batch; others (the
    # authors' S = B0 u B1): halves
    full = name in ("gradinit", "gradinit-warmstart")
    settings: dict[str, Any] = {"batch_fraction": 1.0 if full else 0.5}
    if name in ("gradinit", "gradinit-authors"):
        t = cfg.train
        settings.update(target=t.optimizer, lr=t.lr)
        if t.optimizer == "adam":
            settings["gamma"] = 1000.0   # the authors' L1 bound for an Adam target
    settings.update(cfg.method_settings.get(name, {}))
    steps = settings.get("steps")
    if isinstance(steps, str):           # "epoch" / "train-epoch", optionally ":LO:HI"
        kind, *bounds = steps.split(":")
        if kind not in ("epoch", "train-epoch") or len(bounds) not in (0, 2):
            raise ValueError(f"{name}: steps={steps!r}; use an int, 'epoch' or 'train-epoch' "
                             "(optionally clamped, e.g. 'train-epoch:100:390')")
        if kind == "train-epoch":         # len() of the training batches
            n = -(-n_train // cfg.batch_size)
        else:                             # len() of its own batches (drop_last)
            n = max(1, n_train // max(1, round(cfg.batch_size * settings["batch_fraction"])))
        settings["steps"] = n if not bounds else min(int(bounds[1]), max(int(bounds[0]), n))
    return settings


def check_methods(spec: str) -> list[str]:
    """"a+b" means method a, then method b on its result; every part must be registered."""
    parts = spec.split("+")
    for part in parts:
        method_info(part)  # a KeyError listing the available names
    return parts


def init_model(model: torch.nn.Module, spec: str, init_batches: Batches | dict[str, Batches],
               settings: dict[str, dict[str, Any]],
               outcomes: dict[str, Any] | None = None) -> float:
    """Initialize `model` in place with `spec` ("gradinit", "kaiming+gradinit", ...);
    `settings` maps each method name to its keyword settings, `init_batches` is one set of
    batches or one per method name. Returns the seconds it took. `outcomes`, if given, receives
    each method's report `outcome` (GradInit: why its search stopped, the guard's losses)."""
    device = next(model.parameters()).device
    _sync(device)
    start = time.perf_counter()
    for name in check_methods(spec):
        info = method_info(name)
        takes_data = info.needs_data or "example_input" in inspect.signature(info.fn).parameters
        data = init_batches[name] if isinstance(init_batches, dict) else init_batches
        kwargs = {k: v for k, v in settings.get(name, {}).items() if k != "batch_fraction"}
        report = initialize(model, name, data=data if takes_data else None, **kwargs)
        if outcomes is not None and (outcome := plain_outcome(report)):
            outcomes[name] = outcome
    _sync(device)
    return time.perf_counter() - start


def new_model(cfg: CompareConfig, data: Dataset, seed: int) -> torch.nn.Module:
    """The seed's model with the recipe's constructor init (the same for every method)."""
    torch.manual_seed(seed)
    model = build_model(cfg.model, in_channels=data.in_channels, image_size=data.image_size,
                        num_classes=data.num_classes, depth=cfg.depth, width=cfg.width,
                        bn=cfg.bn, activation=cfg.activation)
    if cfg.constructor_init == "authors":
        authors_init(model)
    elif cfg.constructor_init != "pytorch":
        raise ValueError(f"unknown constructor_init {cfg.constructor_init!r}: use 'pytorch' or "
                         "'authors'")
    return model.to(cfg.train.device)


def run_one(cfg: CompareConfig, data: Dataset, name: str, seed: int) -> dict[str, Any]:
    """One method on one seed, of a resolved config: its curves, init time and settings."""
    device = torch.device(cfg.train.device)
    model = new_model(cfg, data, seed)
    augment = lambda s: Augment.from_spec(cfg.augment, data, s)  # noqa: E731
    train_batches = distributed.shard(Batches(data.x_train, data.y_train, cfg.batch_size,
                                              shuffle=True, seed=1000 * seed, device=device,
                                              augment=augment(1000 * seed + 1)))
    test_batches = Batches(data.x_test, data.y_test, 1000, device=device)
    settings = {part: method_settings(part, cfg, len(data.y_train))
                for part in check_methods(name)}
    init_batches = {part: distributed.shard(Batches(  # under torchrun: this rank's rows
        data.x_train, data.y_train, max(1, round(cfg.batch_size * s["batch_fraction"])),
        shuffle=True, seed=1000 * seed + 500, drop_last=True, device=device,
        augment=augment(1000 * seed + 501))) for part, s in settings.items()}
    outcomes: dict[str, Any] = {}
    init_seconds = init_model(model, name, init_batches, settings, outcomes)
    torch.manual_seed(seed)
    result = train(distributed.wrap(model), train_batches, test_batches, cfg.train,
                   desc=f"{name} seed {seed}")
    parts = [] if result.best_acc is None else [
        f"first-epoch acc {result.first_epoch_acc:.4f}", f"best acc {result.best_acc:.4f}"]
    if result.diverged:
        parts.append(f"diverged in epoch {result.diverged_epoch}")
    log.info("%s seed %d: %s (init %.1f s, training %.0f s)", name, seed, ", ".join(parts),
             init_seconds, result.seconds)
    init_steps = None if not result.step_seconds else init_seconds / result.step_seconds
    return dict(method=name, seed=seed, init_seconds=init_seconds, init_steps=init_steps,
                settings=settings, init_outcome=outcomes, error=None, **result.to_dict())


def table_settings(cfg: CompareConfig) -> dict[str, Any]:
    """What makes runs comparable in one table: every resolved setting but the methods, seeds,
    device, progress bars, the data folder and method settings (recorded per run)."""
    d = asdict(cfg)
    for key in ("methods", "seeds", "data_dir", "method_settings"):
        d.pop(key)
    d["train"] = {k: v for k, v in d["train"].items() if k not in ("device", "progress")}
    return d


def compare(cfg: CompareConfig, out: str | Path | None = None, *,
            max_minutes: float | None = None) -> dict[str, Any]:
    """Run every method x seed not yet stored under `out`; write `results.json` and the plots
    there after each run. `max_minutes`: start no new run after this long."""
    cfg = cfg.resolved()
    for name in cfg.methods:
        check_methods(name)  # fail early on a typo, listing the available names
    cfg.train.validate()
    data = load_dataset(cfg.data, cfg.data_dir, subset=cfg.subset, test_subset=cfg.test_subset,
                        pad_to=cfg.pad_to)
    log.info("comparing %s on %r under %s", ", ".join(cfg.methods), data, cfg.recipe)
    header = _header(cfg, data)
    store = None if out is None else _open_store(Path(out), cfg)
    distributed.barrier()                    # every rank sees the same stored runs
    runs: list[dict[str, Any]] = []
    failed: set[str] = set()
    start = time.perf_counter()
    for name in cfg.methods:
        for seed in range(cfg.seeds):
            path = None if store is None else store / f"{name}--seed{seed}.json"
            if name in failed or (path is not None and (path.is_file() or not _claim(path))):
                continue
            if max_minutes is not None and time.perf_counter() - start > 60 * max_minutes:
                log.info("time budget reached; run the same command again to continue")
                _release(path)
                return _report(header, cfg, runs, out)
            try:
                record = run_one(cfg, data, name, seed)
            except Exception as e:  # noqa: BLE001  (a method that cannot handle the model: go on)
                log.warning("%s failed on seed %d: %s: %s", name, seed, type(e).__name__, e)
                record = dict(method=name, seed=seed, error=f"{type(e).__name__}: {e}")
                failed.add(name)
            finally:
                _release(path)
            runs.append(record)
            if path is not None and distributed.is_main():
                text = json.dumps(record)
                write_atomic(path, lambda tmp, text=text: tmp.write_text(text))
            _report(header, cfg, runs, out)
    return _report(header, cfg, runs, out)


def _claim(path: Path) -> bool:
    return claim(path) if not distributed.active() else True   # ranks run the same runs


def _release(path: Path | None) -> None:
    if path is not None and not distributed.active():
        path.with_suffix(".claim").unlink(missing_ok=True)


def _open_store(out: Path, cfg: CompareConfig) -> Path:
    """`<out>/runs/`, after checking that runs stored there used the same settings."""
    (out / "runs").mkdir(parents=True, exist_ok=True)
    mine, stored = table_settings(cfg), out / "table.json"
    if stored.is_file():
        theirs = json.loads(stored.read_text())
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if diff:
            raise ValueError(f"{out} holds runs made with other settings ({', '.join(diff)} "
                             f"differ): give the same settings to continue that table, or "
                             "another --out for a new one")
    elif distributed.is_main():
        text = json.dumps(mine, indent=1)
        write_atomic(stored, lambda tmp: tmp.write_text(text))
    return out / "runs"


def _header(cfg: CompareConfig, data: Dataset) -> dict[str, Any]:
    """Everything results.json says about the table besides its runs."""
    rec = find_recipe(cfg.recipe)
    probe = new_model(replace(cfg, train=replace(cfg.train, device="cpu")), data, 0)
    return {"recipe": {"name": rec.name, "source": rec.source, "description": rec.description},
            "config": asdict(cfg), "data": repr(data), "parameters": count_params(probe),
            "optimizer_groups": describe_groups(param_groups(probe, cfg.train)),
            "augmentation": asdict(Augment.from_spec(cfg.augment, data, 0) or Augment()),
            "machine": machine_info(cfg.train.device), "processes": distributed.rank_and_size()[1]}


def _report(header: dict[str, Any], cfg: CompareConfig, runs: list[dict[str, Any]],
            out: str | Path | None) -> dict[str, Any]:
    """The table from this process's runs, or from every run stored under `out`."""
    if out is not None:
        runs = [json.loads(p.read_text()) for p in sorted((Path(out) / "runs").glob("*.json"))]
    order = {m: i for i, m in enumerate(cfg.methods)}
    runs = sorted(runs, key=lambda r: (order.get(r["method"], len(order)), r["method"], r["seed"]))
    results = dict(header, date=datetime.date.today().isoformat(),
                   methods=summarize_table(runs))
    if out is not None and distributed.is_main():
        text = json.dumps(results, indent=1)
        write_atomic(Path(out) / "results.json", lambda tmp: tmp.write_text(text))
        plot_curves(results, Path(out) / "accuracy.png")
        log.info("wrote %s", Path(out) / "results.json")
    return results


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
