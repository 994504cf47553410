"""Whole searches through tune.py: the baseline trial and its ratio, a diverged trial in the stored
Optuna study, a finished search extended with more trials, and the wall-clock budget."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
TUNE = [sys.executable, str(ROOT / "experiments" / "tune.py")]
SMOKE = ["--space", "search_spaces/cyclegan_builtin.yaml", "--smoke-test"]


def tune(*args, timeout=600):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([*TUNE, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def reports(trial_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]


def study_of(exp: Path):
    return optuna.load_study(study_name=exp.name, storage=f"sqlite:///{exp / 'optuna.db'}")


@pytest.mark.slow
def test_a_diverged_trial_ranks_below_every_healthy_one_in_the_study_and_keeps_its_record(tmp_path):
    # The baseline (lambda_cycle 10) trains normally; a cycle weight of 1e39 overflows float32 at once.
    space = "search.space={model.lambda_cycle: {choice: [10.0, 1.0e+39]}, model.lr_g: {loguniform: [1.0e-4, 3.0e-4]}}"
    out = tune(*SMOKE, "--storage", str(tmp_path), "--num-samples", "4", "search.scheduler=fifo", space)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    exp = tmp_path / "cyclegan_builtin-smoke"
    board = pd.read_csv(exp / "leaderboard.csv")
    diverged = board[board["status"] == "diverged"]
    healthy = board[board["status"] == "completed"]
    assert len(diverged) >= 1 and len(healthy) >= 1, board.to_string()
    assert (diverged["model.lambda_cycle"] == 1e39).all() and (healthy["model.lambda_cycle"] == 10.0).all()
    assert diverged["status_detail"].str.contains("diverged: ").all()

    trials = study_of(exp).trials
    assert len(trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    values = {t.params["model.lambda_cycle"]: [] for t in trials}
    for t in trials:
        values[t.params["model.lambda_cycle"]].append(t.value)
    assert max(values[10.0]) < min(values[1e39]) == float("inf"), values


@pytest.mark.slow
def test_resume_with_more_trials_grows_a_finished_search_and_leaves_the_first_untouched(tmp_path):
    args = [*SMOKE, "--storage", str(tmp_path), "search.scheduler=fifo"]
    out = tune(*args, "--num-samples", "2")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    exp = tmp_path / "cyclegan_builtin-smoke"
    before = {p.name: (p / "result.json").read_text() for p in exp.glob("cyclegan_*")}
    assert len(before) == 2

    refused = tune(*args, "--num-samples", "3", "--resume", "train.epochs=3")
    assert refused.returncode == 2 and "train.epochs: 2 then, 3 now" in refused.stderr, refused.stderr[-2000:]

    out = tune(*args, "--num-samples", "3", "--resume")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "extending the search from 2 to 3 trials" in out.stdout
    after = {p.name: (p / "result.json").read_text() for p in exp.glob("cyclegan_*")}
    assert len(after) == 3 and all(after[name] == text for name, text in before.items())
    assert len(pd.read_csv(exp / "leaderboard.csv")) == 3
    assert len(study_of(exp).trials) == 3
    assert tune(*args, "--num-samples", "2", "--resume").returncode == 2, "a search cannot shrink"


@pytest.mark.slow
def test_a_time_budget_stops_the_search_on_time_and_a_larger_one_continues_it(tmp_path):
    args = [*SMOKE, "--storage", str(tmp_path), "--num-samples", "4", "search.max_concurrent=1",
            "search.scheduler=fifo", "train.epochs=4", "train.iters_per_epoch=100"]   # over a minute in all
    start = time.monotonic()
    out = tune(*args, "search.time_budget=20s")
    took = time.monotonic() - start
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "time budget used up" in out.stdout and "The time budget (20s) is used up" in out.stdout
    exp = tmp_path / "cyclegan_builtin-smoke"
    board = pd.read_csv(exp / "leaderboard.csv")
    assert 1 <= len(board) < 4, board.to_string()
    used = json.loads((exp / "search_time.json").read_text())["seconds"]
    assert 20 <= used < 40 and took < 120, (used, took)

    out = tune(*args, "search.time_budget=20m", "--resume")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    board = pd.read_csv(exp / "leaderboard.csv")
    assert len(board) == 4 and (board["status"] == "completed").all(), board.to_string()


@pytest.mark.slow
def test_a_pbt_search_exploits_and_the_leaderboard_says_who_copied_whom(tmp_path):
    # More trials than slots, and one kept checkpoint: an exploiting trial waits, paused, while its
    # donor trains on and keep-top-k deletes the checkpoint it was to copy (unless copied at once).
    out = tune(*SMOKE, "--storage", str(tmp_path), "--num-samples", "5", "search.max_concurrent=2",
               "search.scheduler=pbt", "search.searcher=random", "train.epochs=6", "search.baseline=false",
               "search.keep_checkpoints=1", "search.pbt={perturbation_interval: 1, quantile_fraction: 0.5}")
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    exp = tmp_path / "cyclegan_builtin-smoke"
    board = pd.read_csv(exp / "leaderboard.csv")
    assert len(board) == 5 and (board["status"] == "completed").all(), board.to_string()
    assert "Could not recover from checkpoint" not in out.stdout + out.stderr
    # Disk stays bounded: per trial the kept checkpoint, the latest, and at most one donor copy.
    for trial in board["trial"]:
        assert len(list((exp / trial).glob("checkpoint_*"))) <= 2, trial
        assert len(list((exp / trial).glob("pbt_donor/*/checkpoint_*"))) <= 1, trial
    exploited = board.dropna(subset=["schedule"]) if "schedule" in board else board.iloc[0:0]
    assert len(exploited) >= 1, out.stdout[-4000:]
    trials = set(board["trial"])
    for _, row in exploited.iterrows():
        for step in row["schedule"].split(" | "):
            epoch, copied = step.split(": copied ")
            assert epoch.startswith("epoch ") and copied.split(",")[0] in trials - {row["trial"]}, row["schedule"]
    # The trial's own reports say the same, and its log line names the donor and the new values.
    row = exploited.iloc[0]
    first = next(r for r in reports(exp / row["trial"]) if r.get("exploited_from"))
    assert f"epoch {first['exploited_at_epoch']}: copied {first['exploited_from']}" in row["schedule"]
    assert f"continues {first['exploited_from']}'s weights" in out.stdout + out.stderr
    # Ray's PBT pitfalls did not bite: no checkpoint registered twice and deleted twice, no trial that
    # copied a donor at its last epoch and ended with the donor's record, no report lost on a restart.
    assert "Error handling checkpoint" not in out.stdout + out.stderr
    for trial in board["trial"]:
        rows = reports(exp / trial)
        # A trial that copies a donor jumps to the donor's epoch; otherwise each report is the next
        # evaluation: none skipped, none trained again. (A donor used to hand out the checkpoint of
        # its report before the ranked one, or right after its own exploit its donor's: a trial
        # then got its own older weights back and trained epochs again, 1-5, 4, ...)
        for before, after in zip(rows, rows[1:]):
            assert after["epoch"] == before["epoch"] + 1 or after.get("exploited_from"), \
                (trial, [r["epoch"] for r in rows])
        assert rows[-1]["epoch"] == 6 and rows[-1]["trial_id"] in trial, trial
    assert not board.loc[~board["baseline"], "schedule"].isna().all()


@pytest.mark.slow
def test_a_two_objective_search_writes_its_pareto_front(tmp_path):
    out = tune(*SMOKE, "--storage", str(tmp_path), "--num-samples", "3", "search.metric=[fid, precision]")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    exp = tmp_path / "cyclegan_builtin-smoke"
    board = pd.read_csv(exp / "leaderboard.csv")
    assert {"pareto", "best_fid", "best_precision", "precision", "recall"} <= set(board.columns)
    # The front, computed here from the trials' own best values, comes first.
    points = [(r["best_fid"], -r["best_precision"]) for _, r in board.iterrows()]
    dominated = [any(o[0] <= p[0] and o[1] <= p[1] and o != p for o in points) for p in points]
    assert list(board["pareto"]) == [not d for d in dominated]
    assert list(board["pareto"]) == sorted(board["pareto"], reverse=True)
    assert "Pareto front (fid lower is better, precision higher is better)" in (exp / "leaderboard.txt").read_text()
    study = study_of(exp)
    assert [d.name for d in study.directions] == ["MINIMIZE", "MAXIMIZE"] and len(study.trials) == 3
