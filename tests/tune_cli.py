"""tune.py as the tests drive it: run it to the end, start it and kill it, and read what it wrote.

One place for what five test files had each spelled out: the command, its environment (unbuffered,
never an inherited RAY_ADDRESS: each driver starts its own local Ray unless a test says otherwise),
and the readers of the records a search leaves (result.json, the Optuna study).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
TUNE = [sys.executable, str(ROOT / "experiments" / "tune.py")]
SMOKE = ["--space", str(ROOT / "search_spaces" / "cyclegan_builtin.yaml"), "--smoke-test"]   # 2 trials of 2 short epochs
SMOKE_EXPERIMENT = "cyclegan_builtin-smoke"                                   # the name --smoke-test gives it


def environment(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
    env.pop("RAY_ADDRESS", None)
    return env


def tune(*args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run tune.py to its end; stdout and stderr are captured as text."""
    return subprocess.run([*TUNE, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=env or environment())


@contextmanager
def driver(*args: str, env: dict | None = None):
    """tune.py in its own session: the test can SIGKILL it with every Ray process it started."""
    proc = subprocess.Popen([*TUNE, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, env=env or environment())
    try:
        yield proc
    finally:
        kill_session(proc)


def kill_session(proc) -> None:
    """SIGKILL the driver and everything in its session (Ray's GCS, raylet, workers)."""
    # Until none is left: a process forked (a Ray worker starting) while the others are killed is
    # not in the first listing.
    for _ in range(10):
        members = [p for p in psutil.process_iter() if session_of(p) == proc.pid]
        if not members:
            break
        for p in members:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(members, timeout=30)
    proc.wait(timeout=30)


def session_of(p) -> int | None:
    try:
        return os.getsid(p.pid)
    except (ProcessLookupError, PermissionError):
        return None


def wait_for(condition, what: str, timeout: float = 300, proc=None):
    """Poll `condition` until it returns something true (returned); fail if the driver exits first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the driver exited ({proc.returncode}) before {what}:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def reports(trial_dir: Path) -> list[dict]:
    """What a trial reported, one dict per evaluation, as the driver wrote it (none yet: [])."""
    path = trial_dir / "result.json"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [json.loads(line) for line in lines if line.strip()]


def study_of(exp: Path):
    import optuna

    return optuna.load_study(study_name=exp.name, storage=f"sqlite:///{exp / 'optuna.db'}")


def recorded_latest_checkpoint(exp: Path) -> dict[str, str]:
    """trial directory name -> the latest checkpoint Ray's newest experiment snapshot names."""
    from ray.tune.execution.experiment_state import _find_newest_experiment_checkpoint
    from ray.tune.trainable.metadata import _TrainingRunMetadata
    from ray.tune.utils.serialization import _loads_with_cloudpickle

    state = _loads_with_cloudpickle(Path(_find_newest_experiment_checkpoint(str(exp))).read_text())
    named = {}
    for _, metadata_json in state["trial_data"]:
        latest = _TrainingRunMetadata.from_json_state(metadata_json).checkpoint_manager.latest_checkpoint_result
        if latest is not None:
            path = Path(latest.checkpoint.path)
            named[path.parent.name] = path.name
    return named


def load_script(name: str):
    """experiments/<name>.py as a module, to call its main(argv) in this process: an error path or a
    --dry-run needs no process of its own (the one real command line each script has is tested in
    test_readme_commands)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"paintsweep_script_{name}", ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
