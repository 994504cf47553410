"""The margins of the learning tests: how far below the untrained network's FID a short training
gets, per family, on several seeds and at 1 and 2 threads per trial (another floating-point
summation order, a cheap stand-in for another CPU). tests/test_learning.py's THRESHOLD must stay
well above the largest ratio printed here.

Runs exactly what the test runs (its CASES, its untrained_fid), so the figures are the test's own.

    python benchmarks/bench_learning_margins.py [--seeds 0 1 2] [--threads 1 2] [--spaces cyclegan_builtin.yaml ...]
"""

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from core.config import config_to_dict, load_experiment  # noqa: E402
from core.driver import prepare_experiment  # noqa: E402
from core.trainable import LocalSession, run_trial  # noqa: E402
from test_learning import CASES, SPACES, THRESHOLD, untrained_fid  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--spaces", nargs="+", default=list(CASES), choices=list(CASES))
    args = parser.parse_args(argv)

    print(f"{'space':24} {'threads':>7} {'seed':>4} {'untrained':>9}  best / untrained   FID per epoch")
    worst = {}
    for space in args.spaces:
        for threads in args.threads:
            for seed in args.seeds:
                cfg = load_experiment(SPACES / space, ["data.builtin_count=160", "data.test_fraction=0.25",
                                                       "train.eval_every=1", "metrics.num_samples=64",
                                                       "metrics.kid_subset_size=32", *CASES[space],
                                                       f"train.seed={seed}", f"train.threads={threads}"])
                ready = prepare_experiment(cfg, progress=lambda message: None)
                before = untrained_fid(cfg, ready.prepared_root, ready.reference_path)
                with tempfile.TemporaryDirectory() as root:
                    session = LocalSession(root)
                    run_trial({}, experiment=config_to_dict(cfg), prepared_root=ready.prepared_root,
                              reference_path=ready.reference_path, session=session)
                fids = [r["fid"] for r in session.results]
                ratio = min(fids) / before
                worst[space] = max(worst.get(space, 0.0), ratio)
                print(f"{space:24} {threads:>7} {seed:>4} {before:>9.3f}  {ratio:>16.3f}   "
                      f"{' '.join(f'{f:.3f}' for f in fids)}", flush=True)
    for space, ratio in worst.items():
        print(f"{space}: largest ratio {ratio:.3f}, THRESHOLD {THRESHOLD} ({THRESHOLD / ratio:.2f}x it)")
    return 0 if all(ratio < THRESHOLD for ratio in worst.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
