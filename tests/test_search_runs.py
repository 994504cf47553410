"""Whole searches through tune.py: a diverged trial, two objectives and KID retention, all read off one
shared four-trial search; the wall-clock budget, and the same search grown with more trials; PBT's
exploits. (What a search leaves in TMPDIR is test_faults.py's: its killed drivers and the run that
finishes the search start their own Ray, whose workers' TMPDIR it controls.)

The shared search (`four_trials`, about 20 s on the session's Ray) stands in for four that each tested
one of these: what they checked does not interact (a diverged trial has no checkpoints to retain, the
Pareto front and the KID ranking read the same leaderboard), so one run serves them all."""

import json
import math
import shutil
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from test_new_family import TOY_SPACE, toy_environment
from tune_cli import SMOKE, SMOKE_EXPERIMENT, load_script, reports, study_of, tune

tune_main = load_script("tune").main

# The baseline (lambda_cycle 10) trains normally; a cycle weight of 1e39 overflows float32 at once.
DIVERGING_SPACE = ("search.space={model.lambda_cycle: {choice: [10.0, 1.0e+39]}, "
                   "model.lr_g: {loguniform: [1.0e-4, 3.0e-4]}}")
EPOCHS, KEEP = 4, 2   # more evaluations than kept checkpoints + the latest: retention must choose


@pytest.fixture(scope="module")
def four_trials(tmp_path_factory, shared_ray):
    """(experiment dir, tune.py's output) of a two-objective search (KID, then precision) of 4 trials,
    FIFO, 4 evaluations each, keeping 2 checkpoints, where a cycle weight of 1e39 makes some trials
    diverge; on the session's Ray."""
    storage = tmp_path_factory.mktemp("four-trials")
    out = tune(*SMOKE, "--storage", str(storage), "--address", shared_ray, "--num-samples", "4",
               "search.scheduler=fifo", "search.metric=[kid, precision]", f"train.epochs={EPOCHS}",
               f"search.keep_checkpoints={KEEP}", DIVERGING_SPACE)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return storage / SMOKE_EXPERIMENT, out


@pytest.mark.slow
def test_a_diverged_trial_ranks_below_every_healthy_one_in_the_study_and_keeps_its_record(four_trials):
    exp, _ = four_trials
    board = pd.read_csv(exp / "leaderboard.csv")
    diverged = board[board["status"] == "diverged"]
    healthy = board[board["status"] == "completed"]
    assert len(diverged) >= 1 and len(healthy) >= 1, board.to_string()
    assert (diverged["model.lambda_cycle"] == 1e39).all() and (healthy["model.lambda_cycle"] == 10.0).all()
    assert diverged["status_detail"].str.contains("diverged: ").all()
    assert board["status"].tolist() == sorted(board["status"], key=lambda s: s == "diverged"), "diverged last"

    # The study saw each diverged trial as the worst possible on both objectives, every healthy one finite.
    trials = study_of(exp).trials
    assert len(trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    for t in trials:
        if t.params["model.lambda_cycle"] == 1e39:
            assert t.values == [float("inf"), float("-inf")], t.values
        else:
            assert all(abs(v) < float("inf") for v in t.values), t.values


@pytest.mark.slow
def test_a_two_objective_search_writes_its_pareto_front(four_trials):
    exp, _ = four_trials
    board = pd.read_csv(exp / "leaderboard.csv")
    assert {"pareto", "best_kid", "best_precision", "precision", "recall"} <= set(board.columns)
    # The front, computed here from the trials' own best values, comes first; a trial with no
    # evaluation (diverged in its first epoch) is on no front.
    points = [(r["best_kid"], -r["best_precision"]) for _, r in board.iterrows()]
    scored = [p for p in points if not any(math.isnan(v) for v in p)]
    on_front = [p in scored and not any(o[0] <= p[0] and o[1] <= p[1] and o != p for o in scored) for p in points]
    assert list(board["pareto"]) == on_front
    assert list(board["pareto"]) == sorted(board["pareto"], reverse=True)
    assert "Pareto front (kid lower is better, precision higher is better)" in (exp / "leaderboard.txt").read_text()
    study = study_of(exp)
    assert [d.name for d in study.directions] == ["MINIMIZE", "MAXIMIZE"] and len(study.trials) == 4


@pytest.mark.slow
def test_a_kid_search_ranks_its_leaderboard_and_keeps_its_checkpoints_by_kid(four_trials):
    """The first objective is KID: the retention policy keeps the best checkpoints by KID (plus the
    latest), and each leaderboard row names its trial's best by KID."""
    exp, _ = four_trials
    best_kid = {}
    for trial in sorted(exp.glob("cyclegan_*")):
        rows = reports(trial)
        if rows[-1]["trial_status"] == "diverged":
            assert not list(trial.glob("checkpoint_*")), "a trial that diverged in its first epoch saved nothing"
            continue
        assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))
        kids = [r["kid"] for r in rows]
        best_kid[trial.name] = min(kids)
        assert rows[-1]["best_kid"] == min(kids)
        # Ray numbers checkpoints by report (0-based): the best KEEP by KID, plus the latest.
        by_kid = sorted(range(EPOCHS), key=kids.__getitem__)
        kept = {f"checkpoint_{i:06d}" for i in by_kid[:KEEP]} | {f"checkpoint_{EPOCHS - 1:06d}"}
        assert {p.name for p in trial.glob("checkpoint_*")} == kept, trial.name
    assert best_kid, "no healthy trial"

    # What Ray recorded as each trial's retention policy (the scores above may happen to rank the
    # checkpoints the same way by FID): keep KEEP, the lowest kid.
    from ray.tune.execution.experiment_state import _find_newest_experiment_checkpoint
    from ray.tune.trainable.metadata import _TrainingRunMetadata
    from ray.tune.utils.serialization import _loads_with_cloudpickle

    state = _loads_with_cloudpickle(Path(_find_newest_experiment_checkpoint(str(exp))).read_text())
    policies = {(c.num_to_keep, c.checkpoint_score_attribute, c.checkpoint_score_order)
                for c in (_TrainingRunMetadata.from_json_state(metadata).checkpoint_manager._checkpoint_config
                          for _, metadata in state["trial_data"])}
    assert policies == {(KEEP, "kid", "min")}

    board = pd.read_csv(exp / "leaderboard.csv")
    ranked = board[board["trial"].isin(best_kid)]
    for _, group in ranked.groupby("pareto", sort=False):   # by KID within the front, and after it
        assert list(group["best_kid"]) == sorted(group["best_kid"])
    for _, row in ranked.iterrows():   # the kept checkpoint it names is the trial's best by KID
        kids = [r["kid"] for r in reports(exp / row["trial"])]
        assert row["best_kid"] == pytest.approx(best_kid[row["trial"]])
        assert Path(row["checkpoint"]).name == f"checkpoint_{kids.index(min(kids)):06d}"


# --- The wall-clock budget, then more trials ------------------------------------------------------

# 4 toy trials one at a time, each step slowed by a 0.4 s sleep (the toy family's slow_above_lr), so
# the search's length is the sleeps' and not the CPU's: 4 x 4 epochs x 4 steps = 26 s of sleep at the
# least, on any machine and at any number of threads, which a 20 s budget always cuts, and the first
# report comes one epoch (1.6 s of sleep) after the first trial starts. (A CycleGAN search of 100
# iterations an epoch took 40 s on one machine, 21 s on a faster one, and under 20 s at 2 threads
# once Ray's workers started faster.)
BUDGET_ARGS = ["--space", str(TOY_SPACE), "--name", "budgeted", "--num-samples", "4", "search.max_concurrent=1",
               "search.scheduler=fifo", "train.epochs=4", "train.iters_per_epoch=4", "model.slow_above_lr=0"]


@pytest.fixture(scope="module")
def budgeted(tmp_path_factory, shared_ray):
    """A search stopped by a 20 s time budget, then resumed with a larger one to its end: (experiment
    dir, tune.py's arguments, {"first": ..., "second": ...} with each run's output, and after the first
    its wall-clock seconds, leaderboard and recorded budget use). The grow test then extends it."""
    storage = tmp_path_factory.mktemp("budgeted")
    args = [*BUDGET_ARGS, "--storage", str(storage), "--address", shared_ray]
    exp = storage / "budgeted"
    start = time.monotonic()
    first = tune(*args, "search.time_budget=20s", env=toy_environment())
    took = time.monotonic() - start
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    runs = {"first": {"out": first, "took": took, "board": pd.read_csv(exp / "leaderboard.csv"),
                      "used": json.loads((exp / "search_time.json").read_text())["seconds"]}}
    second = tune(*args, "search.time_budget=20m", "--resume", env=toy_environment())
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    runs["second"] = {"out": second, "board": pd.read_csv(exp / "leaderboard.csv")}
    return exp, args, runs


@pytest.mark.slow
def test_a_time_budget_stops_the_search_on_time_and_a_larger_one_continues_it(budgeted):
    """(The shared search takes about 50 s: two drivers, trials whose sleeps a 20 s budget cuts.)"""
    _, _, runs = budgeted
    first = runs["first"]
    assert "time budget used up" in first["out"].stdout and "The time budget (20s) is used up" in first["out"].stdout
    cut_short = len(first["board"]) < 4 or (first["board"]["status"] != "completed").any()   # (FIFO: only the budget stops)
    assert len(first["board"]) >= 1 and cut_short, first["board"].to_string()
    assert 20 <= first["used"] < 40 and first["took"] < 120, (first["used"], first["took"])
    board = runs["second"]["board"]
    assert len(board) == 4 and (board["status"] == "completed").all(), board.to_string()


@pytest.mark.slow
def test_a_time_budget_spent_before_any_evaluation_says_so_and_fails(tmp_path, shared_ray):
    """No trial had reported when 1 s ran out: no leaderboard row (a baseline row without values
    read as measured), no confirm.py hint, a non-zero exit, and the resume to continue."""
    out = tune(*SMOKE, "--storage", str(tmp_path), "--address", shared_ray, "search.time_budget=1s")
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    assert "ran out before any trial reported an evaluation: nothing to rank yet" in out.stdout
    assert "confirm.py" not in out.stdout and "--resume search.time_budget=" in out.stdout
    assert pd.read_csv(tmp_path / SMOKE_EXPERIMENT / "leaderboard.csv").empty
    # report.py on it: a report that says so (it once failed with KeyError: ['epoch']).
    assert load_script("report").main([str(tmp_path / SMOKE_EXPERIMENT)]) == 0
    report = (tmp_path / SMOKE_EXPERIMENT / "report.html").read_text()
    assert "nothing to confirm yet: no trial reached an evaluation" in report and "confirm.py" not in report
    assert "a baseline trial, which has not reported yet" in report


@pytest.mark.slow
def test_resume_with_more_trials_grows_a_finished_search_and_leaves_the_first_untouched(budgeted, capsys):
    """Extends the shared search (the time-budget test reads only what the fixture kept) after
    moving its storage folder: the resumed search writes its new trial, its checkpoints and its study
    into the experiment where it is now, and nothing where it was (Ray's saved search state and the
    pickled Optuna searcher both named the old folder: a resumed copy had written its new trial's
    checkpoints and Optuna trial into the original). (About 20 s: the refusals run in this process,
    then one driver trains the fifth trial.)"""
    old_exp, old_args, _ = budgeted
    storage = old_exp.parent.with_name(old_exp.parent.name + "-moved")
    shutil.move(old_exp.parent, storage)
    exp = storage / old_exp.name
    args = [str(storage) if a == str(old_exp.parent) else a for a in old_args]
    before = {p.name: (p / "result.json").read_text() for p in exp.glob("toy_*")}
    assert len(before) == 4

    # Refused before Ray starts, so in this process.
    assert tune_main([*args, "--num-samples", "5", "--resume", "train.epochs=5"]) == 2
    assert "train.epochs: 4 then, 5 now" in capsys.readouterr().err
    assert tune_main([*args, "--num-samples", "3", "--resume"]) == 2
    assert "cannot shrink it" in capsys.readouterr().err
    assert tune_main([*args, "--resume", "search.space.model.lr={loguniform: [1.0e-5, 1.0e-2]}"]) == 2
    assert ("search.space.model.lr.loguniform: [0.0001, 0.01] then, [1e-05, 0.01] now"
            in capsys.readouterr().err), "the changed range, not 'None then, None now'"

    out = tune(*args, "--num-samples", "5", "--resume", env=toy_environment())
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "extending the search from 4 to 5 trials" in out.stdout
    assert f"resume: the experiment was at {old_exp}; its new trials are written here" in out.stdout
    after = {p.name: (p / "result.json").read_text() for p in exp.glob("toy_*")}
    assert len(after) == 5 and all(after[name] == text for name, text in before.items())
    board = pd.read_csv(exp / "leaderboard.csv")
    assert len(board) == 5 and all(str(path).startswith(str(exp)) for path in board["checkpoint"])
    assert len(study_of(exp).trials) == 5
    assert not old_exp.parent.exists(), "the resumed search wrote where the experiment was"


# --- Population-based training ------------------------------------------------------------------


@pytest.mark.slow
def test_a_pbt_search_exploits_and_the_leaderboard_says_who_copied_whom(tmp_path, shared_ray):
    """(About 30 s: a population of 5 must train 6 epochs for exploits to happen at all.)"""
    # More trials than slots, and one kept checkpoint: an exploiting trial waits, paused, while its
    # donor trains on and keep-top-k deletes the checkpoint it was to copy (unless copied at once).
    out = tune(*SMOKE, "--storage", str(tmp_path), "--address", shared_ray, "--num-samples", "5", "search.max_concurrent=2",
               "search.scheduler=pbt", "search.searcher=random", "train.epochs=6", "search.baseline=false",
               "search.keep_checkpoints=1", "search.pbt={perturbation_interval: 1, quantile_fraction: 0.5}")
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    exp = tmp_path / SMOKE_EXPERIMENT
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
