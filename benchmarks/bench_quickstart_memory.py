"""Peak memory of the quickstart search (target <= 4 GiB).

Runs `experiments/tune.py --space search_spaces/quickstart.yaml` in a fresh storage directory and
samples the resident memory of its whole process tree (the driver, Ray's services and the trial
workers) twice a second. The sum of RSS counts pages shared between processes more than once, so
it is an upper bound on what the machine really used.

    python benchmarks/bench_quickstart_memory.py [--space search_spaces/quickstart.yaml] [overrides...]
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
TARGET_GIB = 4.0


def tree_rss(process: psutil.Process) -> int:
    total = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:  # exited between listing and reading
            pass
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="search_spaces/quickstart.yaml")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as storage:
        command = [sys.executable, str(ROOT / "experiments/tune.py"), "--space", args.space,
                   "--storage", storage, *args.overrides]
        start = time.perf_counter()
        driver = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        handle, peak = psutil.Process(driver.pid), 0
        while driver.poll() is None:
            try:
                peak = max(peak, tree_rss(handle))
            except psutil.NoSuchProcess:
                break
            time.sleep(0.5)
        seconds = time.perf_counter() - start
    peak_gib = peak / 2**30
    print(f"quickstart: exit code {driver.returncode}, {seconds:.0f} s wall")
    print(f"peak RSS of the process tree: {peak_gib:.2f} GiB (target <= {TARGET_GIB} GiB)")
    print(f"ratio peak/target: {peak_gib / TARGET_GIB:.2f}  ({'OK' if peak_gib <= TARGET_GIB else 'OVER TARGET'})")
    return 0 if driver.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
