"""Does the search pay off? Random search + FIFO, TPE + ASHA and PBT at the same budget of training
epochs, over several searcher seeds, each search's top configurations then retrained with fresh seeds.

    python benchmarks/bench_search_efficiency.py --smoke         # 1 seed, 6 trials: does it run (~10 min)
    # the recorded runs (RESULTS.md) on 2 cores, the β-VAE ~30 minutes, CycleGAN (8 epochs) ~80 minutes
    # (retraining the top 3 and the held-out picks: about 7 and 18 of those minutes):
    python benchmarks/bench_search_efficiency.py --spaces search_spaces/vae_builtin.yaml --storage runs/bench-vae
    python benchmarks/bench_search_efficiency.py --spaces search_spaces/cyclegan_builtin.yaml --storage runs/bench-cyclegan
    python benchmarks/bench_search_efficiency.py                 # both spaces at BENCH_SIZE (temporary storage)
(--storage keeps the searches; a rerun reuses finished ones and resumes an interrupted one.)

Methods (each search on its own Ray Tune run, searcher seed = trial seed = the benchmark seed):
  random+FIFO  random search, every trial trains all epochs, no baseline trial: what a user without
               the harness would run. Its epochs, trials x epochs, are the budget B of every method.
  TPE+ASHA     Optuna TPE (the space's startup/multivariate settings) with ASHA and the baseline trial
               first; it gets --tpe-factor times as many trials and is stopped at B (a Ray Tune
               stopper counting the epochs reported; trials still running then are cut off).
  PBT          Population Based Training, population = the random-search trial count (so it also
               spends exactly B), the baseline kept as one member, a perturbation every epoch.
  GP+ASHA, CMAES+ASHA, NSGA2+ASHA, QMC+ASHA, RANDOM+ASHA
               any other Optuna sampler of core/sampler_registry.py (search.sampler) in TPE's place,
               run as TPE+ASHA is (--methods names them; the default compares the three above).

Each search's evaluations are replayed in the order they were reported (wall-clock second, then
trial and epoch), each one costing the epochs its trial trained for it (train.eval_every). From the
replay, per method over the seeds:
  best within B         the lowest search metric any evaluation reached within the budget B;
  budget to random's    the epochs it needed to reach random search's final best, as a ratio of B
    best                (< 1: cheaper than random search; inf: not reached within B), median, with
                        a 90% distribution-free interval for the median (scipy's quantile_test;
                        with 5 seeds it is [min, max]). Random's final best is the luckiest of its
                        trials, so one seed's ratio is noisy: a target "holds" or is "missed" by the
                        median, and is "decided" only when the whole interval is on that side;
  confirmed / baseline  each search's winner (its trial with the lowest best metric; for PBT the
                        winner's final values, retrained from scratch: PBT's schedule is not
                        replayed) retrained with --fresh-seeds seeds no search used, its mean best
                        over those seeds / the baseline's mean best over the same seeds; median over
                        the searcher seeds, and how many winners core.confirm's Welch/Fieller verdict
                        calls "better than the defaults"; its target is judged like the budget's,
                        by the median and the median's interval;
  picked / baseline     what a user of `confirm.py` (default --top 3) then `confirm.py --holdout` ships:
    (held out)          each search's --confirm-top best trials retrained on the same fresh seeds, the
                        one with the lowest mean best picked, and the pick retrained once more on
                        --holdout-seeds held-out seeds (the next integers), its mean best there / the
                        baseline's on those seeds. Picked on the first seeds, its mean on them is
                        biased low (the lowest of k); on the held-out seeds it is not.
The retrainings of a space are core.confirm runs (Ray Tune grids: candidate x fresh seed, the same
machinery as `python experiments/confirm.py`): the baseline and the winners, the runners-up on the
same seeds, and the baseline and the picks on the held-out seeds.

The benchmark size (BENCH_SIZE, then FAMILY_SIZE, then the command line's overrides) makes one search of 24
trials take minutes on 2 cores: 200 builtin images, 4 epochs of 10 iterations, FID on 100 samples
with the random-feature extractor (comparable between trials here, not with published FIDs; the
CycleGAN space scores its 50 test photos and trains its own 8 epochs of 5 iterations, FAMILY_SIZE). ASHA
keeps the space's grace period (2 epochs in the builtin spaces): at 1 epoch of 10 iterations most
β-VAEs score the same FID (~25), so ASHA's first rung ranked them by noise.
Many searches start faster on one Ray: `ray start --head` and then --address auto.
The targets (issue 12): TPE+ASHA's median budget ratio <= 0.5, and on the CycleGAN builtin space the
confirmed best configuration / baseline <= 0.8, printed for the winner (top 1) and for the pick of
the top --confirm-top on held-out seeds. The script prints whether they hold; it never fails on them.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
from confirm import evaluation_noise  # noqa: E402  (experiments/confirm.py: the same draws it reports)

from ray.tune import Stopper  # noqa: E402

from core.config import ConfigError, load_experiment  # noqa: E402
from core.sampler_registry import DEFAULT as DEFAULT_SAMPLER, SAMPLERS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPACES = [ROOT / "search_spaces" / "vae_builtin.yaml", ROOT / "search_spaces" / "cyclegan_builtin.yaml"]
BENCH_SIZE = ["data.builtin_count=200", "train.epochs=4", "train.iters_per_epoch=10", "train.eval_every=1",
              "metrics.num_samples=100", "metrics.kid_subset_size=50",
              "search.max_concurrent=2"]
FAMILY_SIZE = {   # after BENCH_SIZE: CycleGAN trains 2.5x slower an iteration and has 50 test photos to score;
    # it keeps its space's 8 epochs (4 constant-LR, 4 decaying): at 4 epochs, LR constant, ASHA had one
    # rung to stop trials at and TPE+ASHA needed 0.61x random search's epochs (RESULTS.md)
    "cyclegan": ["train.iters_per_epoch=5", "train.epochs=8", "metrics.num_samples=50", "metrics.kid_subset_size=25"]}
SMOKE = ["train.epochs=3", "train.iters_per_epoch=4"]
METHODS = {   # name -> overrides; num_samples is set per method (see the module docstring)
    "random+FIFO": ["search.searcher=random", "search.scheduler=fifo", "search.baseline=false"],
    "TPE+ASHA": ["search.searcher=optuna", "search.scheduler=asha", "search.baseline=true"],
    "PBT": ["search.searcher=random", "search.scheduler=pbt", "search.baseline=true", "search.pbt.perturbation_interval=1"],
}
DEFAULT_METHODS = list(METHODS)
METHODS |= {f"{name.upper()}+ASHA": [*METHODS["TPE+ASHA"], f"search.sampler={name}"]   # GP+ASHA, ...
            for name in SAMPLERS if name != DEFAULT_SAMPLER}
BUDGET_TARGET = 0.5
CONFIRMED_TARGETS = {"cyclegan": 0.8}   # family -> target of confirmed winner / baseline: set for the CycleGAN search
MEDIAN_CONFIDENCE = 0.9   # of the interval printed around a median over the searcher seeds


@dataclass
class Replay:
    """One search's evaluations in the order they happened, with the budget spent by then."""
    events: list[tuple[int, float, str]]  # (epochs trained by all trials so far, metric, trial id)
    budget: int                           # epochs the whole search trained

    def best_within(self, budget: float) -> float:
        scores = [score for spent, score, _ in self.events if spent <= budget and not math.isnan(score)]
        return min(scores) if scores else math.nan

    def winner_within(self, budget: float) -> str | None:
        top = self.top_within(budget, 1)
        return top[0] if top else None

    def top_within(self, budget: float, k: int) -> list[str]:
        """The k trials with the lowest best metric within the budget, best first (what the
        search's leaderboard would rank first, had it stopped at the budget)."""
        best: dict[str, float] = {}
        for spent, score, trial in self.events:
            if spent <= budget and not math.isnan(score) and score < best.get(trial, math.inf):
                best[trial] = score
        return sorted(best, key=best.get)[:k]

    def trials_within(self, budget: float) -> int:
        return len({trial for spent, _, trial in self.events if spent <= budget})

    def budget_to_reach(self, target: float, limit: float) -> int | None:
        """The first budget at which some evaluation is <= target (None: not within `limit`)."""
        return next((spent for spent, score, _ in self.events if spent <= limit and score <= target), None)


def replay(grid, metric: str, eval_every: int) -> tuple[Replay, dict[str, dict]]:
    """ResultGrid -> its Replay, and each trial's last config (a PBT trial's values after its
    last exploit). Every report costs eval_every epochs: with a perturbation every epoch, a PBT
    trial that copied a donor trained one epoch for each report, whatever epoch it continued."""
    rows, configs = [], {}
    for result in grid:
        frame = result.metrics_dataframe
        if frame is None or frame.empty or metric not in frame:
            continue
        # A row a resume restored from a checkpoint's report.json before 2026-12-01 has no time or
        # trial id of Ray's: its neighbours' stand in.
        frame = frame.assign(timestamp=frame["timestamp"].ffill().bfill(), trial_id=frame["trial_id"].ffill().bfill())
        for timestamp, trial, epoch, score in zip(frame["timestamp"], frame["trial_id"], frame["epoch"], frame[metric]):
            rows.append((int(timestamp), str(trial), int(epoch), float(score)))   # a diverged trial: NaN, epochs spent
        configs[str(frame["trial_id"].iloc[-1])] = result.config
    events, spent = [], 0
    for _, trial, _, score in sorted(rows):
        spent += eval_every
        events.append((spent, score, trial))
    return Replay(events, spent), configs


class EpochBudget(Stopper):
    """A Ray Tune Stopper that ends the whole search once its trials have reported `budget` epochs
    (each report: eval_every epochs), so a search with more trials than fit does not train past B."""

    def __init__(self, budget: int, eval_every: int):
        self.budget, self.eval_every, self.reports = budget, eval_every, set()

    def __call__(self, trial_id: str, result: dict) -> bool:
        self.reports.add((trial_id, result.get("epoch")))   # a set: Ray may show it a result twice
        return False

    def stop_all(self) -> bool:
        return len(self.reports) * self.eval_every >= self.budget


def earlier_run(storage: Path, name: str):
    """(the ResultGrid of a search this storage already finished, whether one was started): a
    rerun with --storage reuses finished searches and resumes an interrupted one."""
    from ray.tune import ExperimentAnalysis, ResultGrid

    path = storage / name
    if not any(path.glob("experiment_state-*.json")):
        return None, False
    analysis = ExperimentAnalysis(str(path))
    if any(t.status not in ("TERMINATED", "ERROR") for t in analysis.trials):
        return None, True
    return ResultGrid(analysis), True


def run_method(space: Path, overrides: list[str], storage: Path, method: str, trials: int, seed: int, address,
               budget: int):
    """One search of `method`, stopped once it has trained `budget` epochs; returns (config, its
    Replay, its trials' configs)."""
    from core.search import run_search

    name = f"{space.stem}-{method.lower().replace('+', '-')}-s{seed}"
    cfg = load_experiment(space, [*overrides, *METHODS[method], f"name={name}", f"search.num_samples={trials}",
                                  f"search.seed={seed}", f"train.seed={seed}"])
    grid, started = earlier_run(storage, name)
    if grid is None:
        # Random search and PBT spend exactly the budget by construction; each +ASHA method is stopped at it.
        stop = EpochBudget(budget, cfg.train.eval_every) if method.endswith("+ASHA") else None
        grid = run_search(cfg, storage_path=storage, resume=started, address=address, verbose=0,
                          progress=lambda *_: None, stop=stop)
    events, configs = replay(grid, cfg.search.metric, cfg.train.eval_every)
    return cfg, events, configs


def retrain(space_cfg, candidates: dict[str, dict], storage: Path, run: str, seeds: list[int], address):
    """Retrain every candidate (label -> searched values) with every seed: one core.confirm run in
    `storage/<space>-<run>/` (reused or resumed by a rerun with --storage); returns (label -> {seed:
    best} of its complete seeds, the run's SeedResults, its directory). A candidate whose values equal
    an earlier one's is trained once and shares its bests."""
    from core import confirm as C

    distinct, same_as = {}, {}
    for label, values in candidates.items():
        known = next((other for other, v in distinct.items() if v == values), None)
        if known:
            same_as[label] = known     # e.g. the search's baseline trial won: retrained once
        else:
            distinct[label] = values
    plan = C.ConfirmPlan(distinct, {label: "" for label in distinct}, seeds)
    exp_dir = storage / f"{space_cfg.name}-{run}"
    exp_dir.mkdir(parents=True, exist_ok=True)
    resume = (exp_dir / C.CONFIRM_DIR / C.PLAN_FILE).is_file()
    grid = C.run_confirm(exp_dir, space_cfg, plan, resume=resume, address=address, verbose=0, progress=lambda *_: None)
    results = C.seed_results(grid, space_cfg)
    bests: dict[str, dict[int, float]] = {}
    for r in results:
        if r.status == "completed":
            bests.setdefault(r.candidate, {})[r.seed] = r.best
    return {label: bests.get(same_as.get(label, label), {}) for label in candidates}, results, exp_dir


def confirm_searches(space_cfg, tops: dict[str, list[dict]], storage: Path, fresh_seeds: int, holdout_seeds: int,
                     address):
    """Each search's top configurations (label -> its top-k trials' configs, best first) and the
    baseline, retrained with fresh seeds, in three core.confirm runs:

      confirm       the baseline and every search's winner (its top 1), seeds S = FIRST_FRESH_SEED...;
      runners-up    ranks 2..k on the same seeds S, so each search's top k can be compared on them;
      holdout       the baseline and each search's pick, the one of its top k with the lowest mean
                    best on S, on the next fresh seeds H: picked on S, its mean on S is biased low
                    (the winner's curse again, among k), so what it is worth is measured on H.

    Returns a dict with the labels' bests on S ("winner": label -> {seed: best}, with the baseline under
    core.confirm.BASELINE), the picks' and the baseline's bests on H ("pick"), which rank each
    pick had ("rank") and the evaluation noise (the baseline's first complete seed on S)."""
    from core import confirm as C

    seeds = list(range(C.FIRST_FRESH_SEED, C.FIRST_FRESH_SEED + fresh_seeds))
    held_out = list(range(seeds[-1] + 1, seeds[-1] + 1 + holdout_seeds))
    baseline = C.baseline_values(space_cfg)
    ranked = {label: [C.searched_values(config, space_cfg) for config in configs] for label, configs in tops.items()}
    winners, results, exp_dir = retrain(space_cfg, {C.BASELINE: baseline, **{label: values[0] for label, values
                                                                              in ranked.items() if values}},
                                        storage, "confirm", seeds, address)
    noise = evaluation_noise(results, exp_dir, draws=5, device="cpu")
    out = {"winner": winners, "pick": {}, "rank": {}, "noise": noise}
    runners_up = {rank_label(label, rank): values for label, ranks in ranked.items()
                  for rank, values in enumerate(ranks[1:], start=2)}
    if not runners_up:   # --confirm-top 1
        return out
    on_seeds = {**winners, **retrain(space_cfg, runners_up, storage, "runners-up", seeds, address)[0]}
    picks = {}
    for label, ranks in ranked.items():
        rank = pick_rank([list(on_seeds[rank_label(label, rank)].values()) for rank in range(1, len(ranks) + 1)])
        if rank is not None:
            out["rank"][label], picks[label] = rank, ranks[rank - 1]
    out["pick"] = retrain(space_cfg, {C.BASELINE: baseline, **picks}, storage, "holdout", held_out, address)[0]
    return out


def pick_rank(bests_by_rank: list[list[float]]) -> int | None:
    """Which of a search's top k to use: the rank (1 = its winner) whose retrainings have the lowest
    mean best (core.confirm.best_confirmed picks by the mean final evaluation; this benchmark measures
    bests, as its recorded runs did); a rank with fewer than 2 complete seeds cannot be picked (None:
    no rank has them)."""
    means = {rank: statistics.mean(bests) for rank, bests in enumerate(bests_by_rank, start=1) if len(bests) >= 2}
    return min(means, key=means.get) if means else None


def rank_label(label: str, rank: int) -> str:
    """A search's rank-th configuration's label: 'TPE+ASHA s0' for its winner, 'TPE+ASHA s0 #2'..."""
    return label if rank == 1 else f"{label} #{rank}"


def fmt(x: float, digits: int = 3) -> str:
    return "inf" if x == math.inf else "-" if x is None or math.isnan(x) else f"{x:.{digits}g}"


def median_range(values: list[float]) -> str:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return "-"
    return f"{fmt(statistics.median(finite))} [{fmt(min(finite))}, {fmt(max(finite))}]"


def median_interval(values: list[float], confidence: float = MEDIAN_CONFIDENCE) -> tuple[float, float]:
    """A distribution-free interval for the median over the searcher seeds (order statistics,
    scipy's quantile_test): a ratio per seed is dominated by how lucky random search's best draw
    was, so the median of 5 moves a lot. With 5 seeds the interval is [min, max] (94%); with fewer,
    no interval reaches 90% (NaN)."""
    from scipy.stats import quantile_test

    interval = quantile_test(values, q=statistics.median(values), p=0.5).confidence_interval(confidence)
    return float(interval.low), float(interval.high)


def target_verdict(median: float, interval: tuple[float, float], target: float) -> str:
    """'holds' / 'missed' by the median, and whether the seeds decide it (the interval's side of target)."""
    low, high = interval
    said = "holds" if median <= target else "missed"
    if math.isnan(low) or math.isnan(high):   # fewer than 5 values: no interval reaches the confidence
        return f"{said} by the median; not decided: too few seeds for a {MEDIAN_CONFIDENCE:.0%} interval (5 or more)"
    if high <= target or low > target:
        return f"{said}; decided: the whole interval is on that side"
    return f"{said} by the median; not decided by these seeds: the interval contains {target}"


def bench_space(space: Path, args, overrides: list[str]) -> list[str]:
    """Every method x seed on one space, then the confirmation; returns the lines printed."""
    from core import confirm as C

    lines = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    family = load_experiment(space).family
    overrides = [*BENCH_SIZE, *FAMILY_SIZE.get(family, []), *overrides]
    space_cfg = load_experiment(space, [*overrides, f"name={space.stem}-bench"])
    metric, epochs = space_cfg.search.metric, space_cfg.train.epochs
    budget = args.trials * epochs
    tpe_trials = max(1, round(args.tpe_factor * args.trials))
    counts = {"random+FIFO": args.trials, "PBT": args.trials} | {m: tpe_trials for m in METHODS if m.endswith("+ASHA")}
    say(f"overrides: {' '.join(overrides)}")
    say(f"## {space.name} ({space_cfg.family}): budget B = {budget} epochs per search ({args.trials} random-search "
        f"trials x {epochs} epochs); each +ASHA method {tpe_trials} trials cut at B; PBT population {args.trials}; "
        f"searcher seeds {' '.join(map(str, args.seeds))}; {args.fresh_seeds} fresh seeds per winner")
    say(f"{'seed':>4}  {'method':<11}  {'trials in B':>11}  {'best ' + metric + ' in B':>14}  "
        f"{'budget to random best':>21}  {'ratio':>6}  winner")
    methods = ["random+FIFO", *[m for m in args.methods if m != "random+FIFO"]]   # random sets the target
    results = {method: [] for method in methods}   # method -> [(seed, best, ratio, search label)]
    tops = {}                                        # search label -> its top --confirm-top trials' configs
    for seed in args.seeds:
        start = time.monotonic()
        target = None
        for method in methods:
            cfg, events, configs = run_method(space, overrides, args.storage, method, counts[method], seed,
                                              args.address, budget)
            best = events.best_within(budget)
            if method == "random+FIFO":
                target, ratio, needed = best, 1.0, events.budget
            else:
                needed = events.budget_to_reach(target, limit=budget)
                ratio = needed / budget if needed is not None else math.inf
            top = events.top_within(budget, args.confirm_top)
            trial = top[0] if top else None
            label = f"{method} s{seed}"
            tops[label] = [configs[t] for t in top]
            results[method].append((seed, best, ratio, label))
            say(f"{seed:>4}  {method:<11}  {events.trials_within(budget):>11}  {fmt(best):>14}  "
                f"{needed if needed is not None else 'not reached':>21}  {fmt(ratio, 2):>6}  {trial}")
        print(f"     (seed {seed}: {time.monotonic() - start:.0f} s)", flush=True)

    if args.fresh_seeds:
        retrained = confirm_searches(space_cfg, tops, args.storage, args.fresh_seeds, args.holdout_seeds, args.address)
    else:   # --fresh-seeds 0: the searches only
        retrained = {"winner": {C.BASELINE: {}}, "pick": {}, "rank": {}, "noise": None}
    confirmed, noise, picked = retrained["winner"], retrained["noise"], retrained["pick"]
    base = list(confirmed[C.BASELINE].values())
    base_mean = statistics.mean(base) if base else math.nan
    # Pooled over the distinct configurations retrained (a winner equal to another is one group).
    distinct = {tuple(by_seed.values()): list(by_seed.values()) for by_seed in confirmed.values()}.values()
    seed_sd = C.pooled_sd(distinct)
    say("")
    if not args.fresh_seeds:
        say("no confirmation (--fresh-seeds 0)")
    else:
        say(f"fresh seeds {C.FIRST_FRESH_SEED}-{C.FIRST_FRESH_SEED + args.fresh_seeds - 1}: baseline (the space's "
            f"defaults) best {metric} {fmt(base_mean)} ± {fmt(statistics.stdev(base) if len(base) > 1 else math.nan)}; "
            f"seed noise (pooled sd of one run's best) {fmt(seed_sd)}; evaluation noise (sd over "
            f"{len(noise.values) if noise else 0} draws of {space_cfg.metrics.num_samples} images, one baseline "
            f"checkpoint) {fmt(noise.sd if noise else math.nan)}")
    say(f"{'method':<11}  {'best ' + metric + ' in B: median [range]':>34}  "
        f"{f'budget ratio: median [{MEDIAN_CONFIDENCE:.0%} CI]':>32}  "
        f"{'reached':>7}  {'confirmed / baseline: median [range]':>36}  {'better than defaults':>20}")
    summary = {}
    for method, rows in results.items():
        bests = [best for _, best, _, _ in rows]
        ratios = [ratio for _, _, ratio, _ in rows]
        confirmed_ratios, better = ratios_to_baseline(confirmed, [label for *_, label in rows])
        picked_ratios, picked_better = ratios_to_baseline(picked, [label for *_, label in rows])
        interval = median_interval(ratios)
        summary[method] = {"budget_ratio": statistics.median(ratios), "budget_interval": interval,
                           "confirmed": confirmed_ratios, "picked": picked_ratios, "picked_better": picked_better,
                           "ranks": [retrained["rank"][label] for *_, label in rows if label in retrained["rank"]]}
        ratio_text = f"{fmt(statistics.median(ratios), 2)} [{fmt(interval[0], 2)}, {fmt(interval[1], 2)}]"
        say(f"{method:<11}  {median_range(bests):>34}  {ratio_text:>32}  "
            f"{sum(r != math.inf for r in ratios):>3}/{len(ratios):<3}  {median_range(confirmed_ratios):>36}  "
            f"{better:>16}/{len(confirmed_ratios):<3}")
    if picked:
        held = list(picked[C.BASELINE].values())
        first_held = C.FIRST_FRESH_SEED + args.fresh_seeds
        say("")
        say(f"confirmed best of each search's top {args.confirm_top} (picked by its mean best on seeds "
            f"{C.FIRST_FRESH_SEED}-{first_held - 1}), retrained on held-out seeds {first_held}-"
            f"{first_held + args.holdout_seeds - 1}: baseline best {metric} {fmt(statistics.mean(held) if held else math.nan)}"
            f" ± {fmt(statistics.stdev(held) if len(held) > 1 else math.nan)}")
        say(f"{'method':<11}  {'picked / baseline (held out): median [range]':>44}  {'better than defaults':>20}  "
            f"picked rank 1/2/3...")
        for method, row in summary.items():
            ranks = " ".join(f"{rank}:{row['ranks'].count(rank)}" for rank in range(1, args.confirm_top + 1))
            say(f"{method:<11}  {median_range(row['picked']):>44}  {row['picked_better']:>16}/{len(row['picked']):<3}  {ranks}")
    tpe = summary.get("TPE+ASHA")
    if tpe is None:
        say("")
        return lines
    low, high = tpe["budget_interval"]
    say(f"target: TPE+ASHA budget ratio <= {BUDGET_TARGET}: {fmt(tpe['budget_ratio'], 2)} "
        f"[{fmt(low, 2)}, {fmt(high, 2)}] ({target_verdict(tpe['budget_ratio'], tpe['budget_interval'], BUDGET_TARGET)})")
    confirmed_target = CONFIRMED_TARGETS.get(space_cfg.family)
    if confirmed_target is not None:
        for what, key, base_bests in (("winner", "confirmed", base),
                                      (f"best of top {args.confirm_top}, held out,", "picked", list(picked.get(C.BASELINE, {}).values()))):
            if tpe[key]:
                median, interval = statistics.median(tpe[key]), median_interval(tpe[key])
                wide = with_baseline_noise(interval, base_bests)
                say(f"target: confirmed TPE+ASHA {what} / baseline <= {confirmed_target}: {fmt(median)} "
                    f"[{fmt(interval[0])}, {fmt(interval[1])}], with the baseline's mean anywhere in its "
                    f"{MEDIAN_CONFIDENCE:.0%} interval [{fmt(wide[0])}, {fmt(wide[1])}] "
                    f"({target_verdict(median, wide, confirmed_target)})")
    say("")
    return lines


def with_baseline_noise(interval: tuple[float, float], base: list[float],
                        confidence: float = MEDIAN_CONFIDENCE) -> tuple[float, float]:
    """Widen an interval of ratios to one baseline mean by that mean's own uncertainty: every
    ratio shares the denominator, so the median over searcher seeds moves with it, and
    median_interval does not see that. The ends are recomputed with the baseline's mean at the
    ends of its t interval (scipy), so a target is decided only when it holds for any baseline
    mean in that interval."""
    from scipy import stats

    if len(base) < 2:
        return math.nan, math.nan
    mean = statistics.mean(base)
    low, high = stats.t.interval(confidence, len(base) - 1, loc=mean, scale=statistics.stdev(base) / math.sqrt(len(base)))
    if low <= 0:   # the baseline's mean is within its noise of 0: the ratio is unbounded
        return interval[0] * mean / high, math.inf
    return interval[0] * mean / high, interval[1] * mean / low


def ratios_to_baseline(bests: dict[str, dict[int, float]], labels: list[str]) -> tuple[list[float], int]:
    """Each label's mean best / the baseline's (same seeds), and how many core.confirm calls "better
    than the defaults" (its paired comparison on the seeds both completed, here of the bests: what
    this benchmark measures; confirm.py decides on each seed's final evaluation); labels without a
    complete seed are left out."""
    from core import confirm as C

    base = bests.get(C.BASELINE, {})
    ratios, better = [], 0
    for label in labels:
        values = bests.get(label, {})
        if values and base:
            ratios.append(statistics.mean(values.values()) / statistics.mean(base.values()))
            shared = [seed for seed in values if seed in base]
            better += C.compare_to_baseline([values[s] for s in shared], [base[s] for s in shared]).verdict == C.BETTER
    return ratios, better


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="config overrides for every space, section.key=value")
    parser.add_argument("--spaces", type=Path, nargs="+", default=SPACES)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="searcher seeds")
    parser.add_argument("--trials", type=int, default=24, help="random-search trials (sets the budget B)")
    parser.add_argument("--tpe-factor", type=float, default=2.5, help="TPE+ASHA's (and each +ASHA method's) trials = factor x --trials")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=DEFAULT_METHODS, metavar="METHOD",
                        help=f"the methods to compare, of {', '.join(METHODS)} (default: {' '.join(DEFAULT_METHODS)}; "
                             "random+FIFO always runs: it sets the budget and the target)")
    parser.add_argument("--fresh-seeds", type=int, default=3,
                        help="retrainings of each winner and the baseline (0: no confirmation, the searches only)")
    parser.add_argument("--confirm-top", type=int, default=3, metavar="K",
                        help="retrain each search's K best configurations (confirm.py's default --top 3), pick the "
                             "best of them and measure it on held-out seeds (1: the winner only)")
    parser.add_argument("--holdout-seeds", type=int, default=6,
                        help="held-out seeds of each pick and the baseline (default 6: the baseline's mean on them "
                             "divides every pick's, so its noise is every ratio's)")
    parser.add_argument("--smoke", action="store_true", help="1 seed, 6 trials, 3 short epochs: checks that it runs")
    parser.add_argument("--storage", type=Path, help="where the searches are kept (default: a temporary dir, removed)")
    parser.add_argument("--address", help="a running Ray cluster to run on (default: a local Ray per search)")
    parser.add_argument("--out", type=Path, help="also write the printed tables to this file (markdown code block)")
    args = parser.parse_intermixed_args(argv)
    if args.smoke:
        args.seeds, args.trials, args.fresh_seeds, args.confirm_top, args.holdout_seeds = args.seeds[:1], 6, 2, 2, 2
    overrides = [*(SMOKE if args.smoke else []), *args.overrides]   # after BENCH_SIZE and FAMILY_SIZE
    keep = args.storage is not None
    temporary = None if keep else tempfile.TemporaryDirectory(prefix="paintsweep-bench-")
    args.storage = (args.storage or Path(temporary.name)).resolve()

    header = (f"# bench_search_efficiency {time.strftime('%Y-%m-%d')} on {platform.node()} "
              f"({__import__('os').cpu_count()} CPUs)")
    print(header, flush=True)
    lines = [header, ""]
    started = time.monotonic()
    try:
        for space in args.spaces:
            lines += bench_space(space, args, overrides)
    except ConfigError as error:   # e.g. another benchmark process is running a search of this storage
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        if temporary is not None:
            temporary.cleanup()
    lines.append(f"({(time.monotonic() - started) / 60:.0f} min)")
    print(lines[-1])
    if args.out:
        args.out.write_text("```\n" + "\n".join(lines) + "\n```\n")
        print(f"Saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
