"""Every private name of Ray Tune (and of W&B) that paintsweep uses, in one place, checked.

Ray Tune's public API leaves gaps paintsweep has to fill, each with Ray's private names:
- the schedulers: ASHA that never stops the baseline, and PBT that copies the right donor
  checkpoint into the trial's own directory and explores inside the searched ranges
  (`BaselineKeepingASHA`, `BaselineKeepingPBT`: they override Ray's private methods);
- the search in trial order (core/racing.py's rules): the rungs that read the searcher's ledger
  (`NoiseAwareRungs`), and the ledger's repair against Ray's snapshot before a resume
  (`repair_race_ledger`, which also reads Ray's count of proposed trials) and its order for the
  leaderboard (`proposal_order`);
- Ray's snapshot of an interrupted run: the killed driver's local copy of the records taken in
  before a resume (`absorb_driver_staging`), records of deleted checkpoints repaired
  (`repair_checkpoint_records`), the trial count of a finished search raised (`grow_search`,
  `raise_trial_count`), the storage of a moved experiment's new trials (`rebase_moved_experiment`),
  and the console and callbacks of the resumed run its own driver's (`renew_callbacks`);
- Ray's start-up timeout, told from other failures of ray.init by its text (`is_startup_timeout`);
- Ray's notice that a private cluster uses token authentication, hidden
  (`quiet_token_authentication_notice`);
- W&B's import-time temp directories, removed where W&B only removes them at exit
  (`wandb_staging_dirs`: looked up defensively, a W&B without them has nothing to remove).

All of it is written against Ray RAY_VERSION: `check_versions()` runs before every run (the
search's, a confirmation's) and refuses another installed Ray with one message, and
tests/test_internals.py fails when a Ray method overridden or a private attribute read here is
renamed or changes its signature. A Ray upgrade is this module and that test file. The private
names used are 13 (that test lists them, and fails on a new one); the rest of this module reads
Ray's snapshot files through public names (`newest_snapshot_file`, `read_snapshot_json`).
"""

from __future__ import annotations

import importlib
import json
import logging
from dataclasses import asdict
import os
import random
from pathlib import Path

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

from core.checkpoints import CHECKPOINT_FILE, _local_fs, checkpoint_problem, drop_reports_after, load_state, newest_intact
from core.config import ConfigError, apply_dotted, build_config
from core.space import applicable, dimensions, is_baseline

logger = logging.getLogger(__name__)

RAY_VERSION = "2.60"   # the Ray minor version this module is written for (pyproject.toml pins it too)


class UnsupportedVersion(ConfigError):
    """The installed Ray is not the one paintsweep's use of its internals was written for."""


def check_versions(installed: str | None = None) -> None:
    """Refuse a Ray other than RAY_VERSION (major.minor) before anything runs: its private methods
    and files may differ, and an override of a renamed method would silently stop acting.
    `installed`: the version to check, by default the installed package's (read from its metadata)."""
    from importlib.metadata import version

    installed = installed or version("ray")
    if ".".join(installed.split(".")[:2]) != RAY_VERSION:
        raise UnsupportedVersion(
            f"paintsweep needs Ray {RAY_VERSION}.x (it relies on Ray Tune internals, core/internals.py); this "
            f"environment has Ray {installed}. Install the tested versions: pip install -c constraints.txt "
            f"-e . (or make install).")


def quiet_token_authentication_notice() -> None:
    """A private cluster of this process: Ray turns on token authentication for it (kept: it listens
    on the machine's ports) and announces that in a warning above every run's first line, which
    says nothing to act on here. (The logger of a private Ray module.)"""
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)


def is_startup_timeout(error: Exception) -> bool:
    """Whether ray.init failed because its raylet did not register within the fixed 30 s that
    Ray 2.60 gives it (ray._private.node raises a bare Exception, recognised by its text)."""
    return "timed out during startup" in str(error)


def __getattr__(name: str):
    """Searches saved before 2026-12-04 name their searchers and result loggers here in Ray's
    tuner.pkl (the searchers moved to core/searchers.py; the loggers are core.driver.TrialResultFiles,
    which a resume puts in their place): unpickling finds them under the old names."""
    if name in ("ResumableOptunaSearch", "InTrialOrderSearch"):
        import core.searchers

        return getattr(core.searchers, name)
    if name in ("SessionJsonLogger", "SessionCSVLogger"):
        import core.driver

        return core.driver.TrialResultFiles
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- Schedulers -------------------------------------------------------------------------------------


class BaselineKeepingASHA(ASHAScheduler):
    """ASHA that never stops the baseline trial early, so that the best trial is compared with the
    defaults at the same budget. (The baseline's results still count in ASHA's rungs.)"""

    def __init__(self, baseline: dict | None, space: dict, *, max_t: int, **kwargs):
        super().__init__(max_t=max_t, **kwargs)
        self.baseline, self.space, self.max_t = baseline, space, max_t

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == self.STOP and result.get("epoch", 0) < self.max_t and self._is_baseline(trial):
            return self.CONTINUE
        return decision

    def _is_baseline(self, trial) -> bool:
        return self.baseline is not None and is_baseline(trial.config, self.baseline, self.space)


class NoiseAwareRungs(FIFOScheduler):
    """The rungs of a search in trial order (searcher InTrialOrderSearch): at each rung epoch a
    trial that explores goes on unless it is worse than the rung's cut-off among earlier trials by
    more than the seed noise there (core.racing.RaceLedger.rung_decision). It reads the ledger the
    searcher keeps, so both see one record of the search."""

    def __init__(self, ledger):
        super().__init__()
        self.ledger = ledger

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        from core.racing import STOP

        self.ledger.record_result(trial.trial_id, result)
        epoch = result.get("epoch")
        if isinstance(epoch, int) and self.ledger.rung_decision(trial.trial_id, epoch) == STOP:
            return self.STOP
        return self.CONTINUE


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

    def __init__(self, baseline: dict | None, space: dict, max_t: int, experiment: dict, *, time_attr: str, **kwargs):
        super().__init__(time_attr=time_attr, **kwargs)
        self.baseline, self.space, self.max_t, self.experiment = baseline, space, max_t, experiment
        self.time_attr = time_attr

    def _quantiles(self):
        lower, upper = super()._quantiles()
        return [t for t in lower if not self._is_baseline(t)], upper

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if result.get(self.time_attr, 0) >= self.max_t:
            return self.CONTINUE   # its last report: the trial ends here
        return super().on_trial_result(tune_controller, trial, result)

    def _checkpoint_or_exploit(self, trial, tune_controller, upper_quantile, lower_quantile):
        state = self._trial_state[trial]
        state.last_checkpoint = _reported_checkpoint(trial, state.last_result) if trial in upper_quantile else None
        if trial in lower_quantile:
            donor = random.choice(upper_quantile)
            if self._trial_state[donor].last_checkpoint is None:
                return   # the donor has not checkpointed yet: no exploit this round
            self._exploit(tune_controller, trial, donor)

    def _exploit(self, tune_controller, trial, trial_to_clone):
        donor = self._trial_state[trial_to_clone]
        if (donor.last_result or {}).get(self.time_attr, 0) >= self.max_t:
            return
        recorded, recorded_result = donor.last_checkpoint, donor.last_result
        if not _intact(recorded):
            recorded, recorded_result = newest_own_checkpoint(trial_to_clone)
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


def newest_own_checkpoint(trial):
    """(checkpoint, the result it was reported with) of the newest intact checkpoint in Ray's
    record of those the trial reported and keeps in its own directory, or (None, None). Never a
    PBT restore copy: that holds another trial's weights."""
    own = Path(trial.storage.trial_fs_path)
    manager = trial.run_metadata.checkpoint_manager
    kept = [r for r in [*manager.best_checkpoint_results, manager.latest_checkpoint_result]
            if r is not None and Path(r.checkpoint.path).parent == own and _intact(r.checkpoint)]
    newest = max(kept, key=lambda r: r.metrics.get("epoch", 0), default=None)
    return (newest.checkpoint, newest.metrics) if newest else (None, None)


# --- Ray's snapshot of a run -----------------------------------------------------------------------


def grow_search(storage, exp_path: str, num_samples: int, progress=print) -> None:
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


def rebase_moved_experiment(storage, exp_path: str, progress=print) -> None:
    """Before `Tuner.restore` of an experiment folder moved or copied since its last run: Ray
    updates the paths of the trials it restores, but creates new trials from the Experiment saved
    in its search state (`search_gen_state-*.json`, Ray 2.60's SearchGenerator), whose storage is
    still the old folder. Their checkpoints and logs went there. That storage is pointed here."""
    import pyarrow.fs
    import ray.cloudpickle as cloudpickle

    fs = storage.filesystem or pyarrow.fs.LocalFileSystem()
    found = fs.get_file_info(pyarrow.fs.FileSelector(exp_path))
    states = sorted(i.path for i in found if Path(i.path).name.startswith("search_gen_state-"))
    if not states:
        return   # (Ray's random search: its state holds no Experiment)
    with fs.open_input_stream(states[-1]) as f:
        state = cloudpickle.loads(f.readall())
    experiment = state.get("experiment")
    saved = experiment.spec.get("storage") if experiment is not None else None   # what new trials are given
    here = Path(exp_path).parent.as_posix(), Path(exp_path).name
    if saved is None or (saved.storage_fs_path, saved.experiment_dir_name) == here:
        return
    with fs.open_input_stream(f"{exp_path}/tuner.pkl") as f:
        if b"RDBStorage" in f.readall():   # pickled by a paintsweep before ResumableOptunaSearch.__getstate__
            raise ConfigError(f"{exp_path} was moved since it ran ({saved.experiment_fs_path}), and the paintsweep "
                              f"that started it (before 2026-12-04) saved that folder's study file in Ray's state. "
                              f"Move it back there to resume it, or start a new search.")
    progress(f"resume: the experiment was at {saved.experiment_fs_path}; its new trials are written here")
    saved.storage_fs_path, saved.experiment_dir_name = here
    saved.storage_filesystem = fs
    with fs.open_output_stream(states[-1]) as f:
        f.write(cloudpickle.dumps(state))


def attach_study(tuner, storage) -> None:
    """After Tuner.restore: the Optuna searcher (unpickled without its study storage,
    ResumableOptunaSearch) continues on `storage`, the study of the experiment where it is now."""
    from core.searchers import ResumableOptunaSearch

    searcher = tuner._local_tuner._tune_config.search_alg
    while searcher is not None and not isinstance(searcher, ResumableOptunaSearch):
        searcher = getattr(searcher, "optuna", None) or getattr(searcher, "searcher", None)
    if searcher is not None:
        searcher.attach_study(storage)


def raise_trial_count(tuner, num_samples: int) -> None:
    """Tuner.restore keeps the first run's TuneConfig; the trial count is the one setting a resume
    may raise (Ray 2.60 reads it from here when the run continues)."""
    from core.searchers import InTrialOrderSearch

    tune_config = tuner._local_tuner._tune_config
    tune_config.num_samples = num_samples
    if isinstance(tune_config.search_alg, InTrialOrderSearch):   # it tells Optuna the last trials' ends
        tune_config.search_alg.total = num_samples


def renew_callbacks(tuner, verbose: int, callbacks: list) -> None:
    """Tuner.restore keeps the first run's RunConfig, its console with it: Ray's `verbose` and the
    driver's callbacks (core.driver's TrialEvents, pickled with the live line on or off, and
    TrialResultFiles). A resume prints as its own driver was asked to: `verbose` and every callback
    of the types in `callbacks` are replaced by these (Ray 2.60 reads them from here when the run
    continues). Other callbacks stay."""
    run_config = tuner._local_tuner.get_run_config()
    run_config.verbose = verbose
    replaced = tuple(type(c) for c in callbacks)
    run_config.callbacks = [c for c in run_config.callbacks or [] if not isinstance(c, replaced)] + list(callbacks)


def repair_checkpoint_records(experiment_path: str, fs=None, progress=print, removed=()) -> list[str]:
    """Before `Tuner.restore` (and after core.checkpoints.backfill_reports): make Ray's newest
    experiment snapshot agree with the checkpoints on disk. A driver killed between a trial's
    checkpoint and Ray's next snapshot leaves a record that names an older checkpoint (or one
    keep-top-k deleted since), and a checkpoint counter behind the files. Per trial:

    - the latest-checkpoint record points at its newest intact checkpoint, the one the trial loop
      resumes from (core.trainable), with the result that checkpoint was reported with (its row in
      result.json, or its own report.json): Ray then restores the right last result;
    - kept-checkpoint records whose directory is gone are dropped (Ray would delete them again);
    - a trial that will resume has the reports of epochs after that checkpoint dropped from its
      result.json and progress.csv: it trains them again, and each epoch stands once in its records;
    - the checkpoint counter moves past the highest checkpoint number on disk or in `removed` (the
      damaged ones just deleted), so the next save gets a new directory instead of writing over a
      kept checkpoint (which then held another epoch than its records said), and no new checkpoint
      takes the name the resume's own lines gave a damaged one.
    A trial with no intact checkpoint left restarts from scratch. Returns one line per trial whose
    record changed (a counter moved on its own is not reported).

    This edits Ray Tune 2.60's own snapshot format (`experiment_state-*.json`: per trial its JSON
    state, whose `storage` StorageContext holds the counter, and its run metadata, whose
    `checkpoint_manager` holds the records), the only place Ray reads them from on a restore; the
    file is replaced atomically."""
    from ray.train import Checkpoint
    from ray.train._internal.session import _TrainingResult
    from ray.tune.trainable.metadata import _TrainingRunMetadata
    from ray.tune.utils.serialization import TuneFunctionEncoder

    from core.checkpoints import CHECKPOINT_PREFIX, trial_checkpoints

    fs = fs or _local_fs()
    snapshot = newest_snapshot_file(experiment_path, fs)
    if snapshot is None:
        return []
    with fs.open_input_stream(snapshot) as f:
        state = read_snapshot_json(f.readall())

    repaired, changed = [], False
    for i, (trial_json, metadata_json) in enumerate(state["trial_data"]):
        trial_state = read_snapshot_json(trial_json)
        storage = trial_state["storage"]
        trial_dir = f"{experiment_path}/{storage.trial_dir_name}"   # (the storage may have moved)
        used = trial_checkpoints(trial_dir, fs) + [p for p in removed if Path(p).parent.name == storage.trial_dir_name]
        highest = max((int(Path(p).name[len(CHECKPOINT_PREFIX):]) for p in used), default=-1)
        if highest > storage.current_checkpoint_index:
            storage.current_checkpoint_index = highest
            state["trial_data"][i][0] = json.dumps(trial_state, indent=2, cls=TuneFunctionEncoder)
            changed = True

        metadata = _TrainingRunMetadata.from_json_state(metadata_json)
        manager = metadata.checkpoint_manager
        if manager is None:
            continue
        latest = manager.latest_checkpoint_result
        recorded = f"{trial_dir}/{Path(latest.checkpoint.path).name}" if latest is not None else None
        newest = newest_intact(trial_dir, fs)
        if newest is None and recorded is None:
            continue   # never checkpointed: it starts over either way
        if newest is not None and trial_state.get("status") != "TERMINATED":
            # It resumes from `newest`: the epochs after it are trained and reported again.
            drop_reports_after(trial_dir, _reported_metrics(newest, fs).get("epoch") or load_state(newest, fs)["epoch"], fs)
        if recorded is not None and Path(recorded).name == Path(newest or "").name:
            continue   # the record names the checkpoint the trial resumes from
        problem = checkpoint_problem(recorded, fs) if recorded is not None else None
        # The records are made anew, in a fresh manager of Ray's with the same keep-top-k policy: the
        # trial's own kept checkpoints still intact (not a PBT donor's copy, which Ray records as the
        # latest after an exploit), then, as the latest, the one the trial resumes from, each
        # registered with the result it was reported with (Ray applies its policy as it did then).
        # Records of checkpoints that are gone would be "deleted" again and listed as kept.
        fresh = type(manager)(manager.checkpoint_config)
        still_there = {Path(r.checkpoint.path).name: r for r in [*manager.best_checkpoint_results, latest]
                       if r is not None and Path(r.checkpoint.path).parent.name == storage.trial_dir_name
                       and checkpoint_problem(f"{trial_dir}/{Path(r.checkpoint.path).name}", fs) is None}
        still_there.pop(Path(newest).name if newest else None, None)
        for kept_name, kept in sorted(still_there.items()):   # (by name: in the order they were reported)
            fresh.register_checkpoint(_TrainingResult(checkpoint=Checkpoint(f"{trial_dir}/{kept_name}", filesystem=fs),
                                                      metrics=kept.metrics))
        name = Path(trial_dir).name
        if newest is None:
            # (none of the kept is intact either: fresh holds no checkpoint, and the trial starts over)
            repaired.append(f"{name}: {Path(recorded).name} ({problem.replace(CHECKPOINT_FILE, 'its ' + CHECKPOINT_FILE)}) "
                            f"and no intact checkpoint is left; the trial starts over")
        else:
            # Ray's row (with its own fields, training_iteration among them) where the driver saved
            # it, else what the trial reported with the checkpoint.
            metrics = _result_row(trial_dir, Path(newest).name, fs) or _reported_metrics(newest, fs)
            fresh.register_checkpoint(_TrainingResult(checkpoint=Checkpoint(newest, filesystem=fs), metrics=metrics))
            if problem is None:
                what = f"recorded {Path(recorded).name}" if recorded else "no checkpoint recorded"
                repaired.append(f"{name}: {what}, but {Path(newest).name} was saved after Ray's last snapshot; "
                                f"resuming from it")
            else:
                what = "is gone" if "missing" in problem else problem.replace(CHECKPOINT_FILE, "its " + CHECKPOINT_FILE)
                repaired.append(f"{name}: recorded {Path(recorded).name} {what}; "
                                f"resuming from {Path(newest).name}, its newest intact checkpoint")
        metadata.checkpoint_manager = fresh
        metadata.invalidate_cache()
        state["trial_data"][i][1] = metadata.get_json_state()
        changed = True

    if changed:
        partial = f"{snapshot}.partial"
        with fs.open_output_stream(partial) as f:
            f.write(json.dumps(state, cls=TuneFunctionEncoder).encode())
        fs.move(partial, snapshot)
        for line in repaired:
            progress(f"resume: {line}")
    return repaired


def repair_race_ledger(experiment_path: str, fs=None, progress=print) -> list[str]:
    """Before `Tuner.restore` of a search in trial order (InTrialOrderSearch): make its ledger agree
    with Ray's list of trials. Ray writes its snapshot as several files (the trial list, the search
    generator's count, our searcher's state) and a driver killed while they are written leaves them
    from different moments. Measured: a ledger of 4 trials beside a count of 2 made the resumed
    search propose 12 trials instead of 10. So the ledger is rebuilt in Ray's trial order: a trial
    Ray knows and the ledger missed is added (its configuration, seed, and the scores in its
    result.json; racing if its configuration came earlier), one the ledger holds and Ray lost is
    dropped (it never started), a finished trial's scores are those of its result.json (it may have
    ended after the ledger was saved), and the generator's count is set to the trials Ray has. Returns one
    line per change (none when the files agree)."""
    import pickle

    import pyarrow.fs
    import ray.cloudpickle as cloudpickle

    from core.racing import TrialRecord, configuration_key

    fs = fs or _local_fs()
    snapshot = newest_snapshot_file(experiment_path, fs)
    found = fs.get_file_info(pyarrow.fs.FileSelector(experiment_path))
    newest = {prefix: max((i.path for i in found if Path(i.path).name.startswith(prefix)), default=None)
              for prefix in ("searcher-state-", "search_gen_state-")}
    if snapshot is None or newest["searcher-state-"] is None:
        return []
    with fs.open_input_stream(newest["searcher-state-"]) as f:
        saved = pickle.loads(f.readall())
    if not isinstance(saved, dict) or "metric" not in saved:
        return []   # not a search in trial order
    with fs.open_input_stream(snapshot) as f:
        state = read_snapshot_json(f.readall())
    trials = [read_snapshot_json(trial_json) for trial_json, _ in state["trial_data"]]
    known = {trial["trial_id"]: trial for trial in trials}
    ledger = {t["trial_id"]: t for t in saved["ledger"]["trials"]}
    # The ledger's order is the proposal order (Ray's list is in another): kept, with any trial it
    # missed after it.
    order = [t["trial_id"] for t in saved["ledger"]["trials"] if t["trial_id"] in known]
    order += [t["trial_id"] for t in trials if t["trial_id"] not in ledger]
    base_seed = saved["base_seed"]
    rebuilt, seen, changes = [], set(), []
    for trial in (known[t] for t in order):
        record = ledger.get(trial["trial_id"])
        trial_dir = f"{experiment_path}/{trial['storage'].trial_dir_name}"
        rows = _result_rows(trial_dir, fs)
        scores = {r["epoch"]: r[saved["metric"]] for r in rows
                  if isinstance(r.get("epoch"), int) and isinstance(r.get(saved["metric"]), (int, float))}
        if record is None:
            config = dict(trial["config"])
            key = configuration_key(config)
            record = asdict(TrialRecord(trial["trial_id"], key, config, config.get("train.seed", base_seed),
                                        races=key in seen, scores=scores, last_result=rows[-1] if rows else None))
            changes.append(f"{Path(trial_dir).name} was missing from the search's ledger; added")
        record["done"] = trial["status"] in ("TERMINATED", "ERROR")
        record["errored"] = trial["status"] == "ERROR"
        if record["done"] and rows and {int(e): v for e, v in record["scores"].items()} != scores:
            # A trial that ended after the searcher's state was saved: the ledger holds its reports
            # up to then. What it reported is in its result file (Ray saves a trial's end after it).
            record["scores"], record["last_result"] = scores, rows[-1]
            changes.append(f"{Path(trial_dir).name}'s scores in the search's ledger were behind its "
                           f"result file; updated")
        seen.add(record["key"])
        rebuilt.append(record)
    dropped = [t for t in ledger if t not in known]
    changes += [f"trial {t} was proposed but never recorded by Ray; dropped from the search's ledger" for t in dropped]
    if changes:
        saved["ledger"]["trials"] = rebuilt
        with fs.open_output_stream(newest["searcher-state-"] + ".partial") as f:
            f.write(pickle.dumps(saved))
        fs.move(newest["searcher-state-"] + ".partial", newest["searcher-state-"])
    if newest["search_gen_state-"] is not None:
        with fs.open_input_stream(newest["search_gen_state-"]) as f:
            generator = cloudpickle.loads(f.readall())
        if generator["counter"] != len(trials):
            changes.append(f"Ray's count of proposed trials was {generator['counter']}, its trial list holds "
                           f"{len(trials)}; set to {len(trials)}")
            generator["counter"] = len(trials)
            with fs.open_output_stream(newest["search_gen_state-"]) as f:
                f.write(cloudpickle.dumps(generator))
    for line in changes:
        progress(f"resume: {line}")
    return changes


def newest_snapshot_file(experiment_path: str, fs=None) -> str | None:
    """The path of Ray's newest experiment snapshot, `experiment_state-<its driver's start>.json`
    (the newest by name, as Ray's restore picks it), or None."""
    import pyarrow.fs

    fs = fs or _local_fs()
    found = fs.get_file_info(pyarrow.fs.FileSelector(experiment_path, allow_not_found=True))
    return max((i.path for i in found if Path(i.path).name.startswith(SNAPSHOT_PREFIXES[0]) and i.path.endswith(".json")),
               default=None)


def read_snapshot_json(text: str | bytes):
    """A JSON document of Ray's snapshot (written by Ray's TuneFunctionEncoder, which cloudpickles
    what JSON cannot hold, a trial's StorageContext among them). Only for the experiment's own files,
    written by its drivers: the cloudpickled parts run code when loaded."""
    from ray.tune.utils.serialization import TuneFunctionDecoder

    return json.loads(text, cls=TuneFunctionDecoder, allow_cloudpickle=True)


def _newest_snapshot(experiment_path: str, fs) -> dict | None:
    """Ray's newest experiment snapshot (its trial list), or None."""
    snapshot = newest_snapshot_file(experiment_path, fs)
    if snapshot is None:
        return None
    with fs.open_input_stream(snapshot) as f:
        return read_snapshot_json(f.readall())


def absorb_driver_staging(experiment_path: str, fs=None, progress=print) -> list[str]:
    """Before `Tuner.restore` (and before core.checkpoints.backfill_reports): take in, then remove,
    the interrupted driver's local copy of the experiment. Ray's driver writes each trial's
    result.json and progress.csv in a staging directory and copies that whole directory over the
    experiment every so often. A resume reuses the staging directory of the run it restores
    (`<Ray session>/artifacts/<the run's timestamp>/<experiment>/driver_artifacts`), so a resume
    on the same Ray cluster (`--address`) finds the killed driver's copy there, and its first copy
    over the experiment replaced the files the repairs had just completed (seen: a trial whose
    checkpoints held 3 epochs recorded 2, and its best epoch was lost). Per file, the staging copy
    is taken where it extends the experiment's (the rows the driver wrote after its last copy);
    then the staging directory goes, and Ray's loggers restore from the experiment as in a new
    Ray session. Returns the trial files taken in."""
    import shutil

    import pyarrow.fs
    fs = fs or _local_fs()
    state = _newest_snapshot(experiment_path, fs)
    if state is None or not state["trial_data"]:
        return []
    storage = read_snapshot_json(state["trial_data"][0][0])["storage"]   # (its timestamp is the run's)
    storage.experiment_dir_name = Path(experiment_path).name                 # (the experiment may have moved)
    staging = Path(storage.experiment_driver_staging_path)                   # (in this driver's Ray session)
    if not staging.is_dir():
        return []
    taken = []
    for local in sorted(staging.glob("*/*")):   # <trial>/<file>
        target = f"{experiment_path}/{local.parent.name}/{local.name}"
        if not local.is_file() or fs.get_file_info(str(Path(target).parent)).type != pyarrow.fs.FileType.Directory:
            continue   # not a trial of the experiment (any more: a resume removes unrecorded ones)
        newer = local.read_bytes()
        try:
            with fs.open_input_stream(target) as f:
                saved = f.readall()
        except (FileNotFoundError, OSError):
            saved = b""
        if len(newer) > len(saved) and newer.startswith(saved):
            with fs.open_output_stream(f"{target}.partial") as f:
                f.write(newer)
            fs.move(f"{target}.partial", target)
            taken.append(f"{local.parent.name}/{local.name}")
    shutil.rmtree(staging, ignore_errors=True)
    if taken:
        progress(f"resume: took {len(taken)} record file(s) the interrupted driver had not yet saved "
                 f"to the experiment ({', '.join(taken)})")
    return taken


def remove_unrecorded_trial_dirs(experiment_path: str, family: str, fs=None, progress=print) -> list[str]:
    """Before `Tuner.restore`: remove the directories of trials that Ray's newest snapshot does not
    hold. A driver killed after a new trial started but before Ray's next snapshot leaves one
    (measured: an empty one, one with its params only, one with an epoch reported and two
    checkpoints). Ray restores only the trials of its snapshot, so nothing resumes these: the
    resumed search proposes its trials anew. Left, they would stand beside the search's trials as
    trials the leaderboard does not know, with checkpoints that count against no `keep_checkpoints`.
    Only directories named as the search names its trials (`<family>_<Ray's trial id>`: 8 hex
    digits, or 5 and a grid index): nothing a user put there. Returns their names."""
    import re

    import pyarrow.fs
    fs = fs or _local_fs()
    state = _newest_snapshot(experiment_path, fs)
    if state is None:
        return []
    recorded = {read_snapshot_json(trial_json)["storage"].trial_dir_name for trial_json, _ in state["trial_data"]}
    removed = []
    for info in fs.get_file_info(pyarrow.fs.FileSelector(experiment_path)):
        name = Path(info.path).name
        trial_like = re.fullmatch(rf"{re.escape(family)}_([0-9a-f]{{8}}|[0-9a-f]{{5}}_\d{{5}})", name)
        if info.type == pyarrow.fs.FileType.Directory and trial_like and name not in recorded:
            fs.delete_dir(info.path)
            removed.append(name)
            progress(f"resume: removed {name}/, a trial the interrupted driver started but never recorded "
                     f"(the resumed search does not continue it)")
    return removed


# Ray's snapshot of an experiment, one file of each per driver session (Ray 2.60's names): the trial
# list, the search generator's count, the searcher's state (a random search's variant generator).
SNAPSHOT_PREFIXES = ("experiment_state-", "search_gen_state-", "searcher-state-", "basic-variant-state-")


def remove_old_snapshots(experiment_path: str, fs=None) -> int:
    """After a run that ended normally: keep only the newest snapshot file of each kind. Ray writes
    one set per driver session and restores only from the newest (its name holds the session's
    start time), so each resume would leave another set behind (60 files after 20 resumes).
    Returns how many were removed."""
    import pyarrow.fs

    fs = fs or _local_fs()
    found = [i.path for i in fs.get_file_info(pyarrow.fs.FileSelector(experiment_path, allow_not_found=True))
             if i.type == pyarrow.fs.FileType.File]
    removed = 0
    for prefix in SNAPSHOT_PREFIXES:
        older = sorted(path for path in found if Path(path).name.startswith(prefix))[:-1]
        for path in older:
            fs.delete_file(path)
        removed += len(older)
    return removed


def proposal_order(experiment_path: str, fs=None) -> list[str]:
    """The trial ids of a search in trial order (InTrialOrderSearch's ledger, in Ray's searcher
    checkpoint), in the order they were proposed; [] for another search."""
    import pickle

    import pyarrow.fs

    fs = fs or _local_fs()
    found = fs.get_file_info(pyarrow.fs.FileSelector(experiment_path, allow_not_found=True))
    newest = max((i.path for i in found if Path(i.path).name.startswith("searcher-state-")), default=None)
    if newest is None:
        return []
    with fs.open_input_stream(newest) as f:
        saved = pickle.loads(f.readall())   # the search's own file, written by its driver
    return [t["trial_id"] for t in saved["ledger"]["trials"]] if isinstance(saved, dict) and "ledger" in saved else []


def _result_rows(trial_dir: str, fs) -> list[dict]:
    try:
        with fs.open_input_stream(f"{trial_dir}/result.json") as f:
            lines = f.readall().decode().splitlines()
    except (FileNotFoundError, OSError):
        return []
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:   # the last line of a driver killed mid-write
            continue
    return rows


def _reported_metrics(checkpoint: str, fs) -> dict:
    """The result a checkpoint was reported with: its own report.json (core.checkpoints writes it
    beside state.pt), which outlives a driver killed before it saved the row."""
    from core.checkpoints import REPORT_FILE

    try:
        with fs.open_input_stream(f"{checkpoint}/{REPORT_FILE}") as f:
            return json.loads(f.readall().decode())
    except (FileNotFoundError, OSError, json.JSONDecodeError):
        return {}


def _result_row(trial_dir: str, checkpoint_name: str, fs) -> dict:
    """The row of the trial's result.json that names `checkpoint_name`, or {}."""
    try:
        with fs.open_input_stream(f"{trial_dir}/result.json") as f:
            lines = f.readall().decode().splitlines()
    except (FileNotFoundError, OSError):
        return {}
    for line in reversed(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:   # the last line of a driver killed mid-write
            continue
        if row.get("checkpoint_dir_name") == checkpoint_name:
            return row
    return {}


# --- W&B -------------------------------------------------------------------------------------------


def wandb_staging_dirs() -> list[str]:
    """The paths of W&B's import-time staging directories. They are private module attributes
    (tempfile.TemporaryDirectory objects removed only by atexit) and no public API or setting
    moves or removes them, so they are looked up defensively: a W&B version without one of them
    just has nothing to remove there, and only a directory whose name says it is W&B's is
    returned. Every user of a directory joins its `.name` when it writes, so the same path
    recreated for the next trial is the directory W&B uses."""
    found = []
    for module, attributes in (("wandb.sdk.data_types._private", ("MEDIA_TMP",)),
                               ("wandb.sdk.artifacts.artifact", ("Artifact", "_TMP_DIR"))):
        try:
            value = importlib.import_module(module)
            for attribute in attributes:
                value = getattr(value, attribute)
        except (ImportError, AttributeError):
            continue
        name = getattr(value, "name", None)
        if isinstance(name, str) and "wandb" in os.path.basename(name):
            found.append(name)
    return found
