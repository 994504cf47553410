"""analysis/: the loaders read real smoke experiments (numbers checked against the trials' own
result.json/params.json), plots and sample grids work on them, and both notebooks run top to bottom."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import matplotlib
import nbformat
import pytest
import torch

matplotlib.use("Agg")

from analysis import (NotAnExperiment, is_experiment_dir, load_experiment_dir, load_experiments,  # noqa: E402
                      load_study, param_importances)
from analysis import plots, samples  # noqa: E402
from analysis.checkpoints import load_checkpoint, sample  # noqa: E402

ANALYSIS = Path(__file__).resolve().parents[1] / "analysis"


def reported(trial_dir: Path) -> list[dict]:
    """What the trial reported, one dict per evaluation, as Ray wrote it."""
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def cyclegan(smoke_experiments):
    return load_experiment_dir(smoke_experiments["cyclegan_builtin"])


def test_trials_table_matches_what_trials_reported(cyclegan, smoke_experiments):
    exp_dir = smoke_experiments["cyclegan_builtin"]
    trial_dirs = sorted(p for p in exp_dir.iterdir() if (p / "result.json").is_file())
    assert sorted(cyclegan.trials["trial"]) == [p.name for p in trial_dirs] and len(trial_dirs) == 2
    for trial_dir in trial_dirs:
        row = cyclegan.trials.set_index("trial").loc[trial_dir.name]
        results = reported(trial_dir)
        best = min(results, key=lambda r: r["fid"])
        assert row["best_fid"] == pytest.approx(best["fid"]) and row["mifid"] == pytest.approx(best["mifid"])
        assert row["kid"] == pytest.approx(best["kid"]) and row["epoch"] == best["epoch"]
        assert row["status"] == ("completed" if results[-1]["epoch"] == cyclegan.cfg.train.epochs
                                 else "stopped early")
        assert row["epochs_trained"] == results[-1]["epoch"]
        params = json.loads((trial_dir / "params.json").read_text())
        assert {k: row[k] for k in cyclegan.searched} == pytest.approx(params)
        # The checkpoint column is the one saved at the best evaluation.
        state = torch.load(Path(row["checkpoint"]) / "state.pt", map_location="cpu", weights_only=True)
        assert state["epoch"] == best["epoch"] and row["trial_dir"] == str(trial_dir)
    assert list(cyclegan.trials["best_fid"]) == sorted(cyclegan.trials["best_fid"])   # best first


def test_history_has_every_evaluation(cyclegan, smoke_experiments):
    for trial, rows in cyclegan.history.groupby("trial"):
        results = reported(smoke_experiments["cyclegan_builtin"] / trial)
        assert list(rows["epoch"]) == [r["epoch"] for r in results]
        for column in ("fid", "mifid", "kid", "memorization_distance", "loss_g", "lr_g"):
            assert list(rows[column]) == pytest.approx([r[column] for r in results])
    assert not any(c.startswith("config/") or c == "hostname" for c in cyclegan.history.columns)


def test_importances_and_several_experiments(cyclegan, smoke_experiments):
    importances = param_importances(cyclegan)
    assert set(importances.index) == set(cyclegan.searched) and importances.sum() == pytest.approx(1.0)
    trials, history = load_experiments(smoke_experiments.values())
    assert set(trials["family"]) == {"cyclegan", "wgan_gp"} and len(trials) == 4
    assert set(history["experiment"]) == {"cyclegan_builtin-smoke", "wgan_gp_builtin-smoke"}
    assert trials["model.lr_g"].notna().all() and trials["model.lambda_cycle"].isna().sum() == 2


def test_not_an_experiment_is_one_clear_error(tmp_path):
    with pytest.raises(NotAnExperiment, match="not a paintsweep experiment directory"):
        load_experiment_dir(tmp_path)


def test_plots_draw_one_line_per_trial(cyclegan):
    ax = plots.plot_metric_curves(cyclegan.history)
    assert len(ax.lines) == len(cyclegan.trials)
    ax = plots.plot_asha(cyclegan.history, cyclegan.trials)
    stopped = cyclegan.trials["status"].str.startswith("stopped").sum()
    assert str(stopped) in ax.get_title()
    png = plots.figure_png(plots.show_image_rows(samples.top_trial_grids(cyclegan.trials, k=2)))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_optuna_draws_the_stored_study(cyclegan):
    """Optuna's own views of optuna.db: every one drawn, showing the trials' values and the searched keys."""
    study = load_study(cyclegan)
    figures = plots.optuna_figures(study, target_name="best fid")
    assert list(figures) == ["optimization history", "parallel coordinates", "hyperparameter importance (fANOVA)",
                             "slice: the objective against each searched value", "contour: pairs of searched values",
                             "timeline"]
    history = figures["optimization history"].axes[0]
    values = [t.value for t in sorted(study.trials, key=lambda t: t.number)]
    assert list(history.collections[0].get_offsets()[:, 1]) == pytest.approx(values)   # one point per trial
    assert sorted(values) == pytest.approx(sorted(cyclegan.trials["best_fid"]))     # = the leaderboard's best FIDs
    importance = figures["hyperparameter importance (fANOVA)"].axes[0]
    assert {label.get_text() for label in importance.get_yticklabels()} == set(cyclegan.searched)
    assert len(figures["slice: the objective against each searched value"].axes) >= len(cyclegan.searched)
    assert all(plots.figure_png(figure)[:8] == b"\x89PNG\r\n\x1a\n" for figure in figures.values())


def test_sample_grids_come_from_the_best_evaluation(cyclegan):
    grids = samples.top_trial_grids(cyclegan.trials, k=2)
    assert list(grids) == list(cyclegan.trials["trial"][:2])
    for images in grids.values():
        grid = images["samples/photo_to_monet"]
        # CycleGAN rows: input, translation, reconstruction of k 32-px photos, make_grid padding 2.
        assert grid.shape[0] == 3 * (32 + 2) + 2 and (grid.shape[1] - 2) % 34 == 0 and grid.std() > 1


def levels_apart(a: torch.Tensor, b: torch.Tensor) -> int:
    """The largest difference between two uint8 images, in levels of 255."""
    return int((a.int() - b.int()).abs().max())


def test_checkpoint_samples_are_the_generator_on_the_photos(cyclegan):
    loaded = load_checkpoint(cyclegan.trials["checkpoint"][0], progress=lambda message: None)
    photos = torch.stack([loaded.family.test_photos[i][0] for i in range(3)])
    # The same trained generator on the same photos, computed twice. Once, in the full suite under
    # load (2026-12-02), the two were not bitwise equal (the printed corners were; the cause was not
    # found: never in 106 repeats alone). A float's last bit rounding a pixel the other way moves
    # it one level; another generator or other photos are tens of levels apart.
    assert levels_apart(sample(loaded, 3, photos=photos), next(iter(loaded.family.generate(3, 3)))) <= 1
    a, b, c = sample(loaded, 4, seed=1), sample(loaded, 4, seed=1), sample(loaded, 4, seed=2)
    assert a.dtype == torch.uint8 and a.shape == (4, 3, 32, 32)
    assert levels_apart(a, b) <= 1 and levels_apart(a, c) > 10


def run_notebook(name: str, parameters: dict) -> nbformat.NotebookNode:
    """Execute analysis/<name> with `parameters` injected after its `parameters` cell (as papermill does)."""
    from nbclient import NotebookClient

    notebook = nbformat.read(ANALYSIS / name, as_version=4)
    index = next(i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", []))
    injected = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in parameters.items()))
    notebook.cells.insert(index + 1, injected)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(ANALYSIS)}}).execute()
    return notebook


@pytest.mark.slow
def test_notebooks_run_top_to_bottom(smoke_experiments):
    """(About 25 s: two Jupyter kernels start, and every cell of both notebooks runs.)"""
    overview = run_notebook("overview.ipynb", {"EXPERIMENT": str(smoke_experiments["cyclegan_builtin"])})
    compare = run_notebook("compare.ipynb", {"EXPERIMENTS": [str(p) for p in smoke_experiments.values()]})
    # Every plot and sample grid was drawn; overview: curves + ASHA, Optuna's six views, two sample figures.
    for notebook, figures in ((overview, 9), (compare, 4)):
        images = [o for cell in notebook.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
        assert len(images) == figures
    outputs = [o for cell in overview.cells for o in cell.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs)
    assert "cyclegan_builtin-smoke: cyclegan, 2 trials" in text
    # The answer is the first thing it shows (analysis.answer, as report.html opens): no confirmation
    # yet. (Imports may warn first, on stderr: tqdm's about ipywidgets.)
    shown = [o for o in outputs if o.get("name") != "stderr"]
    assert shown[0]["text"].startswith("Searched: 2 trials of cyclegan over model.")
    assert "\nConfirmation: not run yet" in shown[0]["text"]


def test_notebooks_are_committed_without_outputs():
    for path in ANALYSIS.glob("*.ipynb"):
        notebook = nbformat.read(path, as_version=4)
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert all(not cell.outputs and cell.execution_count is None for cell in code), path
        assert any("parameters" in cell.metadata.get("tags", []) for cell in code), path


def test_wandb_offline_run_per_trial_with_tensorboard_names(smoke_experiments):
    """The CycleGAN smoke search ran with logging.wandb=true, no API key and WANDB_MODE unset:
    each trial left one offline W&B run holding the same scalar tags as its TensorBoard events,
    and the sample grids of every evaluation."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trial_dirs = [p for p in smoke_experiments["cyclegan_builtin"].iterdir() if (p / "result.json").is_file()]
    for trial_dir in trial_dirs:
        runs = list((trial_dir / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, f"{trial_dir.name}: {runs}"
        record = next(runs[0].glob("run-*.wandb")).read_bytes()
        assert b"cyclegan_builtin-smoke" in record   # the group: the experiment's name
        tags = EventAccumulator(str(trial_dir)).Reload().Tags()["scalars"]
        assert {"metrics/fid", "metrics/mifid", "losses/loss_g"} <= set(tags)
        # KNOWN GAP: a trial ASHA stops can be ended by Ray before W&B writes its run file, so the
        # scalar names are checked on trials that ran to the end (their run is finished before the
        # last report).
        if reported(trial_dir)[-1]["epoch"] == 2:
            for tag in tags:
                assert tag.encode() in record, f"{tag} is in TensorBoard but not in the W&B run"
        evaluations = len(reported(trial_dir))
        images = sorted(p.name for p in (runs[0] / "files" / "media" / "images" / "samples").iterdir())
        assert len(images) == 2 * evaluations   # photo_to_monet and monet_to_photo at every evaluation


def test_relative_experiment_paths_work(smoke_experiments, monkeypatch):
    # Ray reads a relative path as a URI with an empty scheme; users type runs/quickstart.
    exp = smoke_experiments["cyclegan_builtin"]
    monkeypatch.chdir(exp.parent)
    assert is_experiment_dir(exp.name)
    assert len(load_experiment_dir(exp.name).trials) == 2


# --- The study in optuna-dashboard (the README's command) ------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict:
    return json.loads(urllib.request.urlopen(url, timeout=10).read())


def test_optuna_dashboard_serves_the_study_over_http(smoke_experiments, tmp_path):
    """`optuna-dashboard sqlite:///runs/<name>/optuna.db` on loopback: the trials it returns over
    its JSON API are the study's."""
    import optuna

    experiment = smoke_experiments["cyclegan_builtin"]
    db = tmp_path / "optuna.db"
    shutil.copy(experiment / "optuna.db", db)   # the dashboard may write (notes, caches): not the shared one
    port = _free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "optuna-dashboard"), f"sqlite:///{db}", "--host", "127.0.0.1",
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
