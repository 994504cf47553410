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
`leaderboard.csv` / `leaderboard.txt`, and `.driver.lock` (held while a driver runs there, so a
second driver on the same experiment is refused: `driver_lock`).

Storage and cluster (core.cluster): `storage_path` may be a URI (s3://, gs://); Ray then writes
results and checkpoints straight to it, our files live in a local mirror (SQLite needs a real file
system) and are uploaded next to them, and the prepared data plus reference statistics are uploaded
once to `<experiment>/assets/` for nodes that lack the driver's cache. `address` joins a running
Ray cluster; trials are placed by the resources they ask for (search.cpus_per_trial/gpus_per_trial).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import signal
import time
import warnings
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import yaml
from ray.tune import Callback
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining
from ray.tune.search.optuna import OptunaSearch

from core.cluster import SharedAssets, Storage, check_resources, connect
from core.config import ConfigError, ExperimentConfig, apply_dotted, build_config, config_to_dict, get_dotted
from core.data import load_prepared, prepare_data
from core.metrics import DIRECTIONS, reference_statistics
from core.results import trial_status
from core.plan import (architecture_keys, baseline_points, check_family_builds, perturbation_interval, search_metric,
                       search_mode, tpe_settings)
from core.space import applicable, dimensions, is_baseline, optuna_space, pbt_mutations, ray_param_space
from core.checkpoints import (backfill_reports, checkpoint_problem, remove_staging_leftovers,
                              repair_checkpoint_records)
from core.tracking import release_wandb_in_driver
from core.trainable import tune_trainable

logger = logging.getLogger(__name__)

EXPERIMENT_FILE = "experiment.yaml"
OPTUNA_FILE = "optuna.db"


def make_searcher(cfg: ExperimentConfig, experiment_dir: Path):
    """Ray Tune's searcher: Optuna's TPE (its study stored in <experiment>/optuna.db) or random search;
    either first trains the baseline (`points_to_evaluate`)."""
    from ray.tune.search import BasicVariantGenerator

    points = baseline_points(cfg) or None
    if cfg.search.searcher == "random":
        # Ray applies max_concurrent_trials to Searchers only: a BasicVariantGenerator takes its own.
        return BasicVariantGenerator(random_state=cfg.search.seed, points_to_evaluate=points,
                                     max_concurrent=cfg.search.max_concurrent)
    import optuna

    # An RDBStorage instance (not a URL string): the study outlives the run and optuna-dashboard opens it.
    storage = optuna.storages.RDBStorage(f"sqlite:///{experiment_dir / OPTUNA_FILE}")
    with warnings.catch_warnings():   # multivariate, group and constant_liar are "experimental" in Optuna 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=cfg.search.seed, **tpe_settings(cfg))
    if cfg.search.objectives:
        # Several objectives: Optuna's multi-objective TPE over each one's running best, one study
        # direction each; the study's best trials are the Pareto front.
        metric, mode = [f"best_{m}" for m in cfg.search.objectives], [DIRECTIONS[m] for m in cfg.search.objectives]
    else:
        metric, mode = search_metric(cfg), search_mode(cfg)
    return ResumableOptunaSearch(space=optuna_space(cfg.search.space), metric=metric, mode=mode,
                                 study_name=cfg.name, storage=storage, sampler=sampler, points_to_evaluate=points)


class ResumableOptunaSearch(OptunaSearch):
    """Ray's OptunaSearch over a study on disk that can be ahead of Ray's own snapshot: a driver
    killed after a trial finished (told to the study) but before Ray saved that, resumes and runs
    the trial's last steps again. Its reports then reach an Optuna trial that is already finished;
    the study keeps the outcome it has (a rerun reproduces it: training is seeded) instead of the
    search failing with UpdateFinishedTrialError."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if not self._finished_in_study(trial_id):
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if self._finished_in_study(trial_id):
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result=result, error=error)

    def _finished_in_study(self, trial_id: str) -> bool:
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None:
            return False
        return self._ot_study._storage.get_trial(ot_trial._trial_id).state.is_finished()


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


class BaselineKeepingASHA(ASHAScheduler):
    """ASHA that never stops the baseline trial early, so that the best trial is compared with the
    defaults at the same budget. (The baseline's results still count in ASHA's rungs.)"""

    def __init__(self, baseline: dict | None, space: dict, **kwargs):
        super().__init__(**kwargs)
        self.baseline, self.space = baseline, space

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == self.STOP and result.get("epoch", 0) < self._max_t and self._is_baseline(trial):
            return self.CONTINUE
        return decision

    def _is_baseline(self, trial) -> bool:
        return self.baseline is not None and is_baseline(trial.config, self.baseline, self.space)


class BaselineKeepingPBT(PopulationBasedTraining):
    """Ray's PBT for paintsweep's trials, which report a checkpoint with every evaluation:
    - the baseline is never exploited (it trains the defaults, unmutated, to the end);
    - a top trial's checkpoint is the one reported with the result being ranked (the result names
      it: `checkpoint_dir_name`). Ray would ask the trial to save, which a function trainable
      answers with that same checkpoint, registered a second time, and keep-top-k then deletes it
      twice (FileNotFoundError in Ray's checkpoint manager). Nor is it `trial.checkpoint`: Ray
      registers a result's checkpoint only after the scheduler has decided on that result, so
      that is the previous report's, and right after an exploit the donor's copy: a trial that
      copied it later got a stale checkpoint, or its own older weights back (epochs 1-5, 4, ...);
    - a checkpoint that keep-top-k deleted since is replaced by the donor's newest intact one of
      its own; a donor that never checkpointed is not copied (Ray's own rule);
    - nothing is exploited at or into the last epoch (`max_t`): a trial would restart with no epoch
      left to train and end with the donor's record as its own;
    - the donor's checkpoint is copied into the exploiting trial's own directory
      (`<trial>/pbt_donor/<n>/checkpoint_NNNNNN`, one per trial, replaced by its next exploit): Ray
      only points at the donor's, and with more trials than slots the exploiting trial waits,
      paused, while the donor trains on and keep-top-k deletes that checkpoint ("Could not recover
      from checkpoint as it does not exist on storage anymore");
    - a perturbed value stays inside its searched range (Ray's x0.8/x1.2 walks out of it; integers
      stay integers), and a perturbation the family refuses (the VAE's beta_cycle must exceed
      beta_warmup) is drawn again, up to EXPLORE_TRIES times, else the donor's values are kept."""

    DONOR_DIR = "pbt_donor"
    EXPLORE_TRIES = 20

    def __init__(self, baseline: dict | None, space: dict, max_t: int, experiment: dict, **kwargs):
        super().__init__(**kwargs)
        self.baseline, self.space, self.max_t, self.experiment = baseline, space, max_t, experiment

    def _quantiles(self):
        lower, upper = super()._quantiles()
        return [t for t in lower if not self._is_baseline(t)], upper

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if result.get(self._time_attr, 0) >= self.max_t:
            return self.CONTINUE   # its last report: the trial ends here
        return super().on_trial_result(tune_controller, trial, result)

    def _checkpoint_or_exploit(self, trial, tune_controller, upper_quantile, lower_quantile):
        state = self._trial_state[trial]
        state.last_checkpoint = _reported_checkpoint(trial, state.last_result) if trial in upper_quantile else None
        self._num_checkpoints += trial in upper_quantile
        if trial in lower_quantile:
            donor = random.choice(upper_quantile)
            if self._trial_state[donor].last_checkpoint is None:
                return   # the donor has not checkpointed yet: no exploit this round
            self._exploit(tune_controller, trial, donor)

    def _exploit(self, tune_controller, trial, trial_to_clone):
        donor = self._trial_state[trial_to_clone]
        if (donor.last_result or {}).get(self._time_attr, 0) >= self.max_t:
            return
        recorded, recorded_result = donor.last_checkpoint, donor.last_result
        if not _intact(recorded):
            recorded, recorded_result = _newest_own_checkpoint(trial_to_clone)
            if recorded is None:
                return   # nothing intact to copy: no exploit this round
        try:
            copied = self._private_copy(recorded, trial)
        except OSError as e:   # (pyarrow's FileNotFoundError included) the donor's files went meanwhile
            logger.warning("PBT: no exploit of %s into %s this round: copying %s failed (%s)",
                           trial_to_clone, trial, recorded.path, e)
            return
        # Ray's exploit restores the trial from donor.last_checkpoint: hand it the private copy.
        kept = donor.last_checkpoint, donor.last_result
        donor.last_checkpoint, donor.last_result = copied, recorded_result
        try:
            super()._exploit(tune_controller, trial, trial_to_clone)
        finally:
            donor.last_checkpoint, donor.last_result = kept

    def _private_copy(self, checkpoint, trial):
        """`checkpoint` copied to <trial>/pbt_donor/<n>/<its name>, a new <n> per exploit; the
        trial's earlier copies are removed once this one is complete (never the source itself,
        which may be one of them: a donor's latest checkpoint is its own restore copy until it
        reports the next)."""
        import pyarrow.fs
        from ray.tune import Checkpoint

        fs = checkpoint.filesystem
        donor_dir = f"{trial.storage.trial_fs_path}/{self.DONOR_DIR}"
        earlier = [info.path for info in fs.get_file_info(pyarrow.fs.FileSelector(donor_dir, allow_not_found=True))]
        number = 1 + max((int(Path(p).name) for p in earlier if Path(p).name.isdigit()), default=0)
        target = f"{donor_dir}/{number}/{Path(checkpoint.path).name}"
        fs.create_dir(target, recursive=True)
        pyarrow.fs.copy_files(checkpoint.path, target, source_filesystem=fs, destination_filesystem=fs)
        source = Path(checkpoint.path)
        for path in earlier:
            if Path(path) not in source.parents:
                fs.delete_dir(path)
        return Checkpoint(target, filesystem=fs)

    def _get_new_config(self, trial, trial_to_clone):
        """Ray's explore, kept inside the searched ranges and drawn again while the family refuses it."""
        for _ in range(self.EXPLORE_TRIES):
            new_config, operations = super()._get_new_config(trial, trial_to_clone)
            new_config = self._inside_ranges(new_config)
            if self._valid(new_config):
                return new_config, operations
        return dict(trial_to_clone.config), {}

    def _inside_ranges(self, config: dict) -> dict:
        config = dict(config)
        for d in dimensions(self.space):
            value = config.get(d.key)
            if d.kind == "choice" or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            low, high = d.args
            config[d.key] = min(max(int(round(value)) if d.kind == "int" else float(value), low), high)
        return config

    def _valid(self, config: dict) -> bool:
        searched = applicable(config, self.space)
        try:
            build_config(apply_dotted(self.experiment, {k: v for k, v in searched.items() if k in self.space}),
                         source="PBT perturbation")
        except ConfigError:
            return False
        return True

    _is_baseline = BaselineKeepingASHA._is_baseline


def _intact(checkpoint) -> bool:
    """A ray.tune.Checkpoint whose files pass core.checkpoints' integrity check."""
    return hasattr(checkpoint, "path") and checkpoint_problem(checkpoint.path, checkpoint.filesystem) is None


def _reported_checkpoint(trial, result: dict | None):
    """The ray.tune.Checkpoint reported with `result`, or None if it came without one. Ray has
    already written it to storage (a trial's report returns only then), under the name it puts
    in the result."""
    from ray.tune import Checkpoint

    name = (result or {}).get("checkpoint_dir_name")
    if not name:
        return None
    return Checkpoint(f"{trial.storage.trial_fs_path}/{name}", filesystem=trial.storage.storage_filesystem)


def _newest_own_checkpoint(trial):
    """(checkpoint, the result it was reported with) of the newest intact checkpoint in Ray's
    record of those the trial reported and keeps in its own directory, or (None, None). Never a
    PBT restore copy: that holds another trial's weights."""
    own = Path(trial.storage.trial_fs_path)
    kept = [r for r in trial.run_metadata.checkpoint_manager._checkpoint_results
            if Path(r.checkpoint.path).parent == own and _intact(r.checkpoint)]
    newest = max(kept, key=lambda r: r.metrics.get("epoch", 0), default=None)
    return (newest.checkpoint, newest.metrics) if newest else (None, None)


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
               address: str | None = None, verbose: int = 1, progress=print, stop=None):
    """Run (or resume) the search; returns Ray Tune's ResultGrid.

    `storage_path` is a local path, a shared file-system path or a URI (s3://, gs://); `address`
    joins a running Ray cluster ("auto" or HOST:PORT), None starts Ray on this machine. `stop`: a
    Ray Tune Stopper for the whole run (the search benchmark cuts searches at a budget of epochs)."""
    import ray
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
    storage.check_writable()
    connect(address)   # before the long preparation: a bad address or resource request fails at once
    held = ExitStack()   # the driver lock, once the directory exists
    try:
        check_resources(cfg)
        ready = prepare_experiment(cfg, progress=progress)   # before any file: a failure leaves nothing behind
        exp_dir.mkdir(parents=True, exist_ok=True)
        held.enter_context(driver_lock(exp_dir, f"Experiment {cfg.name}"))
        for name in (OPTUNA_FILE, TimeBudget.FILE):   # a resume from another machine: the driver's own files
            if storage.remote and resume and not (exp_dir / name).is_file() and storage.exists(storage.join(cfg.name, name)):
                storage.download(storage.join(cfg.name, name), exp_dir / name)
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
        release_wandb_in_driver()   # nothing of W&B's left in TMPDIR if this driver is killed
        # W&B: one run per trial, core.tracking.TrialLoggers.
        callbacks = [SessionJsonLogger(), SessionCSVLogger(), TrialEndLine(cfg.search.metric, cfg.train.epochs)]
        # A trial that had not reported before an interruption has no result files yet: Ray warns
        # about each on every resume, though nothing is wrong.
        logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
        run_config = tune.RunConfig(
            name=cfg.name, storage_path=storage.path, storage_filesystem=storage.filesystem,
            callbacks=callbacks, verbose=verbose, stop=stop,
            # Trials write TensorBoard events in their working directory; Ray copies them to storage.
            sync_config=tune.SyncConfig(sync_artifacts=True),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=cfg.search.keep_checkpoints,
                                                    checkpoint_score_attribute=cfg.search.metric,
                                                    checkpoint_score_order=search_mode(cfg)),
            # A crashed trial (its process or node lost) restarts from its last checkpoint. A diverged
            # or collapsed trial is no failure: it returns normally and is not retried.
            failure_config=tune.FailureConfig(max_failures=cfg.search.max_failures),
        )
        if resume:
            # Ray restores each unfinished trial from the checkpoint its last snapshot names; a
            # driver killed at the wrong moment leaves that record naming a deleted checkpoint.
            remove_damaged_checkpoints(storage, exp_path, progress)
            repair_checkpoint_records(exp_path, storage.filesystem, progress)
            backfill_reports(exp_path, storage.filesystem, progress)
            if grow_to:
                _grow_search(storage, exp_path, grow_to, progress)
            tuner = tune.Tuner.restore(exp_path, trainable=trainable, resume_unfinished=True,
                                       resume_errored=True, storage_filesystem=storage.filesystem)
            # Tuner.restore keeps the first run's TuneConfig; the trial count is the one setting a
            # resume may raise (Ray 2.60 reads it from here when the run continues).
            tuner._local_tuner._tune_config.num_samples = cfg.search.num_samples
        else:
            tuner = tune.Tuner(
                trainable, param_space=tuner_param_space(cfg), run_config=run_config,
                tune_config=tune.TuneConfig(search_alg=make_searcher(cfg, exp_dir), scheduler=make_scheduler(cfg),
                                            num_samples=cfg.search.num_samples,
                                            max_concurrent_trials=(cfg.search.max_concurrent
                                                                   if cfg.search.searcher == "optuna" else None),
                                            trial_name_creator=partial(_trial_name, cfg.family),
                                            trial_dirname_creator=partial(_trial_name, cfg.family),
                                            reuse_actors=True))
        budget = TimeBudget(cfg, exp_dir, progress)
        try:
            with budget:
                grid = tuner.fit()
            grid.stopped_by_time_budget = budget.expired
            return grid
        finally:
            remove_damaged_checkpoints(storage, exp_path, progress)
            remove_staging_leftovers(_trial_ids(storage, exp_path, cfg.family))
            publish_experiment_files(cfg, storage_path)   # the study so far, even if the search failed
    finally:
        ray.shutdown()  # stop the trial workers (or leave the cluster) before the interpreter exits
        held.close()


DRIVER_LOCK = ".driver.lock"


@contextmanager
def driver_lock(directory: Path, what: str):
    """Hold an exclusive lock on `directory` while a driver runs there. Two drivers on one
    experiment (a second --resume in another terminal, two benchmark processes sharing a storage)
    would both restore its unfinished trials and overwrite each other's results and checkpoints.
    The lock is the operating system's (flock on DRIVER_LOCK, whose text names the holder): it ends
    with the process, so a killed driver leaves none behind. It guards this machine's directory;
    for a remote storage that is the local mirror, so drivers on two machines are not kept apart."""
    import fcntl
    import socket

    handle = open(Path(directory) / DRIVER_LOCK, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ConfigError(f"{what} is being run by {holder}. Wait for it to finish or stop it: two drivers "
                          f"at once would overwrite each other's trials.") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()
    try:
        yield
    finally:
        handle.close()   # (the file stays: removing it would let a waiting driver lock a deleted file)


class _KeepThisSessionsLog:
    """Ray's JSON/CSV loggers copy a trial's result file back from storage whenever the trial
    (re)starts from a checkpoint. Within one driver session that copy can be older than the local
    file (storage is synced every so often), so a trial that PBT paused and restarted, or that was
    retried, lost the reports made since the last sync. The local file of this session is kept;
    a new session (a resume) has none and restores from storage as Ray does."""

    def _restore_from_remote(self, file_name: str, trial) -> None:
        local = Path(trial.local_path, file_name)
        if local.is_file() and local.stat().st_size > 0:
            return
        super()._restore_from_remote(file_name, trial)


class SessionJsonLogger(_KeepThisSessionsLog, JsonLoggerCallback):
    pass


class SessionCSVLogger(_KeepThisSessionsLog, CSVLoggerCallback):
    pass


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


def _trial_ids(storage: Storage, exp_path: str, family: str) -> list[str]:
    """The ids of the experiment's trials, from their directory names (`<family>_<trial id>`)."""
    import pyarrow.fs

    fs = storage.filesystem or pyarrow.fs.LocalFileSystem()
    found = fs.get_file_info(pyarrow.fs.FileSelector(exp_path, allow_not_found=True))
    prefix = f"{family}_"
    return [Path(info.path).name[len(prefix):] for info in found
            if info.type == pyarrow.fs.FileType.Directory and Path(info.path).name.startswith(prefix)]


def _non_empty(storage: Storage, path: str) -> bool:
    if not storage.remote:
        return any(Path(path).iterdir())
    import pyarrow.fs

    return bool(storage.filesystem.get_file_info(pyarrow.fs.FileSelector(path)))


def _trial_name(family: str, trial) -> str:
    """`cyclegan_3f2a1b7c` instead of Ray's default directory name with every searched value."""
    return f"{family}_{trial.trial_id}"


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


def _grow_search(storage: Storage, exp_path: str, num_samples: int, progress=print) -> None:
    """Raise the trial count in Ray's saved search state (`search_gen_state-*.json`, Ray 2.60's
    SearchGenerator: counter, total_samples, finished), so that a finished search proposes more
    trials in the same Optuna study."""
    import pyarrow.fs
    import ray.cloudpickle as cloudpickle

    fs = storage.filesystem or pyarrow.fs.LocalFileSystem()
    found = fs.get_file_info(pyarrow.fs.FileSelector(exp_path))
    states = sorted(i.path for i in found if Path(i.path).name.startswith("search_gen_state-"))
    if not states:
        raise ConfigError(f"{exp_path} holds no saved search state to extend (search_gen_state-*.json)")
    with fs.open_input_stream(states[-1]) as f:
        state = cloudpickle.loads(f.readall())
    progress(f"extending the search from {state['total_samples']} to {num_samples} trials")
    state["total_samples"], state["finished"] = num_samples, False
    with fs.open_output_stream(states[-1]) as f:
        f.write(cloudpickle.dumps(state))


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
            self.progress(f"time budget: {remaining / 60:.1f} of {self.budget / 60:.1f} minutes left")
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


def _diff_keys(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = set(a) | set(b)
        return [k for key in keys for k in _diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".")]
