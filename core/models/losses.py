"""GAN losses as small stateless functions of discriminator logits.

Each loss is a pair: `d(real, fake)` for the discriminator (real, fake: its raw outputs on real and
generated images, any shape, e.g. PatchGAN grids (B, 1, h, w)) and `g(fake)` for the generator.
Every term is a mean over all logits, so the value does not depend on batch or patch-grid size.
These are the textbook forms (no 1/2 factors); a family that follows a paper's weighting (the
CycleGAN reference halves the discriminator loss) applies it itself.

    loss = get_loss("lsgan")
    loss.d(D(real), D(fake.detach())), loss.g(D(fake))
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


# LSGAN (Mao et al. 2017): least squares to the labels 1 (real) and 0 (fake). CycleGAN's default.
def lsgan_d(real: Tensor, fake: Tensor) -> Tensor:
    return (real - 1).square().mean() + fake.square().mean()


def lsgan_g(fake: Tensor) -> Tensor:
    return (fake - 1).square().mean()


# Non-saturating GAN (Goodfellow et al. 2014): binary cross-entropy on logits.
# softplus(-x) = -log(sigmoid(x)) and softplus(x) = -log(1 - sigmoid(x)), computed stably.
def bce_d(real: Tensor, fake: Tensor) -> Tensor:
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def bce_g(fake: Tensor) -> Tensor:
    return F.softplus(-fake).mean()


# Hinge loss (Lim & Ye 2017; SAGAN, BigGAN).
def hinge_d(real: Tensor, fake: Tensor) -> Tensor:
    return F.relu(1 - real).mean() + F.relu(1 + fake).mean()


def hinge_g(fake: Tensor) -> Tensor:
    return -fake.mean()


# Wasserstein critic loss (Arjovsky et al. 2017); needs a Lipschitz constraint (gradient penalty).
def wgan_d(real: Tensor, fake: Tensor) -> Tensor:
    return fake.mean() - real.mean()


def wgan_g(fake: Tensor) -> Tensor:
    return -fake.mean()


class GANLoss(NamedTuple):
    d: Callable[[Tensor, Tensor], Tensor]   # (real_logits, fake_logits) -> discriminator loss
    g: Callable[[Tensor], Tensor]           # fake_logits -> generator loss


GAN_LOSSES: dict[str, GANLoss] = {
    "lsgan": GANLoss(lsgan_d, lsgan_g),
    "bce": GANLoss(bce_d, bce_g),
    "hinge": GANLoss(hinge_d, hinge_g),
    "wgan": GANLoss(wgan_d, wgan_g),
}


def get_loss(name: str) -> GANLoss:
    if name not in GAN_LOSSES:
        raise ValueError(f"Unknown GAN loss {name!r}. Valid: {', '.join(GAN_LOSSES)}")
    return GAN_LOSSES[name]


# Gradient penalty (Gulrajani et al. 2017, WGAN-GP): a soft 1-Lipschitz constraint on the critic.
def gradient_penalty(critic: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor) -> Tensor:
    """E[(||grad_x D(x)||_2 - 1)^2] at x = a * real + (1 - a) * fake, a ~ U[0, 1] per image (torch
    global RNG). D(x) is the mean of the critic's outputs for image x (one per image, or one per
    patch: the losses' reduction). Unweighted: the caller multiplies by lambda (paper: 10). The graph
    is kept (create_graph) so that backward() reaches the critic's weights through the gradient."""
    fake = fake.detach().to(real.dtype)
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    mixed = torch.lerp(fake, real.detach(), alpha).requires_grad_(True)    # (B, C, H, W)
    scores = critic(mixed).reshape(len(mixed), -1).mean(1)                 # (B,)
    grad, = torch.autograd.grad(scores.sum(), mixed, create_graph=True)    # (B, C, H, W)
    return (grad.flatten(1).float().norm(dim=1) - 1).square().mean()
