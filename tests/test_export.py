"""experiments/export.py: a tiny 256-px CycleGAN checkpoint -> images.zip of translated test photos,
scored exactly as an independent evaluation of the zip's JPEGs; clear refusals for what Kaggle rejects."""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import export  # noqa: E402

from analysis.checkpoints import load_checkpoint  # noqa: E402
from core import metrics as M  # noqa: E402
from core.config import build_config, config_to_dict  # noqa: E402
from core.driver import prepare_experiment  # noqa: E402
from core.trainable import LocalSession, run_trial  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint_256(tmp_path_factory) -> Path:
    """One training iteration of a 4-channel CycleGAN on 256-px built-in images (4 test photos)."""
    cfg = build_config({
        "name": "export-test", "family": "cyclegan",
        "data": {"source": "builtin", "image_size": 256, "load_size": 256, "builtin_count": 8, "test_fraction": 0.5},
        "model": {"ngf": 4, "ndf": 4, "n_res_blocks": 1},
        "train": {"epochs": 1, "iters_per_epoch": 1, "batch_size": 1},
        "metrics": {"extractor": "random", "num_samples": 4, "kid_subset_size": 2, "batch_size": 4},
        "logging": {"tensorboard": False}, "search": {"space": {}}})
    ready = prepare_experiment(cfg, progress=lambda message: None)
    root = tmp_path_factory.mktemp("export-trial")
    run_trial({}, experiment=config_to_dict(cfg), prepared_root=ready.prepared_root,
              reference_path=ready.reference_path, session=LocalSession(root))
    return root / "checkpoint_000001"


def test_zip_holds_the_translated_test_photos_and_their_scores(checkpoint_256, tmp_path, capsys):
    out = tmp_path / "images.zip"
    assert export.main([str(checkpoint_256), "--out", str(out), "--count", "4", "--any-count", "--batch-size", "3"]) == 0
    printed = capsys.readouterr().out

    with zipfile.ZipFile(out) as archive:
        assert archive.namelist() == [f"{i:05d}.jpg" for i in range(4)]
        jpegs = [Image.open(io.BytesIO(archive.read(name))) for name in archive.namelist()]
    assert all(im.format == "JPEG" and im.size == (256, 256) and im.mode == "RGB" for im in jpegs)
    written = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in jpegs])   # (4, 3, 256, 256)

    # The JPEGs are the generator's translations of the test photos, up to JPEG's loss.
    loaded = load_checkpoint(checkpoint_256, progress=lambda message: None)
    expected = torch.cat(list(loaded.family.generate(4, 4)))
    assert (written.float() - expected.float()).abs().mean() < 4

    # The printed scores are those of the zip's images, evaluated independently here.
    cfg = loaded.cfg
    reference = M.load_reference(M.reference_statistics(loaded.data, cfg.metrics, cfg.cache_path, progress=lambda m: None))
    scores = M.evaluate([written], reference, cfg.metrics)
    assert f"FID {scores[M.FID]:.4f}" in printed and f"MiFID {scores[M.MIFID]:.4f}" in printed
    assert f"memorization distance {scores[M.MEMORIZATION]:.4f}" in printed and "random-features" in printed


def test_refuses_counts_kaggle_rejects(checkpoint_256, tmp_path, capsys):
    out = tmp_path / "images.zip"
    assert export.main([str(checkpoint_256), "--out", str(out), "--count", "4"]) == 2
    assert "Kaggle needs 7,000 to 10,000" in capsys.readouterr().err and not out.exists()
    assert export.main([str(checkpoint_256), "--out", str(out), "--count", "5", "--any-count"]) == 2
    assert "translates each test photo once and this data holds 4" in capsys.readouterr().err
    # No --count: CycleGAN's default is every test photo (4 here), which Kaggle would refuse.
    assert export.main([str(checkpoint_256), "--out", str(out)]) == 2
    assert "4 images requested" in capsys.readouterr().err and not out.exists()
    # A count of 0 is 0 (refused), not the default (which wrote 7,000 images for a GAN).
    assert export.main([str(checkpoint_256), "--out", str(out), "--count", "0", "--any-count"]) == 2
    assert "--count must be at least 2" in capsys.readouterr().err and not out.exists()


def test_an_export_stopped_midway_leaves_no_partial_zip(tmp_path):
    """Stopped by an error (or Ctrl-C), and SIGKILLed mid-write in a process of its own: nothing is
    left in the output's directory, not even a partial file (a killed export left 50 MB)."""
    def failing_batches():
        yield torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        for _ in export.write_zip(failing_batches(), tmp_path / "images.zip", 4, progress=False):
            pass
    assert not list(tmp_path.iterdir())

    import signal
    import subprocess

    (tmp_path / "out").mkdir()
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys, time, torch\n"
        f"sys.path.insert(0, {str(Path(export.__file__).parent)!r}); import export\n"
        "def batches():\n"
        "    while True:\n"
        "        yield torch.zeros(4, 3, 64, 64, dtype=torch.uint8)\n"
        "        print('wrote', flush=True); time.sleep(0.2)\n"
        f"for _ in export.write_zip(batches(), export.Path({str(tmp_path / 'out' / 'images.zip')!r}), 10**6, progress=False): pass\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == "wrote\n" and writer.stdout.readline() == "wrote\n"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert not list((tmp_path / "out").iterdir())


def test_refuses_other_image_sizes_and_non_experiments(smoke_experiments, tmp_path, capsys):
    # The smoke experiment's best checkpoint (found through the leaderboard) is 32 px.
    assert export.main([str(smoke_experiments["cyclegan_builtin"]), "--out", str(tmp_path / "a.zip")]) == 2
    assert "makes 32x32 images; Kaggle needs 256x256" in capsys.readouterr().err
    assert export.main([str(tmp_path), "--out", str(tmp_path / "a.zip")]) == 2
    assert "neither a checkpoint directory" in capsys.readouterr().err and not (tmp_path / "a.zip").exists()


def test_upscale_exports_a_smaller_checkpoint_as_valid_256px_jpegs(smoke_experiments, tmp_path, capsys):
    import zipfile

    from PIL import Image

    out = tmp_path / "images.zip"
    assert export.main([str(smoke_experiments["cyclegan_builtin"]), "--out", str(out), "--upscale",
                        "--count", "3", "--any-count"]) == 0
    printed = capsys.readouterr().out
    assert "FID" in printed and "MiFID" in printed and "memorization distance" in printed
    with zipfile.ZipFile(out) as archive:
        names = archive.namelist()
        assert len(names) == 3
        for name in names:
            with archive.open(name) as f:
                image = Image.open(f)
                image.load()
                assert image.format == "JPEG" and image.size == (256, 256) and image.mode == "RGB"
