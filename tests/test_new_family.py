"""A new family needs one module and its search space, and no test list: the toy family of
tests/toy_family.py (registered by tests/conftest.py, as a plugin is) goes through the contract
and trainable tests from the registry; here it runs a real search with tune.py, which finds it
through $PAINTSWEEP_FAMILIES (with --verbose, whose console it checks), and its best checkpoint is exported.
(About 20 s: one search on the session's Ray.)"""

from __future__ import annotations

import os
import re
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from core.config import ConfigError, load_experiment
from core.models import all_families, get_family
from tune_cli import environment, tune

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import export  # noqa: E402

TESTS = Path(__file__).resolve().parent
TOY_SPACE = TESTS / "spaces" / "toy_builtin.yaml"


def toy_environment() -> dict[str, str]:
    """What a tune.py process needs to find the toy family: its module named, and importable."""
    path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    return environment(PAINTSWEEP_FAMILIES="toy_family", PYTHONPATH=path)


def test_the_toy_family_is_registered_beside_the_built_in_ones():
    assert {"cyclegan", "wgan_gp", "vae", "toy"} <= set(all_families())
    assert get_family("toy").__module__ == "toy_family"
    assert load_experiment(TOY_SPACE).family == "toy"


def test_a_family_module_that_does_not_import_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PAINTSWEEP_FAMILIES", "no_such_family_module")
    space = tmp_path / "space.yaml"
    space.write_text("name: t\nfamily: lost\n")
    with pytest.raises(ConfigError, match="PAINTSWEEP_FAMILIES names the module 'no_such_family_module'"):
        load_experiment(space)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory, shared_ray):
    """(experiment dir, tune.py's process) of the toy space's search, on the session's Ray (whose
    workers find the toy family the same way). With --verbose: the one search whose console has
    Ray's and Optuna's own output (the others' must not)."""
    storage = tmp_path_factory.mktemp("toy-runs")
    done = tune("--space", str(TOY_SPACE), "--storage", str(storage), "--address", shared_ray, "--verbose",
                env=toy_environment(), timeout=300)
    assert done.returncode == 0, f"the toy search failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return storage / "toy-builtin", done


@pytest.fixture(scope="module")
def toy_search(toy_run) -> Path:
    return toy_run[0]


@pytest.mark.slow   # (the toy search: ~25 s; the fast tier's real search is the smoke fixture's)
def test_verbose_brings_back_ray_tunes_and_optunas_own_output(toy_run):
    _, done = toy_run
    for said in ("Configuration for experiment", "started with configuration", "Trial status"):
        assert said in done.stdout, said
    assert "A new study created" in done.stderr
    assert len(re.findall(r"^Trial toy_\w+ (completed|stopped early), best fid", done.stdout, re.M)) == 2   # ours too


@pytest.mark.slow
def test_a_real_search_runs_the_toy_family(toy_search):
    board = pd.read_csv(toy_search / "leaderboard.csv")
    assert len(board) == 2 and set(board["status"]) <= {"completed", "stopped early"}
    assert board["best_fid"].notna().all()
    for path in board["checkpoint"]:
        assert (Path(path) / "state.pt").is_file()


@pytest.mark.slow
def test_the_toy_familys_best_checkpoint_exports(toy_search, tmp_path, capsys):
    out = tmp_path / "images.zip"
    assert export.main([str(toy_search), "--out", str(out), "--upscale", "--count", "3", "--any-count"]) == 0
    assert "FID" in capsys.readouterr().out
    with zipfile.ZipFile(out) as archive:
        assert archive.namelist() == [f"{i:05d}.jpg" for i in range(3)]


def test_registration_checks_where_a_family_lives_and_its_tiny_keys():
    """A built-in family must live in core/models/<name>.py (a lookup by name imports that file), and
    its `tiny` settings must be keys of its Config."""
    from core.models.base import register_family
    from toy_family import ToyAutoencoder

    misplaced = type("Misplaced", (ToyAutoencoder,), {"__module__": "core.models.blocks"})
    with pytest.raises(TypeError, match="a built-in family lives in core/models/misplaced.py"):
        register_family("misplaced")(misplaced)
    typo = type("Typo", (ToyAutoencoder,), {"tiny": {"chanels": 2}})
    with pytest.raises(TypeError, match="declares keys its Config lacks: chanels"):
        register_family("typo")(typo)
    assert "misplaced" not in all_families() and "typo" not in all_families()
