"""The comparison table from hand-made runs: summaries, time to accuracy, the plot."""
import pytest

from initlab.lab.tables import beats, claim, format_table, plot_curves, steps_to_target, summarize_table


def _run(method, seed, acc, init_steps=0.0, diverged=False, spe=10):
    return dict(method=method, seed=seed, error=None, test_acc=acc, train_loss=[1.0] * len(acc),
                first_epoch_acc=acc[0] if acc else None, best_acc=max(acc) if acc else None,
                diverged=diverged, diverged_epoch=len(acc) + 1 if diverged else None,
                init_seconds=init_steps / 100, init_steps=init_steps, steps_per_epoch=spe)


def test_steps_to_target_counts_the_init():
    run = _run("a", 0, [0.5, 0.8, 0.9], init_steps=7.5)
    assert steps_to_target(run, 0.8) == 7.5 + 2 * 10
    assert steps_to_target(run, 0.5) == 7.5 + 10
    assert steps_to_target(run, 0.95) is None


def _results():
    runs = [_run("base", 0, [0.2, 0.6, 0.7]), _run("base", 1, [0.3, 0.5, 0.8]),
            _run("init", 0, [0.75, 0.9, 1.0], init_steps=15), _run("init", 1, [0.1], diverged=True),
            dict(method="broken", seed=0, error="ValueError: no residual branches")]
    table = summarize_table(runs)
    return {"methods": table, "recipe": {"name": "authors-cnn"},
            "config": {"data": "digits", "model": "vgg", "depth": 11, "width": 8, "bn": False,
                       "train": {"optimizer": "sgd", "lr": 0.1, "clip": 1.0}}}


def test_summary_target_is_90_percent_of_the_tables_best():
    results = _results()
    table = results["methods"]
    assert list(table) == ["base", "init", "broken"]
    base, init = table["base"]["summary"], table["init"]["summary"]
    assert base["target_acc"] == pytest.approx(0.9)            # 0.9 x the best run's 1.0
    assert base["reached"] == 0 and base["steps_to_target"] is None
    assert init["reached"] == 1 and init["steps_to_target"]["mean"] == 15 + 20
    assert init["diverged"] == 1 and init["final_acc"]["n"] == 1
    assert base["first_epoch_acc"]["mean"] == pytest.approx(0.25)
    assert table["broken"]["error"] and table["broken"]["summary"]["runs"] == 0
    text = format_table(results)
    assert "35 (1/2)" in text and "(error)" in text       # one run: its value, no spread
    assert "25.00 ± " in text                               # two runs: mean ± std
    assert "| base |" in format_table(results, markdown=True)


def test_plot_has_accuracy_and_loss(tmp_path):
    results = _results()
    plot_curves(results, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 5000


def test_beats_every_seed_or_by_more_than_both_stds():
    assert beats([0.8, 0.9], [0.5, 0.7]) == "every seed"
    assert beats([0.9, 0.9, 0.5], [0.6, 0.6, 0.6]) is None        # one seed below, wide spread
    assert beats([0.9, 0.9, 0.58], [0.6, 0.6, 0.6]) == "means"     # 0.193 > std 0.185
    assert beats([0.8, 0.8, 0.58], [0.6, 0.6, 0.6]) is None        # 0.127 < std 0.127
    assert beats([0.5, 0.7], [0.8, 0.9]) is None and beats([], [0.1]) is None


def test_claim_counts_a_diverged_run_as_zero():
    results = _results()
    verdict = claim(results, "init", "base")
    assert verdict["first_epoch"] is None           # 0.75 and 0.1 against 0.2 and 0.3
    assert verdict["final_at_least_equal"] is True  # 1.0 and 0 (diverged) against 0.7, 0.8
    assert verdict["seeds"] == (2, 2)
    assert claim(results, "base", "init")["first_epoch"] is None


def test_claim_fails_when_the_baseline_ends_clearly_higher():
    table = summarize_table([_run("new", 0, [0.6, 0.7]), _run("new", 1, [0.62, 0.71]),
                             _run("old", 0, [0.4, 0.8]), _run("old", 1, [0.41, 0.81])])
    verdict = claim({"methods": table}, "new", "old")
    assert verdict["first_epoch"] == "every seed" and verdict["final_at_least_equal"] is False
