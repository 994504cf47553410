"""Experiment directories -> pandas DataFrames, straight from what Ray Tune wrote.

    exp = load_experiment_dir("runs/quickstart")
    exp.trials      # one row per trial, best first (core.results.leaderboard) + experiment, family, trial_dir
    exp.history     # one row per evaluation of every trial (each trial's progress.csv, via Ray)
    trials, history = load_experiments(["runs/quickstart", "runs/cyclegan-builtin"])   # stacked

Ray's `ExperimentAnalysis` reads the experiment state and every trial's result.json/progress.csv
without starting a Ray cluster; `ResultGrid` over it is exactly what `run_search` returned, so the
trials table is `core.results.leaderboard` itself (one set of status rules).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from core.config import ExperimentConfig, build_config
from core.results import leaderboard, quiet_unreported_trials
from core.search import EXPERIMENT_FILE, OPTUNA_FILE

# Columns of the history table besides the trial's name: the reported metrics, never Ray's bookkeeping.
RAY_BOOKKEEPING = ("timestamp", "checkpoint_dir_name", "should_checkpoint", "done", "training_iteration",
                   "trial_id", "date", "time_this_iter_s", "time_total_s", "pid", "hostname", "node_ip",
                   "time_since_restore", "iterations_since_restore")


class NotAnExperiment(ValueError):
    """The directory holds no paintsweep experiment (no experiment.yaml or no Ray Tune state)."""


@dataclass
class Experiment:
    path: Path                 # <storage>/<name>/
    cfg: ExperimentConfig      # the resolved config the search ran with (experiment.yaml)
    trials: pd.DataFrame       # one row per trial, best first
    history: pd.DataFrame      # one row per evaluation: trial, epoch, fid, kid, mifid, losses, ...

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def searched(self) -> list[str]:
        """The searched keys (dotted, e.g. model.lr_g): the trials table has one column each."""
        return list(self.cfg.search.space)

    @property
    def metric(self) -> str:
        return self.cfg.search.metric


def is_experiment_dir(path: str | os.PathLike) -> bool:
    from ray import tune

    path = Path(os.path.abspath(os.path.expanduser(str(path))))   # Ray reads a relative path as a URI
    return (path / EXPERIMENT_FILE).is_file() and tune.Tuner.can_restore(str(path))


def find_experiments(storage: str | os.PathLike) -> list[Path]:
    """The experiment directories directly under `storage` (e.g. runs/), sorted by name."""
    storage = Path(storage)
    if not storage.is_dir():
        return []
    return sorted(p for p in storage.iterdir() if p.is_dir() and is_experiment_dir(p))


def load_experiment_dir(path: str | os.PathLike) -> Experiment:
    from ray.tune import ExperimentAnalysis, ResultGrid

    path = Path(os.path.abspath(os.path.expanduser(str(path))))
    if not is_experiment_dir(path):
        raise NotAnExperiment(f"{path} is not a paintsweep experiment directory (it needs {EXPERIMENT_FILE} and "
                              f"Ray Tune's experiment state); pass <storage>/<name>/ as written by "
                              f"experiments/tune.py, e.g. runs/quickstart")
    cfg = build_config(yaml.safe_load((path / EXPERIMENT_FILE).read_text()), source=str(path / EXPERIMENT_FILE))
    quiet_unreported_trials()
    grid = ResultGrid(ExperimentAnalysis(str(path)))

    trials = leaderboard(grid, cfg)
    trials.insert(0, "experiment", cfg.name)
    trials.insert(1, "family", cfg.family)
    trials["trial_dir"] = [str(path / name) for name in trials["trial"]]

    histories = []
    for result in grid:
        frame = result.metrics_dataframe
        if frame is None or frame.empty:
            continue
        # The searched values each evaluation trained with stay, by their dotted keys (PBT changes them).
        frame = frame.rename(columns={f"config/{key}": key for key in cfg.search.space})
        frame = frame.drop(columns=[c for c in frame.columns if c in RAY_BOOKKEEPING or c.startswith("config/")])
        frame.insert(0, "trial", Path(result.path).name)
        histories.append(frame)
    history = pd.concat(histories, ignore_index=True) if histories else pd.DataFrame(columns=["trial", "epoch"])
    history.insert(0, "experiment", cfg.name)
    return Experiment(path, cfg, trials, history.sort_values(["trial", "epoch"], ignore_index=True))


def load_experiments(paths) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Several experiments stacked: (trials, history), each with `experiment` and `family` columns.
    Searched columns that one experiment lacks are NaN in the others' rows."""
    loaded = [load_experiment_dir(p) for p in paths]
    trials = pd.concat([e.trials for e in loaded], ignore_index=True)
    history = pd.concat([e.history.assign(family=e.cfg.family) for e in loaded], ignore_index=True)
    return trials, history


def load_study(exp: Experiment):
    """The Optuna study the searcher stored in <experiment>/optuna.db (study name = experiment name)."""
    import optuna

    db = exp.path / OPTUNA_FILE
    if not db.is_file():
        raise FileNotFoundError(f"{db} does not exist: the experiment ran with search.searcher="
                                f"{exp.cfg.search.searcher}, and only the optuna searcher stores a study")
    return optuna.load_study(study_name=exp.name, storage=f"sqlite:///{db}")


def param_importances(exp: Experiment) -> pd.Series:
    """Optuna's fANOVA hyperparameter importance of the searched values for the search metric
    (sums to 1, largest first; for several objectives, the first). Needs at least two completed trials."""
    import optuna

    study = load_study(exp)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2:
        raise ValueError(f"Hyperparameter importance needs at least 2 completed Optuna trials; "
                         f"{exp.path} has {len(complete)}")
    target = (lambda trial: trial.values[0]) if len(study.directions) > 1 else None
    return pd.Series(optuna.importance.get_param_importances(study, target=target), name="importance")
