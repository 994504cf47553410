"""An experiment's answer in a few lines, for the top of report.html and of the overview notebook.

    for label, text in answer(exp):      # exp: analysis.experiments.Experiment
        print(label, text)
    table = verdict_first(board, leaderboard_verdict_columns(exp.metric), exp.searched)   # decisive columns first

The lines: what was searched, the best configuration and how it compares with the defaults (the
leaderboard's `best:` line, core.results.versus_baseline), then what confirm.py found: its
Confirmation / Best confirmed / Held out lines exactly as leaderboard.txt ends with them
(core.confirm.leaderboard_annotations, from the tables on disk), or, where a step has not run, the
command that runs it. Nothing here computes a statistic: every number comes from those two modules.
"""

from __future__ import annotations

from core import confirm as C
from core.metric_registry import METRICS, direction
from core.results import pareto_summary, versus_baseline

SEARCHED, BEST, PARETO = "Searched:", "Best:", "Pareto front:"
CONFIRM_LABELS = (C.LEADERBOARD_LINE, C.BEST_LINE, C.HOLDOUT_LINE)

# Columns a reader decides by, in reading order, for verdict_first: confirm.csv's here, the
# leaderboard's in leaderboard_verdict_columns.
CONFIRM_VERDICT_COLUMNS = ("candidate", "verdict", "verdict_holm", "estimate", "low", "high", "compared", "p_value",
                           "p_holm", "n_paired", "failed", "within_noise", "trial")


def leaderboard_verdict_columns(metric: str) -> tuple[str, ...]:
    """The leaderboard's: a raced search's verdict over seeds (core.results.with_configurations), the
    Pareto mark, the best score and how the trial ended."""
    return ("trial", "incumbent", "verdict", "vs_baseline", "low", "high", "scale", "seeds", "pareto",
            f"best_{metric}", "within_noise", "status")


def answer(exp) -> list[tuple[str, str]]:
    """(label, text) pairs, in reading order: SEARCHED, BEST (after PARETO for several objectives),
    then confirm.py's lines, each with its own label (core.confirm's LEADERBOARD_LINE, BEST_LINE,
    HOLDOUT_LINE)."""
    lines = [(SEARCHED, searched(exp))]
    if exp.cfg.search.objectives:
        lines.append((PARETO, pareto_summary(exp.trials, exp.cfg.search.objectives).removeprefix(PARETO).strip()))
    return lines + [(BEST, best(exp))] + confirmed(exp)


def searched(exp) -> str:
    """'12 trials of wgan_gp over model.lr_g, ..., against the defaults (a baseline trial), ranked by
    best FID (lower is better).'"""
    board, metric = exp.trials, exp.metric
    keys = ", ".join(exp.searched) or "nothing (a fixed configuration)"
    if "configuration" in board:   # raced (core.results.with_configurations): trials grouped by configuration
        what = (f"{board['configuration'].nunique()} configurations of {exp.cfg.family} over {keys} in {len(board)} "
                f"trials (racing: the leading ones on more seeds)")
        ranked = f"ranked by final {METRICS[metric].label}, mean over seeds"
    else:
        what, ranked = f"{len(board)} trials of {exp.cfg.family} over {keys}", f"ranked by best {METRICS[metric].label}"
    if "baseline" in board and board["baseline"].astype(bool).any():
        against = "against the defaults (a baseline trial)"
    elif exp.cfg.search.baseline and exp.cfg.search.space:
        against = "against the defaults (a baseline trial, which has not reported yet)"
    else:
        against = "with no baseline trial (search.baseline: false)"
    better = "lower" if direction(metric) == "min" else "higher"
    return f"{what}, {against}, {ranked} ({better} is better)."


def best(exp) -> str:
    """The best configuration's searched values and the leaderboard's `best:` line about it."""
    board, metric = exp.trials, exp.metric
    line = versus_baseline(board, metric).removeprefix("best:").strip()
    if "incumbent" in board:   # a raced search stands behind its incumbent, or behind the defaults
        picked = board[board["incumbent"].astype(bool)]
    else:
        picked = board.dropna(subset=[f"best_{metric}"]) if f"best_{metric}" in board else board.iloc[0:0]
    if picked.empty or not exp.searched:
        return line
    row = picked.iloc[0]
    values = ", ".join(f"{key}={_value(row[key])}" for key in exp.searched if key in row)
    return f"{values}: {line}"


def _value(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def confirmed(exp) -> list[tuple[str, str]]:
    """confirm.py's lines about this experiment, or the command that writes each missing one."""
    path, metric = exp.path, exp.metric
    command = f"python experiments/confirm.py {path}"
    if direction(metric) != "min":
        return [(C.LEADERBOARD_LINE, f"not available: confirm.py compares metrics where lower is better, and this "
                                     f"search ranked by {metric}")]
    column = f"best_{metric}"
    if column not in exp.trials or exp.trials[column].isna().all():
        return [(C.LEADERBOARD_LINE, "nothing to confirm yet: no trial reached an evaluation. Continue the search "
                                     "with the same tune.py command plus --resume (and a larger search.time_budget "
                                     "if it ran out).")]
    try:
        _, footer, _ = C.leaderboard_annotations(path, exp.cfg, exp.trials)
    except (KeyError, ValueError, TypeError, IndexError) as e:   # a table on disk that confirm.py did not write
        return [(C.LEADERBOARD_LINE, f"{C.CONFIRM_DIR}/{C.TABLE_FILE} or {C.HOLDOUT_DIR}/{C.TABLE_FILE} cannot be read "
                                     f"as confirm.py's table ({type(e).__name__}: {e}); rerun {command}")]
    lines = [_labelled(line) for line in footer]
    said = {label for label, _ in lines}
    raced = "incumbent" in exp.trials
    tables = {run: (path / run / C.TABLE_FILE).is_file() for run in (C.CONFIRM_DIR, C.HOLDOUT_DIR)}
    if C.LEADERBOARD_LINE not in said and tables[C.CONFIRM_DIR]:   # (leaderboard_annotations skips a damaged one)
        lines.insert(0, (C.LEADERBOARD_LINE, f"unreadable ({C.CONFIRM_DIR}/{C.TABLE_FILE}); rerun {command}"))
    elif C.LEADERBOARD_LINE not in said and not raced:   # a raced search decided on several seeds already
        lines.insert(0, (C.LEADERBOARD_LINE,
                         f"not run yet: the best above is the lowest of {len(exp.trials)} noisy trials, each on one "
                         f"seed, so part of its lead can be luck. {command} retrains the top trials and the "
                         f"defaults on seeds the search never used."))
    if C.HOLDOUT_LINE not in said:
        if tables[C.HOLDOUT_DIR]:
            lines.append((C.HOLDOUT_LINE, f"unreadable ({C.HOLDOUT_DIR}/{C.TABLE_FILE}); rerun {command} --holdout"))
        elif raced and C.LEADERBOARD_LINE not in said and exp.trials["incumbent"].astype(bool).any():
            lines.append((C.HOLDOUT_LINE, f"not run yet: {command} --holdout retrains the incumbent and the defaults "
                                          f"on new seeds: the verdict to ship."))
        elif C.BEST_LINE in said and _has_pick(path, metric):
            lines.append((C.HOLDOUT_LINE, f"not run yet: {command} --holdout retrains the best confirmed "
                                          f"configuration and the defaults on new seeds: the verdict to ship."))
    else:   # what confirm.py --holdout ended with
        import pandas as pd

        held = pd.read_csv(path / C.HOLDOUT_DIR / C.TABLE_FILE, keep_default_na=False, na_values=[""])
        lines.append(_labelled(C.ship_line(held, path), (C.SHIP_LINE,)))
    return lines


def _labelled(line: str, labels=CONFIRM_LABELS) -> tuple[str, str]:
    """confirm.py's line split into its label and its text."""
    label = next((label for label in labels if line.startswith(label)), "")
    return label, line[len(label):].strip()


def _has_pick(path, metric: str) -> bool:
    """Whether the confirmation has a best confirmed candidate that --holdout can retrain."""
    import pandas as pd

    table = pd.read_csv(path / C.CONFIRM_DIR / C.TABLE_FILE, keep_default_na=False, na_values=[""])
    return C.best_confirmed(table, metric) is not None


def verdict_first(frame, first: tuple[str, ...], searched: list[str] = ()):
    """`frame` with the columns named in `first` that it has, in that order, then the searched keys,
    then the others as they were: the columns a reader decides by stay in view in a narrow window."""
    leading = [c for c in (*first, *searched) if c in frame]
    leading = list(dict.fromkeys(leading))
    return frame[leading + [c for c in frame.columns if c not in leading]]
