"""Write the Kaggle submission (images.zip: 7,000-10,000 256x256 JPEGs) from a trial checkpoint.

    python experiments/export.py runs/cyclegan                         # the best checkpoint by the leaderboard
    python experiments/export.py runs/cyclegan/cyclegan_3f2a1b7c/checkpoint_000040 --out images.zip
    python experiments/export.py runs/wgan_gp --count 10000            # GANs and VAEs sample (default 7,000)
    python experiments/export.py runs/tiny --count 8 --any-count       # a count Kaggle refuses (tests, trials)

CycleGAN translates each held-out test photo once (the prepared data is rebuilt or reused from the
checkpoint's own data config: Kaggle's test/photo holds 7,038), so its count is the number of test
photos. Images are streamed into the zip (bounded memory), then the local FID, MiFID and memorization
distance of exactly what was written (the JPEGs, decoded again) are printed, with the checkpoint's
metrics config and reference statistics (computed once, then cached).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import zipfile
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

KAGGLE_IMAGE_SIZE = 256          # px, the competition's image side
KAGGLE_COUNT = (7_000, 10_000)   # images the competition accepts, inclusive
DEFAULT_SAMPLES = 7_000          # GANs and VAEs: images to sample when --count is not given
JPEG_QUALITY = 95               # with 4:4:4 chroma (subsampling=0): colour edges survive


class ExportError(ValueError):
    """The checkpoint or the request cannot make a submission; the message says what to change."""


def resolve_checkpoint(path: str | os.PathLike, progress=print) -> Path:
    """A checkpoint directory as given (refused with the reason if damaged), or the best intact
    checkpoint of an experiment directory by its search metric, saying which better ones were
    skipped and why."""
    from analysis.experiments import is_experiment_dir
    from core.checkpoints import CHECKPOINT_FILE, CHECKPOINT_PREFIX, checkpoint_problem

    path = Path(path)
    if not path.exists():
        raise ExportError(f"{path} does not exist: pass runs/<experiment> or a trial's checkpoint_NNNNNN directory")
    if path.name.startswith(CHECKPOINT_PREFIX) or (path / CHECKPOINT_FILE).exists():
        problem = checkpoint_problem(path)
        if problem is not None:
            raise ExportError(f"Checkpoint {path} cannot be used: {problem}. Pass the experiment directory "
                              f"({path.parent.parent}) to export its best intact checkpoint, or another "
                              f"checkpoint of the trial.")
        return path
    if not is_experiment_dir(path):
        raise ExportError(f"{path} is neither a checkpoint directory (with {CHECKPOINT_FILE}) nor an experiment "
                          f"directory (with experiment.yaml): pass runs/<experiment> or a trial's checkpoint_NNNNNN")
    import yaml
    from ray.tune import ExperimentAnalysis, ResultGrid

    from core.config import build_config
    from core.results import ranked_checkpoints
    from core.search import EXPERIMENT_FILE

    cfg = build_config(yaml.safe_load((path / EXPERIMENT_FILE).read_text()), source=str(path / EXPERIMENT_FILE))
    grid = ResultGrid(ExperimentAnalysis(str(path.resolve())))
    results = list(grid)
    incumbent = _incumbent_trials(path)
    if incumbent:   # a raced search ships the configuration it decided on several seeds
        results = [r for r in results if Path(r.path).name in incumbent]
        progress(f"the search's incumbent configuration: the best checkpoint of its {len(incumbent)} seeds")
    ranked = ranked_checkpoints(results, cfg.search.metric)
    for checkpoint, value, fs in ranked:
        problem = checkpoint_problem(checkpoint, fs)
        if problem is None:
            return Path(checkpoint)
        progress(f"skipping {checkpoint} ({cfg.search.metric} {value:.4g}): {problem}")
    raise ExportError(f"No trial of {path} kept an intact checkpoint "
                      + ("(none reached an evaluation); train longer" if not ranked else "; see the lines above"))


def _incumbent_trials(exp_dir: Path) -> set[str]:
    """The trials of a raced search's incumbent (leaderboard.csv's `incumbent`), or none."""
    import pandas as pd

    board_path = exp_dir / "leaderboard.csv"
    if not board_path.is_file():
        return set()
    board = pd.read_csv(board_path)
    if "incumbent" not in board:
        return set()
    return set(board.loc[board["incumbent"].astype(bool), "trial"])


def check_image_size(image_size: int, upscale: bool = False) -> None:
    if image_size != KAGGLE_IMAGE_SIZE and not (upscale and image_size < KAGGLE_IMAGE_SIZE):
        raise ExportError(f"This checkpoint makes {image_size}x{image_size} images; Kaggle needs "
                          f"{KAGGLE_IMAGE_SIZE}x{KAGGLE_IMAGE_SIZE}. Export a trial trained with data.image_size=256 "
                          f"(or pass --upscale to resize smaller images, e.g. to try the pipeline on the quickstart).")


def upscaled(batches, size: int = KAGGLE_IMAGE_SIZE):
    """Resize uint8 (B, 3, h, w) batches to (B, 3, size, size), bicubic with antialiasing."""
    for batch in batches:
        resized = torch.nn.functional.interpolate(batch.float(), size=(size, size), mode="bicubic",
                                                  align_corners=False, antialias=True)
        yield resized.round().clamp(0, 255).to(torch.uint8)


def check_count(count: int, test_photos: int | None, any_count: bool) -> None:
    """Refuse, before generating anything, a count Kaggle would reject or that cannot be generated
    (`test_photos`: CycleGAN's number of test photos, None for sampling families)."""
    low, high = KAGGLE_COUNT
    if not any_count and not low <= count <= high:
        raise ExportError(f"{count} images requested; Kaggle needs {low:,} to {high:,}. Use --count in that range "
                          f"(or --any-count for a file Kaggle will not accept)."
                          + (f" This CycleGAN's data holds {test_photos} test photos." if test_photos is not None else ""))
    if test_photos is not None and count > test_photos:
        raise ExportError(f"CycleGAN translates each test photo once and this data holds {test_photos}; "
                          f"--count must be at most {test_photos}")
    if count < 2:
        raise ExportError(f"--count must be at least 2 (FID needs two images), got {count}")


def write_zip(batches, out: Path, count: int, progress: bool = True):
    """Write uint8 (B, 3, H, W) batches as 00000.jpg, 00001.jpg, ... into `out` while yielding each
    batch decoded back from its JPEG bytes (what Kaggle will score). The zip appears complete or not at all."""
    from tqdm import tqdm

    written = 0
    with _unnamed_file(out) as (handle, publish), zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_STORED) as archive, \
            tqdm(total=count, unit="img", desc=f"writing {out.name}", disable=not progress) as bar:
        for batch in batches:
            decoded = []
            for image in batch:   # (3, H, W) uint8
                buffer = io.BytesIO()
                Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
                archive.writestr(f"{written:05d}.jpg", buffer.getvalue())
                decoded.append(torch.from_numpy(np.array(Image.open(buffer).convert("RGB"))).permute(2, 0, 1))
                written += 1
            bar.update(len(decoded))
            yield torch.stack(decoded)   # (B, 3, H, W) uint8, as written
        archive.close()   # (the zip's directory, before the file is published)
        publish()


@contextmanager
def _unnamed_file(out: Path):
    """A file in out's directory that has no name until `publish()` gives it out's (atomically), so
    an export stopped at any moment, SIGKILL included, leaves no partial zip behind: Linux's
    O_TMPFILE, whose file the kernel removes with its last descriptor. Where the file system lacks
    it, a hidden `.<name>.partial` removed on every exit this process sees."""
    try:
        fd = os.open(out.parent, os.O_TMPFILE | os.O_WRONLY, 0o644)
    except (AttributeError, OSError):   # (no O_TMPFILE: not Linux, or a file system without it)
        fd = None
    if fd is not None:
        handle = os.fdopen(fd, "wb")

        def publish():
            handle.flush()
            staged = out.with_name(f".{out.name}.{os.getpid()}.staged")
            # A name beside out, then out's, atomically. (linkat with AT_SYMLINK_FOLLOW through
            # /proc/self/fd; Python calls plain link(), which does not follow, unless given a dir_fd.)
            directory = os.open(out.parent, os.O_RDONLY)
            try:
                os.link(f"/proc/self/fd/{handle.fileno()}", staged, src_dir_fd=directory, follow_symlinks=True)
            finally:
                os.close(directory)
            os.replace(staged, out)

        with handle:
            yield handle, publish
        return
    partial = out.with_name(f".{out.name}.partial")
    try:
        with open(partial, "wb") as handle:
            yield handle, lambda: None
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)


def export(checkpoint: Path, out: Path, count: int | None = None, any_count: bool = False, batch_size: int = 32,
           device: str = "cpu", progress=print, upscale: bool = False) -> dict:
    """Write the submission from one checkpoint; returns core.metrics.evaluate's scores of it."""
    from analysis.checkpoints import load_checkpoint
    from core import metrics as M
    from core.checkpoints import CHECKPOINT_FILE, load_state
    from core.config import build_config

    saved = load_state(checkpoint)["config"]
    cfg = build_config(saved, source=str(checkpoint / CHECKPOINT_FILE))
    check_image_size(cfg.data.image_size, upscale)   # before rebuilding any data
    loaded = load_checkpoint(checkpoint, device=device, progress=progress)
    test_photos = loaded.data.count("test/photo") if loaded.family.translates_photos else None
    count = count if count is not None else test_photos or DEFAULT_SAMPLES   # (0 is refused, not the default)
    check_count(count, test_photos, any_count)
    if any_count and not KAGGLE_COUNT[0] <= count <= KAGGLE_COUNT[1]:
        progress(f"Note: {count} images; Kaggle accepts only {KAGGLE_COUNT[0]:,} to {KAGGLE_COUNT[1]:,}.")

    reference = M.load_reference(M.reference_statistics(loaded.data, cfg.metrics, cfg.cache_path, device=device,
                                                        progress=progress))
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        images = loaded.family.generate(count, batch_size)
        if cfg.data.image_size != KAGGLE_IMAGE_SIZE:
            progress(f"Upscaling {cfg.data.image_size} px images to {KAGGLE_IMAGE_SIZE} px (--upscale): fine to try the "
                     f"pipeline, but a model trained at 256 px will score far better.")
            images = upscaled(images)
        written = write_zip(images, out, count)
        return M.evaluate(written, reference, cfg.metrics, device=device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", help="experiment directory (its best checkpoint) or a checkpoint_NNNNNN directory")
    parser.add_argument("--out", default="images.zip", help="the zip to write (default: images.zip)")
    parser.add_argument("--count", type=int, help=f"images to write (default: CycleGAN every test photo, "
                                                  f"others {DEFAULT_SAMPLES:,}); Kaggle needs 7,000-10,000")
    parser.add_argument("--any-count", action="store_true", help="allow a count outside 7,000-10,000 (Kaggle refuses it)")
    parser.add_argument("--batch-size", type=int, default=32, help="images generated at once")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--upscale", action="store_true",
                        help="resize images of a smaller checkpoint to 256 px (to try the pipeline; scores poorly)")
    args = parser.parse_args(argv)

    from core.checkpoints import CheckpointError
    from core.data import DataError

    try:
        checkpoint = resolve_checkpoint(args.path)
        print(f"Checkpoint: {checkpoint}")
        scores = export(checkpoint, Path(args.out), args.count, args.any_count, args.batch_size, args.device,
                        upscale=args.upscale)
    except (ExportError, CheckpointError, DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from core import metrics as M

    print(f"Wrote {args.out}")
    print(f"Local scores of the written images against train/monet ({scores['extractor']}):")
    print(f"  FID {scores[M.FID]:.4f}   MiFID {scores[M.MIFID]:.4f}   "
          f"memorization distance {scores[M.MEMORIZATION]:.4f}   KID {scores[M.KID]:.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
