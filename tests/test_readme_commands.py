"""Every command the README shows exists after `make install`: each line of its ```bash blocks is
run as its --help (make targets as `make -n`), every --flag it uses is one the command knows, and
every repository file it names exists. A new README command is covered without editing this file.

Plus the one command whose point is a running server: optuna-dashboard serves a finished
experiment's study on loopback, and the trials it returns over its JSON API are the study's."""

from __future__ import annotations

import functools
import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent   # the virtualenv's commands (jupyter, optuna-dashboard, streamlit, ...)


def readme_commands() -> list[str]:
    """The command lines of the README's ```bash blocks, comments removed."""
    blocks = re.findall(r"^```bash\n(.*?)^```", README.read_text(), flags=re.MULTILINE | re.DOTALL)
    lines = (line.split("   #")[0].strip() for block in blocks for line in block.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def executable(program: str) -> str:
    found = BIN / program if (BIN / program).is_file() else shutil.which(program)
    if found is None:
        pytest.fail(f"`{program}`, which the README tells users to run, is not installed: add the package that "
                    f"provides it to pyproject.toml, constraints.txt and environment.yml")
    return str(found)


def help_command(argv: list[str]) -> list[str]:
    """The command that asks `argv`'s program about itself without doing its work."""
    program, *args = argv
    if program == "make":
        return ["make", "-n", *args]                       # a dry run: the target exists and resolves
    if Path(program).name.startswith("python"):            # python, .venv/bin/python: this interpreter
        if args[0] == "-m":
            return [sys.executable, "-m", args[1], "--help"]
        return [sys.executable, args[0], "--help"]
    # An installed command and its sub-command words (jupyter lab, streamlit run, ray start).
    words = []
    for arg in args:
        if not re.fullmatch(r"[a-z][a-z-]*", arg):
            break
        words.append(arg)
    return [executable(program), *words, "--help"]


@functools.lru_cache(maxsize=None)
def run_help(command: tuple[str, ...]) -> subprocess.CompletedProcess:
    return subprocess.run(list(command), cwd=ROOT, capture_output=True, text=True, timeout=120)


def flags_of(argv: list[str]) -> list[str]:
    """The --options a command line passes to its program (not those after a bare `--`, which go
    to the script it runs), without values: --count from `[--count N]`, --x from `--x=1`."""
    flags = []
    for arg in argv:
        if arg == "--":
            break
        arg = arg.strip("[]")
        if arg.startswith("--"):
            flags.append(arg.split("=")[0])
    return flags


def repository_paths(argv: list[str]) -> list[str]:
    """Arguments that name files of this repository (search_spaces/x.yaml, analysis/gallery.py):
    not placeholders (<name>), URIs, the user's runs/ or the virtualenv."""
    return [arg for arg in argv if "/" in arg and not arg.startswith(("-", "runs", ".venv", "["))
            and "<" not in arg and "://" not in arg]


COMMANDS = readme_commands()


def test_the_readme_commands_are_found():
    programs = {shlex.split(line)[0] for line in COMMANDS}
    assert {"make", "python", "tensorboard", "jupyter", "optuna-dashboard", "streamlit"} <= programs, programs
    assert any(line.startswith("python experiments/report.py") for line in COMMANDS)


@pytest.mark.parametrize("line", COMMANDS)
def test_readme_command_runs(line):
    argv = shlex.split(line)
    command = help_command(argv)
    done = run_help(tuple(command))
    assert done.returncode == 0, f"`{line}`: `{shlex.join(command)}` failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
    if argv[0] != "make":
        told = done.stdout + done.stderr
        unknown = [flag for flag in flags_of(argv) if not re.search(rf"{re.escape(flag)}\b", told)]
        assert not unknown, f"`{line}` uses {unknown}, which `{shlex.join(command)}` does not list"
    missing = [path for path in repository_paths(argv) if not (ROOT / path).exists()]
    assert not missing, f"`{line}` names {missing}, which do not exist in the repository"


# --- optuna-dashboard serves a real study ---------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict:
    return json.loads(urllib.request.urlopen(url, timeout=10).read())


def test_optuna_dashboard_serves_the_study_over_http(smoke_experiments, tmp_path):
    import optuna

    experiment = smoke_experiments["cyclegan_builtin"]
    db = tmp_path / "optuna.db"
    shutil.copy(experiment / "optuna.db", db)   # the dashboard may write (notes, caches): not the shared one
    port = _free_port()
    server = subprocess.Popen([executable("optuna-dashboard"), f"sqlite:///{db}", "--host", "127.0.0.1",
                               "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(120):
            try:
                listed = _get(f"http://127.0.0.1:{port}/api/studies")
                break
            except OSError:
                assert server.poll() is None, f"optuna-dashboard exited: {server.stdout.read()}"
                time.sleep(0.5)
        else:
            pytest.fail("optuna-dashboard did not answer within 60 s")
        (summary,) = [s for s in listed["study_summaries"] if s["study_name"] == "cyclegan_builtin-smoke"]
        served = _get(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}")["trials"]
    finally:
        server.terminate()
        server.wait(timeout=30)

    study = optuna.load_study(study_name="cyclegan_builtin-smoke", storage=f"sqlite:///{experiment / 'optuna.db'}")
    assert len(served) == len(study.trials) == 2
    for shown, trial in zip(sorted(served, key=lambda t: t["number"]), study.trials):
        assert shown["number"] == trial.number and shown["state"] == trial.state.name.capitalize()
        assert shown["values"] == pytest.approx(trial.values)
        assert {p["name"]: float(p["param_external_value"]) for p in shown["params"]} == pytest.approx(trial.params)
    # The searched keys are the experiment's, and the values the search ranked by are the trials' best FIDs.
    from analysis import load_experiment_dir

    exp = load_experiment_dir(experiment)
    assert {p["name"] for t in served for p in t["params"]} == set(exp.searched)
    assert sorted(v for t in served for v in t["values"]) == pytest.approx(sorted(exp.trials[f"best_{exp.metric}"]))
