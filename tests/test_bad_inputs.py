"""The catalogue of bad inputs a user can give the command-line scripts, one case per input: each is
refused with exit code 2 and one message that names the problem and the fix, no traceback, before
any work, and a finished experiment it names is left exactly as it was. (Inputs of other kinds have
their catalogues beside the code they reach: test_config.py for YAML files and overrides,
test_export.py for export counts, test_faults.py for clusters and storage.)"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from tune_cli import SMOKE, load_script

SCRIPTS = {name: load_script(name) for name in ("tune", "confirm", "report")}

# (script, its arguments after the experiment or --storage; {exp} is a copy of a finished
# experiment, {storage} its storage folder), the message's key words
CASES = {
    "name outside the storage": ("tune", [*SMOKE, "--storage", "{storage}", "--name", "../escaped"],
                                 "name must be one folder name"),
    "absolute name": ("tune", [*SMOKE, "--storage", "{storage}", "--name", "/tmp/escaped"],
                      "name must be one folder name"),
    "hidden name": ("tune", [*SMOKE, "--storage", "{storage}", "--name", ".x"], "name must be one folder name"),
    "infinite time budget": ("tune", [*SMOKE, "--storage", "{storage}", "--name", "other", "search.time_budget=inf"],
                             "search.time_budget must be a positive, finite duration"),
    "negative time budget": ("tune", [*SMOKE, "--storage", "{storage}", "--name", "other", "search.time_budget=-1h"],
                             "search.time_budget must be a positive, finite duration"),
    "negative evaluation-noise draws": ("confirm", ["{exp}", "--noise", "-1"], "--noise must be 0 (skip) or at least 2"),
    "one evaluation-noise draw": ("confirm", ["{exp}", "--noise", "1"], "--noise must be 0 (skip) or at least 2"),
    "no configuration to confirm": ("confirm", ["{exp}", "--top", "0"], "--top must be at least 1"),
    "one confirmation seed": ("confirm", ["{exp}", "--seeds", "1"], "--seeds must be at least 2"),
    "negative report samples": ("report", ["{exp}", "--top", "-1"], "--top must be 0 or more"),
}


def fingerprint(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(smoke_experiments, tmp_path_factory) -> Path:
    """A copy of the smoke CycleGAN experiment (the shared one is never touched)."""
    storage = tmp_path_factory.mktemp("bad-inputs")
    shutil.copytree(smoke_experiments["cyclegan_builtin"], storage / smoke_experiments["cyclegan_builtin"].name,
                    symlinks=True)
    return storage / smoke_experiments["cyclegan_builtin"].name


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_input_is_refused_at_once_with_one_message_and_nothing_changed(case, finished, capsys):
    script, argv, expected = CASES[case]
    storage = finished.parent
    before = fingerprint(storage)
    argv = [a.replace("{exp}", str(finished)).replace("{storage}", str(storage)) for a in argv]
    try:
        code = SCRIPTS[script].main(argv)
    except SystemExit as e:   # argparse's refusal (parser.error): usage, then the message
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert expected in err and "Traceback" not in err, err[-2000:]
    assert fingerprint(storage) == before, "a refused command changed the experiment's files"
    assert not (storage.parent / "escaped").exists() and not Path("/tmp/escaped").exists()


def test_a_second_driver_is_refused_before_ray_starts_or_anything_is_prepared(finished, capsys, monkeypatch):
    """A --resume while another driver holds the experiment: refused by the lock, the first thing
    the driver takes (it once came after Ray's start-up and the data preparation, about 40 s)."""
    import core.driver
    from core.driver import driver_lock

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started before the lock was checked")

    monkeypatch.setattr(core.driver, "connect", no_ray)
    monkeypatch.setattr(core.driver, "prepare_experiment", no_ray)
    before = fingerprint(finished.parent)
    with driver_lock(finished, f"Experiment {finished.name}"):
        code = SCRIPTS["tune"].main([*SMOKE, "--storage", str(finished.parent), "--resume", "logging.wandb=true"])
    err = capsys.readouterr().err
    assert code == 2 and f"Experiment {finished.name} is being run by pid" in err and "Traceback" not in err, err
    after = fingerprint(finished.parent)
    assert {k: v for k, v in after.items() if not k.endswith(".driver.lock")} == \
        {k: v for k, v in before.items() if not k.endswith(".driver.lock")}
