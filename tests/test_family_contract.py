"""The Family contract (core/models/base.py), checked on every registered family at tiny size:
build -> train step -> state round trip -> exact resume -> set_hparams (PBT exploit) -> sample ->
generate -> grids. The families are read from the registry, so a new family is covered as soon as
it registers, at the tiny settings it declares (`Family.tiny`); the toy family of tests/toy_family.py
is covered this way too. Family-specific behaviour (losses, schedules, G:D steps) is tested in
test_<family>.py."""

import dataclasses
import io
import math

import pytest
import torch
from torch import nn

from core.config import ConfigError, build_config
from core.models import all_families, get_family

STEPS = 4   # training steps of the resume test: STEPS / 2, an epoch boundary, STEPS / 2


@pytest.fixture(params=list(all_families()))
def make(request, tiny_data):
    """Factory for the parametrized family: make(seed, **model overrides) -> a Family on the CPU."""
    name = request.param

    def build(seed: int = 0, **model):
        cfg = build_config({"name": "contract", "family": name,
                            "data": {"source": "builtin", "image_size": tiny_data.image_size,
                                     "load_size": tiny_data.load_size},
                            "train": {"batch_size": 2},
                            "metrics": {"num_samples": 4, "batch_size": 3},
                            "logging": {"image_grid_size": 2},
                            "model": get_family(name).tiny | model})
        torch.manual_seed(seed)   # the trainable seeds the global RNG before building a family
        return get_family(name)(cfg, tiny_data, torch.device("cpu"))

    return build


def batches(family, n: int) -> list:
    loader = iter(family.make_loader(torch.Generator().manual_seed(0)))
    return [next(loader) for _ in range(n)]


def round_trip(state: dict) -> dict:
    """What a checkpoint gives back: torch.save, then torch.load(weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def assert_same(a, b, where="state"):
    """Equal nested states: tensors bit for bit, everything else by ==."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys {sorted(map(str, a))} != {sorted(map(str, b))}"
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def other_value(value):
    """A different value of the same kind (to try changing a key)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "-other"
    if isinstance(value, list):
        return [*value, value[-1] if value else 0]
    return 1   # None


def test_declarations_cover_every_network(make):
    family = make()
    networks = family.modules()
    assert networks and all(isinstance(net, nn.Module) for net in networks.values())
    # Any network the family holds is listed (or inside a listed one), so the trainable's
    # finite-weight check and the checkpoint cannot miss it.
    listed = {id(sub) for net in networks.values() for sub in net.modules()}
    held = [name for name, value in vars(family).items() if isinstance(value, nn.Module)]
    assert all(id(getattr(family, name)) in listed for name in held), held
    assert family.optimizers() and all(isinstance(o, torch.optim.Optimizer) for o in family.optimizers().values())


def test_train_step_updates_every_network_and_returns_finite_floats(make):
    family = make()
    before = {name: [p.detach().clone() for p in net.parameters()] for name, net in family.modules().items()}
    losses = family.train_step(batches(family, 1)[0])
    assert losses and all(isinstance(v, float) and math.isfinite(v) for v in losses.values())
    for name, net in family.modules().items():
        assert any(not torch.equal(a, b) for a, b in zip(before[name], net.parameters())), f"{name} did not train"
    logged = family.end_epoch(0)
    assert all(isinstance(v, float) for v in logged.values())
    lr_keys = {lr_key for lr_key, _ in family.optimizer_keys.values()}
    assert lr_keys <= set(logged), "end_epoch logs every learning rate by its config key"


def test_state_round_trip_restores_everything(make):
    family = make()
    for batch in batches(family, 2):
        family.train_step(batch)
    family.end_epoch(0)
    state = family.state_dict()
    restored = make(seed=1)   # other initial weights, then overwritten
    restored.load_state_dict(round_trip(state))
    assert restored.epoch == family.epoch == 1
    assert_same(restored.state_dict(), state)


def test_resume_is_exact(make):
    # One run of STEPS steps against STEPS / 2, a checkpoint (with the RNG, as the trainable keeps
    # it), a fresh family restored from it, and the other STEPS / 2: identical state at the end.
    data = batches(make(), STEPS)
    half = STEPS // 2

    straight = make(seed=0)
    for batch in data[:half]:
        straight.train_step(batch)
    straight.end_epoch(0)
    for batch in data[half:]:
        straight.train_step(batch)

    first = make(seed=0)
    for batch in data[:half]:
        first.train_step(batch)
    first.end_epoch(0)
    checkpoint, rng = round_trip(first.state_dict()), torch.get_rng_state()
    resumed = make(seed=1)
    resumed.load_state_dict(checkpoint)
    resumed.set_hparams(resumed.cfg.model)   # as the trainable does after every restore
    torch.set_rng_state(rng)
    for batch in data[half:]:
        resumed.train_step(batch)

    assert_same(resumed.state_dict(), straight.state_dict())


def test_set_hparams_after_exploiting_a_donor(make):
    # PBT: a trial loads another trial's checkpoint, then its own mutated config. The optimizers run
    # with the new learning rates (on the schedule at the donor's epoch) and betas; everything else
    # read from the config (loss weights, schedules, step counts) is the new config's.
    donor = make(seed=0)
    donor.train_step(batches(donor, 1)[0])
    donor.end_epoch(0)
    recipient = make(seed=1)
    recipient.load_state_dict(round_trip(donor.state_dict()))
    m = recipient.cfg.model
    changes = {}
    for lr_key, betas_key in recipient.optimizer_keys.values():
        changes[lr_key] = getattr(m, lr_key) * 3.0
        changes[betas_key] = [0.25, 0.95]
    mutated = dataclasses.replace(m, **changes)
    recipient.set_hparams(mutated)

    assert recipient.cfg.model == mutated
    for name, (lr_key, betas_key) in recipient.optimizer_keys.items():
        expected_lr = changes[lr_key] * recipient.lr_factor(1, lr_key)
        for group in getattr(recipient, name).param_groups:
            assert group["lr"] == pytest.approx(expected_lr) and group["betas"] == (0.25, 0.95), name
    losses = recipient.train_step(batches(recipient, 1)[0])
    assert all(math.isfinite(v) for v in losses.values())
    # The mutated values survive the next epoch boundary and the next checkpoint round trip.
    logged = recipient.end_epoch(1)
    assert {key: logged[key] for key in changes if key in logged} == pytest.approx(
        {lr_key: changes[lr_key] * recipient.lr_factor(1, lr_key) for lr_key, _ in recipient.optimizer_keys.values()})


def test_set_hparams_refuses_architecture_changes(make):
    family = make()
    assert family.architecture_keys, "a family's networks are shaped by some of its keys"
    for key in family.architecture_keys:
        changed = dataclasses.replace(family.cfg.model, **{key: other_value(getattr(family.cfg.model, key))})
        with pytest.raises(ConfigError, match=f"model.{key} cannot change during training"):
            family.set_hparams(changed)


def test_sample_generate_and_grids(make):
    family = make()
    family.train_step(batches(family, 1)[0])
    modes = {name: net.training for name, net in family.modules().items()}
    size = family.cfg.data.image_size
    label = 0 if family.conditional_on_labels else None
    images = family.sample(2, seed=3, label=label)
    assert images.dtype == torch.uint8 and images.shape == (2, 3, size, size)
    assert torch.equal(family.sample(2, seed=3, label=label), images)   # reproducible from the seed
    if not family.conditional_on_labels:
        with pytest.raises(ValueError, match="not conditional on class labels"):
            family.sample(2, label=0)
    if not family.translates_photos:
        with pytest.raises(ValueError, match="does not translate photos"):
            family.sample(2, photos=torch.zeros(2, 3, size, size))

    n = family.cfg.metrics.num_samples
    rng = torch.get_rng_state()
    scored = list(family.generate(n, family.cfg.metrics.batch_size))
    assert torch.equal(torch.get_rng_state(), rng)   # evaluation leaves the training RNG alone
    assert [len(b) for b in scored] == [3, 1] and all(b.dtype == torch.uint8 for b in scored)
    assert len({image.numpy().tobytes() for image in torch.cat(scored)}) == n   # no image scored twice
    assert torch.equal(torch.cat(list(family.generate(n, n))), torch.cat(scored))   # batch size irrelevant

    grids = family.image_grids()
    assert grids
    for name, grid in grids.items():
        assert grid.dtype == torch.float32 and grid.dim() == 3 and grid.shape[0] == 3, name
        assert grid.min() >= 0 and grid.max() <= 1, name
    assert all(isinstance(v, float) for v in family.eval_metrics().values())
    assert torch.is_grad_enabled()
    assert {name: net.training for name, net in family.modules().items()} == modes   # modes restored
