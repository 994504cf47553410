"""PyTorch datasets over a prepared folder, and the image transforms.

    photos = ImageDataset(data, "train/photo", train_transform(cfg.data))
    monets = ImageDataset(data, "train/monet", train_transform(cfg.data))
    loader = DataLoader(UnpairedDataset(photos, monets), batch_size=1, shuffle=True, generator=g)
    batch["photo"]  # (B, 3, H, W) float32 in [-1, 1]

All randomness (crops, flips, the Monet partner of a photo) comes from torch's global RNG, which
the trainable seeds and checkpoints; DataLoader workers get seeds derived from the loader's
generator, so runs are reproducible with any num_workers.
"""

from __future__ import annotations

import logging

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from core.errors import DataError
from core.data.prepare import SPLITS, PreparedData

log = logging.getLogger(__name__)


def train_transform(data_cfg) -> v2.Compose:
    """Training augmentation (CycleGAN paper): resize the short side to load_size, random crop to
    image_size, random horizontal flip; each switchable in DataConfig. Output (3, S, S) in [-1, 1]."""
    if data_cfg.random_crop:
        steps = [v2.Resize(data_cfg.resolved_load_size), v2.RandomCrop(data_cfg.image_size)]
    else:
        steps = [v2.Resize(data_cfg.image_size), v2.CenterCrop(data_cfg.image_size)]
    if data_cfg.flip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose([*steps, *_to_tensor()])


def eval_transform(data_cfg) -> v2.Compose:
    """No randomness: resize the short side to image_size, center crop. Output (3, S, S) in [-1, 1]."""
    return v2.Compose([v2.Resize(data_cfg.image_size), v2.CenterCrop(data_cfg.image_size), *_to_tensor()])


def _to_tensor() -> list:
    # PIL uint8 -> float32 in [0, 1] -> [-1, 1], the range of the generators' tanh output.
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5] * 3, [0.5] * 3)]


class ImageDataset(Dataset):
    """The images of one split of a prepared dataset: item i -> (transformed image, label or -1).

    A file that became unreadable after preparation (disk trouble, a concurrent edit) does not stop
    a trial: it is logged once, counted in `unreadable`, and the next readable image stands in.
    With DataLoader workers each worker keeps its own count."""

    def __init__(self, prepared: PreparedData, split: str, transform):
        if split not in SPLITS:
            raise DataError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        if not prepared.files[split]:
            if split != "train/monet" and not any(prepared.files[s] for s in SPLITS if s != "train/monet"):
                # kaggle_dataset without data.photos: paintings only, which CycleGAN cannot translate from.
                raise DataError(f"The data in {prepared.root} has no photos, which this model family translates. "
                                f"With data.source kaggle_dataset, name the dataset's photo folders in "
                                f"data.photos; or use data.source kaggle or folder.")
            raise DataError(f"{prepared.root / split} has no images; prepare the data again.")
        self.root = prepared.root
        self.split = split
        self.files = prepared.files[split]  # [(path relative to root, label)]
        self.transform = transform
        self.unreadable: set[str] = set()  # files that failed to load

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        for offset in range(len(self.files)):
            rel, label = self.files[(index + offset) % len(self.files)]
            if rel in self.unreadable:
                continue
            try:
                with Image.open(self.root / rel) as image:
                    rgb = image.convert("RGB")
            except Exception as e:  # PIL raises many types on bad data (OSError, SyntaxError, ValueError, ...)
                self.unreadable.add(rel)
                log.warning("Cannot read %s (%s); using the next image of %s instead.", self.root / rel, e, self.split)
                continue
            return self.transform(rgb), label
        raise DataError(f"None of the {len(self.files)} images of {self.root / self.split} can be read any "
                        f"more. Prepare the data again (delete {self.root}).")


class UnpairedDataset(Dataset):
    """Unpaired photo/painting pairs, as in CycleGAN's unaligned dataset: item i is photo
    i % len(photos) with a random painting (torch.randint, global RNG), so every epoch pairs them
    differently. Length: the larger of the two sets. Item -> {"photo", "monet", "label"}; label is
    the painting's class (or -1)."""

    def __init__(self, photos: ImageDataset, monets: ImageDataset):
        self.photos = photos
        self.monets = monets

    def __len__(self) -> int:
        return max(len(self.photos), len(self.monets))

    def __getitem__(self, index: int) -> dict:
        photo, _ = self.photos[index % len(self.photos)]
        monet, label = self.monets[int(torch.randint(len(self.monets), ()))]
        return {"photo": photo, "monet": monet, "label": label}
