"""One Ray Tune run in an experiment: what the search (core.search.run_search) and each
confirmation (core.confirm.run_confirm) do around `Tuner.fit`, written once.

    with tune_driver(cfg, storage, exp_path, local_dir, what="Experiment x", resume=..., address=...) as run:
        trainable = run.trainable(tune_trainable, experiment=...)        # the trial loop, bound and sized
        tuner = tune.Tuner(trainable, run_config=run.run_config(name, mode=...), ...)   # or Tuner.restore
        grid = tuner.fit()

In order, a run:
1. checks the installed Ray (core.internals) and that the storage can be written, so that a bad
   --storage fails at once;
2. takes the driver lock on `local_dir` (`driver_lock`), before anything else: a second driver on
   the same experiment is refused at once, not after Ray started and the data was prepared;
3. joins (or starts) Ray, checks that a trial fits on a node, and prepares the data and the
   reference statistics (`prepare_experiment`, cached: quick after the first run);
4. on a resume, repairs what an interrupted driver left: damaged checkpoints removed, Ray's records
   of deleted checkpoints repaired, reports it had not saved restored from the checkpoints;
5. yields, and the caller builds its Tuner and fits it;
   the console meanwhile is this module's (`TrialEvents`): one line per event of a trial, a live
   status line on a terminal, and none of Ray's or Optuna's own output unless `verbose`;
6. always: damaged checkpoints and staging leftovers removed, and Ray shut down (or left, when the
   run joined a cluster) before the interpreter exits. A directory the run created and left
   empty (a failed preparation) is removed: a refused run leaves nothing behind.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import ray.cloudpickle as cloudpickle
from ray.tune import Callback
from ray.tune.logger import LoggerCallback
from ray.tune.result import EXPR_PARAM_FILE, EXPR_PARAM_PICKLE_FILE, EXPR_PROGRESS_FILE, EXPR_RESULT_FILE
from ray.tune.utils import flatten_dict
from ray.tune.utils.util import SafeFallbackEncoder

from core.checkpoints import backfill_reports, checkpoint_problem, remove_staging_leftovers
from core.cluster import Storage, check_resources, connect
from core.config import ConfigError, ExperimentConfig
from core.data import prepare_data
from core.internals import (absorb_driver_staging, check_versions, rebase_moved_experiment, remove_old_snapshots,
                            remove_unrecorded_trial_dirs, renew_callbacks, repair_checkpoint_records,
                            repair_race_ledger)
from core.metric_registry import direction
from core.metrics import reference_statistics
from core.results import quiet_unreported_trials
from core.plan import check_family_builds
from core.results import trial_status
from core.tracking import release_wandb_in_driver

DRIVER_LOCK = ".driver.lock"

logger = logging.getLogger(__name__)


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
    """What `tune_driver` yields: the prepared experiment, and the pieces every run builds alike.
    `verbose`: Ray's and Optuna's own console output too (tune.py and confirm.py --verbose)."""

    cfg: ExperimentConfig
    storage: Storage
    ready: PreparedExperiment
    verbose: bool = False

    def trainable(self, function, **bound):
        """`function` (a Ray Tune function trainable) with the prepared data, the reference
        statistics and `bound` attached, asking for the search's CPUs and GPUs per trial."""
        from ray import tune

        trainable = tune.with_parameters(function, prepared_root=self.ready.prepared_root,
                                         reference_path=self.ready.reference_path, **bound)
        return tune.with_resources(trainable, {"cpu": self.cfg.search.cpus_per_trial,
                                               "gpu": self.cfg.search.gpus_per_trial})

    def run_config(self, name: str, mode: str, stop=None):
        """Ray Tune's RunConfig of a run named `name` under the storage: our result files and console,
        the kept checkpoints ranked by the search metric (`mode`: "min"/"max"), retries."""
        from ray import tune

        cfg = self.cfg
        return tune.RunConfig(
            name=name, storage_path=self.storage.path, storage_filesystem=self.storage.filesystem,
            callbacks=self.callbacks(),
            verbose=self.ray_verbosity, stop=stop,
            # Trials write TensorBoard events in their working directory; Ray copies them to storage.
            # Their own output too (<trial>/stdout, <trial>/stderr: each epoch's line, warnings), which
            # the console shows only with --verbose.
            sync_config=tune.SyncConfig(sync_artifacts=True), log_to_file=True,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=cfg.search.keep_checkpoints,
                                                    checkpoint_score_attribute=cfg.search.metric,
                                                    checkpoint_score_order=mode),
            # A crashed trial (its process or node lost) restarts from its last checkpoint. A diverged
            # or collapsed trial is no failure: it returns normally and is not retried.
            failure_config=tune.FailureConfig(max_failures=cfg.search.max_failures),
        )

    @property
    def ray_verbosity(self) -> int:
        """Ray Tune's `verbose`: 1 (its status table every 30 s, a box per trial start and end) with
        --verbose; else 0, and the console is `TrialEvents`'."""
        return 1 if self.verbose else 0

    def callbacks(self) -> list:
        """This driver's Ray Tune callbacks: each trial's result files, and the console."""
        return [TrialResultFiles(), self.console()]

    def console(self) -> "TrialEvents":
        """This driver's console callback. The live line only on a terminal: redrawn with a carriage
        return, it would fill a log file with every redraw."""
        return TrialEvents(self.cfg.search.metric, self.cfg.train.epochs,
                           live=not self.verbose and sys.stdout.isatty())

    def restored(self, tuner):
        """A `Tuner.restore`d tuner, printing as this driver was asked to (--verbose or not), not as
        the run it continues was: Ray keeps that run's callbacks in its RunConfig (a run saved by an
        earlier paintsweep has others: they are replaced too)."""
        renew_callbacks(tuner, self.ray_verbosity, self.callbacks())
        return tuner

    def trial_names(self) -> dict:
        """Tuner settings naming each trial `<family>_<trial id>` (its directory too), instead of
        Ray's default name with every searched value."""
        name = partial(trial_name, self.cfg.family)
        return {"trial_name_creator": name, "trial_dirname_creator": name}


@contextmanager
def tune_driver(cfg: ExperimentConfig, storage: Storage, exp_path: str, local_dir: Path, *, what: str,
                resume: bool, address: str | None, progress=print, verbose: bool = False):
    """Steps 1-4 and 6 of the module docstring around the caller's Tuner (step 5). `exp_path`: the
    Ray experiment on the storage; `local_dir`: where this driver's own files and lock live (the
    experiment directory, or its local mirror for a remote storage); `what` names the run in the
    refusal of a second driver; `verbose`: Ray's and Optuna's own console output too."""
    import ray

    check_versions()
    storage.check_writable()
    created = not local_dir.exists()
    held = ExitStack()
    unrecorded: list[str] = []   # trial directories a resume removed (remove_unrecorded_trial_dirs)
    locked = False   # the staging clean-up below is only this driver's to do once it holds the lock
    try:
        if not verbose:
            held.enter_context(quiet_console())
        local_dir.mkdir(parents=True, exist_ok=True)
        held.enter_context(driver_lock(local_dir, what))   # before Ray starts: a second driver is refused at once
        locked = True
        connect(address, log_to_driver=verbose)
        check_resources(cfg)
        ready = prepare_experiment(cfg, progress=progress)
        # Ray's own TensorBoard logger would duplicate our scalars under ray/tune/*: keep only JSON/CSV
        # (which ResultGrid and the analysis helpers read); the trials write TensorBoard themselves.
        os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")   # (quiet_console's "0" stands while it is held)
        release_wandb_in_driver()   # nothing of W&B's left in TMPDIR if this driver is killed
        quiet_unreported_trials()
        if resume:
            unrecorded += repair_interrupted_experiment(storage, exp_path, cfg.family, progress)
        try:
            yield TuneRun(cfg, storage, ready, verbose)
            if resume:   # again: a trial of the interrupted driver still stopping (on a cluster) may have written since
                unrecorded += remove_unrecorded_trial_dirs(exp_path, cfg.family, storage.filesystem, progress)
            remove_old_snapshots(exp_path, storage.filesystem)   # a resume restores from the newest only
        finally:
            remove_damaged_checkpoints(storage, exp_path, progress)
    finally:
        ray.shutdown()   # stop the trial workers (or leave the cluster) before the interpreter exits
        # After the shutdown: a trial process that Ray stopped while it was inside a report (its
        # thread blocked there, then ended without running its own clean-up) may still be exiting
        # until then, and so may those of a driver killed before this one.
        if locked:
            # (the trials whose directories a resume removed have staging leftovers of their own)
            removed_ids = [name[len(cfg.family) + 1:] for name in unrecorded]
            remove_staging_leftovers(trial_ids(storage, exp_path, cfg.family) + removed_ids)
        held.close()
        if created and local_dir.is_dir() and {p.name for p in local_dir.iterdir()} <= {DRIVER_LOCK}:
            shutil.rmtree(local_dir, ignore_errors=True)   # refused before anything was written


@contextmanager
def quiet_console():
    """While held: none of Ray Tune's or Optuna's own console output, so that `TrialEvents` is the
    run's console. Ray's output engine prints its configuration box and a table per failed trial
    whatever the verbosity; its legacy engine (RAY_AIR_NEW_OUTPUT=0) at verbosity 0 prints
    nothing. A failed trial's traceback (TUNE_PRINT_ALL_TRIAL_ERRORS) stays in its error file, which
    TrialEvents names with the failure's one line. Optuna's "A new study created" goes too. All is
    put back after: a process may run drivers one after another (the tests do), some --verbose."""
    import optuna

    names = ("RAY_AIR_NEW_OUTPUT", "TUNE_PRINT_ALL_TRIAL_ERRORS")
    before = {name: os.environ.get(name) for name in names}
    optuna_before = optuna.logging.get_verbosity()
    os.environ.update({"RAY_AIR_NEW_OUTPUT": "0", "TUNE_PRINT_ALL_TRIAL_ERRORS": "0"})
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(optuna_before)
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


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


class TrialResultFiles(LoggerCallback):
    """A Ray Tune callback (Ray's own loggers are off, TUNE_DISABLE_AUTO_CALLBACK_LOGGERS): each
    trial's records, written as Ray's JSON and CSV loggers write them, since ResultGrid, Ray's
    ExperimentAnalysis, the leaderboard and the resume repairs read them: result.json (one JSON line
    per report), progress.csv (the same, flattened), params.json and params.pkl (the trial's values).

    The one difference is when a trial restarts from a checkpoint (PBT's exploit, a retry after a
    crash, a resume). Ray's loggers then copy the files back from storage, and within one run
    storage's copy can be older than the local one (the driver syncs every so often): a trial that
    PBT paused and restarted lost the reports made since the last sync. Here this run's local files
    are kept; only a trial with none (a resumed run: `absorb_driver_staging` took in and removed the
    interrupted driver's) starts from storage's copy."""

    FILES = (EXPR_RESULT_FILE, EXPR_PROGRESS_FILE)

    def __init__(self):
        self.open_files: dict = {}   # trial -> {file name: open file}, while the trial runs in this driver
        self.csv_writers: dict = {}  # trial -> csv.DictWriter of its progress.csv, from its first report here

    def log_trial_start(self, trial) -> None:
        self.log_trial_end(trial)
        trial.init_local_path()
        self.update_config(trial, trial.config)
        files = {}
        for name in self.FILES:
            local = Path(trial.local_path, name)
            if trial.checkpoint and not (local.is_file() and local.stat().st_size > 0):
                self._copy_from_storage(trial, name)
            files[name] = local.open("a")
        self.open_files[trial] = files

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        if trial not in self.open_files:
            self.log_trial_start(trial)
        files = self.open_files[trial]
        files[EXPR_RESULT_FILE].write(json.dumps(result, cls=SafeFallbackEncoder) + "\n")
        row = flatten_dict({k: v for k, v in result.items() if k != "config"}, delimiter="/")
        progress = files[EXPR_PROGRESS_FILE]
        if trial not in self.csv_writers:
            # The columns of the first report in this run (Ray's rule); a continued file has its header.
            self.csv_writers[trial] = csv.DictWriter(progress, list(row), extrasaction="ignore")
            if progress.tell() == 0:
                self.csv_writers[trial].writeheader()
        self.csv_writers[trial].writerow(row)
        for file in files.values():
            file.flush()

    def log_trial_end(self, trial, failed: bool = False) -> None:
        for file in self.open_files.pop(trial, {}).values():
            file.close()
        self.csv_writers.pop(trial, None)

    def update_config(self, trial, config: dict) -> None:
        with Path(trial.local_path, EXPR_PARAM_FILE).open("w") as f:
            json.dump(config, f, indent=2, sort_keys=True, cls=SafeFallbackEncoder)
        with Path(trial.local_path, EXPR_PARAM_PICKLE_FILE).open("wb") as f:
            cloudpickle.dump(config, f)

    @staticmethod
    def _copy_from_storage(trial, name: str) -> None:
        import pyarrow.fs

        source = f"{trial.storage.trial_fs_path}/{name}"
        try:
            pyarrow.fs.copy_files(source, Path(trial.local_path, name).as_posix(),
                                  source_filesystem=trial.storage.storage_filesystem)
        except FileNotFoundError:
            pass   # it restarts before its first report reached storage
        except OSError as e:   # storage unreachable or broken: the search goes on (as with Ray's loggers)
            logger.warning("Trial %s: its earlier %s could not be read from storage (%s); the file here starts "
                           "again from this run's reports", trial, source, e)


class TrialEvents(Callback):
    """A Ray Tune callback: the run's console. One line per event of a trial: it ended (its status,
    best score and epochs), it failed (the error's one line and its error file; retried or not), a
    PBT exploit (whose weights it continues). With `live` (a terminal, without --verbose), a status
    line redrawn in place between them: the time, trials done, each running trial's epoch, the best
    score so far. Nothing per epoch otherwise: a log file gets the events only."""

    LIVE_EVERY_S = 1.0   # the live line's clock moves between reports

    def __init__(self, metric: str, epochs: int, live: bool = False):
        self.metric, self.epochs, self.live = metric, epochs, live
        self.total = None
        self.started = time.monotonic()
        self.drawn_at = -math.inf
        self.drawn = self.changed = False

    def setup(self, total_num_samples=None, **info) -> None:
        self.total, self.started = total_num_samples, time.monotonic()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if result.get("exploited_from"):
            self._say(f"Trial {trial} exploit at epoch {result.get('exploited_at_epoch')}: continues "
                      f"{result['exploited_from']}'s weights, with {result.get('exploit_changes') or 'the same values'}")
        self.changed = True   # drawn at the step's end: Ray updates the trial's last result after this call

    def on_step_end(self, iteration, trials, **info) -> None:
        if self.live and (self.changed or time.monotonic() - self.drawn_at >= self.LIVE_EVERY_S):
            self._draw(self.status_line(trials))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._say(self.end_line(trial))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._say(self.failure_line(trial, retried=False))

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        self._say(self.failure_line(trial, retried=True))

    def on_experiment_end(self, trials, **info) -> None:
        self._clear()

    # The lines.

    def end_line(self, trial) -> str:
        last = trial.last_result or {}
        status = trial_status(last, False, self.epochs)
        best = last.get(f"best_{self.metric}")
        finite = best is not None and math.isfinite(best)
        score = f", best {self.metric} {best:.4g} at epoch {last.get('best_epoch')}" if finite else ""
        return (f"Trial {trial} {status}{score} after {last.get('epoch', 0)}/{self.epochs} epochs"
                + (f" ({last['status_detail']})" if last.get("status_detail") else "") + _which_run(trial))

    def failure_line(self, trial, retried: bool) -> str:
        """The failure's one line and where its whole error is; a retry says where it resumes."""
        last = trial.last_result or {}
        reason, where = "no error recorded", ""
        if trial.error_file and os.path.isfile(trial.error_file):   # the driver's copy, written before this call
            with open(trial.error_file, errors="replace") as f:
                reason = failure_reason(f.read())
            # (Where it stays: the trial's directory in the storage, synced from the driver's copy.)
            where = f" (error file {os.path.join(trial.path, os.path.basename(trial.error_file))})"
        line = f"Trial {trial} failed after {last.get('epoch', 0)}/{self.epochs} epochs: {reason}{where}"
        if retried:
            checkpoint = trial.checkpoint
            start = f"resumed from {Path(checkpoint.path).name}" if checkpoint else "started again from scratch"
            of = f" of {trial.max_failures}" if trial.max_failures >= 0 else ""
            line += f"; retry {trial.num_failures}{of}, {start}"
        return line + _which_run(trial)

    def status_line(self, trials) -> str:
        """'2:13 | 3/12 trials done | wgan_gp_1 epoch 2/6 | 1 pending | best fid 0.35 (wgan_gp_0)'."""
        done = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
        total = self.total if self.total and self.total < sys.maxsize else len(trials)
        parts = [_clock(time.monotonic() - self.started), f"{done}/{total} trials done"]
        parts += [f"{t} epoch {(t.last_result or {}).get('epoch', 0)}/{self.epochs}"
                  for t in trials if t.status == "RUNNING"]
        pending = sum(t.status == "PENDING" for t in trials)   # starting, or waiting for a free slot
        parts += [f"{pending} pending"] if pending else []
        column, sign = f"best_{self.metric}", 1 if direction(self.metric) == "min" else -1
        scored = [(t.last_result[column], str(t)) for t in trials
                  if isinstance((t.last_result or {}).get(column), (int, float)) and math.isfinite(t.last_result[column])]
        if scored:
            value, name = min(scored, key=lambda item: sign * item[0])
            parts.append(f"best {self.metric} {value:.4g} ({name})")
        return " | ".join(parts)

    # The terminal.

    def _say(self, line: str) -> None:
        self._clear()
        print(line, flush=True)
        self.changed = True   # the live line comes back at the step's end

    def _draw(self, text: str) -> None:
        width = shutil.get_terminal_size().columns - 1   # one row: a wrapped line would not redraw in place
        sys.stdout.write("\r\033[K" + text[:width])
        sys.stdout.flush()
        self.drawn, self.changed, self.drawn_at = True, False, time.monotonic()

    def _clear(self) -> None:
        if self.drawn:
            sys.stdout.write("\r\033[K")
            sys.stdout.flush()
            self.drawn = False


TrialEndLine = TrialEvents   # its name until 2026-12: runs started before keep it in Ray's saved state


def failure_reason(text: str) -> str:
    """The one line of a Ray error file (<trial>/error.txt) that says why the latest failure
    happened: a Python exception's own line ("ValueError: ..."), which ends the traceback Ray
    records; or, for a lost worker, Ray's sentence and the cause it gives last."""
    latest = text.rsplit("Failure # ", 1)[-1].splitlines()[1:]   # the latest failure, below its header
    lines = [line.strip() for line in latest if line.strip() and not line.startswith("\t")]
    if not lines:
        return "no error recorded"
    if lines[0].startswith("ray::") or len(lines) == 1:   # ray::ImplicitFunc.train() (pid=...), the traceback
        return lines[-1]
    return f"{lines[0]} {lines[-1]}"


def _which_run(trial) -> str:
    """' (top 1, seed 1000)': a confirmation's candidate and seed, or a racing run's seed (a trial
    that trains the experiment's own seed has none in its configuration)."""
    config = trial.config or {}
    parts = [str(config["candidate"])] if "candidate" in config else []
    parts += [f"seed {config['train.seed']}"] if "train.seed" in config else []
    return f" ({', '.join(parts)})" if parts else ""


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


# --- The experiment's files ------------------------------------------------------------------------


def repair_interrupted_experiment(storage: Storage, exp_path: str, family: str, progress=print) -> list[str]:
    """Before a resume's `Tuner.restore`: make the experiment's records agree with its files. A
    driver killed at the wrong moment leaves reports it had not saved (in its local copy of the
    records, or in the checkpoints' own report.json), then Ray's snapshot behind the checkpoints on
    disk: naming an older or a deleted one, its counter about to write over a kept one; and the
    directories of trials it started but never recorded. Returns the names of those, removed."""
    rebase_moved_experiment(storage, exp_path, progress)
    absorb_driver_staging(exp_path, storage.filesystem, progress)
    removed = remove_damaged_checkpoints(storage, exp_path, progress)
    backfill_reports(exp_path, storage.filesystem, progress)
    repair_checkpoint_records(exp_path, storage.filesystem, progress, removed=removed)
    repair_race_ledger(exp_path, storage.filesystem, progress)
    unrecorded = remove_unrecorded_trial_dirs(exp_path, family, storage.filesystem, progress)
    # Their checkpoint staging at once: with their directories gone nothing names these trials, so
    # if this driver is killed too, no later one would find it (their processes ended with the
    # interrupted driver's Ray). tune_driver removes it again at the end, for a cluster's stragglers.
    remove_staging_leftovers([name[len(family) + 1:] for name in unrecorded])
    return unrecorded


def remove_damaged_checkpoints(storage: Storage, exp_path: str, progress=print) -> list[str]:
    """Delete checkpoint directories that `core.checkpoints.checkpoint_problem` rejects, saying why;
    return their paths (a resume keeps their numbers out of use: `repair_checkpoint_records`).

    Ray registers a checkpoint only after copying it to storage, so it never resumes from a partial
    one; but a driver or worker killed during that copy leaves the partial directory behind, and a
    disk fault can damage a kept one. Nothing can load them; they would only take space and be
    offered by the analysis tools. (Local and shared storage.)"""
    if storage.remote:
        return []
    removed = []
    for checkpoint in sorted(Path(exp_path).glob("*/checkpoint_*")):
        problem = checkpoint_problem(checkpoint)
        if problem is not None:
            progress(f"removing damaged checkpoint {checkpoint}: {problem}")
            shutil.rmtree(checkpoint, ignore_errors=True)
            removed.append(str(checkpoint))
    return removed


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
