"""One self-contained HTML page per experiment, to read or send without Jupyter or a server.

    path = write_report("runs/quickstart")      # -> runs/quickstart/report.html
    python experiments/report.py runs/quickstart

Sections, each shown only when the experiment has something for it: the leaderboard (every column
the search wrote, known or not), the search metric per evaluation and ASHA's stopped-vs-completed
picture, Optuna's views of the stored study (optuna.db: history, parallel coordinates, importances,
slices, contours, timeline; the Pareto front when it has several objectives), confirmation results
(`confirm/confirm.csv` and `confirm-holdout/confirm.csv`, written by experiments/confirm.py), and the
top trials' sample grids at their best evaluation. Figures are PNGs embedded as base64 `data:` URIs
and the style is inline: the page loads nothing from disk or network.
"""

from __future__ import annotations

import base64
import html
import os
import warnings
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from analysis import plots, samples
from analysis.experiments import Experiment, load_experiment_dir, load_study
from core import confirm as C

REPORT_FILE = "report.html"
TOP_K = 3                         # trials whose samples are shown
LOADER_COLUMNS = ("experiment", "family", "trial_dir")   # analysis' additions to the leaderboard: not shown

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
.meta { color: #555; } figure { display: inline-block; margin: 0.5em; vertical-align: top; max-width: 47%; }
.wide { overflow-x: auto; }
figure img { max-width: 100%; border: 1px solid #eee; } figcaption { color: #555; font-size: 0.9em; }
table { border-collapse: collapse; font-size: 0.85em; } td, th { padding: 0.25em 0.6em; border: 1px solid #ddd; }
th { background: #f4f4f4; } tr:first-child td { font-weight: bold; } .note { color: #a40; }
"""


def _figure(fig, caption: str) -> str:
    """A matplotlib figure as an inline <figure> (closed afterwards: reports draw many)."""
    import matplotlib.pyplot as plt

    data = base64.b64encode(plots.figure_png(fig)).decode("ascii")
    plt.close(fig)
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _table(frame: pd.DataFrame) -> str:
    """Any columns (another version may add some): numbers to 4 significant digits, text escaped."""
    table = frame.to_html(index=False, na_rep="", escape=True, border=0, float_format=lambda value: f"{value:.4g}")
    return f'<div class="wide">{table}</div>'


def _leaderboard(exp: Experiment) -> pd.DataFrame:
    board = exp.trials.drop(columns=[c for c in LOADER_COLUMNS if c in exp.trials])
    if "checkpoint" in board:   # relative to the experiment: the absolute path says nothing new
        board["checkpoint"] = [os.path.relpath(c, exp.path) if isinstance(c, str) else c for c in board["checkpoint"]]
    return board


def render_report(exp: Experiment, top_k: int = TOP_K) -> str:
    """The report page of a loaded experiment, as an HTML string."""
    import matplotlib

    matplotlib.use("Agg")   # no display needed: figures only become PNGs
    metric = exp.metric
    extractors = sorted(exp.history["extractor"].dropna().unique()) if "extractor" in exp.history else []
    parts = [f"<h1>{html.escape(exp.name)}</h1>",
             f'<p class="meta">{html.escape(exp.cfg.family)}, {len(exp.trials)} trials, searched '
             f"{html.escape(', '.join(exp.searched))}; ranked by best {html.escape(metric)}; features: "
             f"{html.escape(', '.join(extractors) or 'none reported')}. {html.escape(str(exp.path))}, "
             f"report written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.</p>",
             "<h2>Leaderboard (best first)</h2>",
             "<p>Scores at each trial's best evaluation (<code>epoch</code>); <code>checkpoint</code> is the kept "
             "checkpoint of that evaluation.</p>",
             _table(_leaderboard(exp))]

    if not exp.history.empty and metric in exp.history:
        parts += [f"<h2>{html.escape(metric)} per evaluation</h2>",
                  _figure(plots.plot_metric_curves(exp.history, metric).figure, f"{metric} of every trial per epoch"),
                  _figure(plots.plot_asha(exp.history, exp.trials, metric).figure,
                          "completed trials in colour, trials ASHA stopped early in grey")]

    parts.append("<h2>The Optuna study</h2>")
    try:
        study = load_study(exp)
    except FileNotFoundError as e:   # search.searcher=random stores no study
        parts.append(f'<p class="note">{html.escape(str(e))}</p>')
    else:
        with warnings.catch_warnings(record=True) as skipped:
            warnings.simplefilter("always")
            figures = plots.optuna_figures(study, target_name=f"best {metric}")
        parts += [_figure(fig, title) for title, fig in figures.items()]
        parts += [f'<p class="note">{html.escape(str(w.message))}</p>' for w in skipped
                  if "cannot be drawn" in str(w.message)]

    for run, what in ((C.CONFIRM_DIR, "the top trials and the defaults retrained on seeds the search never used"),
                      (C.HOLDOUT_DIR, "the best confirmed configuration and the defaults on new seeds (--holdout)")):
        table = exp.path / run / C.TABLE_FILE
        if table.is_file():
            parts += [f"<h2>{'Confirmation runs' if run == C.CONFIRM_DIR else 'Held out'}</h2>",
                      f"<p>{html.escape(f'{run}/{C.TABLE_FILE}')}: {html.escape(what)}.</p>",
                      _table(pd.read_csv(table, keep_default_na=False, na_values=[""]))]

    grids = samples.top_trial_grids(exp.trials, k=top_k)
    if any(grids.values()):
        parts.append(f"<h2>Samples of the top {len(grids)} trials at their best evaluation</h2>")
        scores = exp.trials.set_index("trial")[f"best_{metric}"]
        for trial, images in grids.items():
            if images:
                caption = f"{trial}: best {metric} {scores[trial]:.4g}"
                parts.append(_figure(plots.show_image_rows({trial: images}, {trial: caption}), caption))

    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(exp.name)}: paintsweep report</title><style>{STYLE}</style></head>\n"
            f"<body>\n{body}\n</body></html>\n")


def write_report(experiment_dir: str | os.PathLike, out: str | os.PathLike | None = None,
                 top_k: int = TOP_K) -> Path:
    """Render the report of `experiment_dir` into `out` (default <experiment>/report.html),
    written whole or not at all (a temporary file renamed over it)."""
    exp = load_experiment_dir(experiment_dir)
    out = Path(out) if out is not None else exp.path / REPORT_FILE
    partial = out.with_name(f".{out.name}.partial")
    try:
        partial.write_text(render_report(exp, top_k), encoding="utf-8")
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return out
