"""core.driver.TrialResultFiles, the driver's writer of each trial's result.json, progress.csv and
params.json/params.pkl: the files are Ray's logger's, and a trial restarting within a run keeps
this run's reports, where Ray's loggers replaced them with storage's older copy.

The trial here is a stand-in holding the five things the callback reads of Ray's Trial (its local
directory, its storage directory and file system, its config, whether it restarts from a
checkpoint); that Ray's Trial has them is checked at the end, against Ray itself."""

import csv
import inspect
import json
import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace

import pyarrow.fs

from core.driver import TrialResultFiles


class StandInTrial(SimpleNamespace):
    """What TrialResultFiles reads of ray.tune.experiment.Trial (hashable: the callback keys by trial)."""

    def __init__(self, root: Path, config: dict):
        super().__init__(local_path=str(root / "driver_staging" / "t1"), config=config, checkpoint=None,
                         storage=SimpleNamespace(trial_fs_path=str(root / "storage" / "t1"),
                                                 storage_filesystem=pyarrow.fs.LocalFileSystem()))

    def init_local_path(self):
        Path(self.local_path).mkdir(parents=True, exist_ok=True)

    __hash__ = object.__hash__
    __eq__ = object.__eq__


def rows(trial, name="result.json"):
    text = Path(trial.local_path, name).read_text()
    return [json.loads(line) for line in text.splitlines()] if name == "result.json" else list(csv.DictReader(text.splitlines()))


def sync(trial):
    """What Ray's driver does every so often: the local files copied over storage's."""
    shutil.copytree(trial.local_path, trial.storage.trial_fs_path, dirs_exist_ok=True)


def test_the_files_are_ray_s_a_json_line_and_a_flattened_csv_row_per_report_and_the_values(tmp_path):
    trial, files = StandInTrial(tmp_path, {"model.lr_g": 2e-4, "train.seed": 0}), TrialResultFiles()
    files.log_trial_start(trial)
    for epoch in (1, 2):
        files.log_trial_result(epoch, trial, {"epoch": epoch, "fid": 10.0 / epoch, "config": {"model.lr_g": 2e-4},
                                              "losses": {"g": 0.5, "d": 0.25}})
    files.log_trial_end(trial)
    assert rows(trial) == [{"epoch": e, "fid": 10.0 / e, "config": {"model.lr_g": 2e-4}, "losses": {"g": 0.5, "d": 0.25}}
                           for e in (1, 2)]
    assert rows(trial, "progress.csv") == [{"epoch": str(e), "fid": str(10.0 / e), "losses/g": "0.5", "losses/d": "0.25"}
                                           for e in (1, 2)]
    assert json.loads(Path(trial.local_path, "params.json").read_text()) == trial.config
    assert pickle.loads(Path(trial.local_path, "params.pkl").read_bytes()) == trial.config
    assert files.open_files == {} and files.csv_writers == {}


def test_a_trial_restarting_within_the_run_keeps_this_run_s_reports_not_storage_s_older_copy(tmp_path):
    """PBT's exploit or a retry: the trial restarts from a checkpoint while storage holds the files
    of the last sync (epoch 1). Ray's loggers copied that back over the local files, and the report
    of epoch 2 was lost."""
    trial, files = StandInTrial(tmp_path, {"model.lr_g": 2e-4}), TrialResultFiles()
    files.log_trial_start(trial)
    files.log_trial_result(1, trial, {"epoch": 1, "fid": 5.0})
    sync(trial)
    files.log_trial_result(2, trial, {"epoch": 2, "fid": 4.0})
    files.log_trial_end(trial)
    trial.checkpoint, trial.config = "checkpoint_000001", {"model.lr_g": 3e-4}   # restarts with new values (PBT)
    files.log_trial_start(trial)
    files.log_trial_result(3, trial, {"epoch": 3, "fid": 3.0})
    files.log_trial_end(trial)
    assert [r["epoch"] for r in rows(trial)] == [1, 2, 3]
    assert [r["epoch"] for r in rows(trial, "progress.csv")] == ["1", "2", "3"]   # one header
    assert json.loads(Path(trial.local_path, "params.json").read_text()) == {"model.lr_g": 3e-4}


def test_a_resumed_run_continues_storage_s_files_and_a_new_trial_does_not_read_them(tmp_path):
    """A resume: no local files (a new driver), storage holds epochs 1-2, the trial restarts from its
    checkpoint and appends. A trial that starts without a checkpoint never takes storage's files."""
    first, files = StandInTrial(tmp_path, {}), TrialResultFiles()
    files.log_trial_start(first)
    for epoch in (1, 2):
        files.log_trial_result(epoch, first, {"epoch": epoch, "fid": 1.0})
    files.log_trial_end(first)
    sync(first)
    shutil.rmtree(tmp_path / "driver_staging")

    resumed = StandInTrial(tmp_path, {})
    resumed.checkpoint = "checkpoint_000001"
    files = TrialResultFiles()
    files.log_trial_start(resumed)
    files.log_trial_result(3, resumed, {"epoch": 3, "fid": 1.0})
    files.log_trial_end(resumed)
    assert [r["epoch"] for r in rows(resumed)] == [1, 2, 3]
    assert [r["epoch"] for r in rows(resumed, "progress.csv")] == ["1", "2", "3"]

    shutil.rmtree(tmp_path / "driver_staging")
    fresh = StandInTrial(tmp_path, {})
    files.log_trial_start(fresh)
    files.log_trial_result(1, fresh, {"epoch": 1, "fid": 1.0})
    files.log_trial_end(fresh)
    assert [r["epoch"] for r in rows(fresh)] == [1]


def test_storage_that_cannot_be_read_is_a_warning_naming_the_file_and_the_trial_goes_on(tmp_path, caplog):
    """A restart whose storage copy cannot be read (here a file where the trial's directory should
    be; on S3, a network error): one warning naming the file and the error, and the reports go on."""
    trial, files = StandInTrial(tmp_path, {}), TrialResultFiles()
    (tmp_path / "storage").mkdir()
    (tmp_path / "storage" / "t1").write_text("not a directory")
    trial.checkpoint = "checkpoint_000001"
    with caplog.at_level("WARNING", logger="core.driver"):
        files.log_trial_start(trial)
    files.log_trial_result(2, trial, {"epoch": 2, "fid": 1.0})
    files.log_trial_end(trial)
    assert [r["epoch"] for r in rows(trial)] == [2]
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 2 and all("could not be read from storage" in w and "Not a directory" in w for w in warned)
    assert {w.split(" could")[0].rsplit("/", 1)[-1] for w in warned} == {"result.json", "progress.csv"}


def test_ray_s_trial_has_what_the_callback_reads():
    from ray.train._internal.storage import StorageContext
    from ray.tune.experiment import Trial
    from ray.tune.logger import LoggerCallback

    for name in ("local_path", "checkpoint", "config"):
        assert isinstance(inspect.getattr_static(Trial, name, None), property) or name in inspect.signature(Trial).parameters
    assert callable(Trial.init_local_path)
    assert {"trial_fs_path", "storage_filesystem"} <= {n for n, _ in inspect.getmembers(StorageContext)} | set(
        inspect.signature(StorageContext).parameters)
    # The hooks Ray calls on a LoggerCallback are the ones TrialResultFiles implements.
    for hook in ("log_trial_start", "log_trial_result", "log_trial_end"):
        assert hook in vars(LoggerCallback) and hook in vars(TrialResultFiles)
