"""The plots people ask for after a search (matplotlib).

Optuna draws what it knows from the stored study (`optuna_figures`: optimization history, parallel
coordinates, importances, slices, contours, timeline, Pareto front), in the pictures Optuna users
recognise. Drawn here is only what Optuna cannot see: each evaluation's FID curve, ASHA's
stopped-vs-completed picture and the trials' sample grids. Each of those draws on `ax` (a new
figure when None) and returns the axes, so notebooks can lay them out as they like. `metric`
defaults to FID; any reported column (mifid, kid, ...) works.
"""

from __future__ import annotations

import io
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from core.results import TrialStatus

STOPPED = TrialStatus.STOPPED.value   # trials ASHA ended before train.epochs


def _axes(ax, figsize=(6, 4)):
    return plt.subplots(figsize=figsize)[1] if ax is None else ax


def plot_metric_curves(history: pd.DataFrame, metric: str = "fid", ax=None, by: str = "trial"):
    """One line per trial: `metric` at each evaluation against the epoch."""
    ax = _axes(ax)
    for name, rows in history.groupby(by, sort=True):
        ax.plot(rows["epoch"], rows[metric], marker="o", markersize=3, label=str(name))
    ax.set(xlabel="epoch", ylabel=metric, title=f"{metric} per evaluation")
    if history[by].nunique() <= 12:
        ax.legend(fontsize="small")
    return ax


def plot_asha(history: pd.DataFrame, trials: pd.DataFrame, metric: str = "fid", ax=None):
    """ASHA's picture: completed trials in colour, trials it stopped early in grey ending in a cross,
    so the rungs where it cut show up as columns of crosses."""
    ax = _axes(ax)
    status = trials.set_index("trial")["status"]
    for name, rows in history.groupby("trial", sort=True):
        state = status.get(name, "")
        if state.startswith(STOPPED):
            ax.plot(rows["epoch"], rows[metric], color="0.6", linewidth=1)
            ax.plot(rows["epoch"].iloc[-1:], rows[metric].iloc[-1:], "x", color="0.3")
        else:
            ax.plot(rows["epoch"], rows[metric], linewidth=2, label=f"{name} ({state})")
    n_stopped = sum(s.startswith(STOPPED) for s in status)
    ax.set(xlabel="epoch", ylabel=metric,
           title=f"{len(status) - n_stopped} ran to the end, {n_stopped} stopped early (grey, x)")
    ax.legend(fontsize="small")
    return ax


def plot_schedules(history: pd.DataFrame, params: list[str], axes=None):
    """PBT: each searched value against the epoch, one line per trial, a dot where the trial copied
    another one (`exploited_from`). Values are what each evaluation trained with."""
    params = [p for p in params if p in history and pd.api.types.is_numeric_dtype(history[p])]
    if axes is None:
        axes = plt.subplots(1, max(1, len(params)), figsize=(4.5 * max(1, len(params)), 3.5), squeeze=False)[1][0]
    for ax, param in zip(axes, params):
        for name, rows in history.groupby("trial", sort=True):
            line, = ax.step(rows["epoch"], rows[param], where="pre", label=str(name))
            if "exploited_from" in rows:
                copied = rows[rows["exploited_from"].notna()]
                ax.plot(copied["epoch"], copied[param], "o", color=line.get_color())
        ax.set(xlabel="epoch", ylabel=param, title=f"{param} (dot: copied another trial)")
        values = history[param].dropna()
        if len(values) and values.min() > 0 and values.max() / values.min() > 20:   # learning rates
            ax.set_yscale("log")
    return axes


def optuna_figures(study, target_name: str = "objective") -> dict:
    """Optuna's own views of a study (optuna.visualization.matplotlib), {title: matplotlib Figure},
    in reading order. The Pareto front only for a study with several objectives; a view the study
    cannot draw yet (importances need two completed trials) is left out with a warning saying why.
    `target_name` labels the objective (e.g. "best fid": what the searcher was told)."""
    import optuna
    from optuna.visualization import matplotlib as vis

    if len(study.directions) == 1:
        views = {"optimization history": lambda: vis.plot_optimization_history(study, target_name=target_name),
                 "parallel coordinates": lambda: vis.plot_parallel_coordinate(study, target_name=target_name),
                 "hyperparameter importance (fANOVA)": lambda: vis.plot_param_importances(study, target_name=target_name),
                 "slice: the objective against each searched value": lambda: vis.plot_slice(study, target_name=target_name),
                 "contour: pairs of searched values": lambda: vis.plot_contour(study, target_name=target_name),
                 "timeline": lambda: vis.plot_timeline(study)}
    else:   # several objectives: Optuna's other views need one chosen as the target
        views = {"Pareto front": lambda: vis.plot_pareto_front(study),
                 "timeline": lambda: vis.plot_timeline(study)}
    figures, cannot = {}, {}
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)   # not one line per parameter that did not vary
    try:
        for title, draw in views.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)   # the matplotlib backend
                warnings.simplefilter("ignore", UserWarning)   # matplotlib: a value all trials share spans no width
                try:
                    drawn = np.asarray(draw())   # an Axes, or an array of them (slice: 1 x k, contour: k x k)
                except ValueError as e:
                    cannot[title] = e
                    continue
            figure = drawn.flat[0].figure
            if drawn.ndim == 2:   # Optuna's grid of panels, in its default 6.4 x 4.8 inches, is unreadable
                figure.set_size_inches(2.6 * drawn.shape[1] + 1, 2.2 * drawn.shape[0] + 0.5)
            figures[title] = figure
    finally:
        optuna.logging.set_verbosity(verbosity)
    for title, e in cannot.items():
        warnings.warn(f"Optuna's {title} cannot be drawn for study {study.study_name} yet: {e}", stacklevel=2)
    return figures


def show_image_rows(rows: dict[str, dict[str, np.ndarray]], titles: dict[str, str] | None = None):
    """A figure with one row per trial and one column per image tag: the trials' sample grids
    side by side (analysis.samples.trial_sample_grids)."""
    columns = sorted({tag for images in rows.values() for tag in images})
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(4 * len(columns), 3 * len(rows)), squeeze=False)
    for r, (trial, images) in enumerate(rows.items()):
        for c, tag in enumerate(columns):
            ax = axes[r][c]
            ax.axis("off")
            if tag in images:
                ax.imshow(images[tag])
            ax.set_title(f"{(titles or {}).get(trial, trial)}\n{tag}", fontsize="small")
    fig.tight_layout()
    return fig


def figure_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")   # tight: Optuna's long axis labels are not cut off
    return buffer.getvalue()
