"""What does the gradient penalty cost? Training iterations per second of the wgan_gp family for each
loss, the same networks and data, measured side by side in one run.

    python benchmarks/bench_wgan_gp_losses.py                      # 64 px, CPU or the visible GPU
    python benchmarks/bench_wgan_gp_losses.py --image-size 128 --batch-size 16 --width 64 --repeats 5

Every loss trains the same networks (resnet generator, dcgan critic with layer norm, which all four
losses accept) from the same initial weights with g_steps = d_steps = 1, so only the loss differs.
The losses are timed in turns (repeat 1: every loss, repeat 2: every loss, ...) so that a machine
that slows down during the run slows all of them alike; each turn starts after warm-up iterations and each loss's
median over the repeats is reported. The wgan-gp/bce ratio is the cost of the gradient penalty
(an extra critic forward and a double backward per critic step).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from core.config import build_config  # noqa: E402
from core.data import prepare_data  # noqa: E402
from core.models.wgan_gp import LOSSES, WGANGP  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64, help="px")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--width", type=int, default=32, help="ngf = ndf")
    parser.add_argument("--iters", type=int, default=5, help="timed iterations per loss and repeat")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations before each timing")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    # One batch of real builtin paintings, reused by every iteration: data loading is not timed.
    tree = {"name": "bench", "family": "wgan_gp",
            "data": {"source": "builtin", "image_size": args.image_size, "builtin_count": 32},
            "train": {"batch_size": args.batch_size},
            "model": {"generator": "resnet", "critic": "dcgan", "norm_d": "layer", "g_steps": 1, "d_steps": 1,
                      "ngf": args.width, "ndf": args.width}}
    cache = Path(tempfile.gettempdir()) / "paintsweep-bench"
    data = prepare_data(build_config(tree).data, cache, progress=lambda *_: None)

    families = {}
    for loss in LOSSES:
        cfg = build_config(tree | {"model": tree["model"] | {"loss": loss}})
        torch.manual_seed(0)   # the same initial weights for every loss
        families[loss] = WGANGP(cfg, data, device)
    batch = next(iter(families[LOSSES[0]].make_loader(torch.Generator().manual_seed(0))))

    def timed(family) -> float:
        for _ in range(args.warmup):
            family.train_step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.iters):
            family.train_step(batch)   # ends with a host sync (.tolist() of its losses)
        return args.iters / (time.perf_counter() - start)

    speeds: dict[str, list[float]] = {loss: [] for loss in LOSSES}
    for _ in range(args.repeats):
        for loss, family in families.items():
            speeds[loss].append(timed(family))

    print(f"wgan_gp training iterations/s: {args.image_size} px, batch {args.batch_size}, g_steps = d_steps = 1, "
          f"ngf=ndf={args.width}, {device} ({torch.get_num_threads()} threads), median of {args.repeats} "
          f"x {args.iters} iterations")
    for loss in LOSSES:
        runs = ", ".join(f"{s:.2f}" for s in speeds[loss])
        print(f"  {loss:8s} {statistics.median(speeds[loss]):8.2f} it/s   (runs: {runs})")
    ratio = statistics.median(speeds["wgan-gp"]) / statistics.median(speeds["bce"])
    print(f"wgan-gp / bce throughput: {ratio:.2f} (an iteration with the gradient penalty takes {1 / ratio:.2f}x "
          f"the time of a bce one)")


if __name__ == "__main__":
    main()
