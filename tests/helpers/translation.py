"""Shared by the translation tests: a copy task a tiny Transformer learns in a few steps."""
import torch

from initlab.lab.translation.data import EOS

V = 30  # vocabulary size


def copy_task(n=48, seed=0):
    """Target = source reversed: a task a tiny Transformer learns in a few dozen steps."""
    g = torch.Generator().manual_seed(seed)
    src = [torch.randint(EOS + 1, V, (int(torch.randint(3, 7, (1,), generator=g)),), generator=g)
           for _ in range(n)]
    return src, [s.flip(0) for s in src]
