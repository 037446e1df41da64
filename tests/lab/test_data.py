"""The lab's loaders on their real data (digits always; Fashion-MNIST from its Debian package)."""
import gzip
import struct

import numpy as np
import pytest
import torch

from initlab.lab.data import Batches, DataNotFoundError, fashion_mnist_dir, load_dataset, read_idx


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
