"""THE Ray Tune trainable: build -> resume -> train -> evaluate and report.

One function trains any registered model family. Ray Tune calls `tune_trainable(config)` with the
trial's sampled values (dotted keys such as `model.lr_g`); everything else about the experiment
(the full config, where the prepared data and the reference statistics are) is bound once by the
driver with `tune.with_parameters`.

The same loop also runs without Ray (`run_trial(..., session=LocalSession(dir))`): the throughput
benchmark compares the two, and the tests use it to check exact resume at tiny sizes.

What a trial reports at each evaluation (every `train.eval_every` epochs):
    epoch, fid, kid, kid_std, mifid, memorization_distance, best_fid / best_mifid / best_kid
    (running minima: OptunaSearch only sees the last report, and GAN FID jumps around),
    best_epoch, the epoch-mean losses, learning rates / beta, images_per_s, eval_seconds,
    extractor (which network produced the features), and trial_status ("ok" or why it stopped).
Each evaluation also saves a checkpoint (everything needed to resume exactly) and TensorBoard
scalars plus image grids in the trial directory.
"""

from __future__ import annotations

import math
import os
import random
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from core import metrics as M
from core.config import ExperimentConfig, apply_dotted, build_config
from core.data import load_prepared
from core.models.base import get_family

CHECKPOINT_FILE = "state.pt"
TRACKED_METRICS = (M.FID, M.MIFID, M.KID)  # each gets a running best_<name>


# --- Where results go: Ray Tune or a local directory ---------------------------------------------


class TuneSession:
    """Reports through `ray.tune` (the `ray.train.*` twins are errors inside Tune)."""

    def __init__(self):
        from ray import tune

        self._tune = tune
        self.trial_dir = Path(tune.get_context().get_trial_dir())  # synced to storage by Ray
        self.trial_name = tune.get_context().get_trial_name()

    def latest_checkpoint(self) -> Path | None:
        """A local copy of the newest checkpoint that holds a state file.

        Ray registers a checkpoint only after copying it to storage completely (the report that
        names it is sent after the copy), so Ray's latest is normally whole. Should it lack the
        state file anyway (a storage glitch, a hand-edited experiment), the older checkpoints kept
        in the trial's storage directory are tried, newest first; with none, training starts over."""
        checkpoint = self._tune.get_checkpoint()
        if checkpoint is None:
            return None
        storage = self._tune.get_context().get_storage()
        fs = storage.storage_filesystem
        import pyarrow.fs

        found = fs.get_file_info(pyarrow.fs.FileSelector(storage.trial_fs_path, allow_not_found=True))
        older = sorted((info.path for info in found if info.type == pyarrow.fs.FileType.Directory
                        and Path(info.path).name.startswith("checkpoint_") and info.path != checkpoint.path),
                       reverse=True)
        for path in [checkpoint.path, *older]:
            if not state_file_is_complete(fs, f"{path}/{CHECKPOINT_FILE}"):
                print(f"[{self.trial_name}] checkpoint {path} has no complete {CHECKPOINT_FILE}; "
                      f"trying an older one", flush=True)
                continue
            # A local copy: Ray may delete/replace the original while we train.
            local = Path(tempfile.mkdtemp(prefix="paintsweep-restore-")) / Path(path).name
            self._tune.Checkpoint(path, filesystem=fs).to_directory(str(local))
            return local
        print(f"[{self.trial_name}] no usable checkpoint found; the trial starts from scratch", flush=True)
        return None

    def report(self, result: dict, checkpoint_dir: Path | None) -> None:
        checkpoint = self._tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        self._tune.report(result, checkpoint=checkpoint)


def state_file_is_complete(fs, path: str) -> bool:
    """Whether a checkpoint's state file exists and was written to the end. A torch file is a zip
    whose central directory comes last, so a copy cut off midway cannot be opened as a zip: a
    cheap check (it reads the end, not the tensors). `fs` is a pyarrow filesystem."""
    import zipfile

    try:
        with fs.open_input_file(path) as f, zipfile.ZipFile(f):
            return True
    except (OSError, zipfile.BadZipFile):
        return False


class LocalSession:
    """The same contract without Ray: checkpoints in `root/checkpoint_NNNNNN`, reports in a list."""

    def __init__(self, root: str | os.PathLike, trial_name: str = "local"):
        self.trial_dir = Path(root)
        self.trial_dir.mkdir(parents=True, exist_ok=True)
        self.trial_name = trial_name
        self.results: list[dict] = []

    def latest_checkpoint(self) -> Path | None:
        done = sorted(p for p in self.trial_dir.glob("checkpoint_*") if (p / CHECKPOINT_FILE).is_file())
        return done[-1] if done else None

    def report(self, result: dict, checkpoint_dir: Path | None) -> None:
        self.results.append(dict(result))
        if checkpoint_dir is not None:
            # Named by epoch (a resumed session continues the numbering); the rename is atomic,
            # so a checkpoint directory is either complete or absent.
            os.replace(checkpoint_dir, self.trial_dir / f"checkpoint_{result['epoch']:06d}")


# --- The trainable ------------------------------------------------------------------------------


def tune_trainable(config: dict, *, experiment: dict, prepared_root: str, reference_path: str,
                   shared=None) -> None:
    """Ray Tune function trainable (bound with `tune.with_parameters` by core.search). `shared`
    (core.cluster.SharedAssets, remote storage only) fetches the data and reference statistics
    on a node that lacks the driver's files."""
    if shared is not None:
        cache = build_config(experiment, source="trial config").cache_path
        prepared_root, reference_path = shared.localize(cache)
    run_trial(config, experiment=experiment, prepared_root=prepared_root,
              reference_path=reference_path, session=TuneSession())


def run_trial(searched: dict[str, Any], *, experiment: dict, prepared_root: str | os.PathLike,
              reference_path: str | os.PathLike, session, max_epochs: int | None = None) -> dict:
    """Train one trial to the end (or to `max_epochs`, for tests). Returns the last result."""

    # Build.
    cfg: ExperimentConfig = build_config(apply_dotted(experiment, searched), source="trial config")
    device = _pick_device(cfg.train.device)
    threads = cfg.train.threads or max(1, int(cfg.search.cpus_per_trial))
    torch.set_num_threads(threads)
    threadpool_limits(limits=threads)  # numpy's BLAS too (FID): oversubscribed cores run it 7x slower
    _seed_everything(cfg.train.seed)
    data = load_prepared(prepared_root)
    reference = M.load_reference(reference_path)
    family = get_family(cfg.family)(cfg, data, device)
    loggers = TrialLoggers(cfg, session, apply_dotted(experiment, searched))

    # Resume. Everything a checkpoint holds is restored, so training continues exactly.
    start_epoch, step = 0, 0
    best = {f"best_{name}": math.inf for name in TRACKED_METRICS} | {"best_epoch": -1}
    restored = session.latest_checkpoint()
    if restored is not None:
        state = torch.load(restored / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
        family.load_state_dict(state["family"])
        family.set_hparams(cfg.model)  # this run's values win over those saved with the optimizers
        start_epoch, step, best = state["epoch"], state["step"], state["best"]
        _set_rng_state(state["rng"])
        _log(session, f"resumed from {restored.name} at epoch {start_epoch}")

    # Train.
    epochs = cfg.train.epochs if max_epochs is None else min(cfg.train.epochs, max_epochs)
    result: dict = {}
    running = defaultdict(float)   # loss sums since the last evaluation
    n_steps, train_seconds, n_images = 0, 0.0, 0
    for epoch in range(start_epoch, epochs):
        loader = family.make_loader(_epoch_generator(cfg.train.seed, epoch))
        tick = time.perf_counter()
        for i, batch in enumerate(loader):
            if cfg.train.iters_per_epoch is not None and i >= cfg.train.iters_per_epoch:
                break
            losses = family.train_step(batch)
            step += 1
            bad = [f"{k}={v}" for k, v in losses.items() if not math.isfinite(v)]
            if bad:
                return _end_diverged(session, loggers, f"{', '.join(bad)} at epoch {epoch + 1} iteration {i + 1}",
                                     epoch, best)
            for k, v in losses.items():
                running[k] += v
            n_steps += 1
            n_images += _batch_size(batch)
        train_seconds += time.perf_counter() - tick
        # Normalization layers can keep losses finite while weights overflow: check those too.
        bad = [name for name, module in family.modules().items()
               if not all(torch.isfinite(p).all() for p in module.parameters())]
        if bad:
            return _end_diverged(session, loggers, f"non-finite weights in {', '.join(bad)} after epoch {epoch + 1}",
                                 epoch, best)
        logged = family.end_epoch(epoch)

        # Evaluate and report.
        last = epoch + 1 == epochs
        if (epoch + 1) % cfg.train.eval_every and not last:
            continue
        tick = time.perf_counter()
        scores = M.evaluate(family.generate(cfg.metrics.num_samples, cfg.metrics.batch_size),
                            reference, cfg.metrics, device=device)
        extra = family.eval_metrics() if hasattr(family, "eval_metrics") else {}
        for name in TRACKED_METRICS:
            if scores[name] < best[f"best_{name}"]:
                best[f"best_{name}"] = scores[name]
                if name == cfg.search.metric:
                    best["best_epoch"] = epoch + 1
        result = {
            "epoch": epoch + 1,            # epochs completed: ASHA's time attribute
            "step": step,
            **scores, **best, **extra, **logged,
            **{k: v / max(n_steps, 1) for k, v in running.items()},
            "images_per_s": n_images / max(train_seconds, 1e-9),
            "eval_seconds": time.perf_counter() - tick,
            "diverged": 0,
            "trial_status": "ok",
        }
        loggers.log(family, result, epoch + 1)
        _log(session, f"epoch {epoch + 1}/{epochs} {cfg.search.metric}={scores[cfg.search.metric]:.2f} "
                      f"best={best['best_' + cfg.search.metric]:.2f} ({result['images_per_s']:.1f} img/s)")

        if scores[M.COLLAPSED]:
            # Every sample is the same image: the generator saturated (typically far too high a
            # learning rate) and will not recover. Report the scores, keep earlier checkpoints, stop.
            result |= {"trial_status": "collapsed", "status_detail": (
                f"collapsed: all {cfg.metrics.num_samples} generated images are identical at epoch {epoch + 1}; "
                f"trial stopped (try lower learning rates)")}
            _log(session, result["status_detail"])
            loggers.close(result)
            session.report(result, None)
            return result

        checkpoint_dir = Path(tempfile.mkdtemp(prefix="paintsweep-ckpt-"))
        torch.save({"family": family.state_dict(), "epoch": epoch + 1, "step": step, "best": best,
                    "rng": _get_rng_state(), "config": apply_dotted(experiment, searched),
                    "extractor": scores["extractor"]}, checkpoint_dir / CHECKPOINT_FILE)
        if last:
            loggers.close(result)   # before the last report: Ray may end this thread inside it
        try:
            session.report(result, checkpoint_dir)
        except BaseException:
            # A scheduler stopping this trial (ASHA) raises SystemExit inside report; flush the
            # logs (W&B's offline file) before the process goes away.
            loggers.close(result | {"trial_status": "stopped early"})
            raise
        running.clear()
        n_steps, train_seconds, n_images = 0, 0.0, 0

    loggers.close(result)
    return result


# --- Small pieces of the loop -------------------------------------------------------------------


def _end_diverged(session, loggers, what: str, epoch: int, best: dict) -> dict:
    """End a trial whose training blew up, cleanly: checkpoints already written stay valid, the
    search goes on with the other trials, and the result says what happened."""
    detail = f"diverged: {what}; trial stopped (try lower learning rates)"
    _log(session, detail)
    result = {"epoch": epoch, "diverged": 1, "trial_status": "diverged", "status_detail": detail,
              **{name: math.nan for name in TRACKED_METRICS}, **best}
    loggers.close(result)
    session.report(result, None)
    return result


def _pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is cuda but no GPU is visible to this trial; "
                           "set search.gpus_per_trial > 0 (or train.device=auto)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """Shuffling depends only on (seed, epoch), so a resumed trial sees the same batches."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def _get_rng_state() -> dict:
    # Plain tensors and ints only: checkpoints are loaded with weights_only=True.
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
             "numpy_pos": int(np_state[2]),
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _batch_size(batch) -> int:
    if isinstance(batch, dict):
        batch = next(iter(batch.values()))
    if isinstance(batch, (list, tuple)):
        batch = batch[0]
    return int(batch.shape[0])


def _log(session, message: str) -> None:
    print(f"[{session.trial_name}] {message}", flush=True)


class TrialLoggers:
    """TensorBoard and Weights & Biases for one trial, under the same names: scalars as
    `metrics/fid`, `losses/loss_g`, ... (`_scalar_tag`), image grids as `samples/<name>`, x = epoch.

    W&B: one run per trial, named like the trial directory and grouped by experiment, with the
    trial's full config. Offline unless an API key is configured (logging.wandb_mode overrides);
    offline runs are written under the trial directory (`<trial>/wandb/offline-run-*`), and
    `wandb sync <trial>/wandb/offline-run-*` uploads them later."""

    def __init__(self, cfg: ExperimentConfig, session, config_tree: dict):
        self.tensorboard = self.wandb = None
        if cfg.logging.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # One run per trial: `tensorboard --logdir runs/` lists every trial of every experiment.
            self.tensorboard = SummaryWriter(log_dir=str(session.trial_dir), flush_secs=10)
        if cfg.logging.wandb:
            self.wandb = _wandb_run(cfg, session, config_tree)

    def log(self, family, result: dict, epoch: int) -> None:
        scalars = {_scalar_tag(k): v for k, v in result.items()
                   if isinstance(v, (int, float)) and math.isfinite(v)}
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
        """End of the trial, however it ended: the W&B run's summary says how. Idempotent."""
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.summary["trial_status"] = result.get("trial_status", "ok")
            self.wandb.finish()
        self.tensorboard = self.wandb = None


def _wandb_run(cfg: ExperimentConfig, session, config_tree: dict):
    import wandb

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
                      job_type=cfg.family, config=config_tree, dir=str(session.trial_dir), mode=mode,
                      reinit="finish_previous", settings=settings)


def _scalar_tag(key: str) -> str:
    if key in (M.FID, M.KID, M.KID_STD, M.MIFID, M.MEMORIZATION, M.DIVERSITY) or key.startswith("best_"):
        return f"metrics/{key}"
    if key.startswith("loss"):
        return f"losses/{key}"
    if key.startswith("lr") or key == "beta":
        return f"schedule/{key}"
    return f"train/{key}"
