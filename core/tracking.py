"""Experiment tracking for one trial: TensorBoard and Weights & Biases, under the same names.

    with TrialLoggers(cfg, session, trial_tree, searched) as loggers:   # closed on every exit path
        loggers.log(family, result, epoch)
        ...
        loggers.close(final_result)    # idempotent: the end of the trial, however it ended

Scalars are `metrics/fid`, `losses/loss_g`, `schedule/lr_g`, `train/images_per_s` (`scalar_tag`),
image grids `samples/<name>`, x = epoch.

TensorBoard: one run per trial in the trial directory (`tensorboard --logdir runs/<exp>` lists every
trial). Each run also carries the HParams plugin's records: the trial's searched values and the
metrics to compare them by (`HPARAM_METRICS`), so the HParams tab shows every trial of a search as a
table and as parallel coordinates; the end record says how the trial ended.

W&B: one run per trial, named like the trial directory, grouped by experiment, with the trial's full
config. Its run id is derived from the experiment and trial (`wandb_run_id`) and it is opened with
`resume="allow"`, so a trial retried after a crash or continued by `--resume` keeps logging into the
same run. Offline unless an API key is configured (logging.wandb_mode overrides); offline runs are
written under the trial directory (`<trial>/wandb/offline-run-*`); `wandb sync` uploads them later.
When the run ends, W&B's process-wide leftovers go too (its service process and temp directories:
`_wandb_release`), because Ray ends a trial's process without the exit hooks W&B relies on.
"""

from __future__ import annotations

import math
import os
import re
import shutil

from core import metrics as M
from core.config import ExperimentConfig
from core.internals import wandb_staging_dirs
from core.metric_registry import METRICS

# What the HParams table compares trials by (TensorBoard shows each tag's latest value): the running
# best of the registry's HParams metrics, the latest FID and how far the trial got.
HPARAM_METRICS = (*(f"metrics/best_{m.name}" for m in METRICS.values() if m.in_hparams), "metrics/fid", "train/epoch")


class TrialLoggers:
    def __init__(self, cfg: ExperimentConfig, session, config_tree: dict, searched: dict | None = None):
        self.tensorboard = self.wandb = None
        if cfg.logging.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(log_dir=str(session.trial_dir), flush_secs=10)
            self._hparams_start(searched or {})
        if cfg.logging.wandb:
            self.wandb = _wandb_run(cfg, session, config_tree)

    def __enter__(self) -> "TrialLoggers":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        # An exception here is the trial's own failure or Ray ending it (a scheduler's stop raises
        # inside report): flush what was logged, before the process may go away.
        self.close({"trial_status": "stopped" if kind is not None else "ok"})

    def log(self, family, result: dict, epoch: int) -> None:
        scalars = {scalar_tag(k): v for k, v in result.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        grids = {f"samples/{name}": grid.clamp(0, 1) for name, grid in family.image_grids().items()}  # (3, H, W)
        if self.tensorboard is not None:
            for tag, value in scalars.items():
                self.tensorboard.add_scalar(tag, value, epoch)
            self.tensorboard.add_text("extractor", str(result["extractor"]), epoch)
            for tag, grid in grids.items():
                self.tensorboard.add_image(tag, grid, epoch)
            self.tensorboard.flush()
        if self.wandb is not None:
            import wandb

            self.wandb.summary["extractor"] = str(result["extractor"])
            images = {tag: wandb.Image((grid * 255).round().byte().permute(1, 2, 0).numpy())   # (H, W, 3)
                      for tag, grid in grids.items()}
            self.wandb.log(scalars | images, step=epoch)

    def close(self, result: dict) -> None:
        """End of the trial, however it ended: the records say how. Idempotent."""
        status = str(result.get("trial_status", "ok"))
        if self.tensorboard is not None:
            self._hparams_end(status)
            self.tensorboard.close()
        if self.wandb is not None:
            run, self.wandb = self.wandb, None
            try:
                run.summary["trial_status"] = status
                run.finish()
            finally:
                _wandb_release()
        self.tensorboard = self.wandb = None

    # --- TensorBoard's HParams records ---------------------------------------------------------

    def _hparams_start(self, searched: dict) -> None:
        """The experiment and session-start records (searched values, the metrics to show), written
        when the trial starts so running trials are listed too."""
        from torch.utils.tensorboard.summary import hparams

        values = {key: _hparam_value(value) for key, value in sorted(searched.items())}
        experiment, start, _ = hparams(values, {tag: 0.0 for tag in HPARAM_METRICS})
        self.tensorboard.file_writer.add_summary(experiment)
        self.tensorboard.file_writer.add_summary(start)

    def _hparams_end(self, status: str) -> None:
        from tensorboard.plugins.hparams import api_pb2
        from tensorboard.plugins.hparams.metadata import SESSION_END_INFO_TAG, create_summary_metadata
        from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionEndInfo
        from tensorboard.compat.proto.summary_pb2 import Summary

        code = api_pb2.Status.STATUS_SUCCESS if status in ("ok", "completed") else api_pb2.Status.STATUS_FAILURE
        content = HParamsPluginData(session_end_info=SessionEndInfo(status=code))
        metadata = create_summary_metadata(content)
        self.tensorboard.file_writer.add_summary(Summary(value=[Summary.Value(tag=SESSION_END_INFO_TAG,
                                                                              metadata=metadata)]))


def _hparam_value(value):
    """HParams takes numbers, strings and booleans: anything else (a [0.5, 0.999] pair) as text."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def wandb_run_id(experiment: str, trial_name: str) -> str:
    """A W&B run id that is the same for every attempt of one trial (W&B ids may not hold / \\ # ? % :)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", f"{experiment}-{trial_name}")[:128]


def _wandb_run(cfg: ExperimentConfig, session, config_tree: dict):
    import wandb

    for path in wandb_staging_dirs():   # removed when the previous trial in this process ended
        os.makedirs(path, exist_ok=True)
    # Online only with a key: without one (or without network) online mode blocks for ~100 s.
    mode = cfg.logging.wandb_mode or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    settings = wandb.Settings(console="off",        # Ray already captures the trial's output
                              x_disable_stats=True,  # no CPU/GPU sampling thread per trial
                              init_timeout=30, silent=True,
                              # Ray may end a trial's process right after a report (ASHA stops
                              # it): write the offline run file every second, not every 15 s.
                              x_transaction_log_flush_interval=1.0)
    # reinit: with Ray's reuse_actors one process runs several trials, one run each.
    return wandb.init(project=cfg.logging.wandb_project, group=cfg.name, name=session.trial_name,
                      id=wandb_run_id(cfg.name, session.trial_name), resume="allow",
                      job_type=cfg.family, config=config_tree, dir=str(session.trial_dir), mode=mode,
                      reinit="finish_previous", settings=settings)


def _wandb_release() -> None:
    """Remove what W&B keeps in the temp directory for the process, not the run, once the trial's
    run has finished. W&B removes these only in exit hooks (atexit), while Ray ends a trial's
    worker process on its own terms (a reused worker lives on after the trial; when the search
    ends it may be ray.kill-ed), often before those hooks run, and SIGKILLs the processes the
    worker started (RAY_kill_child_processes_on_worker_exit).

    - wandb-core, the service process every run of a process talks to, and its socket directory
      (TMPDIR/wandb-<pid>-<pid>-<n>): wandb.teardown() stops it, which removes the directory. The
      next trial in this process (Ray's reuse_actors) starts a new one (about a second).
    - The staging directories W&B creates when it is imported (TMPDIR/tmp*wandb-media, where
      wandb.Image writes before a log copies the file into the run, and tmp*wandb-artifacts)."""
    import wandb

    try:
        wandb.teardown()
    finally:
        for path in wandb_staging_dirs():
            shutil.rmtree(path, ignore_errors=True)


def release_wandb_in_driver() -> None:
    """For a driver (tune.py, confirm.py), before its Tuner runs: import wandb now and remove the
    staging directories the import makes. The driver never logs to W&B (its trials do, each in
    its own process), but Ray Tune imports wandb in it (Tuner.fit counts the callbacks by class
    for its telemetry), and those directories are removed only by exit hooks: a driver killed
    outright (SIGKILL, the OOM killer) left two in TMPDIR per kill. A W&B run started later in
    this process makes them again (`_wandb_run`)."""
    try:
        import wandb  # noqa: F401
    except ImportError:   # not installed: Ray does not import it either
        return
    for path in wandb_staging_dirs():
        shutil.rmtree(path, ignore_errors=True)


def scalar_tag(key: str) -> str:
    if key in METRICS or key in (M.KID_STD, M.MEMORIZATION, M.DIVERSITY) or key.startswith("best_"):
        return f"metrics/{key}"
    if key.startswith("loss"):
        return f"losses/{key}"
    if key.startswith("lr") or key == "beta":
        return f"schedule/{key}"
    return f"train/{key}"
