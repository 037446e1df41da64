"""One benchmark network, AutoInit (orthogonal, centred) at the given seeds and
covariance_limit, and its worst layer on 1024 fresh inputs.

    PYTHONPATH=src .venv/bin/python experiments/autoinit_worst_layer.py plain 7,1,4 4096
"""
import sys, time, torch, logging
sys.path.insert(0, "benchmarks")
torch.set_num_threads(2)
import autoinit_variance as av, initlab
logging.disable(logging.WARNING)
arch = sys.argv[1]; seeds = [int(s) for s in sys.argv[2].split(",")]
lim = int(sys.argv[3]) if len(sys.argv) > 3 else 4096
key = [k for k in av.ARCHITECTURES if k.startswith(arch)][0]
build, shape = av.ARCHITECTURES[key]
for seed in seeds:
    torch.manual_seed(seed); model = build(); x = torch.randn(256, *shape)
    t = time.time()
    rep = initlab.autoinit(model, x, seed=seed, distribution="orthogonal", centered=True, covariance_limit=lim)
    dt = time.time() - t
    v = av.layer_variances(model, torch.randn(1024, *shape))
    name, dev = av.worst(v)
    cov = sum(1 for h in rep.history if h.get("covariance"))
    print(f"{key[:20]} seed {seed}: worst {name} {dev:+.3f}  ({dt:.1f}s, {cov}/{len(rep.history)} layers by covariance)", flush=True)
