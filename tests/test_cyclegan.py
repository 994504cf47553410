"""CycleGAN family and its shared pieces (blocks, GAN losses, image pool, LR schedule), on CPU at
tiny sizes. Expected values are worked out by hand or measured independently of the code under test."""

import dataclasses
import math
import random
import re

import pytest
import torch
from torch import nn

from core.config import ConfigError, build_config
from core.models.blocks import (BlockGenerator, BlockSpecError, ImagePool, PatchDiscriminator, ResidualBlock,
                                check_block_spec, linear_decay_factor, resnet_generator)
from core.models.cyclegan import Config, CycleGAN
from core.models.losses import GAN_LOSSES, get_loss

LOSS_KEYS = {"loss_g", "loss_g_gan", "loss_cycle", "loss_identity", "loss_d"}

UNET = [  # 32 px: enc1 (8 ch, 32 px) is concatenated into the decoder's double_conv (8 + 8 = 16 ch in)
    {"type": "double_conv", "out": 8, "save": "enc1"},
    {"type": "max_pool"},
    {"type": "double_conv", "out": 16, "save": "mid"},
    {"type": "residual", "skip": "mid", "skip_mode": "add"},
    {"type": "upsample_conv", "out": 8},
    {"type": "double_conv", "out": 8, "skip": "enc1"},
    {"type": "conv", "out": 3, "kernel": 1, "norm": False, "act": "tanh"},
]
OUT = {"type": "conv", "out": 3, "norm": False, "act": "tanh"}


# --- Networks ----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 64])
def test_generator_and_discriminator_shapes(size):
    x = torch.rand(2, 3, size, size) * 2 - 1
    y = resnet_generator(ngf=8, n_blocks=2)(x)
    assert y.shape == x.shape
    assert y.abs().max() <= 1   # tanh output
    # 70x70 PatchGAN: three k4/s2/p1 convs halve the size, two k4/s1/p1 convs each take 1 px off.
    logits = PatchDiscriminator(3, ndf=8, n_layers=3)(x)
    assert logits.shape == (2, 1, size // 8 - 2, size // 8 - 2)


def test_resnet_generator_follows_the_paper():
    # c7s1-8, d16, d32, R32 x 2, u16, u8, c7s1-3 (Zhu et al. 2017, appendix 7.2), ngf = 8.
    expected = [(nn.Conv2d, 3, 8, 7, 1), (nn.Conv2d, 8, 16, 3, 2), (nn.Conv2d, 16, 32, 3, 2),
                *[(nn.Conv2d, 32, 32, 3, 1)] * 4,
                (nn.ConvTranspose2d, 32, 16, 3, 2), (nn.ConvTranspose2d, 16, 8, 3, 2), (nn.Conv2d, 8, 3, 7, 1)]
    net = resnet_generator(ngf=8, n_blocks=2)
    convs = [(type(m), m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0])
             for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert convs == expected
    assert sum(isinstance(m, nn.ReflectionPad2d) for m in net.modules()) == 2 + 2 * 2   # c7s1 x2, 2 per R
    norms = [m for m in net.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert len(norms) == 3 + 2 * 2 + 2 and not any(m.affine or m.track_running_stats for m in norms)


def test_patchgan_receptive_field_is_70():
    # Measured, not computed from the layer list: the input pixels that one output logit depends
    # on are those with a nonzero gradient. Without norm layers (instance norm mixes all pixels).
    torch.manual_seed(0)
    net = PatchDiscriminator(3, ndf=4, n_layers=3, norm="none")
    x = torch.randn(1, 3, 128, 128, requires_grad=True)
    logits = net(x)                               # (1, 1, 14, 14)
    logits[0, 0, 7, 7].backward()
    rows, cols = torch.nonzero(x.grad.abs().sum(dim=(0, 1)), as_tuple=True)
    assert rows.max() - rows.min() + 1 == 70
    assert cols.max() - cols.min() + 1 == 70


def test_residual_block_count_follows_image_size():
    def count(n):
        return sum(isinstance(m, ResidualBlock) for m in resnet_generator(ngf=4, n_blocks=n).modules())

    assert Config().res_blocks(256) == 9 and count(9) == 9
    assert Config().res_blocks(512) == 9
    assert Config().res_blocks(128) == 6 and count(6) == 6
    assert Config().res_blocks(32) == 6
    assert Config(n_res_blocks=3).res_blocks(256) == 3
    assert count(0) == 0


def test_lego_generator_with_skip_connections():
    net = BlockGenerator(UNET, norm="instance")
    seen = {}

    def record(name):
        def hook(module, args):
            seen[name] = args[0].shape   # the input after the skip merge
        return hook

    net.blocks[5].register_forward_pre_hook(record("decoder_in"))
    net.blocks[3].register_forward_pre_hook(record("residual_in"))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = net(x)
    assert y.shape == (2, 3, 32, 32) and y.abs().max() <= 1
    assert seen["decoder_in"] == (2, 16, 32, 32)    # 8 upsampled + 8 from enc1 (cat)
    assert seen["residual_in"] == (2, 16, 16, 16)   # mid added: channels unchanged


def test_lego_skip_changes_the_output():
    # The same weights with and without the added skip give different outputs: the skip is wired in.
    spec = [{"type": "conv", "out": 4, "save": "a"}, {"type": "conv", "out": 4},
            {**OUT, "skip": "a", "skip_mode": "add"}]
    torch.manual_seed(0)
    with_skip = BlockGenerator(spec)
    without = BlockGenerator([spec[0], spec[1], OUT])
    without.load_state_dict(with_skip.state_dict())
    x = torch.rand(1, 3, 16, 16)
    assert not torch.allclose(with_skip(x), without(x))


@pytest.mark.parametrize("spec, message", [
    ([{"type": "convv", "out": 3}], "unknown type 'convv'. Valid types: conv, conv_transpose, upsample_conv, "
                                    "double_conv, residual, max_pool, avg_pool, dropout"),
    ([{"type": "conv", "kernel": 3}, OUT], "block 0 (conv): missing required key 'out'"),
    ([{"type": "conv", "out": 8, "kernal": 3}, OUT], "unknown key 'kernal'"),
    ([{"type": "conv", "out": "8"}, OUT], "out must be int, got '8'"),
    ([{"type": "conv", "out": 8, "act": "gelu"}, OUT], "act must be one of relu, leaky_relu, tanh, none"),
    ([{"type": "dropout", "p": 1.5}, OUT], "p must be in [0, 1), got 1.5"),
    ([{"type": "conv", "out": 8}, {**OUT, "skip": "enc"}], "skip 'enc' names no earlier block's `save`"),
    ([{"type": "conv", "out": 8, "save": "a"}, {"type": "conv", "out": 4}, {**OUT, "skip": "a", "skip_mode": "add"}],
     "skip_mode add needs equal channels"),
    ([{"type": "conv", "out": 8, "save": "a"}, {"type": "max_pool", "skip": "a"},
      {"type": "upsample_conv", "out": 3, "skip": "a", "norm": False, "act": "tanh"}], "saved at 1 of the input"),
    ([{"type": "conv", "out": 8, "kernel": 4}, OUT], "use an odd kernel"),
    ([{"type": "conv", "out": 8, "stride": 2}, OUT], "the output must have the input's size"),
    ([{"type": "conv", "out": 8}], "the last block must map to the image"),
    ([{"type": "conv", "out": 3}], "out: 3, act: tanh, norm: false"),
    ([], "non-empty list"),
    ("conv", "non-empty list"),
])
def test_lego_spec_errors_name_the_problem(spec, message):
    with pytest.raises(BlockSpecError) as err:
        check_block_spec(spec)
    assert message in str(err.value)


def test_lego_spec_reports_every_problem_at_once():
    with pytest.raises(BlockSpecError) as err:
        check_block_spec([{"type": "conv"}, {"type": "pool"}, OUT])
    assert "block 0 (conv): missing required key 'out'" in str(err.value)
    assert "block 1: unknown type 'pool'" in str(err.value)


@pytest.fixture
def block_registry(monkeypatch):
    """A copy of the block registry for one test (registrations do not leak into others)."""
    from core.models import blocks

    monkeypatch.setattr(blocks, "BLOCK_TYPES", dict(blocks.BLOCK_TYPES))
    return blocks


def test_a_block_type_is_added_in_one_place(block_registry):
    # One register_block call: its keys are checked, its shape rule plans the spec, its builder builds.
    block_registry.register_block("pixel_shuffle", {"factor": 2},
                                  output=lambda a, c, s: (c // a["factor"] ** 2, s * a["factor"]),
                                  build=lambda a, c_in, c_out, norm: nn.PixelShuffle(a["factor"]))
    spec = [{"type": "conv", "out": 12, "stride": 2}, {"type": "pixel_shuffle"}, OUT]
    plan = check_block_spec(spec)
    assert [(b.out_channels, b.scale) for b in plan] == [(12, 0.5), (3, 1), (3, 1)]
    x = torch.rand(1, 3, 8, 8) * 2 - 1
    assert BlockGenerator(spec)(x).shape == x.shape
    with pytest.raises(BlockSpecError, match="unknown key 'scale'. Valid keys for pixel_shuffle: factor"):
        check_block_spec([{"type": "pixel_shuffle", "scale": 2}, OUT])


def test_the_block_registry_checks_what_it_accepts(block_registry):
    def same(a, c, s):
        return c, s

    def build(a, c_in, c_out, norm):
        return nn.Identity()

    with pytest.raises(ValueError, match="'conv' is already registered"):
        block_registry.register_block("conv", {}, output=same, build=build)
    with pytest.raises(ValueError, match="not using type, save, skip, skip_mode"):
        block_registry.register_block("wired", {"skip": None}, output=same, build=build)
    with pytest.raises(TypeError, match="must be callables"):
        block_registry.register_block("nothing", {}, output=same, build=None)
    with pytest.raises(ValueError, match="map to the image only with out, act and norm"):
        block_registry.register_block("last", {"out": 3}, output=same, build=build, maps_to_image=True)


def test_every_block_type_is_documented():
    from core.models import blocks

    for name in blocks.BLOCK_TYPES:   # a line of the docstring's table: "    conv  out, kernel=3, ..."
        assert re.search(rf"^    (\w+, )*{name}\b", blocks.__doc__, re.MULTILINE), f"{name} is not documented"


# --- Losses ------------------------------------------------------------------------------------


def softplus(x):
    return math.log1p(math.exp(x))


REAL, FAKE = torch.tensor([2.0, 0.0]), torch.tensor([1.0, -3.0])
HAND = {  # (d(REAL, FAKE), g(FAKE)), from the textbook definitions
    "lsgan": (((2 - 1) ** 2 + (0 - 1) ** 2) / 2 + (1 ** 2 + 3 ** 2) / 2, ((1 - 1) ** 2 + (-3 - 1) ** 2) / 2),
    "bce": ((softplus(-2) + softplus(0)) / 2 + (softplus(1) + softplus(-3)) / 2, (softplus(-1) + softplus(3)) / 2),
    "hinge": ((max(0, 1 - 2) + max(0, 1 - 0)) / 2 + (max(0, 1 + 1) + max(0, 1 - 3)) / 2, -(1 - 3) / 2),
    "wgan": ((1 - 3) / 2 - (2 + 0) / 2, -(1 - 3) / 2),
}


@pytest.mark.parametrize("name", sorted(HAND))
def test_losses_match_hand_computed_values(name):
    loss = get_loss(name)
    d, g = HAND[name]
    assert loss.d(REAL, FAKE).item() == pytest.approx(d, rel=1e-6)
    assert loss.g(FAKE).item() == pytest.approx(g, rel=1e-6)
    # Means, not sums: repeating the batch (or a bigger patch grid) leaves the value unchanged.
    assert loss.d(REAL.repeat(3).view(3, 1, 1, 2), FAKE.repeat(3)).item() == pytest.approx(d, rel=1e-6)


def test_loss_registry_checks_names():
    assert set(GAN_LOSSES) == set(HAND)
    with pytest.raises(ValueError, match="Unknown GAN loss 'lsgann'. Valid: lsgan, bce, hinge, wgan"):
        get_loss("lsgann")


# --- Image pool --------------------------------------------------------------------------------


def pixels(*values):
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1, 1)   # (B, 1, 1, 1), one value each


def values(batch):
    return batch.flatten().tolist()


def test_image_pool_fills_then_mixes_fresh_and_stored():
    torch.manual_seed(0)
    pool = ImagePool(3)
    assert values(pool.query(pixels(0, 1))) == [0, 1]      # filling: returned as given
    assert values(pool.query(pixels(2))) == [2]
    assert sorted(values(torch.stack(pool.images))) == [0, 1, 2]

    fresh_returned = stored_returned = 0
    for step in range(200):
        before = sorted(values(torch.stack(pool.images)))
        new = 10.0 + step
        (out,) = values(pool.query(pixels(new)))
        after = sorted(values(torch.stack(pool.images)))
        # Nothing is lost or invented: pool + output is the old pool + the new image.
        assert sorted(after + [out]) == sorted(before + [new])
        fresh_returned += out == new
        stored_returned += out != new
    assert len(pool.images) == 3
    assert 70 <= stored_returned <= 130 and fresh_returned + stored_returned == 200   # p = 1/2


def test_image_pool_of_size_zero_passes_images_through():
    batch = torch.rand(4, 3, 2, 2)
    assert torch.equal(ImagePool(0).query(batch), batch)


def test_image_pool_uses_torch_rng_and_its_state_round_trips(tmp_path):
    pool = ImagePool(4)
    pool.query(torch.rand(6, 3, 2, 2))
    torch.save(pool.state_dict(), tmp_path / "pool.pt")
    copy = ImagePool(4)
    copy.load_state_dict(torch.load(tmp_path / "pool.pt", weights_only=True))
    assert all(torch.equal(a, b) for a, b in zip(pool.images, copy.images)) and len(copy.images) == 4

    batch = torch.rand(8, 3, 2, 2)
    torch.manual_seed(3)
    random.seed(1)
    expected = pool.query(batch)
    torch.manual_seed(3)
    random.seed(2)   # python's RNG must not matter
    assert torch.equal(copy.query(batch), expected)

    empty = ImagePool(4)
    empty.load_state_dict(ImagePool(4).state_dict())
    assert empty.images == []


# --- LR schedule -------------------------------------------------------------------------------


def test_linear_decay_schedule_by_hand():
    # wait 3, decay 4: epochs 0-2 at 1, then 1 - k/5 for k = 1..4, then the floor.
    assert [linear_decay_factor(e, 3, 4) for e in range(10)] == pytest.approx(
        [1, 1, 1, 0.8, 0.6, 0.4, 0.2, 0, 0, 0])
    # Floor 0.5: halfway between 1 and 0.5 at the same points.
    assert linear_decay_factor(3, 3, 4, 0.5) == pytest.approx(0.9)
    assert linear_decay_factor(100, 3, 4, 0.5) == pytest.approx(0.5)
    assert linear_decay_factor(0, 0, 0) == 0   # no wait, no decay: straight to the floor


# --- Config ------------------------------------------------------------------------------------


def tree(**model):
    return {"name": "t", "family": "cyclegan", "data": {"source": "builtin", "image_size": 32}, "model": model}


def test_config_defaults_are_the_papers():
    m = build_config(tree()).model
    assert ((m.generator, m.norm_g, m.norm_d, m.loss, m.ngf, m.ndf, m.n_layers_d)
            == ("resnet", "instance", "instance", "lsgan", 64, 64, 3))
    assert (m.lambda_cycle, m.lambda_identity, m.pool_size) == (10.0, 0.5, 50)
    assert (m.lr_g, m.lr_d, m.betas_g, m.betas_d, m.init_gain) == (2e-4, 2e-4, [0.5, 0.999], [0.5, 0.999], 0.02)
    assert (m.wait_epochs, m.decay_epochs, m.min_lr) == (100, 100, 0.0)


@pytest.mark.parametrize("model, message", [
    ({"norm_g": "layer"}, "model.norm_g must be one of instance, batch, none"),
    ({"norm_d": "layer"}, "model.norm_d must be one of instance, batch, none"),
    ({"loss": "ls"}, "model.loss must be one of lsgan, bce, hinge, wgan"),
    ({"generator": "unet"}, "model.generator must be one of resnet, blocks"),
    ({"generator": "blocks"}, "model.blocks is empty"),
    ({"blocks": [OUT]}, "model.blocks is set but model.generator is 'resnet'"),
    ({"generator": "blocks", "blocks": [{"type": "pool"}, OUT]}, "unknown type 'pool'. Valid types: conv"),
    ({"lambda_cycle": -1.0}, "model.lambda_cycle must be >= 0"),
    ({"lr_d": 0.0}, "model.lr_d must be > 0"),
    ({"min_lr": 1.0}, "model.min_lr (1.0) must be <= lr_g"),
    ({"betas_g": [0.5, 1.0]}, "model.betas_g must be a pair [beta1, beta2] of Adam betas, each in [0, 1)"),
    ({"betas_d": [0.5]}, "model.betas_d must be a pair"),
    ({"gan_loss": "lsgan"}, "model.gan_loss was renamed: use model.loss"),
    ({"norm": "batch"}, "model.norm was renamed: use model.norm_g and model.norm_d"),
    ({"beta1": 0.5}, "model.beta1 was renamed: use model.betas_g and model.betas_d"),
    ({"n_res_blocks": -1}, "model.n_res_blocks must be >= 0"),
])
def test_config_rejects_impossible_values(model, message):
    with pytest.raises(ConfigError) as err:
        build_config(tree(**model))
    assert message in str(err.value)


# --- The family, on the session's tiny dataset ----------------------------------------------------


def make_family(tiny_data, seed=0, **model):
    cfg = build_config({
        "name": "t", "family": "cyclegan",
        "data": {"source": "builtin", "image_size": tiny_data.image_size, "load_size": tiny_data.load_size},
        "train": {"batch_size": 2}, "logging": {"image_grid_size": 2},
        "metrics": {"num_samples": tiny_data.count("test/photo")},
        "model": {"ngf": 4, "ndf": 4, "n_res_blocks": 1, "pool_size": 2, **model}})   # 32 px: 2x2 PatchGAN logits
    torch.manual_seed(seed)
    return CycleGAN(cfg, tiny_data, torch.device("cpu"))


def fixed_batch(size, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"photo": torch.rand(2, 3, size, size, generator=g) * 2 - 1,
            "monet": torch.rand(2, 3, size, size, generator=g) * 2 - 1}


def test_image_too_small_for_the_patchgan_is_refused(tiny_data):
    # 32 px through four stride-2 k4 convs -> 2 px, then two k4/s1 convs -> no logits left.
    with pytest.raises(ValueError, match="too small for a PatchGAN with model.n_layers_d=4"):
        make_family(tiny_data, n_layers_d=4)


def test_loader_yields_unpaired_batches(tiny_data):
    family = make_family(tiny_data)
    batch = next(iter(family.make_loader(torch.Generator().manual_seed(0))))
    size = tiny_data.image_size
    assert batch["photo"].shape == batch["monet"].shape == (2, 3, size, size)
    assert batch["photo"].min() >= -1 and batch["photo"].max() <= 1


def test_train_step_updates_all_four_networks(tiny_data):
    family = make_family(tiny_data)
    before = {name: [p.detach().clone() for p in net.parameters()] for name, net in family.modules().items()}
    losses = family.train_step(fixed_batch(tiny_data.image_size))
    assert set(losses) == LOSS_KEYS
    assert all(isinstance(v, float) and math.isfinite(v) for v in losses.values())
    assert losses["loss_g"] == pytest.approx(losses["loss_g_gan"] + losses["loss_cycle"] + losses["loss_identity"],
                                             rel=1e-5)
    for name, net in family.modules().items():
        changed = [not torch.equal(a, b) for a, b in zip(before[name], net.parameters())]
        assert all(changed), f"{name}: {changed.count(False)} of {len(changed)} parameter tensors unchanged"


def test_no_identity_loss_when_its_weight_is_zero(tiny_data):
    losses = make_family(tiny_data, lambda_identity=0.0).train_step(fixed_batch(tiny_data.image_size))
    assert losses["loss_identity"] == 0.0


def test_end_epoch_follows_the_schedule(tiny_data):
    family = make_family(tiny_data, lr_g=2e-4, lr_d=1e-4, wait_epochs=1, decay_epochs=1, min_lr=1e-5)
    def rates():
        return family.opt_g.param_groups[0]["lr"], family.opt_d.param_groups[0]["lr"]

    assert rates() == pytest.approx((2e-4, 1e-4))
    # end_epoch returns the rates the finished epoch trained with, then sets the next epoch's.
    # Epoch 1 is the first decay epoch: halfway (1 of decay_epochs + 1) to min_lr.
    assert family.end_epoch(0) == pytest.approx({"lr_g": 2e-4, "lr_d": 1e-4})
    assert rates() == pytest.approx(((2e-4 + 1e-5) / 2, (1e-4 + 1e-5) / 2))
    assert family.end_epoch(1) == pytest.approx({"lr_g": (2e-4 + 1e-5) / 2, "lr_d": (1e-4 + 1e-5) / 2})
    assert family.end_epoch(7) == pytest.approx({"lr_g": 1e-5, "lr_d": 1e-5})
    assert rates() == pytest.approx((1e-5, 1e-5))


def test_set_hparams_keeps_the_lr_decay(tiny_data):
    # PBT/resume: a new lr_g applies at once, at the schedule's current point (epoch 1: halfway).
    family = make_family(tiny_data, lr_g=2e-4, lr_d=1e-4, wait_epochs=1, decay_epochs=1, min_lr=1e-5)
    family.end_epoch(0)
    family.set_hparams(dataclasses.replace(family.cfg.model, lr_g=4e-4, betas_g=[0.0, 0.9]))
    assert family.opt_g.param_groups[0]["lr"] == pytest.approx((4e-4 + 1e-5) / 2)
    assert family.opt_d.param_groups[0]["lr"] == pytest.approx((1e-4 + 1e-5) / 2)
    assert family.opt_g.param_groups[0]["betas"] == (0.0, 0.9)
    assert family.end_epoch(1) == pytest.approx({"lr_g": (4e-4 + 1e-5) / 2, "lr_d": (1e-4 + 1e-5) / 2})
    assert family.opt_g.param_groups[0]["lr"] == pytest.approx(1e-5)


def test_generate_yields_exactly_n_deterministic_uint8_images(tiny_data):
    family = make_family(tiny_data)
    size, count = tiny_data.image_size, tiny_data.count("test/photo")
    batches = list(family.generate(count, batch_size=4))
    assert [len(b) for b in batches] == [4] * (count // 4) + [count % 4] * bool(count % 4)
    images = torch.cat(batches)
    assert images.dtype == torch.uint8 and images.shape == (count, 3, size, size)
    assert len({image.numpy().tobytes() for image in images}) == count   # each test photo once
    assert torch.equal(torch.cat(list(family.generate(count, batch_size=5))), images)   # batch size irrelevant
    assert family.G.training and torch.is_grad_enabled()             # modes restored
    with pytest.raises(ValueError, match=f"translates each of the {count} test photos once"):
        next(family.generate(count + 1, batch_size=4))


def test_more_scored_images_than_test_photos_is_refused_at_build(tiny_data):
    # Scoring a photo twice would bias FID/KID: building the family refuses it, naming both numbers.
    count = tiny_data.count("test/photo")
    cfg = make_family(tiny_data).cfg
    cfg = dataclasses.replace(cfg, metrics=dataclasses.replace(cfg.metrics, num_samples=count + 1))
    with pytest.raises(ValueError) as err:
        CycleGAN(cfg, tiny_data, torch.device("cpu"))
    assert str(err.value) == (f"metrics.num_samples ({count + 1}) exceeds the {count} held-out test photos that "
                              f"CycleGAN translates for scoring; lower metrics.num_samples or raise data.test_fraction")


def test_the_search_stops_before_any_trial_when_test_photos_are_too_few(tiny_data, tiny_data_cfg):
    # prepare_experiment builds the family once on the CPU: the same refusal, as one ConfigError.
    from core.driver import prepare_experiment

    count = tiny_data.count("test/photo")
    cfg = build_config({"name": "t", "family": "cyclegan", "data": dataclasses.asdict(tiny_data_cfg),
                        "model": {"ngf": 4, "ndf": 4, "n_res_blocks": 1},
                        "metrics": {"extractor": "random", "num_samples": count + 10}})
    with pytest.raises(ConfigError, match=rf"metrics.num_samples \({count + 10}\) exceeds the {count} held-out "
                                          rf"test photos .*; lower metrics.num_samples or raise data.test_fraction"):
        prepare_experiment(cfg, progress=lambda message: None)


def test_sample_translates_given_photos_and_refuses_a_label(tiny_data):
    family = make_family(tiny_data)
    photos = torch.stack([family.test_photos[i][0] for i in (0, 1)])
    expected = torch.cat(list(family.generate(2, batch_size=2)))      # G on test photos 0 and 1
    assert torch.equal(family.sample(2, photos=photos), expected)
    with pytest.raises(ValueError, match="not conditional on class labels"):
        family.sample(2, label=0)


def test_image_grids_show_input_translation_reconstruction(tiny_data):
    family = make_family(tiny_data)
    grids = family.image_grids()
    size, pad = tiny_data.image_size, 2   # make_grid's default padding
    assert set(grids) == {"photo_to_monet", "monet_to_photo"}
    for grid in grids.values():
        assert grid.shape == (3, 3 * size + 4 * pad, 2 * size + 3 * pad)   # 3 rows of 2 images
        assert grid.min() >= 0 and grid.max() <= 1
    # The first row of photo_to_monet is the first test photo itself.
    photo = (family.test_photos[0][0] + 1) / 2
    assert torch.allclose(grids["photo_to_monet"][:, pad:pad + size, pad:pad + size], photo, atol=1e-6)
