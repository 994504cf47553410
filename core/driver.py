"""One Ray Tune run in an experiment: what the search (core.search.run_search) and each
confirmation (core.confirm.run_confirm) do around `Tuner.fit`, written once.

    with tune_driver(cfg, storage, exp_path, local_dir, what="Experiment x", resume=..., address=...) as run:
        trainable = run.trainable(tune_trainable, experiment=...)        # the trial loop, bound and sized
        tuner = tune.Tuner(trainable, run_config=run.run_config(name, mode=...), ...)   # or Tuner.restore
        grid = tuner.fit()

In order, a run:
1. checks the installed Ray (core.internals), that the storage can be written, and joins (or
   starts) Ray, so that a bad --storage or --address fails at once;
2. takes the driver lock on `local_dir` (`driver_lock`), before any preparation: a second driver on
   the same experiment is refused at once, not after the data is prepared;
3. checks that a trial fits on a node, and prepares the data and the reference statistics
   (`prepare_experiment`, cached: quick after the first run);
4. on a resume, repairs what an interrupted driver left: damaged checkpoints removed, Ray's records
   of deleted checkpoints repaired, reports it had not saved restored from the checkpoints;
5. yields, and the caller builds its Tuner and fits it;
6. always: damaged checkpoints and staging leftovers removed, and Ray shut down (or left, when the
   run joined a cluster) before the interpreter exits. A directory the run created and left
   empty (a failed preparation) is removed: a refused run leaves nothing behind.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ray.tune import Callback

from core.checkpoints import backfill_reports, checkpoint_problem, remove_staging_leftovers
from core.cluster import Storage, check_resources, connect
from core.config import ConfigError, ExperimentConfig
from core.data import prepare_data
from core.internals import (SessionCSVLogger, SessionJsonLogger, check_versions, repair_checkpoint_records,
                            repair_race_ledger)
from core.metrics import reference_statistics
from core.plan import check_family_builds
from core.results import trial_status
from core.tracking import release_wandb_in_driver

DRIVER_LOCK = ".driver.lock"


# --- The once-per-experiment work ------------------------------------------------------------------


@dataclass
class PreparedExperiment:
    prepared_root: str     # core.data.PreparedData directory (train/monet, train/photo, test/photo)
    reference_path: str    # core.metrics reference statistics file


def prepare_experiment(cfg: ExperimentConfig, progress=print) -> PreparedExperiment:
    """The driver's once-per-experiment work: data, then reference statistics. The family is built
    once on the CPU first, so a model/data mismatch is one error here instead of one per trial.
    (The reference statistics' cache has no lock, so trials only ever read them.)"""
    prepared = prepare_data(cfg.data, cfg.cache_path, progress=progress)
    check_family_builds(cfg, prepared)
    reference = reference_statistics(prepared, cfg.metrics, cfg.cache_path, progress=progress)
    return PreparedExperiment(str(prepared.root), str(reference))


# --- The run ---------------------------------------------------------------------------------------


@dataclass
class TuneRun:
    """What `tune_driver` yields: the prepared experiment, and the pieces every run builds alike."""

    cfg: ExperimentConfig
    storage: Storage
    ready: PreparedExperiment

    def trainable(self, function, **bound):
        """`function` (a Ray Tune function trainable) with the prepared data, the reference
        statistics and `bound` attached, asking for the search's CPUs and GPUs per trial."""
        from ray import tune

        trainable = tune.with_parameters(function, prepared_root=self.ready.prepared_root,
                                         reference_path=self.ready.reference_path, **bound)
        return tune.with_resources(trainable, {"cpu": self.cfg.search.cpus_per_trial,
                                               "gpu": self.cfg.search.gpus_per_trial})

    def run_config(self, name: str, mode: str, verbose: int = 1, stop=None):
        """Ray Tune's RunConfig of a run named `name` under the storage: our loggers and trial-end
        lines, the kept checkpoints ranked by the search metric (`mode`: "min"/"max"), retries."""
        from ray import tune

        cfg = self.cfg
        return tune.RunConfig(
            name=name, storage_path=self.storage.path, storage_filesystem=self.storage.filesystem,
            callbacks=[SessionJsonLogger(), SessionCSVLogger(), TrialEndLine(cfg.search.metric, cfg.train.epochs)],
            verbose=verbose, stop=stop,
            # Trials write TensorBoard events in their working directory; Ray copies them to storage.
            sync_config=tune.SyncConfig(sync_artifacts=True),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=cfg.search.keep_checkpoints,
                                                    checkpoint_score_attribute=cfg.search.metric,
                                                    checkpoint_score_order=mode),
            # A crashed trial (its process or node lost) restarts from its last checkpoint. A diverged
            # or collapsed trial is no failure: it returns normally and is not retried.
            failure_config=tune.FailureConfig(max_failures=cfg.search.max_failures),
        )

    def trial_names(self) -> dict:
        """Tuner settings naming each trial `<family>_<trial id>` (its directory too), instead of
        Ray's default name with every searched value."""
        name = partial(trial_name, self.cfg.family)
        return {"trial_name_creator": name, "trial_dirname_creator": name}


@contextmanager
def tune_driver(cfg: ExperimentConfig, storage: Storage, exp_path: str, local_dir: Path, *, what: str,
                resume: bool, address: str | None, progress=print):
    """Steps 1-4 and 6 of the module docstring around the caller's Tuner (step 5). `exp_path`: the
    Ray experiment on the storage; `local_dir`: where this driver's own files and lock live (the
    experiment directory, or its local mirror for a remote storage); `what` names the run in the
    refusal of a second driver."""
    import ray

    check_versions()
    storage.check_writable()
    connect(address)
    created = not local_dir.exists()
    held = ExitStack()
    locked = False   # the staging clean-up below is only this driver's to do once it holds the lock
    try:
        local_dir.mkdir(parents=True, exist_ok=True)
        held.enter_context(driver_lock(local_dir, what))
        locked = True
        check_resources(cfg)
        ready = prepare_experiment(cfg, progress=progress)
        # Ray's own TensorBoard logger would duplicate our scalars under ray/tune/*: keep only JSON/CSV
        # (which ResultGrid and the analysis helpers read); the trials write TensorBoard themselves.
        os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")
        release_wandb_in_driver()   # nothing of W&B's left in TMPDIR if this driver is killed
        # A trial that had not reported before an interruption has no result files yet: Ray warns
        # about each on every resume, though nothing is wrong.
        logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
        if resume:
            # A driver killed at the wrong moment leaves reports it had not saved (restored from
            # the checkpoints' own report.json), then Ray's snapshot behind the checkpoints on disk:
            # naming an older or a deleted one, its counter about to write over a kept one.
            remove_damaged_checkpoints(storage, exp_path, progress)
            backfill_reports(exp_path, storage.filesystem, progress)
            repair_checkpoint_records(exp_path, storage.filesystem, progress)
            repair_race_ledger(exp_path, storage.filesystem, progress)
        try:
            yield TuneRun(cfg, storage, ready)
        finally:
            remove_damaged_checkpoints(storage, exp_path, progress)
    finally:
        ray.shutdown()   # stop the trial workers (or leave the cluster) before the interpreter exits
        # After the shutdown: a trial process that Ray stopped while it was inside a report (its
        # thread blocked there, then ended without running its own clean-up) may still be exiting
        # until then, and so may those of a driver killed before this one.
        if locked:
            remove_staging_leftovers(trial_ids(storage, exp_path, cfg.family))
        held.close()
        if created and local_dir.is_dir() and {p.name for p in local_dir.iterdir()} <= {DRIVER_LOCK}:
            shutil.rmtree(local_dir, ignore_errors=True)   # refused before anything was written


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


# --- Ray Tune callbacks ----------------------------------------------------------------------------


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


# --- The experiment's files ------------------------------------------------------------------------


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


def trial_name(family: str, trial) -> str:
    """`cyclegan_3f2a1b7c`: the family and Ray's trial id (which holds an underscore in a grid)."""
    return f"{family}_{trial.trial_id}"


def trial_ids(storage: Storage, exp_path: str, family: str) -> list[str]:
    """The ids of the experiment's trials, from their directory names (`trial_name`)."""
    import pyarrow.fs

    fs = storage.filesystem or pyarrow.fs.LocalFileSystem()
    found = fs.get_file_info(pyarrow.fs.FileSelector(exp_path, allow_not_found=True))
    prefix = f"{family}_"
    return [Path(info.path).name[len(prefix):] for info in found
            if info.type == pyarrow.fs.FileType.Directory and Path(info.path).name.startswith(prefix)]
