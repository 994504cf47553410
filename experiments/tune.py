"""Run a hyperparameter search.

    python experiments/tune.py --space search_spaces/quickstart.yaml
    python experiments/tune.py --space search_spaces/cyclegan.yaml --dry-run
    python experiments/tune.py --space search_spaces/quickstart.yaml --resume      # after Ctrl-C / kill
    python experiments/tune.py --space search_spaces/cyclegan.yaml --smoke-test    # tiny, offline, ~1 min
    python experiments/tune.py --space search_spaces/cyclegan.yaml model.ngf=32 train.epochs=50
    python experiments/tune.py --space search_spaces/cyclegan.yaml --address auto --storage s3://bucket/runs

Results go to <storage>/<name>/ (default runs/<space name>/): `tensorboard --logdir runs/`.
The console shows one line per trial event (finished, stopped at a rung, failed, retried), on a
terminal a live status line between them, then the leaderboard, and the answer last. --verbose adds
Ray Tune's and Optuna's own output: status tables, every trial's configuration and epoch lines.
--address joins a running Ray cluster (`ray start --head` on one machine, `ray start
--address=HEAD:6379` on the others); on more than one machine --storage must be a path every node
shares or a cloud URI (s3://, gs://), so results and checkpoints survive the loss of any node.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from core.config import ConfigError, config_to_dict, load_experiment  # noqa: E402
from core.errors import DataError  # noqa: E402

# --smoke-test: tiny everything, offline (builtin data, random-feature extractor), about a minute.
SMOKE_TEST_OVERRIDES = [
    "data.source=builtin", "data.image_size=32", "data.load_size=36", "data.builtin_count=16",
    "data.max_images=16", "data.test_fraction=0.5", "train.epochs=2", "train.eval_every=1", "train.iters_per_epoch=2",
    "train.batch_size=1", "metrics.extractor=random", "metrics.num_samples=8",
    "metrics.kid_subset_size=4", "metrics.batch_size=8", "search.num_samples=2",
    "search.max_concurrent=2", "search.cpus_per_trial=1", "search.gpus_per_trial=0",
    "search.grace_period=1",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", required=True, help="search-space YAML (see search_spaces/)")
    parser.add_argument("overrides", nargs="*", help="config overrides, section.key=value")
    parser.add_argument("--name", help="experiment name (default: the space's name)")
    parser.add_argument("--storage", default="runs",
                        help="where experiments are stored: a local or shared path, or an s3:// / gs:// URI "
                             "(default: runs/)")
    parser.add_argument("--address", help="join a running Ray cluster: 'auto' (started on this machine with "
                                          "`ray start --head`) or HOST:PORT of its head; default: a local Ray")
    parser.add_argument("--num-samples", type=int, help="number of trials (overrides search.num_samples)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted experiment")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved space and exit")
    parser.add_argument("--smoke-test", action="store_true", help="tiny everything, offline, to check the setup")
    parser.add_argument("--verbose", action="store_true",
                        help="Ray Tune's and Optuna's own console output too (status tables, each trial's "
                             "configuration, its epoch lines and checkpoint messages)")
    args = parser.parse_intermixed_args(argv)   # overrides may come before, between or after the flags

    overrides = list(args.overrides)
    if args.smoke_test:
        # A key the space searches keeps its searched values (and the space its baseline inside them).
        searched = _searched_keys(args.space)
        overrides = [o for o in SMOKE_TEST_OVERRIDES if o.partition("=")[0] not in searched] + overrides
    if args.num_samples is not None:
        overrides.append(f"search.num_samples={args.num_samples}")
    if args.name:
        overrides.append(f"name={args.name}")
    elif args.smoke_test:
        overrides.append(f"name={Path(args.space).stem}-smoke")
    try:
        cfg = load_experiment(args.space, overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    if args.dry_run:
        print_space(cfg)
        from core.plan import check_experiment   # not core.search: a dry run does not import Ray

        try:
            print(f"\n# Checks: {check_experiment(cfg, progress=lambda message: None)}")
        except (ConfigError, DataError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0

    from core.results import console_leaderboard, leaderboard, pareto_summary, save_leaderboard, versus_baseline
    from core.plan import describe_search
    from core.search import experiment_dir, publish_experiment_files, run_search

    print(f"Search {cfg.name!r} ({cfg.family}, {cfg.search.num_samples} trials): {describe_search(cfg)}", flush=True)
    try:
        exp_dir = experiment_dir(args.storage, cfg.name, cfg.cache_path)   # a local mirror for a URI
        grid = run_search(cfg, args.storage, resume=args.resume, address=args.address, verbose=args.verbose)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    board = leaderboard(grid, cfg)
    csv_path, txt_path = save_leaderboard(board, exp_dir, cfg)
    publish_experiment_files(cfg, args.storage)
    remote = "://" in args.storage
    print(f"\nLeaderboard ({cfg.family}, by best {cfg.search.metric}; every column in leaderboard.txt):")
    print(console_leaderboard(board, cfg, exp_dir))
    print(f"\nSaved {csv_path} and {txt_path}" + (f" (uploaded to {args.storage})" if remote else ""))
    print(f"Compare trials:  tensorboard --logdir {args.storage.rstrip('/') + '/' + cfg.name if remote else exp_dir}")
    if cfg.search.searcher == "optuna":
        print(f"Optuna study:    optuna-dashboard sqlite:///{exp_dir / 'optuna.db'}")
    # The answer last: what the search found, then what to run next.
    if cfg.search.objectives:
        print(f"\n{pareto_summary(board, cfg.search.objectives)}")
    print(f"\n{versus_baseline(board, cfg.search.metric)}")
    from core.metric_registry import direction

    column = f"best_{cfg.search.metric}"
    evaluated = int(board[column].notna().sum()) if column in board else 0   # trials with a score to rank
    if evaluated > 1 and not remote and direction(cfg.search.metric) == "min":   # what confirm.py compares
        if cfg.search.racing_options is not None:
            print(f"Decided on the seeds raced inside the search; the check on seeds it never saw: "
                  f"python experiments/confirm.py {exp_dir} --holdout")
        else:
            print(f"Each trial trained once: is the winner better than the defaults, or selection noise? "
                  f"python experiments/confirm.py {exp_dir} retrains both with fresh seeds.")
    continue_with = (f"python experiments/tune.py --space {args.space} {' '.join(args.overrides)} --storage {args.storage}"
                     f"{' --name ' + args.name if args.name else ''}{' --address ' + args.address if args.address else ''}"
                     f"{' --smoke-test' if args.smoke_test else ''}{' --verbose' if args.verbose else ''} --resume")
    if getattr(grid, "stopped_by_time_budget", False):
        if not evaluated:
            print(f"\nThe time budget ({cfg.search.time_budget}) ran out before any trial reported an evaluation: "
                  f"nothing to rank yet. Continue with a larger budget:\n  {continue_with} search.time_budget=...")
            return 1
        print(f"\nThe time budget ({cfg.search.time_budget}) is used up; {evaluated} of {cfg.search.num_samples} "
              f"trials reported an evaluation. Continue with a larger budget:\n  {continue_with} search.time_budget=...")
        return 0
    unfinished = len(board) < cfg.search.num_samples or grid.num_errors
    if unfinished:
        print(f"\nThe experiment is incomplete ({len(board)}/{cfg.search.num_samples} trials, "
              f"{grid.num_errors} errors). Continue it with:\n  {continue_with}")
        return 1
    return 0


def _searched_keys(space: str) -> set[str]:
    """The keys the space file searches (an unreadable file is left to load_experiment to report)."""
    from core.config import ConfigError, read_yaml

    try:
        search = read_yaml(space).get("search") or {}
    except (ConfigError, OSError):
        return set()
    return set(search.get("space") or {}) if isinstance(search, dict) else set()


def print_space(cfg) -> None:
    import yaml

    from core.plan import baseline_points, describe_search
    from core.space import dimensions

    tree = config_to_dict(cfg)
    del tree["search"]   # shown below, dimension by dimension
    print(f"# Experiment {cfg.name!r}: family {cfg.family}, {cfg.search.num_samples} trials")
    print(yaml.safe_dump(tree, sort_keys=False).rstrip())
    print("\n# Searched:")
    for dimension in dimensions(cfg.search.space):
        print(f"  {dimension.key}: {dimension.describe()}")
    points = baseline_points(cfg)
    if points:
        print("\n# Baseline (the first trial, trained to the end; the leaderboard compares the best with it):")
        for key, value in points[0].items():
            print(f"  {key}: {value!r}")
    else:
        print("\n# Baseline: none (search.baseline: false)")
    print(f"\n# Search: {describe_search(cfg)}")


if __name__ == "__main__":
    sys.exit(main())
