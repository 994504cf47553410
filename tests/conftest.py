"""Shared test setup: a private cache and a tiny built-in dataset (the `slow` marker is
registered in pyproject.toml).

Tests never touch the user's ~/.cache/paintsweep: PAINTSWEEP_CACHE points at a temporary folder
for the whole session (ExperimentConfig.cache_path reads it, and Ray workers inherit it).
"""

from __future__ import annotations

import functools
import importlib
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from core.config import DataConfig
from core.data import PreparedData, prepare_data

# Set at import, before any test module builds a config; removed when the session ends.
_CACHE = Path(tempfile.mkdtemp(prefix="paintsweep-test-cache-"))
os.environ["PAINTSWEEP_CACHE"] = str(_CACHE)


def pytest_unconfigure():
    shutil.rmtree(_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def paintsweep_cache() -> Path:
    """The session's private cache folder (also $PAINTSWEEP_CACHE)."""
    return _CACHE


@pytest.fixture(scope="session")
def tiny_data_cfg() -> DataConfig:
    """The DataConfig of `tiny_data`: built-in data, 32 px crops of 36 px images, 24 pictures per
    domain (all five scene kinds), a quarter of the photos (6) held out. Do not modify it."""
    return DataConfig(source="builtin", image_size=32, builtin_count=24, test_fraction=0.25)


@pytest.fixture(scope="session")
def tiny_data(tiny_data_cfg, paintsweep_cache) -> PreparedData:
    """The tiny built-in dataset, prepared once per session in the session cache (so code that
    calls prepare_data with the same DataConfig and cache reuses it)."""
    return prepare_data(tiny_data_cfg, paintsweep_cache, progress=lambda message: None)


@pytest.fixture(autouse=True)
def _ray_auth_mode_as_found():
    """An in-process ray.init() of a local cluster (a test running a driver in this process) turns on
    Ray's token authentication for the whole process (os.environ RAY_AUTH_MODE=token). Drivers started
    after it would inherit that and ask the session's Ray, which runs without it, for a token: their
    trials' actors die at once ("Missing authorization header"). Each test leaves it as it found it."""
    before = os.environ.get("RAY_AUTH_MODE")
    yield
    if before is None:
        os.environ.pop("RAY_AUTH_MODE", None)
    else:
        os.environ["RAY_AUTH_MODE"] = before


# --- Two streams: the searches, and everything else beside them ------------------------------------

# `make test` runs two pytest workers (pytest-xdist, `-n 2 --dist loadscope`, with the scope defined
# here): one takes every module that runs Ray searches, the other the rest, which shares no Ray, no
# search and no file with them. Alone, each stream leaves a core idle much of the time: a search
# waits for Ray, its workers' imports or a wall-clock moment, and the unit tests use one core. The
# session's Ray and its shared searches are built once, in the searches' worker. (xdist's own
# `loadgroup` marks would say the same, but with pytest 9.2 they are silently ignored:
# pytest-dev/pytest-xdist#1386.)
SEARCH_FIXTURES = ("shared_ray", "smoke_experiments")
# Searches whose point is a moment in time (a kill mid-epoch or mid-resume, a wall-clock budget):
# last in their stream, once the other stream (about 4.5 minutes) has finished and left them both
# cores. (The racing runs are not among them: their point is that the moment does not matter.)
TIMED_MODULES = ("test_faults", "test_records", "test_search_runs")


@functools.cache   # (xdist's scheduler asks once per test id)
def stream_of(module: Path) -> str:
    """A test module's stream: "searches" for one with Ray searches (a timed one, or one that asks
    for the session's Ray or its smoke searches: a fixture is asked for by its name), else "units".
    From the file alone: xdist's scheduler sees only test ids."""
    if module.stem in TIMED_MODULES or any(name in module.read_text() for name in SEARCH_FIXTURES):
        return "searches"
    return "units"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """The units first, then the searches, the timed ones last; each module whole, in its own order."""
    modules: dict[Path, list] = {}
    for item in items:
        modules.setdefault(item.path, []).append(item)
    order = sorted(modules, key=lambda path: (stream_of(path) == "searches", path.stem in TIMED_MODULES))
    items[:] = [item for path in order for item in modules[path]]


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config, log):
    """With `--dist loadscope`, the scope of a test is its module's stream: each stream is one unit
    of work, run by one worker in the order above."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class TwoStreams(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return stream_of(config.rootpath / nodeid.split("::", 1)[0])

    return TwoStreams(config, log)


# --- One Ray for the session's searches ----------------------------------------------------------


@pytest.fixture(scope="session")
def shared_ray():
    """The HOST:PORT of a Ray cluster that lives as long as the test session: searches whose point is
    not Ray's own start, stop or temp files join it with --address (a real user path: `ray start
    --head`, then `tune.py --address`) instead of starting a Ray each, which costs about 10 s a run.

    Its workers take their environment from the cluster, not from the driver: started with this
    session's (PAINTSWEEP_CACHE above, the toy family's module), without RAY_ADDRESS or any W&B
    setting of the developer's (the smoke search's W&B must find no key). Fault tests, and tests of what a driver's own Ray leaves in
    TMPDIR or of per-driver credentials (S3), start their own Ray instead."""
    from ray.cluster_utils import Cluster

    kept = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("WANDB_") or k == "RAY_ADDRESS"}
    # The toy family of tests/toy_family.py, which this session registers, is found by its workers too.
    tests = str(Path(__file__).resolve().parent)
    plugin = {"PAINTSWEEP_FAMILIES": "toy_family",
              "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))}
    kept_plugin = {k: os.environ.get(k) for k in plugin}
    os.environ.update(plugin)
    try:
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": os.cpu_count(),
                                                                "include_dashboard": False})
    finally:
        os.environ.update(kept)
        for k, v in kept_plugin.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        yield cluster.address
    finally:
        cluster.shutdown()


# --- Finished smoke experiments (analysis, export, gallery and search tests share them) ----------

SMOKE_SPACES = ("cyclegan_builtin", "wgan_gp_builtin")   # a CycleGAN and a WGAN-GP search, 2 trials each


class SmokeExperiments(dict):
    """{space stem: experiment dir}, plus what tune.py printed for each (`outputs`: stdout, `errors`: stderr)."""

    def __init__(self):
        super().__init__()
        self.outputs: dict[str, str] = {}
        self.errors: dict[str, str] = {}


@pytest.fixture(scope="session")
def smoke_experiments(tmp_path_factory, shared_ray) -> SmokeExperiments:
    """`tune.py --smoke-test` runs on the session's Ray, side by side (about 30 s in all). The CycleGAN one logs
    to W&B too (logging.wandb=true), with no API key and WANDB_MODE unset: W&B must then stay
    offline and never wait for the network."""
    from tune_cli import environment, tune

    storage = tmp_path_factory.mktemp("smoke-runs")
    env = {k: v for k, v in environment().items() if not k.startswith("WANDB_")}

    def search(stem: str):
        extra = ["logging.wandb=true"] if stem == "cyclegan_builtin" else []
        return tune("--space", f"search_spaces/{stem}.yaml", "--smoke-test", "--storage", str(storage), *extra,
                    "--address", shared_ray, env=env, timeout=300)

    # Both at once: two drivers on one Ray, as two users' searches would be. Their trials share its
    # CPUs; what overlaps is each driver's start (imports, data, reference statistics): ~15 s saved.
    with ThreadPoolExecutor(len(SMOKE_SPACES)) as pool:
        finished = dict(zip(SMOKE_SPACES, pool.map(search, SMOKE_SPACES)))
    out = SmokeExperiments()
    for stem, done in finished.items():
        assert done.returncode == 0, f"smoke search {stem} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        out[stem] = storage / f"{stem}-smoke"
        out.outputs[stem] = done.stdout
        out.errors[stem] = done.stderr
    return out


# --- A fourth family, defined here as a plugin would be ---------------------------------------------

# Registered at import, before collection: the tests that iterate the registry (the family contract,
# the trainable over every offline space) take it up as they take up the built-in families.
importlib.import_module("toy_family")   # tests/ is on sys.path: pytest puts a conftest's folder there
