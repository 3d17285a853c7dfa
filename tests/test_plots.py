"""The YY x ZZ heatmaps mark each row's correct answer (issue 22): the ZZ = YY diagonal for a gt /
lt task, the answer cell of each YY for an exact one, inside the task's answer columns, and the
caption under the figure says which."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest

import clt_bench.plots as plots
from clt_bench.plots import yy_zz_grid, yy_zz_heatmap


def _marks(ax: plt.Axes) -> tuple[list[float], list[float]]:
    """The plotted (x, y) of the heatmap's one marker line, cell centres back to (ZZ, row)."""
    (line,) = ax.lines
    xs = [float(x) - 0.5 for x in line.get_xdata()]
    ys = [float(y) - 0.5 for y in line.get_ydata()]
    return xs, ys


def _draw(matrix: np.ndarray, **kw: object) -> plt.Axes:
    fig, ax = plt.subplots()
    yy_zz_heatmap(matrix, "unused.png", "t", ax=ax, **kw)  # type: ignore[arg-type]
    return ax


def test_exact_heatmap_marks_each_rows_answer():
    rows = list(range(2, 99))
    answers = [y + 3 if y % 2 else y + 2 for y in rows]  # Hanna's arithmetic step, roughly
    answers[0] = -1  # no prompt with YY = 02: its row stays bare
    ax = _draw(np.random.default_rng(0).random((97, 100)), answers=answers)
    xs, ys = _marks(ax)
    kept = [i for i, z in enumerate(answers) if 0 <= z < 100]
    assert ys == kept and xs == [answers[i] for i in kept]
    assert len(kept) == 97 - 3  # YY = 02 (no prompt), 97 and 98 (answer 100: no column)
    assert ax.lines[0].get_linestyle() == "None"  # cells marked one by one, no line through them
    plt.close(ax.figure)


def test_gt_heatmap_marks_the_diagonal():
    ax = _draw(np.random.default_rng(0).random((97, 100)))
    xs, ys = _marks(ax)
    assert xs == list(range(2, 99)) and ys == list(range(97))
    assert ax.lines[0].get_linestyle() == "--" and ax.lines[0].get_color() == "white"
    diverging = _draw(np.random.default_rng(0).normal(size=(97, 100)), diverging=True)
    assert _marks(diverging) == (xs, ys)  # on white zero cells the mark is black
    assert diverging.lines[0].get_color() == "black"
    plt.close("all")


def test_marks_stay_inside_a_smaller_answer_space():
    rows = list(range(2, 50))  # heatmap_rows(50)
    m = np.random.default_rng(0).random((len(rows), 50))
    xs, _ = _marks(_draw(m, yy_values=rows, answers=[y + 1 for y in rows]))
    assert xs == [y + 1 for y in rows[:-1]]  # YY = 49 -> 50: outside the 50 columns
    xs, _ = _marks(_draw(m, yy_values=rows))
    assert max(xs) == 49
    with pytest.raises(ValueError, match="answers for"):
        _draw(m, yy_values=rows, answers=[3, 4])
    plt.close("all")


def _caption(monkeypatch: pytest.MonkeyPatch, draw: object) -> str:
    """The text under the saved figure (``caption_below``: at the figure's bottom edge)."""
    saved: list[plt.Figure] = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: saved.append(fig))
    draw()  # type: ignore[operator]
    (fig,) = saved
    (text,) = [t for t in fig.texts if t.get_position()[1] == 0.0]
    plt.close(fig)
    return text.get_text()


def test_the_caption_says_what_the_mark_is(monkeypatch):
    m = np.random.default_rng(0).random((97, 100))
    gt = _caption(monkeypatch, lambda: yy_zz_heatmap(m, "x.png", "t"))
    exact = _caption(monkeypatch, lambda: yy_zz_heatmap(m, "x.png", "t", answers=[5] * 97))
    assert gt == "dashed line: ZZ = YY"
    assert exact == "squares: the correct ZZ of each YY"
    grid = {"gt": m, "exact": m}
    both = _caption(
        monkeypatch, lambda: yy_zz_grid(grid, "x.png", "t", answers={"exact": [5] * 97})
    )
    assert both == f"{gt}; {exact}"


def test_grid_panels_keep_their_answers_on_the_rows_with_prompts(monkeypatch):
    m = np.full((97, 100), np.nan)
    m[[1, 5, 9]] = 0.5  # YY = 03, 07, 11 have prompts
    answers = [y + 2 for y in range(2, 99)]
    saved: list[plt.Figure] = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: saved.append(fig))
    yy_zz_grid({"exact": m}, "x.png", "t", answers={"exact": answers})
    xs, ys = _marks(saved[0].axes[0])
    assert (xs, ys) == ([5, 9, 13], [0, 1, 2])
    plt.close("all")


@pytest.mark.parametrize("exact", [False, True])
def test_neuron_panels_mark_the_answers(tmp_path, monkeypatch, exact):
    """The baseline's neuron outer-product panels (imshow, not seaborn) mark the same cells."""
    import torch

    from clt_bench.baseline import circuit_figures
    from clt_bench.baseline.neurons import NeuronAnalysis

    rows = list(range(2, 2 + 48))  # a 50-answer task
    outer = {n: torch.randn(len(rows), 50) for n in (3, 7)}
    na = NeuronAnalysis(1, [3, 7], {3: -0.1}, torch.zeros(8), torch.zeros(8), outer, [], 0.5)
    answers = [(y + 1) % 50 for y in rows] if exact else None
    figs: list[plt.Figure] = []
    monkeypatch.setattr(circuit_figures, "save_figure", lambda fig, path: figs.append(fig) or path)
    circuit_figures.neuron_panels(na, 2, tmp_path / "n.png", "m", answers)
    for ax in figs[0].axes[:2]:
        xs, ys = _marks(ax)
        assert ys == list(range(len(rows)))
        assert xs == ([float(z) for z in answers] if answers else [float(y) for y in rows])
    plt.close(figs[0])
