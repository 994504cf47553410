"""Faults, injected for real: bad addresses and storage, a killed trial process, a driver killed
with SIGKILL again and again, a lost worker node, and results kept in an S3-compatible server.

Each fault test ends by printing one summary line: the faults injected and the work lost (zero).
Every Ray process a test starts lives in a process group (or a ray.cluster_utils.Cluster) the test
owns and is stopped by it, even when the test fails.
"""

import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import torch
from tune_cli import SMOKE, driver, environment, kill_session, load_script, reports, study_of, tune, wait_for

ENV = environment()
tune_main = load_script("tune").main
# Epochs of a few seconds (the smoke test's are a fraction of one), so a fault lands mid-epoch.
LONGER_EPOCHS = ["data.builtin_count=100", "data.max_images=100", "train.iters_per_epoch=60"]


def finished_trials(exp: Path, epochs: int) -> dict[str, float]:
    """Trials whose final-epoch checkpoint is in storage -> the best FID it records. (Checkpoints,
    not result.json: the driver's JSON logger buffers its lines, and a SIGKILL loses them.)"""
    done = {}
    for path in exp.glob("cyclegan_*/checkpoint_*/state.pt"):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:   # being written right now: not finished yet
            continue
        if state["epoch"] == epochs:
            done[path.parent.parent.name] = state["best"]["best_fid"]
    return done


def checkpoints_load(exp: Path) -> int:
    """Every kept checkpoint loads (weights_only) and names its own epoch; returns how many there are."""
    paths = sorted(exp.glob("cyclegan_*/checkpoint_*/state.pt"))
    for path in paths:
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert state["epoch"] >= 1 and "family" in state, path
    return len(paths)


def retried_from_checkpoint(output: str) -> bool:
    """The driver's table says the trial succeeded after a retry (workers' own log lines, such
    as the trainable's "resumed from checkpoint_000000", are streamed best-effort and can be
    missing from the driver's output when a node goes away)."""
    return "terminated successfully after retrying" in output or "resumed from checkpoint_000000" in output


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- Clear messages --------------------------------------------------------------------------------


def test_unreachable_cluster_address_is_one_clear_error(tmp_path, capsys):
    port = free_port()   # nothing listens there
    start = time.time()
    code = tune_main([*SMOKE, "--storage", str(tmp_path), "--address", f"127.0.0.1:{port}"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"Cannot reach the Ray cluster at --address 127.0.0.1:{port}" in err
    assert "ray start --head" in err and "Traceback" not in err
    assert time.time() - start < 60, "an unreachable address must not be waited on"
    assert not any(tmp_path.iterdir()), "nothing is written for a search that cannot start"


def test_gpu_request_on_a_cluster_without_gpus_is_refused_before_waiting(tmp_path, capsys, shared_ray):
    # In this process, on the session's Ray: the check runs once the driver has joined the cluster,
    # and the driver leaves it on the way out.
    code = tune_main([*SMOKE, "--storage", str(tmp_path), "--address", shared_ray, "search.gpus_per_trial=1"])
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert "asks for 1 GPU" in err and "no node has a GPU" in err
    assert "Traceback" not in err


def test_a_local_ray_that_times_out_starting_is_started_once_more_then_one_clear_error(tmp_path, capsys, monkeypatch):
    """Ray gives its processes a fixed 30 s to come up; after a killed driver, on a loaded machine,
    that was seen to fail once and work at the next try. The failure is injected (Ray's own
    exception, from ray.init) since it cannot be caused on demand; what the second try meets is
    told apart by its own exception, so no Ray starts here."""
    import ray

    from core.cluster import connect

    calls = []
    timeout = Exception("The current node timed out during startup. This could happen because some of the "
                        "raylet failed to startup or the GCS has become overloaded.")

    def init_failing_first(*args, **kwargs):
        calls.append(kwargs.get("address"))
        raise timeout if len(calls) == 1 else RuntimeError("the second try")

    monkeypatch.setattr(ray, "init", init_failing_first)
    with pytest.raises(RuntimeError, match="the second try"):   # tried again, and only that failure is seen
        connect(None)
    assert calls == ["local", "local"]

    def init_failing(*args, **kwargs):
        calls.append(kwargs.get("address"))
        raise timeout

    calls.clear()
    monkeypatch.setattr(ray, "init", init_failing)
    code = tune_main([*SMOKE, "--storage", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert calls == ["local", "local"], "started twice, then reported"
    assert "Ray did not start on this machine, 2 times" in err and "`ray stop`" in err and "--resume" in err
    assert "Traceback" not in err
    assert not any(tmp_path.iterdir()), "nothing is written for a search that cannot start"


def test_storage_that_cannot_be_written_is_one_clear_error(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code = tune_main([*SMOKE, "--storage", str(blocker / "runs")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Cannot write to --storage" in err and "Traceback" not in err


# --- The driver interrupted and SIGKILLed at different moments, then resumed ----------------------


@pytest.mark.slow
def test_driver_interrupted_then_killed_repeatedly_then_resumed_loses_no_finished_trial(tmp_path):
    """One search through every way a driver can stop: Ctrl-C after a trial finished, then SIGKILL
    3 s into a resume, mid-trial, and just after a trial finished; the last --resume finishes it.
    (About 130 s for five drivers; these were two tests before, 190 s together, whose runs repeated
    each other's first half.)"""
    # A fresh short TMPDIR (Ray's unix sockets live there too): what the killed drivers and their
    # trials leave in it is counted at the end.
    temp = Path(tempfile.mkdtemp(prefix="psk-", dir="/tmp"))
    try:
        _stop_the_driver_repeatedly_then_resume(tmp_path, {**ENV, "TMPDIR": str(temp)})
        left = sorted(p.name for p in temp.iterdir() if "wandb" in p.name or p.name.startswith("paintsweep-"))
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    # Nothing of the product's (checkpoint staging) or of W&B's (which Ray Tune imports in the
    # driver) is left by three SIGKILLed drivers and their trials; Ray's own session files are Ray's.
    assert not left, f"left in TMPDIR: {left}"


def _stop_the_driver_repeatedly_then_resume(tmp_path, env):
    epochs, trials = 3, 4
    args = [*SMOKE, "--storage", str(tmp_path), "--num-samples", str(trials), "search.max_concurrent=1",
            "search.scheduler=fifo", f"train.epochs={epochs}", "train.iters_per_epoch=6"]
    exp = tmp_path / "cyclegan_builtin-smoke"

    def checkpoints() -> set[Path]:
        return set(exp.glob("cyclegan_*/checkpoint_*/state.pt"))

    # Each stop at a different moment: a Ctrl-C once a trial has finished; a SIGKILL while Ray
    # restores its state, one mid-trial (a new checkpoint, the trial running on), one right after
    # another trial finished.
    moments = [
        ("SIGINT", "just after a trial finished", lambda: len(finished_trials(exp, epochs)) > finished_at_start),
        ("SIGKILL", "3 s into a resume", lambda: time.sleep(3) or True),
        ("SIGKILL", "mid-trial, after a new checkpoint", lambda: checkpoints() - checkpoints_at_start),
        ("SIGKILL", "just after a trial finished", lambda: len(finished_trials(exp, epochs)) > finished_at_start),
    ]
    finished_seen: dict[str, float] = {}
    first_finished: dict[str, list[str]] = {}   # the trial finished before the Ctrl-C -> its checkpoints
    stops = []
    for i, (how, moment, condition) in enumerate(moments):
        finished_at_start, checkpoints_at_start = len(finished_trials(exp, epochs)), checkpoints()
        with driver(*args, *(["--resume"] if i else []), env=env) as proc:
            wait_for(condition, moment, proc=proc)
            if how == "SIGINT":   # Ctrl-C: to the whole process group, as a terminal sends it
                os.killpg(proc.pid, signal.SIGINT)
                proc.wait(timeout=120)
                first_finished = {name: sorted(p.name for p in (exp / name).glob("checkpoint_*"))
                                  for name in finished_trials(exp, epochs)}
            kill_session(proc)
        stops.append(f"{how} {moment}")
        finished_seen |= finished_trials(exp, epochs)

    out = tune(*args, "--resume", env=env)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]

    board = pd.read_csv(exp / "leaderboard.csv")
    assert len(board) == trials and board["best_fid"].notna().all(), board.to_string()
    assert set(board["status"]) == {"completed"}, board.to_string()
    lost = [name for name in finished_seen if name not in set(board["trial"])]
    assert not lost, f"finished trials lost: {lost}"
    by_trial = dict(zip(board["trial"], board["best_fid"]))
    changed = [name for name, fid in finished_seen.items() if by_trial[name] != pytest.approx(fid)]
    assert not changed, f"finished trials whose results changed: {changed}"
    assert first_finished, "no trial had finished before the Ctrl-C"
    for name, kept_then in first_finished.items():   # a finished trial is never trained or pruned again
        assert sorted(p.name for p in (exp / name).glob("checkpoint_*")) == kept_then, name
    kept = checkpoints_load(exp)
    for _, row in board.iterrows():
        assert (Path(row["checkpoint"]) / "state.pt").is_file()
    redone = sum(len(reports(t)) - len({r["epoch"] for r in reports(t)}) for t in exp.glob("cyclegan_*"))
    # The records are those of one run: one snapshot of Ray's (the newest: what a resume restores),
    # and an Optuna study with no trial left RUNNING (one asked for by a killed driver is failed).
    for prefix in ("experiment_state-", "search_gen_state-", "searcher-state-"):
        assert len(list(exp.glob(f"{prefix}*"))) == 1, sorted(p.name for p in exp.glob(f"{prefix}*"))
    study = study_of(exp)
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == trials and set(states) <= {"COMPLETE", "FAIL"}, states
    # The kills did not change the search's course: the configurations are those the sampler
    # proposes when nothing interrupts it, told the same scores.
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    expected = proposals_without_interruption(args, [t.value for t in complete])
    assert [t.params for t in complete] == expected
    print(f"\nfaults injected: {'; '.join(stops)}; work lost: 0 finished trials of {len(finished_seen)}, "
          f"0 corrupt checkpoints of {kept}; epochs redone after restore: {redone}")


def proposals_without_interruption(args: list[str], scores: list[float]) -> list[dict]:
    """The configurations the search of `args` proposes in one study nothing interrupts, one trial
    at a time (search.max_concurrent=1), each told its score in turn: the baseline, the sampler's
    start-up draws, then TPE's. No Ray and no training: the same sampler and define-by-run space
    an uninterrupted run asks, in an in-memory study."""
    import optuna

    from core.config import load_experiment
    from core.plan import baseline_points, make_sampler
    from core.space import optuna_space

    overrides = [a for a in args if "=" in a and not a.startswith("-")]
    num_samples = args[args.index("--num-samples") + 1]
    cfg = load_experiment(SMOKE[1], [*load_script("tune").SMOKE_TEST_OVERRIDES, *overrides,
                                     f"search.num_samples={num_samples}"])
    assert cfg.search.max_concurrent == 1, "with trials at once, what a trial is told depends on timing"
    study = optuna.create_study(sampler=make_sampler(cfg))
    for point in baseline_points(cfg):
        study.enqueue_trial(point)
    space = optuna_space(cfg.search.space)
    for score in scores:
        trial = study.ask()
        space(trial)
        study.tell(trial, score)
    return [t.params for t in study.trials]


# --- A trial process killed, then its worker node lost --------------------------------------------


@pytest.mark.slow
def test_trial_process_killed_then_its_node_lost_finishes_from_its_checkpoints(tmp_path, monkeypatch):
    """Two faults in one run (each cost a search of its own before; their recoveries do not
    interact): the trial's worker process is SIGKILLed mid-epoch 2, and Ray retries the trial from
    epoch 1's checkpoint on the same node; then that node is removed mid-epoch 3, and the trial goes
    on from epoch 2's checkpoint on another node. No epoch is trained twice or skipped. (About 70 s:
    a three-node Ray cluster, epochs long enough for each fault to land mid-epoch; two tests, 136 s,
    before.)"""
    from ray.cluster_utils import Cluster

    # ray.cluster_utils.Cluster lives in this process, the driver in another: with a token in
    # ~/.ray/auth_token Ray turns token authentication on for the test cluster, whose token the
    # driver does not get. This test is about losing a process and a node, not about authentication.
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    env = {**ENV, "RAY_AUTH_MODE": "disabled"}
    epochs = 4
    args = [*SMOKE, "--storage", str(tmp_path), "--num-samples", "1", "search.max_failures=3",
            "search.scheduler=fifo", f"train.epochs={epochs}", *LONGER_EPOCHS]
    exp = tmp_path / "cyclegan_builtin-smoke"

    def checkpoint(n: int):
        return lambda: next(iter(exp.glob(f"cyclegan_*/checkpoint_{n:06d}/state.pt")), None)

    # A head without CPUs (it runs only Ray's services), so the trial must run on worker A.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        node_a = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        raylet_a = psutil.Process(node_a.all_processes["raylet"][0].process.pid)
        with driver(*args, "--address", cluster.address, env=env) as proc:
            # Once epoch 1's checkpoint is in storage (and a moment later registered by the driver),
            # kill the trial's worker process while it trains epoch 2.
            trial = wait_for(checkpoint(0), "the first checkpoint", proc=proc).parent.parent
            worker = wait_for(lambda: next((p for p in raylet_a.children(recursive=True)
                                            if "ImplicitFunc" in " ".join(p.cmdline())), None),
                              "the trial's worker process", proc=proc)
            time.sleep(1)
            assert not checkpoint(1)(), "killed too late: epoch 2 already done"
            worker.kill()
            # Retried on A, the trial trains epoch 2 again from epoch 1's checkpoint; then A is lost.
            wait_for(checkpoint(1), "epoch 2's checkpoint after the retry", proc=proc)
            time.sleep(1)   # let the driver register it
            cluster.add_node(num_cpus=1)            # B: where the trial can go on
            cluster.remove_node(node_a)             # A lost mid-epoch 3, with its trial process
            output, _ = proc.communicate(timeout=400)
        assert proc.returncode == 0, output[-4000:]
    finally:
        cluster.shutdown()

    assert retried_from_checkpoint(output), output[-4000:]
    epochs_reported = [r["epoch"] for r in reports(trial)]
    assert epochs_reported == list(range(1, epochs + 1)), f"epochs redone or skipped: {epochs_reported}"
    board = pd.read_csv(exp / "leaderboard.csv")
    assert list(board["status"]) == ["completed"]
    kept = checkpoints_load(exp)
    print(f"\nfaults injected: the trial's process SIGKILLed mid-epoch 2, then its worker node (of 2, plus "
          f"a CPU-less head) removed mid-epoch 3; work lost: 0 epochs (reported {epochs_reported}), "
          f"{kept} checkpoints load")


# --- Results in S3: an S3-compatible server (moto) on loopback ----------------------------------------


@pytest.fixture
def s3_server():
    """moto's S3 server on 127.0.0.1 with one bucket; yields (storage URI base, env for tune.py)."""
    boto3 = pytest.importorskip("boto3")
    server_mod = pytest.importorskip("moto.server")
    port = free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)   # not one log line per request
    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", **{
            "aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"})
        client.create_bucket(Bucket="paintsweep")
        options = f"endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
        yield client, options, {**ENV, **creds}
    finally:
        server.stop()


@pytest.mark.slow
def test_search_stored_in_s3_keeps_results_study_leaderboard_and_shipped_data(s3_server, tmp_path, monkeypatch, capsys):
    """(About 40 s: a whole search whose every file goes through the S3 server.)"""
    client, options, env = s3_server
    storage = f"s3://paintsweep/runs?{options}"
    env = {**env, "PAINTSWEEP_CACHE": str(tmp_path / "cache")}   # the mirror and data cache of this driver

    # Refused before Ray starts, so in this process (with the driver's credentials and cache).
    for name, value in env.items():
        if name.startswith("AWS_") or name == "PAINTSWEEP_CACHE":
            monkeypatch.setenv(name, value)
    assert tune_main([*SMOKE, "--storage", f"s3://no-such-bucket/runs?{options}"]) == 2
    err = capsys.readouterr().err
    assert "Cannot write to --storage" in err and "Traceback" not in err, err[-2000:]
    assert tune_main([*SMOKE, "--storage", storage, "--resume"]) == 2
    assert "Nothing to resume" in capsys.readouterr().err

    out = tune(*SMOKE, "--storage", storage, "search.scheduler=fifo", env=env)   # every trial completes
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]

    keys = {o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket="paintsweep")
            for o in page.get("Contents", [])}
    exp = "runs/cyclegan_builtin-smoke"
    for name in ("experiment.yaml", "optuna.db", "leaderboard.csv", "leaderboard.txt", "assets/COMPLETE"):
        assert f"{exp}/{name}" in keys, (name, sorted(keys)[:40])
    states = sorted(k for k in keys if k.endswith("/state.pt"))
    trials = {k.split("/")[2] for k in states}
    assert len(trials) == 2, states
    for key in states:   # every checkpoint in the bucket is whole
        path = tmp_path / "dl.pt"
        client.download_file("paintsweep", key, str(path))
        assert torch.load(path, map_location="cpu", weights_only=True)["epoch"] >= 1
    board_path = tmp_path / "board.csv"
    client.download_file("paintsweep", f"{exp}/leaderboard.csv", str(board_path))
    board = pd.read_csv(board_path)
    assert len(board) == 2 and set(board["status"]) == {"completed"}
    assert all(str(c).startswith(f"paintsweep/{exp}/") for c in board["checkpoint"])

    # A node without the driver's cache fetches the shipped data and reference statistics.
    from core.cluster import SharedAssets, Storage
    from core.data import load_prepared
    from core.metrics import load_reference

    store = Storage.parse(storage)
    reference_key = next(k for k in keys if k.startswith(f"{exp}/assets/") and k.count("/") == 3
                         and k.endswith(".pt"))   # assets/<reference statistics>.pt
    fingerprint = client.get_object(Bucket="paintsweep", Key=f"{exp}/assets/COMPLETE")["Body"].read().decode()
    elsewhere = SharedAssets(store, f"paintsweep/{exp}/assets", str(tmp_path / "not-here"),
                             str(tmp_path / "not-here" / Path(reference_key).name), fingerprint)
    prepared_root, reference_path = elsewhere.localize(tmp_path / "node-cache")
    assert prepared_root.startswith(str(tmp_path / "node-cache"))
    assert load_prepared(prepared_root).fingerprint == fingerprint
    assert load_reference(reference_path).features.shape[0] > 0
    print(f"\nfaults injected: a storage URI that cannot be written, a resume of an empty prefix (both refused "
          f"clearly); work lost: 0 ({len(states)} checkpoints in S3 load, {len(board)} trials on the leaderboard)")
