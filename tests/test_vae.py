"""The beta-VAE family: shapes, loss terms, beta schedules, conditioning, held-out split (exact resume:
tests/test_family_contract.py)."""

import dataclasses

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from core.config import ConfigError, build_config
from core.models.vae import VAE, Decoder, Encoder, beta_at, kl_standard_normal, reconstruction_error

CPU = torch.device("cpu")


@pytest.fixture
def make(tiny_data, tiny_data_cfg):
    """Factory: a tiny VAE family on the session's builtin paintings (conftest: 32 px, labelled by
    scene kind) or on other `data`; keyword arguments set model fields."""
    def build(data=tiny_data, **model):
        cfg = build_config({"name": "t", "family": "vae", "data": dataclasses.asdict(tiny_data_cfg),
                            "model": {"base_channels": 4, "latent_dim": 8, **model},
                            "train": {"batch_size": 4}, "metrics": {"batch_size": 4},
                            "logging": {"image_grid_size": 3}})
        return VAE(cfg, data, CPU)
    return build


def first_batch(family, seed=0):
    return next(iter(family.make_loader(torch.Generator().manual_seed(seed))))


# --- Networks and losses ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 64, 128, 256])
@pytest.mark.parametrize("classes", [0, 3])
def test_encoder_decoder_shapes_at_each_size(size, classes):
    torch.manual_seed(0)
    encoder, decoder = Encoder(size, 4, 8, classes), Decoder(size, 4, 8, classes)
    x = torch.rand(2, 3, size, size) * 2 - 1
    onehot = torch.eye(classes)[[0, classes - 1]] if classes else None
    mu, logvar = encoder(x, onehot)
    assert mu.shape == logvar.shape == (2, 8)
    x_hat = decoder(mu, onehot)
    assert x_hat.shape == (2, 3, size, size)
    assert x_hat.min() >= 0 and x_hat.max() <= 1  # sigmoid output, compared with (x + 1) / 2


def test_kl_matches_torch_distributions():
    torch.manual_seed(0)
    mu, logvar = torch.randn(5, 7), torch.randn(5, 7)
    expected = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum(dim=1)
    torch.testing.assert_close(kl_standard_normal(mu, logvar), expected)
    # Known case: mu = 1, sigma = 1 in each of 4 dims costs 4 * 1/2 nats; the prior itself costs 0.
    assert kl_standard_normal(torch.ones(1, 4), torch.zeros(1, 4)).item() == pytest.approx(2.0)
    assert kl_standard_normal(torch.zeros(1, 4), torch.zeros(1, 4)).item() == 0.0


def test_reconstruction_error_sums_each_image_separately():
    target = torch.zeros(2, 3, 4, 4)
    x_hat = torch.zeros(2, 3, 4, 4)
    x_hat[0, 0, 0, 0] = 0.5   # image 0: one pixel off by 0.5 -> 0.25
    x_hat[1] = 0.1            # image 1: all 48 values off by 0.1 -> 48 * 0.01
    torch.testing.assert_close(reconstruction_error(x_hat, target), torch.tensor([0.25, 0.48]))


# --- Beta schedules ----------------------------------------------------------------------------------


def model_cfg(**values):
    return build_config({"name": "t", "family": "vae", "model": values}).model


def test_constant_beta():
    cfg = model_cfg(beta=2.5, beta_schedule="constant")
    assert [beta_at(cfg, e) for e in (0, 1, 7, 100)] == [2.5] * 4


def test_linear_warmup_reaches_beta_at_epoch_warmup_and_stays():
    cfg = model_cfg(beta=4.0, beta_schedule="linear", beta_warmup=4)
    assert [beta_at(cfg, e) for e in (0, 1, 3, 4, 5, 50)] == [0.0, 1.0, 3.0, 4.0, 4.0, 4.0]


def test_cyclic_restarts_the_warmup_every_cycle():
    cfg = model_cfg(beta=4.0, beta_schedule="cyclic", beta_warmup=2, beta_cycle=5)
    # epoch:      0    1    2    3    4    5 (restart) 6   7    10 (restart)
    expected = [0.0, 2.0, 4.0, 4.0, 4.0, 0.0, 2.0, 4.0, 0.0]
    assert [beta_at(cfg, e) for e in (0, 1, 2, 3, 4, 5, 6, 7, 10)] == expected


def test_invalid_schedules_are_config_errors():
    with pytest.raises(ConfigError, match="beta_cycle"):
        model_cfg(beta_schedule="cyclic", beta_warmup=5, beta_cycle=5)
    with pytest.raises(ConfigError, match="beta_warmup"):
        model_cfg(beta_schedule="linear", beta_warmup=0)
    with pytest.raises(ConfigError, match="beta_schedule"):
        model_cfg(beta_schedule="sigmoid")


def test_family_trains_each_epoch_with_its_scheduled_beta(make):
    torch.manual_seed(0)
    family = make(beta=1.0, beta_schedule="linear", beta_warmup=2)
    batch = first_batch(family)
    seen = []
    for epoch in range(3):
        seen.append(family.train_step(batch)["beta"])
        # end_epoch logs the beta (and learning rate) the epoch used
        assert family.end_epoch(epoch) == {"beta": seen[-1], "lr": family.cfg.model.lr}
    assert seen == [0.0, 0.5, 1.0]


# --- Training, conditioning, evaluation ----------------------------------------------------------------


def test_train_step_updates_parameters_and_returns_finite_terms(make):
    torch.manual_seed(0)
    family = make(beta=3.0)
    before = {k: v.clone() for k, v in family.decoder.state_dict().items()}
    losses = family.train_step(first_batch(family))
    assert set(losses) == {"loss", "loss_recon", "loss_kl", "beta"}
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert losses["loss"] == pytest.approx(losses["loss_recon"] + 3.0 * losses["loss_kl"], rel=1e-5)
    changed = [k for k, v in family.decoder.state_dict().items()
               if v.dtype.is_floating_point and not torch.equal(v, before[k])]
    assert "fc.weight" in changed and "upsample.9.weight" in changed  # first and last decoder layers


def test_conditional_samples_depend_on_the_label(make, tiny_data):
    assert len(tiny_data.class_names) >= 2, "the builtin data should have several scene classes"
    torch.manual_seed(0)
    family = make(conditional=True)
    family.train_step(first_batch(family))
    z = torch.randn(4, 8)
    first, second = torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long)
    assert torch.equal(family.decode(z, first), family.decode(z, first))        # same z and label: same image
    assert not torch.allclose(family.decode(z, first), family.decode(z, second), atol=1e-4)

    grids = family.image_grids()
    prior = [name for name in grids if name.startswith("prior")]
    assert prior == [f"prior, rows: {', '.join(tiny_data.class_names)}"]
    rows = len(tiny_data.class_names)
    assert grids[prior[0]].shape == (3, rows * 34 + 2, 3 * 34 + 2)  # make_grid pads 2 px: one row per class


def test_generate_yields_the_same_uint8_prior_samples_every_time(make):
    torch.manual_seed(0)
    family = make()
    batches = list(family.generate(7, batch_size=3))
    assert [b.shape for b in batches] == [(3, 3, 32, 32), (3, 3, 32, 32), (1, 3, 32, 32)]
    assert all(b.dtype == torch.uint8 for b in batches)
    rng = torch.get_rng_state()
    again = torch.cat(list(family.generate(7, batch_size=7)))
    assert torch.equal(torch.cat(batches), again)  # fixed z, and batch size does not matter
    assert torch.equal(torch.get_rng_state(), rng)  # evaluation leaves the training RNG alone


def test_conditional_prior_labels_follow_the_training_label_frequencies(make, tiny_data):
    # Relabel every training painting as class 2 (the held-out ones as 0): samples must all be class 2.
    files = dict(tiny_data.files)
    files["train/monet"] = [(path, 0 if i % 10 == 0 else 2) for i, (path, _) in enumerate(files["train/monet"])]
    family = make(dataclasses.replace(tiny_data, files=files), conditional=True, holdout_every=10)
    _, labels = family.prior_latents(50)
    assert labels.tolist() == [2] * 50


def test_held_out_paintings_are_never_trained_on(make, tiny_data):
    family = make(holdout_every=4)
    n = tiny_data.count("train/monet")
    held_out = list(range(0, n, 4))
    assert family.holdout_indices == held_out
    loader = family.make_loader(torch.Generator().manual_seed(0))
    assert sum(images.shape[0] for images, _ in loader) == n - len(held_out)
    assert sorted(loader.dataset.indices) == [i for i in range(n) if i not in held_out]

    metrics = family.eval_metrics()
    assert set(metrics) == {"recon_mse", "kl"}
    assert 0 < metrics["recon_mse"] < 1 and metrics["kl"] >= 0   # per-pixel MSE on the [0, 1] scale
    grids = family.image_grids()
    k = min(3, len(held_out))
    assert grids["reconstructions"].shape == (3, 2 * 34 + 2, k * 34 + 2)  # originals over reconstructions


def test_eval_metrics_do_not_depend_on_batch_size(make):
    torch.manual_seed(0)
    family = make(holdout_every=3)
    family.train_step(first_batch(family))
    by_four = family.eval_metrics()
    family.cfg = dataclasses.replace(family.cfg, metrics=dataclasses.replace(family.cfg.metrics, batch_size=1))
    by_one = family.eval_metrics()
    assert by_one == pytest.approx(by_four, rel=1e-5)


def test_set_hparams_applies_lr_betas_and_beta_schedule_and_refuses_architecture(make):
    torch.manual_seed(0)
    family = make(beta=1.0, beta_schedule="constant")
    family.end_epoch(0)
    family.set_hparams(dataclasses.replace(family.cfg.model, lr=3e-4, betas=[0.5, 0.99], beta=2.0,
                                           beta_schedule="linear", beta_warmup=4))
    assert family.optimizer.param_groups[0]["lr"] == 3e-4 and family.optimizer.param_groups[0]["betas"] == (0.5, 0.99)
    assert family.train_step(first_batch(family))["beta"] == 2.0 * 1 / 4   # epoch 1 of a 4-epoch warm-up
    with pytest.raises(ConfigError, match="model.latent_dim cannot change during training"):
        family.set_hparams(dataclasses.replace(family.cfg.model, latent_dim=16))


def test_sample_needs_a_label_when_conditional_and_refuses_one_otherwise(make):
    torch.manual_seed(0)
    conditional, plain = make(conditional=True), make()
    assert conditional.conditional_on_labels and not plain.conditional_on_labels
    assert conditional.sample(2, seed=0, label=1).shape == plain.sample(2, seed=0).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="give a class label"):
        conditional.sample(2)
    with pytest.raises(ValueError, match="not conditional on class labels"):
        plain.sample(2, label=1)
    with pytest.raises(ValueError, match="does not translate photos"):
        plain.sample(2, photos=torch.zeros(2, 3, 32, 32))


def test_conditional_without_labels_is_a_clear_error(make, tiny_data):
    unlabelled = dataclasses.replace(
        tiny_data, class_names=(),
        files={split: [(path, -1) for path, _ in items] for split, items in tiny_data.files.items()})
    with pytest.raises(ConfigError, match="conditional.*no class labels"):
        make(unlabelled, conditional=True)
    make(unlabelled, conditional=False)  # the same data is fine without conditioning

    files = dict(tiny_data.files)
    files["train/monet"] = [(path, -1 if i == 5 else label) for i, (path, label) in enumerate(files["train/monet"])]
    with pytest.raises(ConfigError, match="1 train/monet images lie outside the class sub-folders"):
        make(dataclasses.replace(tiny_data, files=files), conditional=True)
