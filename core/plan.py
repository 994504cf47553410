"""What a search will do, said and checked before it runs: its metric and direction, Optuna's
sampler and its settings, the baseline trial, PBT's interval and fixed keys, the one-line
description, and --dry-run's checks (the data prepared and the family built on it).

No Ray here: `tune.py --dry-run` imports this module, not core.search, so checking a space does
not pay for importing Ray Tune (about half of a dry run; benchmarks/bench_dry_run.py). core.search
uses the same functions to build the searcher and scheduler it runs.
"""

from __future__ import annotations

import torch

from core.config import ExperimentConfig, pbt_interval
from core.data import needs_download, prepare_data
from core.errors import ConfigError
from core.metric_registry import direction
from core.models import get_family
from core.space import baseline_point, is_conditional


def search_metric(cfg: ExperimentConfig) -> str:
    """What the searcher and ASHA compare: the trial's running best of the chosen metric (OptunaSearch
    sees only a trial's last report, and a GAN's FID jumps between evaluations). PBT compares the
    current value instead: it must see a trial that got worse."""
    return cfg.search.metric if cfg.search.scheduler == "pbt" else f"best_{cfg.search.metric}"


def search_mode(cfg: ExperimentConfig) -> str:
    """"min" or "max": the direction of search.metric (core.metric_registry)."""
    return direction(cfg.search.metric)


def sampler_settings(cfg: ExperimentConfig) -> dict:
    """The keyword arguments of the Optuna sampler that search.sampler names (core.sampler_registry),
    but its seed: search.optuna with budget-scaled defaults, each option for the samplers that take it
    (the config refuses the others)."""
    options, sampler = cfg.search.optuna_options, cfg.search.sampler_spec.name
    settings = {}
    if "n_startup_trials" in cfg.search.sampler_spec.options:
        if options.n_startup_trials is not None:
            settings["n_startup_trials"] = options.n_startup_trials
        elif sampler == "cmaes":
            # Optuna's default of 1: CMA-ES starts from the centre of the ranges and learns nothing
            # from random start-up trials.
            settings["n_startup_trials"] = 1
        else:
            # A quarter of the trials, at least 3 and at most Optuna's own default of 10: a long search
            # cut early by ASHA or a budget spends most of its trials on the model, not on random draws
            # (the search benchmark, RESULTS.md: 15 random start-ups of the ~35 trials that fit its budget).
            settings["n_startup_trials"] = min(10, max(3, cfg.search.num_samples // 4))
    if sampler == "tpe":
        liar = options.constant_liar if options.constant_liar is not None else cfg.search.max_concurrent > 1
        # `group`: multivariate TPE over a space whose keys come and go (when: clauses) models each
        # set of keys that occur together.
        settings.update(multivariate=options.multivariate, constant_liar=liar,
                        group=options.multivariate and is_conditional(cfg.search.space))
    elif sampler == "nsga2":
        settings["population_size"] = options.population_size
    elif sampler == "qmc":
        # Unscrambled, a Sobol sequence is the same for every seed: scrambling makes search.seed
        # matter, as for every other sampler (several searcher seeds, e.g. the search benchmark's).
        settings["scramble"] = True
    return settings


def make_sampler(cfg: ExperimentConfig):
    """The Optuna sampler of an Optuna search, seeded with search.seed (core.search.make_searcher
    hands it to core.searchers.ResumableOptunaSearch; racing's InTrialOrderSearch wraps that
    searcher, sampler and all)."""
    import warnings

    import optuna

    cls = getattr(optuna.samplers, cfg.search.sampler_spec.optuna_class)
    with warnings.catch_warnings():   # QMC, and TPE's multivariate, group and constant_liar, are "experimental"
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return cls(seed=cfg.search.seed, **sampler_settings(cfg))


def baseline_points(cfg: ExperimentConfig) -> list[dict]:
    return [baseline_point(cfg)] if cfg.search.baseline and cfg.search.space else []


def describe_search(cfg: ExperimentConfig) -> str:
    """One line saying what the search will do (the run's header and --dry-run print it)."""
    s = cfg.search
    if s.searcher == "optuna":
        searcher = f"Optuna {s.sampler_spec.label} (seed {s.seed})" + _describe_sampler(cfg)
    else:
        searcher = f"random search (seed {s.seed})"
    if s.scheduler == "pbt":
        p = s.pbt_options
        scheduler = (f"PBT every {perturbation_interval(cfg)} epochs: the bottom {p.quantile_fraction:.0%} copy the top "
                     f"{p.quantile_fraction:.0%}, then perturb x0.8/x1.2 or resample (p={p.resample_probability})")
        if architecture_keys(cfg):
            scheduler += f"; {', '.join(architecture_keys(cfg))} copied with the weights, never perturbed"
    elif s.scheduler == "asha":
        scheduler = f"ASHA (grace {min(s.grace_period, cfg.train.epochs)} epochs, keeps 1/{s.reduction_factor} per rung)"
    else:
        scheduler = "FIFO (every trial trains all epochs)"
    verb = {"min": "minimizing", "max": "maximizing"}
    goal = (" and ".join(f"{verb[direction(m)]} best_{m}" for m in s.objectives) + " (Pareto front)"
            if s.objectives else f"{verb[search_mode(cfg)]} {search_metric(cfg)}")
    baseline = "baseline first" if baseline_points(cfg) else "no baseline"
    budget = f"; time budget {s.time_budget}" if s.time_budget is not None else ""
    return (f"{searcher}; {scheduler}; {goal}; {baseline}; {s.max_concurrent} concurrent trials, "
            f"{s.cpus_per_trial} CPU + {s.gpus_per_trial} GPU each; keep {s.keep_checkpoints} best checkpoints "
            f"by {s.metric}{budget}")


def _describe_sampler(cfg: ExperimentConfig) -> str:
    """": 6 random start-up trials of 24, ...": what the sampler's settings mean for this search."""
    s, settings = cfg.search, sampler_settings(cfg)
    parts = []
    if "n_startup_trials" in settings:
        startup = settings["n_startup_trials"]
        parts.append(f"all {s.num_samples} trials random (start-up {startup})" if startup >= s.num_samples
                     else f"{startup} random start-up trial{'s' if startup != 1 else ''} of {s.num_samples}")
    if "multivariate" in settings:
        parts.append(f"multivariate {'on' if settings['multivariate'] else 'off'}"
                     f"{' (grouped: conditional keys)' if settings['group'] else ''}")
        parts.append(f"constant liar {'on' if settings['constant_liar'] else 'off'}")
    if "population_size" in settings:
        size = settings["population_size"]
        parts.append(f"population {size}" + (f", all {s.num_samples} trials in its first (random) generation"
                                             if size >= s.num_samples else ""))
    if "scramble" in settings:
        parts.append("scrambled Sobol sequence")
    return ": " + ", ".join(parts) if parts else ""


def perturbation_interval(cfg: ExperimentConfig) -> int:
    """PBT's interval in epochs (core.config.pbt_interval, which the config's validation uses too)."""
    return pbt_interval(cfg.search, cfg.train)


def architecture_keys(cfg: ExperimentConfig) -> list[str]:
    """The searched keys that fix a trial's network shape (its family's architecture_keys, dotted):
    a PBT trial takes them from the donor whose weights it copies, never mutated."""
    fixed = {f"model.{key}" for key in get_family(cfg.family).architecture_keys}
    return [key for key in cfg.search.space if key in fixed]


def check_family_builds(cfg: ExperimentConfig, prepared) -> None:
    """Build the family on the prepared data, on the CPU: an image size the networks cannot take,
    more scored samples than distinct images, ... become one ConfigError before any trial starts."""
    try:
        get_family(cfg.family)(cfg, prepared, torch.device("cpu"))
    except (ValueError, RuntimeError) as e:
        raise ConfigError(f"The {cfg.family} model cannot be built with this configuration: {e}") from None


def check_experiment(cfg: ExperimentConfig, progress=print) -> str:
    """--dry-run's checks of what the run would refuse before its first trial: the data (prepared
    and cached as the run would, from a Kaggle zip already on disk too, but never downloaded) and
    the family built on it. Raises the run's own ConfigError/DataError; returns a line saying what
    was checked."""
    if needs_download(cfg.data, cfg.cache_path):
        return (f"data ({cfg.data.source}) not checked: it is downloaded when the run starts "
                f"(or ahead of it: python experiments/prepare_data.py --space ...)")
    prepared = prepare_data(cfg.data, cfg.cache_path, progress=progress)
    check_family_builds(cfg, prepared)
    return (f"data and model checked: {prepared.count('train/monet')} Monets, {prepared.count('train/photo')} "
            f"photos, {prepared.count('test/photo')} test photos; the {cfg.family} model builds on them")
