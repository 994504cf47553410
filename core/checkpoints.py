"""Trial checkpoints: how they are written, checked, chosen and kept on record.

A checkpoint is a directory `checkpoint_NNNNNN/` in the trial's storage directory holding one file,
`state.pt`: everything needed to resume exactly (the family's networks, optimizers and schedules,
epoch, step, running bests, RNG state) plus the trial's full config and the feature extractor its
scores came from, so that export, the gallery and the notebooks rebuild the model from it alone.

    with staged_checkpoint(state, trial="3f2a1b7c") as directory:   # a temp dir, removed on any exit
        tune.report(metrics, checkpoint=Checkpoint.from_directory(directory))   # Ray copies it to storage
    problem = checkpoint_problem("runs/quickstart/wgan_gp_3f2a1b7c/checkpoint_000004")  # None = intact
    state = load_state(path)                                        # one clear CheckpointError if not

Every place that chooses a checkpoint (the trial's restore, the post-search sweep, the leaderboard,
export.py, the gallery, the analysis loaders) asks `checkpoint_problem`, so they agree on what is usable.

Ray keeps a trial's best `search.keep_checkpoints` by the search metric plus its latest, and deletes the
others. Its experiment snapshot names each trial's latest checkpoint; a driver killed after a newer
evaluation displaced (deleted) that checkpoint but before the next snapshot leaves a record naming a
checkpoint that is gone, and Ray's own restore then fails on every retry.
`core.internals.repair_checkpoint_records` points such records at the trial's newest intact checkpoint
before a resume (it edits Ray's snapshot, so it lives with the other uses of Ray's internals).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import uuid
import zipfile
from pathlib import Path

import torch

from core.errors import CheckpointError

CHECKPOINT_FILE = "state.pt"
REPORT_FILE = "report.json"           # beside state.pt: the result the checkpoint was reported with
CHECKPOINT_PREFIX = "checkpoint_"
STAGING_PREFIX = "paintsweep-ckpt-"   # + trial id: temp directories a trial writes checkpoints into


# --- Writing ----------------------------------------------------------------------------------


@contextlib.contextmanager
def staged_checkpoint(state: dict, trial: str, report: dict | None = None):
    """Write `state` (and the `report` it goes with, as JSON) as a checkpoint directory in the
    system temp directory and yield its path; the directory is removed when the block ends, however
    it ends (Ray's report copies it to storage and leaves the original, which is ours to delete)."""
    directory = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{trial}-"))
    try:
        torch.save(state, directory / CHECKPOINT_FILE)
        if report is not None:
            (directory / REPORT_FILE).write_text(json.dumps(report, default=str))
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def remove_staging_leftovers(trial_ids, temp_dir: str | None = None) -> int:
    """Staging directories that a trial process killed outright (SIGKILL, a lost node) could not
    remove: the driver deletes those of its own trials on this machine after a search. Returns
    how many it removed."""
    root = Path(temp_dir or tempfile.gettempdir())
    removed = 0
    for trial_id in trial_ids:
        for leftover in root.glob(f"{STAGING_PREFIX}{trial_id}-*"):
            shutil.rmtree(leftover, ignore_errors=True)
            removed += 1
    return removed


def atomic_torch_save(obj, path: Path) -> None:
    """torch.save to a temporary file in the same directory, then os.replace: readers (other trials,
    a second driver) see either no file or the complete file, never a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")  # unique per writer, same filesystem
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --- Checking and reading ----------------------------------------------------------------------


def _local_fs():
    import pyarrow.fs

    return pyarrow.fs.LocalFileSystem()


def checkpoint_problem(directory: str | os.PathLike, fs=None) -> str | None:
    """Why a checkpoint directory cannot be used ("state.pt is missing", "state.pt is truncated"),
    or None when it is intact. Cheap: a torch file is a zip whose central directory comes last, so
    a file cut short cannot be opened, and a damaged member fails its CRC, which is read without
    unpickling anything. `fs` is a pyarrow filesystem (default: the local one)."""
    fs = fs or _local_fs()
    path = f"{os.fspath(directory)}/{CHECKPOINT_FILE}"
    try:
        with fs.open_input_file(path) as f, zipfile.ZipFile(f) as archive:
            damaged = archive.testzip()
    except FileNotFoundError:
        return f"{CHECKPOINT_FILE} is missing"
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as e:   # pyarrow: ArrowInvalid is a ValueError
        if "not found" in str(e).lower() or "no such file" in str(e).lower():
            return f"{CHECKPOINT_FILE} is missing"
        return f"{CHECKPOINT_FILE} is truncated (not a complete torch file)"
    if damaged is not None:
        return f"{CHECKPOINT_FILE} is damaged ({damaged} fails its checksum)"
    return None


def load_state(directory: str | os.PathLike, fs=None) -> dict:
    """A checkpoint's state dict (tensors on the CPU, `weights_only`), or one CheckpointError."""
    problem = checkpoint_problem(directory, fs)
    if problem is not None:
        raise CheckpointError(f"Checkpoint {directory} cannot be used: {problem}. Use another checkpoint of the "
                              f"trial (its directory lists them), or the experiment directory to pick the best "
                              f"intact one.")
    path = f"{os.fspath(directory)}/{CHECKPOINT_FILE}"
    try:
        if fs is None:
            return torch.load(path, map_location="cpu", weights_only=True)
        with fs.open_input_file(path) as f:   # remote storage: read in place, no local copy
            return torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
    except Exception as e:   # a file that passes the zip check but not torch's unpickler
        raise CheckpointError(f"Checkpoint {directory} cannot be loaded ({type(e).__name__}: {e}). Use another "
                              f"checkpoint of the trial.") from None


def trial_checkpoints(trial_dir: str | os.PathLike, fs=None) -> list[str]:
    """The checkpoint directories in a trial directory, oldest first (Ray numbers them in order)."""
    import pyarrow.fs

    fs = fs or _local_fs()
    found = fs.get_file_info(pyarrow.fs.FileSelector(os.fspath(trial_dir), allow_not_found=True))
    return sorted(info.path for info in found if info.type == pyarrow.fs.FileType.Directory
                  and Path(info.path).name.startswith(CHECKPOINT_PREFIX))


def newest_intact(trial_dir: str | os.PathLike, fs=None, report=None) -> str | None:
    """The trial's newest checkpoint that `checkpoint_problem` accepts; `report(path, problem)` hears
    about each one passed over."""
    for path in reversed(trial_checkpoints(trial_dir, fs)):
        problem = checkpoint_problem(path, fs)
        if problem is None:
            return path
        if report is not None:
            report(path, problem)
    return None


def backfill_reports(experiment_path: str, fs=None, progress=print) -> int:
    """Before a resume: put back into each trial's result.json the reports that a killed driver had
    not yet synced to storage although their checkpoints are there (the worker writes checkpoints
    to storage itself; the driver's copy of result.json is synced every so often). The rows come
    from each checkpoint's report.json. Returns how many rows were restored."""
    import pyarrow.fs

    fs = fs or _local_fs()
    restored = 0
    found = fs.get_file_info(pyarrow.fs.FileSelector(experiment_path, allow_not_found=True))
    for trial_dir in sorted(i.path for i in found if i.type == pyarrow.fs.FileType.Directory):
        kept = [p for p in trial_checkpoints(trial_dir, fs) if checkpoint_problem(p, fs) is None]
        if not kept:
            continue
        results = f"{trial_dir}/result.json"
        try:
            with fs.open_input_stream(results) as f:
                text = f.readall().decode()
        except (FileNotFoundError, OSError):
            text = ""
        lines, recorded = [], set()
        # Ray's own fields of a row that report.json (the trial's report) lacks: the trial id (the
        # directory is <family>_<trial id>) and the time (the report file's), so that the restored
        # rows sort and group like the others.
        trial_id = Path(trial_dir).name.split("_", 1)[-1]
        for line in text.splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:   # blank, or the last line of a driver killed mid-write
                continue
            recorded.add(row.get("checkpoint_dir_name"))
            trial_id = row.get("trial_id", trial_id)
            lines.append(line)
        missing = []
        for path in kept:
            if Path(path).name in recorded:
                continue
            report = f"{path}/{REPORT_FILE}"
            try:
                with fs.open_input_stream(report) as f:
                    row = json.loads(f.readall().decode())
                written = fs.get_file_info(report).mtime
            except (FileNotFoundError, OSError, json.JSONDecodeError):
                continue
            missing.append({"trial_id": trial_id, "timestamp": int(written.timestamp()) if written else None}
                           | row | {"checkpoint_dir_name": Path(path).name})
        if missing:
            with fs.open_output_stream(results) as f:
                f.write(("\n".join([*lines, *(json.dumps(row) for row in missing)]) + "\n").encode())
            restored += len(missing)
            progress(f"resume: {Path(trial_dir).name}: restored {len(missing)} report(s) of kept checkpoints "
                     f"that the interrupted driver had not saved ({', '.join(Path(r['checkpoint_dir_name']).name for r in missing)})")
    return restored


def drop_reports_after(trial_dir: str, epoch: int, fs=None) -> int:
    """Before a trial resumes from its checkpoint of `epoch`: remove the rows of later epochs from its
    result.json and progress.csv. It trains those epochs again and reports them anew; kept, they
    would stand twice in its records (curves, epoch counts, the leaderboard's epochs trained).
    Returns how many rows were dropped."""
    import csv

    fs = fs or _local_fs()
    dropped = 0
    path = f"{trial_dir}/result.json"
    try:
        with fs.open_input_stream(path) as f:
            lines = f.readall().decode().splitlines()
    except (FileNotFoundError, OSError):
        lines = []
    kept = []
    for line in lines:
        try:
            later = json.loads(line).get("epoch", 0) > epoch
        except json.JSONDecodeError:   # the last line of a driver killed mid-write
            later = True
        dropped += later
        if not later:
            kept.append(line)
    if len(kept) < len(lines):
        _replace_text(fs, path, "".join(f"{line}\n" for line in kept))
    path = f"{trial_dir}/progress.csv"
    try:
        with fs.open_input_stream(path) as f:
            rows = list(csv.reader(io.StringIO(f.readall().decode())))
    except (FileNotFoundError, OSError):
        rows = []
    if rows and "epoch" in rows[0]:
        column = rows[0].index("epoch")
        body = [r for r in rows[1:] if len(r) > column and r[column] and float(r[column]) <= epoch]
        if len(body) < len(rows) - 1:
            out = io.StringIO()
            csv.writer(out, lineterminator="\n").writerows([rows[0], *body])
            _replace_text(fs, path, out.getvalue())
    return dropped


def _replace_text(fs, path: str, text: str) -> None:
    partial = f"{path}.partial"
    with fs.open_output_stream(partial) as f:
        f.write(text.encode())
    fs.move(partial, path)

