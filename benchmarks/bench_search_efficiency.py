"""Search efficiency: Optuna TPE + ASHA against random search + FIFO, at the same epoch budget.

    python benchmarks/bench_search_efficiency.py                          # vae_builtin, 3 seeds
    python benchmarks/bench_search_efficiency.py --space search_spaces/quickstart.yaml --seeds 0 1 2 3 4
    python benchmarks/bench_search_efficiency.py --random-trials 3 --epochs 3 train.iters_per_epoch=5

Budget = training epochs summed over all trials of a search. For each seed:
  - random search + FIFO runs `--random-trials` trials to the end: its budget B = trials * epochs;
  - TPE + ASHA gets `--tpe-factor` times as many trials (ASHA stops most of them early) and is then
    cut at the same budget B.
Each search's evaluations are replayed in the order they were reported (Ray's timestamp, to the
second), each adding the epochs its trial trained since its previous report. From that replay the
benchmark prints the best FID each search reached within B, the trials TPE + ASHA ran within B, and
the budget TPE + ASHA needed to reach random search's final best, as a ratio of B (< 1: TPE + ASHA
got there cheaper; "not reached" when it did not within B).

Expect little from TPE in small runs: Optuna's TPESampler proposes its first 10 trials at random
(n_startup_trials), so with fewer trials only ASHA's early stopping differs from random search.

Both searches use the same seed for the searcher (search.seed) and for the trials (train.seed).
FID comes from whatever extractor the space sets (the builtin spaces use the random-feature
extractor, whose values compare trials here, not published FIDs).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from core.config import load_experiment  # noqa: E402
from core.search import run_search  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Replay:
    """One search's evaluations in the order they happened, with the budget spent by then."""
    events: list[tuple[int, float, str]]  # (epochs reported by all trials so far, FID, trial id)
    budget: int                           # epochs the whole search trained

    def best_within(self, budget: int) -> float:
        scores = [fid for spent, fid, _ in self.events if spent <= budget and fid == fid]  # fid == fid: not NaN
        return min(scores) if scores else float("nan")

    def trials_within(self, budget: int) -> int:
        return len({trial for spent, _, trial in self.events if spent <= budget})

    def budget_to_reach(self, target: float, limit: int) -> int | None:
        """The first budget at which some evaluation's FID is <= target (None: not within `limit`)."""
        for spent, fid, _ in self.events:
            if spent > limit:
                return None
            if fid <= target:
                return spent
        return None


def replay(grid) -> Replay:
    """ResultGrid -> its evaluations ordered by the wall-clock second they were reported (then by
    trial and epoch), each with the epochs reported by the whole search up to it."""
    rows = []
    for result in grid:
        frame = result.metrics_dataframe
        if frame is None or frame.empty or "fid" not in frame:
            continue
        previous_epoch = 0
        for timestamp, trial, epoch, fid in zip(frame["timestamp"], frame["trial_id"], frame["epoch"], frame["fid"]):
            # With eval_every > 1 one report covers several epochs; a diverged trial reports NaN
            # but still spent its epochs.
            rows.append((int(timestamp), str(trial), int(epoch), int(epoch) - previous_epoch, float(fid)))
            previous_epoch = int(epoch)
    events, spent = [], 0
    for _, trial, _, epochs, fid in sorted(rows):
        spent += epochs
        events.append((spent, fid, trial))
    return Replay(events, spent)


def search(space: Path, overrides: list[str], storage: Path, name: str, searcher: str, scheduler: str,
           trials: int, seed: int) -> Replay:
    cfg = load_experiment(space, [*overrides, f"name={name}", f"search.searcher={searcher}",
                                  f"search.scheduler={scheduler}", f"search.num_samples={trials}",
                                  f"search.seed={seed}", f"train.seed={seed}"])
    return replay(run_search(cfg, storage_path=storage, verbose=0, progress=lambda *_: None))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", type=Path, default=ROOT / "search_spaces" / "vae_builtin.yaml")
    parser.add_argument("overrides", nargs="*", help="config overrides, section.key=value")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--random-trials", type=int, default=8, help="random-search trials (sets the budget)")
    parser.add_argument("--tpe-factor", type=float, default=3.0, help="TPE + ASHA trials = factor * random trials")
    parser.add_argument("--epochs", type=int, help="epochs per trial (overrides train.epochs)")
    parser.add_argument("--storage", type=Path, help="where the searches are kept (default: a temporary dir)")
    args = parser.parse_args(argv)

    overrides = list(args.overrides) + ([f"train.epochs={args.epochs}"] if args.epochs else [])
    storage = args.storage or Path(tempfile.mkdtemp(prefix="paintsweep-bench-"))
    stem = args.space.stem
    tpe_trials = max(1, round(args.tpe_factor * args.random_trials))
    print(f"# {stem}: random+FIFO {args.random_trials} trials vs TPE+ASHA {tpe_trials} trials cut at the "
          f"same epoch budget; seeds {args.seeds}; storage {storage}")

    print(f"{'seed':>4}  {'budget':>6}  {'random best':>11}  {'tpe+asha best':>13}  "
          f"{'tpe+asha trials':>15}  {'budget to random best':>21}  {'ratio':>6}")
    ratios = []
    for seed in args.seeds:
        randomized = search(args.space, overrides, storage, f"{stem}-random-s{seed}", "random", "fifo",
                            args.random_trials, seed)
        tuned = search(args.space, overrides, storage, f"{stem}-tpe-asha-s{seed}", "optuna", "asha",
                       tpe_trials, seed)
        budget = randomized.budget
        target = randomized.best_within(budget)
        needed = tuned.budget_to_reach(target, limit=budget)
        ratio = needed / budget if needed is not None else float("inf")
        ratios.append(ratio)
        print(f"{seed:>4}  {budget:>6}  {target:>11.3f}  {tuned.best_within(budget):>13.3f}  "
              f"{tuned.trials_within(budget):>15}  {needed if needed is not None else 'not reached':>21}  "
              f"{ratio:>6.2f}", flush=True)

    finite = [r for r in ratios if r != float("inf")]
    print(f"\nbudget ratio (TPE+ASHA epochs to reach random search's final best / random's epochs): "
          f"median {statistics.median(ratios):.2f} over {len(ratios)} seeds; reached in {len(finite)}/{len(ratios)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
