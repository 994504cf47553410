"""Write one self-contained report.html of an experiment: opens in any browser, no Jupyter.

    python experiments/report.py runs/quickstart                  # -> runs/quickstart/report.html
    python experiments/report.py runs/cyclegan --out cyclegan.html --top 5

It opens with the answer: what was searched, the best configuration against the defaults, and
confirm.py's Confirmation / Best confirmed / Held out lines (or the command that runs each). Then
the details: the leaderboard, confirmation results when confirm.py has run (confirm/confirm.csv,
confirm-holdout/confirm.csv), the search metric per evaluation and what ASHA stopped, Optuna's views
of the study (importances, parallel coordinates, ...; the Pareto front for several objectives), and
the top trials' samples, scaled up pixel by pixel. Figures are embedded in the file (analysis/report.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", help="experiment directory, <storage>/<name>/ as written by experiments/tune.py")
    parser.add_argument("--out", help="the HTML file to write (default: <experiment>/report.html)")
    parser.add_argument("--top", type=int, default=3, help="trials whose sample grids are shown (default: 3)")
    args = parser.parse_args(argv)
    if args.top < 0:
        parser.error(f"--top must be 0 or more (trials whose samples are shown), got {args.top}")

    from analysis.experiments import NotAnExperiment
    from analysis.report import write_report

    try:
        out = write_report(args.path, args.out, top_k=args.top)
    except (NotAnExperiment, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"Wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
