"""A tiny Lightning classifier on scikit-learn's digits, shared by the Lightning tests and the
DDP script they launch (`python tests/lightning_digits.py OUT_DIR`: Trainer(strategy="ddp",
devices=2) on CPU; each rank saves its parameters as GradInit left them)."""
from __future__ import annotations

import sys

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from initlab.integrations.lightning import InitCallback

SETTINGS = dict(steps=6, lr=0.1, scale_lr=0.05, gamma=1.0, faithful=True)  # S = B0 u B1


class DigitsNet(pl.LightningModule):
    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Dropout(0.1),
                                 nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return {"loss": loss}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def digits(n: int = 512) -> TensorDataset:
    d = load_digits()
    x = torch.tensor(d.images[:n], dtype=torch.float32) / 16.0
    return TensorDataset(x, torch.tensor(d.target[:n]))


def loader(batch_size: int = 32, shuffle: bool = False) -> DataLoader:
    return DataLoader(digits(), batch_size=batch_size, shuffle=shuffle)


class Snapshot(pl.Callback):
    """Parameters and the torch RNG state at on_train_start (after the callbacks before it)."""

    def on_train_start(self, trainer, pl_module):
        self.params = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        self.rng = torch.get_rng_state()


def trainer(callbacks: list, **kwargs) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", max_steps=kwargs.pop("max_steps", 3), logger=False,
                      enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=callbacks, **kwargs)


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    snap = Snapshot()
    init = InitCallback("gradinit", **SETTINGS)
    t = trainer([init, snap], strategy="ddp", devices=2, max_steps=2)
    t.fit(DigitsNet(0), loader(batch_size=16))
    torch.save(dict(params=snap.params, scales=init.report.scales, history=init.report.history),
               f"{out_dir}/rank{t.global_rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
