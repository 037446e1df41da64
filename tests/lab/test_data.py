"""The lab's loaders on their real data (digits always; Fashion-MNIST from its Debian package),
padding to 32x32 and the authors' augmentation (crop, flip, cutout), checked image by image
against brute-force descriptions of each transform."""
import gzip
import struct

import numpy as np
import pytest
import torch

from initlab.lab.data import Augment, Batches, DataNotFoundError, fashion_mnist_dir, load_dataset, read_idx


def test_digits_split_shapes_and_normalization():
    d = load_dataset("digits")
    assert d.x_train.shape == (1437, 1, 8, 8) and d.x_test.shape == (360, 1, 8, 8)
    assert d.y_train.dtype == torch.int64 and set(d.y_train.tolist()) == set(range(10))
    assert d.in_channels == 1 and d.image_size == 8 and d.num_classes == 10
    assert abs(d.x_train.mean().item()) < 1e-4 and abs(d.x_train.std().item() - 1) < 1e-3
    # the split is fixed: the same examples on every load, and train and test do not overlap
    again = load_dataset("digits")
    torch.testing.assert_close(d.x_test, again.x_test)
    train_rows = {tuple(r) for r in d.x_train.flatten(1).tolist()}
    overlap = sum(tuple(r) in train_rows for r in d.x_test.flatten(1).tolist())
    assert overlap < 5  # digits has a handful of duplicate images, never the split itself


def test_subset_is_deterministic_per_seed():
    a = load_dataset("digits", subset=100, test_subset=50, seed=3)
    b = load_dataset("digits", subset=100, test_subset=50, seed=3)
    c = load_dataset("digits", subset=100, seed=4)
    assert len(a.y_train) == 100 and len(a.y_test) == 50
    assert torch.equal(a.y_train, b.y_train) and torch.equal(a.x_train, b.x_train)
    assert not torch.equal(a.y_train, c.y_train)


def test_unknown_dataset_names_the_choices():
    with pytest.raises(ValueError, match="digits"):
        load_dataset("cifar10")


def test_fashion_mnist_real_files():
    d = load_dataset("fashion-mnist", subset=2000, test_subset=500)
    assert d.x_train.shape == (2000, 1, 28, 28) and d.x_test.shape == (500, 1, 28, 28)
    assert d.y_test.max().item() == 9 and d.y_test.min().item() == 0
    full = read_idx(fashion_mnist_dir() / "t10k-labels-idx1-ubyte.gz")
    assert full.shape == (10000,)
    assert np.bincount(full).tolist() == [1000] * 10  # Fashion-MNIST's test set is balanced


def test_missing_data_names_the_package(tmp_path, monkeypatch):
    with pytest.raises(DataNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", tmp_path)
    monkeypatch.setenv("INITLAB_DATA", str(tmp_path))
    with pytest.raises(DataNotFoundError, match="INITLAB_DATA"):
        load_dataset("fashion-mnist")


def _write_idx(path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_initlab_data_points_at_a_users_copy(tmp_path, monkeypatch):
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("t10k", 20)):
        _write_idx(folder / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(folder / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    monkeypatch.setenv("INITLAB_DATA", str(tmp_path))
    d = load_dataset("fashion-mnist")
    assert len(d.y_train) == 30 and len(d.y_test) == 20
    assert d.y_test.tolist() == [i % 10 for i in range(20)]


def test_batches_cover_the_data_and_reshuffle_repeatably():
    x, y = torch.arange(10.0).unsqueeze(1), torch.arange(10)
    b = Batches(x, y, 4, shuffle=True, seed=7)
    assert len(b) == 3
    first = [yb.tolist() for _, yb in b]
    second = [yb.tolist() for _, yb in b]
    assert sorted(sum(first, [])) == list(range(10)) and [len(f) for f in first] == [4, 4, 2]
    assert first != second  # a new order every pass
    replay = Batches(x, y, 4, shuffle=True, seed=7)
    assert [yb.tolist() for _, yb in replay] == first
    for xb, yb in Batches(x, y, 3, drop_last=True):
        assert len(yb) == 3 and torch.equal(xb[:, 0].long(), yb)
    assert len(Batches(x, y, 3, drop_last=True)) == 3


def test_pad_to_centers_the_images_on_black():
    plain, padded = load_dataset("digits", subset=50), load_dataset("digits", subset=50, pad_to=32)
    assert padded.x_train.shape == (50, 1, 32, 32) and padded.content_size == 8
    torch.testing.assert_close(padded.x_train[:, :, 12:20, 12:20], plain.x_train)
    border = padded.x_train.clone()
    border[:, :, 12:20, 12:20] = padded.black
    assert torch.all(border == padded.black)
    # black is the normalized value of a zero pixel: the digits' background
    assert plain.x_train.min().item() == pytest.approx(padded.black)
    with pytest.raises(ValueError, match="smaller"):
        load_dataset("digits", pad_to=4)


def test_sizes_follow_the_image_content():
    data = load_dataset("digits", subset=20, pad_to=32)
    aug = Augment.from_spec("crop,flip,cutout", data, seed=0)
    assert (aug.crop, aug.flip, aug.cutout, aug.fill) == (1, True, 4, data.black)
    assert Augment.from_spec("none", data, 0) is None
    with pytest.raises(ValueError, match="crop, flip, cutout"):
        Augment.from_spec("crop,rotate", data, 0)


def _images(n=64, side=8):
    return torch.randn(n, 2, side, side)


def test_crop_is_a_shift_within_the_padding():
    x, p, fill = _images(), 2, -3.0
    out = Augment(crop=p, fill=fill, seed=1)(x)
    padded = torch.nn.functional.pad(x, (p, p, p, p), value=fill)
    shifts = set()
    for i in range(len(x)):
        found = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                 if torch.equal(out[i], padded[i, :, dy:dy + 8, dx:dx + 8])]
        assert found, f"image {i} is no crop of its padded self"
        shifts.add(found[0])
    assert len(shifts) > 10  # offsets drawn per image, over the whole range


def test_flip_mirrors_about_half_the_images():
    x = _images()
    out = Augment(flip=True, seed=2)(x)
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, x)]
    kept = [torch.equal(o, i) for o, i in zip(out, x)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 16 < sum(flipped) < 48


def test_cutout_zeroes_one_square_clipped_at_the_border():
    x = _images(n=200, side=16) + 10.0  # no zeros of its own
    out = Augment(cutout=6, seed=3)(x)
    full = 0
    for o, i in zip(out, x):
        hole = (o == 0).all(dim=0)                       # (H, W): zeroed in every channel
        assert torch.equal(o[:, ~hole], i[:, ~hole])     # the rest untouched
        rows, cols = hole.any(1).nonzero().flatten(), hole.any(0).nonzero().flatten()
        assert hole.sum() == len(rows) * len(cols)       # one rectangle
        assert 3 <= len(rows) <= 6 and 3 <= len(cols) <= 6
        full += len(rows) == 6 and len(cols) == 6
    assert full > 80  # a center far from the border cuts a whole 6 x 6 square


def test_batches_augment_every_draw_and_repeat_per_seed():
    x, y = _images(n=40), torch.arange(40)
    draw = lambda seed: [b for b, _ in Batches(x, y, 10, augment=Augment(crop=1, flip=True,  # noqa: E731
                                                                           cutout=2, seed=seed))]
    first, again, other = draw(5), draw(5), draw(6)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    assert not torch.equal(torch.cat(first), x)
