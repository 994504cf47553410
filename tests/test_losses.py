"""Every searched loss weight reaches the loss that is back-propagated.

For CycleGAN's lambda_cycle and lambda_identity, WGAN-GP's lambda_gp and the beta-VAE's scheduled
KL weight, the test recomputes the whole loss of one train_step by hand, with torch ops on copies
of the family's own networks and the same batch (and the same RNG draws), and compares both the
reported loss terms and the gradients the optimizer steps with against that hand-made loss. The
weights are non-default values, so a weight hard-coded to its default, dropped from the total or
applied only to the logged number fails."""

import copy

import pytest
import torch
from torch.nn.functional import l1_loss

from core.config import build_config
from core.models import get_family
from test_trainable import tiny_experiment


def build_family(space: str, tiny_data, **overrides):
    # search.baseline off: the non-default weights may lie outside the space's searched ranges.
    cfg = build_config(tiny_experiment(space, tiny_data, **{"search.baseline": "false", **overrides}))
    torch.manual_seed(0)
    return get_family(cfg.family)(cfg, tiny_data, torch.device("cpu"))


def record_gradients(optimizer) -> list[list[torch.Tensor]]:
    """Each call of optimizer.step() appends the gradients it steps with (parameter order)."""
    calls, step = [], optimizer.step

    def recording_step(*args, **kwargs):
        calls.append([p.grad.detach().clone() for group in optimizer.param_groups for p in group["params"]])
        return step(*args, **kwargs)

    optimizer.step = recording_step
    return calls


def gradients_of(loss: torch.Tensor, optimizer) -> list[torch.Tensor]:
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return list(torch.autograd.grad(loss, params, allow_unused=False))


def assert_close_gradients(actual, expected):
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-6, msg=lambda m: f"parameter {i}: {m}")


# --- CycleGAN: lambda_cycle and lambda_identity (relative to lambda_cycle) ------------------------


@pytest.mark.parametrize("lambda_cycle, lambda_identity", [(3.0, 0.3), (7.0, 0.0)])
def test_cyclegan_generator_loss_is_weighted_by_lambda_cycle_and_lambda_identity(tiny_data, lambda_cycle,
                                                                                 lambda_identity):
    family = build_family("cyclegan_builtin.yaml", tiny_data, **{"model.lambda_cycle": lambda_cycle,
                                                           "model.lambda_identity": lambda_identity})
    batch = next(iter(family.make_loader(torch.Generator().manual_seed(0))))
    photo, monet = batch["photo"], batch["monet"]          # (B, 3, 32, 32) in [-1, 1]
    G, F, D_monet, D_photo = (copy.deepcopy(getattr(family, n)) for n in ("G", "F", "D_monet", "D_photo"))
    steps = record_gradients(family.opt_g)

    losses = family.train_step(batch)

    # The paper's generator loss, by hand (LSGAN: (D(fake) - 1)^2; L1 means over all pixels).
    fake_monet, fake_photo = G(photo), F(monet)
    gan = (D_monet(fake_monet) - 1).square().mean() + (D_photo(fake_photo) - 1).square().mean()
    cycle = (F(fake_monet) - photo).abs().mean() + (G(fake_photo) - monet).abs().mean()
    identity = (G(monet) - monet).abs().mean() + (F(photo) - photo).abs().mean()
    total = gan + lambda_cycle * cycle + lambda_identity * lambda_cycle * identity

    assert losses["loss_cycle"] == pytest.approx(lambda_cycle * cycle.item(), rel=1e-5)
    assert losses["loss_identity"] == pytest.approx(lambda_identity * lambda_cycle * identity.item(), rel=1e-5,
                                                    abs=1e-7)
    assert losses["loss_g"] == pytest.approx(total.item(), rel=1e-5)
    # The optimizer steps G and F with the gradients of exactly that loss (same parameter order:
    # G's, then F's).
    params = [*G.parameters(), *F.parameters()]
    expected = torch.autograd.grad(total, params)
    assert_close_gradients(steps[0], expected)


# --- WGAN-GP: lambda_gp -----------------------------------------------------------------------------


def test_wgan_gp_critic_loss_adds_lambda_gp_times_the_gradient_penalty(tiny_data):
    lambda_gp = 3.7   # not the paper's 10
    family = build_family("wgan_gp_builtin.yaml", tiny_data, **{
        "model.loss": "wgan-gp", "model.lambda_gp": lambda_gp, "model.d_steps": 1, "model.g_steps": 1,
        "model.grad_clip": "null", "model.spectral_norm_d": "false"})
    batch = next(iter(family.make_loader(torch.Generator().manual_seed(0))))
    real, batch_size = batch[0], family.cfg.train.batch_size   # d_steps 1: one critic batch (B, 3, 32, 32)
    G, D = copy.deepcopy(family.G), copy.deepcopy(family.D)
    steps = record_gradients(family.opt_d)

    torch.manual_seed(123)
    losses = family.train_step(batch)

    # The same RNG draws in the same order: z for the fakes, then the interpolation weights.
    torch.manual_seed(123)
    z = torch.randn(batch_size, family.cfg.model.latent_dim)
    with torch.no_grad():
        fake = G(z)                                                          # (B, 3, 32, 32)
    alpha = torch.rand(batch_size, 1, 1, 1)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    scores = D(mixed).reshape(batch_size, -1).mean(1)                        # (B,)
    grad, = torch.autograd.grad(scores.sum(), mixed, create_graph=True)
    penalty = (grad.flatten(1).norm(dim=1) - 1).square().mean()
    wasserstein_loss = D(fake).mean() - D(real).mean()
    total = wasserstein_loss + lambda_gp * penalty

    assert losses["gp"] == pytest.approx(penalty.item(), rel=1e-4)
    assert losses["loss_d"] == pytest.approx(wasserstein_loss.item(), rel=1e-4, abs=1e-6)
    expected = torch.autograd.grad(total, list(D.parameters()))
    assert_close_gradients(steps[0], expected)


# --- beta-VAE: the scheduled KL weight ---------------------------------------------------------------


def test_vae_loss_weights_the_kl_by_the_scheduled_beta(tiny_data):
    beta, warmup = 2.5, 4   # linear warm-up: epoch 2 trains with beta * 2 / 4 = 1.25
    family = build_family("vae_builtin.yaml", tiny_data, **{
        "model.beta": beta, "model.beta_schedule": "linear", "model.beta_warmup": warmup,
        "model.conditional": "false"})
    family.end_epoch(0)
    family.end_epoch(1)
    batch = next(iter(family.make_loader(torch.Generator().manual_seed(0))))
    x = batch[0]                                                             # (B, 3, 32, 32) in [-1, 1]
    encoder, decoder = copy.deepcopy(family.encoder), copy.deepcopy(family.decoder)
    steps = record_gradients(family.optimizer)

    torch.manual_seed(5)
    losses = family.train_step(batch)

    torch.manual_seed(5)
    mu, logvar = encoder(x)                                                  # (B, D) each
    z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
    x_hat = decoder(z)                                                       # (B, 3, 32, 32) in [0, 1]
    recon = (x_hat - (x + 1) / 2).square().flatten(1).sum(1).mean()          # per-image sum, batch mean
    kl = (0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(1)).mean()
    scheduled = beta * 2 / warmup
    total = recon + scheduled * kl

    assert losses["beta"] == pytest.approx(scheduled)
    assert losses["loss_kl"] == pytest.approx(kl.item(), rel=1e-4)
    assert losses["loss"] == pytest.approx(total.item(), rel=1e-5)
    expected = torch.autograd.grad(total, [*encoder.parameters(), *decoder.parameters()])
    assert_close_gradients(steps[0], expected)


# --- The GAN losses themselves ------------------------------------------------------------------------


def test_every_gan_loss_is_its_textbook_formula():
    """On fixed logits of both signs (a (2, 1, 2, 2) patch grid), each loss against its formula
    evaluated with Python's math, one logit at a time."""
    import math

    from core.models.losses import GAN_LOSSES

    real = torch.tensor([0.7, -1.3, 2.0, 0.1, -0.4, 1.1, 0.0, 3.0]).reshape(2, 1, 2, 2)
    fake = torch.tensor([-0.2, 1.5, -2.5, 0.3, 0.9, -1.0, 0.6, -0.05]).reshape(2, 1, 2, 2)
    r, f = real.flatten().tolist(), fake.flatten().tolist()
    mean = lambda values: sum(values) / len(values)   # noqa: E731
    softplus = lambda x: math.log1p(math.exp(x))      # noqa: E731
    expected = {
        "lsgan": (mean([(x - 1) ** 2 for x in r]) + mean([x ** 2 for x in f]), mean([(x - 1) ** 2 for x in f])),
        "bce": (mean([softplus(-x) for x in r]) + mean([softplus(x) for x in f]), mean([softplus(-x) for x in f])),
        "hinge": (mean([max(0.0, 1 - x) for x in r]) + mean([max(0.0, 1 + x) for x in f]), -mean(f)),
        "wgan": (mean(f) - mean(r), -mean(f)),
    }
    assert set(GAN_LOSSES) == set(expected)
    for name, (d, g) in expected.items():
        loss = GAN_LOSSES[name]
        assert loss.d(real, fake).item() == pytest.approx(d, rel=1e-6), f"{name} discriminator"
        assert loss.g(fake).item() == pytest.approx(g, rel=1e-6), f"{name} generator"


def test_gradient_penalty_of_a_linear_critic_is_the_squared_distance_of_its_weight_norm_from_one():
    """D(x) = mean over 4 patches of <w_p, x>: its gradient is (w_1 + ... + w_4) / 4 at every x,
    whatever the interpolation, so the penalty is (||w_1 + ... + w_4|| / 4 - 1)^2 exactly."""
    from core.models.losses import gradient_penalty

    torch.manual_seed(0)
    w = torch.randn(4, 3, 4, 4)                                    # one weight image per patch
    critic = lambda x: torch.einsum("bchw,pchw->bp", x, w).reshape(len(x), 1, 2, 2)   # noqa: E731
    real, fake = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4)
    expected = (w.mean(0).norm().item() - 1) ** 2
    assert gradient_penalty(critic, real, fake).item() == pytest.approx(expected, rel=1e-5)


def test_an_unknown_gan_loss_is_named_with_the_valid_ones():
    from core.models.losses import get_loss

    with pytest.raises(ValueError, match=r"^Unknown GAN loss 'lsgn'\. Valid: lsgan, bce, hinge, wgan$"):
        get_loss("lsgn")
