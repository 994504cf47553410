"""A search's results: how each trial ended, and the leaderboard.

    board = leaderboard(grid, cfg)            # grid: Ray Tune's ResultGrid; one row per trial, best first
    save_leaderboard(board, exp_dir, cfg)     # leaderboard.csv + leaderboard.txt (their one writer)
    print(format_leaderboard(board, exp_dir))

Rows are built from Ray's own records (`Result.metrics_dataframe`, `Result.best_checkpoints`). The
`checkpoint` column names the trial's best kept checkpoint that `core.checkpoints` finds intact, so a
record never points at a deleted or damaged file.
"""

from __future__ import annotations

import enum
import logging
import math
import os
from pathlib import Path

from core.checkpoints import checkpoint_problem
from core.config import ExperimentConfig
from core.confirm import leaderboard_annotations
from core.metric_registry import METRICS, direction, ratio_is_meaningful


class TrialStatus(str, enum.Enum):
    """How a trial ended, as the leaderboard, the analysis tools and the plots name it."""

    COMPLETED = "completed"        # trained all train.epochs
    STOPPED = "stopped early"      # the scheduler (ASHA) ended it before train.epochs
    DIVERGED = "diverged"          # non-finite losses or weights; ended by the trainable
    COLLAPSED = "collapsed"        # every sample the same image; ended by the trainable
    ERROR = "error"                # crashed (after search.max_failures retries)
    UNFINISHED = "unfinished"      # never reported (pending, or the search was interrupted)

    def __str__(self) -> str:
        return self.value


def trial_status(last: dict | None, errored: bool, epochs: int) -> TrialStatus:
    """How a trial ended, from its last report (Ray's Result.metrics or Trial.last_result), whether
    it errored, and train.epochs."""
    last = last or {}
    if errored:
        return TrialStatus.ERROR
    if last.get("trial_status") in (TrialStatus.DIVERGED, TrialStatus.COLLAPSED):
        return TrialStatus(last["trial_status"])
    if "epoch" not in last:
        return TrialStatus.UNFINISHED
    return TrialStatus.COMPLETED if last["epoch"] >= epochs else TrialStatus.STOPPED


def quiet_unreported_trials() -> None:
    """A trial that had not reported when its run stopped has no result files yet: Ray warns about
    each one whenever the experiment is read (a resume, report.py), though nothing is wrong."""
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)


def ranked_checkpoints(results, metric: str) -> list[tuple[str, float, object]]:
    """Every kept checkpoint of the given Ray Results as (path, its `metric`, filesystem), best
    first (NaN last), intact or not: `best_intact_checkpoint` and export.py choose from it."""
    sign = 1.0 if direction(metric) == "min" else -1.0
    ranked = [(checkpoint.path, float(metrics.get(metric, math.nan)), checkpoint.filesystem)
              for result in results for checkpoint, metrics in (result.best_checkpoints or [])]
    return sorted(ranked, key=lambda item: math.inf if math.isnan(item[1]) else sign * item[1])


def best_intact_checkpoint(result, metric: str) -> str | None:
    """The trial's kept checkpoint with the lowest `metric` that is intact, or None."""
    for path, _, fs in ranked_checkpoints([result], metric):
        if checkpoint_problem(path, fs) is None:
            return path
    return None


def _checkpoint_epoch(result, path: str | None) -> int | None:
    """The epoch of the kept checkpoint at `path`, as Ray recorded it with the checkpoint."""
    for checkpoint, metrics in result.best_checkpoints or []:
        if checkpoint.path == path and "epoch" in metrics:
            return int(metrics["epoch"])
    return None


def leaderboard(grid, cfg: ExperimentConfig):
    """One row per trial, best first: searched values, status, each trial's best evaluation by the
    search metric (its scores and epoch) and where that is kept. `baseline` marks the trial(s) that
    trained the space's own values (core.space); `schedule` says, for a PBT trial, which trial it
    copied when and which values changed. With several objectives, `pareto` marks the trials no other
    trial beats on every one of them (by their best values), and those come first."""
    import pandas as pd

    from core.space import applicable, baseline_point, is_baseline

    metric = cfg.search.metric
    baseline = baseline_point(cfg) if cfg.search.baseline and cfg.search.space else None
    rows, records = [], []
    for result in grid:
        if "epoch" not in (result.metrics or {}) and result.error is None:
            continue   # never started or never reported (a time budget or a stop came first): not a result
        history = result.metrics_dataframe
        config = applicable(result.config or {}, cfg.search.space)
        row = {"trial": Path(result.path).name}
        row.update({key: config.get(key) for key in cfg.search.space})
        records.append(_racing_record(row["trial"], config, history, result.error is not None, cfg))
        row["baseline"] = baseline is not None and is_baseline(config, baseline, cfg.search.space)
        status = trial_status(result.metrics, result.error is not None, cfg.train.epochs)
        row["status"] = status.value
        row["status_detail"] = (type(result.error).__name__ if status is TrialStatus.ERROR
                                else (result.metrics or {}).get("status_detail", ""))
        # Evaluations with real scores (a diverged or collapsed trial's last report holds infinities).
        scored = (history[history[metric].map(lambda v: isinstance(v, (int, float)) and math.isfinite(v))]
                  if history is not None and metric in history else None)
        evaluated = scored is not None and not scored.empty
        # A trial stopped at its first evaluation (collapsed) has scores but no checkpoint.
        row["checkpoint"] = best_intact_checkpoint(result, metric) if evaluated else None
        if evaluated:
            best = scored.loc[scored[metric].idxmin() if direction(metric) == "min" else scored[metric].idxmax()]
            kept = _checkpoint_epoch(result, row["checkpoint"])
            if kept is not None and kept != int(best["epoch"]) and (scored["epoch"] == kept).any():
                # The best evaluation's checkpoint was damaged (and removed): the row describes the
                # evaluation whose checkpoint it names, the one export.py ships, and says what was lost.
                lost, best = best, scored[scored["epoch"] == kept].iloc[-1]
                row["status_detail"] = "; ".join(filter(None, [
                    row["status_detail"], f"the best evaluation (epoch {int(lost['epoch'])}, {metric} "
                                          f"{float(lost[metric]):.4g}) has no intact checkpoint"]))
            row[f"best_{metric}"] = float(best[metric])
            for other in cfg.search.metrics[1:]:   # each objective's own best, as the searcher saw it
                values = scored[other] if other in scored else pd.Series(dtype=float)
                row[f"best_{other}"] = float(values.min() if direction(other) == "min" else values.max())
            row.update({name: float(best[name]) for name in METRICS if name in best})   # every score at the best evaluation
            row.update({"epoch": int(best["epoch"]), "epochs_trained": int(history["epoch"].max())})
        if history is not None and "exploited_from" in history:
            exploits = history.dropna(subset=["exploited_from"])
            row["schedule"] = " | ".join(f"epoch {int(e['exploited_at_epoch'])}: copied {e['exploited_from']}"
                                         + (f", {e['exploit_changes']}" if e.get("exploit_changes") else "")
                                         for _, e in exploits.iterrows())
        rows.append(row)
    # (No row yet, as when a time budget ran out before any report: the columns still, so that every
    # reader of leaderboard.csv finds an empty table, not an empty file.)
    board = pd.DataFrame(rows) if rows else pd.DataFrame(columns=[
        "trial", *cfg.search.space, "baseline", "status", "status_detail", f"best_{metric}", "epoch", "checkpoint"])
    column = f"best_{metric}"
    if cfg.search.racing_options is not None and column in board:
        from core.internals import proposal_order

        order = {trial_id: i for i, trial_id in enumerate(proposal_order(grid.experiment_path, grid.filesystem))}
        records.sort(key=lambda r: order.get(r.trial_id.rsplit("_", 1)[-1], len(order)))   # as the search saw them
        return with_configurations(board, records, cfg)
    if column in board:
        if cfg.search.objectives:
            board.insert(board.columns.get_loc("status"), "pareto", pareto_front(board, cfg.search.objectives))
        order = ["pareto", column] if cfg.search.objectives else [column]
        ascending = [False, direction(metric) == "min"] if cfg.search.objectives else [direction(metric) == "min"]
        board = board.sort_values(order, ascending=ascending, na_position="last", kind="stable").reset_index(drop=True)
    return board


def _racing_record(trial: str, config: dict, history, errored: bool, cfg: ExperimentConfig):
    """A trial as core.racing's ledger holds it, rebuilt from its reports: its configuration (the
    searched values), its seed, and the search metric at each epoch."""
    from core.racing import TrialRecord, configuration_key

    values = {k: v for k, v in config.items() if k in cfg.search.space}
    scores = {}
    if history is not None and cfg.search.metric in history:
        for epoch, value in zip(history["epoch"], history[cfg.search.metric]):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                scores[int(epoch)] = float(value)
    trained = max(scores, default=0)
    return TrialRecord(trial, configuration_key(values), values, int(config.get("train.seed", cfg.train.seed)),
                       races=False, scores=scores, done=True, errored=errored,
                       stopped_at=None if trained >= cfg.train.epochs else trained)


def with_configurations(board, records, cfg: ExperimentConfig):
    """A raced search's leaderboard (search.racing): configurations ranked by their final scores
    over seeds, paired with the baseline's same seeds (core.racing.RaceLedger.standings), the
    incumbent first; each configuration's trials under it, best first. Columns added: `seed`,
    `configuration` (its first trial), `seeds` (how many finished), `vs_baseline` (ratio of the
    means over paired seeds, or their difference: `scale`) with `low`/`high` (its 95% interval),
    `verdict`, and `incumbent` (the configuration the search stands behind)."""
    from core.racing import RaceLedger

    by_trial = {r.trial_id: r for r in records}
    baseline_rows = board[board["baseline"]]
    baseline_key = by_trial[baseline_rows.iloc[0]["trial"]].key if len(baseline_rows) else None
    ledger = RaceLedger(metric=cfg.search.metric, epochs=cfg.train.epochs, lag=1, base_seed=cfg.train.seed,
                        racing=cfg.search.racing_options, rungs=[], reduction_factor=2, baseline_key=baseline_key)
    ledger.trials = records
    standings = {s.key: s for s in ledger.standings()}
    order = {key: i for i, key in enumerate(standings)}
    leader = ledger.incumbent(records)
    first_trial = {}
    for r in records:
        first_trial.setdefault(r.key, r.trial_id)
    keys = board["trial"].map(lambda t: by_trial[t].key)
    board = board.assign(
        seed=board["trial"].map(lambda t: by_trial[t].seed),
        configuration=keys.map(first_trial),
        seeds=keys.map(lambda k: standings[k].seeds if k in standings else 0),
        vs_baseline=keys.map(lambda k: standings[k].estimate if k in standings else math.nan),
        scale=keys.map(lambda k: standings[k].scale if k in standings else ""),
        low=keys.map(lambda k: standings[k].low if k in standings else math.nan),
        high=keys.map(lambda k: standings[k].high if k in standings else math.nan),
        verdict=keys.map(lambda k: standings[k].verdict if k in standings else ""),
        incumbent=keys == (leader.key if leader else None))
    rank = keys.map(lambda k: -1 if leader and k == leader.key else order.get(k, len(order)))
    column = f"best_{cfg.search.metric}"
    board = board.assign(_rank=rank).sort_values(["_rank", column], ascending=[True, direction(cfg.search.metric) == "min"],
                                                 na_position="last", kind="stable")
    return board.drop(columns="_rank").reset_index(drop=True)


def pareto_front(board, objectives: list[str]) -> list[bool]:
    """For each row: no other row is at least as good on every objective's best value and better on
    one (directions from core.metric_registry). Rows without scores are never on the front."""
    signs = [1.0 if direction(m) == "min" else -1.0 for m in objectives]
    points = [[s * row.get(f"best_{m}", math.nan) for m, s in zip(objectives, signs)] for _, row in board.iterrows()]

    def dominates(a, b):
        return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))

    valid = [all(math.isfinite(v) for v in p) for p in points]
    return [ok and not any(valid[j] and dominates(points[j], p) for j in range(len(points)) if j != i)
            for i, (p, ok) in enumerate(zip(points, valid))]


def versus_baseline(board, metric: str) -> str:
    """One line: the best trial's score and its ratio to the baseline's ("best: fid 0.79, 0.68x the
    defaults (baseline fid 1.16)"), its difference where a ratio is not meaningful (KID:
    core.metric_registry), or why there is no comparison."""
    column = f"best_{metric}"
    if board.empty or column not in board or board[column].isna().all():
        return "best: no trial reached an evaluation"
    if "incumbent" in board:
        return _raced_best(board, metric)
    best = board.iloc[0]
    line = f"best: {metric} {best[column]:.4g} ({best['trial']})"
    if "baseline" not in board or not board["baseline"].any():
        return line + "; no baseline trial (search.baseline: false)"
    base = board[board["baseline"]].iloc[0]
    if bool(best["baseline"]):
        return line + ", the baseline itself: no searched setting beat the defaults"
    if base["status"] != TrialStatus.COMPLETED or not math.isfinite(base.get(column, math.nan)):
        return line + f"; the baseline trial {base['trial']} did not complete ({base['status']}), so no ratio"
    if not ratio_is_meaningful(metric):   # e.g. KID, often negative: a ratio of negatives reverses the comparison
        return line + f", {best[column] - base[column]:+.4g} against the defaults (baseline {metric} {base[column]:.4g})"
    return line + f", {best[column] / base[column]:.2f}x the defaults (baseline {metric} {base[column]:.4g})"


def _raced_best(board, metric: str) -> str:
    """The best line of a raced search: the incumbent, on its paired seeds' final scores."""
    if not board["incumbent"].any():
        return (f"best: no configuration beat the defaults on the seeds it shared with them (final {metric}, "
                f"mean over seeds): the search ships the defaults")
    row = board[board["incumbent"]].iloc[0]
    estimate = (f"{row['vs_baseline']:.3g}x the defaults" if row["scale"] == "ratio"
                else f"{row['vs_baseline']:+.3g} against the defaults (a difference)")
    interval = f" [{row['low']:.3g}, {row['high']:.3g}]" if math.isfinite(row["low"]) else " (no interval: one seed)"
    return (f"best: {row['configuration']}, final {metric} {estimate}{interval} over {int(row['seeds'])} seeds "
            f"paired with the baseline's (mean over seeds): {row['verdict']}")


def pareto_summary(board, objectives: list[str]) -> str:
    """One line naming the Pareto front of a multi-objective search."""
    if "pareto" not in board or not board["pareto"].any():
        return "Pareto front: empty (no trial has every objective scored)"
    arrows = ", ".join(f"{m} {'lower' if direction(m) == 'min' else 'higher'} is better" for m in objectives)
    front = board[board["pareto"]]
    cells = "; ".join(f"{r['trial']} (" + ", ".join(f"{m} {r[f'best_{m}']:.4g}" for m in objectives) + ")"
                      for _, r in front.iterrows())
    return f"Pareto front ({arrows}): {len(front)} of {len(board)} trials: {cells}"


def save_leaderboard(board, exp_dir: Path, cfg: ExperimentConfig) -> tuple[Path, Path]:
    """Write leaderboard.csv and leaderboard.txt: the one writer of both (tune.py after every run or
    resume, confirm.py after every confirmation). The text leads with the Pareto front (several
    objectives), the comparison with the baseline and the noise levels, then the table, then what
    confirm.py found (core.confirm.leaderboard_annotations, read from its tables on disk, so a
    rewrite never drops them). Each file is replaced whole: a reader sees the old one or the new."""
    metric = cfg.search.metric
    board = board.drop(columns=["within_noise"], errors="ignore")
    header, footer, within_noise = leaderboard_annotations(exp_dir, cfg, board)
    if within_noise is not None:
        board = board.assign(within_noise=within_noise)
    lines = [pareto_summary(board, cfg.search.objectives)] if cfg.search.objectives else []
    lines += [versus_baseline(board, metric), *header, "", format_leaderboard(board, exp_dir)]
    if footer:
        lines += ["", *footer]
    csv_path, txt_path = exp_dir / "leaderboard.csv", exp_dir / "leaderboard.txt"
    _replace(csv_path, lambda path: board.to_csv(path, index=False))
    _replace(txt_path, lambda path: path.write_text("\n".join(lines) + "\n"))
    return csv_path, txt_path


def _replace(path: Path, write) -> None:
    partial = path.with_name(f".{path.name}.partial")
    write(partial)
    os.replace(partial, path)


# The console's leaderboard (tune.py): what decides, in this order; leaderboard.txt has every column.
CONSOLE_COLUMNS = ("trial", "baseline", "status", "seed", "seeds", "vs_baseline", "low", "high", "verdict", "incumbent")


def console_leaderboard(board, cfg: ExperimentConfig, exp_dir: Path | None = None) -> str:
    """The leaderboard as the console shows it: each trial's searched values, status, seed and the
    search's own scores (the metric and any other objective), with a raced search's standing of its
    configuration against the defaults; about half as wide as leaderboard.txt's every column (Ray's
    step counts, all metrics, checkpoint paths), so that it reads in a terminal."""
    scores = [f"best_{cfg.search.metric}", *(cfg.search.objectives or [])[1:], "pareto"]
    wanted = ["trial", *cfg.search.space, *CONSOLE_COLUMNS[1:4], *scores, *CONSOLE_COLUMNS[4:]]
    columns = [c for c in dict.fromkeys(wanted) if c in board]
    return format_leaderboard(board[columns], exp_dir)


def format_leaderboard(board, exp_dir: Path | None = None) -> str:
    """A fixed-width table; checkpoint paths relative to the experiment directory."""
    def cell(value):
        if exp_dir is not None and isinstance(value, str) and value.startswith(str(exp_dir) + os.sep):
            return os.path.relpath(value, exp_dir)
        if isinstance(value, float):
            return "" if math.isnan(value) else f"{value:.4g}"
        return "" if value is None else str(value)

    return board.map(cell).to_string(index=False)
