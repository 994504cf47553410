"""The wgan_gp family (core/models/wgan_gp.py, gan_nets.py, losses.gradient_penalty) on CPU at 32 px."""

import dataclasses
import itertools
import math

import pytest
import torch
from torch import nn

from core.config import ConfigError, build_config
from core.models import gan_nets
from core.models.blocks import PatchDiscriminator
from core.models.losses import gradient_penalty
from core.models.wgan_gp import CRITICS, GENERATORS, LOSSES, SAMPLE_SEED, WGANGP, Config, build_critic

TINY = {"latent_dim": 8, "ngf": 4, "ndf": 4, "unet_bottleneck": 8}


def make_cfg(tiny_data, batch_size=2, **model):
    return build_config({"name": "t", "family": "wgan_gp",
                         "data": {"source": "builtin", "image_size": tiny_data.image_size,
                                  "load_size": tiny_data.load_size},
                         "train": {"batch_size": batch_size}, "logging": {"image_grid_size": 3},
                         "model": TINY | model})


def make_family(tiny_data, seed=0, batch_size=2, **model):
    torch.manual_seed(seed)   # the trainable seeds the global RNG before building a family
    return WGANGP(make_cfg(tiny_data, batch_size, **model), tiny_data, torch.device("cpu"))


def first_batch(family, epoch_seed=0):
    return next(iter(family.make_loader(torch.Generator().manual_seed(epoch_seed))))


def params(net):
    return [p.detach().clone() for p in net.parameters()]


# --- Networks ------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("kind", GENERATORS)
def test_generators_make_images_in_range(kind, size):
    torch.manual_seed(0)
    net = (gan_nets.UNetGenerator(8, size, 4, 4, "batch", True) if kind == "unet"
           else gan_nets.ResNetGenerator(8, size, 4, "batch", True))
    images = net(torch.randn(3, 8))
    assert images.shape == (3, 3, size, size)
    assert images.min() >= -1 and images.max() <= 1


@pytest.mark.parametrize("size", [128, 256])
def test_generators_and_critic_shapes_at_large_sizes(size):
    z = torch.randn(1, 4)
    assert gan_nets.UNetGenerator(4, size, 2, 8, "none", False)(z).shape == (1, 3, size, size)
    assert gan_nets.ResNetGenerator(4, size, 2, "batch", False).eval()(z).shape == (1, 3, size, size)
    assert gan_nets.DCGANCritic(size, 2, "layer")(torch.zeros(2, 3, size, size)).shape == (2,)


def test_generator_widths_follow_the_documented_rule():
    # ResNet at 32 px: k = log2(32/4) = 3 up-blocks; the 4x4 map has ngf * min(2^3, 8) channels.
    net = gan_nets.ResNetGenerator(8, 32, 4, "batch", False)
    assert net.dense.out_features == 4 * 8 * 16
    assert [b.main[3].out_channels for b in net.blocks] == [16, 8, 4]
    # U-Net at 32 px, bottleneck 8 px: depth 2, canvas 8x8 px of ngf channels, bottleneck ngf * 4 channels.
    unet = gan_nets.UNetGenerator(8, 32, 4, 8, "batch", False)
    assert len(unet.encoder) == len(unet.decoder) == 2
    assert unet.dense.out_features == 4 * 8 * 8
    assert unet.bottleneck[1][0].out_channels == 16


def test_bad_image_sizes_are_rejected_with_the_fix():
    with pytest.raises(ValueError, match="power of two"):
        gan_nets.ResNetGenerator(8, 48, 4, "batch", False)
    with pytest.raises(ValueError, match="unet_bottleneck=32"):
        gan_nets.UNetGenerator(8, 32, 4, 32, "batch", False)
    with pytest.raises(ValueError, match="n_layers_d"):   # 16 px: 3 stride-2 layers leave no patch
        build_critic(Config(critic="patchgan", norm_d="instance", n_layers_d=3), 16)


# --- Gradient penalty ----------------------------------------------------------------------------


def test_gradient_penalty_of_a_linear_critic_is_exact():
    # D(x) = <w, x>: the gradient is w everywhere, so GP = (||w|| - 1)^2 whatever the interpolation.
    torch.manual_seed(0)
    w = torch.randn(3, 4, 4)
    w = 3.0 * w / w.norm()                       # ||w|| = 3 -> GP = 4
    critic = lambda x: (x * w).flatten(1).sum(1)  # noqa: E731
    real, fake = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    assert gradient_penalty(critic, real, fake).item() == pytest.approx(4.0, rel=1e-5)


def test_gradient_penalty_averages_patch_scores_per_image():
    # A 2x2 "patch grid" c * x[:, 0, :2, :2]: its per-image mean has gradient c/4 at 4 pixels,
    # norm c/4 * 2 = c/2; c = 6 -> GP = (3 - 1)^2 = 4.
    critic = lambda x: 6.0 * x[:, :1, :2, :2]  # noqa: E731
    assert gradient_penalty(critic, torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4)).item() == pytest.approx(4.0)


def test_gradient_penalty_of_a_quadratic_critic_and_its_gradient():
    # D(x) = sum(x^2): gradient 2x. With real == fake every interpolate is x, so
    # GP = mean_b (2 ||x_b|| - 1)^2, computed here directly.
    x = torch.randn(4, 3, 4, 4)
    expected = ((2 * x.flatten(1).norm(dim=1) - 1) ** 2).mean()
    critic = lambda v: v.square().flatten(1).sum(1)  # noqa: E731
    assert gradient_penalty(critic, x, x.clone()).item() == pytest.approx(expected.item(), rel=1e-5)

    # The penalty is differentiable in the critic's weights: for D(x) = <w, x> (a Linear layer),
    # d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||.
    linear = nn.Linear(48, 1, bias=False)
    gp = gradient_penalty(lambda v: linear(v.flatten(1)), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4))
    gp.backward()
    w = linear.weight.detach()
    torch.testing.assert_close(linear.weight.grad, 2 * (w.norm() - 1) * w / w.norm())


# --- Config --------------------------------------------------------------------------------------


@pytest.mark.parametrize("model, message", [
    ({"norm_d": "batch", "loss": "wgan-gp"}, "batch norm"),
    ({"g_steps": 0}, "model.g_steps must be >= 1"),
    ({"d_steps": 0}, "model.d_steps must be >= 1"),
    ({"betas_g": [0.0, 1.0]}, r"model.betas_g must be a pair \[beta1, beta2\]"),
    ({"gd_ratio": "1:5"}, "model.gd_ratio was renamed: use model.g_steps and model.d_steps"),
    ({"gp_lambda": 5.0}, "model.gp_lambda was renamed: use model.lambda_gp"),
    ({"beta1_g": 0.5}, "model.beta1_g was renamed: use model.betas_g"),
    ({"critic": "patchgan", "norm_d": "layer"}, "norm_d: instance"),
    ({"loss": "wgan"}, "wgan-gp, bce, hinge, lsgan"),
    ({"ema_decay": 1.0}, "ema_decay"),
    ({"unet_bottleneck": 6}, "unet_bottleneck"),
])
def test_config_rejects_impossible_settings(model, message):
    with pytest.raises(ConfigError, match=message):
        build_config({"name": "t", "family": "wgan_gp", "model": model})


def test_batch_norm_critic_is_fine_without_gradient_penalty():
    build_config({"name": "t", "family": "wgan_gp", "model": {"norm_d": "batch", "loss": "bce"}})


# --- Training ------------------------------------------------------------------------------------


@pytest.mark.parametrize("generator, critic, loss", list(itertools.product(GENERATORS, CRITICS, LOSSES)))
def test_every_combination_takes_a_training_step(tiny_data, generator, critic, loss):
    family = make_family(tiny_data, generator=generator, critic=critic, loss=loss, d_steps=1,
                         norm_d="instance", spectral_norm_d=True, spectral_norm_g=True, grad_clip=1.0)
    if critic == "patchgan":
        assert isinstance(family.D, PatchDiscriminator)
    before_g, before_d = params(family.G), params(family.D)
    losses = family.train_step(first_batch(family))
    expected = {"loss_d", "loss_g", "wasserstein", "grad_norm_d", "grad_norm_g"}
    expected |= {"gp"} if loss == "wgan-gp" else set()
    assert set(losses) == expected
    assert all(math.isfinite(v) for v in losses.values())
    assert any(not torch.equal(a, b) for a, b in zip(before_g, params(family.G)))
    assert any(not torch.equal(a, b) for a, b in zip(before_d, params(family.D)))


def test_wasserstein_estimate_is_the_score_gap(tiny_data):
    # The reported values come from the weights before the step's update: recompute them with the
    # same noise (the step's first draw from the global RNG).
    family = make_family(tiny_data, d_steps=1, loss="wgan-gp")
    batch = first_batch(family)
    torch.manual_seed(5)
    z = torch.randn(2, TINY["latent_dim"])
    with torch.no_grad():
        expected = family.D(batch[0]).mean() - family.D(family.G(z)).mean()
    torch.manual_seed(5)
    losses = family.train_step(batch)
    assert losses["wasserstein"] == pytest.approx(expected.item(), rel=1e-4, abs=1e-5)
    assert losses["loss_d"] == pytest.approx(-expected.item(), rel=1e-4, abs=1e-5)   # wgan: E D(fake) - E D(real)


@pytest.mark.parametrize("g_steps, d_steps", [(1, 5), (2, 1)])
def test_run_frequency_steps_each_network_as_configured(tiny_data, g_steps, d_steps):
    family = make_family(tiny_data, g_steps=g_steps, d_steps=d_steps)
    counts = {"g": 0, "d": 0}
    family.opt_g.register_step_post_hook(lambda *_: counts.__setitem__("g", counts["g"] + 1))
    family.opt_d.register_step_post_hook(lambda *_: counts.__setitem__("d", counts["d"] + 1))
    loader = family.make_loader(torch.Generator().manual_seed(0))
    # An epoch has len(train/monet) // B iterations whatever the step counts; each brings d_steps batches.
    assert len(loader) == tiny_data.count("train/monet") // 2
    seen = []   # every image batch the critic scores
    family.D.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    batches = iter(loader)
    for _ in range(2):
        batch = next(batches)
        assert batch[0].shape == (d_steps * 2, 3, 32, 32)
        family.train_step(batch)
        # Each critic step scored its own part of the iteration's real images.
        for chunk in batch[0].split(2):
            assert any(torch.equal(chunk, x) for x in seen)
    assert counts == {"g": 2 * g_steps, "d": 2 * d_steps}
    assert family.G_ema.n_averaged.item() == 2 * g_steps   # the EMA follows every generator step


def test_ema_follows_the_warmed_up_decay_and_is_what_generate_samples(tiny_data):
    family = make_family(tiny_data, d_steps=1, ema_decay=0.999, norm_g="none")
    batches = iter(family.make_loader(torch.Generator().manual_seed(0)))
    family.train_step(next(batches))
    after_1 = params(family.G)
    family.train_step(next(batches))
    after_2 = params(family.G)
    # First update copies; the second uses decay min(0.999, (1 + 1) / (10 + 1)) = 2/11.
    for ema, p1, p2 in zip(family.G_ema.module.parameters(), after_1, after_2):
        torch.testing.assert_close(ema.detach(), p1 + (1 - 2 / 11) * (p2 - p1))

    z = torch.randn(5, TINY["latent_dim"], generator=torch.Generator().manual_seed(SAMPLE_SEED))
    with torch.no_grad():
        ema_images = ((family.G_ema.module(z) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        raw_images = ((family.G.eval()(z) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    family.G.train()
    rng = torch.get_rng_state()
    generated = torch.cat(list(family.generate(5, 2)))
    assert torch.equal(torch.get_rng_state(), rng)       # independent of the global RNG
    assert generated.dtype == torch.uint8 and generated.shape == (5, 3, 32, 32)
    assert torch.equal(generated, ema_images)
    assert not torch.equal(generated, raw_images)
    assert torch.equal(torch.cat(list(family.generate(5, 5))), generated)   # batch size does not matter


def test_image_grid_shows_ema_and_raw_rows(tiny_data):
    family = make_family(tiny_data)
    family.train_step(first_batch(family))
    grid = family.image_grids()["ema_vs_raw"]
    assert grid.shape == (3, 2 * 32 + 3 * 2, 3 * 32 + 4 * 2)   # 2 rows x 3 columns, 2 px padding
    assert grid.min() >= 0 and grid.max() <= 1
    assert family.G.training and not family.G_ema.training   # modes restored


def test_set_hparams_applies_steps_and_gp_weight_and_refuses_architecture(tiny_data):
    # PBT: g_steps/d_steps and lambda_gp are read at every step, so a mutation applies at once.
    family = make_family(tiny_data)
    family.set_hparams(dataclasses.replace(family.cfg.model, g_steps=2, d_steps=1, lambda_gp=3.0))
    counts = {"g": 0, "d": 0}
    family.opt_g.register_step_post_hook(lambda *_: counts.__setitem__("g", counts["g"] + 1))
    family.opt_d.register_step_post_hook(lambda *_: counts.__setitem__("d", counts["d"] + 1))
    family.train_step(first_batch(family))
    assert counts == {"g": 2, "d": 1}
    with pytest.raises(ConfigError, match="model.ngf cannot change during training"):
        family.set_hparams(dataclasses.replace(family.cfg.model, ngf=8))


def test_sample_refuses_labels_and_photos(tiny_data):
    family = make_family(tiny_data)
    assert family.sample(2, seed=1).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="not conditional on class labels"):
        family.sample(2, label=0)
    with pytest.raises(ValueError, match="does not translate photos"):
        family.sample(2, photos=torch.zeros(2, 3, 32, 32))
