"""Peak memory of the quickstart search (target <= 4 GiB).

Runs `experiments/tune.py --space search_spaces/quickstart.yaml` in a fresh storage directory and
samples the memory of its whole process tree (the driver, Ray's services and the trial workers)
twice a second. The target applies to the sum of PSS (proportional set size: a page shared by n
processes counts 1/n in each), what the tree really holds; the sum of RSS, which counts a shared
page in every process mapping it, is printed beside it as an upper bound.

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


def tree_memory(process: psutil.Process) -> tuple[int, int]:
    """(sum of RSS, sum of PSS) over the process tree. PSS charges each shared page to the processes
    sharing it in equal parts (PyTorch's and Ray's libraries are mapped by every worker), so its sum
    is what the tree really holds; the RSS sum counts every shared page once per process."""
    rss = pss = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            info = p.memory_full_info()   # Linux: reads /proc/<pid>/smaps_rollup
            rss, pss = rss + info.rss, pss + getattr(info, "pss", info.rss)
        except psutil.Error:  # exited between listing and reading
            pass
    return rss, pss


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
        handle, peak_rss, peak_pss = psutil.Process(driver.pid), 0, 0
        while driver.poll() is None:
            try:
                rss, pss = tree_memory(handle)
            except psutil.NoSuchProcess:
                break
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
            time.sleep(0.5)
        seconds = time.perf_counter() - start
    rss_gib, pss_gib = peak_rss / 2**30, peak_pss / 2**30
    print(f"quickstart: exit code {driver.returncode}, {seconds:.0f} s wall")
    print(f"peak RSS sum of the process tree: {rss_gib:.2f} GiB (shared pages counted once per process: an upper bound)")
    print(f"peak PSS sum of the process tree: {pss_gib:.2f} GiB (target <= {TARGET_GIB} GiB)")
    print(f"ratio peak PSS/target: {pss_gib / TARGET_GIB:.2f}  ({'OK' if pss_gib <= TARGET_GIB else 'OVER TARGET'})")
    return 0 if driver.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
