"""What a search builds: the searcher (TPE settings, the baseline first), the scheduler (ASHA, FIFO,
PBT, each on the right metric and time attribute), conditional keys and the baseline's checks."""

import shutil
from pathlib import Path

import optuna
import pytest
import torch

from core.config import ConfigError, load_experiment
from core.plan import describe_search, perturbation_interval, sampler_settings, search_metric
from core.search import make_scheduler, make_search_algorithms, make_searcher
from core.space import applicable, baseline_point, dimensions, is_baseline, optuna_space

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"
CYCLEGAN = SPACES / "cyclegan_builtin.yaml"


def cyclegan(*overrides):
    return load_experiment(CYCLEGAN, list(overrides))


def test_tpe_start_up_trials_scale_with_the_budget_and_liar_follows_concurrency():
    assert sampler_settings(cyclegan("search.num_samples=24", "search.max_concurrent=4")) == {
        "n_startup_trials": 6, "multivariate": True, "constant_liar": True, "group": False}
    assert sampler_settings(cyclegan("search.num_samples=6", "search.max_concurrent=1"))["n_startup_trials"] == 3
    assert sampler_settings(cyclegan("search.num_samples=60"))["n_startup_trials"] == 10   # Optuna's default caps it
    quarter = sampler_settings(cyclegan("search.num_samples=25"))["n_startup_trials"]   # a whole number of trials
    assert quarter == 6 and isinstance(quarter, int)
    assert sampler_settings(cyclegan("search.max_concurrent=1"))["constant_liar"] is False
    explicit = cyclegan("search.optuna={n_startup_trials: 5, multivariate: false, constant_liar: false}",
                          "search.max_concurrent=4")
    assert sampler_settings(explicit) == {"n_startup_trials": 5, "multivariate": False, "constant_liar": False,
                                      "group": False}


def test_unknown_optuna_option_is_an_error_naming_it():
    with pytest.raises(ConfigError, match="n_startup_trials"):
        cyclegan("search.optuna={n_start_trials: 5}")


def test_optuna_searcher_runs_the_baseline_first_with_the_configured_tpe(tmp_path):
    cfg = cyclegan("search.num_samples=20", "search.max_concurrent=2")
    searcher = make_searcher(cfg, tmp_path)
    assert type(searcher).__name__ == "ResumableOptunaSearch"
    assert searcher.metric == "best_fid" and searcher.mode == "min"
    assert searcher.points_to_evaluate == [{"model.lr_g": 2e-4, "model.lr_d": 2e-4, "model.lambda_cycle": 10.0,
                                             "model.lambda_identity": 0.5}]
    sampler = searcher.sampler
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert sampler._n_startup_trials == 5 and sampler._multivariate and sampler._constant_liar
    assert not make_searcher(cyclegan("search.baseline=false"), tmp_path).points_to_evaluate


def test_the_chosen_sampler_reaches_rays_searcher_and_the_racing_searcher_around_it(tmp_path):
    cfg = cyclegan("search.sampler=gp", "search.seed=3", "search.racing=true", "search.num_samples=12")
    searcher, _ = make_search_algorithms(cfg, tmp_path)
    assert type(searcher).__name__ == "InTrialOrderSearch"
    sampler = searcher.optuna.sampler
    assert isinstance(sampler, optuna.samplers.GPSampler) and sampler._n_startup_trials == 3
    first = [optuna.create_study(sampler=s).ask().suggest_float("x", 0.0, 1.0)
             for s in (sampler, optuna.samplers.RandomSampler(seed=3))]
    assert first[0] == first[1], "seeded with search.seed: its random start-up trials are RandomSampler(seed=3)'s"
    assert isinstance(make_searcher(cyclegan("search.sampler=nsga2", "search.metric=[kid, precision]"),
                                    tmp_path).sampler, optuna.samplers.NSGAIISampler)


def test_a_multi_objective_searcher_gets_each_objectives_running_best_and_direction(tmp_path):
    searcher = make_searcher(cyclegan("search.metric=[kid, precision]"), tmp_path)
    assert searcher.metric == ["best_kid", "best_precision"] and searcher.mode == ["min", "max"]


def test_pbt_perturbs_every_two_evaluations_unless_told(tmp_path):
    base = ["search.scheduler=pbt", "search.searcher=random", "train.epochs=12"]
    assert perturbation_interval(cyclegan(*base, "train.eval_every=1")) == 2
    assert perturbation_interval(cyclegan(*base, "train.eval_every=3")) == 6
    assert perturbation_interval(cyclegan(*base, "train.eval_every=2", "search.pbt={perturbation_interval: 5}")) == 4


def test_random_searcher_also_runs_the_baseline_first(tmp_path):
    searcher = make_searcher(cyclegan("search.searcher=random"), tmp_path)
    assert type(searcher).__name__ == "BasicVariantGenerator"
    assert searcher._points_to_evaluate == [baseline_point(cyclegan())]


def test_asha_compares_the_running_best_by_epoch_and_never_stops_the_baseline():
    from ray.tune.schedulers import TrialScheduler

    cfg = cyclegan("train.epochs=8", "search.grace_period=2", "search.reduction_factor=3")
    asha = make_scheduler(cfg)
    assert type(asha).__name__ == "BaselineKeepingASHA"
    assert (asha._time_attr, asha._metric, asha._mode) == ("epoch", "best_fid", "min")
    assert (asha._max_t, asha._reduction_factor) == (8, 3)
    assert asha._brackets[0]._rungs[-1][0] == 2   # the first rung sits at the grace period

    class FakeTrial:
        def __init__(self, config, trial_id):
            self.config, self.trial_id = config, trial_id

        def __hash__(self):
            return hash(self.trial_id)

    # Two good trials reach epoch 2 first; then the baseline and another trial arrive there much
    # worse: ASHA stops the other one, and keeps the baseline going.
    baseline = FakeTrial(dict(baseline_point(cfg)), "base")
    other = FakeTrial({**baseline_point(cfg), "model.lr_g": 1e-3}, "other")
    good = [FakeTrial({**baseline_point(cfg), "model.lr_g": 5e-4 + i * 1e-5}, f"good{i}") for i in range(4)]
    for trial in (*good, baseline, other):
        asha.on_trial_add(None, trial)
    for i, trial in enumerate(good):
        asha.on_trial_result(None, trial, {"epoch": 2, "best_fid": 1.0 + i * 0.01})
    assert asha.on_trial_result(None, other, {"epoch": 2, "best_fid": 50.0}) == TrialScheduler.STOP
    assert asha.on_trial_result(None, baseline, {"epoch": 2, "best_fid": 50.0}) == TrialScheduler.CONTINUE


def test_fifo_and_pbt_schedulers():
    assert type(make_scheduler(cyclegan("search.scheduler=fifo"))).__name__ == "FIFOScheduler"
    cfg = cyclegan("search.scheduler=pbt", "search.searcher=random", "train.eval_every=2", "train.epochs=8",
                     "search.pbt={perturbation_interval: 5, quantile_fraction: 0.5, resample_probability: 0.1}")
    pbt = make_scheduler(cfg)
    assert type(pbt).__name__ == "BaselineKeepingPBT"
    assert perturbation_interval(cfg) == 4, "rounded down to a multiple of eval_every, where checkpoints are"
    assert (pbt._time_attr, pbt._metric, pbt._perturbation_interval) == ("epoch", "fid", 4)
    assert search_metric(cfg) == "fid", "PBT compares the current score, not a running best"
    assert (pbt._quantile_fraction, pbt._resample_probability) == (0.5, 0.1)
    assert set(pbt._hyperparam_mutations) == set(cfg.search.space)
    assert pbt._hyperparam_mutations["model.lambda_identity"] == [0.0, 0.5]


def test_pbt_never_perturbs_a_key_that_shapes_the_networks():
    """A PBT trial continues its donor's weights: a mutated latent_dim or conditional would not fit
    them (the VAE space searches both; found by the search benchmark, whose PBT trials errored)."""
    cfg = load_experiment(SPACES / "vae_builtin.yaml", ["search.scheduler=pbt", "search.searcher=random"])
    pbt = make_scheduler(cfg)
    assert set(pbt._hyperparam_mutations) == set(cfg.search.space) - {"model.latent_dim", "model.conditional"}
    assert "model.latent_dim, model.conditional copied with the weights, never perturbed" in describe_search(cfg)


def test_a_pbt_perturbation_stays_in_range_and_valid_for_the_family():
    """Ray's explore multiplies by 0.8/1.2 without bounds and knows nothing of the VAE's rule that
    beta_cycle > beta_warmup; every perturbation the scheduler hands a trial is in range and valid."""
    from types import SimpleNamespace

    cfg = load_experiment(SPACES / "vae_builtin.yaml", ["search.scheduler=pbt", "search.searcher=random",
                                                        "search.pbt={resample_probability: 0.0}"])
    pbt = make_scheduler(cfg)
    donor = SimpleNamespace(config={"model.lr": 1.0e-2, "model.latent_dim": 32, "model.beta": 0.1,   # range edges
                                    "model.beta_schedule": "cyclic", "model.beta_warmup": 3, "model.beta_cycle": 4,
                                    "model.conditional": False, "train.batch_size": 16})
    space = {d.key: d for d in dimensions(cfg.search.space)}
    seen_edges = set()
    for _ in range(60):
        config, _ = pbt._get_new_config(SimpleNamespace(config={}), donor)
        assert all(space[k].contains(v) for k, v in config.items() if k in space), config
        assert config["model.beta_cycle"] > config["model.beta_warmup"], config
        assert isinstance(config["model.beta_warmup"], int) and isinstance(config["model.beta_cycle"], int)
        seen_edges |= {config["model.lr"] == 1.0e-2, config["model.beta"] == 0.1}
    assert True in seen_edges, "x1.2 of the top of the lr range (or x0.8 of the bottom of beta's) is clipped to it"


def test_an_exploit_copies_the_donors_checkpoint_into_the_trial_and_keeps_one_copy(tmp_path):
    from types import SimpleNamespace

    import pyarrow.fs
    from ray.tune import Checkpoint

    cfg = cyclegan("search.scheduler=pbt", "search.searcher=random")
    pbt = make_scheduler(cfg)
    fs = pyarrow.fs.LocalFileSystem()
    donor = tmp_path / "donor"
    for epoch in (3, 4):
        (donor / f"checkpoint_00000{epoch}").mkdir(parents=True)
        (donor / f"checkpoint_00000{epoch}" / "state.pt").write_bytes(bytes([epoch]) * 10)
    trial = SimpleNamespace(storage=SimpleNamespace(trial_fs_path=str(tmp_path / "trial")))

    first = pbt._private_copy(Checkpoint(str(donor / "checkpoint_000003"), filesystem=fs), trial)
    assert Path(first.path) == tmp_path / "trial" / "pbt_donor" / "1" / "checkpoint_000003"
    assert (Path(first.path) / "state.pt").read_bytes() == bytes([3]) * 10
    second = pbt._private_copy(Checkpoint(str(donor / "checkpoint_000004"), filesystem=fs), trial)
    assert (Path(second.path) / "state.pt").read_bytes() == bytes([4]) * 10
    assert [p.name for p in (tmp_path / "trial" / "pbt_donor").iterdir()] == ["2"], "the earlier copy is gone"
    assert (donor / "checkpoint_000003" / "state.pt").is_file(), "the donor's own files are untouched"


def _pbt_trial(directory: Path, checkpoint: Path, kept: list[Path]):
    """A trial as BaselineKeepingPBT sees it: its storage, Ray's record of its latest checkpoint
    (`trial.checkpoint`) and of those it reported and keeps (`epoch` = the directory's number)."""
    from types import SimpleNamespace

    import pyarrow.fs
    from ray.train import CheckpointConfig
    from ray.train._internal.checkpoint_manager import _CheckpointManager
    from ray.train._internal.session import _TrainingResult
    from ray.tune import Checkpoint

    fs = pyarrow.fs.LocalFileSystem()
    manager = _CheckpointManager(CheckpointConfig(num_to_keep=3))
    for path in kept:
        manager._checkpoint_results.append(_TrainingResult(Checkpoint(str(path), filesystem=fs),
                                                           {"epoch": int(path.name.split("_")[1])}))

    class Trial:   # hashable, as PBT keys its state by trial
        config, experiment_tag = {}, "0"
        storage = SimpleNamespace(trial_fs_path=str(directory), storage_filesystem=fs)
        run_metadata = SimpleNamespace(checkpoint_manager=manager)

    trial = Trial()
    trial.checkpoint = Checkpoint(str(checkpoint), filesystem=fs)
    return trial


def _checkpoint_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    torch.save({"epoch": int(path.name.split("_")[1])}, path / "state.pt")   # intact for checkpoint_problem
    return path


def test_a_top_trial_donates_the_checkpoint_of_the_ranked_result_never_a_restore_copy(tmp_path):
    """Ray registers a result's checkpoint only after the scheduler has decided on that result, so
    while PBT ranks it `trial.checkpoint` is the previous report's, and right after an exploit the
    copy of the donor's. Donated from there, a trial got its own older weights back and trained
    epochs again as if resumed (CI, 2026-12-01: epochs 1-5, 4, ...)."""
    from ray.tune.schedulers.pbt import _PBTTrialState

    from core.internals import newest_own_checkpoint

    pbt = make_scheduler(cyclegan("search.scheduler=pbt", "search.searcher=random"))
    donor = tmp_path / "cyclegan_donor"
    own = [_checkpoint_dir(donor / "checkpoint_000002"), _checkpoint_dir(donor / "checkpoint_000003")]
    restored_from = _checkpoint_dir(donor / "pbt_donor" / "1" / "checkpoint_000004")   # another trial's weights
    trial = _pbt_trial(donor, checkpoint=restored_from, kept=own)
    pbt._trial_state[trial] = _PBTTrialState(trial)
    pbt._trial_state[trial].last_result = {"epoch": 4, "checkpoint_dir_name": "checkpoint_000003"}

    pbt._checkpoint_or_exploit(trial, None, upper_quantile=[trial], lower_quantile=[])
    assert Path(pbt._trial_state[trial].last_checkpoint.path) == own[1], "the ranked result's own checkpoint"
    pbt._checkpoint_or_exploit(trial, None, upper_quantile=[], lower_quantile=[])
    assert pbt._trial_state[trial].last_checkpoint is None, "not a top trial: nothing to donate"

    # That checkpoint deleted by keep-top-k before anyone copied it: the newest the trial keeps
    # of its own, with the result it was reported with; the restore copy is never offered.
    shutil.rmtree(own[1])
    checkpoint, result = newest_own_checkpoint(trial)
    assert (Path(checkpoint.path), result["epoch"]) == (own[0], 2)
    shutil.rmtree(own[0])
    assert newest_own_checkpoint(trial) == (None, None)


def test_pbt_needs_random_search():
    with pytest.raises(ConfigError, match="pbt needs search.searcher: random"):
        cyclegan("search.scheduler=pbt")


def test_a_baseline_outside_the_searched_range_is_an_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"model.lr_g = 0.0002 \(the space's own value\) is outside"):
        cyclegan("search.space={model.lr_g: {loguniform: [1.0e-3, 2.0e-3]}}")
    cyclegan("search.space={model.lr_g: {loguniform: [1.0e-3, 2.0e-3]}}", "search.baseline=false")


# --- Conditional keys ---------------------------------------------------------------------------

CONDITIONAL = {"model.lambda_identity": {"choice": [0.0, 0.5]},
               "model.lambda_cycle": {"uniform": [2.0, 15.0], "when": {"model.lambda_identity": 0.5}},
               "model.lr_g": {"loguniform": [1.0e-4, 1.0e-3]}}


def test_a_conditional_key_is_sampled_only_where_it_applies():
    define_by_run = optuna_space(CONDITIONAL)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, multivariate=True, group=True))
    seen = set()
    for _ in range(20):
        trial = study.ask()
        values = define_by_run(trial)
        assert ("model.lambda_cycle" in trial.params) == (values["model.lambda_identity"] == 0.5)
        assert set(values) == set(trial.params)
        seen.add(values["model.lambda_identity"])
        study.tell(trial, values["model.lr_g"])
    assert seen == {0.0, 0.5}
    # Random search samples every key; the trial and its records drop the one that does not apply.
    assert applicable({"model.lambda_identity": 0.0, "model.lambda_cycle": 4.2, "train.seed": 3}, CONDITIONAL) == {
        "model.lambda_identity": 0.0, "train.seed": 3}


def test_conditions_are_checked():
    bad = {"model.lambda_identity": {"choice": [0.0, 0.5]},
           "model.lambda_cycle": {"uniform": [2.0, 15.0], "when": {"model.lambda_identity": 0.7}}}
    with pytest.raises(ConfigError, match="never takes 0.7"):
        cyclegan(f"search.space={bad}")
    with pytest.raises(ConfigError, match="must be another `choice` key"):
        cyclegan("search.space={model.lr_g: {loguniform: [1.0e-4, 1.0e-3], when: {model.lr_d: 0.1}}}")


def test_the_baseline_leaves_out_keys_that_do_not_apply_to_it():
    cfg = cyclegan("model.lambda_identity=0.0", f"search.space={CONDITIONAL}")
    assert baseline_point(cfg) == {"model.lambda_identity": 0.0, "model.lr_g": 2e-4}
    assert is_baseline({"model.lambda_identity": 0.0, "model.lambda_cycle": 9.0, "model.lr_g": 2e-4},
                       baseline_point(cfg), CONDITIONAL)
    assert not is_baseline({"model.lambda_identity": 0.5, "model.lambda_cycle": 10.0, "model.lr_g": 2e-4},
                           baseline_point(cfg), CONDITIONAL)
    assert [d.key for d in dimensions(CONDITIONAL)][-1] == "model.lambda_cycle", "conditional keys come last"


def test_the_searcher_survives_a_resume_whose_snapshot_is_behind_the_study(tmp_path):
    """The driver died after telling the study a trial finished, before Ray's snapshot said so: the
    resumed run reports the trial again. Plain OptunaSearch raises UpdateFinishedTrialError there."""
    searcher = make_searcher(cyclegan("search.baseline=false"), tmp_path)
    searcher.set_search_properties(None, None, {})
    searcher.suggest("a")
    searcher.on_trial_result("a", {"best_fid": 3.0, "training_iteration": 1})
    searcher.on_trial_complete("a", {"best_fid": 2.0, "training_iteration": 2})
    searcher.told.discard("a")                       # what the older snapshot restores
    searcher.on_trial_result("a", {"best_fid": 2.5, "training_iteration": 2})
    searcher.on_trial_complete("a", {"best_fid": 2.5, "training_iteration": 2})
    (trial,) = optuna.load_study(study_name="cyclegan-builtin", storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == 2.0


def test_the_searcher_reports_each_epoch_once_and_tells_each_end_by_its_outcome(tmp_path):
    """Optuna's ask-and-tell as the search drives it: the epochs' scores are the trial's intermediate
    values (an epoch a resumed trial trains again is not reported twice), a trial that ended
    without its metric was PRUNED, one that failed FAIL, and with two objectives both are told."""
    searcher = make_searcher(cyclegan("search.baseline=false"), tmp_path)
    for trial_id in "abc":
        searcher.suggest(trial_id)
    searcher.on_trial_result("a", {"best_fid": 3.0, "training_iteration": 1})
    searcher.on_trial_result("a", {"best_fid": 2.0, "training_iteration": 2})
    searcher.on_trial_result("a", {"best_fid": 9.0, "training_iteration": 2})   # epoch 2 again, after a resume
    searcher.on_trial_complete("a", {"best_fid": 2.0, "training_iteration": 2})
    searcher.on_trial_complete("b", None, error=True)
    searcher.on_trial_complete("c", {"training_iteration": 1})
    a, b, c = searcher.study.get_trials()
    assert a.intermediate_values == {1: 3.0, 2: 2.0} and (a.state.name, a.value) == ("COMPLETE", 2.0)
    assert (b.state.name, c.state.name) == ("FAIL", "PRUNED")

    (tmp_path / "two").mkdir()
    pareto = make_searcher(cyclegan("search.metric=[kid, precision]", "search.baseline=false"), tmp_path / "two")
    pareto.suggest("x")
    pareto.on_trial_result("x", {"best_kid": 0.1, "best_precision": 0.5, "training_iteration": 1})
    pareto.on_trial_complete("x", {"best_kid": 0.1, "best_precision": 0.5, "training_iteration": 1})
    (x,) = pareto.study.get_trials()
    assert x.values == [0.1, 0.5] and x.intermediate_values == {}


def test_a_searcher_saved_by_the_paintsweep_before_its_own_searcher_resumes(tmp_path):
    """Searches saved before 2026-12-04 hold the searcher as Ray's OptunaSearch's attributes (in
    tuner.pkl, under core.internals' name, and in Ray's searcher state): it resumes on its study."""
    import pickle

    from core import internals
    from core.search import study_storage

    searcher = make_searcher(cyclegan(), tmp_path)
    searcher.suggest("ray-trial-1")
    old = {"_metric": "best_fid", "_mode": "min", "_space": searcher.space, "_study_name": searcher.study_name,
           "_sampler": searcher.sampler, "_points_to_evaluate": searcher.points_to_evaluate, "_seed": None,
           "_evaluated_rewards": None, "_storage": None, "_ot_study": None, "_completed_trials": set(),
           "_ot_trials": dict(searcher.trial_ids)}
    restored = internals.ResumableOptunaSearch.__new__(internals.ResumableOptunaSearch)
    restored.__setstate__(old)   # (what unpickling it does)
    restored.attach_study(study_storage(tmp_path))
    (tmp_path / "state.pkl").write_bytes(pickle.dumps(old))
    restored.restore(str(tmp_path / "state.pkl"))
    restored.on_trial_complete("ray-trial-1", {"best_fid": 4.0, "training_iteration": 1})
    assert [t.value for t in restored.study.get_trials()] == [4.0] and restored.metric == "best_fid"


def test_a_restored_searcher_reopens_its_own_trials_in_a_file_shared_with_another_study(tmp_path):
    """A restored searcher reopens its Optuna trials by storage id, looked up by trial number. With
    another study's trials first in the same file, a trial's id is not its number: the restored
    searcher still reports to and tells its own trial, and leaves the other study's alone."""
    import pickle

    from core.search import study_storage

    other = optuna.create_study(study_name="another", storage=study_storage(tmp_path))
    other.ask(), other.ask()
    searcher = make_searcher(cyclegan("search.baseline=false"), tmp_path)
    searcher.suggest("a")
    restored = pickle.loads(pickle.dumps(searcher))   # as Ray's tuner.pkl holds it
    restored.attach_study(study_storage(tmp_path))
    restored.on_trial_result("a", {"best_fid": 3.0, "training_iteration": 1})
    restored.on_trial_complete("a", {"best_fid": 2.0, "training_iteration": 1})
    (ours,) = restored.study.get_trials()
    assert (ours.number, ours.state.name, ours.value, ours.intermediate_values) == (0, "COMPLETE", 2.0, {1: 3.0})
    assert [t.state.name for t in other.get_trials()] == ["RUNNING", "RUNNING"]
    assert restored.trial_ids["a"] == 3   # the third trial in the file
