"""The Bible verse-pair corpus: parsing real diatheke output, alignment, splits, tokenizer, batches."""
import math
import shutil

import pytest
import torch

from helpers.translation import fake_corpus
from initlab.lab.data import DataNotFoundError
from initlab.lab.translation.data import (
    BOS,
    EOS,
    PAD,
    SPLITS,
    TokenBatches,
    TranslationData,
    align,
    clean_verse,
    export_module,
    load_translation_data,
    parse_diatheke,
)

# Real lines of `diatheke -f plain` output (KJV: engKJV2006eb, RV1909: spaRV1909eb), including a
# Psalm title line, the indented references of later books, a pilcrow and Strong's tags.
KJV = """Genesis 1:1: In the beginning God created the heaven and the earth.

Genesis 1:6: ¶ And God said, Let there be a firmament in the midst of the waters, and let it \
divide the waters from the waters.

A Psalm of David, when he fled from Absalom his son.
   Psalms 3:1: LORD, how are they increased that trouble me! many are they that rise up against \
me.
   I John 2:23: Whosoever denieth the Son, the same hath not the Father: [but] he that \
acknowledgeth the Son hath the Father also.
(engKJV2006eb)
"""
RV = """Genesis 1:1: EN el principio crió Dios los cielos y la tierra.
Genesis 1:6: Y dijo Dios: Haya expansión en medio de las aguas, y separe las aguas de las aguas.
Genesis 2:16: Y mandó Jehová Dios al hombre, diciendo: De todo árbol del huerto comerás <H0398>;
Psalms 3:1: Salmo de David, cuando huía de delante de Absalom su hijo. ¡OH Jehová, cuánto se \
han multiplicado mis enemigos! muchos se levantan contra mí.
(spaRV1909eb)
"""


pytestmark = pytest.mark.usefixtures("one_thread")


def test_parse_cleans_and_drops_non_verse_lines():
    en, es = parse_diatheke(KJV), parse_diatheke(RV)
    assert list(en) == ["Genesis 1:1", "Genesis 1:6", "Psalms 3:1", "I John 2:23"]
    assert en["Genesis 1:6"].startswith("And God said, Let there be a firmament")
    assert en["Genesis 1:6"].endswith("from the waters.")       # pilcrow and spaces gone
    assert en["Psalms 3:1"].startswith("LORD, how are they")     # the title line is not a verse
    assert "[" not in en["I John 2:23"] and "Father: but he that" in en["I John 2:23"]
    assert es["Genesis 2:16"] == "Y mandó Jehová Dios al hombre, diciendo: De todo árbol del huerto comerás;"
    assert clean_verse("a <G1234>  b ¶ c") == "a b c"


def test_align_keeps_references_present_in_both():
    pairs = align(parse_diatheke(KJV), parse_diatheke(RV))
    assert [p[0] for p in pairs] == ["Genesis 1:1", "Genesis 1:6", "Psalms 3:1"]
    assert pairs[0][1:] == ("In the beginning God created the heaven and the earth.",
                            "EN el principio crió Dios los cielos y la tierra.")


def test_export_matches_the_installed_bibles_or_names_the_packages():
    if shutil.which("diatheke") is None:  # the error must say what to install
        with pytest.raises(DataNotFoundError, match="sword-text-kjv sword-text-sparv"):
            export_module("engKJV2006eb", "Gen 1:1")
        return
    en = parse_diatheke(export_module("engKJV2006eb", "Gen 1:1-Gen 1:6"))
    es = parse_diatheke(export_module("spaRV1909eb", "Gen 1:1-Gen 1:6"))
    assert align(en, es)[0] == align(parse_diatheke(KJV), parse_diatheke(RV))[0]
    assert en["Genesis 1:6"] == parse_diatheke(KJV)["Genesis 1:6"]
    with pytest.raises(DataNotFoundError, match="modulelist"):
        export_module("noSuchModule", "Gen 1:1")


def test_splits_do_not_overlap_and_the_vocabulary_sees_training_text_only(tmp_path):
    fake_corpus(tmp_path)
    data = load_translation_data(tmp_path, vocab_size=50, valid_pct=10, test_pct=10)
    refs = {s: {t[0] for t in data.text[s]} for s in SPLITS}
    english = {s: {t[1] for t in data.text[s]} for s in SPLITS}
    for a, b in [("train", "valid"), ("train", "test"), ("valid", "test")]:
        assert not refs[a] & refs[b] and not english[a] & english[b]
    assert sum(len(r) for r in refs.values()) == 243 and all(refs.values())
    repeated = [s for s in SPLITS for t in data.text[s] if t[1] == "and it was so"]
    assert len(repeated) == 6 and len(set(repeated)) == 1    # one split for every copy
    assert not any("ζ" in p for p in data.pieces)           # only in test sentences
    assert any(t[1].startswith("zeta") for t in data.text["test"])
    assert data.decode(torch.tensor(data.src["train"][0].tolist() + [EOS, 7])) == \
        data.text["train"][0][1]
    again = load_translation_data(tmp_path, vocab_size=50, valid_pct=10, test_pct=10)  # cached
    assert again.text == data.text and all(torch.equal(a, b) for a, b in
                                           zip(again.tgt["test"], data.tgt["test"]))


def test_token_batches_pad_and_frame_the_sentences():
    src = [torch.tensor([5, 6, 7]), torch.tensor([8]), torch.tensor([9, 10])]
    tgt = [torch.tensor([11]), torch.tensor([12, 13]), torch.tensor([14, 15, 16])]
    s, t = next(iter(TokenBatches(src, tgt, 2)))
    assert s.tolist() == [[5, 6, 7, EOS], [8, EOS, PAD, PAD]]
    assert t.tolist() == [[BOS, 11, EOS, PAD], [BOS, 12, 13, EOS]]
    shuffled = TokenBatches(src, tgt, 2, shuffle=True, seed=3)
    seen = sorted(x for s, _ in shuffled for row in s.tolist() for x in row if x > EOS)
    assert seen == [5, 6, 7, 8, 9, 10] and len(shuffled) == 2


def test_unigram_loss_is_the_context_free_cross_entropy():
    pieces = ["<pad>", "<unk>", "<s>", "</s>", "a", "b", "c"]
    t = torch.tensor
    data = TranslationData(src={s: [] for s in ("train", "valid", "test")},
                           tgt={"train": [t([4, 4, 5]), t([4])], "valid": [t([5, 6])], "test": []},
                           text={}, pieces=pieces)
    # training counts + 1 each: pad 1, unk 1, bos 1, eos 1 + 2, a 3 + 1, b 1 + 1, c 1; total 13
    p = {"b": 2 / 13, "c": 1 / 13, "eos": 3 / 13}
    expected = -(math.log(p["b"]) + math.log(p["c"]) + math.log(p["eos"])) / 3
    assert data.unigram_loss("valid") == pytest.approx(expected, rel=1e-12)
