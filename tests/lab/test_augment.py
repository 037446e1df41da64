"""Padding to 32x32 and the authors' augmentation (crop, flip, cutout), checked image by image
against brute-force descriptions of each transform."""
import pytest
import torch

from initlab.lab.data import Augment, Batches, load_dataset


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
