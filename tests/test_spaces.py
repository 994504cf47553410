"""Every shipped search space builds and trains, not only parses: for each search_spaces/*.yaml (a
glob, so a new space is covered without editing this file) the family is constructed on CPU and
runs one training step and one evaluation batch.

Only the data and the run's size are shrunk: the GPU/Kaggle spaces train on the session's tiny
builtin data (32 px, the same prepared dataset as `tiny_data`) instead of downloading theirs, with
batch 2 and the random-feature extractor. Their architecture stays as the space says (widths,
block counts, norms, losses); at 32 px the resolution-dependent defaults follow the image size
(CycleGAN's n_res_blocks: null gives 6 residual blocks below 256 px instead of 9)."""

import math
from pathlib import Path

import pytest
import torch

from core.config import build_config, config_to_dict, load_experiment
from core.models import get_family

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"
SHIPPED = sorted(path.name for path in SPACES.glob("*.yaml"))


def full_width_gan(name: str) -> bool:
    """A GAN space for the GPU (Kaggle data): its full-width networks take 10-25 s for one step on
    2 busy cores (the VAE spaces' take about 1 s)."""
    cfg = load_experiment(SPACES / name)
    return cfg.data.source != "builtin" and cfg.family in ("cyclegan", "wgan_gp")


CASES = [pytest.param(name, marks=[pytest.mark.slow] if full_width_gan(name) else []) for name in SHIPPED]


def test_the_glob_finds_the_shipped_spaces():
    # Guards the glob itself (a moved folder would otherwise parametrize nothing).
    assert {"cyclegan_builtin.yaml", "cyclegan.yaml", "wgan_gp.yaml", "wgan_gp_builtin.yaml", "vae.yaml",
            "vae_builtin.yaml", "vae_wikiart.yaml"} <= set(SHIPPED)


def tiny_overrides(tiny_data, tiny_data_cfg) -> list[str]:
    """The session's tiny builtin data, one CPU step of batch 2, scored by the random extractor."""
    d = tiny_data_cfg
    return ["data.source=builtin", f"data.image_size={tiny_data.image_size}", f"data.load_size={tiny_data.load_size}",
            f"data.builtin_count={d.builtin_count}", f"data.test_fraction={d.test_fraction}",
            "data.num_workers=0", "train.device=cpu", "train.batch_size=2", "train.epochs=1", "train.eval_every=1",
            "train.iters_per_epoch=1", "metrics.extractor=random", "metrics.num_samples=4",
            "metrics.kid_subset_size=2", "metrics.batch_size=4", "search.gpus_per_trial=0", "logging.image_grid_size=2",
            # batch 2 may lie outside a searched train.batch_size; the space's own values are built anyway
            # (racing, which compares with the baseline, is the search's: off here).
            "search.baseline=false", "search.racing=false"]


@pytest.mark.parametrize("space", CASES)
def test_every_shipped_space_builds_its_family_and_trains_one_step(space, tiny_data, tiny_data_cfg):
    cfg = build_config(config_to_dict(load_experiment(SPACES / space, tiny_overrides(tiny_data, tiny_data_cfg))))
    torch.manual_seed(0)
    family = get_family(cfg.family)(cfg, tiny_data, torch.device("cpu"))
    before = {name: [p.detach().clone() for p in net.parameters()] for name, net in family.modules().items()}

    batch = next(iter(family.make_loader(torch.Generator().manual_seed(0))))
    losses = family.train_step(batch)

    assert losses and all(math.isfinite(v) for v in losses.values()), losses
    trained = [name for name, net in family.modules().items()
               if any(not torch.equal(a, p) for a, p in zip(before[name], net.parameters()))]
    assert trained, "one train_step changed no network's weights"
    images = torch.cat(list(family.generate(2, 2)))
    assert images.dtype == torch.uint8 and images.shape == (2, 3, cfg.data.image_size, cfg.data.image_size)
