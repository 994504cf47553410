"""From a search-space config to a Ray Tune experiment: param space, searcher, scheduler, run.

    cfg = load_experiment("search_spaces/quickstart.yaml")
    grid = run_search(cfg, storage_path="runs")         # Ray Tune + Optuna, blocks until done
    board = leaderboard(grid, cfg)                        # core.results: one row per trial, best first

The driver does the once-per-experiment work before any trial starts: it materializes the data
(`core.data.prepare_data`) and computes the reference statistics (`core.metrics`), whose cache has
no lock, so trials only ever read them.

Experiment directory (`<storage>/<name>/`): Ray Tune's state and one directory per trial
(result.json, progress.csv, TensorBoard events, checkpoint_*), plus ours: `experiment.yaml` (the
resolved config), `optuna.db` (the Optuna study: `optuna-dashboard sqlite:///.../optuna.db`) and
`leaderboard.csv` / `leaderboard.txt`.

Storage and cluster (core.cluster): `storage_path` may be a URI (s3://, gs://); Ray then writes
results and checkpoints straight to it, our files live in a local mirror (SQLite needs a real file
system) and are uploaded next to them, and the prepared data plus reference statistics are uploaded
once to `<experiment>/assets/` for nodes that lack the driver's cache. `address` joins a running
Ray cluster; trials are placed by the resources they ask for (search.cpus_per_trial/gpus_per_trial).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import yaml
from ray.tune import Callback

from core.cluster import SharedAssets, Storage, check_resources, connect
from core.config import ConfigError, ExperimentConfig, build_config, config_to_dict
from core.data import load_prepared, prepare_data
from core.metrics import reference_statistics
from core.models.base import get_family
from core.results import trial_status
from core.checkpoints import checkpoint_problem, remove_staging_leftovers, repair_checkpoint_records
from core.trainable import tune_trainable

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
    """The driver's once-per-experiment work: data, then reference statistics. The family is built
    once on the CPU first, so a model/data mismatch is one error here instead of one per trial."""
    prepared = prepare_data(cfg.data, cfg.cache_path, progress=progress)
    check_family_builds(cfg, prepared)
    reference = reference_statistics(prepared, cfg.metrics, cfg.cache_path, progress=progress)
    return PreparedExperiment(str(prepared.root), str(reference))


def check_family_builds(cfg: ExperimentConfig, prepared) -> None:
    """Build the family on the prepared data, on the CPU: an image size the networks cannot take,
    more scored samples than distinct images, ... become one ConfigError before any trial starts."""
    try:
        get_family(cfg.family)(cfg, prepared, torch.device("cpu"))
    except (ValueError, RuntimeError) as e:
        raise ConfigError(f"The {cfg.family} model cannot be built with this configuration: {e}") from None


DOWNLOADING_SOURCES = ("kaggle", "kaggle_dataset")


def check_experiment(cfg: ExperimentConfig, progress=print) -> str:
    """--dry-run's checks of what the run would refuse before its first trial: the data (prepared
    and cached as the run would, except a Kaggle download) and the family built on it. Raises the
    run's own ConfigError/DataError; returns a line saying what was checked."""
    if cfg.data.source in DOWNLOADING_SOURCES:
        return (f"data ({cfg.data.source}) not checked: it is downloaded when the run starts "
                f"(or ahead of it: python experiments/prepare_data.py --space ...)")
    prepared = prepare_data(cfg.data, cfg.cache_path, progress=progress)
    check_family_builds(cfg, prepared)
    return (f"data and model checked: {prepared.count('train/monet')} Monets, {prepared.count('train/photo')} "
            f"photos, {prepared.count('test/photo')} test photos; the {cfg.family} model builds on them")


def experiment_dir(storage_path: str | os.PathLike, name: str, cache_path: Path | None = None) -> Path:
    """The experiment's local directory: `<storage>/<name>` for a local (or shared file-system)
    storage path; for a URI, a local mirror in the cache that holds the driver's own files
    (experiment.yaml, the Optuna SQLite study, the leaderboard), uploaded next to Ray's results
    by `publish_experiment_files`. SQLite needs a real file system, so the study never lives
    in the bucket itself."""
    storage = Storage.parse(storage_path)
    if not storage.remote:
        return Path(storage.path) / name
    cache = cache_path or Path(os.path.expanduser(os.environ.get("PAINTSWEEP_CACHE", "~/.cache/paintsweep")))
    mirror = storage.given.split("?")[0].replace("://", "/").strip("/")   # s3://bucket/runs -> s3/bucket/runs
    return cache / "mirrors" / mirror / name


MIRRORED_FILES = (EXPERIMENT_FILE, OPTUNA_FILE, "leaderboard.csv", "leaderboard.txt")


def publish_experiment_files(cfg: ExperimentConfig, storage_path: str | os.PathLike) -> None:
    """Remote storage: upload the driver's files from the local mirror next to Ray's results."""
    storage = Storage.parse(storage_path)
    if not storage.remote:
        return
    local = experiment_dir(storage_path, cfg.name, cfg.cache_path)
    for name in MIRRORED_FILES:
        if (local / name).is_file():
            storage.upload(local / name, storage.join(cfg.name, name))


def run_search(cfg: ExperimentConfig, storage_path: str | os.PathLike = "runs", *, resume: bool = False,
               address: str | None = None, verbose: int = 1, progress=print):
    """Run (or resume) the search; returns Ray Tune's ResultGrid.

    `storage_path` is a local path, a shared file-system path or a URI (s3://, gs://); `address`
    joins a running Ray cluster ("auto" or HOST:PORT), None starts Ray on this machine."""
    import ray
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback


    storage = Storage.parse(storage_path)
    exp_dir = experiment_dir(storage_path, cfg.name, cfg.cache_path)   # local: ours; remote: the mirror
    exp_path = storage.join(cfg.name)                                   # where Ray keeps the experiment
    if resume:
        _check_resumable(cfg, storage)
    elif storage.exists(exp_path) and _non_empty(storage, exp_path):
        raise ConfigError(f"Experiment directory {storage.given.rstrip('/')}/{cfg.name} already exists. Continue "
                          f"it with --resume, or choose another --name.")
    storage.check_writable()
    connect(address)   # before the long preparation: a bad address or resource request fails at once
    try:
        check_resources(cfg)
        ready = prepare_experiment(cfg, progress=progress)   # before any file: a failure leaves nothing behind
        exp_dir.mkdir(parents=True, exist_ok=True)
        if storage.remote and resume and not (exp_dir / OPTUNA_FILE).is_file() \
                and storage.exists(storage.join(cfg.name, OPTUNA_FILE)):
            storage.download(storage.join(cfg.name, OPTUNA_FILE), exp_dir / OPTUNA_FILE)
        (exp_dir / EXPERIMENT_FILE).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        shared = None
        if storage.remote:
            fingerprint = load_prepared(ready.prepared_root).fingerprint
            shared = SharedAssets.upload(storage, exp_path, ready.prepared_root, ready.reference_path,
                                         fingerprint, progress=progress)
        trainable = tune.with_parameters(tune_trainable, experiment=config_to_dict(cfg),
                                         prepared_root=ready.prepared_root, reference_path=ready.reference_path,
                                         shared=shared)
        trainable = tune.with_resources(trainable, {"cpu": cfg.search.cpus_per_trial,
                                                    "gpu": cfg.search.gpus_per_trial})

        # Ray's own TensorBoard logger would duplicate our scalars under ray/tune/*: keep only JSON/CSV
        # (which ResultGrid and the analysis helpers read) and write TensorBoard ourselves.
        os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")
        # W&B: one run per trial, core.tracking.TrialLoggers.
        callbacks = [JsonLoggerCallback(), CSVLoggerCallback(), TrialEndLine(cfg.search.metric, cfg.train.epochs)]
        # A trial that had not reported before an interruption has no result files yet: Ray warns
        # about each on every resume, though nothing is wrong.
        logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
        run_config = tune.RunConfig(
            name=cfg.name, storage_path=storage.path, storage_filesystem=storage.filesystem,
            callbacks=callbacks, verbose=verbose,
            # Trials write TensorBoard events in their working directory; Ray copies them to storage.
            sync_config=tune.SyncConfig(sync_artifacts=True),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=cfg.search.keep_checkpoints,
                                                    checkpoint_score_attribute=cfg.search.metric,
                                                    checkpoint_score_order="min"),
            # A crashed trial (its process or node lost) restarts from its last checkpoint. A diverged
            # or collapsed trial is no failure: it returns normally and is not retried.
            failure_config=tune.FailureConfig(max_failures=cfg.search.max_failures),
        )
        if resume:
            # Ray restores each unfinished trial from the checkpoint its last snapshot names; a
            # driver killed at the wrong moment leaves that record naming a deleted checkpoint.
            remove_damaged_checkpoints(storage, exp_path, progress)
            repair_checkpoint_records(exp_path, storage.filesystem, progress)
            tuner = tune.Tuner.restore(exp_path, trainable=trainable, resume_unfinished=True,
                                       resume_errored=True, storage_filesystem=storage.filesystem)
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
            remove_damaged_checkpoints(storage, exp_path, progress)
            remove_staging_leftovers(_trial_ids(storage, exp_path))
            publish_experiment_files(cfg, storage_path)   # the study so far, even if the search failed
    finally:
        ray.shutdown()  # stop the trial workers (or leave the cluster) before the interpreter exits


class TrialEndLine(Callback):
    """A Ray Tune callback: one console line per finished trial, its status and best score.
    (Ray's table shows each running trial's epoch, running best and last score: the first
    numbers of its reports, see core.trainable.)"""

    def __init__(self, metric: str, epochs: int):
        self.metric, self.epochs = metric, epochs

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._say(trial, errored=False)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._say(trial, errored=True)

    def _say(self, trial, errored: bool) -> None:
        last = trial.last_result or {}
        status = trial_status(last, errored, self.epochs)
        best = last.get(f"best_{self.metric}")
        finite = best is not None and math.isfinite(best)
        score = f", best {self.metric} {best:.4g} at epoch {last.get('best_epoch')}" if finite else ""
        print(f"Trial {trial} {status}{score} after {last.get('epoch', 0)}/{self.epochs} epochs"
              + (f" ({last['status_detail']})" if last.get("status_detail") else ""), flush=True)


def remove_damaged_checkpoints(storage: Storage, exp_path: str, progress=print) -> None:
    """Delete checkpoint directories that `core.checkpoints.checkpoint_problem` rejects, saying why.

    Ray registers a checkpoint only after copying it to storage, so it never resumes from a partial
    one; but a driver or worker killed during that copy leaves the partial directory behind, and a
    disk fault can damage a kept one. Nothing can load them; they would only take space and be
    offered by the analysis tools. (Local and shared storage.)"""
    if storage.remote:
        return
    for checkpoint in sorted(Path(exp_path).glob("*/checkpoint_*")):
        problem = checkpoint_problem(checkpoint)
        if problem is not None:
            progress(f"removing damaged checkpoint {checkpoint}: {problem}")
            shutil.rmtree(checkpoint, ignore_errors=True)


def _trial_ids(storage: Storage, exp_path: str) -> list[str]:
    """The ids of the experiment's trials, from their directory names (`<family>_<trial id>`)."""
    import pyarrow.fs

    fs = storage.filesystem or pyarrow.fs.LocalFileSystem()
    found = fs.get_file_info(pyarrow.fs.FileSelector(exp_path, allow_not_found=True))
    return [Path(info.path).name.rsplit("_", 1)[-1] for info in found
            if info.type == pyarrow.fs.FileType.Directory and "_" in Path(info.path).name]


def _non_empty(storage: Storage, path: str) -> bool:
    if not storage.remote:
        return any(Path(path).iterdir())
    import pyarrow.fs

    return bool(storage.filesystem.get_file_info(pyarrow.fs.FileSelector(path)))


def _trial_name(family: str, trial) -> str:
    """`cyclegan_3f2a1b7c` instead of Ray's default directory name with every searched value."""
    return f"{family}_{trial.trial_id}"


def _check_resumable(cfg: ExperimentConfig, storage: Storage) -> None:
    from ray import tune

    exp_path = storage.join(cfg.name)
    shown = f"{storage.given.rstrip('/')}/{cfg.name}"
    if not tune.Tuner.can_restore(exp_path, storage_filesystem=storage.filesystem):
        raise ConfigError(f"Nothing to resume in {shown}: it holds no Ray Tune experiment state. "
                          f"Run without --resume to start the experiment (or check --storage/--name).")
    saved_path = storage.join(cfg.name, EXPERIMENT_FILE)
    if storage.exists(saved_path):
        if storage.remote:
            with storage.filesystem.open_input_stream(saved_path) as f:
                saved = yaml.safe_load(f.read().decode())
        else:
            saved = yaml.safe_load(Path(saved_path).read_text())
        now = config_to_dict(cfg)
        changed = sorted(_diff_keys(saved, now))
        if changed:
            raise ConfigError(f"The configuration changed since {shown} started ({', '.join(changed)}); "
                              f"resume with the original space, or start a new experiment with --name.")


def _diff_keys(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = set(a) | set(b)
        return [k for key in keys for k in _diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".")]
