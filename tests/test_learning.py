"""Slow: each family's builtin search space really learns: FID falls during a short training.

The runs use each space's fixed settings (no search) on a small builtin set at 32 px and the
random-feature extractor; FID must fall clearly below its first evaluation."""

from pathlib import Path

import pytest

from core.config import config_to_dict, load_experiment
from core.search import prepare_experiment
from core.trainable import LocalSession, run_trial

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"

# Per space: fixed values for what the space searches, chosen from its range (a sane setting).
CASES = {
    "cyclegan_builtin.yaml": ["model.lr_g=2.0e-4", "model.lr_d=2.0e-4", "model.lambda_cycle=10.0",
                        "model.lambda_identity=0.5", "train.epochs=3", "train.iters_per_epoch=40",
                        "data.test_fraction=0.4"],   # 64 test photos: each scored image a distinct one
    "wgan_gp_builtin.yaml": ["train.epochs=4", "train.iters_per_epoch=40"],
    "vae_builtin.yaml": ["train.epochs=4", "train.iters_per_epoch=40"],
}


@pytest.mark.slow
@pytest.mark.parametrize("space", [name for name in CASES if (SPACES / name).exists()])
def test_fid_falls_during_short_training(space, tmp_path):
    cfg = load_experiment(SPACES / space, ["data.builtin_count=160", "data.test_fraction=0.25",
                                           "train.eval_every=1", "metrics.num_samples=64",
                                           "metrics.kid_subset_size=32", *CASES[space]])
    ready = prepare_experiment(cfg, progress=lambda message: None)
    session = LocalSession(tmp_path)
    run_trial({}, experiment=config_to_dict(cfg), prepared_root=ready.prepared_root,
              reference_path=ready.reference_path, session=session)
    fids = [r["fid"] for r in session.results]
    assert len(fids) == cfg.train.epochs
    assert min(fids[1:]) < 0.8 * fids[0], f"FID did not fall: {fids}"
