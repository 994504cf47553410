"""Guards of core/internals.py: every Ray method it overrides and every private name it reads is
still there, with the signature it was written against. A Ray upgrade that renames one fails here,
by name, instead of Ray silently calling its own method again (and the bugs fixed in the override
coming back) or a resume failing when it is needed most."""

import importlib
import inspect
from pathlib import Path

import pytest

from core import internals
from core.config import load_experiment
from core.search import make_scheduler, make_searcher

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"


def cyclegan(*overrides):
    return load_experiment(SPACES / "cyclegan_builtin.yaml", list(overrides))


def test_the_installed_ray_is_the_one_written_for_and_another_is_refused_with_what_to_do():
    import ray

    internals.check_versions()   # this environment: the pinned Ray
    internals.check_versions(ray.__version__)
    internals.check_versions("2.60.3")
    with pytest.raises(internals.UnsupportedVersion, match=r"needs Ray 2\.60\.x .* has Ray 2\.61\.0\. .*constraints\.txt"):
        internals.check_versions("2.61.0")


# (Ray's class, method) -> the parameters the override in core/internals.py was written for.
OVERRIDDEN = {
    ("ray.tune.schedulers.pbt.PopulationBasedTraining", "_checkpoint_or_exploit"):
        ["self", "trial", "tune_controller", "upper_quantile", "lower_quantile"],
    ("ray.tune.schedulers.pbt.PopulationBasedTraining", "_exploit"): ["self", "tune_controller", "trial", "trial_to_clone"],
    ("ray.tune.schedulers.pbt.PopulationBasedTraining", "_quantiles"): ["self"],
    ("ray.tune.schedulers.pbt.PopulationBasedTraining", "_get_new_config"): ["self", "trial", "trial_to_clone"],
}
OVERRIDES = {"_checkpoint_or_exploit": internals.BaselineKeepingPBT, "_exploit": internals.BaselineKeepingPBT,
             "_quantiles": internals.BaselineKeepingPBT, "_get_new_config": internals.BaselineKeepingPBT}


def _ray_attribute(dotted: str):
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("owner,method", list(OVERRIDDEN), ids=lambda v: v.rsplit(".", 1)[-1])
def test_every_overridden_ray_method_still_exists_with_its_signature(owner, method):
    ray_class = _ray_attribute(owner)
    assert hasattr(ray_class, method), f"Ray's {owner} has no {method} any more: core/internals.py overrides it"
    assert list(inspect.signature(getattr(ray_class, method)).parameters) == OVERRIDDEN[owner, method]
    ours = OVERRIDES[method]
    assert getattr(ours, method) is not getattr(ray_class, method), f"{ours.__name__} no longer overrides {method}"


def test_the_private_attributes_the_schedulers_and_searcher_read_exist(tmp_path):
    pbt = make_scheduler(cyclegan("search.scheduler=pbt", "search.searcher=random"))
    assert isinstance(pbt, internals.BaselineKeepingPBT)
    for name in ("_trial_state", "_num_checkpoints"):
        assert hasattr(pbt, name), f"PopulationBasedTraining.{name}"
    assert pbt.time_attr == "epoch"
    asha = make_scheduler(cyclegan())
    assert isinstance(asha, internals.BaselineKeepingASHA) and asha.max_t == cyclegan().train.epochs
    # The per-state PBT record holds what the exploit reads and writes.
    from ray.tune.schedulers.pbt import _PBTTrialState

    from types import SimpleNamespace

    state = _PBTTrialState(trial=SimpleNamespace(experiment_tag="1"))
    assert {"last_checkpoint", "last_result"} <= set(vars(state))


def test_the_newest_snapshot_is_the_one_ray_restores_and_its_json_is_read_back(tmp_path):
    """newest_snapshot_file picks the file Ray's restore picks; read_snapshot_json reads what Ray's
    encoder writes, the cloudpickled StorageContext of a trial included."""
    import json

    from ray.train._internal.storage import StorageContext
    from ray.tune.execution.experiment_state import _find_newest_experiment_checkpoint
    from ray.tune.utils.serialization import TuneFunctionEncoder

    for name in ("experiment_state-2026-12-04_09-00-00.json", "experiment_state-2026-12-04_10-00-00.json",
                 "search_gen_state-2026-12-04_11-00-00.json", "experiment_state-2026-12-04_08-00-00.json.tmp"):
        (tmp_path / name).write_text("{}")
    assert internals.newest_snapshot_file(str(tmp_path)) == _find_newest_experiment_checkpoint(str(tmp_path))
    assert internals.newest_snapshot_file(str(tmp_path)).endswith("experiment_state-2026-12-04_10-00-00.json")
    assert internals.newest_snapshot_file(str(tmp_path / "none")) is None
    storage = StorageContext(storage_path=str(tmp_path), experiment_dir_name="exp", trial_dir_name="t1",
                             current_checkpoint_index=4)
    text = json.dumps({"storage": storage, "status": "RUNNING"}, cls=TuneFunctionEncoder)
    again = internals.read_snapshot_json(text)
    assert again["status"] == "RUNNING" and (again["storage"].trial_dir_name, again["storage"].current_checkpoint_index) == ("t1", 4)


def test_the_snapshot_pieces_the_resume_repair_and_growth_use_exist(tmp_path):
    """repair_checkpoint_records makes a trial's records anew in a fresh checkpoint manager of the
    restored one's type and policy, registering results as Ray does: the manager keeps the top k by
    the score plus the latest, deletes the rest, and round-trips through the run metadata's JSON."""
    from ray import tune
    from ray.train import Checkpoint
    from ray.train._internal.checkpoint_manager import _CheckpointManager
    from ray.train._internal.session import _TrainingResult
    from ray.tune.search import SearchGenerator
    from ray.tune.search.optuna import OptunaSearch
    from ray.tune.trainable.metadata import _TrainingRunMetadata

    assert list(inspect.signature(_CheckpointManager).parameters) == ["checkpoint_config"]
    policy = tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="fid", checkpoint_score_order="min")
    restored = _CheckpointManager(policy)
    manager = type(restored)(restored.checkpoint_config)   # as the repair makes one
    results = []
    for epoch, fid in ((1, 2.0), (2, 1.0), (3, 3.0), (4, 4.0)):
        (tmp_path / f"checkpoint_{epoch}").mkdir()
        results.append(_TrainingResult(checkpoint=Checkpoint(str(tmp_path / f"checkpoint_{epoch}")),
                                       metrics={"epoch": epoch, "fid": fid}))
        manager.register_checkpoint(results[-1])
    assert manager.latest_checkpoint_result is results[3] and manager.best_checkpoint_results == [results[1]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_2", "checkpoint_4"]   # the best and the latest
    metadata = _TrainingRunMetadata()
    metadata.checkpoint_manager = manager
    again = _TrainingRunMetadata.from_json_state(metadata.get_json_state())
    assert again.checkpoint_manager.latest_checkpoint_result.metrics == {"epoch": 4, "fid": 4.0}
    assert again.checkpoint_manager.checkpoint_config.num_to_keep == 1
    assert callable(metadata.invalidate_cache)
    # The trial's StorageContext, in its JSON state, holds the checkpoint counter the repair moves on.
    from ray.train._internal.storage import StorageContext

    counter = inspect.signature(StorageContext.__init__).parameters
    assert "current_checkpoint_index" in counter and "trial_dir_name" in counter
    assert "self.current_checkpoint_index += 1" in inspect.getsource(StorageContext._update_checkpoint_index)
    # grow_search edits the SearchGenerator's saved state: its trial count and whether it is done.
    state = SearchGenerator(OptunaSearch(metric="fid", mode="min", space={})).get_state()
    assert {"total_samples", "finished"} <= set(state)


def test_the_tuner_setting_a_grown_resume_raises_is_where_raise_trial_count_puts_it():
    from ray import tune

    tuner = tune.Tuner(lambda config: None, tune_config=tune.TuneConfig(num_samples=3))
    internals.raise_trial_count(tuner, 5)
    assert tuner._local_tuner._tune_config.num_samples == 5


def test_a_restored_tuner_prints_and_records_as_its_own_driver_is_asked_to():
    """renew_callbacks replaces what Tuner.restore kept of the first run's callbacks: Ray's verbosity,
    the console and the result files (two of them in a run saved before TrialResultFiles: the old
    loggers' names unpickle to it), with the new driver's; the other callbacks stay."""
    import pickle

    from ray import tune

    from core.driver import TrialEvents, TrialResultFiles

    kept = tune.Callback()
    # (protocol 0 names a class as text: "<module>\n<name>")
    legacy = [pickle.loads(pickle.dumps(TrialResultFiles(), protocol=0).replace(b"core.driver\nTrialResultFiles",
                                                                                b"core.internals\n" + name))
              for name in (b"SessionJsonLogger", b"SessionCSVLogger")]
    assert all(type(c) is TrialResultFiles for c in legacy)
    tuner = tune.Tuner(lambda config: None,
                       run_config=tune.RunConfig(verbose=1, callbacks=[*legacy, kept, TrialEvents("fid", 2)]))
    files, console = TrialResultFiles(), TrialEvents("fid", 2, live=True)
    internals.renew_callbacks(tuner, 0, [files, console])
    run_config = tuner._local_tuner.get_run_config()
    assert run_config.verbose == 0 and run_config.callbacks == [kept, files, console]


def test_the_ray_text_and_module_names_it_recognises_are_rays():
    import ray._private.node

    source = inspect.getsource(ray._private.node)
    assert "The current node timed out during startup" in source
    assert internals.is_startup_timeout(Exception("The current node timed out during startup. This could ..."))
    assert not internals.is_startup_timeout(Exception("Address already in use"))
    assert importlib.util.find_spec("ray._private.authentication.authentication_token_setup") is not None
    import logging

    internals.quiet_token_authentication_notice()
    assert logging.getLogger("ray._private.authentication.authentication_token_setup").level == logging.ERROR


def test_no_private_name_of_ray_optuna_wandb_or_torch_is_used_outside_core_internals():
    """The point of the module: a Ray upgrade is core/internals.py and this file."""
    root = Path(__file__).resolve().parents[1]
    private = ("ray._private", "ray.train._internal", "._local_tuner", "._checkpoint_results", "._ot_", "torch._",
               "wandb.sdk", "import _", "._trial_state", "._restore_from_remote", "._exploit", "._max_t",
               "._time_attr", "._trial_id")
    found = []
    for path in [*root.glob("core/**/*.py"), *root.glob("experiments/*.py"), *root.glob("analysis/*.py")]:
        if path.name == "internals.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if any(name in code for name in private):
                found.append(f"{path.relative_to(root)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


# The private names of Ray, W&B and others that core/internals.py uses (30 before issue 25): a new one
# fails the test below until it is listed here, so the count is a decision, not a drift.
PRIVATE_NAMES_USED = {
    # PBT's decisions, overridden (BaselineKeepingPBT) and its per-trial state read
    "_checkpoint_or_exploit", "_exploit", "_quantiles", "_get_new_config", "_trial_state",
    # Ray's records of a trial's checkpoints, made anew by the resume's repair (repair_checkpoint_records)
    "_TrainingResult", "_TrainingRunMetadata", "ray.train._internal.session",
    # the restored Tuner's settings a resume or a grown search changes (no public setter)
    "_local_tuner", "_tune_config",
    # the logger of Ray's token-authentication notice
    "ray._private.authentication.authentication_token_setup",
    # W&B's import-time temp directories (looked up defensively)
    "wandb.sdk.data_types._private", "_TMP_DIR",
}


def private_names_used_in_internals() -> set[str]:
    """Every private name of another package in core/internals.py's code (docstrings aside): an
    attribute, an imported name or module path, a string naming one, and each Ray method its
    classes override."""
    import ast
    import re

    third_party = ("ray", "optuna", "wandb", "torch", "pyarrow", "tensorboard")
    tree = ast.parse(inspect.getsource(internals))
    ours = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name.startswith("_")}
    overridden = {name for cls in vars(internals).values()
                  if inspect.isclass(cls) and cls.__module__ == internals.__name__
                  for name in vars(cls) if name.startswith("_") and not name.startswith("__")
                  and any(name in vars(base) for base in cls.__mro__[1:] if base.__module__.split(".")[0] in third_party)}
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body and isinstance(n.body[0], ast.Expr)}
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            found.add(node.attr)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in third_party:
            found |= {alias.name for alias in node.names if alias.name.startswith("_")}
            if any(part.startswith("_") for part in node.module.split(".")):
                found.add(node.module)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            dotted_private = re.fullmatch(r"\w+(\.\w+)+", node.value) and re.search(r"\._", node.value)
            if re.fullmatch(r"_[A-Za-z]\w*", node.value) or dotted_private:
                found.add(node.value)
    return (found - ours) | overridden


def test_the_private_names_of_other_packages_used_are_the_listed_few():
    """Issue 25's target: at most half of the 30 private names used before it."""
    assert private_names_used_in_internals() == PRIVATE_NAMES_USED
    assert len(PRIVATE_NAMES_USED) <= 15


def test_the_snapshot_files_the_race_ledger_repair_reads_are_still_named_and_shaped_so():
    """repair_race_ledger and proposal_order find Ray's searcher checkpoint and the search
    generator's state by these names, and set the generator's `counter`; remove_old_snapshots
    knows Ray's snapshot files by them."""
    from ray.tune.search import Searcher
    from ray.tune.search.search_generator import SearchGenerator

    assert Searcher.CKPT_FILE_TMPL == "searcher-state-{}.pkl"
    assert SearchGenerator.CKPT_FILE_TMPL == "search_gen_state-{}.json"
    # ... and remove_old_snapshots keeps the newest of each of Ray's snapshot files by these prefixes.
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.search.basic_variant import BasicVariantGenerator

    templates = [TuneController.CKPT_FILE_TMPL, SearchGenerator.CKPT_FILE_TMPL, Searcher.CKPT_FILE_TMPL,
                 BasicVariantGenerator.CKPT_FILE_TMPL]
    assert [t.split("{}")[0] for t in templates] == list(internals.SNAPSHOT_PREFIXES)
    from core.searchers import InTrialOrderSearch

    generator = SearchGenerator(InTrialOrderSearch.__new__(InTrialOrderSearch))
    assert {"counter", "total_samples", "finished"} <= set(generator.get_state())


def test_a_moved_experiment_s_pieces_are_where_rebase_and_attach_study_put_them(tmp_path):
    """rebase_moved_experiment edits the Experiment in the SearchGenerator's saved state (new trials
    are created from its storage) as Ray edits a restored trial's; attach_study finds the searcher in
    the restored tuner's TuneConfig."""
    from ray import tune
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.experiment import Experiment
    from ray.tune.search import SearchGenerator
    from ray.tune.search.optuna import OptunaSearch

    state = SearchGenerator(OptunaSearch(metric="fid", mode="min", space={})).get_state()
    assert "experiment" in state
    # New trials take spec["storage"] (no Experiment is built here: it registers its trainable with Ray).
    assert '"storage": self.storage,' in inspect.getsource(Experiment.__init__)
    for name in ("storage_fs_path", "experiment_dir_name", "storage_filesystem"):
        assert f"new_storage.{name} = self._storage.{name}" in inspect.getsource(TuneController._restore_trials)
    from core.search import study_storage

    searcher = make_searcher(cyclegan(), tmp_path)
    tuner = tune.Tuner(lambda config: None, tune_config=tune.TuneConfig(search_alg=searcher))
    (tmp_path / "moved").mkdir()
    elsewhere = study_storage(tmp_path / "moved")
    internals.attach_study(tuner, elsewhere)
    assert searcher.storage is elsewhere and (tmp_path / "moved" / "optuna.db").is_file()


def test_a_resume_reuses_the_staging_directory_that_absorb_driver_staging_empties():
    """absorb_driver_staging finds the killed driver's local copy of the records where a resumed run
    will write and copy from: the staging directory of the run's own timestamp, under this Ray
    session (StorageContext's property), which Ray copies over the experiment as a whole."""
    from ray.train._internal.storage import StorageContext
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager
    from ray.tune.execution.tune_controller import TuneController

    assert "self._storage._timestamp = trials[0].storage._timestamp" in inspect.getsource(TuneController._restore_trials)
    assert isinstance(StorageContext.experiment_driver_staging_path, property)
    assert "self._timestamp, self.experiment_dir_name" in inspect.getsource(StorageContext._get_session_path)
    assert "driver_staging_path, self._storage.experiment_fs_path" in inspect.getsource(
        _ExperimentCheckpointManager.sync_up_experiment_state)


def test_the_optuna_searcher_is_saved_without_its_study_and_restored_onto_the_one_given(tmp_path):
    """Pickled (tuner.pkl) or saved (Ray's searcher state), the searcher holds no study storage;
    restored, it continues the study it is attached to, with its Ray trials' Optuna trials."""
    import pickle
    import shutil

    import optuna

    from core.search import study_storage

    (tmp_path / "old").mkdir()
    searcher = make_searcher(cyclegan(), tmp_path / "old")
    searcher.set_search_properties(None, None, {})
    assert searcher.suggest("ray-trial-1")   # the baseline, then told its score
    searcher.on_trial_complete("ray-trial-1", {"best_fid": 3.0, "epoch": 1})
    pickled = pickle.dumps(searcher)   # as in tuner.pkl
    assert b"RDBStorage" not in pickled
    searcher.save(str(tmp_path / "searcher.pkl"))
    shutil.move(tmp_path / "old", tmp_path / "new")

    restored = pickle.loads(pickled)   # Tuner.restore, then the driver and Ray's restore_from_dir
    restored.attach_study(study_storage(tmp_path / "new"))
    restored.restore(str(tmp_path / "searcher.pkl"))
    trials = restored.study.get_trials()
    assert [(t.state.name, t.value) for t in trials] == [("COMPLETE", 3.0)] and trials[0].params
    assert restored.trial_ids == searcher.trial_ids and restored.told == {"ray-trial-1"}
    assert not (tmp_path / "old").exists()
    restored.suggest("ray-trial-2")
    assert len(optuna.load_study(study_name=cyclegan().name, storage=study_storage(tmp_path / "new")).trials) == 2
