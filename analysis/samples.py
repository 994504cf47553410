"""Sample grids of trials from their TensorBoard events: what each trial showed at its best evaluation.

    grids = trial_sample_grids(exp.trials.trial_dir[0])   # {"samples/photo_to_monet": (H, W, 3) uint8, ...}

The trainable writes `samples/<name>` image grids at every evaluation; reading them back costs no
model and no data. To draw new images from a kept checkpoint instead, use analysis.checkpoints.
`enlarged(grid, width, height)` scales a grid of small images up for display, pixel by pixel.
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


MAX_UPSCALE = 4   # a 32 px sample shown 128 px wide: its detail visible, a grid of 8 still one page wide


def enlarged(image: np.ndarray, max_width: int, max_height: int, max_factor: int = MAX_UPSCALE) -> tuple[np.ndarray, int]:
    """(image scaled up, factor): each pixel repeated into a factor x factor block, for the largest
    whole factor up to `max_factor` that keeps it within max_width x max_height (1 if none does). A
    whole factor and no smoothing show the pixels the model made, nothing interpolated between them."""
    height, width = image.shape[:2]
    factor = max(1, min(max_factor, max_width // width, max_height // height))
    return image.repeat(factor, axis=0).repeat(factor, axis=1), factor
