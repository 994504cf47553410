"""Ray Tune's searchers for an Optuna search, on Ray's and Optuna's public interfaces.

- `ResumableOptunaSearch`: an Optuna study on disk, driven through Optuna's ask-and-tell interface
  (`study.ask`, `trial.report`, `study.tell`) as a Ray Tune Searcher. Ray's own OptunaSearch is not
  used: its state lives in private attributes a resume has to rewrite, and it fails a resume whose
  study is ahead of Ray's snapshot.
- `InTrialOrderSearch`: around it, every decision taken in trial order, and seeds raced
  (core/racing.py has the rules).

Neither uses a private name of Ray or Optuna: a restored search reopens its Optuna trials by their
storage ids, which the study's storage looks up by trial number.
"""

from __future__ import annotations

import logging
import pickle

import optuna
from ray.tune.search import Searcher

from core.space import is_baseline

logger = logging.getLogger(__name__)


class ResumableOptunaSearch(Searcher):
    """A Ray Tune Searcher over an Optuna study on disk (`storage`, the experiment's optuna.db).

    - The baseline (`points_to_evaluate`) is enqueued when the study is created, so Optuna's first
      trial trains the defaults.
    - `suggest` asks the study for a trial and runs the define-by-run `space` on it.
    - Each report is the trial's intermediate value at Ray's `training_iteration` (one objective;
      Optuna keeps none with several), and the trial's end is told with its last result: COMPLETE
      with the metric(s), FAIL after an error, PRUNED when it ended without them.
    - The study can be ahead of Ray's snapshot: a driver killed after a trial was told finished but
      before Ray saved that resumes and runs the trial's last steps again. The study keeps the
      outcome it has (a rerun reproduces it: training is seeded), and an epoch reported already is
      not reported twice. Ray's OptunaSearch raises UpdateFinishedTrialError there.
    - Pickled (Ray keeps the searcher in tuner.pkl) and saved (Ray's searcher checkpoint) without
      its study: restored from an experiment folder moved or copied since, the old folder's
      optuna.db would be opened, and the resumed trials written there. `attach_study` gives a
      restored searcher this run's storage; `restore` reopens the study on it.
    """

    def __init__(self, space, metric: str | list[str], mode: str | list[str], study_name: str, storage,
                 sampler: optuna.samplers.BaseSampler, points_to_evaluate: list[dict] | None = None):
        super().__init__(metric=metric, mode=mode)
        self.space, self.study_name, self.sampler = space, study_name, sampler
        self.points_to_evaluate = list(points_to_evaluate or [])
        self.storage = storage
        self.trial_ids: dict[str, int] = {}       # Ray's trial id -> its Optuna trial's storage id
        self.told: set[str] = set()               # Ray's trial ids whose end the study was told
        self._trials: dict[str, optuna.Trial] = {}   # (the same trials, opened on this run's study)
        self.study = self._open_study(enqueue=True)

    def _open_study(self, enqueue: bool = False) -> optuna.Study:
        modes = self.mode if isinstance(self.mode, list) else [self.mode]
        directions = ["minimize" if m == "min" else "maximize" for m in modes]
        # Opened here, not by create_study, so that the storage's lookups (_storage_id) are ours to call.
        self.opened_storage = optuna.storages.get_storage(self.storage)
        study = optuna.create_study(storage=self.opened_storage, sampler=self.sampler, pruner=optuna.pruners.NopPruner(),
                                    study_name=self.study_name, load_if_exists=True, directions=directions)
        if enqueue:
            for point in self.points_to_evaluate:
                study.enqueue_trial(point)
        return study

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return False   # the space, metric and mode are given at construction

    def suggest(self, trial_id: str) -> dict:
        if trial_id not in self.trial_ids:
            trial = self.study.ask()
            self.trial_ids[trial_id], self._trials[trial_id] = self._storage_id(trial.number), trial
        return self.space(self._trial(trial_id))   # (asked again, Optuna returns the values it gave)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if isinstance(self.metric, list) or trial_id in self.told:
            return
        trial, step = self._trial(trial_id), result["training_iteration"]
        stored = self._stored(trial)
        if stored is not None and (stored.state.is_finished() or step in stored.intermediate_values):
            return   # a resumed trial's rerun of what the study holds already
        trial.report(result[self.metric], step)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.told:
            return
        trial = self._trial(trial_id)
        stored = self._stored(trial)
        if stored is None or not stored.state.is_finished():
            metrics = self.metric if isinstance(self.metric, list) else [self.metric]
            values = [(result or {}).get(m) for m in metrics]
            if any(v is None for v in values):
                values, state = None, optuna.trial.TrialState.FAIL if error else optuna.trial.TrialState.PRUNED
            else:
                values, state = values if isinstance(self.metric, list) else values[0], optuna.trial.TrialState.COMPLETE
            try:
                self.study.tell(trial.number, values, state=state)
            except (ValueError, RuntimeError) as e:   # Optuna's refusal of a value (a NaN is failed, not raised)
                logger.warning("Optuna refused trial %s's end (%s): %s", trial.number, trial_id, e)
        self.told.add(trial_id)

    def _trial(self, trial_id: str) -> optuna.Trial:
        """The Optuna trial asked for Ray's `trial_id`, on this run's study (opened once per run:
        a restored searcher holds only its storage id)."""
        if trial_id not in self._trials:
            self._trials[trial_id] = optuna.Trial(self.study, self.trial_ids[trial_id])
        return self._trials[trial_id]

    def _storage_id(self, number: int) -> int:
        """The storage id of the study's trial `number`: what optuna.Trial reopens a trial by."""
        study_id = self.opened_storage.get_study_id_from_name(self.study_name)
        return self.opened_storage.get_trial_id_from_study_id_trial_number(study_id, number)

    def _stored(self, trial: optuna.Trial):
        """The study's own record of `trial`, read now (what a restored searcher holds may be stale)."""
        stored = self.study.get_trials(deepcopy=False)
        return stored[trial.number] if trial.number < len(stored) else None

    # --- saved without the study ------------------------------------------------------------------

    def portable_state(self) -> dict:
        """What a restored searcher needs, without the study or its storage: each Ray trial's Optuna
        trial by storage id, and the sampler (with its random state)."""
        return {"metric": self.metric, "mode": self.mode, "space": self.space, "study_name": self.study_name,
                "sampler": self.sampler, "points_to_evaluate": self.points_to_evaluate,
                "trial_ids": dict(self.trial_ids), "told": set(self.told)}

    def restore_state(self, saved: dict) -> None:
        """The searcher `saved` (portable_state's) on this run's study: the storage attach_study gave,
        none for a searcher just unpickled (it waits for attach_study)."""
        if "_ot_trials" in saved:   # saved by a paintsweep before 2026-12-04: Ray's OptunaSearch's attributes
            saved = {"metric": saved["_metric"], "mode": saved["_mode"], "space": saved["_space"],
                     "study_name": saved["_study_name"], "sampler": saved["_sampler"],
                     "points_to_evaluate": saved["_points_to_evaluate"], "trial_ids": saved["_ot_trials"],
                     "told": saved["_completed_trials"]}
        Searcher.__init__(self, metric=saved["metric"], mode=saved["mode"])
        self.space, self.study_name, self.sampler = saved["space"], saved["study_name"], saved["sampler"]
        self.points_to_evaluate = saved["points_to_evaluate"]
        self.trial_ids, self.told, self._trials = dict(saved["trial_ids"]), set(saved["told"]), {}
        storage = getattr(self, "storage", None)
        self.study = self._open_study() if storage is not None else None

    def __getstate__(self) -> dict:
        return self.portable_state()

    def __setstate__(self, state: dict) -> None:
        self.storage = None
        self.restore_state(state)

    def attach_study(self, storage) -> None:
        """After Tuner.restore, before the run continues: the study storage of the experiment as it
        is now."""
        self.storage = storage
        self.restore_state(self.portable_state())

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.portable_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.restore_state(pickle.load(f))


class InTrialOrderSearch(Searcher):
    """A Searcher around the Optuna searcher that takes every decision in trial order and races
    seeds (core.racing has the rules and their reasons; this is how Ray Tune drives them):
    - trial k is proposed only once trials 0..k-lag have finished (`suggest` answers None, Ray's
      "ask again later"), so at most `lag` trials run at once: Ray's own ConcurrencyLimiter is not
      used (`set_max_concurrency`);
    - Optuna is told how trials 0..k-lag ended, in trial order, just before it proposes trial k, so
      what it learns does not depend on which trial finished first; the trials still running when
      the search's last trial has been proposed are told as they finish;
    - a racing run (core.racing.RaceLedger.next_race) is the configuration of an earlier trial with
      another train.seed: Optuna never sees it (its study holds one trial per configuration).
    The ledger is saved with Optuna's state in Ray's searcher checkpoint, so --resume continues it."""

    def __init__(self, optuna: ResumableOptunaSearch, ledger, total: int, baseline: dict | None, space: dict):
        super().__init__(metric=optuna.metric, mode=optuna.mode)
        self.optuna, self.ledger, self.total = optuna, ledger, total
        self.baseline, self.space = baseline, space

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.optuna.set_search_properties(metric, mode, config, **spec)

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        return True   # the trial-order gate bounds it (ledger.lag)

    def suggest(self, trial_id: str):
        from core.racing import configuration_key

        k = len(self.ledger.trials)
        if not self.ledger.ready(k):
            return None
        self._tell(self.ledger.to_tell(k))
        race = self.ledger.next_race(k)
        if race is not None:
            config, seed = race
            config = {**config, "train.seed": seed}
            self.ledger.add(trial_id, config, seed, races=True)
            return config
        config = self.optuna.suggest(trial_id)
        if config is None or config == Searcher.FINISHED:
            return config
        self.ledger.add(trial_id, config, config.get("train.seed", self.ledger.base_seed), races=False)
        if k == 0 and self.baseline is not None and is_baseline(config, self.baseline, self.space):
            self.ledger.baseline_key = configuration_key(config)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.ledger.record_result(trial_id, result)
        record = self.ledger.get(trial_id)
        if record is not None and not record.races:
            self.optuna.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.ledger.record_end(trial_id, result, error)
        if len(self.ledger.trials) >= self.total:   # nothing left to propose: tell the rest as they end
            self._tell([t for t in self.ledger.trials if t.done and not t.told])

    def _tell(self, records) -> None:
        for record in records:
            if not record.races and record.trial_id in self.optuna.trial_ids:
                self.optuna.on_trial_complete(record.trial_id, result=record.last_result, error=record.errored)
            record.told = True   # (one Optuna never proposed: added by repair_race_ledger after a kill)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"optuna": self.optuna.portable_state(), "ledger": self.ledger.state(),
                         "baseline_key": self.ledger.baseline_key, "metric": self.ledger.metric,
                         "base_seed": self.ledger.base_seed}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        self.optuna.restore_state(state["optuna"])
        self.ledger.load_state(state["ledger"])   # in place: the rungs hold the same ledger
        self.ledger.baseline_key = state["baseline_key"]
