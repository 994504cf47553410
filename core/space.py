"""The searched space: `search.space` in the YAML -> what Ray Tune, Optuna and PBT sample.

    search:
      space:                                   # dotted keys: any field of any section
        model.lr_g: {loguniform: [5.0e-5, 1.0e-3]}
        model.loss: {choice: [wgan-gp, hinge]}
        model.lambda_gp: {uniform: [1.0, 20.0], when: {model.loss: wgan-gp}}   # only where it matters

A key with `when:` is sampled only while the named choice keys take one of the given values;
elsewhere the trial keeps the config's own value and the key is left out of its record (Optuna's
define-by-run space: TPE models only the dimensions that act). Ray's random search samples every key
and `applicable` drops the ones that do not apply, so each trial's record and the trainable agree.

The baseline (`search.baseline`, on by default) is the space's own values for the searched keys
(what its `model:`/`train:` sections say, e.g. the paper defaults of `_base_/cyclegan.yaml`): the
first trial of every search trains it, through Ray Tune's `points_to_evaluate`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

from core.errors import ConfigError

if TYPE_CHECKING:   # annotations only: core.config imports this module to check a config's baseline
    from core.config import ExperimentConfig


@dataclass(frozen=True)
class Dimension:
    key: str                          # dotted key, e.g. model.lr_g
    kind: str                         # loguniform | uniform | int | choice
    args: tuple                       # (low, high), or the choices
    when: tuple[tuple[str, tuple], ...] = ()   # ((other key, allowed values), ...): all must hold

    def applies(self, values: dict[str, Any]) -> bool:
        return all(values.get(other) in allowed for other, allowed in self.when)

    def contains(self, value: Any) -> bool:
        if self.kind == "choice":
            return value in self.args
        low, high = self.args
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int" and float(value) != int(value):
            return False
        return low <= value <= high

    def describe(self) -> str:
        values = ", ".join(map(repr, self.args)) if self.kind == "choice" else f"{self.args[0]:g} .. {self.args[1]:g}"
        condition = " and ".join(f"{k} in ({', '.join(map(str, v))})" for k, v in self.when)
        return f"{self.kind}[{values}]" + (f"  (only when {condition})" if condition else "")


def dimensions(space: dict) -> list[Dimension]:
    """The validated space (core.config checked it), unconditional keys first: a condition only ever
    names unconditional choice keys, so sampling in this order sees every parent's value first."""
    out = []
    for key, spec in space.items():
        (kind, args), = ((k, v) for k, v in spec.items() if k != "when")
        when = tuple((other, tuple(v if isinstance(v, list) else [v])) for other, v in (spec.get("when") or {}).items())
        out.append(Dimension(key, kind, tuple(args), when))
    return sorted(out, key=lambda d: bool(d.when))


def is_conditional(space: dict) -> bool:
    return any(d.when for d in dimensions(space))


def applicable(values: dict[str, Any], space: dict) -> dict[str, Any]:
    """`values` without the searched keys whose `when` does not hold (other keys, such as the seed
    a confirmation run sets, pass through)."""
    by_key = {d.key: d for d in dimensions(space)}
    return {k: v for k, v in values.items() if k not in by_key or by_key[k].applies(values)}


# --- Ray Tune and Optuna ------------------------------------------------------------------------


def ray_param_space(space: dict) -> dict:
    """search.space -> Ray Tune sampling objects under the same dotted keys (random search, PBT)."""
    from ray import tune

    builders = {"loguniform": tune.loguniform, "uniform": tune.uniform,
                "int": lambda low, high: tune.randint(int(low), int(high) + 1),  # inclusive high
                "choice": lambda *choices: tune.choice(list(choices))}
    return {d.key: builders[d.kind](*d.args) for d in dimensions(space)}


def optuna_space(space: dict) -> "OptunaSpace":
    """search.space -> an Optuna define-by-run space (core.searchers): conditional keys are
    suggested only where they apply."""
    return OptunaSpace(space)


class OptunaSpace:
    """A define-by-run function (a class, so Ray can pickle the searcher with it). Choices that Optuna
    cannot store (lists, such as Adam's beta pairs) are suggested by their text and mapped back."""

    def __init__(self, space: dict):
        self.dimensions = dimensions(space)

    def __call__(self, trial) -> dict:
        values: dict[str, Any] = {}
        for d in self.dimensions:
            if not d.applies(values):
                continue
            if d.kind == "choice":
                encoded = {_choice_label(c): c for c in d.args}
                values[d.key] = encoded[trial.suggest_categorical(d.key, list(encoded))]
            elif d.kind == "int":
                values[d.key] = trial.suggest_int(d.key, int(d.args[0]), int(d.args[1]))
            else:
                values[d.key] = trial.suggest_float(d.key, float(d.args[0]), float(d.args[1]),
                                                    log=d.kind == "loguniform")
        return values   # what the trial receives: every key that applies, choices as given


def _choice_label(value: Any):
    """Optuna stores None, bool, int, float and str choices; anything else goes by its text."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else repr(value)


def pbt_mutations(space: dict, fixed: Iterable[str] = ()) -> dict:
    """PBT's hyperparam_mutations from the space: ranges are perturbed (x0.8 / x1.2, or resampled),
    choices resampled. `fixed` (dotted keys: the family's architecture keys) are left out: a trial
    that copies a donor's weights must take the donor's network shape with them, and Ray's exploit
    copies every unmutated value from the donor's config."""
    from ray import tune

    fixed = set(fixed)
    mutations = {}
    for d in dimensions(space):
        if d.key in fixed:
            continue
        if d.kind == "choice":
            mutations[d.key] = list(d.args)
        elif d.kind == "loguniform":
            mutations[d.key] = tune.loguniform(*d.args)
        elif d.kind == "uniform":
            mutations[d.key] = tune.uniform(*d.args)
        else:
            mutations[d.key] = tune.randint(int(d.args[0]), int(d.args[1]) + 1)
    return mutations


# --- The baseline ------------------------------------------------------------------------------


def baseline_point(cfg: ExperimentConfig, check_ranges: bool = True) -> dict[str, Any]:
    """The space's own values of the searched keys (those that apply under them), checked against
    the searched ranges: a baseline the search cannot represent is a ConfigError naming the key.
    (confirm.py skips the check: it retrains the defaults whether or not the search could sample them.)"""
    point = applicable({d.key: _config_value(cfg, d.key) for d in dimensions(cfg.search.space)}, cfg.search.space)
    if not check_ranges:
        return point
    problems = [f"{d.key} = {point[d.key]!r} (the space's own value) is outside the searched {d.describe()}"
                for d in dimensions(cfg.search.space) if d.key in point and not d.contains(point[d.key])]
    if problems:
        raise ConfigError("search.baseline trains the space's own values first, but " + "; ".join(problems)
                          + ". Widen the range, set the value inside it, or set search.baseline: false.")
    return point


def is_baseline(values: dict[str, Any], baseline: dict[str, Any], space: dict) -> bool:
    """Whether a trial's searched values (`values`: its config) are the baseline's, on the keys that
    apply (floats compared to 1e-12 relative)."""
    searched = {k: v for k, v in applicable(values, space).items() if k in space}
    if set(searched) != set(baseline):
        return False
    for key, value in baseline.items():
        other = searched[key]
        if isinstance(value, float) or isinstance(other, float):
            if not (isinstance(other, (int, float)) and math.isclose(float(other), float(value), rel_tol=1e-12)):
                return False
        elif other != value:
            return False
    return True


def _config_value(cfg: ExperimentConfig, dotted: str) -> Any:
    section, _, leaf = dotted.partition(".")
    value = getattr(getattr(cfg, section), leaf)
    return list(value) if isinstance(value, tuple) else value
