"""English->Spanish Bible verse pairs for the translation lab, tokenized and batched.

The corpus: the King James Version (`engKJV2006eb`) and Reina-Valera 1909 (`spaRV1909eb`), both
public domain, from the Debian packages `diatheke sword-text-kjv sword-text-sparv`. Each is
exported once with `diatheke -f plain`, cleaned (Strong's tags like `<H2416>`, `¶`, the KJV's
`[italics]` brackets and the Psalms' title lines removed) and aligned by verse reference into
`<data dir>/bible-en-es/pairs.tsv` (reference, English, Spanish). The data directory is the
`root` argument, else `$INITLAB_DATA`, else `~/.cache/initlab`.

`load_translation_data` keeps the pairs whose sides have at most `max_words` words, splits them
deterministically by a hash of the normalized English text (so a verse repeated elsewhere, e.g.
the offerings of Numbers 7, always falls in the same split and nothing leaks), trains one shared
SentencePiece vocabulary on the *training* side only, and caches the token ids as a `.pt` file.
Training and decoding then need neither `diatheke` nor `sentencepiece`: ids map back to text
through the stored piece list.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import torch

from ..data import DataNotFoundError

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
PACKAGES = "diatheke sword-text-kjv sword-text-sparv"
MODULES = {"en": "engKJV2006eb", "es": "spaRV1909eb"}
FULL_RANGE = "Gen 1:1-Rev 22:21"
CORPUS_DIR = "bible-en-es"
PAD, UNK, BOS, EOS = 0, 1, 2, 3
SPLITS = ("train", "valid", "test")

_VERSE = re.compile(r"^\s*(?P<ref>\S.*? \d+:\d+): (?P<text>.*)$")
_STRONGS = re.compile(r"\s*<[GH]\d+>")


def data_dir(root: PathLike | None = None) -> Path:
    where = root if root is not None else os.environ.get("INITLAB_DATA") or None
    return Path(where) if where is not None else Path.home() / ".cache" / "initlab"


def clean_verse(text: str) -> str:
    """Strip Strong's numbers, pilcrows and the KJV's italics brackets; collapse white space."""
    text = _STRONGS.sub("", text).replace("¶", " ").replace("[", "").replace("]", "")
    return " ".join(text.replace("’", "'").split())


def parse_diatheke(output: str) -> dict[str, str]:
    """`{reference: cleaned text}` from `diatheke -f plain` output.

    Lines without a `Book C:V: ` prefix are dropped: the module name at the end and the KJV's
    Psalm titles (which it prints before every verse of a titled psalm).
    """
    verses: dict[str, str] = {}
    for line in output.splitlines():
        m = _VERSE.match(line)
        if m:
            verses[m["ref"].strip()] = clean_verse(m["text"])
    return verses


def align(en: dict[str, str], es: dict[str, str]) -> list[tuple[str, str, str]]:
    """(reference, English, Spanish) for references present and non-empty in both, in `en`'s order."""
    return [(ref, text, es[ref]) for ref, text in en.items() if text and es.get(ref)]


def export_module(module: str, keys: str = FULL_RANGE) -> str:
    """Run `diatheke -b MODULE -f plain -k KEYS`; a clear error when it is not installed."""
    if shutil.which("diatheke") is None:
        raise DataNotFoundError(f"`diatheke` not found. Install the Bible corpus with:  "
                                f"sudo apt-get install {PACKAGES}")
    out = subprocess.run(["diatheke", "-b", module, "-f", "plain", "-k", keys],
                         capture_output=True, text=True, check=False).stdout
    if not _VERSE.search(out.split("\n", 1)[0]):
        raise DataNotFoundError(f"diatheke printed no verses for module {module!r} (is it "
                                f"installed? `diatheke -b system -k modulelist` lists them). "
                                f"Install with:  sudo apt-get install {PACKAGES}")
    return out


def build_corpus(root: PathLike | None = None, *, force: bool = False) -> Path:
    """Export, clean and align the two Bibles into `<data dir>/bible-en-es/pairs.tsv` (cached)."""
    path = data_dir(root) / CORPUS_DIR / "pairs.tsv"
    if path.is_file() and not force:
        return path
    en, es = (parse_diatheke(export_module(MODULES[lang])) for lang in ("en", "es"))
    pairs = align(en, es)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{r}\t{a}\t{b}\n" for r, a, b in pairs), encoding="utf-8")
    tmp.replace(path)  # atomic: a half-written corpus is never read
    log.info("aligned %d verse pairs (KJV %d, RV1909 %d verses) into %s", len(pairs), len(en),
             len(es), path)
    return path


def read_pairs(path: PathLike) -> list[tuple[str, str, str]]:
    rows = Path(path).read_text(encoding="utf-8").splitlines()
    return [tuple(r.split("\t")) for r in rows if r]  # type: ignore[misc]


def split_of(english: str, valid_pct: int = 5, test_pct: int = 5) -> str:
    """Deterministic split from a hash of the lower-cased English text (stable across runs)."""
    bucket = int(hashlib.sha1(english.lower().encode()).hexdigest()[:8], 16) % 100
    return "test" if bucket < test_pct else "valid" if bucket < test_pct + valid_pct else "train"


@dataclass
class TranslationData:
    """Token ids per split (lists of 1-D int64 tensors, no BOS/EOS), raw texts and the vocabulary."""
    src: dict[str, list[torch.Tensor]]
    tgt: dict[str, list[torch.Tensor]]
    text: dict[str, list[tuple[str, str, str]]]   # (reference, English, Spanish) per split
    pieces: list[str]                             # id -> SentencePiece piece

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        """Ids -> text (SentencePiece's decoding for plain pieces); stops at EOS, skips specials."""
        out = []
        for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids):
            if i == EOS:
                break
            if i > EOS:
                out.append(self.pieces[i])
        return "".join(out).replace("▁", " ").strip()

    def unigram_loss(self, split: str = "valid") -> float:
        """Cross-entropy (nats/token) of `split`'s target tokens and EOS under the training
        targets' token frequencies (add-one): the loss of a model that ignores every context,
        the plateau where a stalled Transformer sits."""
        counts = torch.ones(self.vocab_size, dtype=torch.float64)
        for t in self.tgt["train"]:
            counts += torch.bincount(t, minlength=self.vocab_size)
        counts[EOS] += len(self.tgt["train"])
        logp = (counts / counts.sum()).log()
        total = sum(float(logp[t].sum()) for t in self.tgt[split]) + len(self.tgt[split]) * float(
            logp[EOS])
        return -total / (sum(len(t) for t in self.tgt[split]) + len(self.tgt[split]))

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={len(self.src[s])}" for s in SPLITS)
        return f"TranslationData({sizes}, vocab={self.vocab_size})"


def load_translation_data(root: PathLike | None = None, *, max_words: int = 16,
                          vocab_size: int = 4000, valid_pct: int = 5,
                          test_pct: int = 5) -> TranslationData:
    """The filtered, split and tokenized corpus; built and cached on first use."""
    if max_words < 1 or vocab_size < 16 or valid_pct < 1 or test_pct < 1:
        raise ValueError("need max_words >= 1, vocab_size >= 16 and valid/test percentages >= 1")
    folder = data_dir(root) / CORPUS_DIR
    cache = folder / f"ids-w{max_words}-v{vocab_size}-s{valid_pct}.{test_pct}.pt"
    if cache.is_file():
        return _unpack(torch.load(cache, weights_only=True))
    pairs = [p for p in read_pairs(build_corpus(root))
             if len(p[1].split()) <= max_words and len(p[2].split()) <= max_words]
    text: dict[str, list[tuple[str, str, str]]] = {s: [] for s in SPLITS}
    for p in pairs:
        text[split_of(p[1], valid_pct, test_pct)].append(p)
    sp = _train_sentencepiece([s for _, en, es in text["train"] for s in (en, es)], vocab_size,
                              cache.with_suffix(".spm"))
    data = TranslationData(
        src={s: [torch.tensor(ids) for ids in sp.encode([p[1] for p in text[s]])] for s in SPLITS},
        tgt={s: [torch.tensor(ids) for ids in sp.encode([p[2] for p in text[s]])] for s in SPLITS},
        text=text, pieces=[sp.id_to_piece(i) for i in range(sp.get_piece_size())])
    torch.save(_pack(data), cache)
    log.info("tokenized %r, cached in %s", data, cache)
    return data


def _pack(data: TranslationData) -> dict:
    """One flat id tensor and a length tensor per list (fast to save and load)."""
    ids = {f"{side}/{s}": (torch.cat(getattr(data, side)[s]),
                           torch.tensor([len(t) for t in getattr(data, side)[s]]))
           for side in ("src", "tgt") for s in SPLITS}
    return dict(ids=ids, text=data.text, pieces=data.pieces)


def _unpack(packed: dict) -> TranslationData:
    lists = {k: list(flat.split(lengths.tolist())) for k, (flat, lengths) in packed["ids"].items()}
    return TranslationData(src={s: lists[f"src/{s}"] for s in SPLITS},
                           tgt={s: lists[f"tgt/{s}"] for s in SPLITS},
                           text=packed["text"], pieces=packed["pieces"])


def _train_sentencepiece(sentences: list[str], vocab_size: int, prefix: Path):
    try:
        import sentencepiece as spm
    except ImportError:
        raise ImportError("building the translation corpus needs sentencepiece: "
                          "pip install sentencepiece") from None
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_prefix=str(prefix), vocab_size=vocab_size,
        model_type="unigram", character_coverage=1.0, pad_id=PAD, unk_id=UNK, bos_id=BOS,
        eos_id=EOS, num_threads=1, minloglevel=2)
    return spm.SentencePieceProcessor(model_file=f"{prefix}.model")  # kept for inspection


class TokenBatches:
    """Re-iterable `(src, tgt)` batches of padded ids: src (B, S) ends in EOS; tgt (B, T) is
    BOS + sentence + EOS (the model reads tgt[:, :-1] and predicts tgt[:, 1:]). PAD is 0.

    With `shuffle`, pass k uses the permutation drawn from `seed + k`. Each batch holds sentences
    of similar length (sorted within chunks of 50 batches) so little compute goes to padding.
    """

    def __init__(self, src: list[torch.Tensor], tgt: list[torch.Tensor], batch_size: int, *,
                 shuffle: bool = False, seed: int = 0, device: str | torch.device | None = None):
        if len(src) != len(tgt) or not src:
            raise ValueError(f"need equally many non-zero sources and targets, got {len(src)} "
                             f"and {len(tgt)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.src, self.tgt, self.batch_size = src, tgt, batch_size
        self.shuffle, self.seed, self.device, self.passes = shuffle, seed, device, 0

    def __len__(self) -> int:
        return -(-len(self.src) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, b = len(self.src), self.batch_size
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + self.passes)
            order = torch.randperm(n, generator=gen).tolist()
            chunks = [order[i:i + 50 * b] for i in range(0, n, 50 * b)]
            order = [j for c in chunks for j in sorted(c, key=lambda j: len(self.src[j]))]
            groups = [order[i:i + b] for i in range(0, n, b)]
            perm = torch.randperm(len(groups), generator=gen).tolist()
            groups = [groups[i] for i in perm]
        else:
            groups = [list(range(i, min(i + b, n))) for i in range(0, n, b)]
        self.passes += 1
        for g in groups:
            yield (pad([torch.cat([self.src[j], torch.tensor([EOS])]) for j in g], self.device),
                   pad([torch.cat([torch.tensor([BOS]), self.tgt[j], torch.tensor([EOS])])
                        for j in g], self.device))


def pad(seqs: list[torch.Tensor], device: str | torch.device | None = None) -> torch.Tensor:
    """Right-pad 1-D id tensors with PAD into (len(seqs), longest)."""
    out = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=PAD)
    return out.to(device) if device is not None else out


if __name__ == "__main__":  # the set-up's step (scripts/setup_data.sh): build and tokenize once
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(load_translation_data())
