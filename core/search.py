"""From a search-space config to a Ray Tune experiment: param space, searcher, scheduler, run.

    cfg = load_experiment("search_spaces/quickstart.yaml")
    grid = run_search(cfg, storage_path="runs")         # Ray Tune + Optuna, blocks until done
    board = leaderboard(grid, cfg)                        # one row per trial, best first

The driver does the once-per-experiment work before any trial starts: it materializes the data
(`core.data.prepare_data`) and computes the reference statistics (`core.metrics`), whose cache has
no lock, so trials only ever read them.

Experiment directory (`<storage>/<name>/`): Ray Tune's state and one directory per trial
(result.json, progress.csv, TensorBoard events, checkpoint_*), plus ours: `experiment.yaml` (the
resolved config), `optuna.db` (the Optuna study: `optuna-dashboard sqlite:///.../optuna.db`) and
`leaderboard.csv` / `leaderboard.txt`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import yaml

from core.config import ConfigError, ExperimentConfig, build_config, config_to_dict
from core.data import prepare_data
from core.metrics import reference_statistics
from core.models.base import get_family

EXPERIMENT_FILE = "experiment.yaml"
OPTUNA_FILE = "optuna.db"


def param_space(space: dict) -> dict:
    """search.space (validated by core.config) -> Ray Tune sampling objects, same dotted keys."""
    from ray import tune

    builders = {"loguniform": tune.loguniform, "uniform": tune.uniform,
                "int": lambda low, high: tune.randint(int(low), int(high) + 1),  # inclusive high
                "choice": tune.choice}
    out = {}
    for key, spec in space.items():
        (kind, args), = spec.items()
        out[key] = builders[kind](args) if kind == "choice" else builders[kind](*args)
    return out


def search_metric(cfg: ExperimentConfig) -> str:
    """What the searcher and ASHA compare: the trial's running best of the chosen metric."""
    return f"best_{cfg.search.metric}"


def make_searcher(cfg: ExperimentConfig, experiment_dir: Path):
    from ray.tune.search import BasicVariantGenerator

    if cfg.search.searcher == "random":
        return BasicVariantGenerator(random_state=cfg.search.seed)
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    # An RDBStorage instance (not a URL string): the study outlives the run and optuna-dashboard opens it.
    storage = optuna.storages.RDBStorage(f"sqlite:///{experiment_dir / OPTUNA_FILE}")
    return OptunaSearch(metric=search_metric(cfg), mode="min", study_name=cfg.name, storage=storage,
                        sampler=optuna.samplers.TPESampler(seed=cfg.search.seed))


def make_scheduler(cfg: ExperimentConfig):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if cfg.search.scheduler == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="epoch", metric=search_metric(cfg), mode="min", max_t=cfg.train.epochs,
                         grace_period=min(cfg.search.grace_period, cfg.train.epochs),
                         reduction_factor=cfg.search.reduction_factor)


@dataclass
class PreparedExperiment:
    prepared_root: str     # core.data.PreparedData directory (train/monet, train/photo, test/photo)
    reference_path: str    # core.metrics reference statistics file


def prepare_experiment(cfg: ExperimentConfig, progress=print) -> PreparedExperiment:
    """The driver's once-per-experiment work: data, then reference statistics. Building the family
    once on the CPU first turns a model/data mismatch (an image size the networks cannot take)
    into one error here instead of a failure in every trial."""
    prepared = prepare_data(cfg.data, cfg.cache_path, progress=progress)
    try:
        get_family(cfg.family)(cfg, prepared, torch.device("cpu"))
    except (ValueError, RuntimeError) as e:
        raise ConfigError(f"The {cfg.family} model cannot be built with this configuration: {e}") from None
    reference = reference_statistics(prepared, cfg.metrics, cfg.cache_path, progress=progress)
    return PreparedExperiment(str(prepared.root), str(reference))


def experiment_dir(storage_path: str | os.PathLike, name: str) -> Path:
    return Path(os.path.abspath(os.path.expanduser(str(storage_path)))) / name


def run_search(cfg: ExperimentConfig, storage_path: str | os.PathLike = "runs", *, resume: bool = False,
               verbose: int = 1, progress=print):
    """Run (or resume) the search; returns Ray Tune's ResultGrid."""
    import ray
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from core.trainable import tune_trainable

    exp_dir = experiment_dir(storage_path, cfg.name)
    if resume:
        _check_resumable(cfg, exp_dir)
    elif exp_dir.exists() and any(exp_dir.iterdir()):
        raise ConfigError(f"Experiment directory {exp_dir} already exists. Continue it with --resume, "
                          f"or choose another --name.")
    ready = prepare_experiment(cfg, progress=progress)   # before any file: a failure leaves nothing behind
    exp_dir.mkdir(parents=True, exist_ok=True)
    (exp_dir / EXPERIMENT_FILE).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    trainable = tune.with_parameters(tune_trainable, experiment=config_to_dict(cfg),
                                     prepared_root=ready.prepared_root, reference_path=ready.reference_path)
    trainable = tune.with_resources(trainable, {"cpu": cfg.search.cpus_per_trial,
                                                "gpu": cfg.search.gpus_per_trial})

    # Ray's own TensorBoard logger would duplicate our scalars under ray/tune/*: keep only JSON/CSV
    # (which ResultGrid and the analysis helpers read) and write TensorBoard ourselves.
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")
    callbacks = [JsonLoggerCallback(), CSVLoggerCallback(), *_wandb_callbacks(cfg)]
    if not ray.is_initialized():
        ray.init(include_dashboard=False, logging_level="WARNING", log_to_driver=True)

    run_config = tune.RunConfig(
        name=cfg.name, storage_path=str(exp_dir.parent), callbacks=callbacks, verbose=verbose,
        # Trials write TensorBoard events in their working directory; Ray copies them to storage.
        sync_config=tune.SyncConfig(sync_artifacts=True),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=cfg.search.keep_checkpoints,
                                                checkpoint_score_attribute=cfg.search.metric,
                                                checkpoint_score_order="min"),
        failure_config=tune.FailureConfig(max_failures=cfg.search.max_failures),
    )
    if resume:
        tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable, param_space=param_space(cfg.search.space), run_config=run_config,
            tune_config=tune.TuneConfig(search_alg=make_searcher(cfg, exp_dir), scheduler=make_scheduler(cfg),
                                        num_samples=cfg.search.num_samples,
                                        max_concurrent_trials=cfg.search.max_concurrent,
                                        trial_name_creator=partial(_trial_name, cfg.family),
                                        trial_dirname_creator=partial(_trial_name, cfg.family),
                                        reuse_actors=True))
    try:
        return tuner.fit()
    finally:
        ray.shutdown()  # stop the trial workers before the interpreter exits


def _trial_name(family: str, trial) -> str:
    """`cyclegan_3f2a1b7c` instead of Ray's default directory name with every searched value."""
    return f"{family}_{trial.trial_id}"


def _check_resumable(cfg: ExperimentConfig, exp_dir: Path) -> None:
    from ray import tune

    if not tune.Tuner.can_restore(str(exp_dir)):
        raise ConfigError(f"Nothing to resume in {exp_dir}: it holds no Ray Tune experiment state. "
                          f"Run without --resume to start the experiment (or check --storage/--name).")
    saved_file = exp_dir / EXPERIMENT_FILE
    if saved_file.is_file():
        saved = yaml.safe_load(saved_file.read_text())
        now = config_to_dict(cfg)
        changed = sorted(_diff_keys(saved, now))
        if changed:
            raise ConfigError(f"The configuration changed since {exp_dir} started ({', '.join(changed)}); "
                              f"resume with the original space, or start a new experiment with --name.")


def _diff_keys(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = set(a) | set(b)
        return [k for key in keys for k in _diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".")]


def _wandb_callbacks(cfg: ExperimentConfig) -> list:
    """Ray's W&B integration, never blocking: offline unless an API key is configured."""
    if not cfg.logging.wandb:
        return []
    from ray.air.integrations.wandb import WandbLoggerCallback

    mode = cfg.logging.wandb_mode or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    # Ray skips its API-key check only when WANDB_MODE is offline/disabled (measured); online
    # without a reachable server would block for ~100 s per trial.
    os.environ["WANDB_MODE"] = mode
    return [WandbLoggerCallback(project=cfg.logging.wandb_project, group=cfg.name, mode=mode,
                                excludes=["extractor", "trial_status", "status_detail"])]


# --- The leaderboard ----------------------------------------------------------------------------


def leaderboard(grid, cfg: ExperimentConfig):
    """One row per trial, best first: searched values, status, best metric and where it is kept."""
    import pandas as pd

    metric = cfg.search.metric
    rows = []
    for result in grid:
        history = result.metrics_dataframe
        last = result.metrics or {}
        row = {"trial": Path(result.path).name}
        row.update({key: (result.config or {}).get(key) for key in cfg.search.space})
        row["status"] = _status(result, last, cfg)
        evaluated = history is not None and metric in history and history[metric].notna().any()
        if evaluated:
            best = history.loc[history[metric].idxmin()]
            row.update({f"best_{metric}": float(best[metric]), "fid": float(best["fid"]),
                        "mifid": float(best["mifid"]), "kid": float(best["kid"]),
                        "epoch": int(best["epoch"]), "epochs_trained": int(history["epoch"].max())})
        checkpoint = result.get_best_checkpoint(metric, "min") if evaluated else None
        row["checkpoint"] = checkpoint.path if checkpoint else None
        rows.append(row)
    board = pd.DataFrame(rows)
    if f"best_{metric}" in board:
        board = board.sort_values(f"best_{metric}", na_position="last").reset_index(drop=True)
    return board



def _status(result, last: dict, cfg: ExperimentConfig) -> str:
    if result.error is not None:
        return f"error: {type(result.error).__name__}"
    if last.get("trial_status") in ("diverged", "collapsed"):
        return last["trial_status"]
    epoch = last.get("epoch", 0)
    if epoch < cfg.train.epochs:
        return f"stopped early at epoch {epoch}"
    return "completed"


def save_leaderboard(board, exp_dir: Path) -> tuple[Path, Path]:
    csv_path, txt_path = exp_dir / "leaderboard.csv", exp_dir / "leaderboard.txt"
    board.to_csv(csv_path, index=False)
    txt_path.write_text(format_leaderboard(board, exp_dir) + "\n")
    return csv_path, txt_path


def format_leaderboard(board, exp_dir: Path | None = None) -> str:
    """A fixed-width table; checkpoint paths relative to the experiment directory."""
    def cell(value):
        if exp_dir is not None and isinstance(value, str) and value.startswith(str(exp_dir) + os.sep):
            return os.path.relpath(value, exp_dir)
        if isinstance(value, float):
            return "" if math.isnan(value) else f"{value:.4g}"
        return "" if value is None else str(value)

    return board.map(cell).to_string(index=False)
