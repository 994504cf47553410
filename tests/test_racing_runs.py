"""Racing and trial order in real Ray Tune searches (the toy family, on the session's Ray).

The same raced search twice, the second with the trials of its higher learning rates slowed down
(so trials finish in another order) and its driver killed and resumed: decisions are taken in trial
order (core/racing.py), so both runs train the same configurations on the same seeds, stop the
same trials, score them the same and ship the same one. Export ships the incumbent, and
confirm.py --holdout retrains it on seeds the search never used. (About 2 minutes: 2 searches of
10 toy trials, one of them killed and resumed, and a held-out check.)
"""

from __future__ import annotations

import json
import pickle
import re
import sys
from pathlib import Path

import pandas as pd
import pytest
import ray.cloudpickle as cloudpickle
from ray._common.utils import get_default_ray_temp_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import confirm  # noqa: E402

from test_new_family import TOY_SPACE, export, toy_environment  # noqa: E402
from tune_cli import driver, kill_session, study_of, tune, wait_for  # noqa: E402

TRIALS, EPOCHS = 10, 3
SLOW_ABOVE = 2e-3   # the toy space's lr is loguniform in [1e-4, 1e-2]: the best toy configurations lie above


def raced_search_args(storage: Path, address: str, name: str, *extra: str) -> list[str]:
    return ["--space", str(TOY_SPACE), "--storage", str(storage), "--address", address, "--name", name,
            "--num-samples", str(TRIALS), "search.racing={seeds: 3}", f"train.epochs={EPOCHS}",
            "search.grace_period=1", *extra]


def raced_search(storage: Path, address: str, name: str, *extra: str) -> Path:
    done = tune(*raced_search_args(storage, address, name, *extra), env=toy_environment(), timeout=300)
    assert done.returncode == 0, f"the raced search failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return storage / name


@pytest.fixture(scope="module")
def plain(tmp_path_factory, shared_ray) -> Path:
    return raced_search(tmp_path_factory.mktemp("raced"), shared_ray, "plain")


def what_it_decided(exp: Path) -> dict:
    board = pd.read_csv(exp / "leaderboard.csv")
    runs = sorted((row["model.lr"], int(row["seed"]), row["status"], int(row["epochs_trained"]), row["best_fid"])
                  for _, row in board.iterrows())
    # What Optuna proposed and was told, in order. A killed driver may have asked Optuna for a trial
    # that Ray never recorded: the resumed search asks again (the same values), and the first ask
    # stays in the study as a failed trial (no trial is left RUNNING), with its own number.
    trials = study_of(exp).trials
    assert not [t.number for t in trials if t.state.name == "RUNNING"], [(t.number, t.state.name) for t in trials]
    study = [(t.params, t.value) for t in trials if t.state.name == "COMPLETE"]
    best = next(line for line in (exp / "leaderboard.txt").read_text().splitlines() if line.startswith("best:"))
    best = best.replace(board.loc[board["incumbent"], "configuration"].iloc[0] if board["incumbent"].any() else "", "")
    return {"runs": runs, "study": study, "best": best}


@pytest.mark.slow
def test_another_arrival_order_and_a_killed_driver_change_no_decision(plain, tmp_path, shared_ray):
    """The plain search again, with the trials of its higher learning rates slowed down (so trials
    finish in another order) and its driver SIGKILLed once 3 trials have finished (racing under
    way: the ledger is in Ray's searcher checkpoint), then --resume: the same trials, seeds, stops,
    scores and pick. (One run for both: each alone would be another 40 s search.)"""
    args = raced_search_args(tmp_path, shared_ray, "slowed", f"model.slow_above_lr={SLOW_ABOVE}")
    slowed = tmp_path / "slowed"

    def finished() -> int:
        return sum(1 for t in slowed.glob("toy_*") if any(c.name == f"checkpoint_{EPOCHS - 1:06d}" for c in t.iterdir()))

    def saved_and_finished() -> list[dict]:
        """Finished trials in the newest searcher checkpoint (Ray saves it every few seconds)."""
        try:
            ledger = pickle.loads(max(slowed.glob("searcher-state-*")).read_bytes())["ledger"]["trials"]
        except (ValueError, EOFError, pickle.UnpicklingError):   # none yet, or one being written
            return []
        return [t for t in ledger if t["done"] and len(t["scores"]) > 1]

    with driver(*args, env=toy_environment()) as proc:
        wait_for(lambda: finished() >= 3 and saved_and_finished(), "3 finished trials, one of them saved", proc=proc)
        kill_session(proc)
    # Ray writes its snapshot as several files; a kill between them leaves them from different
    # moments (seen: Ray's count of proposed trials 2 beside 4 trials; a finished trial's reports
    # missing from the ledger). Made so here, every time: the count set back, the ledger's newest
    # trial dropped and a finished trial's record set back to its first epoch. The resume repairs all.
    generator_file = max(slowed.glob("search_gen_state-*"))
    generator = cloudpickle.loads(generator_file.read_bytes())
    generator["counter"] = 1
    generator_file.write_bytes(cloudpickle.dumps(generator))
    searcher_file = max(slowed.glob("searcher-state-*"))
    searcher = pickle.loads(searcher_file.read_bytes())
    lost = searcher["ledger"]["trials"].pop()["trial_id"]
    behind = next(t for t in searcher["ledger"]["trials"] if t["done"] and len(t["scores"]) > 1)   # (waited for)
    behind.update(done=False, told=False, scores={1: behind["scores"][1]}, last_result=None)
    searcher_file.write_bytes(pickle.dumps(searcher))
    # ... and a trial started after Ray's last snapshot (seen: an epoch and two checkpoints in it).
    (slowed / "toy_0badc0de" / "checkpoint_000000").mkdir(parents=True)
    # ... and a finished trial whose last reports the driver had not received, though its
    # checkpoints hold them: its result file cut to the first epoch in the experiment and in the
    # driver's own copy, which a resume on the same Ray reuses (seen: it was copied over the
    # experiment's repaired file, and the trial recorded 2 of its 3 epochs).
    cut = next(t for t in sorted(slowed.glob("toy_*")) if (t / f"checkpoint_{EPOCHS - 1:06d}" / "report.json").is_file())
    staged = list(Path(get_default_ray_temp_dir()).glob(f"session_[0-9]*/artifacts/*/slowed/driver_artifacts/{cut.name}/result.json"))
    assert len(staged) == 1, staged
    for copy in (cut / "result.json", staged[0]):
        copy.write_text(copy.read_text().splitlines(keepends=True)[0])

    resumed = tune(*args, "--resume", env=toy_environment(), timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resume: toy_{lost} was missing from the search's ledger; added" in resumed.stdout
    assert f"resume: toy_{behind['trial_id']}'s scores in the search's ledger were behind" in resumed.stdout
    assert "resume: Ray's count of proposed trials was 1" in resumed.stdout
    assert "resume: removed toy_0badc0de/, a trial the interrupted driver started but never recorded" in resumed.stdout
    assert sorted(p.name for p in slowed.glob("toy_*")) == sorted(pd.read_csv(slowed / "leaderboard.csv")["trial"])
    assert [json.loads(row)["epoch"] for row in (cut / "result.json").read_text().splitlines()] == [1, 2, 3]

    board = pd.read_csv(plain / "leaderboard.csv")
    assert len(board) == TRIALS and (board["seed"] != 0).sum() >= 2, board.to_string()   # it raced seeds
    assert {0, 100} <= set(board.loc[board["baseline"], "seed"])      # the baseline's second seed at once
    # The delay acted: the slowed trials took far longer, and some finished after later ones.
    ends = {}
    for trial in set(slowed.glob("toy_*")) - {cut}:   # (cut's last rows come from its checkpoints: no timings)
        last = json.loads((trial / "result.json").read_text().splitlines()[-1])
        ends[last["trial_id"]] = (last["config"]["model.lr"] > SLOW_ABOVE, last["time_total_s"])
    slow = sorted(t for slow, t in ends.values() if slow)
    fast = sorted(t for slow, t in ends.values() if not slow)
    # (+2.4 s each: 0.4 s x 6 steps; medians, as machine load stretches single trials by seconds)
    assert slow and fast and slow[len(slow) // 2] - fast[len(fast) // 2] > 1.0, ends

    (tmp_path / "resume.log").write_text(resumed.stdout + resumed.stderr)   # (kept for a failure's reader)
    assert what_it_decided(slowed) == what_it_decided(plain), resumed.stdout[-3000:]


@pytest.mark.slow
def test_export_ships_the_incumbents_best_checkpoint(plain, tmp_path, capsys):
    board = pd.read_csv(plain / "leaderboard.csv")
    incumbent = set(board.loc[board["incumbent"], "trial"])
    assert len(incumbent) >= 2, board.to_string()          # decided on several seeds
    assert export.main([str(plain), "--out", str(tmp_path / "images.zip"), "--count", "2", "--any-count",
                        "--upscale"]) == 0
    chosen = Path(re.search(r"Checkpoint: (\S+)", capsys.readouterr().out).group(1))
    assert chosen.parent.name in incumbent
    # ... the best of its seeds' kept checkpoints, though another configuration's trial scored lower
    best_of_incumbent = board.loc[board["incumbent"], "best_fid"].min()
    assert board.loc[board["trial"] == chosen.parent.name, "best_fid"].iloc[0] == best_of_incumbent


@pytest.mark.slow
def test_the_held_out_check_retrains_the_incumbent_on_seeds_the_search_never_used(plain, shared_ray, capsys):
    board = pd.read_csv(plain / "leaderboard.csv")
    assert confirm.main([str(plain), "--holdout", "--seeds", "2", "--address", shared_ray]) == 0
    out = capsys.readouterr().out
    held = pd.read_csv(plain / "confirm-holdout" / "confirm.csv").set_index("candidate")
    assert held.loc["top 1", "trial"] == board.loc[board["incumbent"], "configuration"].iloc[0]
    seeds = {int(s) for s in held.loc["top 1", "seeds"].split()}
    assert len(seeds) == 2 and not seeds & set(board["seed"]), (seeds, set(board["seed"]))
    assert "Held out: top 1" in (plain / "leaderboard.txt").read_text() and "Held out:" in out
