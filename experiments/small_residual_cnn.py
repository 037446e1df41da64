"""A 16-layer plain CNN and a 6-block residual CNN (relu after the add) on 6x6 maps: the
worst layer after AutoInit (orthogonal, centred) with covariance_limit 0 and 8192, seeds 0-2.

    PYTHONPATH=src .venv/bin/python experiments/small_residual_cnn.py
"""
import torch, time, initlab, logging
from torch import nn
import torch.nn.functional as F
logging.disable(logging.WARNING)
torch.set_num_threads(1)
class Plain(nn.Module):
    def __init__(self, depth=16, c=16):
        super().__init__()
        layers = [nn.Conv2d(3, c, 3, padding=1), nn.ReLU()]
        for _ in range(depth - 1):
            layers += [nn.Conv2d(c, c, 3, padding=1), nn.ReLU()]
        self.features = nn.Sequential(*layers); self.classifier = nn.Linear(c, 10)
    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))
class Res(nn.Module):
    def __init__(self, blocks=6, c=12):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.a = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1) for _ in range(blocks))
        self.b = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1) for _ in range(blocks))
        self.classifier = nn.Linear(c, 10)
    def forward(self, x):
        h = F.relu(self.stem(x))
        for a, b in zip(self.a, self.b):
            h = F.relu(h + b(F.relu(a(h))))
        return self.classifier(h.mean((2, 3)))
def worst(model, x):
    out = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: out.setdefault(n, float(o.var())) and None)
             for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad(): model(x)
    for h in hooks: h.remove()
    n = max(out, key=lambda k: abs(out[k] - 1)); return n, round(out[n] - 1, 3)
for name, M in (("plain", Plain), ("res", Res)):
    for seed in range(3):
        for lim in (0, 8192):
            torch.manual_seed(seed); model = M(); x = torch.randn(64, 3, 6, 6)
            t = time.time()
            initlab.autoinit(model, x, seed=seed, distribution="orthogonal", centered=True, covariance_limit=lim)
            dt = time.time() - t
            torch.manual_seed(100); print(name, seed, lim, worst(model, torch.randn(20000, 3, 6, 6)), f"{dt:.1f}s", flush=True)
