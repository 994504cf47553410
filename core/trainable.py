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
Each evaluation also saves a checkpoint (core.checkpoints: everything needed to resume exactly,
staged in a temp directory that is removed as soon as Ray has copied it to storage) and logs
TensorBoard scalars, HParams and image grids, and optionally W&B (core.tracking).
"""

from __future__ import annotations

import math
import os
import random
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from core import metrics as M
from core.checkpoints import (CHECKPOINT_FILE, checkpoint_problem, load_state, newest_intact, staged_checkpoint,
                              trial_checkpoints)
from core.config import ExperimentConfig, apply_dotted, build_config, get_dotted
from core.data import load_prepared
from core.metric_registry import METRICS, direction
from core.models import get_family
from core.space import applicable
from core.tracking import TrialLoggers

__all__ = ["CHECKPOINT_FILE", "LocalSession", "TuneSession", "run_trial", "tune_trainable"]


# --- Where results go: Ray Tune or a local directory ---------------------------------------------


class TuneSession:
    """Reports through `ray.tune` (the `ray.train.*` twins are errors inside Tune)."""

    def __init__(self):
        from ray import tune

        self._tune = tune
        context = tune.get_context()
        self.trial_dir = Path(context.get_trial_dir())  # synced to storage by Ray
        self.trial_name = context.get_trial_name()
        self.trial_id = context.get_trial_id()

    def restore_state(self) -> tuple[str, dict] | None:
        """(name, state) of the checkpoint to continue from, read in place from storage, or None.

        Ray names the trial's latest checkpoint, or under PBT the checkpoint of the trial it copies
        (core.checkpoints repairs that record before a resume if it was deleted). Should it be damaged anyway (a storage glitch, a hand-edited
        experiment), the trial's other checkpoints are tried, newest first; with none intact,
        training starts over."""
        checkpoint = self._tune.get_checkpoint()
        if checkpoint is None:
            return None
        fs = checkpoint.filesystem
        # The directory of the checkpoint Ray names: this trial's, or (PBT) the trial it copies.
        others = [p for p in trial_checkpoints(str(Path(checkpoint.path).parent), fs) if p != checkpoint.path]
        for path in [checkpoint.path, *reversed(others)]:
            problem = checkpoint_problem(path, fs)
            if problem is None:
                return Path(path).name, load_state(path, fs)
            _log(self, f"checkpoint {Path(path).name} cannot be used ({problem}); trying an older one")
        _log(self, "no usable checkpoint found; the trial starts from scratch")
        return None

    def report(self, result: dict, checkpoint_dir: Path | None) -> None:
        checkpoint = self._tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        self._tune.report(result, checkpoint=checkpoint)


class LocalSession:
    """The same contract without Ray: checkpoints in `root/checkpoint_NNNNNN`, reports in a list.
    `start_from`: a checkpoint to begin with instead of the session's own, as Ray hands a trial
    another trial's checkpoint when PBT exploits it."""

    def __init__(self, root: str | os.PathLike, trial_name: str = "local", start_from: str | os.PathLike | None = None):
        self.trial_dir = Path(root)
        self.trial_dir.mkdir(parents=True, exist_ok=True)
        self.trial_name = self.trial_id = trial_name
        self.start_from = Path(start_from) if start_from else None
        self.results: list[dict] = []

    def latest_checkpoint(self) -> Path | None:
        intact = newest_intact(self.trial_dir)
        return Path(intact) if intact else None

    def restore_state(self) -> tuple[str, dict] | None:
        path, self.start_from = self.start_from or self.latest_checkpoint(), None
        return (path.name, load_state(path)) if path else None

    def report(self, result: dict, checkpoint_dir: Path | None) -> None:
        self.results.append(dict(result))
        if checkpoint_dir is not None:
            # Named by epoch (a resumed session continues the numbering), copied as Ray does: the
            # staged original is the caller's to remove.
            shutil.copytree(checkpoint_dir, self.trial_dir / f"checkpoint_{result['epoch']:06d}")


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
    """Train one trial to the end (or to `max_epochs`, for tests). Returns the last result.

    Every evaluation but the last is reported inside the loop; the trial's end (its last
    evaluation, or the result of a diverged or collapsed trial) is reported in one place after it."""

    # Build. The trial's config is the experiment's with the searched values applied, once
    # (a key whose `when:` does not hold keeps the config's value: core.space).
    searched = applicable(searched, experiment["search"]["space"])
    trial_tree = apply_dotted(experiment, searched)
    cfg: ExperimentConfig = build_config(trial_tree, source="trial config")
    device = _pick_device(cfg.train.device)
    threads = (cfg.train.threads or int(os.environ.get("PAINTSWEEP_THREADS") or 0)   # validated by TrainConfig
               or max(1, int(cfg.search.cpus_per_trial)))
    torch.set_num_threads(threads)
    threadpool_limits(limits=threads)  # numpy's BLAS too (FID): oversubscribed cores run it 7x slower
    _seed_everything(cfg.train.seed)
    data = load_prepared(prepared_root)
    reference = M.load_reference(reference_path)
    family = get_family(cfg.family)(cfg, data, device)

    # Resume. Everything a checkpoint holds is restored, so training continues exactly.
    start_epoch, step = 0, 0
    best = {f"best_{name}": _worst(name) for name in METRICS} | {"best_epoch": -1}
    exploited: dict = {}           # PBT: which trial's weights this one continues, with which new values
    restored = session.restore_state()
    if restored is not None:
        name, state = restored
        family.load_state_dict(state["family"])
        family.set_hparams(cfg.model)  # this run's values win over those saved with the optimizers
        start_epoch, step, best = state["epoch"], state["step"], best | state["best"]
        _set_rng_state(state["rng"])
        donor = state.get("trial", session.trial_name)
        if donor != session.trial_name:
            # PBT copied another trial's checkpoint into this one and changed some values: its
            # running best is the donor's so far, and the checkpoint says what it trained with.
            changes = {k: (get_dotted(state["config"], k), v) for k, v in searched.items()
                       if get_dotted(state["config"], k) != v}
            exploited = {"exploited_from": donor, "exploited_at_epoch": start_epoch,
                         "exploit_changes": "; ".join(f"{k} {_short(a)} -> {_short(b)}" for k, (a, b) in changes.items())}
            _log(session, f"exploit at epoch {start_epoch}: continues {donor}'s weights from {name}, with "
                          f"{exploited['exploit_changes'] or 'the same values'}")
        else:
            _log(session, f"resumed from {name} at epoch {start_epoch}")

    epochs = cfg.train.epochs if max_epochs is None else min(cfg.train.epochs, max_epochs)
    final: dict | None = None              # the trial's end: reported after the loop
    final_checkpoint: dict | None = None   # ... with this state, when it has one
    with TrialLoggers(cfg, session, trial_tree, searched) as loggers:
        running = defaultdict(float)   # loss sums since the last evaluation
        n_steps, train_seconds, n_images = 0, 0.0, 0
        for epoch in range(start_epoch, epochs):
            # Train.
            loader = family.make_loader(_epoch_generator(cfg.train.seed, epoch))
            tick = time.perf_counter()
            for i, batch in enumerate(loader):
                if cfg.train.iters_per_epoch is not None and i >= cfg.train.iters_per_epoch:
                    break
                losses = family.train_step(batch)
                step += 1
                bad = [f"{k}={v}" for k, v in losses.items() if not math.isfinite(v)]
                if bad:
                    final = _diverged(f"{', '.join(bad)} at epoch {epoch + 1} iteration {i + 1}", epoch, best, cfg)
                    break
                for k, v in losses.items():
                    running[k] += v
                n_steps += 1
                n_images += _batch_size(batch)
            if final is not None:
                break
            train_seconds += time.perf_counter() - tick
            # Normalization layers can keep losses finite while weights overflow: check those too.
            bad = [name for name, module in family.modules().items()
                   if not all(torch.isfinite(p).all() for p in module.parameters())]
            if bad:
                final = _diverged(f"non-finite weights in {', '.join(bad)} after epoch {epoch + 1}", epoch, best, cfg)
                break
            logged = family.end_epoch(epoch)

            # Evaluate.
            last = epoch + 1 == epochs
            if (epoch + 1) % cfg.train.eval_every and not last:
                continue
            tick = time.perf_counter()
            scores = M.evaluate(family.generate(cfg.metrics.num_samples, cfg.metrics.batch_size),
                                reference, cfg.metrics, device=device)
            for name in METRICS:
                if _better(name, scores[name], best[f"best_{name}"]):
                    best[f"best_{name}"] = scores[name]
                    if name == cfg.search.metric:
                        best["best_epoch"] = epoch + 1
            metric = cfg.search.metric
            result = {
                # First the columns of Ray's console table (it shows the first few numbers).
                "epoch": epoch + 1,            # epochs completed: ASHA's time attribute
                f"best_{metric}": best[f"best_{metric}"], metric: scores[metric],
                "step": step,
                **scores, **best, **family.eval_metrics(), **logged,
                **{k: v / max(n_steps, 1) for k, v in running.items()},
                "images_per_s": n_images / max(train_seconds, 1e-9),
                "eval_seconds": time.perf_counter() - tick,
                "diverged": 0,
                "trial_status": "ok",
                **exploited,
            }
            exploited = {}   # said once, in the first report after the exploit
            loggers.log(family, result, epoch + 1)
            _log(session, f"epoch {epoch + 1}/{epochs} {cfg.search.metric}={scores[cfg.search.metric]:.2f} "
                          f"best={best['best_' + cfg.search.metric]:.2f} ({result['images_per_s']:.1f} img/s)")
            if scores[M.COLLAPSED]:
                # Every sample is the same image: the generator saturated (typically far too high a
                # learning rate) and will not recover. Report the scores, keep earlier checkpoints, stop.
                final = result | _worst_for_the_searcher(cfg) | {"trial_status": "collapsed", "status_detail": (
                    f"collapsed: all {cfg.metrics.num_samples} generated images are identical at epoch {epoch + 1}; "
                    f"trial stopped (try lower learning rates)")}
                break

            # Report and checkpoint.
            state = {"family": family.state_dict(), "epoch": epoch + 1, "step": step, "best": best,
                     "rng": _get_rng_state(), "config": trial_tree, "extractor": scores["extractor"],
                     "trial": session.trial_name}
            if last:
                final, final_checkpoint = result, state
                break
            with staged_checkpoint(state, session.trial_id, result) as checkpoint_dir:
                session.report(result, checkpoint_dir)   # a scheduler stopping the trial raises here
            running.clear()
            n_steps, train_seconds, n_images = 0, 0.0, 0

        # The end of the trial, whatever the reason.
        if final is None:        # resumed after its last evaluation: nothing left to report
            return {}
        if final.get("status_detail"):
            _log(session, final["status_detail"])
        loggers.close(final)     # before the last report: Ray may end this thread inside it
        if final_checkpoint is None:
            session.report(final, None)
        else:
            with staged_checkpoint(final_checkpoint, session.trial_id, final) as checkpoint_dir:
                session.report(final, checkpoint_dir)
    return final


# --- Small pieces of the loop -------------------------------------------------------------------


def _diverged(what: str, epoch: int, best: dict, cfg: ExperimentConfig) -> dict:
    """The end of a trial whose training blew up: checkpoints already written stay valid, the
    search goes on with the other trials, and the result says what happened."""
    return {"epoch": epoch, "diverged": 1, "trial_status": "diverged",
            "status_detail": f"diverged: {what}; trial stopped (try lower learning rates)",
            **{name: math.nan for name in METRICS}, **best, **_worst_for_the_searcher(cfg)}


def _worst_for_the_searcher(cfg: ExperimentConfig) -> dict:
    """A diverged or collapsed trial's last report: the value the searcher and scheduler see is the
    worst possible, so TPE does not learn that an exploding setting scored well before it exploded.
    (Its earlier evaluations, and the checkpoints they wrote, keep their real scores.)"""
    return {key: _worst(name) for name in cfg.search.metrics for key in (f"best_{name}", name)}


def _worst(metric: str) -> float:
    return math.inf if direction(metric) == "min" else -math.inf


def _better(metric: str, value: float, than: float) -> bool:
    return value < than if direction(metric) == "min" else value > than


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


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
