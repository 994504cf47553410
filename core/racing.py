"""Racing: a search whose answer is decided on several seeds, with every decision taken in trial order.

Why. One seed per configuration, ranked at an early rung, lets the search decide on noise: seed
noise in the quickstart (sd about 0.2 of the best FID) is as large as the gains it looks for, and
a floating-point difference between two CPUs turned into another winner. Racing spends part of the
search's own trials on more seeds for the configurations that decide the answer, and the rungs stop
a trial only for a gap larger than the seed noise at that epoch. Everything here is plain Python
on the ledger below; core.searchers and core.internals plug it into Ray Tune (`InTrialOrderSearch`, `NoiseAwareRungs`).

    ledger = RaceLedger(metric="fid", epochs=6, lag=2, base_seed=0, racing=RacingOptions(seeds=4),
                        rungs=[2, 4], reduction_factor=2, baseline_key=None)   # (the searcher sets the key)
    ledger.ready(k)              # may trial k be proposed? (trials 0..k-lag have finished)
    ledger.next_race(k)          # (configuration, seed) of the next racing run, or None: explore
    ledger.rung_decision(trial_id, epoch)   # "continue" | "stop": a trial at a rung (its score recorded)
    ledger.standings()           # every configuration: seeds, paired comparison with the baseline

The ledger. Every trial in the order it was proposed (its index k), the configuration it trains
(the searched values; `key`), its seed, whether it races (a further seed of a configuration tried
before), the search metric at each epoch, and how it ended. The searcher keeps it and saves it with
its own state (a `--resume` continues it); the rungs read it.

Trial order, not arrival time. Trial k is proposed only once trials 0..k-lag have finished (lag =
search.max_concurrent, so at most `lag` trials run at once), and whatever is decided for trial k
reads those trials only: what Optuna has been told before it proposes trial k, whether trial k
races, and the rung cut-offs and noise it is stopped against. Trials that finish in another order
(another CPU, another load) therefore change nothing: decisions are a function of the trials'
own results. The price is idle workers while trial k waits for trial k-lag (3-7% of the worker
time in the quickstart: benchmarks/bench_quickstart_seeds.py prints it per run).

Racing (search.racing). The baseline trains a second seed at once (trial 1: the seed noise at
every epoch is known from the start). Once a configuration beats the baseline on the seeds they
share, it is the incumbent; it and the baseline get further seeds, the same ones (paired), and so
do the `challengers` best other configurations that are within noise of it (a gap of less than
two seed-sds of a single seed's log ratio). A challenger with as many seeds as the incumbent and a
better ratio on them replaces it. Racing the incumbent stops when its paired interval lies below
1 (core.confirm.compare_to_baseline, the statistics confirm.py uses), when it has `seeds` seeds,
or when the search's trials run out; otherwise Optuna proposes a new configuration. Every racing
run is an ordinary trial: records, checkpoints, TensorBoard, W&B, --resume, and it counts in
search.num_samples.

Rungs. At each rung epoch (grace_period x reduction_factor^i), a trial that explores is compared with
the trials that explored before it (0..k-lag) at the same epoch: it stops when its score is worse
than the 1/reduction_factor cut-off by more than two standard deviations of the difference of two
single seeds at that epoch (from the configurations with several seeds, in log units), and
continues otherwise. With no repeated seeds yet the noise is unknown and counts as zero: the rung
is then ASHA's (in trial order). The baseline and racing runs are never stopped: their seeds pair.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

from core.confirm import BETTER, compare_to_baseline
from core.metric_registry import direction, ratio_is_meaningful

RACING_SEED_BASE = 100    # racing seeds: the trials' own train.seed, then 100, 101, ... (confirm.py's are 1000 up)
NOISE_SDS = 2.0           # a gap counts as real beyond this many standard deviations of the seed noise
CONTINUE, STOP = "continue", "stop"


@dataclass
class RacingOptions:
    """`search.racing:` (true for these defaults, or a mapping of them; false or absent: no racing)."""
    seeds: int = 4            # at most this many seeds per configuration (the baseline's and the incumbent's)
    challengers: int = 1      # other configurations within noise of the incumbent raced along with it

    def validate(self) -> list[str]:
        errors = []
        if self.seeds < 2:
            errors.append(f"search.racing.seeds must be >= 2 (racing adds seeds), got {self.seeds}")
        if self.challengers < 0:
            errors.append(f"search.racing.challengers must be >= 0, got {self.challengers}")
        return errors


@dataclass
class TrialRecord:
    trial_id: str
    key: str                  # the configuration: its searched values as sorted JSON (seed excluded)
    config: dict              # what the trial was given (a racing run's includes its train.seed)
    seed: int
    races: bool               # a further seed of an earlier configuration (not Optuna's proposal)
    scores: dict = field(default_factory=dict)   # epoch -> the search metric there
    last_result: dict | None = None
    done: bool = False
    errored: bool = False
    stopped_at: int | None = None                # the rung epoch that stopped it
    told: bool = False        # the searcher has been told how it ended (in trial order)


@dataclass
class Standing:
    """One configuration's place in the search: its seeds and how it compares with the baseline."""
    key: str
    first_trial: int          # index of the trial that first trained it
    seeds: int                # seeds with a final score
    paired: int               # of those, seeds the baseline also finished
    gap: float                # mean log ratio to the baseline over paired seeds (lower is better); NaN without
    scale: str                # the paired comparison's (core.confirm.compare_to_baseline): "ratio" of the
    estimate: float           #   means, or "difference" where a ratio is not meaningful or its interval
    low: float                #   is unbounded (few seeds); low-high: its 95% interval, NaN with one seed
    high: float
    verdict: str              # core.confirm's BETTER | SAME | WORSE | TOO_FEW


def configuration_key(config: dict, seed_key: str = "train.seed") -> str:
    """A configuration's identity: its values without the seed, as sorted JSON."""
    return json.dumps({k: v for k, v in config.items() if k != seed_key}, sort_keys=True, default=str)


def racing_seed(i: int, base_seed: int) -> int:
    """The i-th seed of every configuration: the search's train.seed, then RACING_SEED_BASE + ..."""
    if i == 0:
        return base_seed
    seeds = [s for s in range(RACING_SEED_BASE, RACING_SEED_BASE + i + 1) if s != base_seed]
    return seeds[i - 1]


class RaceLedger:
    def __init__(self, *, metric: str, epochs: int, lag: int, base_seed: int, racing: RacingOptions | None,
                 rungs: list[int], reduction_factor: int, baseline_key: str | None):
        self.metric, self.epochs, self.lag, self.base_seed = metric, epochs, lag, base_seed
        self.racing, self.rungs, self.reduction_factor = racing, list(rungs), reduction_factor
        self.baseline_key = baseline_key
        self.trials: list[TrialRecord] = []
        self.index: dict[str, int] = {}

    # --- Recording (the searcher and the rungs call these as Ray reports) ---------------------

    def add(self, trial_id: str, config: dict, seed: int, races: bool) -> TrialRecord:
        record = TrialRecord(trial_id, configuration_key(config), dict(config), seed, races)
        self.index[trial_id] = len(self.trials)
        self.trials.append(record)
        return record

    def record_result(self, trial_id: str, result: dict) -> None:
        record = self.get(trial_id)
        if record is None:
            return
        epoch, value = result.get("epoch"), result.get(self.metric)
        if isinstance(epoch, int) and isinstance(value, (int, float)):
            record.scores[epoch] = float(value)   # a resumed trial reports an epoch again: the same value
        record.last_result = dict(result)

    def record_end(self, trial_id: str, result: dict | None, errored: bool) -> None:
        record = self.get(trial_id)
        if record is None:
            return
        if result:
            self.record_result(trial_id, result)
        record.done, record.errored = True, errored

    def get(self, trial_id: str) -> TrialRecord | None:
        i = self.index.get(trial_id)
        return None if i is None else self.trials[i]

    # --- Trial order ----------------------------------------------------------------------------

    def known(self, k: int) -> list[TrialRecord]:
        """The trials whatever is decided for trial k may read: 0..k-lag."""
        return self.trials[:max(0, k - self.lag + 1)]

    def ready(self, k: int) -> bool:
        return all(t.done for t in self.known(k))

    def to_tell(self, k: int) -> list[TrialRecord]:
        """Finished trials 0..k-lag the searcher has not been told of yet, in trial order."""
        return [t for t in self.known(k) if not t.told]

    # --- Scores --------------------------------------------------------------------------------

    def final(self, record: TrialRecord) -> float | None:
        """The trial's score at its last epoch, when it trained every epoch and has a finite one
        (finals decide, as in confirm.py: the best epoch is chosen on the same draw it is scored by)."""
        if not record.done or record.errored or record.stopped_at is not None:
            return None
        value = record.scores.get(self.epochs)
        return value if value is not None and math.isfinite(value) else None

    def _lower_is_better(self, value: float) -> float:
        return value if direction(self.metric) == "min" else -value

    def _log_gap(self, value: float, baseline: float) -> float:
        """One seed's gap to the baseline's same seed, lower is better: log ratio where ratios are
        meaningful, else the difference."""
        if ratio_is_meaningful(self.metric) and value > 0 and baseline > 0:
            return self._lower_is_better(math.log(value) - math.log(baseline))
        return self._lower_is_better(value - baseline)

    def finals(self, trials: list[TrialRecord]) -> dict[str, dict[int, float]]:
        """configuration key -> seed -> final score, over `trials`."""
        out: dict[str, dict[int, float]] = {}
        for t in trials:
            value = self.final(t)
            if value is not None:
                out.setdefault(t.key, {})[t.seed] = value
        return out

    def standings(self, trials: list[TrialRecord] | None = None) -> list[Standing]:
        """Every configuration with a final score, compared with the baseline on the seeds both
        finished (paired), best first: the leaderboard's and the racing's one view."""
        trials = self.trials if trials is None else trials
        finals = self.finals(trials)
        base = finals.get(self.baseline_key, {})
        first = {}
        for i, t in enumerate(trials):
            first.setdefault(t.key, i)
        out = []
        for key, by_seed in finals.items():
            seeds = sorted(s for s in by_seed if s in base)
            gaps = [self._log_gap(by_seed[s], base[s]) for s in seeds]
            values, baseline = [by_seed[s] for s in seeds], [base[s] for s in seeds]
            if direction(self.metric) == "max":
                values, baseline = [-v for v in values], [-v for v in baseline]
            comparison = compare_to_baseline(values, baseline, ratio=ratio_is_meaningful(self.metric)
                                             and direction(self.metric) == "min")
            out.append(Standing(key, first[key], len(by_seed), len(seeds),
                                sum(gaps) / len(gaps) if gaps else math.nan, comparison.scale,
                                comparison.estimate, comparison.low, comparison.high, comparison.verdict))
        out.sort(key=lambda s: (math.isnan(s.gap), s.gap, s.first_trial))
        return out

    def seed_noise(self, trials: list[TrialRecord]) -> float | None:
        """The sd of one seed's log ratio to the baseline, pooled over the configurations with two
        or more paired seeds (None: no such configuration yet)."""
        finals = self.finals(trials)
        base = finals.get(self.baseline_key, {})
        squares, dof = 0.0, 0
        for key, by_seed in finals.items():
            if key == self.baseline_key:
                continue
            gaps = [self._log_gap(by_seed[s], base[s]) for s in by_seed if s in base]
            if len(gaps) >= 2:
                mean = sum(gaps) / len(gaps)
                squares += sum((g - mean) ** 2 for g in gaps)
                dof += len(gaps) - 1
        return math.sqrt(squares / dof) if dof else None

    # --- Racing ---------------------------------------------------------------------------------

    def incumbent(self, trials: list[TrialRecord]) -> Standing | None:
        """The configuration the search stands behind: the first to beat the baseline on its paired
        seeds, replaced by a later one only with at least as many paired seeds and a lower gap."""
        current = None
        for s in sorted(self.standings(trials), key=lambda s: s.first_trial):
            if s.key == self.baseline_key or math.isnan(s.gap) or s.gap >= 0:
                continue
            if current is None or (s.paired >= current.paired and s.gap < current.gap):
                current = s
        return current

    def next_race(self, k: int) -> tuple[dict, int] | None:
        """The configuration (as a config to train) and seed trial k races, or None: explore."""
        if self.racing is None or self.baseline_key is None:
            return None
        known = self.known(k)
        assigned: dict[str, set] = {}
        configs: dict[str, dict] = {}
        for t in self.trials:   # proposed so far (running ones included: a seed is never given twice)
            assigned.setdefault(t.key, set()).add(t.seed)
            configs.setdefault(t.key, {c: v for c, v in t.config.items() if c != "train.seed"})
        if self.baseline_key not in configs:
            return None
        base_seeds = assigned[self.baseline_key]
        if len(base_seeds) < 2:   # the baseline's second seed first: seed noise known at every epoch
            return configs[self.baseline_key], racing_seed(1, self.base_seed)
        leader = self.incumbent(known)
        if leader is None:
            return None
        # Who races, and up to how many seeds: the incumbent until it is decided, and challengers
        # within noise of it up to its seeds (so that one can replace it on as many).
        racers = [] if leader.verdict == BETTER else [(leader.key, self.racing.seeds)]
        racers += [(key, len(assigned[leader.key])) for key in self._challengers(known, leader)]
        for i in range(self.racing.seeds):
            seed = racing_seed(i, self.base_seed)
            needing = [key for key, limit in racers if i < limit and seed not in assigned[key]]
            if not needing:
                continue
            if seed not in base_seeds:   # the baseline first: every comparison is paired
                return configs[self.baseline_key], seed
            return configs[needing[0]], seed
        return None

    def _challengers(self, known: list[TrialRecord], leader: Standing) -> list[str]:
        if not self.racing.challengers:
            return []
        noise = self.seed_noise(known)
        margin = NOISE_SDS * noise if noise is not None else math.inf
        close = [s for s in self.standings(known)
                 if s.key not in (leader.key, self.baseline_key) and not math.isnan(s.gap) and s.gap < 0
                 and s.gap - leader.gap < margin]
        return [s.key for s in close[:self.racing.challengers]]

    # --- Rungs ----------------------------------------------------------------------------------

    def _rung_value(self, value: float) -> float:
        """A score as rungs compare it, lower is better: its log where ratios are meaningful (seed
        noise is roughly proportional to FID), else the score itself."""
        if ratio_is_meaningful(self.metric) and direction(self.metric) == "min" and value > 0:
            return math.log(value)
        return self._lower_is_better(value)

    def epoch_noise(self, trials: list[TrialRecord], epoch: int) -> float:
        """The sd of one seed's score at `epoch` (in rung units), pooled over configurations with
        several seeds there (0.0 when none has: the rung is then ASHA's)."""
        by_key: dict[str, list[float]] = {}
        for t in trials:
            value = t.scores.get(epoch)
            if value is not None and math.isfinite(value):
                by_key.setdefault(t.key, []).append(self._rung_value(value))
        squares, dof = 0.0, 0
        for values in by_key.values():
            if len(values) >= 2:
                mean = sum(values) / len(values)
                squares += sum((v - mean) ** 2 for v in values)
                dof += len(values) - 1
        return math.sqrt(squares / dof) if dof else 0.0

    def rung_decision(self, trial_id: str, epoch: int) -> str:
        """Whether the trial goes on past `epoch` (a rung): compared with the rung's cut-off among
        the trials 0..k-lag that explored, it stops only when worse by more than NOISE_SDS standard
        deviations of the difference of two single seeds there."""
        record = self.get(trial_id)
        if record is None or record.races or record.key == self.baseline_key or epoch not in self.rungs:
            return CONTINUE
        score = record.scores.get(epoch)
        if score is None or not math.isfinite(score):
            return CONTINUE   # a diverged score is the trial's own business (it stops itself)
        known = self.known(self.index[trial_id])
        others = sorted(self._rung_value(t.scores[epoch]) for t in known
                        if not t.races and epoch in t.scores and math.isfinite(t.scores[epoch]))
        if len(others) < self.reduction_factor:
            return CONTINUE   # too few to cut (ASHA's rule too)
        cutoff = others[math.ceil(len(others) / self.reduction_factor) - 1]   # the worst of the top 1/rf
        allowed = NOISE_SDS * math.sqrt(2) * self.epoch_noise(known, epoch)
        if self._rung_value(score) - cutoff > allowed:
            record.stopped_at = epoch
            return STOP
        return CONTINUE

    # --- Saving ---------------------------------------------------------------------------------

    def state(self) -> dict:
        return {"trials": [asdict(t) for t in self.trials]}

    def load_state(self, state: dict) -> None:
        self.trials = []
        for t in state["trials"]:
            t = dict(t)
            t["scores"] = {int(e): v for e, v in t["scores"].items()}
            self.trials.append(TrialRecord(**t))
        self.index = {t.trial_id: i for i, t in enumerate(self.trials)}
