"""The paper's figures from a study's runs (matplotlib, 150 dpi): one colour per optimizer,
solid for learned optimizers, dashed for hand-designed baselines; a panel without data says
"no data". Each ``fig*`` function builds its figure (``None``: nothing to draw),
:func:`write_all` saves those of :data:`FIGURES` asked for."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from l2o_lightning.runs import Run, aggregate, histogram_optimizee, select  # noqa: E402
from l2o_lightning.steps import HISTOGRAM_STEPS, logged_step, optimizee_step  # noqa: E402

DPI = 150
NO_DATA = "no data"
ZEROS_LEFT_OUT = "|u| = 0, not on the log axis:"  # begins a histogram panel's note of the zeros
COLORS = {
    "l2o": "tab:red", "l2o_reg_0.1": "tab:orange", "l2o_reg_0.5": "tab:olive", "l2o_reg_1": "tab:brown",
    "sgd": "tab:blue", "adam": "tab:green", "lion": "tab:purple",
    "lion_sgd_0.1": "tab:cyan", "lion_sgd_0.25": "tab:pink", "lion_sgd_0.5": "tab:gray",
}


def _style(optimizer: str) -> dict[str, object]:
    learned = optimizer.startswith("l2o")
    return {"color": COLORS.get(optimizer), "linestyle": "-" if learned else "--", "label": optimizer}


def _present(runs: list[Run], optimizee: str, wanted: tuple[str, ...] | None = None) -> list[str]:
    names = sorted({r.optimizer for r in runs if r.optimizee == optimizee})
    return [o for o in wanted if o in names] if wanted else names


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last ``window`` values (fewer at the start)."""
    sums = np.cumsum(np.insert(values, 0, 0.0))
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    return (sums[1:] - sums[np.arange(1, len(values) + 1) - counts]) / counts


def _band(ax: plt.Axes, runs: list[Run], optimizee: str, optimizer: str, tag: str, smooth: int) -> None:
    """Seed mean +- std of ``tag`` for one optimizer, each a ``smooth``-step moving average, over
    the 1-based optimizee steps (the paper's x-axis; logged at ``global_step = k - 1``)."""
    agg = aggregate(select(runs, optimizee, optimizer), tag)
    if agg is None:
        return
    style = _style(optimizer)
    mean, std = moving_average(agg.mean, smooth), moving_average(agg.std, smooth)
    steps = optimizee_step(agg.steps)
    ax.plot(steps, mean, **style)
    ax.fill_between(steps, mean - std, mean + std, color=style["color"], alpha=0.2)


def _say_no_data(ax: plt.Axes) -> None:
    ax.text(0.5, 0.5, NO_DATA, transform=ax.transAxes, ha="center", va="center", color="gray")


def _finish(ax: plt.Axes, drawn: bool) -> None:
    """A legend on a panel with data, the words :data:`NO_DATA` across one without."""
    if drawn:
        ax.legend(fontsize=7)
    else:
        _say_no_data(ax)


def _panel(ax, runs, optimizee, optimizers, tag, title, ylabel, log=False, smooth=1) -> None:
    for optimizer in optimizers:
        _band(ax, runs, optimizee, optimizer, tag, smooth)
    ax.set(title=title, xlabel="optimizee step", ylabel=ylabel)
    if log and ax.lines:
        ax.set_yscale("log")
    _finish(ax, bool(ax.lines))


def fig1_symmetry(runs: list[Run]) -> plt.Figure:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    order = ("l2o", "lion", "adam", "sgd")
    _panel(axes[0], runs, "leaky_relu", _present(runs, "leaky_relu", order),
           "symmetry/rescale/update/abs_sum", "Rescale symmetry breaking (Leaky ReLU)", "|sum_j d_j|")
    _panel(axes[1], runs, "bn_relu", _present(runs, "bn_relu", order),
           "symmetry/scale/update/abs_sum", "Scale symmetry breaking (BN + ReLU)", "|sum_j d_j|")
    return fig


def fig2_regularization(runs: list[Run]) -> plt.Figure:
    """Train loss of the L2Os meta-trained with symmetry regularization (``l2o_reg_<beta>``)
    beside the L2O without it and the baselines; a panel of an optimizee without such runs
    says :data:`NO_DATA` (the others alone show no regularization)."""
    order = ("l2o", "l2o_reg_0.1", "l2o_reg_0.5", "l2o_reg_1", "sgd", "adam", "lion")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    for ax, optimizee in zip(axes, ("leaky_relu", "bn_relu"), strict=True):
        present = _present(runs, optimizee, order)
        regularized = any(optimizer.startswith("l2o_reg_") for optimizer in present)
        _panel(ax, runs, optimizee, present if regularized else [], "train/loss",
               f"Symmetry-breaking regularization ({optimizee})", "train loss (10-step average)",
               log=True, smooth=10)
    return fig


def fig3_tail_covariance(runs: list[Run]) -> plt.Figure:
    order = ("l2o", "lion", "adam", "sgd")
    present = _present(runs, "leaky_relu", order)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    width = 0.38
    for i, optimizer in enumerate(present):
        cell = select(runs, "leaky_relu", optimizer)
        bars = ((-width / 2, "tail_index/grad", "//"), (width / 2, "tail_index/update", ""))
        for offset, tag, hatch in bars:
            agg = aggregate(cell, tag)
            if agg is not None:
                axes[0].bar(i + offset, agg.mean.mean(), width, yerr=agg.std.mean(), hatch=hatch,
                            color=COLORS.get(optimizer), edgecolor="black")
    axes[0].set_xticks(range(len(present)), present)
    axes[0].set(title="Tail index (hatched: gradient noise, plain: update noise)", ylabel="alpha")
    if not axes[0].patches:
        _finish(axes[0], False)
    _panel(axes[1], runs, "leaky_relu", present, "covariance/top_eig",
           "Top eigenvalue of the update covariance", "lambda_max", log=True)
    return fig


def magnitude_fractions(edges: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """A histogram of magnitudes (values ``>= 0``; ``edges``: its buckets' ``len(counts) + 1``
    edges) as a log axis can draw it: the edges of the buckets that start above zero, each such
    bucket's fraction of all the values, and how many values are left out: those of buckets
    starting at zero (exact zeros, with the bins of
    :func:`~l2o_lightning.dynamics.histograms.magnitude_edges`).

    >>> edges, fractions, zeros = magnitude_fractions(np.array([0.0, 1e-3, 1e-1, 1e1]), np.array([2, 5, 3]))
    >>> edges.tolist(), fractions.tolist(), zeros
    ([0.001, 0.1, 10.0], [0.5, 0.3], 2)
    """
    above_zero = edges[:-1] > 0
    fractions = counts / max(counts.sum(), 1)
    drawn_edges = np.append(edges[:-1][above_zero], edges[-1]) if above_zero.any() else np.array([])
    return drawn_edges, fractions[above_zero], int(counts[~above_zero].sum())


def fig_histograms(runs: list[Run]) -> plt.Figure:
    """The first seed's ``|u|`` histograms of the first layer's weights at the paper's steps
    (:data:`~l2o_lightning.steps.HISTOGRAM_STEPS`, a panel each, in a grid, one legend) on
    :func:`~l2o_lightning.runs.histogram_optimizee`; a panel notes per optimizer how many zeros
    its log axis leaves out (:func:`magnitude_fractions`)."""
    order = ("l2o", "lion", "adam", "sgd")
    optimizee = histogram_optimizee(runs)
    columns = math.ceil(len(HISTOGRAM_STEPS) / 2)
    fig, grid = plt.subplots(2, columns, figsize=(3.2 * columns, 6), sharey=True, layout="constrained")
    axes = grid.ravel()
    zeros: dict[int, list[str]] = {step: [] for step in HISTOGRAM_STEPS}
    for optimizer in _present(runs, optimizee, order):
        per_step = select(runs, optimizee, optimizer)[0].histograms("update_hist/linears.0.weight")
        for ax, step in zip(axes, HISTOGRAM_STEPS, strict=True):
            if logged_step(step) not in per_step:
                continue
            edges, fractions, left_out = magnitude_fractions(*per_step[logged_step(step)])
            if len(fractions):  # a step line: each bucket's fraction from its left edge to the next
                ax.step(edges, np.append(fractions, fractions[-1]), where="post", **_style(optimizer))
            if left_out:
                zeros[step].append(f"{optimizer} {left_out}")
    for ax, step in zip(axes, HISTOGRAM_STEPS, strict=True):
        ax.set(title=f"step {step}", xlabel="|update|")
        if ax.lines:
            ax.set_xscale("log")
        else:
            _say_no_data(ax)
        if zeros[step]:
            ax.text(0.02, 0.98, f"{ZEROS_LEFT_OUT} {', '.join(zeros[step])}", transform=ax.transAxes,
                    ha="left", va="top", fontsize=6, color="dimgray")
    for ax in grid[:, 0]:
        ax.set_ylabel("fraction of weights")
    labelled = {line.get_label(): line for ax in axes for line in ax.lines}
    if labelled:
        fig.legend(labelled.values(), labelled.keys(), loc="outside lower center", ncol=len(labelled))
    fig.suptitle(f"|update| of the first layer's weights, first seed ({optimizee})")
    return fig


def fig_lion_sgd(runs: list[Run]) -> plt.Figure:
    order = ("lion", "lion_sgd_0.5", "lion_sgd_0.25", "lion_sgd_0.1", "sgd")
    present = _present(runs, "leaky_relu", order)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    _panel(axes[0], runs, "leaky_relu", present, "symmetry/translation/update/abs_sum",
           "Translation symmetry breaking (Lion-SGD)", "|sum_i d_i|")
    _panel(axes[1], runs, "leaky_relu", present, "train/loss", "Train loss (Lion-SGD)",
           "train loss (10-step average)", log=True, smooth=10)
    return fig


def fig_generalization(runs: list[Run]) -> plt.Figure | None:
    """L2O meta-trained on one optimizee (``l2o_from_<name>``; ``l2o`` = its own) vs Adam,
    as the ratio of mean train loss over the first 200 steps; ``None`` without such runs."""
    prefix = "l2o_from_"
    sources = sorted({r.optimizer.removeprefix(prefix) for r in runs if r.optimizer.startswith(prefix)})
    if not sources:
        return None
    optimizees = sorted({r.optimizee for r in runs if r.optimizer == "l2o" or r.optimizer.startswith(prefix)})
    matrix = np.full((len(sources), len(optimizees)), np.nan)
    for i, source in enumerate(sources):
        for j, target in enumerate(optimizees):
            label = "l2o" if source == target else f"l2o_from_{source}"
            l2o = aggregate(select(runs, target, label), "train/loss")
            adam = aggregate(select(runs, target, "adam"), "train/loss")
            if l2o is not None and adam is not None:
                matrix[i, j] = l2o.window_mean(0, 199) / adam.window_mean(0, 199)
    size = (1.6 * len(optimizees) + 2, 1.2 * len(sources) + 1.5)
    fig, ax = plt.subplots(figsize=size, layout="constrained")
    image = ax.imshow(matrix, cmap="RdYlGn_r", vmin=0.5, vmax=1.5)
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(optimizees)), optimizees, rotation=30)
    ax.set_yticks(range(len(sources)), sources)
    ax.set(xlabel="meta-tested on", ylabel="meta-trained on", title="L2O / Adam mean loss, steps 1-200")
    fig.colorbar(image, ax=ax)
    return fig


# the figures by the names l2o-reproduce's and l2o-report's --only take: file, builder
FIGURES = {
    "fig1": ("fig1_symmetry.png", fig1_symmetry),
    "fig2": ("fig2_regularization.png", fig2_regularization),
    "fig3": ("fig3_tail_covariance.png", fig3_tail_covariance),
    "hist": ("fig_histograms.png", fig_histograms),
    "lion_sgd": ("fig_lion_sgd.png", fig_lion_sgd),
    "generalization": ("fig_generalization.png", fig_generalization),
}


def write_all(runs: list[Run], out: Path, only: Iterable[str] = FIGURES) -> list[str]:
    """Save the figures of :data:`FIGURES` named in ``only`` under ``out``, except those with
    nothing to draw; the names of those not written."""
    not_written = []
    for name in only:
        file, build = FIGURES[name]
        fig = build(runs)
        if fig is None:
            not_written.append(name)
            continue
        fig.savefig(out / file, dpi=DPI)
        plt.close(fig)
    return not_written
