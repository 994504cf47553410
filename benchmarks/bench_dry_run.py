"""How long `tune.py --space search_spaces/quickstart.yaml --dry-run` takes now / before issue 25.

Before, validating a config imported every model family (core.models imported all of its modules)
and the dry run's checks lived in core.search, so they imported Ray Tune as well; now validation
imports only the named family and the dry run imports core.plan, which needs no Ray. Target: at
least 2x faster.

The old code is checked out with `git worktree add` into a temporary directory (removed at the
end); the two commands then run alternately, `--runs` times each, after one untimed run each (so
both find the builtin data prepared in the cache), and the medians are compared. Each command is
run from its own tree (tune.py puts its tree first on sys.path), with PYTHONPATH set to it.

    python benchmarks/bench_dry_run.py [--before 9015d41] [--runs 5]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "9015d412b12198ffb9501465b685ccc458b13ac5"   # main before issue 25
TARGET = 2.0                                         # before / now


def dry_run_seconds(tree: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    command = [sys.executable, "experiments/tune.py", "--space", "search_spaces/quickstart.yaml", "--dry-run"]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"the dry run in {tree} failed:\n{done.stderr[-2000:]}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default=BEFORE, help="the commit to compare with (default: main before issue 25)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each side")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="paintsweep-before-") as parent:
        old = Path(parent) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(old), args.before], cwd=ROOT, check=True)
        try:
            trees = {"before": old, "now": ROOT}
            for tree in trees.values():
                dry_run_seconds(tree)   # untimed: prepares the builtin data once
            times: dict[str, list[float]] = {side: [] for side in trees}
            for run in range(args.runs):
                for side, tree in (trees.items() if run % 2 == 0 else reversed(trees.items())):
                    times[side].append(dry_run_seconds(tree))
                print(f"run {run + 1}: before {times['before'][-1]:.2f} s, now {times['now'][-1]:.2f} s", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=False)

    before, now = statistics.median(times["before"]), statistics.median(times["now"])
    ratio = before / now
    print(f"tune.py --dry-run on the quickstart, median of {args.runs}: before ({args.before[:7]}) {before:.2f} s, "
          f"now {now:.2f} s: {ratio:.2f}x faster (target >= {TARGET}x)")
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
