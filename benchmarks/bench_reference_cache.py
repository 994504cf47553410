"""One evaluation with cached reference statistics vs one that recomputes them (target ratio <= 0.6).

Both sides score the same images against the same built-in Monets and return the same numbers:
  cached      reference_statistics finds the file -> load_reference -> evaluate
  recomputed  the file is deleted first, so reference_statistics extracts the Monets' features again
The extractor is built before timing starts (a trial builds it once). "Generated" images are the
prepared train/photo images, held in memory as uint8, so generation costs nothing here. The sides
alternate (cached first, then recomputed first, ...) so drift in machine load hits both alike.

    python benchmarks/bench_reference_cache.py [--extractor random|inception-fid-helper] [--repeats 3]
        [--image-size 64] [--builtin-count 300] [--num-samples 100]

It runs single-threaded by default, like a trial with cpus_per_trial=1; set OMP_NUM_THREADS to change
that (torch and numpy's OpenBLAS both follow it; on a busy machine OpenBLAS with more threads than
free cores slows FID's eigenvalues several-fold).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch/numpy load their thread pools

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.config import DataConfig, MetricsConfig  # noqa: E402
from core.data import ImageDataset, eval_transform, prepare_data  # noqa: E402
from core.feature_extractors import get_extractor  # noqa: E402
from core.metrics import FID, evaluate, load_reference, reference_statistics, to_uint8  # noqa: E402


def one_evaluation(prepared, metrics_cfg, cache_dir, generated, batch_size) -> tuple[float, float, float]:
    """Seconds spent getting the reference (reference_statistics + load_reference) and in evaluate,
    and the FID."""
    start = time.perf_counter()
    reference = load_reference(reference_statistics(prepared, metrics_cfg, cache_dir, progress=lambda message: None))
    loaded = time.perf_counter()
    scores = evaluate(generated.split(batch_size), reference, metrics_cfg)
    return loaded - start, time.perf_counter() - loaded, scores[FID]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--extractor", default="random", choices=["random", "inception-fid-helper"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--builtin-count", type=int, default=300,
                        help="built-in images per domain (Kaggle has 300 Monets)")
    parser.add_argument("--num-samples", type=int, default=100, help="generated images scored per evaluation")
    args = parser.parse_args()

    metrics_cfg = MetricsConfig(extractor=args.extractor, num_samples=args.num_samples)
    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = Path(tmp)
        data_cfg = DataConfig(source="builtin", image_size=args.image_size, builtin_count=args.builtin_count)
        prepared = prepare_data(data_cfg, cache_dir, progress=lambda message: None)
        photos = ImageDataset(prepared, "train/photo", eval_transform(data_cfg))
        n = min(args.num_samples, len(photos))
        generated = to_uint8(torch.stack([photos[i][0] for i in range(n)]))      # (n, 3, S, S)
        get_extractor(metrics_cfg.extractor, metrics_cfg.weights_path, cache_dir)  # built once, untimed
        reference_statistics(prepared, metrics_cfg, cache_dir, progress=lambda message: None)

        print(f"extractor {args.extractor}; {prepared.count('train/monet')} reference Monets and {n} generated "
              f"images at {args.image_size} px; {torch.get_num_threads()} torch threads, "
              f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        cached_times, recomputed_times, fids = [], [], set()
        for repeat in range(args.repeats):
            for side in (("cached", "recomputed") if repeat % 2 == 0 else ("recomputed", "cached")):
                if side == "recomputed":
                    for old in (cache_dir / "reference").glob("*.pt"):
                        old.unlink()
                reference_s, evaluate_s, fid = one_evaluation(prepared, metrics_cfg, cache_dir, generated,
                                                              metrics_cfg.batch_size)
                (cached_times if side == "cached" else recomputed_times).append(reference_s + evaluate_s)
                fids.add(round(fid, 6))
                print(f"  repeat {repeat + 1}  {side:<10}  {reference_s + evaluate_s:7.2f} s  (reference "
                      f"{reference_s:6.2f} s + evaluate {evaluate_s:6.2f} s)   FID {fid:.4f}")

    cached, recomputed = statistics.median(cached_times), statistics.median(recomputed_times)
    print(f"median cached      {cached:7.2f} s")
    print(f"median recomputed  {recomputed:7.2f} s")
    print(f"ratio cached / recomputed = {cached / recomputed:.2f}  (target <= 0.60)")
    print(f"same FID on both sides: {'yes' if len(fids) == 1 else 'NO: ' + str(sorted(fids))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
