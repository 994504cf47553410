"""A kept trial checkpoint -> a live model family, and images from it (export.py, the gallery, notebooks).

    loaded = load_checkpoint("runs/quickstart/wgan_gp_3f2a1b7c/checkpoint_000005")
    batches = loaded.family.generate(16, batch_size=8)          # what the search scored
    images = sample(loaded, n=8, seed=3)                          # fresh samples, (8, 3, H, W) uint8

A checkpoint's state.pt holds the trial's full config (searched values applied), so the family is
rebuilt exactly; the prepared data it needs (CycleGAN's test photos, the VAE's class names) is
rebuilt or reused from the cache by `core.data.prepare_data`, keyed by the data's fingerprint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from core.config import ExperimentConfig, build_config
from core.data import PreparedData, prepare_data
from core.models import get_family
from core.models.base import Family
from core.checkpoints import CHECKPOINT_FILE, load_state


@dataclass
class LoadedCheckpoint:
    path: Path                 # the checkpoint directory
    cfg: ExperimentConfig      # the trial's config (searched values applied)
    family: Family             # weights loaded, on `device`
    data: PreparedData
    epoch: int                 # epochs trained when it was saved
    extractor: str             # the feature extractor its scores came from


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu", progress=print) -> LoadedCheckpoint:
    path = Path(path)
    if not (path / CHECKPOINT_FILE).exists():
        raise FileNotFoundError(f"{path} is not a checkpoint directory (no {CHECKPOINT_FILE}); pass a trial's "
                                f"checkpoint_NNNNNN directory or an experiment directory")
    state = load_state(path)   # one clear CheckpointError for a damaged file
    cfg = build_config(state["config"], source=str(path / CHECKPOINT_FILE))
    data = prepare_data(cfg.data, cfg.cache_path, progress=progress)
    family = get_family(cfg.family)(cfg, data, torch.device(device))
    family.load_state_dict(state["family"])
    return LoadedCheckpoint(path, cfg, family, data, int(state["epoch"]), str(state["extractor"]))


def sample(loaded: LoadedCheckpoint, n: int, seed: int = 0, label: int | None = None,
           photos: torch.Tensor | None = None) -> torch.Tensor:
    """Fresh images as uint8 (n, 3, H, W) on the CPU, reproducible from `seed` (Family.sample)."""
    return loaded.family.sample(n, seed=seed, label=label, photos=photos)
