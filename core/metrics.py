"""FID, KID and MiFID of generated images against the Monet reference set.

    # Driver, once per experiment (before trials start: one writer, no races):
    path = reference_statistics(prepared, cfg.metrics, cfg.cache_path)
    # Each trial, every few epochs:
    reference = load_reference(path)
    scores = evaluate(family.generate(n, bs), reference, cfg.metrics, device)
    scores[FID], scores[KID], scores[MIFID], scores["extractor"]

FID and KID use torch-fidelity's own math on 2048-d pool features; the features of the generated
images are extracted once per evaluation and reused for FID, KID and MiFID. MiFID is Kaggle's
("I'm Something of a Painter Myself"): FID divided by a memorization distance, which penalizes
generators that copy training Monets.

Reference statistics (mu, sigma and the features themselves, which KID and MiFID need) are cached
under `<cache_dir>/reference/<key>.pt`, the key hashing everything that changes them: the data
fingerprint, image size, extractor and its weights, reference count and file format. We keep our
own file instead of torch-fidelity's cache because that cache has no lock.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric
from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric
from tqdm import tqdm

from core.config import DataConfig, MetricsConfig
from core.checkpoints import atomic_torch_save
from core.feature_extractors import Extractor, MetricsError, extractor_identity, get_extractor

__all__ = ["FID", "KID", "KID_STD", "MIFID", "MEMORIZATION", "DIVERSITY", "COLLAPSED", "PRECISION", "RECALL",
           "MetricsError", "Reference", "evaluate",
           "extract_features", "load_reference", "memorization_distance", "mifid_from_fid",
           "reference_path", "reference_statistics", "to_uint8"]

# Keys of the dict `evaluate` returns (and names of the reported metrics).
FID, KID, KID_STD, MIFID, MEMORIZATION = "fid", "kid", "kid_std", "mifid", "memorization_distance"
PRECISION, RECALL = "precision", "recall"   # Kynkaanniemi et al. 2019: quality, and coverage of the Monets
PRC_NEIGHBORHOOD = 3                     # k of the k-NN balls (torch-fidelity's and the paper's default)
DIVERSITY = "diversity"   # tr(cov generated) / tr(cov reference): 1 ~ as varied as the Monets, 0 = one image
COLLAPSED = "collapsed"   # 1 when every generated image is the same, pixel for pixel (a saturated generator)

REFERENCE_FORMAT = 1                     # bump when the reference file's contents change
REFERENCE_SPLIT = "train/monet"          # generated images are scored against the training Monets
REFERENCE_SUBSET_SEED = 0                # which Monets a capped reference (metrics.reference_samples) uses
MIFID_EPSILON = 1e-14                    # Kaggle's: keeps MiFID finite when the distance is exactly 0
MIFID_CHUNK_ELEMENTS = 8_000_000         # float64 cosine-distance block: 64 MB (e.g. 1142 x 7000)
PROGRESS_DELAY_S = 2.0                   # feature extraction shows a progress bar once it has run this long


def to_uint8(images: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """Float images in `value_range` (what the networks produce: [-1, 1] from a tanh, [0, 1] from a
    sigmoid; any dtype/device) -> uint8 in [0, 255] on the CPU (what extractors take)."""
    low, high = value_range
    return ((images.float().clamp(low, high) - low) * (255.0 / (high - low))).round().to(torch.uint8).cpu()


# --- Features ----------------------------------------------------------------------------------


def extract_features(images: Iterable[torch.Tensor], extractor: Extractor, batch_size: int,
                     device: str | torch.device = "cpu", total: int | None = None,
                     desc: str = "extracting features") -> torch.Tensor:
    """2048-d features of a stream of uint8 (B, 3, H, W) batches of any sizes, run through the
    extractor `batch_size` images at a time. Holds features, never all the images. -> (N, 2048) float32, CPU.

    A progress bar of images (`total` of them, when known) appears on a terminal once the work has
    taken PROGRESS_DELAY_S: Inception on a CPU scores about 8 images/s. Off a terminal (Ray's
    workers, logs, tests) it stays silent."""
    net = extractor.net.to(device).eval()
    features: list[torch.Tensor] = []
    pending: list[torch.Tensor] = []     # images waiting for a full batch
    n_pending = 0
    bar = tqdm(total=total, desc=desc, unit="img", disable=None, delay=PROGRESS_DELAY_S, leave=False)

    def run(batch: torch.Tensor) -> None:
        (out,) = net(batch.to(device))
        features.append(out.float().cpu())  # (b, 2048)
        bar.update(len(batch))

    with torch.no_grad(), bar:
        for batch in images:
            if batch.dtype != torch.uint8 or batch.dim() != 4 or batch.shape[1] != 3:
                raise MetricsError(f"Images to score must be uint8 (B, 3, H, W) batches, got {batch.dtype} "
                                   f"{tuple(batch.shape)}; convert float images in [-1, 1] with core.metrics.to_uint8")
            pending.append(batch)
            n_pending += len(batch)
            if n_pending < batch_size:
                continue
            joined = torch.cat(pending)                        # (n_pending, 3, H, W)
            start = 0
            while n_pending - start >= batch_size:
                run(joined[start:start + batch_size])
                start += batch_size
            pending, n_pending = [joined[start:]], n_pending - start
        if n_pending:
            run(torch.cat(pending))
    if not features:
        raise MetricsError("No images to score: the image iterable was empty")
    return torch.cat(features)


# --- MiFID -------------------------------------------------------------------------------------


def memorization_distance(generated: torch.Tensor, reference: torch.Tensor,
                          chunk_elements: int = MIFID_CHUNK_ELEMENTS) -> float:
    """Kaggle's memorization distance: for each generated image the minimum cosine distance
    1 - |cos| to any reference image, averaged over the generated images.

    generated (N, D), reference (M, D). All-zero feature rows are dropped first, as Kaggle does (their
    cosine is undefined). When every generated row is zero (e.g. a dead generator's flat images),
    Kaggle's mean would be NaN; we return 1.0 instead: no copy of a Monet, no penalty. Computed in
    float64 blocks of about `chunk_elements` distances, so 10,000 x 7,000 images never build the
    whole (N, M) matrix."""
    generated = generated[generated.abs().sum(dim=1) != 0].double()
    reference = reference[reference.abs().sum(dim=1) != 0].double()
    if len(reference) == 0:
        raise MetricsError("Every reference feature vector is 0: the reference images are blank; check the data")
    if len(generated) == 0:
        return 1.0
    generated = torch.nn.functional.normalize(generated, dim=1)   # (N, D), unit rows
    reference = torch.nn.functional.normalize(reference, dim=1)   # (M, D)
    rows = max(1, chunk_elements // len(reference))
    minima = []
    for start in range(0, len(generated), rows):
        cosine = generated[start:start + rows] @ reference.T      # (rows, M)
        minima.append((1.0 - cosine.abs()).min(dim=1).values)     # (rows,)
    return float(torch.cat(minima).mean())


def mifid_from_fid(fid: float, distance: float, threshold: float) -> float:
    """Kaggle's MiFID: FID / d_thr, where d_thr = distance if distance < threshold (memorized:
    penalty grows as the distance shrinks) else 1 (no penalty)."""
    thresholded = distance if distance < threshold else 1.0
    return fid / (thresholded + MIFID_EPSILON)


# --- Reference statistics ----------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    mu: np.ndarray                       # (D,) float64, mean of the reference features
    sigma: np.ndarray                    # (D, D) float64, their covariance
    features: torch.Tensor               # (M, D) float32, the features themselves (KID, MiFID)
    extractor: str                       # description of the extractor that made them
    extractor_id: str                    # extractor name + weights hash (must match at evaluation)
    count: int                           # M, reference images
    key_parts: dict                      # what the cache key hashes
    path: Path                           # the file; its cache_dir (path.parents[1]) also holds converted weights


def _reference_indices(prepared, metrics_cfg: MetricsConfig) -> list[int]:
    """All reference images, or a fixed-seed subset of metrics.reference_samples of them (a subset of the
    sorted list would favour the first class folders)."""
    total = prepared.count(REFERENCE_SPLIT)
    if total < 2:
        raise MetricsError(f"{prepared.root}/{REFERENCE_SPLIT} has {total} readable images; FID needs at least 2")
    cap = metrics_cfg.reference_samples
    if cap is None or cap >= total:
        return list(range(total))
    if cap < 2:
        raise MetricsError(f"metrics.reference_samples must be >= 2 (or null for all), got {cap}")
    generator = torch.Generator().manual_seed(REFERENCE_SUBSET_SEED)
    return sorted(torch.randperm(total, generator=generator)[:cap].tolist())


def reference_path(prepared, metrics_cfg: MetricsConfig, cache_dir: Path) -> Path:
    """Where the reference statistics for this data + metrics config live (they may not exist yet)."""
    key_parts = _key_parts(prepared, metrics_cfg)
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir).expanduser() / "reference" / f"{key}.pt"


def _key_parts(prepared, metrics_cfg: MetricsConfig) -> dict:
    return {"fingerprint": prepared.fingerprint,
            "image_size": prepared.image_size,
            "extractor": extractor_identity(metrics_cfg.extractor, metrics_cfg.weights_path),
            "count": len(_reference_indices(prepared, metrics_cfg)),
            "format": REFERENCE_FORMAT}


def reference_statistics(prepared, metrics_cfg: MetricsConfig, cache_dir: Path, device: str | torch.device = "cpu",
                         progress: Callable[[str], None] = print) -> Path:
    """Compute (or reuse) the reference statistics of the training Monets; returns the file's path.

    Images go through core.data's eval transform (resize + center crop, no randomness) and back to
    uint8, exactly as generated images arrive. Call it in the driver before the trials start."""
    from core.data import ImageDataset, eval_transform

    cache_dir = Path(cache_dir).expanduser()
    path = reference_path(prepared, metrics_cfg, cache_dir)
    if path.is_file():
        try:
            load_reference(path)
            progress(f"reusing reference statistics {path}")
            return path
        except Exception as e:  # a file from an older format or a damaged disk: recompute below
            progress(f"reference statistics {path} unusable ({e}); recomputing")

    start = time.perf_counter()
    extractor = get_extractor(metrics_cfg.extractor, metrics_cfg.weights_path, cache_dir)
    data_cfg = DataConfig(image_size=prepared.image_size, load_size=prepared.load_size)
    monets = Subset(ImageDataset(prepared, REFERENCE_SPLIT, eval_transform(data_cfg)),
                    _reference_indices(prepared, metrics_cfg))
    loader = DataLoader(monets, batch_size=metrics_cfg.batch_size, shuffle=False)
    features = extract_features((to_uint8(images) for images, _labels in loader), extractor,
                                metrics_cfg.batch_size, device, total=len(monets),
                                desc=f"reference statistics ({REFERENCE_SPLIT})")   # (M, 2048)
    statistics = fid_features_to_statistics(features.double())              # float64 mu, sigma

    atomic_torch_save({"format": REFERENCE_FORMAT,
                       "mu": torch.from_numpy(statistics["mu"]),
                       "sigma": torch.from_numpy(statistics["sigma"]),
                       "features": features,
                       "extractor": extractor.description,
                       "extractor_id": extractor.identity,
                       "count": len(features),
                       "key_parts": _key_parts(prepared, metrics_cfg)}, path)
    progress(f"computed reference statistics of {len(features)} images ({REFERENCE_SPLIT}, {extractor.description}) "
             f"in {time.perf_counter() - start:.1f} s -> {path}")
    return path


def load_reference(path: str | Path) -> Reference:
    path = Path(path)
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or data.get("format") != REFERENCE_FORMAT:
        raise MetricsError(f"{path} is not a reference statistics file of format {REFERENCE_FORMAT}; delete it "
                           f"and run reference_statistics again")
    return Reference(mu=data["mu"].numpy(), sigma=data["sigma"].numpy(), features=data["features"],
                     extractor=data["extractor"], extractor_id=data["extractor_id"], count=data["count"],
                     key_parts=data["key_parts"], path=path)


# --- Evaluation --------------------------------------------------------------------------------


class _DistinctImages:
    """Passes image batches through, noting whether any image differs from the first one."""

    def __init__(self, batches: Iterable[torch.Tensor]):
        self.batches, self.first, self.any_differ = batches, None, False

    def __iter__(self):
        for batch in self.batches:
            if self.first is None and len(batch):
                self.first = batch[0]
            if not self.any_differ:
                self.any_differ = bool((batch != self.first).any())
            yield batch


def frechet_distance(features: torch.Tensor, reference: Reference) -> float:
    """FID between generated features (N, D) and the reference statistics.

    torch-fidelity computes tr sqrt(S_ref S_gen) from the eigenvalues of a general D x D matrix
    (2048 x 2048: seconds of CPU per evaluation, and minutes when cores are contended). With fewer
    generated images than dimensions (N < D) the same number comes from an N x N symmetric
    matrix: with B the centered generated features, S_gen = B^T B / (N - 1), and the non-zero
    eigenvalues of S_ref S_gen are those of B S_ref B^T / (N - 1). Exact, not an approximation;
    the test suite checks it against torch-fidelity's value."""
    generated = features.double().numpy()                                   # (N, D)
    n, dim = generated.shape
    if n >= dim:
        statistics = fid_features_to_statistics(features.double())
        return fid_statistics_to_metric(statistics, {"mu": reference.mu, "sigma": reference.sigma},
                                        verbose=False)[KEY_METRIC_FID]
    mu = generated.mean(axis=0)                                             # (D,)
    centered = generated - mu                                               # (N, D)
    small = centered @ reference.sigma @ centered.T / (n - 1)               # (N, N), symmetric PSD
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(small), 0, None)).sum()
    trace_generated = (centered * centered).sum() / (n - 1)                 # tr S_gen
    diff = mu - reference.mu
    return float(diff @ diff + np.trace(reference.sigma) + trace_generated - 2 * tr_covmean)


def evaluate(images: Iterable[torch.Tensor], reference: Reference, metrics_cfg: MetricsConfig,
             device: str | torch.device = "cpu") -> dict:
    """FID, KID (mean and std over subsets), MiFID and the memorization distance of a stream of
    generated uint8 (B, 3, H, W) batches against `reference`, plus the extractor's description.

    The values do not depend on how the images are batched (features are per image)."""
    identity = extractor_identity(metrics_cfg.extractor, metrics_cfg.weights_path)
    if identity != reference.extractor_id:
        raise MetricsError(f"Reference statistics {reference.path} were made with extractor "
                           f"{reference.extractor_id!r}, but metrics.extractor is {identity!r}: compute the "
                           f"reference with the same metrics config (reference_statistics) before evaluating")
    extractor = get_extractor(metrics_cfg.extractor, metrics_cfg.weights_path, reference.path.parents[1])
    distinct = _DistinctImages(images)
    features = extract_features(distinct, extractor, metrics_cfg.batch_size, device,
                                desc="scoring generated images")                  # (N, 2048)
    if len(features) < 2:
        raise MetricsError(f"FID needs at least 2 generated images, got {len(features)}")

    fid = frechet_distance(features, reference)
    subset_size = min(metrics_cfg.kid_subset_size, len(features), reference.count)
    kid = kid_features_to_metric(features.double(), reference.features.double(),
                                 kid_subset_size=subset_size, verbose=False)
    distance = memorization_distance(features, reference.features)
    diversity = float(features.double().var(dim=0).sum() / np.trace(reference.sigma))
    # Precision and recall from the same features (torch-fidelity's k-NN manifolds; k below both counts).
    prc = prc_features_to_metric(features.float(), reference.features.float(), verbose=False, save_cpu_ram=True,
                                 prc_neighborhood=min(PRC_NEIGHBORHOOD, len(features) - 1, reference.count - 1),
                                 prc_batch_size=10_000)
    return {FID: fid,
            DIVERSITY: diversity,
            COLLAPSED: int(not distinct.any_differ),
            KID: kid[KEY_METRIC_KID_MEAN],
            KID_STD: kid[KEY_METRIC_KID_STD],
            MIFID: mifid_from_fid(fid, distance, metrics_cfg.mifid_threshold),
            MEMORIZATION: distance,
            PRECISION: prc[KEY_METRIC_PRECISION],
            RECALL: prc[KEY_METRIC_RECALL],
            "extractor": extractor.description}
