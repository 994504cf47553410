"""Does the search help? Retrain its winners and the defaults with fresh seeds, and compare.

    plan = make_plan(exp_dir, cfg, top=3, n_seeds=3)   # baseline + the leaderboard's top 3, seeds 1000-1002
    grid = run_confirm(exp_dir, cfg, plan)               # Ray Tune: a grid of candidate x seed, FIFO, full epochs
    table = confirm_table(seed_results(grid, cfg), plan, cfg.search.metric)
    print(format_confirm_table(table, cfg.search.metric))
    best_confirmed(table, cfg.search.metric)              # the row to use: the lowest mean best
    plan = make_holdout_plan(exp_dir, cfg, n_seeds=3)    # it and the baseline on new seeds (--holdout)
    grid = run_confirm(exp_dir, cfg, plan, run=HOLDOUT_DIR)

Why: GAN training is noisy, and the minimum over many noisy trials is biased low (the winner's
curse), so a leaderboard's best can be selection noise. Retraining each candidate with seeds the
search never used gives an unbiased estimate of what the configuration itself is worth. The best
of several such estimates is biased low again (less: a few candidates, several seeds each), so
the one picked is measured once more on seeds neither run used (`make_holdout_plan`).

The candidates are the baseline (the experiment's own values for the searched keys: what its
`model:`/`train:` sections say) and the top-k rows of `leaderboard.csv` that reached an evaluation
(their exact values read from the trial's `params.json`; a row whose values equal the baseline's,
such as the search's own baseline trial, is not retrained twice). Seeds are `train.seed` values
from FIRST_FRESH_SEED up that no search trial used. The run is a Ray Tune experiment named
`confirm` inside the experiment directory, trained by core.trainable's trainable with the
experiment's resources and checkpoint policy; `confirm/plan.yaml` records the candidates and seeds.

Statistics, per candidate, on each seed's best evaluation of the search metric (lower is better):

- mean and sd over seeds of the best and of the final (last evaluation) metric;
- ratio = mean best / the baseline's mean best, with a 95% Fieller confidence interval for a ratio
  of two independent means, using the Welch-Satterthwaite degrees of freedom of the difference;
- p = Welch's two-sided t-test of the per-seed bests against the baseline's (scipy).

Verdict rules (only seeds that trained every epoch count; a diverged, collapsed or crashed seed is
listed in `incomplete`):

- "better than the defaults": the ratio's whole 95% interval lies below 1;
- "worse": the whole interval lies above 1;
- "not distinguishable": the interval contains 1, or is unbounded (the baseline's own mean is
  within its noise of 0);
- "too few seeds": fewer than 2 complete seeds for the candidate or the baseline.
The interval excludes 1 exactly when Welch's p < 0.05 (same statistic, same degrees of freedom), so
the verdict and the p-value never disagree.

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
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from functools import partial, reduce
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
import yaml

from core.config import ExperimentConfig, config_to_dict
from core.errors import ConfirmError

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
NOISE_LINE = "Noise:"                   # the line of leaderboard.txt naming the noise levels (confirm.py)

BETTER, SAME, WORSE, TOO_FEW = "better than the defaults", "not distinguishable", "worse", "too few seeds"
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
    from core.metrics import DIRECTIONS

    if DIRECTIONS[cfg.search.metric] != "min":
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

    # train.seed is what a confirmation varies, so it is never part of a candidate.
    keys = [key for key in cfg.search.space if key != "train.seed"]
    baseline = {key: reduce(getattr, key.split("."), cfg) for key in keys}
    candidates, sources = {BASELINE: baseline}, {BASELINE: ""}
    for trial in evaluated["trial"]:
        if len(candidates) > top:
            break
        params = _trial_params(exp_dir, trial)
        values = {key: params[key] for key in keys if key in params}   # a conditional key may be absent
        if values not in candidates.values():   # the search's baseline trial, or a repeated setting
            label = f"top {len(candidates)}"
            candidates[label], sources[label] = values, trial
    return ConfirmPlan(candidates, sources, _fresh_seeds(_search_seeds(exp_dir, cfg, board), n_seeds))


def make_holdout_plan(exp_dir: Path, cfg: ExperimentConfig, n_seeds: int = 3) -> ConfirmPlan:
    """The baseline and the confirmation's best candidate (best_confirmed), on `n_seeds` fresh seeds
    that neither the search nor the confirmation used: picked as the lowest of several means on
    the confirmation's seeds, the pick's ratio there is biased low; on new seeds it is not."""
    import pandas as pd

    if n_seeds < 2:
        raise ConfirmError(f"--seeds must be >= 2 (a spread needs two seeds), got {n_seeds}")
    confirm_path = exp_dir / CONFIRM_DIR
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


def _search_seeds(exp_dir: Path, cfg: ExperimentConfig, board) -> set:
    """The train.seed values the search's trials used: experiment.yaml's, unless they searched it."""
    return {cfg.train.seed} | {_trial_params(exp_dir, trial).get("train.seed") for trial in board["trial"]
                               if (exp_dir / trial / "params.json").is_file()}


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
                resume: bool = False, address: str | None = None, verbose: int = 1, progress=print):
    """Retrain every candidate with every seed (or continue that run) as the Ray Tune experiment
    `exp_dir/<run>` (CONFIRM_DIR, or HOLDOUT_DIR); returns its ResultGrid.

    Same trainable, resources, concurrency, checkpoint policy and retries as the search, but FIFO
    (every seed trains all train.epochs) and no searcher: the grid is the plan."""
    import ray
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from core.checkpoints import remove_staging_leftovers, repair_checkpoint_records
    from core.cluster import Storage, check_resources, connect
    from core.search import (SessionCSVLogger, SessionJsonLogger, TrialEndLine, _trial_name, driver_lock,
                             prepare_experiment, remove_damaged_checkpoints)
    from core.tracking import release_wandb_in_driver

    exp_dir = Path(os.path.abspath(exp_dir))
    confirm_path = exp_dir / run
    storage = Storage.parse(exp_dir)
    if resume:
        _check_resumable(confirm_path, plan)
    elif confirm_path.exists() and any(confirm_path.iterdir()):
        raise ConfirmError(f"{confirm_path} already exists: continue it with --resume, or delete it to start over")
    storage.check_writable()
    connect(address)   # before the preparation: a bad address or resource request fails at once
    held = ExitStack()   # the driver lock, once the directory exists
    try:
        check_resources(cfg)
        ready = prepare_experiment(cfg, progress=progress)   # cached by the search: quick
        confirm_path.mkdir(exist_ok=True)
        held.enter_context(driver_lock(confirm_path, f"The confirmation of {exp_dir.name}"))
        if not resume:
            plan.save(confirm_path / PLAN_FILE)
        trainable = tune.with_parameters(confirm_trainable, candidates=plan.candidates,
                                         experiment=config_to_dict(cfg), prepared_root=ready.prepared_root,
                                         reference_path=ready.reference_path, shared=None)
        trainable = tune.with_resources(trainable, {"cpu": cfg.search.cpus_per_trial,
                                                    "gpu": cfg.search.gpus_per_trial})
        # As core.search.run_search: JSON/CSV results only (TensorBoard is written by the trials).
        os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")
        release_wandb_in_driver()   # nothing of W&B's left in TMPDIR if this driver is killed
        if resume:
            remove_damaged_checkpoints(storage, str(confirm_path), progress)
            repair_checkpoint_records(str(confirm_path), None, progress)
            tuner = tune.Tuner.restore(str(confirm_path), trainable=trainable, resume_unfinished=True,
                                       resume_errored=True)
        else:   # (a restored run keeps its own RunConfig)
            callbacks = [SessionJsonLogger(), SessionCSVLogger(), TrialEndLine(cfg.search.metric, cfg.train.epochs)]
            run_config = tune.RunConfig(
                name=run, storage_path=str(exp_dir), callbacks=callbacks, verbose=verbose,
                sync_config=tune.SyncConfig(sync_artifacts=True),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=cfg.search.keep_checkpoints,
                                                        checkpoint_score_attribute=cfg.search.metric,
                                                        checkpoint_score_order="min"),
                failure_config=tune.FailureConfig(max_failures=cfg.search.max_failures))
            tuner = tune.Tuner(
                trainable, run_config=run_config,
                param_space={"candidate": tune.grid_search(list(plan.candidates)),
                             "train.seed": tune.grid_search(plan.seeds)},
                tune_config=tune.TuneConfig(scheduler=FIFOScheduler(), num_samples=1,
                                            max_concurrent_trials=cfg.search.max_concurrent,
                                            trial_name_creator=partial(_trial_name, cfg.family),
                                            trial_dirname_creator=partial(_trial_name, cfg.family),
                                            reuse_actors=True))
        try:
            return tuner.fit()
        finally:
            remove_damaged_checkpoints(storage, str(confirm_path), progress)
            # Trial directories are `<family>_<trial id>`, and a grid's ids hold an underscore too.
            prefix = f"{cfg.family}_"
            remove_staging_leftovers([d.name[len(prefix):] for d in confirm_path.glob(f"{prefix}*") if d.is_dir()])
    finally:
        ray.shutdown()
        held.close()


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


def seed_results(grid, cfg: ExperimentConfig) -> list[SeedResult]:
    """One SeedResult per confirm trial, from Ray's records (each evaluation's own metric)."""
    from core.results import best_intact_checkpoint, trial_status

    metric = cfg.search.metric
    out = []
    for result in grid:
        history = result.metrics_dataframe
        scores = history[metric].dropna() if history is not None and metric in history else []
        status = trial_status(result.metrics, result.error is not None, cfg.train.epochs)
        out.append(SeedResult(candidate=result.config["candidate"], seed=int(result.config["train.seed"]),
                              trial=Path(result.path).name, status=status.value,
                              best=float(scores.min()) if len(scores) else math.nan,
                              final=float(scores.iloc[-1]) if len(scores) else math.nan,
                              checkpoint=best_intact_checkpoint(result, metric) if len(scores) else None))
    return sorted(out, key=lambda r: (r.candidate, r.seed))


# --- Statistics ----------------------------------------------------------------------------------


@dataclass
class Comparison:
    ratio: float          # mean(values) / mean(baseline)
    low: float            # its CONFIDENCE interval (Fieller); -inf/inf when unbounded, NaN with too few seeds
    high: float
    p_value: float        # Welch's two-sided t-test; NaN with too few seeds
    verdict: str          # BETTER | SAME | WORSE | TOO_FEW


def compare_to_baseline(values: Iterable[float], baseline: Iterable[float], confidence: float = CONFIDENCE) -> Comparison:
    """The ratio of mean(values) to mean(baseline), its Fieller interval and Welch's test (see the
    module docstring for the verdict rules). Lower values are better."""
    from scipy import stats

    x, y = np.asarray(list(values), dtype=float), np.asarray(list(baseline), dtype=float)
    ratio = x.mean() / y.mean() if len(x) and len(y) else math.nan
    if len(x) < 2 or len(y) < 2:
        return Comparison(ratio, math.nan, math.nan, math.nan, TOO_FEW)
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)   # squared standard errors of the means
    if vx + vy == 0:   # every seed gave the same value on both sides: the difference is exact
        p_value = 0.0 if x.mean() != y.mean() else 1.0
        return Comparison(ratio, ratio, ratio, p_value, BETTER if ratio < 1 else WORSE if ratio > 1 else SAME)
    with warnings.catch_warnings():   # seeds that agree exactly on one side are exact, not "unreliable"
        warnings.filterwarnings("ignore", "Precision loss occurred", RuntimeWarning)
        welch = stats.ttest_ind(x, y, equal_var=False)
    low, high = fieller_interval(x.mean(), vx, y.mean(), vy, stats.t.ppf((1 + confidence) / 2, welch.df))
    verdict = BETTER if high < 1 else WORSE if low > 1 else SAME
    return Comparison(ratio, low, high, float(welch.pvalue), verdict)


def fieller_interval(mean_x: float, var_x: float, mean_y: float, var_y: float, t: float) -> tuple[float, float]:
    """Fieller's interval for mean_x / mean_y of two independent means with squared standard errors
    var_x, var_y: the ratios r with (mean_x - r mean_y)^2 <= t^2 (var_x + r^2 var_y), a quadratic
    a r^2 + b r + c <= 0. Bounded only when mean_y is clearly away from 0 (a > 0); else (-inf, inf)."""
    a = mean_y ** 2 - t ** 2 * var_y
    b = -2 * mean_x * mean_y
    c = mean_x ** 2 - t ** 2 * var_x
    if a <= 0:
        return -math.inf, math.inf
    root = math.sqrt(max(b * b - 4 * a * c, 0.0))   # >= 0 whenever a > 0
    return (-b - root) / (2 * a), (-b + root) / (2 * a)


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
    """One row per candidate, the baseline first: its values, seeds, mean +- sd of the best and
    final metric over its complete seeds, the comparison with the baseline and the noise mark."""
    import pandas as pd

    complete = {label: [r for r in results if r.candidate == label and r.status == "completed"]
                for label in plan.candidates}
    seed_sd = pooled_sd([r.best for r in runs] for runs in complete.values())
    baseline = [r.best for r in complete[BASELINE]]
    rows = []
    for label, values in plan.candidates.items():
        runs = complete[label]
        bests, finals = [r.best for r in runs], [r.final for r in runs]
        incomplete = [r for r in results if r.candidate == label and r.status != "completed"]
        row = {"candidate": label, "trial": plan.sources[label], **values,
               "n_seeds": len(runs), "seeds": " ".join(str(r.seed) for r in runs),
               "incomplete": ", ".join(f"seed {r.seed} {r.status}" for r in incomplete),
               f"best_{metric}_mean": _mean(bests), f"best_{metric}_sd": _sd(bests),
               f"final_{metric}_mean": _mean(finals), f"final_{metric}_sd": _sd(finals),
               f"best_{metric}_per_seed": " ".join(f"{b:.6g}" for b in bests)}
        if label == BASELINE:
            row.update(ratio=1.0, ratio_low=math.nan, ratio_high=math.nan, p_value=math.nan, verdict=BASELINE,
                       within_noise="")
        else:
            c = compare_to_baseline(bests, baseline)
            row.update(ratio=c.ratio, ratio_low=c.low, ratio_high=c.high, p_value=c.p_value, verdict=c.verdict,
                       within_noise=noise_mark(_mean(bests) - _mean(baseline), seed_sd, eval_sd))
        row.update(seed_noise_sd=seed_sd, eval_noise_sd=math.nan if eval_sd is None else eval_sd)
        rows.append(row)
    return pd.DataFrame(rows)


def format_confirm_table(table, metric: str) -> str:
    """The table as printed: values, seeds, mean +- sd, ratio [95% CI], p, verdict, noise mark."""
    import pandas as pd

    def num(v):
        return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"

    keys = [c for c in table.columns if "." in c]   # the searched dotted keys
    shown = pd.DataFrame({
        "candidate": table["candidate"], "trial": table["trial"],
        **{key: table[key].map(num if table[key].dtype.kind == "f" else str) for key in keys},
        "seeds": table["seeds"],
        f"best {metric}": [f"{num(m)} ± {num(s)}" for m, s in zip(table[f"best_{metric}_mean"], table[f"best_{metric}_sd"])],
        f"final {metric}": [f"{num(m)} ± {num(s)}" for m, s in zip(table[f"final_{metric}_mean"], table[f"final_{metric}_sd"])],
        "ratio [95% CI]": ["1" if row.candidate == BASELINE else f"{num(row.ratio)} [{num(row.ratio_low)}, {num(row.ratio_high)}]"
                           for row in table.itertuples()],
        "p": table["p_value"].map(num), "verdict": table["verdict"], "within noise": table["within_noise"],
    })
    if table["incomplete"].astype(bool).any():
        shown["incomplete"] = table["incomplete"]
    return shown.to_string(index=False)


def noise_lines(table, metric: str, eval_noise: "EvaluationNoise | None") -> list[str]:
    seed_sd = table["seed_noise_sd"].iloc[0]
    lines = [f"Seed noise: sd {seed_sd:.4g} of one run's best {metric} across seeds (pooled over "
             f"{len(table)} configurations): what retraining the same configuration changes."]
    if eval_noise is not None:
        lines.append(f"Evaluation noise: sd {eval_noise.sd:.4g} of {metric} over {len(eval_noise.values)} draws of "
                     f"{eval_noise.samples} images ({eval_noise.what}) of one checkpoint ({eval_noise.checkpoint}): "
                     f"what re-scoring the same weights changes.")
    return lines


def confirmation_line(table, metric: str, csv_path: Path) -> str:
    """The leaderboard's one-line summary: was the winner (top 1) confirmed against the defaults?"""
    base = table[table["candidate"] == BASELINE].iloc[0]
    tops = table[table["candidate"] == "top 1"]
    if tops.empty:
        return f"{LEADERBOARD_LINE} no trial other than the defaults to confirm ({csv_path})"
    top = tops.iloc[0]
    if top["verdict"] == TOO_FEW:
        return f"{LEADERBOARD_LINE} the winner ({top['trial']}) is not confirmed: {_too_few(top, base, csv_path)}"
    outcome = {BETTER: "confirmed: better than the defaults", WORSE: "not confirmed: worse than the defaults",
               SAME: "not confirmed: not distinguishable from the defaults"}[top["verdict"]]
    noise = f", {top['within_noise']}" if top["within_noise"] else ""
    return (f"{LEADERBOARD_LINE} the winner ({top['trial']}) retrained on seeds {top['seeds']}: "
            f"{_against_defaults(top, base, metric)}: {outcome}{noise} ({csv_path})")


def _against_defaults(row, base, metric: str) -> str:
    """'best fid m ± sd against the defaults' m ± sd on seeds ..., ratio [95% CI], p=...' of a table row."""
    return (f"best {metric} {row[f'best_{metric}_mean']:.4g} ± {row[f'best_{metric}_sd']:.4g} against the defaults' "
            f"{base[f'best_{metric}_mean']:.4g} ± {base[f'best_{metric}_sd']:.4g} on seeds {base['seeds']}, "
            f"{row['ratio']:.3g}x [{row['ratio_low']:.3g}, {row['ratio_high']:.3g}], p={row['p_value']:.2g}")


def _too_few(row, base, csv_path: Path) -> str:
    return f"too few seeds trained every epoch ({row['n_seeds']} of it, {base['n_seeds']} of the defaults; {csv_path})"


def _rated(table):
    """The candidates (not the baseline) with 2 or more complete seeds on both sides."""
    return table[(table["candidate"] != BASELINE) & (table["verdict"] != TOO_FEW)]


def best_confirmed(table, metric: str):
    """The configuration to use: the candidate (not the baseline) with the lowest mean best over 2
    or more complete seeds, as a table row; None if none has them. Picked as the lowest of several
    means on these seeds, its own ratio here is biased low (`--holdout` measures it afresh)."""
    rated = _rated(table)
    if rated.empty:
        return None
    return rated.loc[rated[f"best_{metric}_mean"].idxmin()]


def _values(row, table) -> str:
    return ", ".join(f"{key}={row[key]:.4g}" if isinstance(row[key], float) else f"{key}={row[key]}"
                     for key in table.columns if "." in key)


def best_confirmed_line(table, metric: str, exp_dir: Path) -> str:
    """The leaderboard's line naming the configuration to use, and how far to trust its ratio."""
    pick = best_confirmed(table, metric)
    if pick is None:
        return f"{BEST_LINE} none: no candidate other than the defaults has 2 or more complete seeds"
    if pick["ratio"] >= 1:
        return (f"{BEST_LINE} the defaults: no candidate's mean best {metric} is below theirs (the lowest, "
                f"{pick['candidate']}, is {pick['ratio']:.3g}x; python experiments/confirm.py {exp_dir} --holdout "
                f"measures it on new seeds)")
    rated = len(_rated(table))
    picked = (f"the lowest mean of {rated} on these seeds, so this ratio is biased low; "
              f"python experiments/confirm.py {exp_dir} --holdout measures it on new seeds") if rated > 1 else \
        "the only candidate confirmed"
    return (f"{BEST_LINE} {pick['candidate']} (trial {pick['trial']}; {_values(pick, table)}): best {metric} "
            f"{pick[f'best_{metric}_mean']:.4g} ± {pick[f'best_{metric}_sd']:.4g}, {pick['ratio']:.3g}x the defaults "
            f"[{pick['ratio_low']:.3g}, {pick['ratio_high']:.3g}], {pick['verdict']} ({picked})")


def holdout_line(table, metric: str, csv_path: Path) -> str:
    """The leaderboard's line for confirm.py --holdout: the best confirmed candidate on new seeds."""
    base = table[table["candidate"] == BASELINE].iloc[0]
    pick = table[table["candidate"] != BASELINE].iloc[0]
    if pick["verdict"] == TOO_FEW:
        return f"{HOLDOUT_LINE} {pick['candidate']} ({pick['trial']}) is not measured: {_too_few(pick, base, csv_path)}"
    return (f"{HOLDOUT_LINE} {pick['candidate']} ({pick['trial']}) retrained on new seeds {pick['seeds']}: "
            f"{_against_defaults(pick, base, metric)}: {pick['verdict']} ({csv_path})")


def write_leaderboard_line(exp_dir: Path, line: str, prefix: str = LEADERBOARD_LINE) -> Path:
    """Replace (or append) the leaderboard.txt line that starts with `prefix` (LEADERBOARD_LINE,
    BEST_LINE or HOLDOUT_LINE)."""
    path = exp_dir / "leaderboard.txt"
    kept = [l for l in (path.read_text().splitlines() if path.is_file() else [])
            if not l.startswith(prefix)]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join([*kept, line]) + "\n")
    os.replace(tmp, path)   # a reader sees the old file or the new one
    return path


def mark_leaderboard_noise(exp_dir: Path, cfg: ExperimentConfig, seed_sd: float, eval_sd: float | None) -> Path:
    """Mark the leaderboard's rows that are within noise of its winner: leaderboard.csv gets a
    `within_noise` column (noise_mark of the row's best minus the winner's best; "" for the winner
    and rows outside the noise), leaderboard.txt the same column and a line naming the noise levels.
    A row marked "below seed noise" cannot be told from the winner by training each once."""
    import pandas as pd

    from core.results import save_leaderboard

    metric = cfg.search.metric
    csv_path = exp_dir / "leaderboard.csv"
    board = pd.read_csv(csv_path, keep_default_na=False, na_values=[""])
    column = f"best_{metric}"
    best = board[column].iloc[0] if len(board) and column in board else math.nan
    board["within_noise"] = ["" if i == 0 or math.isnan(value) else noise_mark(value - best, seed_sd, eval_sd)
                             for i, value in enumerate(board[column] if column in board else [])]
    save_leaderboard(board, exp_dir, metric, cfg.search.objectives)
    eval_part = f", evaluation noise sd {eval_sd:.4g}" if eval_sd is not None else ""
    marked = int((board["within_noise"] != "").sum())
    line = (f"{NOISE_LINE} seed noise sd {seed_sd:.4g}{eval_part} of best {metric} (measured by confirm.py): "
            f"{marked} trial(s) within noise of the winner, marked in the within_noise column")
    text = csv_path.with_suffix(".txt")
    lines = text.read_text().splitlines()
    text.write_text("\n".join([lines[0], line, *lines[1:]]) + "\n")
    return csv_path


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
