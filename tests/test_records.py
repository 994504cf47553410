"""Bounded disk and intact records: a killed search always finishes, nothing is left in the temp
directory, a trial keeps what its config says, damaged checkpoints are named and passed over, and
every trial is one W&B run and one TensorBoard HParams session."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from core.checkpoints import REPORT_FILE, checkpoint_problem, load_state
from tune_cli import (ROOT, SMOKE, TUNE, driver, environment, kill_session, load_script, recorded_latest_checkpoint,
                      reports, wait_for)


def run(cmd, env=None, timeout=600):
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=environment(**(env or {})))


def fid_by_epoch(trial_dir: Path) -> dict[int, float]:
    """The FID each epoch reported (a resumed trial that redid an epoch reports it again, the same)."""
    return {r["epoch"]: r["fid"] for r in reports(trial_dir)}


# --- A search killed while its checkpoints are ahead of Ray's record ---------------------------------


def uninterrupted_fids(overrides: list[str], root: Path) -> dict[int, float]:
    """epoch -> FID of the smoke search's only trial (the baseline) when nothing stops it: the same
    trial loop on the same config, data and seed, run in this process (no driver to start)."""
    from core.config import config_to_dict, load_experiment
    from core.driver import prepare_experiment
    from core.plan import baseline_points
    from core.trainable import LocalSession, run_trial

    cfg = load_experiment(SMOKE[1], [*load_script("tune").SMOKE_TEST_OVERRIDES, *overrides])
    ready = prepare_experiment(cfg, progress=lambda message: None)
    session = LocalSession(root)
    run_trial(baseline_points(cfg)[0], experiment=config_to_dict(cfg), prepared_root=ready.prepared_root,
              reference_path=ready.reference_path, session=session)
    return {r["epoch"]: r["fid"] for r in session.results}


def assert_records_hold(trial_dir: Path, epochs: int) -> None:
    """Each epoch reported once, in order; every kept checkpoint holds the epoch its result.json row
    and its own report.json say (a resume once wrote epoch 6 over checkpoint_000004, still listed as
    epoch 5 with epoch 5's scores)."""
    rows = reports(trial_dir)
    assert [r["epoch"] for r in rows] == list(range(1, epochs + 1)), [r["epoch"] for r in rows]
    by_name = {r["checkpoint_dir_name"]: r for r in rows if r.get("checkpoint_dir_name")}
    for checkpoint in sorted(trial_dir.glob("checkpoint_*")):
        epoch = load_state(checkpoint)["epoch"]
        assert json.loads((checkpoint / REPORT_FILE).read_text())["epoch"] == epoch, checkpoint.name
        assert by_name[checkpoint.name]["epoch"] == epoch, (checkpoint.name, epoch, by_name[checkpoint.name]["epoch"])


def assert_rows_hold_their_checkpoints(exp: Path) -> None:
    """Every leaderboard row's checkpoint holds the epoch and the scores the row claims: its state
    names that epoch, its report.json that score, and the loaded networks, scored again here, give it.
    (A resume once paired the best FID of epoch 3 with the checkpoint of epoch 2.)"""
    from analysis.checkpoints import load_checkpoint
    from core import metrics as M

    board = pd.read_csv(exp / "leaderboard.csv")
    for _, row in board.iterrows():
        assert checkpoint_problem(row["checkpoint"]) is None, row["checkpoint"]
        assert load_state(row["checkpoint"])["epoch"] == row["epoch"], (row["trial"], row["checkpoint"], row["epoch"])
        report = json.loads((Path(row["checkpoint"]) / REPORT_FILE).read_text())
        assert report["fid"] == pytest.approx(row["best_fid"]) and report["epoch"] == row["epoch"], row["trial"]
        loaded = load_checkpoint(row["checkpoint"], progress=lambda message: None)
        reference = M.load_reference(M.reference_statistics(loaded.data, loaded.cfg.metrics, loaded.cfg.cache_path,
                                                            progress=lambda message: None))
        scores = M.evaluate(loaded.family.generate(loaded.cfg.metrics.num_samples, loaded.cfg.metrics.batch_size),
                            reference, loaded.cfg.metrics)
        assert scores["fid"] == pytest.approx(row["best_fid"], rel=1e-3), (row["trial"], scores["fid"], row["best_fid"])


def truncate(checkpoint: Path) -> None:
    state = checkpoint / "state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])   # a copy cut short


@pytest.mark.slow
def test_resume_of_an_interrupted_search_with_its_checkpoints_gone_or_damaged_is_an_uninterrupted_run(
        tmp_path, shared_ray):
    """The sequences from the field, in one run: the driver is killed while a trial has a checkpoint
    Ray's snapshot records and newer ones it does not. The recorded checkpoint is gone (as when a
    better evaluation displaced it and keep-top-k deleted it before the next snapshot; deleted here
    if keep-5 has not), and the oldest and the newest (unrecorded) are cut short (a copy cut short).
    --resume: the trial continues from its newest intact checkpoint, its evaluations equal an
    uninterrupted run's, each epoch once, no intact checkpoint is written over, new saves get new
    numbers, and every leaderboard row's checkpoint holds what the row says. (A recorded checkpoint
    damaged in place: the finished-search test below.) Ray's snapshot period is set beyond the test,
    so a snapshot comes only when a trial has saved num_to_keep checkpoints since the last one (Ray
    forces it then): checkpoint 4 is recorded, 5 and later are not until checkpoint 9, after the last
    epoch. (About 60 s: a driver killed with its own Ray, one resuming on the session's, and the
    uninterrupted trial loop in-process.)"""
    epochs = 8
    overrides = ["search.scheduler=fifo", f"train.epochs={epochs}", "search.keep_checkpoints=5",
                 "train.iters_per_epoch=6"]
    args = [*SMOKE, "--num-samples", "1", "--storage", str(tmp_path / "b"), *overrides]
    env = {"TUNE_GLOBAL_CHECKPOINT_S": "3600"}
    exp = tmp_path / "b" / "cyclegan_builtin-smoke"
    with driver(*args, env=environment(**env)) as proc:
        # Killed after the seventh: the newest (damaged below) is at least two past the recorded one,
        # so the checkpoint the trial resumes from is not the highest number ever used.
        wait_for(lambda: list(exp.glob("cyclegan_*/checkpoint_000006/report.json")), "a seventh checkpoint", proc=proc)
        kill_session(proc)
    (trial, recorded), = recorded_latest_checkpoint(exp).items()
    on_disk = sorted(p.name for p in (exp / trial).glob("checkpoint_*"))
    newest, oldest = on_disk[-1], on_disk[0]
    assert recorded == "checkpoint_000004" and newest > recorded, (recorded, on_disk)
    shutil.rmtree(exp / trial / recorded, ignore_errors=True)   # (gone already where keep-5 pruned it)
    damaged = {oldest, newest} - {recorded}
    intact = {name: (exp / trial / name / "state.pt").read_bytes() for name in on_disk
              if name not in damaged | {recorded}}
    for name in damaged:
        truncate(exp / trial / name)

    out = run([*TUNE, *args, "--resume", "--address", shared_ray], env=env)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    for name in damaged:
        assert f"removing damaged checkpoint {exp / trial / name}: state.pt is truncated" in out.stdout, out.stdout
    assert f"{trial}: recorded {recorded} is gone; resuming from {max(intact)}" in out.stdout, out.stdout
    # What the resume repaired, it says in its own lines: none of Ray's or Optuna's alarms about it
    # (Ray's "ERROR checkpoint_manager ... Result dict has no key", Optuna's "reported value is ignored").
    alarms = [line for line in (out.stdout + out.stderr).splitlines()
              if any(word in line for word in (" ERROR ", " WARNING ", "Warning:", "[W "))]
    assert not alarms, alarms
    assert fid_by_epoch(exp / trial) == pytest.approx(uninterrupted_fids(overrides, tmp_path / "a"))
    assert_records_hold(exp / trial, epochs)
    for name, content in intact.items():   # still there (unless keep-5 pruned it), byte for byte
        path = exp / trial / name / "state.pt"
        assert not path.exists() or path.read_bytes() == content, f"{name} was written over"
    assert not {p.name for p in (exp / trial).glob("checkpoint_*")} & (damaged | {recorded}), \
        "a new save took the number of a removed checkpoint"
    assert_rows_hold_their_checkpoints(exp)


# --- A damaged kept checkpoint ------------------------------------------------------------------


@pytest.mark.slow
def test_damaged_best_checkpoint_export_falls_back_and_resume_tells_the_truth(smoke_experiments, tmp_path, capsys):
    """The best trial's best checkpoint is cut short, and in the other trial the kept checkpoint of
    the other moment (the newest, which Ray's record names, or the oldest). export.py skips it;
    --resume removes both and every leaderboard row then names an intact checkpoint holding the
    epoch and scores the row claims. (About 40 s: a --resume of the whole search, as a real driver.)"""
    export = load_script("export").main
    exp = tmp_path / "cyclegan_builtin-smoke"
    shutil.copytree(smoke_experiments["cyclegan_builtin"], exp)
    board = pd.read_csv(exp / "leaderboard.csv")
    best = exp / os.path.relpath(board["checkpoint"][0], smoke_experiments["cyclegan_builtin"])
    truncate(best)
    others = sorted((exp / board["trial"][1]).glob("checkpoint_*"))
    assert len(others) == 2 and recorded_latest_checkpoint(exp)[board["trial"][1]] == others[-1].name
    other = others[0] if best.name == sorted(best.parent.glob("checkpoint_*"))[-1].name else others[-1]
    truncate(other)

    zip_args = ["--count", "4", "--any-count", "--upscale"]
    code = export([str(best), "--out", str(tmp_path / "a.zip"), *zip_args])
    out = capsys.readouterr()
    assert code == 2 and "state.pt is truncated" in out.err, out.out + out.err
    assert "Traceback" not in out.err and not (tmp_path / "a.zip").exists()

    code = export([str(exp), "--out", str(tmp_path / "b.zip"), *zip_args])
    out = capsys.readouterr()
    assert code == 0, out.out[-3000:] + out.err[-3000:]
    assert f"skipping {best}" in out.out and "state.pt is truncated" in out.out
    assert (tmp_path / "b.zip").is_file()

    # --resume of the finished search: says what it found, and the leaderboard names only intact files.
    out = run([*TUNE, *SMOKE, "--storage", str(tmp_path), "--resume", "logging.wandb=true"],
              env={"WANDB_MODE": "offline"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for damaged in (best, other):
        assert f"removing damaged checkpoint {damaged}: state.pt is truncated" in out.stdout
    board = pd.read_csv(exp / "leaderboard.csv")
    assert len(board) == 2 and board["checkpoint"].notna().all()
    assert_rows_hold_their_checkpoints(exp)
    assert str(best) not in (exp / "leaderboard.txt").read_text().replace("\n", "")
    code = export([str(exp), "--out", str(tmp_path / "c.zip"), *zip_args])
    assert code == 0 and (tmp_path / "c.zip").is_file(), capsys.readouterr().err[-3000:]


def test_export_of_a_path_that_does_not_exist_says_so(tmp_path, capsys):
    code = load_script("export").main([str(tmp_path / "nope"), "--out", str(tmp_path / "a.zip")])
    err = capsys.readouterr().err
    assert code == 2 and "does not exist" in err and "Traceback" not in err


# --- One W&B run and one HParams session per trial -------------------------------------------------


def test_a_resumed_trial_logs_to_the_same_wandb_run_and_records_its_hparams(tiny_data, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2
    from test_trainable import run as run_local
    from test_trainable import tiny_experiment

    from core.tracking import wandb_run_id

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    tree = tiny_experiment("cyclegan_builtin.yaml", tiny_data, **{"logging.wandb": "true", "logging.wandb_mode": "offline"})
    searched = {"model.lr_g": 3.0e-4, "model.lambda_cycle": 7.5}
    run_local(tree, tiny_data, tmp_path, searched=searched, max_epochs=1)   # then "crashed"
    run_local(tree, tiny_data, tmp_path, searched=searched)                # retried from its checkpoint

    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2, runs
    expected_id = wandb_run_id(tree["name"], "local")
    assert all(p.name.endswith(f"-{expected_id}") for p in runs), [p.name for p in runs]

    starts, ends = [], []
    for events in tmp_path.glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(events)).Load():
            for value in event.summary.value:
                if value.tag == "_hparams_/session_start_info":
                    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                    starts.append({k: v.number_value for k, v in data.session_start_info.hparams.items()})
                elif value.tag == "_hparams_/session_end_info":
                    ends.append(value)
    assert starts == [searched, searched] and len(ends) == 2


@pytest.mark.slow
def test_a_search_that_logs_to_wandb_leaves_nothing_in_tmpdir(tiny_data, tmp_path, monkeypatch):
    """W&B creates temp directories when it is imported (media and artifact staging) and wandb-core
    makes one for its socket; Ray ends trial processes without the exit hooks that remove them.
    Two trials, one after the other in a reused worker (the second reopens W&B after the first
    closed it): the first is stopped by Ray after its first report (as ASHA stops a trial: an
    exception inside the report), the second trains to the end. (About 30 s: a Ray run of its own,
    in this process, since what Ray's workers leave in TMPDIR is the point.)"""
    from test_trainable import tiny_experiment

    from core.config import build_config
    from core.search import run_search

    # Ray Tune imports wandb in the driver too (this process: it counts callbacks for its telemetry),
    # and the import makes W&B's staging directories. Those are the long-lived driver's, removed by
    # its exit hooks (tune.py exits normally): made before TMPDIR changes, they are not counted.
    import wandb  # noqa: F401

    # A short fresh TMPDIR: Ray puts its session (with unix sockets of at most 107 bytes) there too;
    # its workers inherit the variable, so the W&B of every trial uses it.
    temp = Path(tempfile.mkdtemp(prefix="pst-", dir="/tmp"))
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    tree = tiny_experiment("cyclegan_builtin.yaml", tiny_data, **{
        "logging.wandb": "true", "search.num_samples": 2, "search.max_concurrent": 1, "search.scheduler": "fifo"})
    first = []

    def stop_the_first_trial(trial_id, result) -> bool:
        first[:] = first or [trial_id]
        return trial_id == first[0]

    try:
        grid = run_search(build_config(tree), tmp_path, verbose=0, progress=lambda message: None,
                          stop=stop_the_first_trial)
        left = sorted(p.name for p in temp.iterdir() if "wandb" in p.name)
    finally:
        shutil.rmtree(temp, ignore_errors=True)

    assert len(grid) == 2 and not grid.errors, grid.errors
    trials = sorted((tmp_path / tree["name"]).glob("cyclegan_*"), key=lambda t: t.name.endswith(first[0]))
    assert [[r["epoch"] for r in reports(t)] for t in trials] == [[1, 2], [1]], "one completed, one stopped"
    assert [len(list((t / "wandb").glob("offline-run-*"))) for t in trials] == [1, 1], "each trial logged to W&B"
    assert not left, f"left in TMPDIR: {left}"


def test_reports_a_killed_driver_had_not_saved_are_restored_from_their_checkpoints(tmp_path):
    from core.checkpoints import backfill_reports, staged_checkpoint

    trial = tmp_path / "cyclegan_abc"
    trial.mkdir()
    for epoch in (1, 2, 3):
        with staged_checkpoint({"epoch": epoch}, "abc", {"epoch": epoch, "fid": 10.0 - epoch}) as staged:
            shutil.copytree(staged, trial / f"checkpoint_{epoch - 1:06d}")
    # The driver had written epoch 1's row only; epoch 3's checkpoint was damaged in the kill.
    (trial / "result.json").write_text(json.dumps({"epoch": 1, "fid": 9.0, "checkpoint_dir_name": "checkpoint_000000"})
                                       + "\n" + '{"epoch": 2, "fi')
    state = trial / "checkpoint_000002" / "state.pt"
    state.write_bytes(state.read_bytes()[:20])
    messages = []
    assert backfill_reports(str(tmp_path), progress=messages.append) == 1
    rows = reports(trial)
    assert [(r["epoch"], r["fid"], r["checkpoint_dir_name"]) for r in rows] == [
        (1, 9.0, "checkpoint_000000"), (2, 8.0, "checkpoint_000001")]
    # The restored row has Ray's trial id (from the directory name) and the time its report was written.
    written = (trial / "checkpoint_000001" / "report.json").stat().st_mtime
    assert rows[1]["trial_id"] == "abc" and abs(rows[1]["timestamp"] - written) <= 1
    assert messages == ["resume: cyclegan_abc: restored 1 report(s) of kept checkpoints that the interrupted "
                        "driver had not saved (checkpoint_000001)"]
    assert backfill_reports(str(tmp_path), progress=messages.append) == 0, "done once"


def test_a_resume_removes_a_never_recorded_trial_with_its_checkpoint_staging_at_once(
        smoke_experiments, shared_ray, tmp_path):
    """A trial the interrupted driver started but never recorded: the resume's repairs remove its
    directory and, at once, its checkpoint staging in TMPDIR. (Seen in a full run of the suite: the
    resume that removed the directory was itself SIGKILLed before its final sweep, and no later
    driver knew the trial: its staging stayed for good.) Another trial's staging stays: it may be
    running. The repairs
    run as a resuming driver runs them, connected to Ray, in a process of their own (an in-process
    ray.init would outlive the test in this one)."""
    from core.checkpoints import STAGING_PREFIX

    exp = tmp_path / "runs" / "copy"
    shutil.copytree(smoke_experiments["wgan_gp_builtin"], exp)
    (exp / "wgan_gp_deadbeef").mkdir()
    (exp / "wgan_gp_deadbeef" / "params.json").write_text("{}")
    temp = tmp_path / "tmp"
    temp.mkdir()
    staging, other = temp / f"{STAGING_PREFIX}deadbeef-x1", temp / f"{STAGING_PREFIX}0badcafe-x2"
    for folder in (staging, other):
        folder.mkdir()
        (folder / "state.pt").write_bytes(b"a copy cut short")

    repair = ("import json, sys, ray\n"
              "from core.cluster import Storage\n"
              "from core.driver import repair_interrupted_experiment\n"
              "ray.init(address=sys.argv[1], logging_level='ERROR')\n"
              "print(json.dumps(repair_interrupted_experiment(Storage.parse(sys.argv[2]), sys.argv[3], 'wgan_gp')))\n")
    done = subprocess.run([sys.executable, "-c", repair, shared_ray, str(tmp_path / "runs"), str(exp)], cwd=ROOT,
                          capture_output=True, text=True, env={**environment(), "TMPDIR": str(temp)}, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) == ["wgan_gp_deadbeef"], done.stdout
    assert "removed wgan_gp_deadbeef/" in done.stdout
    assert not (exp / "wgan_gp_deadbeef").exists() and not staging.exists()
    assert other.exists()
