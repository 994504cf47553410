"""The search, end to end through the command line: real Ray Tune, real Optuna, real files.

tune.py's checks and refusals run in this process (`main(argv)`): they happen before Ray starts."""

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from tune_cli import ROOT, SMOKE, load_script

tune_main = load_script("tune").main


def tune(capsys, *args: str):
    """tune.py's main in this process: (exit code, stdout, stderr)."""
    code = tune_main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("space", ["vae_builtin.yaml", "vae.yaml"])
def test_smoke_test_keeps_the_values_a_space_searches(space, capsys):
    """--smoke-test's batch size 1 lay outside the VAE spaces' searched batch sizes: refused. A key
    the space searches keeps its searched values; the rest is shrunk. (Also: a TPE whose start-up
    covers every trial says so.)"""
    code, out, err = tune(capsys, "--space", str(ROOT / "search_spaces" / space), "--smoke-test", "--dry-run")
    assert code == 0, err
    assert "all 2 trials random (start-up 3)" in out and "train.batch_size: choice" in out


def test_dry_run_prints_the_real_cyclegan_space(capsys):
    code, out, err = tune(capsys, "--space", str(ROOT / "search_spaces/cyclegan.yaml"), "--dry-run")
    assert code == 0, err
    for searched in ("model.lr_g", "model.lr_d", "model.lambda_cycle", "model.lambda_identity",
                     "model.wait_epochs", "model.decay_epochs"):
        assert searched in out
    assert "source: kaggle" in out and "image_size: 256" in out
    assert "Optuna TPE (seed 0): 6 random start-up trials of 24" in out and "ASHA (grace 6 epochs" in out
    assert "# Baseline" in out and "model.lambda_cycle: 10.0" in out


def test_dry_run_names_the_sampler_and_refuses_one_that_cannot_search_the_space(capsys):
    space = str(ROOT / "search_spaces/cyclegan.yaml")
    code, out, err = tune(capsys, "--space", space, "--dry-run", "search.sampler=gp")
    assert code == 0, err
    assert "Optuna GP (seed 0): 6 random start-up trials of 24; ASHA" in out
    code, _, err = tune(capsys, "--space", space, "--dry-run", "search.sampler=cmaes")
    assert code == 2 and "Traceback" not in err
    assert "search.sampler cmaes models ranges only: it would draw the choice key(s) model.lambda_identity" in err


def test_bad_space_gives_one_clear_error_and_exit_code_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("_base_: %s\nmodel: {lamda_cycle: 3.0}\n" % (ROOT / "search_spaces/cyclegan_builtin.yaml"))
    code, _, err = tune(capsys, "--space", str(bad), "--dry-run")
    assert code == 2
    assert "Did you mean 'lambda_cycle'" in err
    assert "Traceback" not in err


def test_resume_of_a_directory_without_an_experiment_is_refused(tmp_path, capsys):
    code, _, err = tune(capsys, *SMOKE, "--storage", str(tmp_path), "--resume")
    assert code == 2
    assert "Nothing to resume" in err and "Traceback" not in err


def test_smoke_search_keeps_checkpoints_study_tensorboard_and_leaderboard(smoke_experiments):
    stdout = smoke_experiments.outputs["cyclegan_builtin"]
    assert "Leaderboard" in stdout
    exp = smoke_experiments["cyclegan_builtin"]
    # The console (not a terminal here): each finished trial gets one line with its status and best,
    # the answer comes last, and none of Ray's or Optuna's own output is there (--verbose brings it
    # back: test_new_family's toy search). The trials' own lines are in their directories instead.
    lines = stdout.splitlines()
    assert len(lines) <= 25, stdout
    for chatter in ("Trial status", "Trial name", "started with configuration", "Configuration for experiment",
                    "View detailed results", "Checkpoint successfully created", "pid=", "deduplicates logs",
                    "A new study created", "Token authentication", "\r"):
        assert chatter not in stdout, (chatter, stdout)
    # Its leaderboard: what decides, narrower than leaderboard.txt's every column.
    header = stdout.split("every column in leaderboard.txt):\n", 1)[1].splitlines()[0].split()
    assert header[0] == "trial" and {"model.lr_g", "model.lambda_cycle", "status", "best_fid"} <= set(header), header
    assert not {"checkpoint", "mifid", "kid", "step"} & set(header), header
    stderr = smoke_experiments.errors["cyclegan_builtin"]
    for chatter in ("A new study created", "Traceback", "Trial status"):   # (Optuna logs to stderr)
        assert chatter not in stderr, (chatter, stderr)
    ended = re.findall(r"^Trial (cyclegan_\w+) (completed|stopped early), best fid [\d.]+ at epoch \d", stdout, re.M)
    assert len(ended) == 2, stdout[-3000:]
    assert lines[-2].startswith("best: fid ") and lines[-1].startswith("Each trial trained once"), stdout
    for trial in ended:
        assert "] epoch 1/2 fid=" in (exp / trial[0] / "stdout").read_text()

    board = pd.read_csv(exp / "leaderboard.csv")
    assert len(board) == 2
    assert {"model.lr_g", "model.lr_d", "best_fid", "mifid", "epoch", "checkpoint", "status"} <= set(board.columns)
    for path in board["checkpoint"]:
        assert (Path(path) / "state.pt").is_file()

    # The leaderboard's numbers are the trials' own reports.
    for _, row in board.iterrows():
        trial_dir = Path(row["checkpoint"]).parent
        reports = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
        assert row["best_fid"] == pytest.approx(min(r["fid"] for r in reports))

    import optuna

    study = optuna.load_study(study_name="cyclegan_builtin-smoke", storage=f"sqlite:///{exp / 'optuna.db'}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 2 and all("model.lr_g" in t.params for t in complete)

    events = list(exp.glob("*/events.out.tfevents.*"))
    assert len({e.parent for e in events}) == 2, "one TensorBoard run per trial"


def test_damaged_checkpoints_are_removed_with_the_reason_and_good_ones_kept(tmp_path):
    import torch

    from core.cluster import Storage
    from core.driver import remove_damaged_checkpoints

    good, partial, empty = (tmp_path / "trial_a" / f"checkpoint_00000{i}" for i in range(3))
    for directory in (good, partial, empty):
        directory.mkdir(parents=True)
    torch.save({"epoch": 1, "weights": torch.ones(1000)}, good / "state.pt")
    whole = (good / "state.pt").read_bytes()
    (partial / "state.pt").write_bytes(whole[: len(whole) // 2])   # a copy cut off halfway
    messages = []
    remove_damaged_checkpoints(Storage.parse(str(tmp_path)), str(tmp_path), messages.append)
    assert good.is_dir() and not partial.exists() and not empty.exists()
    assert torch.load(good / "state.pt", weights_only=True)["epoch"] == 1
    assert messages == [f"removing damaged checkpoint {partial}: state.pt is truncated (not a complete torch file)",
                        f"removing damaged checkpoint {empty}: state.pt is missing"]


def test_dry_run_refuses_what_the_run_refuses_with_the_runs_own_message(tmp_path, capsys):
    space = str(ROOT / "search_spaces/cyclegan_builtin.yaml")
    code, _, err = tune(capsys, "--space", space, "--dry-run", "data.source=folder", f"data.root={tmp_path / 'nowhere'}")
    assert code == 2 and f"data.root {tmp_path / 'nowhere'} is not a directory" in err, err
    code, _, err = tune(capsys, "--space", space, "--dry-run", "data.image_size=20", "data.load_size=24")
    assert code == 2 and "too small for a PatchGAN" in err, err
    assert "Traceback" not in err


def test_an_empty_space_and_a_missing_base_say_what_is_wrong(tmp_path, capsys):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    code, _, err = tune(capsys, "--space", str(empty), "--dry-run")
    assert code == 2 and f"{empty} is empty" in err, err
    child = tmp_path / "child.yaml"
    child.write_text("_base_: missing/base.yaml\nname: x\n")
    code, _, err = tune(capsys, "--space", str(child), "--dry-run")
    assert code == 2 and f"{child} names _base_ {tmp_path / 'missing/base.yaml'}, which does not exist" in err, err


@pytest.mark.slow
def test_a_second_driver_on_one_experiment_is_refused_and_a_killed_one_leaves_no_lock(tmp_path):
    """Two drivers on one experiment would restore the same trials and overwrite each other's
    records; the second is refused with who holds it. The lock dies with its process. (Marked slow
    for its holder process's imports, 7 s: the refusal itself is in test_bad_inputs' fast catalogue.)"""
    from core.config import ConfigError
    from core.driver import driver_lock

    with driver_lock(tmp_path, "Experiment x"):
        with pytest.raises(ConfigError, match=r"^Experiment x is being run by pid \d+ on .+ since .+ Wait for it"):
            with driver_lock(tmp_path, "Experiment x"):
                pass
    with driver_lock(tmp_path, "Experiment x"):   # released when the first ended
        pass

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from core.driver import driver_lock\n"
                               "with driver_lock(sys.argv[1], 'Experiment x'):\n    print('held', flush=True); time.sleep(60)",
                               str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(ConfigError, match=f"pid {holder.pid} "):
            with driver_lock(tmp_path, "Experiment x"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with driver_lock(tmp_path, "Experiment x"):   # a killed driver's lock went with it
        pass
