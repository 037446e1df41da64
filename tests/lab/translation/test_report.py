"""The translation grid's table and heatmap."""
from initlab.lab.translation.report import format_grid, plot_grid


def test_the_report_marks_stalled_and_diverged_runs(tmp_path):
    def cell(method, valid, diverged=False):
        return dict(optimizer="adam", lr=1e-3, momentum=None, method=method, valid_loss=valid,
                    final_valid_loss=None if diverged else valid[-1], bleu=None if diverged else 1.5,
                    diverged=diverged, diverged_step=200 if diverged else None)
    cells = [cell("default", [5.8, 5.79, 5.75]), cell("warmup", [5.8, 5.5]),
             cell("tfixup", [5.8], diverged=True)]
    row = format_grid(cells).splitlines()[2]
    assert row == "| Adam 0.001 | 5.75 / 1.5 **stalled** | 5.50 / 1.5 | diverged @200 |"
    plot_grid(cells, tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 1000
