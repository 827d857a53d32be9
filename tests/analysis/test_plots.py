"""The run directory's figures: what a reader needs to read them (legend, smoothed reward, counts,
ticks)."""

from __future__ import annotations

import pytest

from skyexp import plots


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions draw, kept open for inspection (they close them after
    saving)."""
    kept = []
    monkeypatch.setattr(plots.plt, "close", kept.append)
    yield kept
    monkeypatch.undo()
    plots.plt.close("all")


def test_entropy_figure_has_a_legend_and_a_smoothed_reward(tmp_path, figures):
    steps = list(range(100))
    reward = [0.4 + 0.3 * (i % 2) for i in steps]  # alternating 0.4 / 0.7: pure noise around 0.55
    plots.plot_entropy(steps, [0.2 - i / 1000 for i in steps], reward, tmp_path / "entropy.png")
    assert (tmp_path / "entropy.png").stat().st_size > 1000
    (fig,) = figures
    top, bottom = fig.axes
    assert [t.get_text() for t in top.get_legend().get_texts()] == ["actor/entropy"]
    assert [t.get_text() for t in bottom.get_legend().get_texts()] == [
        "critic/score/mean (per step)",
        "critic/score/mean (mean of 10 steps)",
    ]
    smooth = bottom.get_lines()[1].get_ydata()
    assert max(abs(v - 0.55) for v in smooth[10:]) < 1e-9  # the noise is averaged out


def test_entropy_figure_draws_coefficient_target_and_stages_in_absolute_ticks(tmp_path, figures):
    # a 0.002-nat drift around 0.45: the axis starts at 0, so it is drawn flat, and its tick labels
    # are the values (no "+4.5e-1" offset)
    steps = list(range(30))
    entropy = [0.45 + 0.002 * (i / 29) for i in steps]
    coef = [0.0] * 10 + [1e-4 * i for i in range(20)]
    plots.plot_entropy(
        steps, entropy, [0.1] * 30, tmp_path / "e.png", coef, 0.46, boundaries=[17, 25]
    )
    (fig,) = figures
    top, bottom, right = fig.axes
    labels = [t.get_text() for t in top.get_legend().get_texts()]
    target = "entropy target (0.46, read on actor/entropy_trained)"
    assert labels == ["actor/entropy", target, "actor/entropy_coeff"]
    assert top.get_ylim()[0] == 0 and list(right.get_lines()[0].get_ydata()) == coef
    assert [ln.get_xdata()[0] for ln in bottom.get_lines()[-2:]] == [16.5, 24.5]  # stage lines
    fig.canvas.draw()
    for ax in (top, right):
        assert ax.yaxis.get_offset_text().get_text() == ""
        assert all("e" not in t.get_text() for t in ax.get_yticklabels())


def test_moving_average():
    assert plots._moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert plots._moving_average([2.0], 5) == [2.0]


def test_passk_title_counts_and_plain_ticks(tmp_path, figures):
    curves = {
        "before RL": {1: 0.4, 2: 0.55, 4: 0.7, 8: 0.8, 16: 0.85},
        "after RL": {1: 0.6, 2: 0.7, 4: 0.78, 8: 0.83, 16: 0.86},
    }
    plots.plot_passk(curves, tmp_path / "passk.png", title="pass@k on arith", n=16, problems=200)
    (fig,) = figures
    ax = fig.axes[0]
    assert ax.get_title() == "pass@k on arith\nn=16 samples, 200 problems"
    fig.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "1",
        "2",
        "4",
        "8",
        "16",
    ]  # not 2^0 ... 2^4
    # before and after are told apart where they meet: other line style and marker, before on top
    before, after = ax.get_lines()
    assert before.get_linestyle() != after.get_linestyle()
    assert before.get_marker() != after.get_marker()
    assert before.get_zorder() > after.get_zorder() and before.get_fillstyle() == "none"
    plots.plot_passk(curves, tmp_path / "plain.png", title="pass@k")
    assert figures[1].axes[0].get_title() == "pass@k"


def test_benchmark_passk_legend_counts(tmp_path, figures):
    curves = {
        "aime24": {"before": {1: 0.1, 2: 0.2, 4: 0.3, 8: 0.4}},
        "math500": {"before": {1: 0.5}},
    }
    plots.plot_passk_benchmarks(
        curves, tmp_path / "p.png", counts={"aime24": (8, 30), "math500": (1, 500)}
    )
    (fig,) = figures
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == [
        "aime24 (n=8 samples, 30 problems)",
        "math500 (n=1 samples, 500 problems)",
    ]
    fig.canvas.draw()
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["1", "2", "4", "8"]
