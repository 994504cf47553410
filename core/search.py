"""From a search-space config to a Ray Tune experiment: param space, searcher, scheduler, run.

    cfg = load_experiment("search_spaces/quickstart.yaml")
    grid = run_search(cfg, storage_path="runs")         # Ray Tune + Optuna, blocks until done
    board = leaderboard(grid, cfg)                        # core.results: one row per trial, best first

What every Ray Tune run does around `Tuner.fit` (the driver lock, the once-per-experiment
preparation of data and reference statistics, the repair of an interrupted run, the clean-up) is
core.driver's, shared with confirm.py; this module adds what is the search's own.

Experiment directory (`<storage>/<name>/`): Ray Tune's state and one directory per trial
(result.json, progress.csv, TensorBoard events, checkpoint_*), plus ours: `experiment.yaml` (the
resolved config), `optuna.db` (the Optuna study: `optuna-dashboard sqlite:///.../optuna.db`) and
`leaderboard.csv` / `leaderboard.txt`, and `.driver.lock` (held while a driver runs there, so a
second driver on the same experiment is refused: `core.driver.driver_lock`).

Storage and cluster (core.cluster): `storage_path` may be a URI (s3://, gs://); Ray then writes
results and checkpoints straight to it, our files live in a local mirror (SQLite needs a real file
system) and are uploaded next to them, and the prepared data plus reference statistics are uploaded
once to `<experiment>/assets/` for nodes that lack the driver's cache. `address` joins a running
Ray cluster; trials are placed by the resources they ask for (search.cpus_per_trial/gpus_per_trial).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path

import yaml

from core.cluster import SharedAssets, Storage
from core.config import ConfigError, ExperimentConfig, config_to_dict, get_dotted
from core.data import load_prepared
from core.driver import tune_driver
from core.internals import (BaselineKeepingASHA, BaselineKeepingPBT, NoiseAwareRungs, attach_study, grow_search,
                            raise_trial_count)
from core.metric_registry import direction
from core.plan import (architecture_keys, baseline_points, make_sampler, perturbation_interval, search_metric,
                       search_mode)
from core.searchers import InTrialOrderSearch, ResumableOptunaSearch
from core.space import optuna_space, pbt_mutations, ray_param_space
from core.trainable import tune_trainable

logger = logging.getLogger(__name__)

EXPERIMENT_FILE = "experiment.yaml"
OPTUNA_FILE = "optuna.db"


def make_searcher(cfg: ExperimentConfig, experiment_dir: Path):
    """Ray Tune's searcher: Optuna with search.sampler's sampler (its study stored in
    <experiment>/optuna.db), or Ray's random search; either first trains the baseline (`points_to_evaluate`)."""
    from ray.tune.search import BasicVariantGenerator

    points = baseline_points(cfg) or None
    if cfg.search.searcher == "random":
        # Ray applies max_concurrent_trials to Searchers only: a BasicVariantGenerator takes its own.
        return BasicVariantGenerator(random_state=cfg.search.seed, points_to_evaluate=points,
                                     max_concurrent=cfg.search.max_concurrent)
    storage = study_storage(experiment_dir)
    if cfg.search.objectives:
        # Several objectives: the sampler's multi-objective search over each one's running best, one
        # study direction each; the study's best trials are the Pareto front.
        metric, mode = [f"best_{m}" for m in cfg.search.objectives], [direction(m) for m in cfg.search.objectives]
    else:
        metric, mode = search_metric(cfg), search_mode(cfg)
    return ResumableOptunaSearch(space=optuna_space(cfg.search.space), metric=metric, mode=mode,
                                 study_name=cfg.name, storage=storage, sampler=make_sampler(cfg),
                                 points_to_evaluate=points)


def study_storage(experiment_dir: Path):
    """The experiment's Optuna study on disk: an RDBStorage instance (not a URL string), so the study
    outlives the run and optuna-dashboard opens it."""
    import optuna

    return optuna.storages.RDBStorage(f"sqlite:///{Path(experiment_dir) / OPTUNA_FILE}")


def tuner_param_space(cfg: ExperimentConfig) -> dict:
    """What Tuner(param_space=...) gets: Optuna samples through its own define-by-run space."""
    return {} if cfg.search.searcher == "optuna" else ray_param_space(cfg.search.space)


def make_scheduler(cfg: ExperimentConfig):
    from ray.tune.schedulers import FIFOScheduler

    baseline = baseline_points(cfg)
    baseline = baseline[0] if baseline else None
    if cfg.search.scheduler == "fifo":
        return FIFOScheduler()
    if cfg.search.scheduler == "pbt":
        options = cfg.search.pbt_options
        return BaselineKeepingPBT(baseline, cfg.search.space, cfg.train.epochs, config_to_dict(cfg),
                                  time_attr="epoch", metric=search_metric(cfg),
                                  mode=search_mode(cfg),
                                  perturbation_interval=perturbation_interval(cfg),
                                  hyperparam_mutations=pbt_mutations(cfg.search.space, architecture_keys(cfg)),
                                  quantile_fraction=options.quantile_fraction,
                                  resample_probability=options.resample_probability, log_config=True)
    # With several objectives, ASHA stops trials by the first one.
    return BaselineKeepingASHA(baseline, cfg.search.space, time_attr="epoch", metric=search_metric(cfg),
                               mode=search_mode(cfg),
                               max_t=cfg.train.epochs, grace_period=min(cfg.search.grace_period, cfg.train.epochs),
                               reduction_factor=cfg.search.reduction_factor)


def rung_epochs(cfg: ExperimentConfig) -> list[int]:
    """ASHA's rungs: grace_period x reduction_factor^i, before the last epoch."""
    rungs, epoch = [], cfg.search.grace_period
    while epoch < cfg.train.epochs:
        rungs.append(epoch)
        epoch *= cfg.search.reduction_factor
    return rungs


def make_search_algorithms(cfg: ExperimentConfig, experiment_dir: Path):
    """The searcher and the scheduler a search runs. An Optuna search on one metric with rungs
    (asha) or none (fifo) decides in trial order, and races seeds when search.racing is on
    (core.racing): its searcher keeps the ledger its rungs read. Random search, PBT and several
    objectives use Ray's own order (make_searcher, make_scheduler)."""
    from ray.tune.schedulers import FIFOScheduler

    from core.racing import RaceLedger

    if not cfg.search.in_trial_order:
        return make_searcher(cfg, experiment_dir), make_scheduler(cfg)
    baseline = baseline_points(cfg)
    ledger = RaceLedger(metric=cfg.search.metric, epochs=cfg.train.epochs, lag=cfg.search.max_concurrent,
                        base_seed=cfg.train.seed, racing=cfg.search.racing_options,
                        rungs=rung_epochs(cfg) if cfg.search.scheduler == "asha" else [],
                        reduction_factor=cfg.search.reduction_factor, baseline_key=None)
    searcher = InTrialOrderSearch(make_searcher(cfg, experiment_dir), ledger, cfg.search.num_samples,
                                  baseline[0] if baseline else None, cfg.search.space)
    scheduler = NoiseAwareRungs(ledger) if cfg.search.scheduler == "asha" else FIFOScheduler()
    return searcher, scheduler


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


MIRRORED_FILES = (EXPERIMENT_FILE, OPTUNA_FILE, "leaderboard.csv", "leaderboard.txt", "search_time.json")


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
               address: str | None = None, verbose: bool = False, progress=print, stop=None):
    """Run (or resume) the search; returns Ray Tune's ResultGrid.

    `storage_path` is a local path, a shared file-system path or a URI (s3://, gs://); `address`
    joins a running Ray cluster ("auto" or HOST:PORT), None starts Ray on this machine. `stop`: a
    Ray Tune Stopper for the whole run (the search benchmark cuts searches at a budget of epochs).
    `verbose`: Ray's and Optuna's own console output too, beside core.driver's console.
    What every run does around Ray Tune (lock, preparation, resume repair, clean-up) is
    core.driver's; this adds the search's own files, searcher and scheduler."""
    from ray import tune

    storage = Storage.parse(storage_path)
    exp_dir = experiment_dir(storage_path, cfg.name, cfg.cache_path)   # local: ours; remote: the mirror
    exp_path = storage.join(cfg.name)                                   # where Ray keeps the experiment
    grow_to = None
    if resume:
        grow_to = _check_resumable(cfg, storage)
    elif storage.exists(exp_path) and _non_empty(storage, exp_path):
        raise ConfigError(f"Experiment directory {storage.given.rstrip('/')}/{cfg.name} already exists. Continue "
                          f"it with --resume, or choose another --name.")
    with tune_driver(cfg, storage, exp_path, exp_dir, what=f"Experiment {cfg.name}", resume=resume,
                     address=address, progress=progress, verbose=verbose) as run:
        for name in (OPTUNA_FILE, TimeBudget.FILE):   # a resume from another machine: the driver's own files
            if storage.remote and resume and not (exp_dir / name).is_file() and storage.exists(storage.join(cfg.name, name)):
                storage.download(storage.join(cfg.name, name), exp_dir / name)
        (exp_dir / EXPERIMENT_FILE).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        shared = None
        if storage.remote:
            fingerprint = load_prepared(run.ready.prepared_root).fingerprint
            shared = SharedAssets.upload(storage, exp_path, run.ready.prepared_root, run.ready.reference_path,
                                         fingerprint, progress=progress)
        trainable = run.trainable(tune_trainable, experiment=config_to_dict(cfg), shared=shared)
        try:
            if resume:
                if grow_to:
                    grow_search(storage, exp_path, grow_to, progress)
                tuner = run.restored(tune.Tuner.restore(exp_path, trainable=trainable, resume_unfinished=True,
                                                        resume_errored=True, storage_filesystem=storage.filesystem))
                raise_trial_count(tuner, cfg.search.num_samples)
                if cfg.search.searcher == "optuna":
                    attach_study(tuner, study_storage(exp_dir))
            else:
                searcher, scheduler = make_search_algorithms(cfg, exp_dir)
                tuner = tune.Tuner(
                    trainable, param_space=tuner_param_space(cfg),
                    run_config=run.run_config(cfg.name, search_mode(cfg), stop=stop),
                    tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                                num_samples=cfg.search.num_samples,
                                                max_concurrent_trials=(cfg.search.max_concurrent
                                                                       if cfg.search.searcher == "optuna" else None),
                                                reuse_actors=True, **run.trial_names()))
            budget = TimeBudget(cfg, exp_dir, progress)
            with budget:
                grid = tuner.fit()
            grid.stopped_by_time_budget = budget.expired
            if cfg.search.searcher == "optuna" and not budget.expired and _every_trial_ended(grid, cfg):
                close_abandoned_study_trials(exp_dir / OPTUNA_FILE, cfg.name, progress)
            return grid
        finally:
            publish_experiment_files(cfg, storage_path)   # the study so far, even if the search failed


def _every_trial_ended(grid, cfg: ExperimentConfig) -> bool:
    return len(grid) >= cfg.search.num_samples and grid.num_terminated + grid.num_errors == len(grid)


def close_abandoned_study_trials(study_file: Path, study_name: str, progress=print) -> int:
    """Once every trial of a search has ended: Optuna trials still RUNNING belong to none of them.
    A driver killed after it asked Optuna for a trial, but before Ray's snapshot recorded that
    trial, leaves one (the resumed search asks again). Left RUNNING it stays in optuna-dashboard
    forever, and a later --resume --num-samples would count it as pending (the constant liar). It
    is told FAIL. Returns how many."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{study_file}")
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        study.tell(trial.number, state=TrialState.FAIL)
    if stale:
        progress(f"Optuna trial(s) {', '.join(f'#{t.number}' for t in stale)} had been asked for by an interrupted "
                 f"driver and were never trained: marked failed in the study")
    return len(stale)


def _non_empty(storage: Storage, path: str) -> bool:
    if not storage.remote:
        return any(Path(path).iterdir())
    import pyarrow.fs

    return bool(storage.filesystem.get_file_info(pyarrow.fs.FileSelector(path)))


# What a resume may change: more trials (with the optuna searcher), and a new time budget.
RESUMABLE_CHANGES = ("search.num_samples", "search.time_budget")


def _check_resumable(cfg: ExperimentConfig, storage: Storage) -> int | None:
    """Refuse a resume that cannot work; return the new trial count when --num-samples grows the search."""
    from ray import tune

    exp_path = storage.join(cfg.name)
    shown = f"{storage.given.rstrip('/')}/{cfg.name}"
    if not tune.Tuner.can_restore(exp_path, storage_filesystem=storage.filesystem):
        raise ConfigError(f"Nothing to resume in {shown}: it holds no Ray Tune experiment state. "
                          f"Run without --resume to start the experiment (or check --storage/--name).")
    saved_path = storage.join(cfg.name, EXPERIMENT_FILE)
    if not storage.exists(saved_path):
        return None
    if storage.remote:
        with storage.filesystem.open_input_stream(saved_path) as f:
            saved = yaml.safe_load(f.read().decode())
    else:
        saved = yaml.safe_load(Path(saved_path).read_text())
    now = config_to_dict(cfg)
    changed = sorted(k for k in _diff_keys(saved, now) if k not in RESUMABLE_CHANGES)
    if changed:
        lines = "; ".join(f"{k}: {get_dotted(saved, k)!r} then, {get_dotted(now, k)!r} now" for k in changed)
        raise ConfigError(f"The configuration changed since {shown} started ({lines}). A resume may only raise "
                          f"--num-samples or change search.time_budget: resume with the original space, or "
                          f"start a new experiment with --name.")
    before = saved["search"]["num_samples"]
    if cfg.search.num_samples < before:
        raise ConfigError(f"{shown} was started with {before} trials; --num-samples {cfg.search.num_samples} "
                          f"cannot shrink it (leave it out to continue, or raise it to extend the search)")
    if cfg.search.num_samples > before:
        if cfg.search.searcher != "optuna":
            raise ConfigError(f"Extending a search to more trials needs search.searcher: optuna (the study "
                              f"continues); {shown} uses {cfg.search.searcher}. Start a new experiment with --name.")
        return cfg.search.num_samples
    return None


class TimeBudget:
    """search.time_budget: the whole search's wall-clock time, over all its runs (kept in
    <experiment>/search_time.json). When it runs out, the driver interrupts Ray Tune as Ctrl-C would
    (SIGUSR1, which Tune handles alike): running trials keep their last checkpoint, the experiment
    state is saved, the leaderboard is written, and `--resume` with a larger budget continues."""

    FILE = "search_time.json"

    def __init__(self, cfg: ExperimentConfig, exp_dir: Path, progress=print):
        self.budget = cfg.search.time_budget_s
        self.path = exp_dir / self.FILE
        self.progress = progress
        self.used = json.loads(self.path.read_text())["seconds"] if self.path.is_file() else 0.0
        self.expired = False
        self._timer = None
        if self.budget is not None and self.used >= self.budget:
            raise ConfigError(f"The search's time budget ({cfg.search.time_budget}) is used up: it has run "
                              f"{self.used / 3600:.2f} h. Resume with a larger search.time_budget.")

    def __enter__(self):
        import threading

        self.start = time.monotonic()
        if self.budget is not None:
            remaining = self.budget - self.used
            self.progress(f"time budget: {_duration(remaining)} of {_duration(self.budget)} left")
            self._timer = threading.Timer(remaining, self._expire)
            self._timer.daemon = True
            self._timer.start()
        return self

    def _expire(self) -> None:
        self.expired = True
        self.progress("time budget used up: stopping the search (running trials keep their last checkpoint)")
        os.kill(os.getpid(), signal.SIGUSR1)

    def __exit__(self, *exc) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({"seconds": self.used + time.monotonic() - self.start}))


def _duration(seconds: float) -> str:
    """"45 s", "12.5 min", "2.25 h": a budget in the unit a person reads it in."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.2f} h"


def _diff_keys(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = set(a) | set(b)
        return [k for key in keys for k in _diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".")]
