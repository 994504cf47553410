"""search.sampler: each of Optuna's samplers built from a config with its seed and options, run in a
small Optuna study over a searched space (no Ray), described in the search's one line, and refused
for a space it cannot search (core/sampler_registry.py, core.config, core.plan)."""

import math
import pickle
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import optuna
import pytest

from core.config import ConfigError, build_config
from core.plan import describe_search, make_sampler, sampler_settings
from core.sampler_registry import SAMPLERS
from core.space import dimensions, optuna_space

ROOT = Path(__file__).resolve().parents[1]

RANGES = {"model.lr_g": {"loguniform": [2.0e-5, 2.0e-3]},
          "model.lambda_cycle": {"uniform": [2.0, 15.0]},
          "model.n_layers_d": {"int": [2, 4]}}
SPACE = {**RANGES, "model.lambda_identity": {"choice": [0.0, 0.5]}}
CONDITIONAL = {"model.lambda_identity": {"choice": [0.0, 0.5]},
               "model.lambda_cycle": {"uniform": [2.0, 15.0], "when": {"model.lambda_identity": 0.5}}}

# Options that let a 10-trial study reach each sampler's own proposals (past its random start).
QUICK = {"tpe": {"n_startup_trials": 3}, "gp": {"n_startup_trials": 3}, "cmaes": {"n_startup_trials": 1},
         "nsga2": {"population_size": 4}, "qmc": {}, "random": {}}


def config(sampler=None, space=None, optuna=None, **search):
    tree = {"name": "t", "family": "cyclegan", "data": {"source": "builtin", "image_size": 32},
            "model": {"lambda_identity": 0.5},
            "search": {"space": RANGES if sampler == "cmaes" else SPACE, **search}}
    if space is not None:
        tree["search"]["space"] = space
    if sampler is not None:
        tree["search"]["sampler"] = sampler
    if optuna is not None:
        tree["search"]["optuna"] = optuna
    return build_config(tree)


def refusal(**kwargs) -> str:
    with pytest.raises(ConfigError) as e:
        config(**kwargs)
    return str(e.value)


def run_study(cfg, n_trials=10, directions=("minimize",)) -> list[dict]:
    """An Optuna study over the config's space with its sampler, on a toy objective (one score per
    direction); returns each trial's values, checked against the space."""
    sampler, define_by_run = make_sampler(cfg), optuna_space(cfg.search.space)
    by_key = {d.key: d for d in dimensions(cfg.search.space)}
    study = optuna.create_study(sampler=sampler, directions=list(directions))
    drawn = []
    for _ in range(n_trials):
        trial = study.ask()
        values = define_by_run(trial)
        for key, value in values.items():
            assert by_key[key].contains(value), f"{key} = {value!r} is outside {by_key[key].describe()}"
        distance = (math.log10(values["model.lr_g"]) + 3.5) ** 2 + (values.get("model.lambda_cycle", 8) - 8) ** 2 / 50
        study.tell(trial, [distance, -distance / 2][:len(directions)])
        drawn.append(values)
    # Ray's OptunaSearch pickles its sampler in the searcher's checkpoint: --resume continues from it.
    study.sampler = pickle.loads(pickle.dumps(sampler))
    trial = study.ask()
    assert all(by_key[k].contains(v) for k, v in define_by_run(trial).items())
    return drawn


def test_each_sampler_is_optunas_own_class_seeded_with_the_search_seed_and_its_options():
    expected = {"tpe": optuna.samplers.TPESampler, "gp": optuna.samplers.GPSampler,
                "cmaes": optuna.samplers.CmaEsSampler, "nsga2": optuna.samplers.NSGAIISampler,
                "qmc": optuna.samplers.QMCSampler, "random": optuna.samplers.RandomSampler}
    assert set(expected) == set(SAMPLERS)
    for name, cls in expected.items():
        assert type(make_sampler(config(name))) is cls
    assert type(make_sampler(config())) is optuna.samplers.TPESampler, "tpe unless search.sampler says otherwise"
    tpe = make_sampler(config("tpe", num_samples=24, max_concurrent=4))
    assert tpe._n_startup_trials == 6 and tpe._multivariate and tpe._constant_liar
    assert make_sampler(config("gp", num_samples=24))._n_startup_trials == 6, "budget-scaled, as TPE's"
    assert make_sampler(config("gp", optuna={"n_startup_trials": 4}))._n_startup_trials == 4
    assert make_sampler(config("cmaes", num_samples=24))._n_startup_trials == 1, "Optuna's: CMA-ES starts at the centre"
    assert make_sampler(config("nsga2", optuna={"population_size": 12}))._population_size == 12
    assert make_sampler(config("qmc", seed=7))._seed == 7
    assert sampler_settings(config("qmc")) == {"scramble": True}, "the seed changes the sequence only when scrambled"
    assert sampler_settings(config("random")) == {}


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_each_sampler_searches_within_the_space_and_its_seed_decides_its_proposals(name):
    drawn = run_study(config(name, optuna=QUICK[name] or None, seed=0))
    assert drawn == run_study(config(name, optuna=QUICK[name] or None, seed=0)), "same seed, same search"
    assert drawn[:2] != run_study(config(name, optuna=QUICK[name] or None, seed=1), n_trials=2)
    # (NSGA-II's crossover passes a parent's value on: distinct configurations, not distinct values)
    assert len({tuple(sorted(v.items())) for v in drawn}) > 5, "it proposes new points, not one again and again"


@pytest.mark.parametrize("name", [s.name for s in SAMPLERS.values() if s.multi_objective])
def test_the_multi_objective_samplers_search_a_list_of_metrics(name):
    cfg = config(name, optuna=QUICK[name] or None, metric=["fid", "recall"])
    assert cfg.search.objectives == ["fid", "recall"]
    run_study(cfg, n_trials=6, directions=("minimize", "maximize"))


def test_cmaes_refuses_choice_keys_naming_them_and_suggesting_samplers_that_model_them():
    message = refusal(sampler="cmaes", space=SPACE)
    assert ("search.sampler cmaes models ranges only: it would draw the choice key(s) model.lambda_identity at "
            "random. Use sampler tpe or gp or nsga2, or search those keys as ranges") in message
    config("cmaes", space=RANGES)   # ranges only: accepted


def test_a_single_objective_sampler_refuses_a_list_of_metrics():
    message = refusal(sampler="cmaes", metric=["fid", "recall"])
    assert ("search.sampler cmaes optimizes one metric, and search.metric is a list ['fid', 'recall']: use one "
            "metric, or sampler tpe or gp or nsga2 for several") in message
    assert [s.name for s in SAMPLERS.values() if not s.multi_objective] == ["cmaes"]


@pytest.mark.parametrize("name", ["gp", "cmaes", "nsga2", "qmc"])
def test_samplers_that_model_only_the_keys_every_trial_has_refuse_when_keys(name):
    message = refusal(sampler=name, space=CONDITIONAL if name != "cmaes" else {
        "model.lr_g": {"loguniform": [2.0e-5, 2.0e-3]},
        "model.lambda_cycle": {"uniform": [2.0, 15.0], "when": {"model.lr_g": 2.0e-4}}})
    if name != "cmaes":   # (cmaes: a `when:` names a choice key, which it refuses already)
        assert (f"search.sampler {name} models only keys that every trial has: it would draw model.lambda_cycle "
                f"(when:) at random. Use sampler tpe or random, or drop the when: conditions") in message
    for accepted in ("tpe", "random"):
        config(accepted, space=CONDITIONAL)


def test_a_sampler_needs_optunas_searcher_and_takes_only_its_own_options():
    assert ("search.sampler is set but search.searcher is random: Optuna's samplers act only with searcher: optuna "
            "(sampler: random is Optuna's, searcher: random is Ray's). Remove search.sampler, or set "
            "search.searcher: optuna") in refusal(sampler="gp", searcher="random")
    assert "search.sampler must be one of tpe, gp, cmaes, nsga2, qmc, random, got 'bayes'" in refusal(sampler="bayes")
    assert ("search.optuna.multivariate acts only with sampler tpe, and this search uses gp: remove "
            "search.optuna.multivariate") in refusal(sampler="gp", optuna={"multivariate": False})
    assert ("search.optuna.n_startup_trials acts only with sampler tpe or gp or cmaes, and this search uses qmc"
            in refusal(sampler="qmc", optuna={"n_startup_trials": 3}))
    assert "search.optuna.population_size acts only with sampler nsga2, and this search uses tpe" in refusal(
        optuna={"population_size": 10})
    assert "search.optuna.population_size must be >= 2, got 1" in refusal(sampler="nsga2",
                                                                           optuna={"population_size": 1})


def test_a_sampler_whose_package_is_missing_is_refused_with_the_pip_command(monkeypatch):
    assert all(not s.missing_packages() for s in SAMPLERS.values()), "the project installs every sampler's packages"
    monkeypatch.setitem(SAMPLERS, "cmaes", replace(SAMPLERS["cmaes"], packages=("cmaes_not_installed",)))
    assert ("search.sampler cmaes needs cmaes_not_installed, not installed here: pip install cmaes_not_installed"
            in refusal(sampler="cmaes"))


def test_the_searchs_description_names_the_sampler_and_what_its_settings_do():
    def searcher(*args, **kwargs):
        return describe_search(config(*args, **kwargs)).split(";")[0]

    assert searcher("tpe", num_samples=24, max_concurrent=4) == (
        "Optuna TPE (seed 0): 6 random start-up trials of 24, multivariate on, constant liar on")
    assert searcher("gp", num_samples=24, seed=3) == "Optuna GP (seed 3): 6 random start-up trials of 24"
    assert searcher("cmaes", num_samples=24) == "Optuna CMA-ES (seed 0): 1 random start-up trial of 24"
    assert searcher("nsga2", num_samples=24) == (
        "Optuna NSGA-II (seed 0): population 50, all 24 trials in its first (random) generation")
    assert searcher("nsga2", num_samples=24, optuna={"population_size": 8}) == "Optuna NSGA-II (seed 0): population 8"
    assert searcher("qmc") == "Optuna QMC (seed 0): scrambled Sobol sequence"
    assert searcher("random") == "Optuna random sampling (seed 0)"
    assert describe_search(config(searcher="random")).startswith("random search (seed 0);")


def test_the_registry_imports_no_optuna():
    code = "import sys, core.sampler_registry; print('optuna' in sys.modules or 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
