"""Plant known regressions, one at a time, and check that the tests meant to catch each one fail.

Each regression is a small change to the product (a line or two) (a real bug of the kind that was fixed here,
or that a test was written against). For each, a copy of the tree (`--tree`, default this
checkout, uncommitted changes included) gets the change and runs the tests that should catch it;
the script prints caught / MISSED per regression. Tests are named by file and -k expression, so the
same list runs against an older tree whose tests had other names (files missing there are skipped):
that is how a test-suite change shows it catches what the suite caught before.

    python benchmarks/planted_regressions.py                     # every regression, ~20 min on 2 cores
    python benchmarks/planted_regressions.py --only diverged_scores_finite --tree /tmp/old-checkout

Not a unit test (it runs searches for tens of minutes); `make mutation` is its fine-grained sibling.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Regression:
    name: str
    what: str                               # the bug, in words
    changes: tuple[tuple[str, str, str], ...]  # (file, text replaced (must occur exactly once), new text)
    tests: tuple[str, ...]                  # test files that hold the catching tests
    keyword: str                            # pytest -k expression selecting them


REGRESSIONS = [
    Regression("diverged_scores_finite", "a diverged trial tells the searcher its best score so far, not the worst one",
               (("core/trainable.py",
                 '    return {key: _worst(name) for name in cfg.search.metrics for key in (f"best_{name}", name)}',
                 "    return {}"),),
               ("tests/test_trainable.py", "tests/test_search_runs.py"), "diverg"),
    Regression("retention_by_fid", "checkpoints kept by FID whatever search.metric says",
               (("core/driver.py", "checkpoint_score_attribute=cfg.search.metric,", 'checkpoint_score_attribute="fid",'),),
               ("tests/test_search_runs.py", "tests/test_reported_scores.py"), "kid_search"),
    Regression("staging_left_in_tmpdir", "staged checkpoints never removed from TMPDIR (nor by the driver's sweep)",
               (("core/checkpoints.py", "        shutil.rmtree(directory, ignore_errors=True)\n\n\n", "        pass\n\n\n"),
                ("core/driver.py", "            remove_staging_leftovers(trial_ids(storage, exp_path, cfg.family) + removed_ids)\n", ""),
                ("core/driver.py", "    remove_staging_leftovers([name[len(family) + 1:] for name in unrecorded])\n", "")),
               ("tests/test_faults.py", "tests/test_records.py"), "driver_interrupted or never_recorded"),
    Regression("pareto_one_objective", "the Pareto front judged on the first objective only",
               (("core/results.py", "        return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))",
                 "        return a[0] < b[0]"),),
               ("tests/test_reported_scores.py", "tests/test_search_runs.py"), "pareto"),
    Regression("grow_ignored", "--resume --num-samples N does not raise the saved trial count",
               (("core/internals.py", '    state["total_samples"], state["finished"] = num_samples, False',
                 '    state["finished"] = False'),),
               ("tests/test_search_runs.py",), "grows"),
    Regression("no_retry_after_a_crash", "a trial whose process or node is lost is not retried",
               (("core/driver.py", "failure_config=tune.FailureConfig(max_failures=cfg.search.max_failures),",
                 "failure_config=tune.FailureConfig(max_failures=0),"),),
               ("tests/test_faults.py",), "trial_killed or trial_process_killed or worker_node"),
    Regression("restore_ignores_checkpoint", "a retried or resumed trial starts from scratch",
               (("core/trainable.py", "        checkpoint = self._tune.get_checkpoint()\n", "        checkpoint = None\n"),),
               ("tests/test_faults.py", "tests/test_search.py"),
               "trial_killed or trial_process_killed or worker_node or driver or interrupted"),
    Regression("wandb_left_by_killed_driver", "the driver leaves W&B's staging directories when it is killed",
               (("core/driver.py",
                 "        release_wandb_in_driver()   # nothing of W&B's left in TMPDIR if this driver is killed\n", ""),),
               ("tests/test_faults.py",), "driver"),
    Regression("step_restarts_on_resume", "a resumed trial counts its global step from 0 again",
               (("core/trainable.py", 'start_epoch, step, best = state["epoch"], state["step"], best | state["best"]',
                 'start_epoch, step, best = state["epoch"], 0, best | state["best"]'),),
               ("tests/test_trainable.py",), "resume_equals"),
    Regression("collapse_not_detected", "a generator drawing one image for every latent trains on as if healthy",
               (("core/trainable.py", "            if scores[M.COLLAPSED]:\n", "            if False:\n"),),
               ("tests/test_trainable.py",), "collapsed"),
    Regression("record_repair_off", "a resume trusts Ray's snapshot of checkpoints that are gone or newer than it",
               (("core/driver.py", "    repair_checkpoint_records(exp_path, storage.filesystem, progress, removed=removed)\n", ""),),
               ("tests/test_records.py",), "gone_or_damaged"),
    Regression("moved_experiment_writes_where_it_was", "a resumed copy of an experiment writes into the original",
               (("core/driver.py", "    rebase_moved_experiment(storage, exp_path, progress)\n", ""),),
               ("tests/test_search_runs.py",), "grows"),
    Regression("result_files_from_storage", "a trial restarting within a run takes storage's older result files back",
               (("core/driver.py", "            if trial.checkpoint and not (local.is_file() and local.stat().st_size > 0):\n",
                 "            if trial.checkpoint:\n"),),
               ("tests/test_result_files.py",), "restarting"),
    Regression("generator_never_steps", "the WGAN-GP generator's optimizer never steps",
               (("core/models/wgan_gp.py", "            self.opt_g.step()\n", "            pass\n"),),
               ("tests/test_learning.py",), "wgan_gp"),
]


def tree_files(tree: Path) -> list[str]:
    """The files of `tree` that git tracks or would track (uncommitted ones included)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=tree, capture_output=True,
                            text=True, check=True).stdout.splitlines()
    return [f for f in listed if (tree / f).is_file()]


def plant(regression: Regression, tree: Path, files: list[str]) -> tuple[str, float, str]:
    """(outcome, seconds, last lines of pytest's output) for one regression planted in a copy of `tree`."""
    tests = [t for t in regression.tests if (tree / t).is_file()]
    if not tests:
        return "no such tests", 0.0, ""
    with tempfile.TemporaryDirectory(prefix="planted-") as copy:
        copy = Path(copy)
        for f in files:
            (copy / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(tree / f, copy / f)
        for path, old, new in regression.changes:
            text = (copy / path).read_text()
            if text.count(old) != 1:
                return f"cannot plant: the text occurs {text.count(old)} times in {path}", 0.0, ""
            (copy / path).write_text(text.replace(old, new))
        # The copy's own packages first, for pytest, tune.py and the Ray workers they start.
        env = {**os.environ, "PYTHONPATH": str(copy), "PAINTSWEEP_CACHE": str(copy / ".cache")}
        start = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests,
                               "-k", regression.keyword], cwd=copy, env=env, capture_output=True, text=True)
        took = time.monotonic() - start
    outcome = {0: "MISSED", 1: "caught", 5: "no test selected"}.get(done.returncode, f"pytest exit {done.returncode}")
    return outcome, took, "\n".join(done.stdout.splitlines()[-3:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose tests are judged (default: this one)")
    parser.add_argument("--only", nargs="+", choices=[r.name for r in REGRESSIONS], help="plant only these")
    args = parser.parse_args(argv)

    tree = args.tree.resolve()
    files = tree_files(tree)
    chosen = [r for r in REGRESSIONS if not args.only or r.name in args.only]
    print(f"Planting {len(chosen)} regressions in copies of {tree}")
    caught = 0
    for regression in chosen:
        outcome, took, tail = plant(regression, tree, files)
        caught += outcome == "caught"
        print(f"{outcome:>8}  {regression.name:28} {took:6.0f} s  {regression.what}", flush=True)
        if outcome not in ("caught", "MISSED"):
            print(f"          {tail}")
    print(f"{caught} of {len(chosen)} caught")
    return 0 if caught == len(chosen) else 1


if __name__ == "__main__":
    sys.exit(main())
