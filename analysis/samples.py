"""Sample grids of trials from their TensorBoard events: what each trial showed at its best evaluation.

    grids = trial_sample_grids(exp.trials.trial_dir[0])   # {"samples/photo_to_monet": (H, W, 3) uint8, ...}

The trainable writes `samples/<name>` image grids at every evaluation; reading them back costs no
model and no data. To draw new images from a kept checkpoint instead, use analysis.checkpoints.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image


def trial_sample_grids(trial_dir: str | os.PathLike, epoch: int | None = None) -> dict[str, np.ndarray]:
    """{tag: (H, W, 3) uint8} for every `samples/*` image of the trial at `epoch` (None: the last
    evaluation that logged images). Empty when the trial wrote no TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    if not any(Path(trial_dir).glob("events.out.tfevents.*")):
        return {}
    events = EventAccumulator(str(trial_dir), size_guidance={IMAGES: 0}).Reload()   # 0 = keep every image
    grids = {}
    for tag in events.Tags()[IMAGES]:
        if not tag.startswith("samples/"):
            continue
        images = events.Images(tag)
        chosen = [im for im in images if epoch is None or im.step == epoch] or images[-1:]
        picked = chosen[-1]
        grids[tag] = np.asarray(Image.open(io.BytesIO(picked.encoded_image_string)).convert("RGB"))
    return grids


def top_trial_grids(trials, k: int = 3) -> dict[str, dict[str, np.ndarray]]:
    """The sample grids of the k best trials (rows of a trials table, best first) at the epoch of
    each one's best score: {trial: {tag: image}}."""
    out = {}
    for row in trials.dropna(subset=["epoch"]).head(k).itertuples():
        out[row.trial] = trial_sample_grids(row.trial_dir, int(row.epoch))
    return out
