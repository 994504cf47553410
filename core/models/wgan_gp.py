"""The `wgan_gp` family: Monet paintings generated from noise by a GAN (seeds 001 and 002).

Seed 001 trained a WGAN-GP with a U-Net-like generator and could not find a generator:critic run
frequency that let the generator develop; seed 002 trained a spectral-norm ResNet GAN with BCE, a 10x
learning-rate gap and gradient clipping. This family makes all of those choices searchable
(`Config` below) and logs what is needed to see why a generator stalls.

One iteration (`train_step`) with g = `g_steps`, d = `d_steps` (the paper's n_critic = 5 is g_steps 1,
d_steps 5):
  1. d critic steps. Each takes its own batch of B = train.batch_size real Monet images and fresh noise:
     the loader yields d * B images per iteration, split into d batches. An epoch has
     len(train/monet) // B iterations whatever the step counts (see `make_loader`).
  2. g generator steps, each on fresh noise (the generator never sees real images), each followed by
     an update of the exponential moving average (EMA) of the generator's weights.
Critic first, as in the WGAN-GP paper (Gulrajani et al. 2017, Algorithm 1).

Logged per iteration (means over the iteration's steps): loss_d (without the penalty), loss_g,
wasserstein (mean D(real) - mean D(fake): the critic's Wasserstein estimate under wgan-gp; for the
other losses the same gap of raw scores), gp (the unweighted gradient penalty, wgan-gp only), and
grad_norm_d / grad_norm_g (each network's gradient L2 norm before clipping). A critic whose
wasserstein estimate keeps growing while grad_norm_g collapses toward 0 is starving the generator.

Samples for FID (`generate`) and the TensorBoard grid come from the EMA generator in eval mode
(batch norm uses running statistics), with noise from fixed-seed generators: they never touch the
global RNG, and a sample does not depend on the batch size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torchvision
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, RandomSampler

from core.data import ImageDataset, train_transform
from core.models import blocks, gan_nets
from core.models.base import Family, betas_errors, register_family
from core.metrics import to_uint8
from core.models.blocks import PatchDiscriminator, patch_output_size
from core.models.losses import get_loss, gradient_penalty

GENERATORS = ("resnet", "unet")
CRITICS = ("dcgan", "patchgan")
LOSSES = ("wgan-gp", "bce", "hinge", "lsgan")   # wgan-gp = the wgan losses + gradient penalty
SAMPLE_SEED = 2024   # noise of generate(): the same images are scored at every evaluation
GRID_SEED = 7        # noise of the TensorBoard grid: the same latent vectors at every epoch


@dataclass
class Config:
    generator: str = "resnet"            # resnet (seed 002: dense to 4x4, residual up-sampling) | unet (seed 001)
    critic: str = "dcgan"                # dcgan (one score per image) | patchgan (one score per patch)
    latent_dim: int = 128                # length of the noise vector z ~ N(0, I)
    ngf: int = 64                        # generator width: channels at full resolution (x2 per halving, max x8)
    ndf: int = 64                        # critic width: channels of its first layer (x2 per halving, max x8)
    unet_bottleneck: int = 8             # unet: bottleneck (and noise canvas) side in px; log2(size/it) poolings
    n_layers_d: int = 3                  # patchgan: stride-2 layers (3 = 70x70 px patches)
    norm_g: str = "batch"                # generator normalization: batch | instance | none
    norm_d: str = "layer"                # critic norm: layer (dcgan only) | instance | none | batch (not wgan-gp)
    spectral_norm_g: bool = False        # spectral norm on the generator's first (dense) and last layer (seed 002)
    spectral_norm_d: bool = False        # spectral norm on every critic layer (seed 002)
    loss: str = "wgan-gp"                # wgan-gp | bce (non-saturating, from logits) | hinge | lsgan
    lambda_gp: float = 10.0              # wgan-gp: weight of the gradient penalty (paper: 10)
    g_steps: int = 1                     # generator steps per iteration ...
    d_steps: int = 5                     # ... and critic steps per iteration (paper: n_critic = 5)
    lr_g: float = 1e-4                   # generator Adam learning rate (WGAN-GP paper: 1e-4)
    lr_d: float = 1e-4                   # critic Adam learning rate (seed 002: 10x below lr_g)
    betas_g: list[float] = field(default_factory=lambda: [0.0, 0.9])   # generator Adam betas (WGAN-GP paper;
                                                                       #   DCGAN: [0.5, 0.999])
    betas_d: list[float] = field(default_factory=lambda: [0.0, 0.9])   # critic Adam betas
    grad_clip: float | None = None       # max gradient L2 norm per network and step (seed 002: 1.0); None = off
    ema_decay: float = 0.999             # generator EMA decay; after t updates min(it, (1+t)/(10+t)); 0 = off

    def validate(self) -> list[str]:
        errors = []
        for name, value, valid in [("generator", self.generator, GENERATORS), ("critic", self.critic, CRITICS),
                                   ("loss", self.loss, LOSSES), ("norm_g", self.norm_g, blocks.NORMS),
                                   ("norm_d", self.norm_d, gan_nets.NORMS)]:
            if value not in valid:
                errors.append(f"model.{name} must be one of {', '.join(valid)}, got {value!r}")
        if self.critic == "patchgan" and self.norm_d == "layer":
            errors.append("model.critic=patchgan (core.models.blocks.PatchDiscriminator) supports norm_d "
                          "instance, batch or none, not layer; set model.norm_d: instance")
        if self.norm_d == "batch" and self.loss == "wgan-gp":
            errors.append("model.norm_d=batch cannot be used with model.loss=wgan-gp: batch norm makes each "
                          "image's score depend on the rest of the batch, which breaks the per-image gradient "
                          "penalty. Use norm_d: layer, instance or none")
        for name in ("latent_dim", "ngf", "ndf", "n_layers_d", "g_steps", "d_steps"):
            if getattr(self, name) < 1:
                errors.append(f"model.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr_g", "lr_d", "lambda_gp"):
            if not getattr(self, name) > 0:
                errors.append(f"model.{name} must be > 0, got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            errors.append(f"model.ema_decay must be in [0, 1), got {self.ema_decay}")
        errors += betas_errors("betas_g", self.betas_g) + betas_errors("betas_d", self.betas_d)
        if self.unet_bottleneck < 2 or self.unet_bottleneck & (self.unet_bottleneck - 1):
            errors.append(f"model.unet_bottleneck must be a power of two >= 2 (px), got {self.unet_bottleneck}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            errors.append(f"model.grad_clip must be > 0 or null (no clipping), got {self.grad_clip}")
        return errors


def build_generator(m: Config, image_size: int) -> nn.Module:
    if m.generator == "unet":
        return gan_nets.UNetGenerator(m.latent_dim, image_size, m.ngf, m.unet_bottleneck, m.norm_g,
                                      m.spectral_norm_g)
    return gan_nets.ResNetGenerator(m.latent_dim, image_size, m.ngf, m.norm_g, m.spectral_norm_g)


def build_critic(m: Config, image_size: int) -> nn.Module:
    if m.critic == "patchgan":
        if patch_output_size(image_size, m.n_layers_d) < 1:
            raise ValueError(f"model.n_layers_d={m.n_layers_d} leaves no patch of a {image_size} px image; "
                             f"lower model.n_layers_d")
        critic = PatchDiscriminator(3, m.ndf, m.n_layers_d, m.norm_d)
    else:
        critic = gan_nets.DCGANCritic(image_size, m.ndf, m.norm_d)
    return gan_nets.apply_spectral_norm(critic) if m.spectral_norm_d else critic


@register_family("wgan_gp")
class WGANGP(Family):
    Config = Config
    network_names = ("G", "G_ema", "D")
    optimizer_keys = {"opt_g": ("lr_g", "betas_g"), "opt_d": ("lr_d", "betas_d")}
    architecture_keys = ("generator", "critic", "latent_dim", "ngf", "ndf", "unet_bottleneck", "n_layers_d",
                         "norm_g", "norm_d", "spectral_norm_g", "spectral_norm_d")
    tiny = {"latent_dim": 8, "ngf": 4, "ndf": 4, "unet_bottleneck": 8, "g_steps": 1, "d_steps": 2,
            "spectral_norm_d": True, "grad_clip": 5.0}   # the critic steps twice

    def build(self) -> None:
        m: Config = self.cfg.model
        self.G = build_generator(m, self.cfg.data.image_size).to(self.device)
        self.D = build_critic(m, self.cfg.data.image_size).to(self.device)
        # The EMA copy also averages buffers (batch-norm running statistics), and stays in eval mode:
        # it is only ever sampled. Its state holds the update count that warms up the decay.
        self.G_ema = AveragedModel(self.G, multi_avg_fn=self._ema_update, use_buffers=True).eval()
        self.opt_g = torch.optim.Adam(self.G.parameters())
        self.opt_d = torch.optim.Adam(self.D.parameters())

    # --- Training ---------------------------------------------------------------------------

    def make_loader(self, generator: torch.Generator) -> DataLoader:
        """An epoch has len(train/monet) // B iterations whatever d_steps (one pass over the data at
        d_steps 1), so trials with different step counts are compared by ASHA after the same number of
        iterations. Each iteration takes d_steps * B images; the sampler reshuffles after every pass, so
        the critic sees the data d_steps times an epoch."""
        d_steps, batch_size = self.cfg.model.d_steps, self.cfg.train.batch_size
        monets = ImageDataset(self.data, "train/monet", train_transform(self.cfg.data))
        if len(monets) < batch_size:
            raise ValueError(f"train.batch_size ({batch_size}) is larger than train/monet ({len(monets)} images); "
                             f"lower train.batch_size")
        iterations = len(monets) // batch_size
        sampler = RandomSampler(monets, num_samples=iterations * d_steps * batch_size, generator=generator)
        return self.data_loader(monets, batch_size=d_steps * batch_size, sampler=sampler, drop_last=True)

    def train_step(self, batch) -> dict[str, float]:
        m: Config = self.cfg.model
        batch_size = self.cfg.train.batch_size
        reals = batch[0].to(self.device, non_blocking=True).split(batch_size)  # d_steps x (B, 3, S, S)
        if len(reals) != m.d_steps:
            raise ValueError(f"train_step expects {m.d_steps} x {batch_size} images (make_loader's batches), "
                             f"got {len(batch[0])}")
        loss = get_loss(m.loss.removesuffix("-gp"))   # wgan-gp: the wgan losses

        # Critic steps.
        critic_stats = []
        for real in reals:
            z = torch.randn(batch_size, m.latent_dim, device=self.device)
            with torch.no_grad(), self.autocast():
                fake = self.G(z)                                    # (B, 3, S, S)
            with self.autocast():
                real_scores, fake_scores = self.D(real), self.D(fake)
                loss_d = loss.d(real_scores, fake_scores)
                gp = (gradient_penalty(self.D, real, fake) if m.loss == "wgan-gp"
                      else torch.zeros((), device=self.device))
            self.opt_d.zero_grad(set_to_none=True)
            (loss_d + m.lambda_gp * gp).backward()
            grad_norm = self._clip_gradients(self.D)
            self.opt_d.step()
            wasserstein = real_scores.detach().float().mean() - fake_scores.detach().float().mean()
            critic_stats.append(torch.stack([loss_d.detach().float(), gp.detach().float(), wasserstein, grad_norm]))

        # Generator steps. The critic's weights get no gradients here (saves their backward).
        generator_stats = []
        self.D.requires_grad_(False)
        for _ in range(m.g_steps):
            z = torch.randn(batch_size, m.latent_dim, device=self.device)
            with self.autocast():
                loss_g = loss.g(self.D(self.G(z)))
            self.opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            grad_norm = self._clip_gradients(self.G)
            self.opt_g.step()
            self.G_ema.update_parameters(self.G)
            generator_stats.append(torch.stack([loss_g.detach().float(), grad_norm]))
        self.D.requires_grad_(True)

        # One host-device sync per iteration.
        (loss_d, gp, wasserstein, grad_norm_d), (loss_g, grad_norm_g) = (
            torch.stack(s).mean(0).tolist() for s in (critic_stats, generator_stats))
        out = {"loss_d": loss_d, "loss_g": loss_g, "wasserstein": wasserstein,
               "grad_norm_d": grad_norm_d, "grad_norm_g": grad_norm_g}
        if m.loss == "wgan-gp":
            out["gp"] = gp
        return out

    def _clip_gradients(self, net: nn.Module) -> torch.Tensor:
        """The L2 norm of all of `net`'s gradients, before clipping it to model.grad_clip (when set)."""
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        if self.cfg.model.grad_clip is None:
            return torch.nn.utils.get_total_norm(grads).float()
        return torch.nn.utils.clip_grad_norm_(net.parameters(), self.cfg.model.grad_clip).float()

    @torch.no_grad()
    def _ema_update(self, ema_params: list[torch.Tensor], params: list[torch.Tensor], n_averaged: torch.Tensor):
        """AveragedModel's multi_avg_fn: ema <- ema + (1 - decay) * (param - ema), with the decay warmed up
        as min(ema_decay, (1 + t) / (10 + t)) after t updates (TensorFlow's ExponentialMovingAverage
        num_updates), so that short runs do not average in their random initial weights. Integer
        buffers (batch norm's num_batches_tracked) are counters: copied."""
        if not torch.is_floating_point(ema_params[0]):
            for ema, param in zip(ema_params, params):
                ema.copy_(param)
            return
        decay = torch.clamp((1.0 + n_averaged) / (10.0 + n_averaged), max=self.cfg.model.ema_decay)
        weight = (1.0 - decay).to(ema_params[0].dtype)
        for ema, param in zip(ema_params, params):   # (torch's private _foreach_lerp_ does the same, fused)
            ema.lerp_(param, weight)

    # Learning rates are constant (the WGAN-GP paper's setup): the base class's lr_factor.

    # --- Evaluation -------------------------------------------------------------------------

    def generate(self, n: int, batch_size: int):
        """`n` samples of the EMA generator as uint8 (B, 3, S, S) CPU batches. All noise is drawn up
        front from a fixed seed, so the images depend neither on the global RNG nor on batch_size."""
        z_all = torch.randn(n, self.cfg.model.latent_dim, generator=torch.Generator().manual_seed(SAMPLE_SEED))
        for z in z_all.split(batch_size):
            with self.eval_mode(self.G_ema):
                images = to_uint8(self.G_ema(z.to(self.device)))
            yield images   # outside the `with`: the caller runs with its own grad mode meanwhile

    def draw_samples(self, n: int, seed: int, label: int | None, photos: torch.Tensor | None) -> torch.Tensor:
        """The EMA generator on z ~ N(0, I) drawn from `seed`."""
        z = torch.randn(n, self.cfg.model.latent_dim, generator=torch.Generator().manual_seed(seed))
        with self.eval_mode(self.G_ema):
            return to_uint8(self.G_ema(z.to(self.device)))

    def image_grids(self) -> dict[str, torch.Tensor]:
        """{"ema_vs_raw": top row from the EMA generator, bottom row from the raw generator (both in
        eval mode), the same fixed latent vector in each column}."""
        k = self.cfg.logging.image_grid_size
        z = torch.randn(k, self.cfg.model.latent_dim, generator=torch.Generator().manual_seed(GRID_SEED))
        z = z.to(self.device)
        with self.eval_mode(self.G_ema, self.G):
            rows = torch.cat([self.G_ema(z), self.G(z)])             # (2k, 3, S, S) in [-1, 1]
        return {"ema_vs_raw": torchvision.utils.make_grid((rows.float().cpu() + 1) / 2, nrow=k).clamp(0, 1)}
