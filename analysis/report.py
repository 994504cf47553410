"""One self-contained HTML page per experiment, to read or send without Jupyter or a server.

    path = write_report("runs/quickstart")      # -> runs/quickstart/report.html
    python experiments/report.py runs/quickstart

The page leads with the answer (analysis.answer: what was searched, the best configuration against
the defaults, and confirm.py's Confirmation / Best confirmed / Held out lines, or the command that
runs each), then the details, each section shown only when the experiment has something for it:
the leaderboard (every column the search wrote, known or not), confirmation results
(`confirm/confirm.csv` and `confirm-holdout/confirm.csv`, written by experiments/confirm.py), the
search metric per evaluation and ASHA's stopped-vs-completed picture, Optuna's views of the stored
study (optuna.db: history, parallel coordinates, importances, slices, contours, timeline; the Pareto
front when it has several objectives), and the top trials' sample grids at their best evaluation.

Laid out for a 1280 px window: tables put the columns a reader decides by first, break long names,
and scroll sideways inside their own box when they are still wider than the page; sample grids are
scaled up by a whole factor with no smoothing (samples.enlarged). Figures are PNGs embedded as
base64 `data:` URIs and the style is inline: the page loads nothing from disk or network.
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
import warnings
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from analysis import plots, samples
from analysis.answer import CONFIRM_VERDICT_COLUMNS, answer, leaderboard_verdict_columns, verdict_first
from analysis.experiments import Experiment, load_experiment_dir, load_study
from core import confirm as C

REPORT_FILE = "report.html"
TOP_K = 3                         # trials whose samples are shown
LOADER_COLUMNS = ("experiment", "family", "trial_dir")   # analysis' additions to the leaderboard: not shown
# The widest a sample grid is drawn: the page's text column in a 1280 px window (body's max-width
# less its padding), and about a screen high.
SAMPLE_BOX = (1120, 720)

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { margin: 0 0 0.3em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
#answer { background: #f3f6fa; border: 1px solid #cdd8e4; padding: 0.3em 1em; line-height: 1.4; }
#answer p { margin: 0.5em 0; overflow-wrap: anywhere; } #answer .label { font-weight: bold; }
.meta { color: #555; } figure { display: inline-block; margin: 0.5em; vertical-align: top; max-width: 47%; }
figure.samples { display: block; max-width: 100%; }
figure.samples img { image-rendering: pixelated; height: auto; }
.wide { overflow-x: auto; }
figure img { max-width: 100%; border: 1px solid #eee; } figcaption { color: #555; font-size: 0.9em; }
table { border-collapse: collapse; font-size: 0.85em; } td, th { padding: 0.25em 0.5em; border: 1px solid #ddd; }
th { background: #f4f4f4; } tr:first-child td { font-weight: bold; } .note { color: #a40; }
"""


def _figure(fig, caption: str) -> str:
    """A matplotlib figure as an inline <figure> (closed afterwards: reports draw many)."""
    import matplotlib.pyplot as plt

    data = base64.b64encode(plots.figure_png(fig)).decode("ascii")
    plt.close(fig)
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _table(frame: pd.DataFrame, first: tuple[str, ...] = (), searched: list[str] = ()) -> str:
    """Any columns (another version may add some), those named in `first` first, then `searched`:
    numbers to 4 significant digits, text escaped, in a box that scrolls sideways if the table is
    still wider than the page. Names may break after _ . / (a header as long as its column's widest
    number, not its longest name; a checkpoint path in two lines)."""
    table = verdict_first(frame, first, searched).to_html(index=False, na_rep="", escape=True, border=0,
                                                           float_format=lambda value: f"{value:.4g}")
    table = re.sub(r"<th>([^<]*)</th>", lambda cell: f"<th>{_breakable(cell[1], '_./')}</th>", table)
    table = re.sub(r"<td>([^<]*)</td>", lambda cell: f"<td>{_breakable(cell[1], '/')}</td>", table)
    return f'<div class="wide">{table}</div>'


def _breakable(text: str, after: str) -> str:
    """`text` (HTML, escaped already) with a line-break opportunity (<wbr>) after each character in `after`."""
    return re.sub(f"([{re.escape(after)}])", r"\1<wbr>", text)


def _answer(exp: Experiment) -> str:
    """The box the page opens with (analysis.answer), its verdicts in bold."""
    lines = "".join(f'<p><span class="label">{html.escape(label)}</span> {_verdict_in_bold(text)}</p>'
                    for label, text in answer(exp))
    return f'<section id="answer">{lines}</section>'


# What confirm.py and racing call their outcomes, longest first (confirm.py's OUTCOMES contain the
# bare verdicts): the phrase a line ends its argument with.
VERDICTS = sorted({*C.OUTCOMES.values(), C.BETTER, C.SAME, C.WORSE, C.FAILS_MORE, C.TOO_FEW}, key=len, reverse=True)


def _verdict_in_bold(text: str) -> str:
    """`text` escaped, its last verdict phrase in <strong> (the longest of those ending there)."""
    escaped = html.escape(text)
    found = [(at + len(phrase), len(phrase), at) for phrase in map(html.escape, VERDICTS)
             if (at := escaped.rfind(phrase)) >= 0]
    if not found:
        return escaped
    end, _, start = max(found)
    return f"{escaped[:start]}<strong>{escaped[start:end]}</strong>{escaped[end:]}"


def _png(image) -> str:
    """An (H, W, 3) uint8 array as a base64 PNG data: URI."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


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
    parts = [f"<h1>{html.escape(exp.name)}</h1>", _answer(exp),
             f'<p class="meta">Features: {html.escape(", ".join(extractors) or "none reported")}. '
             f"{html.escape(str(exp.path))}, report written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.</p>",
             "<h2>Leaderboard (best first)</h2>",
             "<p>Scores at each trial's best evaluation (<code>epoch</code>); <code>checkpoint</code> is the kept "
             "checkpoint of that evaluation.</p>",
             _table(_leaderboard(exp), leaderboard_verdict_columns(metric), exp.searched)]

    # The tables the answer's confirmation lines are read from, before the figures.
    for run, what in ((C.CONFIRM_DIR, "the top trials and the defaults retrained on seeds the search never used"),
                      (C.HOLDOUT_DIR, "the best confirmed configuration (a raced search's incumbent) and the defaults "
                                      "on new seeds (--holdout)")):
        table = exp.path / run / C.TABLE_FILE
        if table.is_file():
            parts += [f"<h2>{'Confirmation runs' if run == C.CONFIRM_DIR else 'Held out'}</h2>",
                      f"<p>{html.escape(f'{run}/{C.TABLE_FILE}')}: {html.escape(what)}.</p>",
                      _table(pd.read_csv(table, keep_default_na=False, na_values=[""]), CONFIRM_VERDICT_COLUMNS,
                             exp.searched)]

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

    grids = samples.top_trial_grids(exp.trials, k=top_k)
    if any(grids.values()):
        parts.append(f"<h2>Samples of the top {len(grids)} trials at their best evaluation</h2>")
        scores = exp.trials.set_index("trial")[f"best_{metric}"]
        for trial, images in grids.items():
            for tag, image in sorted(images.items()):
                big, factor = samples.enlarged(image, *SAMPLE_BOX)
                caption = (f"{trial}: best {metric} {scores[trial]:.4g}; {tag}"
                           + (f", each pixel drawn as {factor}x{factor}" if factor > 1 else ""))
                parts.append(f'<figure class="samples"><img src="{_png(big)}" width="{big.shape[1]}" '
                             f'height="{big.shape[0]}" alt="{html.escape(caption)}">'
                             f"<figcaption>{html.escape(caption)}</figcaption></figure>")

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
