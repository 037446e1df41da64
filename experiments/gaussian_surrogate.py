"""Is the plain CNN's drift after AutoInit a non-Gaussian effect, or a second-order one?

Take the 30-layer plain CNN of benchmarks/autoinit_variance.py after AutoInit (orthogonal,
centred, per-channel statistics only), the pre-activation h_k of conv k on N random inputs,
and the next conv's output variance from relu(h_k) against the same from relu(g), g Gaussian
with h_k's exact mean and (C*H*W)^2 covariance. Equal figures: the signal is Gaussian enough,
and what the per-channel statistics miss is in the covariance.

    PYTHONPATH=src .venv/bin/python experiments/gaussian_surrogate.py 7 12 22 25
"""
import logging
import math
import sys

import torch

sys.path.insert(0, "benchmarks")
import autoinit_variance as av  # noqa: E402

import initlab  # noqa: E402

logging.disable(logging.WARNING)
seed, convs, n = int(sys.argv[1]), [int(k) for k in sys.argv[2:]], 12_000
torch.manual_seed(seed)
model = av.PlainCNN()
initlab.autoinit(model, torch.randn(256, *av.IMAGE), seed=seed, distribution="orthogonal",
                 centered=True)
features = model.features.double()
with torch.no_grad():
    for k in convs:
        h = features[:2 * k + 1](torch.randn(n, *av.IMAGE, dtype=torch.float64))  # conv k
        nxt = features[2 * k + 2]
        flat = h.reshape(n, -1)
        mu = flat.mean(0)
        cov = (flat - mu).T @ (flat - mu) / n
        chol = torch.linalg.cholesky(cov + 1e-9 * torch.eye(cov.shape[0], dtype=cov.dtype))
        g = mu + torch.randn(n, cov.shape[0], dtype=torch.float64) @ chol.T
        real = float(nxt(torch.relu(h)).var())
        gauss = float(nxt(torch.relu(g.reshape(h.shape))).var())
        print(f"conv {k} ({'x'.join(map(str, h.shape[1:]))} = {math.prod(h.shape[1:])} "
              f"elements): var h_k {float(h.var()):.3f}; conv {k + 1} from relu(h_k) "
              f"{real:.3f}, from relu(Gaussian twin) {gauss:.3f}")
