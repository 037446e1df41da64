"""Shared by the translation tests: a copy task a tiny Transformer learns in a few steps, and a
small verse-pair corpus where the loader expects the Bible pairs."""
import torch

from initlab.lab.translation.data import EOS, split_of

V = 30  # vocabulary size


def copy_task(n=48, seed=0):
    """Target = source reversed: a task a tiny Transformer learns in a few dozen steps."""
    g = torch.Generator().manual_seed(seed)
    src = [torch.randint(EOS + 1, V, (int(torch.randint(3, 7, (1,), generator=g)),), generator=g)
           for _ in range(n)]
    return src, [s.flip(0) for s in src]


def fake_corpus(root, n=240):
    """A pairs.tsv where build_corpus expects it (so no diatheke is needed); some verses repeat,
    and 'zeta' sentences carry a character found nowhere else."""
    rows = []
    for i in range(n):
        en = f"and the man {i % 37} went to the city {i % 11}"
        es = f"y el hombre {i % 37} fue a la ciudad {i % 11}"
        if i % 40 == 0:
            en, es = "and it was so", "y fué así"     # repeated at different references
        rows.append(f"Book {i // 20 + 1}:{i % 20 + 1}\t{en}\t{es}")
    zetas = [f"zeta {i}" for i in range(200) if split_of(f"zeta {i}") == "test"][:3]
    rows += [f"Zeta 1:{i}\t{z}\tζeta {i}" for i, z in enumerate(zetas)]
    (root / "bible-en-es").mkdir(parents=True)
    (root / "bible-en-es" / "pairs.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
