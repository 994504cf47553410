"""Metrics: MiFID against NumPy, FID properties, the reference-statistics cache, extractors.

Everything runs the real extractors at 32 px on CPU; the random-feature extractor stands in for
Inception except in the fid-helper conversion test."""

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import core.feature_extractors as fx
from core.config import MetricsConfig
from core.metrics import (FID, KID, MEMORIZATION, MIFID, MetricsError, Reference, evaluate, extract_features,
                          load_reference, memorization_distance, mifid_from_fid, reference_path,
                          reference_statistics, to_uint8)

RANDOM = MetricsConfig(extractor="random", batch_size=8, kid_subset_size=8)


def paintings(n: int, seed: int, size: int = 32) -> torch.Tensor:
    """Smooth colour fields plus fine texture: (n, 3, size, size) uint8, reproducible from `seed`."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.nn.functional.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=(size, size),
                                              mode="bilinear", align_corners=False)
    texture = 0.15 * torch.randn(n, 1, size, size, generator=g)
    return ((colours + texture).clamp(0, 1) * 255).round().to(torch.uint8)


def in_batches(images: torch.Tensor, sizes: list[int]):
    """Yield `images` in consecutive batches of the given sizes (cycled): how a family streams them."""
    start, i = 0, 0
    while start < len(images):
        yield images[start:start + sizes[i % len(sizes)]]
        start += sizes[i % len(sizes)]
        i += 1


def make_reference(images: torch.Tensor, cache_dir: Path, cfg: MetricsConfig = RANDOM) -> Reference:
    """A Reference built from images directly (no dataset), as reference_statistics would store it."""
    from torch_fidelity.metric_fid import fid_features_to_statistics

    extractor = fx.get_extractor(cfg.extractor, cfg.weights_path, cache_dir)
    features = extract_features([images], extractor, cfg.batch_size)
    stats = fid_features_to_statistics(features.double())
    return Reference(mu=stats["mu"], sigma=stats["sigma"], features=features, extractor=extractor.description,
                     extractor_id=extractor.identity, count=len(features), key_parts={},
                     path=cache_dir / "reference" / "synthetic.pt")


# --- MiFID --------------------------------------------------------------------------------------


def kaggle_memorization_distance(gen: np.ndarray, ref: np.ndarray) -> float:
    """Kaggle's evaluation code, restated in plain NumPy: drop all-zero rows, normalize rows, 1 - |cos|,
    minimum over the reference, mean over the generated images."""
    gen = gen[np.sum(gen, axis=1) != 0]
    ref = ref[np.sum(ref, axis=1) != 0]
    gen = gen / np.linalg.norm(gen, axis=1, keepdims=True)
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    return float(np.mean(np.min(1.0 - np.abs(gen @ ref.T), axis=1)))


def test_memorization_distance_matches_numpy_in_small_chunks():
    rng = np.random.default_rng(0)
    gen = np.maximum(rng.normal(size=(37, 64)), 0)       # post-ReLU-like features, with all-zero rows
    ref = np.maximum(rng.normal(size=(23, 64)), 0)
    gen[[3, 17]] = 0
    ref[5] = 0
    expected = kaggle_memorization_distance(gen, ref)
    for chunk_elements in (1, 50, 10**9):                # one row at a time, a few rows, all at once
        got = memorization_distance(torch.from_numpy(gen).float(), torch.from_numpy(ref).float(), chunk_elements)
        assert got == pytest.approx(expected, rel=1e-6)


def test_mifid_penalizes_only_below_the_threshold():
    rng = np.random.default_rng(1)
    ref = np.abs(rng.normal(size=(30, 64)))
    copies = ref[rng.integers(0, 30, size=20)] + 0.01 * np.abs(rng.normal(size=(20, 64)))
    far = np.abs(rng.normal(size=(20, 64)))
    d_copies = memorization_distance(torch.from_numpy(copies), torch.from_numpy(ref))
    d_far = memorization_distance(torch.from_numpy(far), torch.from_numpy(ref))
    assert d_copies == pytest.approx(kaggle_memorization_distance(copies, ref), rel=1e-9)
    assert d_copies < 0.1 < d_far
    assert mifid_from_fid(50.0, d_copies, 0.1) == pytest.approx(50.0 / d_copies)
    assert mifid_from_fid(50.0, d_far, 0.1) == pytest.approx(50.0)
    # Flat images (a dead generator) have all-zero features: no copies, so no penalty (Kaggle: NaN).
    assert memorization_distance(torch.zeros(5, 64), torch.from_numpy(ref)) == 1.0


# --- FID ----------------------------------------------------------------------------------------


def test_fid_does_not_depend_on_batch_sizes(tmp_path):
    reference = make_reference(paintings(40, seed=0), tmp_path)
    generated = paintings(30, seed=1)
    extractor = fx.get_extractor("random", None, tmp_path)
    whole = extract_features([generated], extractor, batch_size=30)
    for incoming, batch_size in [([7, 5, 11], 4), ([1], 1), ([13, 2], 9)]:   # re-batched features agree
        torch.testing.assert_close(extract_features(in_batches(generated, incoming), extractor, batch_size), whole)
    one_batch = evaluate([generated], reference, RANDOM)
    rebatched = evaluate(in_batches(generated, [7, 5, 11]), reference, dataclasses.replace(RANDOM, batch_size=4))
    for key in (FID, KID, MEMORIZATION, MIFID):
        assert rebatched[key] == pytest.approx(one_batch[key], rel=1e-5, abs=1e-9), key


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_a_shift(tmp_path):
    images = paintings(40, seed=2)
    reference = make_reference(images, tmp_path)
    same = evaluate([images], reference, RANDOM)
    brighter = evaluate([(images.int() + 40).clamp(max=255).to(torch.uint8)], reference, RANDOM)
    assert brighter[FID] > 0
    assert abs(same[FID]) < 1e-3 * brighter[FID]
    assert same[KID] < brighter[KID]
    assert same[MEMORIZATION] == pytest.approx(0.0, abs=1e-6)   # exact copies are memorized
    assert same["extractor"].startswith("random-features-v1") and "not comparable" in same["extractor"]


def test_random_features_fid_falls_as_the_defects_shrink(tmp_path):
    """A generator that improves makes images with fewer defects (noise, colour cast): FID must fall."""
    reference = make_reference(paintings(40, seed=3), tmp_path)
    clean = paintings(40, seed=4).float()                 # same distribution, other images
    defect = 40 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(5))
    defect[:, 0] += 40                                    # a red cast on top of the noise
    fids = [evaluate([(clean + level * defect).clamp(0, 255).round().to(torch.uint8)], reference, RANDOM)[FID]
            for level in (1.0, 0.5, 0.0)]
    assert fids == sorted(fids, reverse=True) and fids[0] > 2 * fids[-1]


def test_evaluate_rejects_float_images(tmp_path):
    reference = make_reference(paintings(8, seed=0), tmp_path)
    with pytest.raises(MetricsError, match="to_uint8"):
        evaluate([torch.zeros(4, 3, 32, 32)], reference, RANDOM)


def test_to_uint8_inverts_the_data_normalization():
    levels = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16).expand(1, 3, 16, 16)
    normalized = levels.float() / 255 * 2 - 1             # ToTensor + Normalize(0.5, 0.5)
    assert torch.equal(to_uint8(normalized), levels)


# --- Reference statistics cache -------------------------------------------------------------------


def test_reference_key_changes_with_everything_that_changes_the_statistics(tiny_data, tmp_path):
    base = reference_path(tiny_data, RANDOM, tmp_path)
    assert base.parent == tmp_path / "reference"
    assert reference_path(tiny_data, RANDOM, tmp_path) == base
    assert reference_path(tiny_data, dataclasses.replace(RANDOM, batch_size=3, kid_subset_size=5), tmp_path) == base
    changed = [reference_path(dataclasses.replace(tiny_data, fingerprint="0" * 16), RANDOM, tmp_path),
               reference_path(dataclasses.replace(tiny_data, image_size=tiny_data.image_size + 4), RANDOM, tmp_path),
               reference_path(tiny_data, dataclasses.replace(RANDOM, extractor="inception-fid-helper"), tmp_path),
               reference_path(tiny_data, dataclasses.replace(RANDOM, reference_samples=4), tmp_path)]
    assert len({base, *changed}) == 5
    # A cap at or above the available count uses every image: same statistics, same file.
    everything = dataclasses.replace(RANDOM, reference_samples=tiny_data.count("train/monet"))
    assert reference_path(tiny_data, everything, tmp_path) == base


def test_reference_is_computed_once_then_reused(tiny_data, tmp_path):
    messages = []
    path = reference_statistics(tiny_data, RANDOM, tmp_path, progress=messages.append)
    mtime = path.stat().st_mtime_ns
    again = reference_statistics(tiny_data, RANDOM, tmp_path, progress=messages.append)
    assert again == path and path.stat().st_mtime_ns == mtime
    assert "computed" in messages[0] and messages[1] == f"reusing reference statistics {path}"
    reference = load_reference(path)
    n = tiny_data.count("train/monet")
    assert reference.count == n and reference.features.shape == (n, 2048)
    assert reference.mu.shape == (2048,) and reference.sigma.shape == (2048, 2048)
    np.testing.assert_allclose(reference.mu, reference.features.double().mean(0).numpy(), rtol=1e-6, atol=1e-9)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]   # no temporary files left


def test_reference_subset_is_the_requested_size(tiny_data, tmp_path):
    cfg = dataclasses.replace(RANDOM, reference_samples=4)
    reference = load_reference(reference_statistics(tiny_data, cfg, tmp_path, progress=lambda _: None))
    assert reference.count == 4 and reference.features.shape == (4, 2048)


def test_a_failed_write_leaves_no_file_and_a_damaged_file_is_recomputed(tiny_data, tmp_path, monkeypatch):
    real_save = torch.save

    def crash_midway(obj, f):                             # the disk fills up halfway through the write
        Path(f).write_bytes(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(OSError, match="No space"):
        reference_statistics(tiny_data, RANDOM, tmp_path, progress=lambda _: None)
    path = reference_path(tiny_data, RANDOM, tmp_path)
    assert not path.exists() and list(path.parent.iterdir()) == []
    monkeypatch.setattr(torch, "save", real_save)

    path.write_bytes(b"not a torch file")                 # e.g. written by a non-atomic tool
    messages = []
    assert reference_statistics(tiny_data, RANDOM, tmp_path, progress=messages.append) == path
    assert "unusable" in messages[0] and load_reference(path).count == tiny_data.count("train/monet")


def test_evaluate_refuses_a_reference_from_another_extractor(tiny_data, tmp_path):
    reference = load_reference(reference_statistics(tiny_data, RANDOM, tmp_path, progress=lambda _: None))
    with pytest.raises(MetricsError, match="inception-fid-helper") as error:
        evaluate([paintings(4, seed=0)], reference, dataclasses.replace(RANDOM, extractor="inception-fid-helper"))
    assert fx.RandomFeatures.NAME in str(error.value)


def test_domain_gap_monet_vs_photo_exceeds_monet_vs_monet(tiny_data, tmp_path):
    """The builtin data must have a measurable style gap, or searches on it optimize noise."""
    from core.data import ImageDataset, eval_transform
    from core.config import DataConfig

    def images(split: str) -> torch.Tensor:
        dataset = ImageDataset(tiny_data, split, eval_transform(DataConfig(image_size=tiny_data.image_size)))
        return to_uint8(torch.stack([dataset[i][0] for i in range(len(dataset))]))

    monets, photos = images("train/monet"), images("test/photo")
    half = len(monets) // 2
    n = min(half, len(photos))
    reference = make_reference(monets[:half], tmp_path)
    monet_vs_monet = evaluate([monets[half:half + n]], reference, RANDOM)[FID]
    monet_vs_photo = evaluate([photos[:n]], reference, RANDOM)[FID]
    assert monet_vs_photo > 2 * monet_vs_monet


# --- Extractors ---------------------------------------------------------------------------------


def test_fid_helper_conversion_gives_the_torchscript_features(tmp_path):
    """fid-helper's TorchScript Inception, fed torch-fidelity's resize and (x - 128) / 128, and our
    conversion of it into torch-fidelity's Inception give the same 2048-d features."""
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    images = paintings(3, seed=6)
    extractor = fx.get_extractor("inception-fid-helper", None, tmp_path)
    converted = list((tmp_path / "weights").glob("inception-fid-helper-*.pth"))
    assert len(converted) == 1
    torchscript = torch.jit.load(str(fx.fid_helper_torchscript()), map_location="cpu").eval()
    with torch.no_grad():
        (ours,) = extractor.net(images)
        resized = interpolate_bilinear_2d_like_tensorflow1x(images.float(), size=(299, 299), align_corners=False)
        theirs = torchscript((resized - 128) / 128)
    assert ours.shape == theirs.shape == (3, 2048)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    assert theirs.abs().max() > 0.1                       # real features, not zeros
    assert "no Inception Score" in extractor.description


def test_inception_offline_names_the_offline_alternative(tmp_path, monkeypatch):
    from torch_fidelity import feature_extractor_inceptionv3

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))      # no cached download
    monkeypatch.setattr(feature_extractor_inceptionv3, "URL_INCEPTION_V3", "http://127.0.0.1:9/weights.pth")
    with pytest.raises(MetricsError, match="inception-fid-helper"):
        fx.get_extractor("inception", None, tmp_path)


def test_inception_weights_path_must_be_a_plain_state_dict(tmp_path):
    weights = tmp_path / "weights.pth"
    torch.save({"conv.weight": torch.zeros(1), "origin": Path("/somewhere")}, weights)  # a pickled object
    with pytest.raises(MetricsError, match="plain torch state dict"):
        fx.get_extractor("inception", str(weights), tmp_path)


def test_random_extractor_is_deterministic_and_size_agnostic(tmp_path):
    net = fx.get_extractor("random", None, tmp_path).net
    fresh = fx.RandomFeatures(fx.RandomFeatures.NAME, [fx.FEATURE_LAYER])   # same seed, new weights
    images = paintings(4, seed=7, size=48)
    with torch.no_grad():
        torch.testing.assert_close(net(images)[0], fresh(images)[0])
        assert net(images)[0].shape == net(paintings(4, seed=7, size=64))[0].shape == (4, 2048)


@pytest.mark.parametrize("n_generated", [5, 40, 80])     # fewer, then more samples than dimensions
def test_frechet_distance_equals_torch_fidelity(n_generated):
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    from core.metrics import frechet_distance

    rng = np.random.default_rng(7)
    dim = 48
    mixing = rng.normal(size=(dim, dim))                  # correlated features, like a CNN's
    ref = torch.from_numpy(np.maximum(rng.normal(size=(60, dim)) @ mixing, 0)).float()
    gen = torch.from_numpy(np.maximum(rng.normal(0.3, 1.2, size=(n_generated, dim)) @ mixing, 0)).float()
    ref_stats = fid_features_to_statistics(ref.double())
    expected = fid_statistics_to_metric(fid_features_to_statistics(gen.double()), ref_stats, verbose=False)["frechet_inception_distance"]
    reference = Reference(mu=ref_stats["mu"], sigma=ref_stats["sigma"], features=ref, extractor="test",
                          extractor_id="test", count=len(ref), key_parts={}, path=Path("unused"))
    assert frechet_distance(gen, reference) == pytest.approx(expected, rel=1e-7)


# --- The extractor registry -------------------------------------------------------------------------


@pytest.fixture
def registry(monkeypatch):
    """A copy of the extractor registry for one test (registrations do not leak into others)."""
    monkeypatch.setattr(fx, "EXTRACTORS", dict(fx.EXTRACTORS))
    return fx.EXTRACTORS


def test_a_registered_extractor_is_accepted_by_the_config_and_built(registry, tmp_path):
    from torch_fidelity.utils import create_feature_extractor

    assert "tiny-test" in MetricsConfig(extractor="tiny-test").validate()[0]   # unknown before
    fx.register_extractor(
        "tiny-test", "random features under another name",
        identity=lambda weights_path: "tiny-test:v1",
        build=lambda weights_path, cache_dir: fx.Extractor(
            create_feature_extractor(fx.RandomFeatures.NAME, [fx.FEATURE_LAYER], cuda=False, verbose=False),
            "tiny test features", "tiny-test:v1"))
    assert MetricsConfig(extractor="tiny-test").validate() == []
    assert fx.extractor_identity("tiny-test") == "tiny-test:v1"
    extractor = fx.get_extractor("tiny-test", None, tmp_path)
    assert extractor.description == "tiny test features"
    (features,) = extractor.net(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    assert features.shape == (2, 2048)


def test_the_registry_checks_what_it_accepts(registry, tmp_path):
    def build(weights_path, cache_dir):
        return "not an extractor"

    with pytest.raises(ValueError, match="'random' is already registered"):
        fx.register_extractor("random", "again", identity=lambda w: "x", build=build)
    for bad in ("", " padded", "a/b"):
        with pytest.raises(ValueError, match="Extractor name must be"):
            fx.register_extractor(bad, "bad name", identity=lambda w: "x", build=build)
    with pytest.raises(TypeError, match="must be callables"):
        fx.register_extractor("no-build", "missing builder", identity=lambda w: "x", build=None)
    fx.register_extractor("wrong-type", "builds a string", identity=lambda w: "x", build=build)
    with pytest.raises(TypeError, match="must build an Extractor around a torch-fidelity FeatureExtractorBase"):
        fx.get_extractor("wrong-type", None, tmp_path)
    with pytest.raises(MetricsError, match=re.escape("use one of inception-fid-helper | inception | random")):
        fx.extractor_identity("inceptoin")


def test_every_registered_extractor_is_documented_in_the_readme():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for name in fx.EXTRACTORS:
        assert f"- `{name}`" in readme, f"README's Metrics section does not describe metrics.extractor {name!r}"


# --- Precision and recall -----------------------------------------------------------------------


def knn_precision_recall(gen: np.ndarray, real: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Kynkaanniemi et al. 2019 in plain NumPy: a sample is covered when it lies within the k-th
    nearest-neighbour radius (self excluded) of any sample of the other set."""
    def radii(x):
        d = np.linalg.norm(x[:, None] - x[None], axis=2)
        return np.sort(d, axis=1)[:, k]          # column 0 is the point itself
    cross = np.linalg.norm(gen[:, None] - real[None], axis=2)   # (N, M)
    precision = np.mean((cross <= radii(real)[None, :]).any(axis=1))
    recall = np.mean((cross.T <= radii(gen)[None, :]).any(axis=1))
    return float(precision), float(recall)


def test_precision_and_recall_are_reported_from_the_same_features(tmp_path):
    reference = make_reference(paintings(40, seed=0), tmp_path)
    extractor = fx.get_extractor("random", None, tmp_path)
    for generated in (paintings(30, seed=1), (paintings(30, seed=1).int() // 3).to(torch.uint8)):
        scores = evaluate([generated], reference, RANDOM)
        features = extract_features([generated], extractor, RANDOM.batch_size).double().numpy()
        precision, recall = knn_precision_recall(features, reference.features.double().numpy())
        assert scores["precision"] == pytest.approx(precision) and scores["recall"] == pytest.approx(recall)
    # Dark copies of the paintings lie off the Monet manifold: precision drops.
    assert evaluate([(paintings(30, seed=1).int() // 3).to(torch.uint8)], reference, RANDOM)["precision"] < \
        evaluate([paintings(30, seed=1)], reference, RANDOM)["precision"]
