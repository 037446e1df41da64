"""The figures: one page per diagnosis, one per comparison, with the Transformer row."""
from helpers.methods import ResMLP, batches, mlp
from initlab.diagnostics import compare, diagnose


def test_one_diagnosis_and_a_comparison_write_their_pages(tmp_path):
    a = diagnose(mlp(), batches(3), lr=0.1, label="a")
    b = diagnose(mlp(), batches(3), lr=1.0, label="b")
    fig = a.plot(tmp_path / "a.png")
    assert (tmp_path / "a.png").stat().st_size > 10_000
    assert len(fig.axes) == 5  # forward, loss, gradients, ratios, verdict
    fig = compare(a, b).plot(tmp_path / "ab.png")
    assert (tmp_path / "ab.png").stat().st_size > 10_000 and len(fig.axes) == 4


def test_residual_networks_get_the_third_row(tmp_path):
    d = diagnose(ResMLP(n_blocks=2, width=8), batches(3), lr=0.1)
    fig = d.plot(tmp_path / "r.png")
    assert len(fig.axes) == 8
    assert fig.axes[4].get_title() == "residual branch RMS / skip RMS"
