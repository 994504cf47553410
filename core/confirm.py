"""Does the search help? Retrain its winners and the defaults with fresh seeds, and compare.

    plan = make_plan(exp_dir, cfg, top=3, n_seeds=3)   # baseline + the leaderboard's top 3, seeds 1000-1002
    grid = run_confirm(exp_dir, cfg, plan)               # Ray Tune: a grid of candidate x seed, FIFO, full epochs
    table = confirm_table(seed_results(grid, cfg, plan), plan, cfg.search.metric)
    print(format_confirm_table(table, cfg.search.metric))
    best_confirmed(table, cfg.search.metric)              # the row to use: the lowest mean final
    plan = make_holdout_plan(exp_dir, cfg, n_seeds=3)    # it and the baseline on new seeds (--holdout)
    grid = run_confirm(exp_dir, cfg, plan, run=HOLDOUT_DIR)

Why: GAN training is noisy, and the minimum over many noisy trials is biased low (the winner's
curse), so a leaderboard's best can be selection noise. Retraining each candidate with seeds the
search never used gives an unbiased estimate of what the configuration itself is worth. The best
of several such estimates is biased low again (less: a few candidates, several seeds each), so
the one picked is measured once more on seeds neither run used (`make_holdout_plan`).

The candidates are the baseline (`baseline_values`: core.space.baseline_point, the experiment's own
values for the searched keys that apply under their `when:` conditions, as the search's baseline
trial trained them) and the top-k rows of `leaderboard.csv` that reached an evaluation
(their exact values read from the trial's `params.json`; a row whose values equal the baseline's,
such as the search's own baseline trial, is not retrained twice). Seeds are `train.seed` values
from FIRST_FRESH_SEED up that no search trial used. The run is a Ray Tune experiment named
`confirm` inside the experiment directory, trained by core.trainable's trainable with the
experiment's resources and checkpoint policy; `confirm/plan.yaml` records the candidates and seeds.

Which score decides: each seed's FINAL evaluation (the end of its trained schedule). Its best
evaluation is shown beside it, but it is picked by its score on the very draw of images it is then
reported with, so it is biased low by that pick (the quickstart's winner: best 0.68, final 0.99).
The final is chosen by no draw. (Re-scoring each kept best checkpoint on fresh draws,
`evaluation_noise`, would also be unbiased, but costs an evaluation per seed and loads every
checkpoint; the final costs nothing.)

Statistics, per candidate, against the baseline on the seeds BOTH completed (paired by train.seed):

- mean and sd over its complete seeds of the best and of the final metric, and how many seeds failed;
- p = the paired two-sided t-test of the per-seed finals (scipy's ttest_rel). Every candidate trains
  on the same seeds, and a seed fixes the initial weights and the data order, so outcomes correlate
  by seed: measured on the tiny CycleGAN (8 seeds, 2 epochs), 0.999 between the smoke search's winner
  and the defaults and 0.85 against a far configuration (5x lr_g, lr_d / 4, no identity loss), and
  the paired 95% interval was 20x and 2.3x narrower than Welch's. Pairing loses degrees of freedom
  (2 instead of about 4 with 3 seeds a side), which costs more than it gains only below a
  correlation of about 0.6;
- the estimate: the ratio mean final / the baseline's mean final with its 95% Fieller interval
  (`fieller_interval`, with the pairs' covariance) when the metric is always positive
  (core.metric_registry: FID, MiFID) and that interval is bounded; otherwise the difference of the
  means with its paired t interval, and the table says "difference". A metric that can be zero or
  negative (KID) makes a ratio meaningless (two negative means reverse it: 3x "worse" for a lower
  KID), and Fieller's set is unbounded (two rays, or the whole line) when the baseline's mean is
  within its noise of 0, as FID's often is with 2 seeds.
- p_holm: p Holm-corrected over the candidates compared (`holm`).

Verdict rules (a seed that did not train every epoch, diverged, collapsed or crashed, counts in
`failed` and is listed in `incomplete`):

- "too few seeds": fewer than 2 seeds completed by both the candidate and the baseline;
- "better than the defaults" / "worse": p < 0.05, by the sign of the difference;
- "fails more often than the defaults": it would be "better", but a larger share of its seeds
  failed than of the baseline's (its survivors alone would be its lucky runs);
- "not distinguishable": otherwise.
Either interval excludes no change (1, or 0) exactly when p < 0.05: at r = 1 Fieller's inequality
is the paired t-test's, with the same t quantile, so the verdict and the p-value never disagree.

The configuration to use (`best_confirmed`, the "Best confirmed:" line) is the candidate with the
lowest mean final: the lowest of k noisy means, so its own p is too small. It carries the
Holm-corrected verdict (`verdict_holm`): Holm controls the chance of any false "better" among the k
at 5% with no assumption about how they depend on each other, and needs nothing but the k p-values
(simulated under the null, 3 candidates, 3 seeds: the pick's own verdict says "better" 4.4% of the
time, Holm's 1.3%, against 2.5% for one candidate named in advance). The line also says that
`--holdout` (the pick and the baseline retrained on new seeds, one candidate, no correction needed)
is the verdict to ship. The winner's "Confirmation:" line keeps its own verdict: the search named it
before these seeds were drawn.

Noise (how to read the `within noise` column):

- seed noise: the sd of one run's best metric across seeds, pooled over the candidates (each
  candidate's sd, weighted by its seeds - 1). What retraining the same configuration changes.
- evaluation noise: the sd of the metric when one checkpoint is scored on different sample draws
  (`evaluation_noise`). What re-scoring the same weights changes.
A candidate whose difference from the baseline's mean best is below the evaluation noise is marked
"below evaluation noise" (the scores cannot tell them apart at all), below the seed noise "below
seed noise" (smaller than what retraining once changes: a user retraining it once is about as
likely to see it as not). The verdict already accounts for seed noise over the seeds run; the mark
says whether a gain is big enough to matter in one run.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
import yaml

from core.config import ExperimentConfig, config_to_dict
from core.errors import ConfirmError
from core.metric_registry import METRICS, direction, ratio_is_meaningful

CONFIRM_DIR = "confirm"                 # the Ray experiment inside the search's experiment directory
HOLDOUT_DIR = "confirm-holdout"         # ... and the best confirmed candidate retrained on new seeds (--holdout)
PLAN_FILE = "plan.yaml"                 # confirm/plan.yaml: candidates and seeds, checked on --resume
TABLE_FILE = "confirm.csv"
TEXT_FILE = "confirm.txt"               # the printed table and noise lines
BASELINE = "baseline"
FIRST_FRESH_SEED = 1000                 # fresh seeds: the first integers from here no search trial used
CONFIDENCE = 0.95
LEADERBOARD_LINE = "Confirmation:"      # the line of leaderboard.txt that confirm.py writes (and replaces)
BEST_LINE = "Best confirmed:"           # ... the one naming the candidate to use
HOLDOUT_LINE = "Held out:"              # ... and the one confirm.py --holdout writes
SHIP_LINE = "Ship:"                      # what confirm.py --holdout ends with: the configuration to use
NOISE_LINE = "Noise:"                   # the line of leaderboard.txt naming the noise levels (confirm.py)

BETTER, SAME, WORSE, TOO_FEW = "better than the defaults", "not distinguishable", "worse", "too few seeds"
FAILS_MORE = "fails more often than the defaults"   # would be "better", but more of its seeds failed
# What the leaderboard's lines read from a confirm.csv (with the metric's final_/best_ columns).
TABLE_COLUMNS = ("candidate", "trial", "seeds", "n_seeds", "failed", "estimate", "low", "high", "p_value", "verdict",
                 "within_noise", "seed_noise_sd", "eval_noise_sd")
RATIO, DIFFERENCE = "ratio", "difference"           # how a candidate's mean is set against the baseline's
BELOW_EVAL_NOISE, BELOW_SEED_NOISE = "below evaluation noise", "below seed noise"


# --- What to retrain -----------------------------------------------------------------------------


@dataclass
class ConfirmPlan:
    candidates: dict[str, dict]   # label ("baseline", "top 1", ...) -> searched values, dotted keys
    sources: dict[str, str]       # label -> the search trial it was taken from ("" for the baseline)
    seeds: list[int]              # train.seed of each retraining; none used by the search

    def save(self, path: Path) -> None:
        path.write_text(yaml.safe_dump(asdict(self), sort_keys=False))

    @classmethod
    def load(cls, path: Path) -> "ConfirmPlan":
        return cls(**yaml.safe_load(path.read_text()))


def make_plan(exp_dir: Path, cfg: ExperimentConfig, top: int = 3, n_seeds: int = 3) -> ConfirmPlan:
    """The baseline and the leaderboard's `top` best configurations, and `n_seeds` fresh seeds."""
    import pandas as pd

    if top < 1 or n_seeds < 2:
        raise ConfirmError(f"--top must be >= 1 and --seeds >= 2 (a spread needs two seeds), got {top} and {n_seeds}")
    if direction(cfg.search.metric) != "min":
        raise ConfirmError(f"confirm.py compares metrics where lower is better (fid, mifid, kid); {exp_dir} was "
                           f"searched on {cfg.search.metric}. Confirm a search whose (first) search.metric is one of those.")
    board_path = exp_dir / "leaderboard.csv"
    if not board_path.is_file():
        raise ConfirmError(f"{board_path} does not exist: confirm a finished search (python experiments/tune.py "
                           f"writes it), or finish this one with tune.py --resume")
    board = pd.read_csv(board_path)
    metric = f"best_{cfg.search.metric}"
    evaluated = board[board[metric].notna()] if metric in board else board.iloc[0:0]
    if evaluated.empty:
        raise ConfirmError(f"No trial in {board_path} reached an evaluation: there is no winner to confirm")

    candidates, sources = {BASELINE: baseline_values(cfg)}, {BASELINE: ""}
    for trial in evaluated["trial"]:
        if len(candidates) > top:
            break
        values = searched_values(_trial_params(exp_dir, trial), cfg)
        if values not in candidates.values():   # the search's baseline trial, or a repeated setting
            label = f"top {len(candidates)}"
            candidates[label], sources[label] = values, trial
    return ConfirmPlan(candidates, sources, _fresh_seeds(_search_seeds(exp_dir, cfg, board), n_seeds))


def baseline_values(cfg: ExperimentConfig) -> dict:
    """The baseline a confirmation retrains: core.space.baseline_point (the experiment's own values
    of the searched keys that apply under its `when:` conditions), the search's own baseline trial."""
    from core.space import baseline_point

    return searched_values(baseline_point(cfg, check_ranges=False), cfg)


def searched_values(config: dict, cfg: ExperimentConfig) -> dict:
    """A trial's values of the searched keys that apply under them (`when:`), without train.seed:
    what a confirmation varies, so never part of a candidate. (A random-search trial's record also
    holds values for keys that do not apply.)"""
    from core.space import applicable

    space = cfg.search.space
    return {k: v for k, v in applicable(config, space).items() if k in space and k != "train.seed"}


def make_holdout_plan(exp_dir: Path, cfg: ExperimentConfig, n_seeds: int = 3) -> ConfirmPlan:
    """The baseline and the confirmation's best candidate (best_confirmed), on `n_seeds` fresh seeds
    that neither the search nor the confirmation used: picked as the lowest of several means on
    the confirmation's seeds, the pick's ratio there is biased low; on new seeds it is not."""
    import pandas as pd

    if n_seeds < 2:
        raise ConfirmError(f"--seeds must be >= 2 (a spread needs two seeds), got {n_seeds}")
    confirm_path = exp_dir / CONFIRM_DIR
    raced = _raced_incumbent(exp_dir, cfg)
    if raced is not None and not (confirm_path / TABLE_FILE).is_file():
        return raced(n_seeds)
    if not (confirm_path / TABLE_FILE).is_file() or not (confirm_path / PLAN_FILE).is_file():
        raise ConfirmError(f"{confirm_path / TABLE_FILE} does not exist: --holdout retrains what a finished "
                           f"confirmation picked; run python experiments/confirm.py {exp_dir} first")
    try:
        confirmed = ConfirmPlan.load(confirm_path / PLAN_FILE)
        pick = best_confirmed(pd.read_csv(confirm_path / TABLE_FILE, keep_default_na=False, na_values=[""]),
                              cfg.search.metric)
        known = pick is None or pick["candidate"] in confirmed.candidates
    except (ValueError, KeyError, TypeError, yaml.YAMLError) as e:   # (pandas' ParserError is a ValueError)
        known, pick = False, e
    if not known:
        raise ConfirmError(f"{confirm_path / TABLE_FILE} and {PLAN_FILE} are damaged or do not belong together "
                           f"({pick}): rerun the confirmation (delete {confirm_path} and run confirm.py) before --holdout")
    if pick is None:
        raise ConfirmError(f"No candidate in {confirm_path / TABLE_FILE} has 2 or more complete seeds: there is no "
                           f"best confirmed configuration to hold out (rerun confirm.py with more --seeds)")
    label = pick["candidate"]
    board = pd.read_csv(exp_dir / "leaderboard.csv")
    used = _search_seeds(exp_dir, cfg, board) | set(confirmed.seeds)
    return ConfirmPlan({BASELINE: confirmed.candidates[BASELINE], label: confirmed.candidates[label]},
                       {BASELINE: "", label: confirmed.sources[label]}, _fresh_seeds(used, n_seeds))


def _raced_incumbent(exp_dir: Path, cfg: ExperimentConfig):
    """A raced search (search.racing) has its pick already, decided on several seeds: the
    leaderboard's incumbent. Returns a plan maker for it and the baseline on fresh seeds (never the
    search's own, racing seeds included), or None when the search did not race. A search whose
    racing found no configuration better than the defaults has nothing to hold out: ConfirmError."""
    import pandas as pd

    board_path = exp_dir / "leaderboard.csv"
    if cfg.search.racing_options is None or not board_path.is_file():
        return None
    board = pd.read_csv(board_path)
    if "incumbent" not in board:
        return None
    picked = board[board["incumbent"].astype(bool)]
    if picked.empty:
        raise ConfirmError(f"The raced search in {exp_dir} found no configuration better than the defaults on the "
                           f"seeds it shared with them (leaderboard.txt's best: line): there is nothing to hold out")
    trial = picked.iloc[0]["configuration"]
    label = "top 1"
    values = searched_values(_trial_params(exp_dir, trial), cfg)
    return lambda n_seeds: ConfirmPlan({BASELINE: baseline_values(cfg), label: values}, {BASELINE: "", label: trial},
                                       _fresh_seeds(_search_seeds(exp_dir, cfg, board), n_seeds))


def search_seeds(exp_dir: Path, cfg: ExperimentConfig) -> set:
    """The train.seed values the search's trials used (racing runs' included)."""
    import pandas as pd

    return _search_seeds(exp_dir, cfg, pd.read_csv(exp_dir / "leaderboard.csv"))


def _search_seeds(exp_dir: Path, cfg: ExperimentConfig, board) -> set:
    """The train.seed values the search's trials used: experiment.yaml's, unless they searched it."""
    seeds = {_trial_params(exp_dir, trial).get("train.seed") for trial in board["trial"]
             if (exp_dir / trial / "params.json").is_file()}
    return {cfg.train.seed} | (seeds - {None})


def _fresh_seeds(used: set, n: int) -> list[int]:
    """The first n integers from FIRST_FRESH_SEED up that are not in `used`."""
    seeds, seed = [], FIRST_FRESH_SEED
    while len(seeds) < n:
        if seed not in used:
            seeds.append(seed)
        seed += 1
    return seeds


def _trial_params(exp_dir: Path, trial: str) -> dict:
    """The values Ray gave a search trial (its params.json: exact types, no CSV round trip)."""
    path = exp_dir / trial / "params.json"
    if not path.is_file():
        raise ConfirmError(f"{path} is missing: the leaderboard names trial {trial} but its directory has no "
                           f"params.json (was the experiment directory copied partially?)")
    return json.loads(path.read_text())


# --- Retraining: a Ray Tune grid of candidate x seed ---------------------------------------------


def confirm_trainable(config: dict, *, candidates: dict[str, dict], **bound) -> None:
    """Ray Tune trainable: `config` = {"candidate": label, "train.seed": seed}; trains the
    candidate's values with that seed through core.trainable.tune_trainable (`bound`: its
    experiment, prepared_root, reference_path and shared)."""
    from core.trainable import tune_trainable

    tune_trainable({**candidates[config["candidate"]], "train.seed": config["train.seed"]}, **bound)


def run_confirm(exp_dir: Path, cfg: ExperimentConfig, plan: ConfirmPlan, *, run: str = CONFIRM_DIR,
                resume: bool = False, address: str | None = None, verbose: bool = False, progress=print):
    """Retrain every candidate with every seed (or continue that run) as the Ray Tune experiment
    `exp_dir/<run>` (CONFIRM_DIR, or HOLDOUT_DIR); returns its ResultGrid.

    Same driver as the search (core.driver: lock, preparation, resume repair, clean-up), trainable,
    resources, concurrency, checkpoint policy and retries, but FIFO (every seed trains all
    train.epochs) and no searcher: the grid is the plan."""
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from core.cluster import Storage
    from core.driver import tune_driver

    exp_dir = Path(os.path.abspath(exp_dir))
    confirm_path = exp_dir / run
    if resume:
        _check_resumable(confirm_path, plan)
    elif confirm_path.exists() and any(confirm_path.iterdir()):
        raise ConfirmError(f"{confirm_path} already exists: continue it with --resume, or delete it to start over")
    with tune_driver(cfg, Storage.parse(exp_dir), str(confirm_path), confirm_path, resume=resume, address=address,
                     what=f"The confirmation of {exp_dir.name}", progress=progress, verbose=verbose) as driver:
        if not resume:
            plan.save(confirm_path / PLAN_FILE)
        trainable = driver.trainable(confirm_trainable, candidates=plan.candidates,
                                     experiment=config_to_dict(cfg), shared=None)
        if resume:   # (a restored run keeps its own RunConfig, but this driver's console)
            tuner = driver.restored(tune.Tuner.restore(str(confirm_path), trainable=trainable,
                                                       resume_unfinished=True, resume_errored=True))
        else:
            tuner = tune.Tuner(
                trainable, run_config=driver.run_config(run, mode="min"),
                param_space={"candidate": tune.grid_search(list(plan.candidates)),
                             "train.seed": tune.grid_search(plan.seeds)},
                tune_config=tune.TuneConfig(scheduler=FIFOScheduler(), num_samples=1,
                                            max_concurrent_trials=cfg.search.max_concurrent,
                                            reuse_actors=True, **driver.trial_names()))
        return tuner.fit()


def _check_resumable(confirm_path: Path, plan: ConfirmPlan) -> None:
    from ray import tune

    if not tune.Tuner.can_restore(str(confirm_path)) or not (confirm_path / PLAN_FILE).is_file():
        raise ConfirmError(f"Nothing to resume in {confirm_path}: run confirm.py without --resume to start it")
    saved = ConfirmPlan.load(confirm_path / PLAN_FILE)
    changed = [name for name in ("candidates", "seeds") if getattr(saved, name) != getattr(plan, name)]
    if changed:
        raise ConfirmError(f"The {' and the '.join(changed)} differ from those {confirm_path} started with "
                           f"(seeds {saved.seeds}, candidates {', '.join(saved.candidates)}): resume with the "
                           f"original --seeds (and --top, for a confirmation), or delete {confirm_path} to start over")


# --- Results per seed ----------------------------------------------------------------------------


@dataclass
class SeedResult:
    candidate: str        # the plan's label
    seed: int             # train.seed
    trial: str            # the confirm trial's directory name
    status: str           # core.results.TrialStatus value
    best: float           # the lowest search metric over its evaluations (NaN if none)
    final: float          # the search metric at its last evaluation (NaN if none)
    checkpoint: str | None   # its best intact kept checkpoint


def seed_results(grid, cfg: ExperimentConfig, plan: ConfirmPlan) -> list[SeedResult]:
    """One SeedResult per confirm trial, from Ray's records (each evaluation's own metric).

    Ray keeps a trial's configuration with its reports, so a trial that failed before its first
    one (its worker died before it ran) has none: such trials stand for the runs of `plan` that no
    record names, each failed (`error`), so they count against their candidate as any failure."""
    from core.results import TrialStatus, best_intact_checkpoint, trial_status

    metric = cfg.search.metric
    out, unstarted = [], []
    for result in grid:
        if result.config is None:
            unstarted.append(Path(result.path).name)
            continue
        history = result.metrics_dataframe
        scores = history[metric].dropna() if history is not None and metric in history else []
        status = trial_status(result.metrics, result.error is not None, cfg.train.epochs)
        out.append(SeedResult(candidate=result.config["candidate"], seed=int(result.config["train.seed"]),
                              trial=Path(result.path).name, status=status.value,
                              best=float(scores.min()) if len(scores) else math.nan,
                              final=float(scores.iloc[-1]) if len(scores) else math.nan,
                              checkpoint=best_intact_checkpoint(result, metric) if len(scores) else None))
    recorded = {(r.candidate, r.seed) for r in out}
    unnamed = [(label, seed) for label in plan.candidates for seed in plan.seeds if (label, seed) not in recorded]
    for label, seed in unnamed[:len(unstarted)]:
        out.append(SeedResult(candidate=label, seed=seed, trial=f"one of {', '.join(unstarted)}",
                              status=TrialStatus.ERROR.value, best=math.nan, final=math.nan, checkpoint=None))
    return sorted(out, key=lambda r: (r.candidate, r.seed))


# --- Statistics ----------------------------------------------------------------------------------


@dataclass
class Comparison:
    scale: str            # RATIO: mean(values) / mean(baseline) | DIFFERENCE: mean(values) - mean(baseline)
    estimate: float       # the ratio or the difference of the means over the paired seeds
    low: float            # its CONFIDENCE interval (paired Fieller for a ratio, paired t for a difference);
    high: float           #   NaN with too few seeds
    p_value: float        # paired two-sided t-test of the per-seed scores (scipy ttest_rel); NaN with too few
    n_pairs: int          # seeds both sides completed: what is compared
    verdict: str          # BETTER | SAME | WORSE | TOO_FEW (FAILS_MORE is confirm_table's, from the failures)


def compare_to_baseline(values: Iterable[float], baseline: Iterable[float], ratio: bool = True,
                        confidence: float = CONFIDENCE) -> Comparison:
    """Compare a candidate's per-seed scores with the baseline's on the same seeds (values[i] and
    baseline[i] are one seed's; lower is better): the paired t-test decides, and the estimate is
    the ratio of the means with its Fieller interval when `ratio` and the interval is bounded,
    else the difference of the means with its t interval. Either interval excludes no change
    (1, or 0) exactly when p < 1 - confidence (module docstring)."""
    from scipy import stats

    x, y = np.asarray(list(values), dtype=float), np.asarray(list(baseline), dtype=float)
    if len(x) != len(y):
        raise ValueError(f"compare_to_baseline pairs scores by seed: got {len(x)} values and {len(y)} baseline values")
    n, difference = len(x), x - y
    if n < 2:
        estimate = x.mean() / y.mean() if ratio and n else difference.mean() if n else math.nan
        return Comparison(RATIO if ratio else DIFFERENCE, float(estimate), math.nan, math.nan, math.nan, n, TOO_FEW)
    alpha = 1 - confidence
    t_crit = stats.t.ppf(1 - alpha / 2, n - 1)
    mean = float(difference.mean())
    if difference.var() == 0:   # every seed changed by the same amount: the difference is exact
        p_value = 0.0 if mean != 0 else 1.0
    else:
        with warnings.catch_warnings():   # differences that agree to rounding are near-exact, not "unreliable"
            warnings.filterwarnings("ignore", "Precision loss occurred", RuntimeWarning)
            p_value = float(stats.ttest_rel(x, y).pvalue)
    verdict = SAME if p_value >= alpha else BETTER if mean < 0 else WORSE
    if ratio:
        covariance = np.cov(x, y, ddof=1) / n   # of the two means (paired seeds)
        interval = fieller_interval(x.mean(), covariance[0, 0], y.mean(), covariance[1, 1], t_crit, covariance[0, 1])
        if interval is not None:
            return Comparison(RATIO, float(x.mean() / y.mean()), *interval, p_value, n, verdict)
    half_width = t_crit * difference.std(ddof=1) / math.sqrt(n)   # the paired t interval (ttest_rel's own)
    return Comparison(DIFFERENCE, mean, mean - half_width, mean + half_width, p_value, n, verdict)


def fieller_interval(mean_x: float, var_x: float, mean_y: float, var_y: float, t: float,
                     cov_xy: float = 0.0) -> tuple[float, float] | None:
    """Fieller's confidence set for mean_x / mean_y, given the means' squared standard errors
    var_x, var_y and their covariance cov_xy (paired seeds): the ratios r with
    (mean_x - r mean_y)^2 <= t^2 (var_x - 2 r cov_xy + r^2 var_y), a quadratic a r^2 + b r + c <= 0.
    It is an interval when mean_y is clearly away from 0 (a > 0); otherwise it is two rays
    (-inf, r1] u [r2, inf) or the whole line, which no ratio reads well: None, and the caller
    compares differences. At r = 1 the inequality is the paired t-test's |t| <= t, so an interval
    excludes 1 exactly when the test's p < alpha."""
    a = mean_y ** 2 - t ** 2 * var_y
    b = -2 * mean_x * mean_y + 2 * t ** 2 * cov_xy
    c = mean_x ** 2 - t ** 2 * var_x
    if a <= 0:
        return None
    # a > 0 and the quadratic is <= 0 at r = mean_x / mean_y, so there are two real roots.
    root = math.sqrt(max(b * b - 4 * a * c, 0.0))
    return (-b - root) / (2 * a), (-b + root) / (2 * a)


def holm(p_values: Iterable[float]) -> list[float]:
    """Holm's step-down adjusted p-values (in the given order): a family of k tests, each rejected
    at adjusted p < alpha, makes any false rejection at most alpha likely. (scipy has no Holm.)"""
    p = list(p_values)
    adjusted, running = [math.nan] * len(p), 0.0
    for rank, i in enumerate(sorted(range(len(p)), key=lambda i: p[i])):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))   # never below a smaller p's
        adjusted[i] = running
    return adjusted


def pooled_sd(groups: Iterable[Iterable[float]]) -> float:
    """The sd within groups, pooled: sqrt(sum (n_i - 1) s_i^2 / sum (n_i - 1)); groups of one add nothing."""
    squares, dof = 0.0, 0
    for group in groups:
        g = np.asarray(list(group), dtype=float)
        if len(g) >= 2:
            squares += g.var(ddof=1) * (len(g) - 1)
            dof += len(g) - 1
    return math.sqrt(squares / dof) if dof else math.nan


def noise_mark(difference: float, seed_sd: float, eval_sd: float | None) -> str:
    """BELOW_EVAL_NOISE / BELOW_SEED_NOISE / "" for a difference of mean bests (module docstring)."""
    if eval_sd is not None and abs(difference) < eval_sd:
        return BELOW_EVAL_NOISE
    if not math.isnan(seed_sd) and abs(difference) < seed_sd:
        return BELOW_SEED_NOISE
    return ""


# --- The table -----------------------------------------------------------------------------------


def confirm_table(results: list[SeedResult], plan: ConfirmPlan, metric: str, eval_sd: float | None = None):
    """One row per candidate, the baseline first: its values, seeds, failures, mean +- sd of the
    best and final metric over its complete seeds, the comparison of its final scores with the
    baseline's on the seeds both completed (raw, and Holm-corrected over the candidates) and the
    noise mark."""
    import pandas as pd

    runs = {label: [r for r in results if r.candidate == label] for label in plan.candidates}
    complete = {label: [r for r in runs[label] if r.status == "completed"] for label in plan.candidates}
    failure_rate = {label: (len(runs[label]) - len(complete[label])) / len(runs[label]) if runs[label] else 0.0
                    for label in plan.candidates}
    seed_sd = pooled_sd([r.best for r in done] for done in complete.values())
    baseline_finals = {r.seed: r.final for r in complete[BASELINE]}
    baseline_best = _mean([r.best for r in complete[BASELINE]])
    rows = []
    for label, values in plan.candidates.items():
        done = complete[label]
        bests, finals = [r.best for r in done], [r.final for r in done]
        row = {"candidate": label, "trial": plan.sources[label], **values,
               "n_seeds": len(done), "seeds": " ".join(str(r.seed) for r in done),
               "failed": f"{len(runs[label]) - len(done)}/{len(runs[label])}",
               "incomplete": ", ".join(f"seed {r.seed} {r.status}" for r in runs[label] if r.status != "completed"),
               f"best_{metric}_mean": _mean(bests), f"best_{metric}_sd": _sd(bests),
               f"final_{metric}_mean": _mean(finals), f"final_{metric}_sd": _sd(finals),
               f"best_{metric}_per_seed": " ".join(f"{b:.6g}" for b in bests),
               f"final_{metric}_per_seed": " ".join(f"{f:.6g}" for f in finals)}
        if label == BASELINE:
            row.update(compared="", estimate=math.nan, low=math.nan, high=math.nan, n_paired=len(done),
                       p_value=math.nan, verdict=BASELINE, within_noise="")
        else:
            paired = [r for r in done if r.seed in baseline_finals]
            c = compare_to_baseline([r.final for r in paired], [baseline_finals[r.seed] for r in paired],
                                    ratio=ratio_is_meaningful(metric))
            row.update(compared=c.scale, estimate=c.estimate, low=c.low, high=c.high, n_paired=c.n_pairs,
                       p_value=c.p_value, verdict=_unless_it_fails_more(c.verdict, failure_rate, label),
                       within_noise=noise_mark(_mean(bests) - baseline_best, seed_sd, eval_sd))
        row.update(seed_noise_sd=seed_sd, eval_noise_sd=math.nan if eval_sd is None else eval_sd)
        rows.append(row)
    table = pd.DataFrame(rows)
    # The same test for every candidate compared, Holm-corrected over them: what the pick of the
    # lowest of them (best_confirmed) can claim.
    rated = (table["candidate"] != BASELINE) & (table["verdict"] != TOO_FEW)
    table["p_holm"], table["verdict_holm"] = math.nan, table["verdict"]
    table.loc[rated, "p_holm"] = holm(table.loc[rated, "p_value"])
    # Holm's p is never below the raw one, so a candidate it still rejects keeps its own verdict.
    table.loc[rated, "verdict_holm"] = table.loc[rated, "verdict"].where(table.loc[rated, "p_holm"] < 1 - CONFIDENCE, SAME)
    return table


def _unless_it_fails_more(said: str, failure_rate: dict[str, float], label: str) -> str:
    """A candidate whose seeds fail (diverge, collapse, crash) more often than the baseline's is
    never "better": its complete seeds alone would judge only its lucky runs."""
    return FAILS_MORE if said == BETTER and failure_rate[label] > failure_rate[BASELINE] else said


def format_confirm_table(table, metric: str) -> str:
    """The table as printed: values, seeds, failures, mean +- sd of best and final, the final's
    ratio or difference to the defaults [95% CI], p (paired t; Holm), verdicts, noise mark."""
    import pandas as pd

    keys = [c for c in table.columns if "." in c]   # the searched dotted keys
    shown = pd.DataFrame({
        "candidate": table["candidate"], "trial": table["trial"],
        **{key: table[key].map(_num if table[key].dtype.kind == "f" else str) for key in keys},
        "seeds": table["seeds"], "failed": table["failed"],
        f"best {metric}": [f"{_num(m)} ± {_num(s)}" for m, s in zip(table[f"best_{metric}_mean"], table[f"best_{metric}_sd"])],
        f"final {metric}": [f"{_num(m)} ± {_num(s)}" for m, s in zip(table[f"final_{metric}_mean"], table[f"final_{metric}_sd"])],
        f"final {metric} vs defaults [95% CI]": ["" if row.candidate == BASELINE else _estimate(row) for row in table.itertuples()],
        "p": table["p_value"].map(_num), "verdict": table["verdict"],
        "p Holm": table["p_holm"].map(_num), "verdict Holm": table["verdict_holm"].where(table["candidate"] != BASELINE, ""),
        "within noise": table["within_noise"],
    })
    if table["incomplete"].astype(bool).any():
        shown["incomplete"] = table["incomplete"]
    return shown.to_string(index=False)


def table_title(metric: str) -> str:
    """What the table's comparison columns are, for the line above it."""
    label = METRICS[metric].label
    return (f"each seed's final {label} decides (lower is better; best {label} shown beside it); paired t-test on "
            f"the seeds both the candidate and the defaults completed; 'vs defaults' is a ratio of means, or a "
            f"difference where a ratio is not meaningful; Holm: corrected over the candidates compared")


def _num(v) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"


def _estimate(row) -> str:
    """'0.82x [0.7, 0.95]' for a ratio, 'difference -0.002 [-0.003, -0.001]' for a difference."""
    if not row.compared:
        return ""
    interval = f"[{_num(row.low)}, {_num(row.high)}]"
    return f"{_num(row.estimate)}x {interval}" if row.compared == RATIO else f"difference {_num(row.estimate)} {interval}"


def noise_lines(table, metric: str, eval_noise: "EvaluationNoise | None") -> list[str]:
    seed_sd = table["seed_noise_sd"].iloc[0]
    lines = [f"Seed noise: sd {seed_sd:.4g} of one run's best {metric} across seeds (pooled over "
             f"{len(table)} configurations): what retraining the same configuration changes."]
    if eval_noise is not None:
        lines.append(f"Evaluation noise: sd {eval_noise.sd:.4g} of {metric} over {len(eval_noise.values)} draws of "
                     f"{eval_noise.samples} images ({eval_noise.what}) of one checkpoint ({eval_noise.checkpoint}): "
                     f"what re-scoring the same weights changes.")
    return lines


OUTCOMES = {BETTER: "confirmed: better than the defaults", WORSE: "not confirmed: worse than the defaults",
            SAME: "not confirmed: not distinguishable from the defaults",
            FAILS_MORE: "not confirmed: its seeds fail more often than the defaults'"}


def confirmation_line(table, metric: str, csv_path: Path) -> str:
    """The leaderboard's one-line summary: was the winner (top 1) confirmed against the defaults?
    (The search named it before these seeds were drawn: its own verdict needs no correction.)"""
    base = table[table["candidate"] == BASELINE].iloc[0]
    tops = table[table["candidate"] == "top 1"]
    if tops.empty:
        return f"{LEADERBOARD_LINE} no trial other than the defaults to confirm ({csv_path})"
    top = tops.iloc[0]
    if top["verdict"] == TOO_FEW:
        return f"{LEADERBOARD_LINE} the winner ({top['trial']}) is not confirmed: {_too_few(top, base, csv_path)}"
    mark = top["within_noise"]   # (read back from confirm.csv: NaN where confirm.py wrote no mark)
    noise = f", {mark}" if isinstance(mark, str) and mark else ""
    return (f"{LEADERBOARD_LINE} the winner ({top['trial']}) retrained on seeds {top['seeds']}: "
            f"{_against_defaults(top, base, metric)}: {OUTCOMES[top['verdict']]}{noise} ({csv_path})")


def _against_defaults(row, base, metric: str) -> str:
    """'final fid m ± sd against the defaults' m ± sd on seeds ..., 0.8x [95% CI] on the n seeds both
    completed, paired p=..., failed k/n against k/n (best fid m against m)' of a table row."""
    return (f"final {metric} {row[f'final_{metric}_mean']:.4g} ± {row[f'final_{metric}_sd']:.4g} against the "
            f"defaults' {base[f'final_{metric}_mean']:.4g} ± {base[f'final_{metric}_sd']:.4g} on seeds {base['seeds']}, "
            f"{_estimate(row)} on the {row['n_paired']} seeds both completed, paired p={row['p_value']:.2g}, "
            f"failed {row['failed']} against {base['failed']} "
            f"(best {metric} {row[f'best_{metric}_mean']:.4g} against {base[f'best_{metric}_mean']:.4g})")


def _too_few(row, base, csv_path: Path) -> str:
    return (f"too few seeds trained every epoch ({row['n_seeds']} of it, {base['n_seeds']} of the defaults, "
            f"{row['n_paired']} on the same seeds; {csv_path})")


def _rated(table):
    """The candidates (not the baseline) with 2 or more complete seeds shared with the baseline."""
    return table[(table["candidate"] != BASELINE) & (table["verdict"] != TOO_FEW)]


def best_confirmed(table, metric: str):
    """The configuration to use: the candidate (not the baseline) with the lowest mean final score
    over 2 or more seeds compared, as a table row; None if none has them. Picked as the lowest of
    several means on these seeds, its own estimate here is biased low, and its own p-value too
    small: its verdict is the Holm-corrected one (`verdict_holm`), and `--holdout` measures it afresh."""
    rated = _rated(table)
    if rated.empty:
        return None
    return rated.loc[rated[f"final_{metric}_mean"].idxmin()]


def _values(row, table) -> str:
    return ", ".join(f"{key}={row[key]:.4g}" if isinstance(row[key], float) else f"{key}={row[key]}"
                     for key in table.columns if "." in key)


def best_confirmed_line(table, metric: str, exp_dir: Path) -> str:
    """The leaderboard's line naming the configuration to use, with the verdict its pick can claim:
    Holm-corrected over the candidates it was picked from, and a pointer to --holdout."""
    pick = best_confirmed(table, metric)
    if pick is None:
        return f"{BEST_LINE} none: no candidate other than the defaults has 2 or more complete seeds"
    holdout = f"python experiments/confirm.py {exp_dir} --holdout"
    base = table[table["candidate"] == BASELINE].iloc[0]
    if pick[f"final_{metric}_mean"] >= base[f"final_{metric}_mean"]:
        return (f"{BEST_LINE} the defaults: no candidate's mean final {metric} is below theirs (the lowest, "
                f"{pick['candidate']}, is {_estimate(pick)}; {holdout} measures it on new seeds)")
    rated = len(_rated(table))
    picked = (f"the lowest mean of {rated} on these seeds: Holm-corrected over the {rated}, p={pick['p_holm']:.2g}; "
              f"not yet held out: {holdout} retrains it on new seeds, the verdict to ship") if rated > 1 else \
        f"the only candidate compared, p={pick['p_value']:.2g}"
    return (f"{BEST_LINE} {pick['candidate']} (trial {pick['trial']}; {_values(pick, table)}): final {metric} "
            f"{pick[f'final_{metric}_mean']:.4g} ± {pick[f'final_{metric}_sd']:.4g}, {_estimate(pick)} the defaults on "
            f"the {pick['n_paired']} seeds both completed, "
            f"failed {pick['failed']}: {pick['verdict_holm']} ({picked})")


def holdout_line(table, metric: str, csv_path: Path) -> str:
    """The leaderboard's line for confirm.py --holdout: the best confirmed candidate on new seeds
    (one candidate, named before these seeds: its verdict needs no correction)."""
    base = table[table["candidate"] == BASELINE].iloc[0]
    pick = table[table["candidate"] != BASELINE].iloc[0]
    if pick["verdict"] == TOO_FEW:
        return f"{HOLDOUT_LINE} {pick['candidate']} ({pick['trial']}) is not measured: {_too_few(pick, base, csv_path)}"
    return (f"{HOLDOUT_LINE} {pick['candidate']} ({pick['trial']}) retrained on new seeds {pick['seeds']}: "
            f"{_against_defaults(pick, base, metric)}: {pick['verdict']} ({csv_path})")


def ship_line(table, exp_dir: Path) -> str:
    """What to ship after the held-out check (confirm.py --holdout's last line): the pick where it
    is better than the defaults on seeds the search never saw, else the defaults: a gain that
    cannot be told from seed noise is not shown. Names the export command for it."""
    import pandas as pd

    pick = table[table["candidate"] != BASELINE].iloc[0]
    if pick["verdict"] != BETTER:
        more = (f"; more seeds can decide it: delete {exp_dir / HOLDOUT_DIR} and rerun confirm.py --holdout "
                f"with more --seeds than {pick['n_seeds']}" if pick["verdict"] in (SAME, TOO_FEW) else "")
        return (f"{SHIP_LINE} the defaults. {pick['candidate']} ({pick['trial']}) on new seeds: "
                f"{OUTCOMES.get(pick['verdict'], pick['verdict'])}{more}")
    board = pd.read_csv(exp_dir / "leaderboard.csv")
    if "incumbent" in board:   # a raced search: export.py ships its incumbent's best checkpoint
        target = exp_dir
    else:                      # the search trial that trained the pick, at its best checkpoint
        rows = board[board["trial"] == pick["trial"]]
        target = rows["checkpoint"].iloc[0] if len(rows) and isinstance(rows["checkpoint"].iloc[0], str) else exp_dir
    return (f"{SHIP_LINE} {pick['candidate']} ({pick['trial']}), better than the defaults on new seeds: "
            f"python experiments/export.py {target}")


def leaderboard_annotations(exp_dir: Path, cfg: ExperimentConfig, board) -> tuple[list[str], list[str], list[str] | None]:
    """What the confirmations on disk add to the leaderboard (core.results.save_leaderboard, the one
    writer of leaderboard.txt, asks on every write, so a resumed or grown search keeps them, up to
    date): (the Noise line for its header, the Confirmation / Best confirmed / Held out lines for its
    end, the `within_noise` column or None). Read from confirm/confirm.csv and
    confirm-holdout/confirm.csv; none of it when confirm.py has not run. A confirmation whose winner
    is no longer the leaderboard's (the search grew since) says so."""
    import pandas as pd

    metric = cfg.search.metric
    tables = {}
    for run in (CONFIRM_DIR, HOLDOUT_DIR):
        path = exp_dir / run / TABLE_FILE
        if path.is_file():
            try:
                table = pd.read_csv(path, keep_default_na=False, na_values=[""])
            except (ValueError, OSError):   # a damaged table: the leaderboard goes on without its lines
                continue
            if set(TABLE_COLUMNS) <= set(table.columns):   # (else not confirm.py's table, or an older one's)
                tables[run] = table
    header, footer, within_noise = [], [], None
    confirmed = tables.get(CONFIRM_DIR)
    if confirmed is not None and len(confirmed):
        seed_sd = float(confirmed["seed_noise_sd"].iloc[0])
        eval_sd = confirmed["eval_noise_sd"].iloc[0]
        eval_sd = None if eval_sd is None or math.isnan(eval_sd) else float(eval_sd)
        column = f"best_{metric}"
        values = list(board[column]) if column in board else []
        best = values[0] if values else math.nan
        within_noise = ["" if i == 0 or math.isnan(value) else noise_mark(value - best, seed_sd, eval_sd)
                        for i, value in enumerate(values)]
        eval_part = f", evaluation noise sd {eval_sd:.4g}" if eval_sd is not None else ""
        marked = sum(mark != "" for mark in within_noise)
        header.append(f"{NOISE_LINE} seed noise sd {seed_sd:.4g}{eval_part} of best {metric} (measured by confirm.py): "
                      f"{marked} trial(s) within noise of the winner, marked in the within_noise column")
        csv_path = Path(CONFIRM_DIR) / TABLE_FILE
        line = confirmation_line(confirmed, metric, csv_path)
        tops = confirmed[confirmed["candidate"] == "top 1"]
        winner = board["trial"].iloc[0] if len(board) else None
        if len(tops) and winner is not None and tops["trial"].iloc[0] != winner:
            line += (f"; the leaderboard's winner is now {winner} (the search went on after this confirmation: "
                     f"python experiments/confirm.py {exp_dir} confirms it)")
        footer += [line, best_confirmed_line(confirmed, metric, exp_dir)]
    held = tables.get(HOLDOUT_DIR)
    if held is not None and len(held) >= 2:
        footer.append(holdout_line(held, metric, Path(HOLDOUT_DIR) / TABLE_FILE))
    return header, footer, within_noise


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def _sd(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) >= 2 else math.nan


# --- Evaluation noise ----------------------------------------------------------------------------


@dataclass
class EvaluationNoise:
    values: list[float]   # the metric on each draw
    sd: float             # their sd (ddof=1)
    samples: int          # images per draw (metrics.num_samples, as in every evaluation)
    what: str             # what differs between the draws
    checkpoint: str       # which checkpoint was scored


def evaluation_noise(family, reference, cfg: ExperimentConfig, draws: int = 5, device="cpu",
                     checkpoint: str = "") -> EvaluationNoise:
    """Score one trained `family` on `draws` different draws of metrics.num_samples images each.

    Sampling families (GAN, VAE): draw r is images r*n .. (r+1)*n - 1 of the family's own scoring
    stream (`generate`: fixed-seed noise, labels with the training frequencies), so draw 0 is
    exactly what the trial scored and the others are fresh noise through the same pipeline.
    Translation families (CycleGAN): draw r translates a random subset of n test photos; when n is
    at least the number of test photos (every evaluation scores them all, so there is nothing left
    to vary) the photos are drawn with replacement (a bootstrap: how much another test set of the
    same size would change the score)."""
    from core import metrics as M

    if draws < 2:
        raise ConfirmError(f"evaluation noise needs at least 2 draws, got {draws}")
    n, batch = cfg.metrics.num_samples, cfg.metrics.batch_size
    if family.translates_photos:   # it scores translated test photos: a draw is a subset of them
        from core.data import ImageDataset, eval_transform

        photos = ImageDataset(family.data, "test/photo", eval_transform(cfg.data))
        bootstrap = n >= len(photos)
        what = (f"test photos drawn with replacement from {len(photos)}" if bootstrap
                else f"random subsets of the {len(photos)} test photos")
        streams = (_translated(family, photos, _photo_draw(len(photos), n, seed, bootstrap), batch)
                   for seed in range(draws))
    else:
        what = "fresh samples of the scoring noise stream"
        stream = _rebatched(family.generate(draws * n, batch))
        streams = (_take(stream, n) for _ in range(draws))
    with torch.no_grad():
        values = [float(M.evaluate(images, reference, cfg.metrics, device=device)[cfg.search.metric])
                  for images in streams]
    return EvaluationNoise(values, float(np.std(values, ddof=1)), n, what, checkpoint)


def _photo_draw(count: int, n: int, seed: int, bootstrap: bool) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if bootstrap:
        return torch.randint(count, (n,), generator=generator)
    return torch.randperm(count, generator=generator)[:n]


def _translated(family, photos, picks: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """The family's translation (Family.sample with photos) of photos[picks], batch by batch."""
    for part in picks.split(batch_size):
        x = torch.stack([photos[i][0] for i in part.tolist()])   # (b, 3, H, W) in [-1, 1]
        yield family.sample(len(x), photos=x)                      # (b, 3, H, W) uint8


class _rebatched:
    """An image-batch iterator from which `_take` cuts consecutive runs of exactly n images."""

    def __init__(self, batches: Iterable[torch.Tensor]):
        self.batches, self.left = iter(batches), None

    def next_batch(self) -> torch.Tensor:
        if self.left is not None:
            batch, self.left = self.left, None
            return batch
        return next(self.batches)


def _take(stream: _rebatched, n: int) -> Iterator[torch.Tensor]:
    """The next n images of `stream`, as batches; the rest of a split batch stays in the stream."""
    while n > 0:
        batch = stream.next_batch()
        if len(batch) > n:
            batch, stream.left = batch[:n], batch[n:]
        n -= len(batch)
        yield batch
