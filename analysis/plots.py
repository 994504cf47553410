"""The plots people ask for after a search, from analysis.experiments tables (matplotlib).

Each function draws on `ax` (a new figure when None) and returns the axes, so notebooks can lay
them out as they like. `metric` defaults to FID; any reported column (mifid, kid, ...) works.
"""

from __future__ import annotations

import io
import math

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


def plot_best_vs_params(trials: pd.DataFrame, params: list[str], metric: str = "fid", axes=None):
    """One scatter per searched value: each trial's best `metric` against the value it tried
    (log x for values spanning more than a decade, e.g. learning rates)."""
    if axes is None:
        _, axes = plt.subplots(1, len(params), figsize=(3.2 * len(params), 3), squeeze=False)
        axes = axes[0]
    for ax, param in zip(axes, params):
        x = trials[param]
        ax.scatter(x.astype(str) if x.dtype == object else x, trials[metric])
        if _is_log_scale(x):
            ax.set_xscale("log")
        ax.set(xlabel=param, ylabel=f"best {metric}" if ax is axes[0] else None)
    return axes


def plot_parallel_coordinates(trials: pd.DataFrame, params: list[str], metric: str = "fid", ax=None):
    """Every trial as a line through its searched values (each axis scaled to its own range,
    log for wide ranges) ending at its best `metric`; colour = that metric (darker = better)."""
    ax = _axes(ax, figsize=(1.6 * (len(params) + 1) + 2, 4))
    rows = trials.dropna(subset=[metric])
    columns = [*params, metric]
    scaled = pd.DataFrame({c: _unit_scale(rows[c]) for c in columns})
    colours = plt.get_cmap("viridis_r")(_unit_scale(rows[metric]).to_numpy())
    for i in range(len(rows)):
        ax.plot(range(len(columns)), scaled.iloc[i], color=colours[i], marker="o")
    ax.set_xticks(range(len(columns)), columns, rotation=20)
    ax.set_yticks([0, 1], ["low", "high"])
    ax.grid(axis="x", color="0.85")   # one vertical axis per column
    ax.set_title(f"searched values -> best {metric}")
    return ax


def plot_importances(importances: pd.Series, ax=None):
    """analysis.experiments.param_importances as horizontal bars, most important on top."""
    ax = _axes(ax, figsize=(5, 0.5 * len(importances) + 1))
    ordered = importances.sort_values()
    ax.barh(ordered.index, ordered.to_numpy())
    ax.set(xlabel="importance (Optuna fANOVA)", title="hyperparameter importance")
    return ax


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
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _is_log_scale(values: pd.Series) -> bool:
    if not pd.api.types.is_numeric_dtype(values) or (values <= 0).any():
        return False
    return values.max() / values.min() > 10


def _unit_scale(values: pd.Series) -> pd.Series:
    """Values -> [0, 1] on their own range (log when wide; categories by sorted order)."""
    if not pd.api.types.is_numeric_dtype(values):
        order = {v: i for i, v in enumerate(sorted(values.astype(str).unique()))}
        values = values.astype(str).map(order).astype(float)
    elif _is_log_scale(values):
        values = np.log(values.astype(float))
    low, high = values.min(), values.max()
    span = high - low
    return (values - low) / span if span > 0 and math.isfinite(span) else values * 0 + 0.5
