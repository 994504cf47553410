"""Does the search help? Retrain a finished search's best configurations and its defaults with fresh seeds.

    python experiments/confirm.py runs/quickstart                     # the top 3 and the defaults, 3 seeds each
    python experiments/confirm.py runs/quickstart --top 1 --seeds 5
    python experiments/confirm.py runs/quickstart --resume            # after Ctrl-C or a crash
    python experiments/confirm.py runs/quickstart --noise 0           # skip the evaluation-noise draws
    python experiments/confirm.py runs/quickstart --holdout           # the best confirmed one, on new seeds

Each configuration trains train.epochs with every seed (train.seed 1000, 1001, ...: seeds the search
never used), as a Ray Tune run of its own in runs/<experiment>/confirm/ with the search's resources.
Then it prints, and saves in confirm/confirm.csv (and confirm.txt), per configuration: how many of its
seeds failed (diverged, collapsed, crashed), mean ± sd over seeds of the best and of the final search
metric, and, on each seed's final evaluation, the ratio of its mean to the defaults' (a difference
for KID, which can be negative) with a 95% confidence interval, the paired t-test's p-value (seeds
both completed), that p Holm-corrected over the candidates, and verdicts ("better than the
defaults", "not distinguishable", "worse", "fails more often than the defaults"), beside the seed
noise and the evaluation noise (core/confirm.py says how to read them). leaderboard.txt gets a
"Confirmation:" line saying whether the winner held up and a "Best confirmed:" line naming the
configuration to use: the lowest mean final of them, with its Holm-corrected verdict.

That pick is the lowest of several means on the same seeds, so its estimate is biased low (the
winner's curse again, among --top candidates). --holdout retrains it and the defaults on the
next fresh seeds (neither the search's nor the confirmation's), in runs/<experiment>/confirm-holdout/,
and writes confirm-holdout/confirm.csv and a "Held out:" line: what the pick is worth, the verdict to ship.

The console: one line per retraining as it ends (on a terminal a live status line between them),
the table, and the leaderboard's lines last (Confirmation / Best confirmed, or Held out). --verbose
adds Ray Tune's own output, as tune.py's does.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", help="a finished search's experiment directory (runs/<experiment>)")
    parser.add_argument("--top", type=int, default=3, help="how many of the leaderboard's best configurations (default 3)")
    parser.add_argument("--seeds", type=int, default=3, help="fresh seeds per configuration (default 3, at least 2)")
    parser.add_argument("--holdout", action="store_true",
                        help="retrain the best confirmed configuration and the defaults on new seeds (after a "
                             "confirmation; --top does not apply)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted confirmation")
    parser.add_argument("--noise", type=int, default=5, metavar="DRAWS",
                        help="sample draws that measure the evaluation noise on one checkpoint (default 5; 0: skip)")
    parser.add_argument("--address", help="join a running Ray cluster ('auto' or HOST:PORT); default: a local Ray")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the evaluation-noise draws run")
    parser.add_argument("--verbose", action="store_true",
                        help="Ray Tune's own console output too (status tables, each retraining's epoch lines)")
    args = parser.parse_args(argv)
    # Refused here, not after the retraining they would follow.
    if args.noise < 0 or args.noise == 1:
        parser.error(f"--noise must be 0 (skip) or at least 2 draws (a spread needs two), got {args.noise}")
    if args.top < 1:
        parser.error(f"--top must be at least 1, got {args.top}")
    if args.seeds < 2:
        parser.error(f"--seeds must be at least 2 (a spread needs two seeds), got {args.seeds}")

    import yaml

    from core import confirm as C
    from core.checkpoints import CheckpointError
    from core.config import ConfigError, build_config
    from core.data import DataError
    from core.search import EXPERIMENT_FILE

    exp_dir = Path(args.path)
    saved = exp_dir / EXPERIMENT_FILE
    if not saved.is_file():
        print(f"error: {exp_dir} is not an experiment directory (no {EXPERIMENT_FILE}): pass runs/<experiment> "
              f"of a search run by experiments/tune.py", file=sys.stderr)
        return 2
    try:
        cfg = build_config(yaml.safe_load(saved.read_text()), source=str(saved))
        run = C.HOLDOUT_DIR if args.holdout else C.CONFIRM_DIR
        plan = C.make_holdout_plan(exp_dir, cfg, args.seeds) if args.holdout else C.make_plan(exp_dir, cfg, args.top, args.seeds)
        metric = cfg.search.metric
        used = f"the search used {', '.join(map(str, sorted(C.search_seeds(exp_dir, cfg))))}"
        if args.holdout and (exp_dir / C.CONFIRM_DIR / C.PLAN_FILE).is_file():
            confirmed = C.ConfirmPlan.load(exp_dir / C.CONFIRM_DIR / C.PLAN_FILE).seeds
            used += f", the confirmation {', '.join(map(str, confirmed))}"
        print(f"Retraining {len(plan.candidates)} configurations x {len(plan.seeds)} seeds "
              f"(train.seed {', '.join(map(str, plan.seeds))}; {used}), {cfg.train.epochs} epochs each, into {exp_dir / run}:")
        for label, values in plan.candidates.items():
            source = f" (trial {plan.sources[label]})" if plan.sources[label] else " (the experiment's own values)"
            print(f"  {label}{source}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
        grid = C.run_confirm(exp_dir, cfg, plan, run=run, resume=args.resume, address=args.address,
                             verbose=args.verbose)
        results = C.seed_results(grid, cfg, plan)
        # (--holdout: the confirmation measured the evaluation noise already)
        noise = evaluation_noise(results, exp_dir, args.noise, args.device) if args.noise and not args.holdout else None
    except (ConfigError, DataError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    table = C.confirm_table(results, plan, metric, noise.sd if noise else None)
    confirm_dir = exp_dir / run
    table.to_csv(confirm_dir / C.TABLE_FILE, index=False)
    title = "The best confirmed configuration on new seeds" if args.holdout else "Confirmation"
    text = "\n".join([f"{title} of {exp_dir} ({C.table_title(metric)}):",
                      C.format_confirm_table(table, metric), "", *C.noise_lines(table, metric, noise)])
    (confirm_dir / C.TEXT_FILE).write_text(text + "\n")
    import pandas as pd

    from core.results import save_leaderboard

    # The leaderboard's one writer reads the confirmation tables just written for its lines.
    searched = pd.read_csv(exp_dir / "leaderboard.csv", keep_default_na=False, na_values=[""])
    _, board = save_leaderboard(searched, exp_dir, cfg)
    _, lines, _ = C.leaderboard_annotations(exp_dir, cfg, searched)
    if args.holdout:   # its own line, and what to ship; the confirmation's are unchanged
        lines = [line for line in lines if line.startswith(C.HOLDOUT_LINE)] + [C.ship_line(table, exp_dir)]
    # The answer last: the leaderboard's lines (the verdict), after where the tables are.
    print(f"\n{text}\nSaved {confirm_dir / C.TABLE_FILE}, {confirm_dir / C.TEXT_FILE}; updated {board}\n\n"
          + "\n".join(lines))
    if grid.num_errors:
        again = "--holdout" if args.holdout else f"--top {args.top}"
        print(f"\n{grid.num_errors} retraining(s) crashed. Continue with:\n  python experiments/confirm.py "
              f"{args.path} {again} --seeds {args.seeds}{' --verbose' if args.verbose else ''} --resume")
        return 1
    return 0


def evaluation_noise(results, exp_dir: Path, draws: int, device: str):
    """core.confirm.evaluation_noise on the best kept checkpoint of the winner's first complete seed
    (the baseline's if the winner has none), or None when no seed kept one."""
    from analysis.checkpoints import load_checkpoint
    from core import confirm as C
    from core import metrics as M

    complete = [r for r in results if r.status == "completed" and r.checkpoint]
    chosen = next((r for label in ("top 1", C.BASELINE) for r in complete if r.candidate == label), None)
    if chosen is None:
        print("Evaluation noise not measured: no retraining kept a checkpoint")
        return None
    loaded = load_checkpoint(chosen.checkpoint, device=device, progress=lambda message: None)
    reference = M.load_reference(M.reference_statistics(loaded.data, loaded.cfg.metrics, loaded.cfg.cache_path,
                                                        device=device, progress=lambda message: None))
    return C.evaluation_noise(loaded.family, reference, loaded.cfg, draws, device,
                              checkpoint=os.path.relpath(chosen.checkpoint, exp_dir))


if __name__ == "__main__":
    sys.exit(main())
