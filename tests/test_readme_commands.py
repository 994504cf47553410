"""Every command the README shows exists after `make install`: each line of its ```bash blocks is
checked to start, every --flag it uses is one the command knows, and every repository file it
names exists. A new README command is covered without editing this file.

Starting a program costs seconds (torch, ray, jupyter), so each runs at most once, and only our
own as a real command line:
- our scripts (`python experiments/tune.py ...`): one `python SCRIPT --help` subprocess per script,
  whatever number of README lines use it: it proves the command line starts, and lists the flags;
- installed programs (tensorboard, jupyter lab, optuna-dashboard, streamlit run): read from the
  virtualenv's package metadata (the console script exists in its bin/ and imports; `jupyter lab`
  is the `jupyter-lab` script, `streamlit run` a sub-command of streamlit's click group);
  tensorboard's flags come from the parser it builds, in this process. A program this file cannot
  read that way, or another one's flags, are asked with --help in a subprocess;
- `python -m MODULE`: the module imports and has the __main__ that -m runs;
- make targets: `make -n` in a subprocess (make starts in milliseconds).

The one command whose point is a running server, optuna-dashboard over a finished experiment's
study, is served and read in tests/test_analysis.py (it needs a finished search)."""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.metadata
import importlib.util
import io
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
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


def command_words(line: str) -> list[str]:
    """The words of a README command line without its leading environment settings
    (`PAINTSWEEP_THREADS=2 make test` runs `make test`)."""
    words = shlex.split(line)
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
        words.pop(0)
    return words


def is_python(program: str) -> bool:
    """python, python3, .venv/bin/python: run with this interpreter."""
    return Path(program).name.startswith("python")


@functools.lru_cache(maxsize=None)
def run_help(command: tuple[str, ...]) -> subprocess.CompletedProcess:
    return subprocess.run(list(command), cwd=ROOT, capture_output=True, text=True, timeout=120)


def subprocess_help(command: list[str]) -> str:
    """What `command` (a --help or a `make -n`) prints, run as a subprocess; it must succeed."""
    done = run_help(tuple(command))
    assert done.returncode == 0, f"`{shlex.join(command)}` failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
    return done.stdout + done.stderr


def run_captured(function) -> tuple[int | str, str]:
    """Calls `function` as a command runs: its exit status (0 when it returns, else SystemExit's
    code: argparse exits after printing --help) and what it printed on stdout and stderr."""
    printed = io.StringIO()
    status = 0
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        try:
            function()
        except SystemExit as ended:
            status = 0 if ended.code is None else ended.code
    return status, printed.getvalue()


def tensorboard_help(words: list[str]) -> str:
    """`tensorboard [WORDS] --help` from the parser the tensorboard command builds (TensorBoard.configure
    is what its main passes to absl as the flags parser), without starting anything."""
    from tensorboard import default, program

    board = program.TensorBoard(plugins=default.get_plugins())
    status, told = run_captured(lambda: board.configure(["tensorboard", *words, "--help"]))
    assert status == 0, f"`tensorboard {shlex.join(words)} --help` failed:\n{told[-2000:]}"
    return told


def subcommand_words(args: list[str]) -> list[str]:
    """The sub-command words that follow a program (`lab` of `jupyter lab`, `run` of `streamlit run`)."""
    words = []
    for arg in args:
        if not re.fullmatch(r"[a-z][a-z-]*", arg):
            break
        words.append(arg)
    return words


def console_script(program: str, words: list[str]):
    """What `program WORDS...` runs, loaded from the virtualenv's package metadata: the `program`
    console script, a word as the `program-word` script (`jupyter lab` runs `jupyter-lab`) or as a
    sub-command of its click group (`streamlit run`). None when `program` is not a console script or
    a word is neither: then only the program itself can tell."""
    scripts = importlib.metadata.entry_points(group="console_scripts")
    if program not in scripts.names:
        return None
    name, target = program, scripts[program].load()
    for word in words:
        if f"{name}-{word}" in scripts.names:
            name = f"{name}-{word}"
            executable(name)   # `jupyter lab` finds `jupyter-lab` beside it
            target = scripts[name].load()
        elif isinstance(target, click.Group):
            target = target.get_command(click.Context(target), word)
            assert target is not None, f"`{name}` has no sub-command `{word}`"
        else:
            return None
    return target


def installed_program_help(argv: list[str]) -> str:
    """Checks that an installed program and its sub-command words exist; returns its help when the
    line has flags to look up in it (else "")."""
    program, *args = argv
    words = subcommand_words(args)
    found = executable(program)
    readable = console_script(program, words) is not None
    if readable and not flags_of(argv):
        return ""
    if readable and program == "tensorboard":
        return tensorboard_help(words)
    return subprocess_help([found, *words, "--help"])


def module_help(argv: list[str]) -> str:
    """`python -m MODULE ...`: the module imports, and a package has the __main__ that -m runs.
    Returns its help when the line has flags to look up in it (else "")."""
    module = argv[2]
    spec = importlib.util.find_spec(module)
    assert spec is not None, f"`python -m {module}`: {module} is not installed"
    importlib.import_module(module)
    if spec.submodule_search_locations is not None:
        assert importlib.util.find_spec(f"{module}.__main__"), f"`python -m {module}`: {module} has no __main__"
    return subprocess_help([sys.executable, "-m", module, "--help"]) if flags_of(argv) else ""


def what_it_says(argv: list[str]) -> str:
    """What the program of a README line says about itself (its --help, or make's dry run), failing
    the test when the program, script, module or make target is missing or does not start."""
    program, *args = argv
    if program == "make":
        return subprocess_help(["make", "-n", *args])   # a dry run: the target exists and resolves
    if is_python(program) and args[0] == "-m":
        return module_help(argv)
    if is_python(program):
        script = args[0]
        assert (ROOT / script).is_file(), f"the README runs {script}, which does not exist in the repository"
        return subprocess_help([sys.executable, script, "--help"])
    return installed_program_help(argv)


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
    programs = {command_words(line)[0] for line in COMMANDS}
    assert {"make", "python", "tensorboard", "jupyter", "optuna-dashboard", "streamlit"} <= programs, programs
    assert any(line.startswith("python experiments/report.py") for line in COMMANDS)


@pytest.mark.parametrize("line", [
    # (a benchmark script's --help imports Ray Tune first, 3-6 s: left to the full suite)
    pytest.param(line, marks=pytest.mark.slow) if line.split()[1:2] and line.split()[1].startswith("benchmarks/")
    else line for line in COMMANDS])
def test_readme_command_runs(line):
    argv = command_words(line)
    told = what_it_says(argv)
    if argv[0] != "make":
        unknown = [flag for flag in flags_of(argv) if not re.search(rf"{re.escape(flag)}\b", told)]
        assert not unknown, f"`{line}` uses {unknown}, which its program's --help does not list"
    missing = [path for path in repository_paths(argv) if not (ROOT / path).exists()]
    assert not missing, f"`{line}` names {missing}, which do not exist in the repository"


def test_the_installed_environment_leaves_out_the_iri_grammar_every_ray_process_would_compile():
    """`make install` uninstalls rfc3987-syntax (see the Makefile): jsonschema imports it when it is
    there, and it compiles ~35 Earley parsers at import, in every Ray process (Ray imports jsonschema
    for its runtime-env schemas). Measured: a smoke search 25 s with it, 15 s without."""
    assert importlib.util.find_spec("rfc3987_syntax") is None, (
        "rfc3987-syntax is installed: every Ray process spends ~1-3 s compiling its grammar. "
        "Run `pip uninstall -y rfc3987-syntax` (make install does).")
