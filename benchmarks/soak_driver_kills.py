"""Soak: SIGKILL a search's driver at random moments, resume it each time, and check it finishes.

    python benchmarks/soak_driver_kills.py                       # 20 kills of the quickstart
    python benchmarks/soak_driver_kills.py --kills 8 --smoke     # the --smoke-test sizes, faster

Each round starts `tune.py` (with --resume after the first) in its own session, waits a random time
(seeded, so a failing sequence can be replayed), and kills the driver with every Ray process it
started. Then one last `--resume` must finish the search: every trial completed or stopped by ASHA,
the leaderboard complete and naming intact checkpoints only, no `paintsweep-*` left in the temp
directory. It prints one line per kill and a summary; the exit code is 0 when the search finished.
Not a test: it takes many minutes (the quickstart itself takes several).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from core.checkpoints import checkpoint_problem  # noqa: E402
from tune_cli import kill_session  # noqa: E402  (the tests' way to kill a driver and its Ray)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--smoke", action="store_true", help="tune.py --smoke-test sizes (about a minute a search)")
    parser.add_argument("--min-wait", type=float, default=5.0, help="seconds, shortest time before a kill")
    parser.add_argument("--max-wait", type=float, default=40.0, help="seconds, longest time before a kill")
    args = parser.parse_args()

    rng = random.Random(args.seed)
    storage = Path(tempfile.mkdtemp(prefix="soak-runs-", dir="/tmp"))
    temp = Path(tempfile.mkdtemp(prefix="soak-tmp-", dir="/tmp"))   # short: Ray's sockets live there
    env = {**os.environ, "TMPDIR": str(temp), "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    space = ["--space", "search_spaces/quickstart.yaml", *(["--smoke-test", "train.epochs=4",
                                                             "search.num_samples=4"] if args.smoke else [])]
    command = [sys.executable, str(ROOT / "experiments" / "tune.py"), *space, "--storage", str(storage)]
    name = "quickstart-smoke" if args.smoke else "quickstart"
    exp = storage / name
    repairs, finished_early = 0, 0
    try:
        for kill in range(args.kills):
            wait = rng.uniform(args.min_wait, args.max_wait)
            resume = ["--resume"] if (exp / "experiment.yaml").is_file() else []
            with open(temp / "driver.log", "w") as log:
                proc = subprocess.Popen([*command, *resume], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                        text=True, start_new_session=True, env=env)
                deadline = time.monotonic() + wait
                while time.monotonic() < deadline and proc.poll() is None:
                    time.sleep(0.2)
                ended = proc.poll() is not None
                kill_session(proc)
            output = (temp / "driver.log").read_text()
            repairs += output.count("resume: ")
            finished_early += ended
            kept = len(list(exp.glob("*/checkpoint_*")))
            print(f"kill {kill + 1:2d}/{args.kills} after {wait:5.1f} s"
                  f"{' (the driver had already exited)' if ended else ''}: {kept} checkpoints in storage, "
                  f"{output.count('resume: ')} checkpoint records repaired on this start", flush=True)

        start = time.monotonic()
        final = subprocess.run([*command, "--resume"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=3600)
        repairs += final.stdout.count("resume: ")
        board = pd.read_csv(exp / "leaderboard.csv") if (exp / "leaderboard.csv").is_file() else pd.DataFrame()
        statuses = board["status"].value_counts().to_dict() if not board.empty else {}
        broken = [p for p in board.get("checkpoint", pd.Series(dtype=str)).dropna() if checkpoint_problem(p)]
        left = [p.name for p in temp.iterdir() if p.name.startswith("paintsweep-")]
        ok = final.returncode == 0 and not broken and not left and \
            set(statuses) <= {"completed", "stopped early"} and len(board) > 0
        print(f"\nfinal --resume: exit {final.returncode} in {time.monotonic() - start:.0f} s; {len(board)} trials "
              f"{statuses}; leaderboard checkpoints intact: {len(board) - len(broken)}/{board['checkpoint'].notna().sum() if len(board) else 0}; "
              f"checkpoint records repaired over all starts: {repairs}; drivers that had finished before their kill: "
              f"{finished_early}; paintsweep-* left in TMPDIR: {len(left)}")
        if final.returncode != 0:
            print(final.stdout[-3000:] + final.stderr[-3000:])
        print("RESULT:", "the search finished" if ok else "FAILED")
        return 0 if ok else 1
    finally:
        shutil.rmtree(storage, ignore_errors=True)
        shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
