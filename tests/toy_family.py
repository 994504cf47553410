"""A fourth model family, defined outside core/models/ the way a plugin would be: one module that
registers itself with @register_family, plus its search space (tests/spaces/toy_builtin.yaml).
No test names it: tests/conftest.py imports this module, and the contract, trainable, search and
export tests take it up from the registry (tests/test_new_family.py runs its search and export).
A tune.py process finds it through $PAINTSWEEP_FAMILIES=toy_family with tests/ on PYTHONPATH.

The model: a two-layer convolutional autoencoder on the Monet paintings; sampling decodes Gaussian
noise in its latent grid. It learns little, and need not: it exists to prove the contract.

    encoder  x (B, 3, H, W) -> Conv 4x4/4 -> (B, c, H/4, W/4) -> tanh
    decoder  z (B, c, H/4, W/4) -> nearest upsample x4 -> Conv 3x3 -> tanh -> (B, 3, H, W) in [-1, 1]
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchvision.utils import make_grid

from core.data import ImageDataset, train_transform
from core.metrics import to_uint8
from core.models.base import Family, betas_errors, register_family

SAMPLE_SEED = 0   # the scoring noise: the same latents at every evaluation


@dataclass
class Config:
    channels: int = 4                    # c, channels of the latent grid
    lr: float = 1.0e-3                   # Adam learning rate (encoder and decoder share one optimizer)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    slow_above_lr: float = 1.0           # trials with a higher lr sleep 0.4 s per step: another arrival
                                         #   order for the same search (tests/test_racing_runs.py), or
                                         #   (at 0) a search as long on any machine (the time-budget test)

    def validate(self) -> list[str]:
        errors = [] if self.channels >= 1 else [f"model.channels must be >= 1, got {self.channels}"]
        if self.lr <= 0:
            errors.append(f"model.lr must be > 0, got {self.lr}")
        return errors + betas_errors("betas", self.betas)


@register_family("toy")
class ToyAutoencoder(Family):
    Config = Config
    network_names = ("encoder", "decoder")
    optimizer_keys = {"optimizer": ("lr", "betas")}
    architecture_keys = ("channels",)
    tiny = {"channels": 2}

    def build(self) -> None:
        c = self.cfg.model.channels
        self.encoder = nn.Sequential(nn.Conv2d(3, c, 4, stride=4), nn.Tanh()).to(self.device)
        self.decoder = nn.Sequential(nn.Upsample(scale_factor=4), nn.Conv2d(c, 3, 3, padding=1), nn.Tanh()).to(self.device)
        self.optimizer = torch.optim.Adam([*self.encoder.parameters(), *self.decoder.parameters()])

    def make_loader(self, generator: torch.Generator) -> DataLoader:
        dataset = ImageDataset(self.data, "train/monet", train_transform(self.cfg.data))
        return self.data_loader(dataset, batch_size=self.cfg.train.batch_size, shuffle=True, generator=generator)

    def train_step(self, batch) -> dict[str, float]:
        if self.cfg.model.lr > self.cfg.model.slow_above_lr:
            time.sleep(0.4)
        x = batch[0].to(self.device)                         # (B, 3, H, W) in [-1, 1]
        with self.autocast():
            loss = F.mse_loss(self.decoder(self.encoder(x)).float(), x)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item()}

    def decode_noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n images decoded from N(0, 1) latents drawn by `generator`: (n, 3, H, W) in [-1, 1] on the CPU."""
        size = self.cfg.data.image_size // 4
        z = torch.randn(n, self.cfg.model.channels, size, size, generator=generator)
        with self.eval_mode(self.decoder):
            return self.decoder(z.to(self.device)).float().cpu()

    def generate(self, n: int, batch_size: int) -> Iterable[torch.Tensor]:
        images = self.decode_noise(n, torch.Generator().manual_seed(SAMPLE_SEED))   # all at once: batch-independent
        for start in range(0, n, batch_size):
            yield to_uint8(images[start:start + batch_size])

    def draw_samples(self, n: int, seed: int, label: int | None, photos: torch.Tensor | None) -> torch.Tensor:
        return to_uint8(self.decode_noise(n, torch.Generator().manual_seed(seed)))

    def image_grids(self) -> dict[str, torch.Tensor]:
        samples = self.decode_noise(self.cfg.logging.image_grid_size, torch.Generator().manual_seed(SAMPLE_SEED))
        return {"samples": make_grid((samples + 1) / 2, nrow=self.cfg.logging.image_grid_size)}
