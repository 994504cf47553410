"""Convolutional beta-VAE (optionally class-conditional), trained on the Monet paintings alone.

Architecture (seed 004, with the width scaled by `base_channels` = c, 64 in the seed):

    encoder  x (B, 3[+K], H, W) -> Conv 4x4/2 c -> ReLU -> Conv 2c -> BN -> ReLU -> Conv 4c -> BN -> ReLU
             -> Conv 8c -> BN -> ReLU -> flatten (B, 8c * H/16 * W/16) -> two Linear heads: mu, log sigma^2 (B, D)
    latent   z = mu + sigma * eps, eps ~ N(0, I)                                              (B, D)
    decoder  z [+ one-hot label] -> Linear -> (B, 8c, H/16, W/16) -> ConvT 4c -> BN -> ReLU -> ConvT 2c -> BN
             -> ReLU -> ConvT c -> BN -> ReLU -> ConvT 3 -> sigmoid                      (B, 3, H, W) in [0, 1]

Value ranges: the data pipeline delivers images in [-1, 1]. The encoder sees them as they come
(zero-centred input suits the first convolution); the decoder ends in a sigmoid, so its output
and the reconstruction target live in [0, 1]: the target is (x + 1) / 2. Generated images are
therefore converted to uint8 as round(255 * output) (`to_uint8(..., value_range=(0, 1))`).

Loss (per image, then averaged over the batch, so its size does not depend on the batch size):

    loss = SSE(x01, x_hat) + beta * KL(N(mu, sigma^2) || N(0, I))

where SSE sums the squared error over all 3*H*W pixels of an image and KL sums over the D latent
dimensions. With beta = 1 this is the negative ELBO of a Gaussian decoder with fixed variance 1/2
(up to a constant), i.e. a standard VAE. Because SSE grows with the pixel count and KL does not, the
same beta weighs the KL term relatively less at higher resolution: re-tune beta when image_size
changes (a per-pixel mean would instead make beta = 1 a ~3*H*W times stronger prior).

Conditional mode: a one-hot class label (K = len(class_names) classes, the sub-folders of
train/monet) is broadcast to K constant channels and concatenated with the image before the first
convolution, and concatenated with z at the decoder input.

Held-out evaluation: every `holdout_every`-th image of train/monet (indices 0, k, 2k, ...) is never
trained on; `eval_metrics()` reports its reconstruction error and KL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision.utils import make_grid

from core.errors import ConfigError
from core.data import ImageDataset, eval_transform, train_transform
from core.metrics import to_uint8
from core.models.base import Family, betas_errors, register_family

BETA_SCHEDULES = ("constant", "linear", "cyclic")
SAMPLE_SEED = 0  # seed of the prior samples scored and shown: the same z at every evaluation


@dataclass
class Config:
    latent_dim: int = 128                # D, size of z
    base_channels: int = 64              # c, width of the first conv; the others are 2c, 4c, 8c (seed: 64)
    lr: float = 1.0e-3                   # Adam learning rate (encoder and decoder share one optimizer)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])   # Adam betas (torch's defaults)
    beta: float = 1.0                    # KL weight the schedule ramps to (1 = standard VAE; see the loss above)
    beta_schedule: str = "constant"      # constant | linear | cyclic (see beta_at)
    beta_warmup: int = 10                # epochs of linear ramp from 0 to beta (linear, cyclic)
    beta_cycle: int = 20                 # cyclic: epochs between restarts of the ramp; > beta_warmup
    conditional: bool = False            # condition encoder and decoder on the class label (needs labelled data)
    holdout_every: int = 10              # every k-th train/monet image is held out for recon/KL evaluation

    def validate(self) -> list[str]:
        errors = []
        if self.latent_dim < 1 or self.base_channels < 1:
            errors.append(f"model.latent_dim and model.base_channels must be >= 1, "
                          f"got {self.latent_dim} and {self.base_channels}")
        if self.lr <= 0:
            errors.append(f"model.lr must be > 0, got {self.lr}")
        errors += betas_errors("betas", self.betas)
        if self.beta < 0:
            errors.append(f"model.beta must be >= 0, got {self.beta}")
        if self.beta_schedule not in BETA_SCHEDULES:
            errors.append(f"model.beta_schedule must be one of {', '.join(BETA_SCHEDULES)}, got {self.beta_schedule!r}")
        if self.beta_schedule in ("linear", "cyclic") and self.beta_warmup < 1:
            errors.append(f"model.beta_warmup must be >= 1 epoch for the {self.beta_schedule} schedule, "
                          f"got {self.beta_warmup} (use beta_schedule: constant for no warm-up)")
        if self.beta_schedule == "cyclic" and self.beta_cycle <= self.beta_warmup:
            errors.append(f"model.beta_cycle ({self.beta_cycle}) must be > model.beta_warmup ({self.beta_warmup}) "
                          f"so that beta reaches its target in every cycle")
        if self.holdout_every < 2:
            errors.append(f"model.holdout_every must be >= 2 (1 would hold out every image), got {self.holdout_every}")
        return errors


# --- Schedule and losses (stateless) -----------------------------------------------------------


def beta_at(cfg: Config, epoch: int) -> float:
    """The KL weight used throughout epoch `epoch` (0-based); beta changes only between epochs.

    constant: beta_e = beta
    linear:   beta_e = beta * min(1, e / beta_warmup)
              0 in epoch 0, beta / beta_warmup in epoch 1, ..., beta from epoch beta_warmup on.
    cyclic:   beta_e = beta * min(1, (e mod beta_cycle) / beta_warmup)
              the linear warm-up restarts from 0 at epochs 0, beta_cycle, 2 * beta_cycle, ...
              (cyclical annealing, Fu et al. 2019); e.g. beta=4, warmup=2, cycle=5 gives
              0, 2, 4, 4, 4, 0, 2, 4, ...
    """
    if cfg.beta_schedule == "constant":
        return cfg.beta
    position = epoch % cfg.beta_cycle if cfg.beta_schedule == "cyclic" else epoch
    return cfg.beta * min(1.0, position / cfg.beta_warmup)


def reconstruction_error(x_hat: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum of squared errors over all pixels of each image: (B, 3, H, W) x2 -> (B,)."""
    return F.mse_loss(x_hat, target, reduction="none").flatten(1).sum(dim=1)


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) in nats, summed over latent dims: (B, D) x2 -> (B,).
    Closed form per dimension: (mu^2 + sigma^2 - 1 - log sigma^2) / 2."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)


# --- Networks ----------------------------------------------------------------------------------


def label_channels(onehot: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, K) one-hot -> (B, K, H, W): each label becomes K constant image channels."""
    return onehot[:, :, None, None].expand(-1, -1, height, width)


class Encoder(nn.Module):
    def __init__(self, image_size: int, base_channels: int, latent_dim: int, num_classes: int):
        super().__init__()
        c = base_channels
        self.features = nn.Sequential(
            nn.Conv2d(3 + num_classes, c, 4, 2, 1), nn.ReLU(inplace=True),                 # (B, c, H/2, W/2)
            nn.Conv2d(c, 2 * c, 4, 2, 1), nn.BatchNorm2d(2 * c), nn.ReLU(inplace=True),    # (B, 2c, H/4, W/4)
            nn.Conv2d(2 * c, 4 * c, 4, 2, 1), nn.BatchNorm2d(4 * c), nn.ReLU(inplace=True),  # (B, 4c, H/8, W/8)
            nn.Conv2d(4 * c, 8 * c, 4, 2, 1), nn.BatchNorm2d(8 * c), nn.ReLU(inplace=True),  # (B, 8c, H/16, W/16)
            nn.Flatten(),
        )
        flat = 8 * c * (image_size // 16) ** 2
        self.mu = nn.Linear(flat, latent_dim)
        self.logvar = nn.Linear(flat, latent_dim)

    def forward(self, x: torch.Tensor, onehot: torch.Tensor | None = None):
        """x (B, 3, H, W) in [-1, 1], onehot (B, K) or None -> mu, logvar, each (B, D)."""
        if onehot is not None:
            x = torch.cat([x, label_channels(onehot.to(x.dtype), x.shape[2], x.shape[3])], dim=1)
        h = self.features(x)
        return self.mu(h), self.logvar(h)


class Decoder(nn.Module):
    def __init__(self, image_size: int, base_channels: int, latent_dim: int, num_classes: int):
        super().__init__()
        c = base_channels
        self.start = (8 * c, image_size // 16, image_size // 16)
        self.fc = nn.Linear(latent_dim + num_classes, 8 * c * (image_size // 16) ** 2)
        self.upsample = nn.Sequential(
            nn.ConvTranspose2d(8 * c, 4 * c, 4, 2, 1), nn.BatchNorm2d(4 * c), nn.ReLU(inplace=True),  # (B, 4c, H/8, W/8)
            nn.ConvTranspose2d(4 * c, 2 * c, 4, 2, 1), nn.BatchNorm2d(2 * c), nn.ReLU(inplace=True),  # (B, 2c, H/4, W/4)
            nn.ConvTranspose2d(2 * c, c, 4, 2, 1), nn.BatchNorm2d(c), nn.ReLU(inplace=True),          # (B, c, H/2, W/2)
            nn.ConvTranspose2d(c, 3, 4, 2, 1), nn.Sigmoid(),                                           # (B, 3, H, W)
        )

    def forward(self, z: torch.Tensor, onehot: torch.Tensor | None = None) -> torch.Tensor:
        """z (B, D), onehot (B, K) or None -> image (B, 3, H, W) in [0, 1]."""
        if onehot is not None:
            z = torch.cat([z, onehot.to(z.dtype)], dim=1)
        return self.upsample(self.fc(z).view(-1, *self.start))


# --- The family --------------------------------------------------------------------------------


@register_family("vae")
class VAE(Family):
    """beta-VAE: one Adam optimizer, one step per iteration, beta scheduled per epoch."""

    Config = Config
    network_names = ("encoder", "decoder")
    optimizer_keys = {"optimizer": ("lr", "betas")}
    architecture_keys = ("latent_dim", "base_channels", "conditional", "holdout_every")
    tiny = {"base_channels": 4, "latent_dim": 8, "holdout_every": 4, "conditional": True}

    def build(self) -> None:
        m: Config = self.cfg.model
        size, data = self.cfg.data.image_size, self.data
        if size % 16 or size < 32:
            raise ConfigError(f"The vae family halves the image four times, so data.image_size must be a "
                              f"multiple of 16 and at least 32, got {size}. Use e.g. 32, 64, 128 or 256.")
        self.num_classes = len(data.class_names) if m.conditional else 0
        if m.conditional and self.num_classes == 0:
            raise ConfigError("model.conditional is true but the data has no class labels (train/monet has no "
                              "class sub-folders; the Kaggle Monet set has none). Set model.conditional: false, "
                              "or use data.source builtin or a folder whose train/monet holds one folder per class.")

        # Hold out every k-th Monet painting (indices 0, k, 2k, ...: at least one) for recon/KL.
        monet = data.files["train/monet"]
        if len(monet) < 2:
            raise ConfigError(f"The vae family needs at least 2 images in train/monet (one is held out), "
                              f"found {len(monet)}.")
        self.holdout_indices = list(range(0, len(monet), m.holdout_every))
        self.train_indices = [i for i in range(len(monet)) if i % m.holdout_every]
        # Conditional prior samples draw labels with the training label frequencies: (K,) counts.
        self.label_counts = None
        if self.num_classes:
            unlabelled = [monet[i][0] for i in range(len(monet)) if monet[i][1] < 0]
            if unlabelled:
                raise ConfigError(f"model.conditional is true but {len(unlabelled)} train/monet images lie outside "
                                  f"the class sub-folders (e.g. {unlabelled[0]}). Move each into its class folder, "
                                  f"or set model.conditional: false.")
            labels = torch.tensor([monet[i][1] for i in self.train_indices])
            self.label_counts = torch.bincount(labels, minlength=self.num_classes).float()

        self.encoder = Encoder(size, m.base_channels, m.latent_dim, self.num_classes).to(self.device)
        self.decoder = Decoder(size, m.base_channels, m.latent_dim, self.num_classes).to(self.device)
        self.optimizer = torch.optim.Adam([*self.encoder.parameters(), *self.decoder.parameters()])

    @property
    def conditional_on_labels(self) -> bool:
        return self.num_classes > 0

    @property
    def beta(self) -> float:
        return beta_at(self.cfg.model, self.epoch)

    def onehot(self, labels: torch.Tensor) -> torch.Tensor | None:
        """(B,) int labels -> (B, K) float one-hot on the device, or None when unconditional."""
        if not self.num_classes:
            return None
        return F.one_hot(labels.to(self.device), self.num_classes).float()

    # --- Training -------------------------------------------------------------------------------

    def make_loader(self, generator: torch.Generator) -> DataLoader:
        dataset = Subset(ImageDataset(self.data, "train/monet", train_transform(self.cfg.data)), self.train_indices)
        return self.data_loader(dataset, batch_size=self.cfg.train.batch_size, shuffle=True, generator=generator)

    def train_step(self, batch) -> dict[str, float]:
        images, labels = batch
        x = images.to(self.device, non_blocking=True)  # (B, 3, H, W) in [-1, 1]
        c = self.onehot(labels)                          # (B, K) or None
        beta = self.beta
        with self.autocast():
            mu, logvar = self.encoder(x, c)                                   # (B, D) each
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)           # reparameterization
            x_hat = self.decoder(z, c)                                        # (B, 3, H, W) in [0, 1]
        # Losses in float32 whatever autocast computed the networks in.
        recon = reconstruction_error(x_hat.float(), (x + 1) / 2).mean()
        kl = kl_standard_normal(mu.float(), logvar.float()).mean()
        loss = recon + beta * kl
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        # Named loss_* so they cannot collide with eval_metrics()'s held-out recon_mse / kl.
        return {"loss": loss.item(), "loss_recon": recon.item(), "loss_kl": kl.item(), "beta": beta}

    def schedule_values(self, epoch: int) -> dict[str, float]:
        """The beta epoch `epoch` trained with (what its train_steps reported)."""
        return {"beta": beta_at(self.cfg.model, epoch)}

    # --- Evaluation -----------------------------------------------------------------------------

    def prior_latents(self, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The first n of a fixed stream of prior draws: z (n, D) ~ N(0, I) and, when conditional,
        labels (n,) drawn with the training label frequencies. A private generator keeps the
        global RNG (training) untouched and makes every evaluation score the same z."""
        generator = torch.Generator().manual_seed(SAMPLE_SEED)
        z = torch.randn(n, self.cfg.model.latent_dim, generator=generator)
        labels = (torch.multinomial(self.label_counts, n, replacement=True, generator=generator)
                  if self.num_classes else None)
        return z, labels

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Decoder in eval mode (batch-norm running statistics): z (B, D) -> (B, 3, H, W) in [0, 1] on CPU."""
        onehot = self.onehot(labels) if labels is not None else None
        with self.eval_mode(self.decoder):
            return self.decoder(z.to(self.device), onehot).float().cpu()

    def generate(self, n: int, batch_size: int) -> Iterable[torch.Tensor]:
        z, labels = self.prior_latents(n)
        for start in range(0, n, batch_size):
            part = slice(start, start + batch_size)
            images = self.decode(z[part], labels[part] if labels is not None else None)
            yield to_uint8(images, value_range=(0, 1))  # (B, 3, H, W) uint8

    def holdout_loader(self) -> DataLoader:
        dataset = Subset(ImageDataset(self.data, "train/monet", eval_transform(self.cfg.data)), self.holdout_indices)
        return DataLoader(dataset, batch_size=self.cfg.metrics.batch_size, shuffle=False)

    def reconstruct(self, images: torch.Tensor, labels: torch.Tensor):
        """Posterior-mean reconstruction (z = mu, no sampling, eval mode): images (B, 3, H, W) in
        [-1, 1] -> x_hat (B, 3, H, W) in [0, 1], mu and logvar (B, D), all float32 on the device."""
        c = self.onehot(labels)
        with self.eval_mode(self.encoder, self.decoder):
            mu, logvar = self.encoder(images.to(self.device), c)
            return self.decoder(mu, c).float(), mu.float(), logvar.float()

    @torch.no_grad()
    def eval_metrics(self) -> dict[str, float]:
        """On the held-out Monet paintings: recon_mse = mean squared error per pixel on the [0, 1]
        scale (resolution-independent, unlike the training loss's per-image sum) and kl = mean KL per
        image in nats. Batch-independent: eval mode, sums divided by the image count."""
        squared_error, kl, count = 0.0, 0.0, 0
        for images, labels in self.holdout_loader():
            x_hat, mu, logvar = self.reconstruct(images, labels)
            squared_error += reconstruction_error(x_hat, (images.to(self.device) + 1) / 2).sum().item()
            kl += kl_standard_normal(mu, logvar).sum().item()
            count += images.shape[0]
        pixels = 3 * self.cfg.data.image_size ** 2
        return {"recon_mse": squared_error / (count * pixels), "kl": kl / count}

    def draw_samples(self, n: int, seed: int, label: int | None, photos: torch.Tensor | None) -> torch.Tensor:
        """The decoder on prior z drawn from `seed`, with class `label` (an index into
        data.class_names) when the model is conditional."""
        z = torch.randn(n, self.cfg.model.latent_dim, generator=torch.Generator().manual_seed(seed))  # (n, D)
        labels = None
        if self.num_classes:
            if label is None or not 0 <= label < self.num_classes:
                raise ValueError(f"This VAE is conditional: give a class label 0..{self.num_classes - 1} "
                                 f"({', '.join(self.data.class_names)})")
            labels = torch.full((n,), label, dtype=torch.long)
        return to_uint8(self.decode(z, labels), value_range=(0, 1))

    def image_grids(self) -> dict[str, torch.Tensor]:
        """"prior": prior samples; when conditional, one row per class in class_names order (the
        grid's name lists them), every row decoding the same z, so rows differ by label alone.
        "reconstructions": held-out originals (top row) over their reconstructions (bottom row)."""
        k = self.cfg.logging.image_grid_size
        z, _ = self.prior_latents(k)
        if self.num_classes:
            labels = torch.arange(self.num_classes).repeat_interleave(k)         # (K * k,) row by row
            samples = self.decode(z.repeat(self.num_classes, 1), labels)        # (K * k, 3, H, W)
            samples_name = f"prior, rows: {', '.join(self.data.class_names)}"
        else:
            samples, samples_name = self.decode(z, None), "prior"

        images, labels = next(iter(self.holdout_loader()))
        images, labels = images[:k], labels[:k]
        x_hat = self.reconstruct(images, labels)[0].cpu()
        pairs = torch.cat([(images + 1) / 2, x_hat])                             # (2 * k', 3, H, W)
        return {samples_name: make_grid(samples, nrow=k),
                "reconstructions": make_grid(pairs, nrow=images.shape[0])}
