"""Every Optuna sampler a search can use (`search.sampler`, with `search.searcher: optuna`), and what
each one can search.

    from core.sampler_registry import SAMPLERS
    SAMPLERS["gp"].optuna_class         # "GPSampler": optuna.samplers.GPSampler
    SAMPLERS["cmaes"].categorical       # False: CMA-ES would draw `choice` keys at random

One place per fact: the config's validation (which spaces and options a sampler takes, what it
needs installed), core.plan's construction of the sampler and its one-line description, and the
README's table all follow this table. The facts were read in Optuna 5.0's own source
(optuna/samplers/): a sampler that cannot model a key draws it with its independent (random)
sampler, with a log line a user rarely reads, so the config refuses such a space instead. It imports
nothing heavier than the standard library, so validating a YAML does not pay for Optuna.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

DEFAULT = "tpe"   # search.sampler left out


@dataclass(frozen=True)
class Sampler:
    name: str                   # search.sampler
    label: str                  # how the search's description names it: "Optuna GP (seed 0): ..."
    optuna_class: str           # optuna.samplers.<optuna_class>
    options: tuple[str, ...]    # the search.optuna keys it takes (core.config.OptunaOptions)
    learns: bool                # proposes from the scores so far (qmc and random never read them)
    multi_objective: bool       # searches a list of metrics (search.metric: [fid, recall])
    categorical: bool           # models `choice` keys
    conditional: bool           # models keys with `when:` (a define-by-run space whose keys come and go)
    packages: tuple[str, ...] = ()   # what it imports beyond Optuna: PyPI names, imported under the same name

    def missing_packages(self) -> list[str]:
        """The packages it needs that are not installed (looked up, not imported: torch takes seconds)."""
        return [p for p in self.packages if importlib.util.find_spec(p) is None]


SAMPLERS: dict[str, Sampler] = {s.name: s for s in (
    # `group` models each set of keys that occur together, so TPE alone handles `when:` keys.
    Sampler("tpe", "TPE", "TPESampler", ("n_startup_trials", "multivariate", "constant_liar"),
            learns=True, multi_objective=True, categorical=True, conditional=True),
    # A Gaussian process fitted with a noise term (deterministic_objective off: a GAN's scores are
    # noisy); it models running trials itself (q-batch expected improvement), so it has no constant
    # liar. Keys outside the intersection of every trial's keys are drawn at random.
    Sampler("gp", "GP", "GPSampler", ("n_startup_trials",),
            learns=True, multi_objective=True, categorical=True, conditional=False, packages=("torch", "scipy")),
    # Ranges only: a CategoricalDistribution is left out of its search space. A space whose
    # dimensions change makes it give up (random sampling) for the trial; one objective only
    # (it raises ValueError on a multi-objective study).
    Sampler("cmaes", "CMA-ES", "CmaEsSampler", ("n_startup_trials",),
            learns=True, multi_objective=False, categorical=False, conditional=False, packages=("cmaes",)),
    # Evolves generations of population_size trials; the first generation is random. Works with one
    # objective too. Crossover acts on the keys every trial has; the others are drawn at random.
    Sampler("nsga2", "NSGA-II", "NSGAIISampler", ("population_size",),
            learns=True, multi_objective=True, categorical=True, conditional=False),
    # A low-discrepancy sequence over the keys of the study's first trial, fixed from then on; it
    # never reads a score, so any number of objectives.
    Sampler("qmc", "QMC", "QMCSampler", (),
            learns=False, multi_objective=True, categorical=True, conditional=False, packages=("scipy",)),
    Sampler("random", "random sampling", "RandomSampler", (),
            learns=False, multi_objective=True, categorical=True, conditional=True),
)}


def that_can(**facts: bool) -> list[str]:
    """The names of the samplers with these facts, e.g. that_can(categorical=True): what an error suggests."""
    return [s.name for s in SAMPLERS.values() if all(getattr(s, k) == v for k, v in facts.items())]
