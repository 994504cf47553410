"""Training throughput inside a Ray Tune trial vs the same loop run bare (target ratio >= 0.95).

Both runs execute `core.trainable.run_trial` on the same config, data and reference statistics: once
in this process with a LocalSession, once as the only trial of a real `tune.Tuner`. Each reports
`images_per_s`, measured over training iterations only (evaluation excluded), and the mean over
reports is compared. The runs alternate (bare, tune, bare, tune, ...) so drift in machine load
hits both sides alike.

    python benchmarks/bench_trainable_overhead.py [--repeats 3] [--space search_spaces/cyclegan_builtin.yaml] [overrides...]
"""

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.config import config_to_dict, load_experiment  # noqa: E402
from core.driver import prepare_experiment  # noqa: E402
from core.trainable import LocalSession, run_trial, tune_trainable  # noqa: E402


def bare(tree, ready, root) -> float:
    session = LocalSession(root)
    run_trial({}, experiment=tree, prepared_root=ready.prepared_root, reference_path=ready.reference_path,
              session=session)
    return statistics.mean(r["images_per_s"] for r in session.results)


def in_tune(tree, ready, storage, cpus) -> float:
    from ray import tune

    trainable = tune.with_resources(
        tune.with_parameters(tune_trainable, experiment=tree, prepared_root=ready.prepared_root,
                             reference_path=ready.reference_path), {"cpu": cpus})
    grid = tune.Tuner(trainable, param_space={},
                      run_config=tune.RunConfig(storage_path=storage, verbose=0)).fit()
    history = grid[0].metrics_dataframe
    return float(history["images_per_s"].mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="search_spaces/cyclegan_builtin.yaml")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    import ray

    overrides = ["train.epochs=3", "train.eval_every=3", "logging.tensorboard=false", *args.overrides]
    cfg = load_experiment(args.space, overrides)
    tree, ready = config_to_dict(cfg), prepare_experiment(cfg, progress=lambda message: None)
    ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    bare_rates, tune_rates = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            bare_rates.append(bare(tree, ready, Path(tmp) / f"bare{i}"))
            tune_rates.append(in_tune(tree, ready, str(Path(tmp) / f"tune{i}"), cfg.search.cpus_per_trial))
            print(f"repeat {i + 1}: bare {bare_rates[-1]:.1f} img/s, in Tune {tune_rates[-1]:.1f} img/s", flush=True)
    ratio = statistics.median(tune_rates) / statistics.median(bare_rates)
    print(f"{cfg.family} {cfg.data.image_size}px, {cfg.search.cpus_per_trial} CPU per trial: "
          f"median bare {statistics.median(bare_rates):.1f} img/s, in Tune {statistics.median(tune_rates):.1f} img/s")
    print(f"ratio in-Tune / bare throughput: {ratio:.3f} (target >= 0.95: {'OK' if ratio >= 0.95 else 'BELOW'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
