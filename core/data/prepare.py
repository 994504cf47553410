"""Materialize a dataset once, in the cache, in the Kaggle layout; describe it in a manifest.

Driver side (before any trial starts):

    data = prepare_data(cfg.data, cfg.cache_path)   # -> PreparedData; prints what it does
    data.root                                        # pass this path to the trials

Trial side:

    data = load_prepared(root)                       # reads root/manifest.json only

Every source ends as a plan: for each split, the images to write (a file to read, or a built-in
picture to render) with their labels. One function, `_materialize`, turns any plan into a
prepared folder: every image as RGB PNG, resized so its short side is `load_size`, in

    root/train/monet[/<class>]/*.png   paintings; class = sub-folder name (labels), if any
    root/train/photo[/<class>]/*.png   photos to translate
    root/test/photo[/<class>]/*.png    held-out photos (translated and scored)
    root/manifest.json                 files, labels, skipped counts, fingerprint

The folder is built under a temporary name and renamed when complete (manifest last), so a
half-prepared folder is never used; a folder with a manifest is reused as it is. Its name hashes
what went into it (source files with sizes and modification times, sizes, caps), so changed
inputs give a new folder. The `fingerprint` hashes the prepared files' names and bytes:
reference statistics and other caches key on it.

Sources (DataConfig.source):
- builtin: procedural photos and paintings (core/data/builtin.py), rendered at load_size into
  cache_dir/builtin/<key>/; deterministic in (builtin_count, split_seed, test_fraction).
- folder: DataConfig.root holds train/monet, train/photo, test/photo (any image formats, sizes and
  modes; class sub-folders allowed); prepared into cache_dir/prepared/<key>/. Files that cannot be
  decoded are skipped and counted, never a crash.
- kaggle: the competition zip, downloaded to DataConfig.root (default cache_dir/kaggle/<competition>)
  and unzipped (core/data/kaggle.py); its photos are split into train/test with split_seed and
  test_fraction; then prepared like a folder.
- kaggle_dataset: a Kaggle dataset's zip (DataConfig.dataset, e.g. steubk/wikiart), downloaded to
  DataConfig.root (default cache_dir/kaggle/datasets/<owner>/<name>) and read in place, never
  unzipped. DataConfig.include picks the folders whose images are the paintings (train/monet);
  their class labels are the sub-folders below the included folders, or DataConfig.classes maps
  labels to folders, or to values of DataConfig.label_column in the dataset's DataConfig.label_csv
  (WikiArt's wclasses.csv codes the genre of every painting). DataConfig.photos, if given, picks
  folders of photos, split into train/test like the competition's; without it the photo splits
  are empty (the VAE and WGAN-GP use paintings alone). DataConfig.per_class caps each class with a
  seeded pick.

Every source skips, and counts, files that cannot be decoded and images too small to train on:
shorter side below min_source_side(image_size) = a quarter of data.image_size, at least 8 px
(upscaled four times or more, an image is a blur, not a painting).

DataConfig.max_images caps every split at that many images, picked by a shuffle seeded with
split_seed (a representative subset of every class, the same on every run), for smoke tests.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import hashlib
import io
import json
import os
import shutil
import zipfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Callable

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from core.data import builtin
from core.errors import DataError
from core.data.kaggle import Source, fetch_competition, fetch_dataset, is_downloaded

SPLITS = ("train/monet", "train/photo", "test/photo")
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1  # bump when the prepared layout or the image processing changes
LAYOUT = ("Expected layout:\n"
          "  <root>/train/monet/   paintings (optionally in class sub-folders: the labels)\n"
          "  <root>/train/photo/   photos to translate\n"
          "  <root>/test/photo/    held-out photos (translated and scored)")


@dataclass(frozen=True)
class PreparedData:
    """A prepared dataset: a folder in the Kaggle layout and what it holds."""

    root: Path                                 # folder with train/monet, train/photo, test/photo, manifest.json
    fingerprint: str                           # 16 hex chars: hash of the prepared files' names and bytes
    class_names: tuple[str, ...]               # labels: sub-folder names of train/monet (sorted); () if flat
    files: dict[str, list[tuple[str, int]]]    # split -> sorted [(path relative to root, label or -1)]
    skipped: dict[str, int]                    # split -> unreadable source files left out
    image_size: int                            # px, square side the networks see
    load_size: int                             # px, short side of the prepared images

    def count(self, split: str) -> int:
        return len(self.files[split])


@dataclass(frozen=True)
class _Item:
    """One image of a plan."""

    dest: str                                  # prepared PNG, relative to the root ("train/monet/sea/x.png")
    label: int                                 # class index, or -1
    load: Callable[[int], Image.Image]         # short side (px) -> RGB image; raises _Unreadable
    name: str                                  # the source, as messages name it


class _Unreadable(Exception):
    """A source file that cannot be decoded as an image."""


def min_source_side(image_size: int) -> int:
    """px: the shortest side a source image may have; smaller ones are skipped (see the top)."""
    return max(image_size // 4, 8)


# --- Entry points --------------------------------------------------------------------------------


def prepare_data(data_cfg, cache_dir: Path, progress: Callable[[str], None] = print) -> PreparedData:
    """Materialize the data `data_cfg` (core.config.DataConfig) describes under `cache_dir`, or
    reuse it; return its description. Raises DataError for problems the user must fix."""
    with contextlib.ExitStack() as open_files:  # a kaggle_dataset's zip stays open while it is read
        return _prepare(data_cfg, Path(cache_dir).expanduser(), progress, open_files)


def _prepare(data_cfg, cache_dir: Path, progress: Callable[[str], None],
             open_files: contextlib.ExitStack) -> PreparedData:
    load_size = data_cfg.resolved_load_size
    if data_cfg.source == "builtin":
        plan, class_names, identity = _builtin_plan(data_cfg)
        parent = cache_dir / "builtin"
    elif data_cfg.source == "folder":
        plan, class_names, identity = _folder_plan(Path(data_cfg.root).expanduser().resolve())
        parent = cache_dir / "prepared"
    elif data_cfg.source == "kaggle":
        folder = download_folder(data_cfg, cache_dir)
        fetch_competition(data_cfg.competition, folder, data_cfg.force_download, progress)
        plan, class_names, identity = _kaggle_plan(folder.resolve(), data_cfg)
        parent = cache_dir / "prepared"
    elif data_cfg.source == "kaggle_dataset":
        errors = data_cfg.dataset_selection_errors()  # also when the DataConfig was built in code
        if errors:
            raise DataError("; ".join(errors))
        archive = fetch_dataset(data_cfg.dataset, download_folder(data_cfg, cache_dir), data_cfg.force_download,
                                progress)
        plan, class_names, identity = _dataset_plan(archive.resolve(), data_cfg, open_files, progress)
        parent = cache_dir / "prepared"
    else:
        raise DataError(f"data.source must be builtin, folder, kaggle or kaggle_dataset, got {data_cfg.source!r}")

    cap = data_cfg.max_images
    if cap is not None:
        plan = {split: _cap(items, cap, data_cfg.split_seed, split) for split, items in plan.items()}
    key = _hash({"version": MANIFEST_VERSION, "source": data_cfg.source, "inputs": identity,
                 "load_size": load_size, "image_size": data_cfg.image_size,
                 "min_side": min_source_side(data_cfg.image_size),
                 "cap": [cap, data_cfg.split_seed] if cap is not None else None})
    root = parent / key
    if (root / MANIFEST).is_file():
        prepared = load_prepared(root)
        skipped = sum(prepared.skipped.values())
        note = f" ({skipped} unreadable or too small source files were skipped when it was prepared)" if skipped else ""
        progress(f"Reusing prepared data in {root}{note}")
        return prepared
    return _materialize(plan, class_names, root, data_cfg.image_size, load_size, data_cfg.source, progress)


def download_folder(data_cfg, cache_dir: Path) -> Path:
    """Where a Kaggle source's download lives: data.root, else the cache's kaggle/ folder."""
    if data_cfg.root:
        return Path(data_cfg.root).expanduser()
    if data_cfg.source == "kaggle":
        return Path(cache_dir).expanduser() / "kaggle" / data_cfg.competition
    return Path(cache_dir).expanduser() / "kaggle" / "datasets" / data_cfg.dataset


def needs_download(data_cfg, cache_dir: Path) -> bool:
    """Whether preparing `data_cfg` would download from Kaggle (a download not on disk yet, or
    data.force_download): --dry-run checks everything else without the network."""
    if data_cfg.source not in ("kaggle", "kaggle_dataset"):
        return False
    source = (Source("competition", data_cfg.competition) if data_cfg.source == "kaggle"
              else Source("dataset", data_cfg.dataset))
    return data_cfg.force_download or not is_downloaded(source, download_folder(data_cfg, cache_dir))


def load_prepared(root: str | os.PathLike) -> PreparedData:
    """Read `root/manifest.json`, written by prepare_data."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise DataError(f"{root} has no {MANIFEST}: it is not a prepared dataset, or its preparation was "
                        f"interrupted. Prepare the data with `python experiments/prepare_data.py --space "
                        f"<experiment.yaml>` (or core.data.prepare_data) and pass the folder it prints.")
    manifest = json.loads(path.read_text())
    if manifest.get("version") != MANIFEST_VERSION:
        raise DataError(f"{root} was prepared by another version of paintsweep (manifest version "
                        f"{manifest.get('version')}, expected {MANIFEST_VERSION}). Delete it and prepare again.")
    return PreparedData(
        root=root,
        fingerprint=manifest["fingerprint"],
        class_names=tuple(manifest["class_names"]),
        files={split: [(rel, int(label)) for rel, label in manifest["files"][split]] for split in SPLITS},
        skipped={split: int(manifest["skipped"][split]) for split in SPLITS},
        image_size=int(manifest["image_size"]),
        load_size=int(manifest["load_size"]),
    )


# --- Plans: what each source contributes -------------------------------------------------------


def _builtin_plan(cfg) -> tuple[dict[str, list[_Item]], tuple[str, ...], list]:
    """builtin_count paintings and as many photos, scene kinds taking turns (balanced classes);
    test_fraction of the photos held out. Picture i of a domain is rendered from the seed
    (split_seed, domain, i), so it is the same whatever the size, cap or other pictures."""
    test = set(_test_indices(cfg.builtin_count, cfg.test_fraction, cfg.split_seed))
    plan: dict[str, list[_Item]] = {split: [] for split in SPLITS}
    for i in range(cfg.builtin_count):
        label = i % len(builtin.KINDS)
        kind = builtin.KINDS[label]
        photo_split = "test/photo" if i in test else "train/photo"
        for split, domain in (("train/monet", "monet"), (photo_split, "photo")):
            seed = (cfg.split_seed, builtin.DOMAINS.index(domain), i)
            render = partial(builtin.render, kind, domain, seed)
            plan[split].append(_Item(f"{split}/{kind}/{domain}_{i:05d}.png", label, render, f"{domain} {i}"))
    identity = [builtin.GENERATOR_VERSION, cfg.builtin_count, cfg.split_seed, cfg.test_fraction]
    return plan, builtin.KINDS, identity


def _folder_plan(root: Path) -> tuple[dict[str, list[_Item]], tuple[str, ...], list]:
    """Every non-hidden file under each split folder; labels from the sub-folders of train/monet."""
    if not root.is_dir():
        raise DataError(f"data.root {root} is not a directory. {LAYOUT}")
    for split in SPLITS:
        if not (root / split).is_dir():
            raise DataError(f"{root / split} does not exist. {LAYOUT}")
    listing = {split: _list_files(root / split) for split in SPLITS}
    for split, paths in listing.items():
        if not paths:
            raise DataError(f"{root / split} holds no files. {LAYOUT}")
    class_names = tuple(sorted({rel.parts[0] for rel in listing["train/monet"] if len(rel.parts) > 1}))

    plan, identity = {}, []
    for split, rels in listing.items():
        plan[split] = []
        for rel, dest in zip(rels, _png_names(rels)):
            label = class_names.index(rel.parts[0]) if len(rel.parts) > 1 and rel.parts[0] in class_names else -1
            plan[split].append(_Item(f"{split}/{dest}", label, partial(_read_file, root / split / rel), rel.as_posix()))
            stat = (root / split / rel).stat()
            identity.append([split, rel.as_posix(), stat.st_size, stat.st_mtime_ns])
    return plan, class_names, [str(root), identity]


def _kaggle_plan(folder: Path, cfg) -> tuple[dict[str, list[_Item]], tuple[str, ...], list]:
    """monet_jpg/ -> train/monet; photo_jpg/ split into train/photo and test/photo (seeded)."""
    monets, photos = _list_files(folder / "monet_jpg"), _list_files(folder / "photo_jpg")
    if not monets or not photos:
        raise DataError(f"{folder} has no images in monet_jpg/ or photo_jpg/. Download again with "
                        f"data.force_download=true (or --force-download).")
    test = set(_test_indices(len(photos), cfg.test_fraction, cfg.split_seed))

    def item(split: str, sub: str, rel: Path) -> _Item:
        return _Item(f"{split}/{rel.with_suffix('.png').as_posix()}", -1, partial(_read_file, folder / sub / rel),
                     f"{sub}/{rel.as_posix()}")

    plan = {"train/monet": [item("train/monet", "monet_jpg", rel) for rel in monets],
            "train/photo": [item("train/photo", "photo_jpg", rel) for i, rel in enumerate(photos) if i not in test],
            "test/photo": [item("test/photo", "photo_jpg", rel) for i, rel in enumerate(photos) if i in test]}
    stats = [[sub, rel.as_posix(), (folder / sub / rel).stat().st_size, (folder / sub / rel).stat().st_mtime_ns]
             for sub, rels in (("monet_jpg", monets), ("photo_jpg", photos)) for rel in rels]
    return plan, (), [str(folder), cfg.split_seed, cfg.test_fraction, stats]


def _dataset_plan(archive: Path, cfg, open_files: contextlib.ExitStack,
                  progress: Callable[[str], None]) -> tuple[dict[str, list[_Item]], tuple[str, ...], list]:
    """A kaggle_dataset selection, read from the dataset's zip in place: the paintings under
    cfg.include (all, if None) labelled by folder, by cfg.classes or by cfg.label_csv, capped per
    class -> train/monet/<class>/; the photos under cfg.photos split into train/test like the
    competition's. Member paths are the zip's ("Impressionism/claude-monet_water-lilies.jpg")."""
    try:
        zf = open_files.enter_context(zipfile.ZipFile(archive))
    except zipfile.BadZipFile as e:
        raise DataError(f"{archive} is not a valid zip ({e}); the download was probably interrupted. "
                        f"Rerun with data.force_download=true (or --force-download).") from None
    members = [PurePosixPath(name) for name in zf.namelist() if not name.endswith("/")
               and not any(part.startswith(".") or part == "__MACOSX" for part in name.split("/"))]
    image_suffixes = set(Image.registered_extensions())  # ".jpg", ".png", ... : every format PIL reads
    images = sorted(m for m in members if m.suffix.lower() in image_suffixes)
    folders = sorted({m.parts[0] for m in images if len(m.parts) > 1})

    def under(folder: str) -> list[PurePosixPath]:
        found = [m for m in images if _is_under(m, folder)]
        if not found:
            shown = ", ".join(folders[:40]) + (", ..." if len(folders) > 40 else "")
            raise DataError(f"{archive.name} has no images under {folder!r} (named in the data section). "
                            f"Folder names are paths inside the dataset, as on its Kaggle page; its top-level "
                            f"folders with images: {shown or 'none'}.")
        return found

    photos = sorted({m for folder in cfg.photos or [] for m in under(folder)})
    photo_set = set(photos)
    if cfg.include is None:
        paintings = [m for m in images if m not in photo_set]
    else:
        paintings = sorted({m for folder in cfg.include for m in under(folder)} - photo_set)

    # Class labels: painting -> the set of class names it falls into (exactly one: kept).
    if cfg.label_csv:
        by_path = _csv_labels(zf, archive, cfg)
        value_to_class = ({str(value): name for name, values in cfg.classes.items() for value in _as_list(values)}
                          if cfg.classes else None)
        labels = {}
        for m in paintings:
            values = by_path.get(m.as_posix())
            if values is not None:
                labels[m] = {value_to_class.get(v) for v in values} - {None} if value_to_class else set(values)
        if len(labels) < len(paintings):
            progress(f"left out {len(paintings) - len(labels)} images that {cfg.label_csv} does not list")
    elif cfg.classes:
        for folder in (f for values in cfg.classes.values() for f in _as_list(values)):
            under(folder)  # every folder a class names must exist
        labels = {m: {name for name, values in cfg.classes.items() if any(_is_under(m, f) for f in _as_list(values))}
                  for m in paintings}
    else:  # the folder below the included one ("Apple Golden 1"), or the included folder itself ("Impressionism")
        labels = {}
        for m in paintings:
            base = next((PurePosixPath(f) for f in cfg.include or [] if _is_under(m, f)), PurePosixPath())
            rest = m.relative_to(base).parts
            labels[m] = {rest[0] if len(rest) > 1 else base.name} - {""}
    ambiguous = [m for m, names in labels.items() if len(names) > 1]
    if ambiguous:
        progress(f"left out {len(ambiguous)} images that fall into more than one class, e.g. {ambiguous[0]} "
                 f"({', '.join(sorted(labels[ambiguous[0]]))})")
    chosen = {m: next(iter(names)) for m, names in labels.items() if len(names) == 1}
    # Without a class rule, an image at the zip's top level has no folder to name its class: it is
    # unlabelled (-1), like a file outside the class sub-folders of a folder source.
    unlabelled = [m for m, names in labels.items() if not names] if not (cfg.classes or cfg.label_csv) else []
    if cfg.classes:
        empty = [name for name in cfg.classes if name not in chosen.values()]
        if empty:
            rule = f"{cfg.label_csv} column {cfg.label_column!r}" if cfg.label_csv else "the folders data.classes names"
            raise DataError(f"data.classes {', '.join(map(repr, empty))} gets no images from {archive.name} "
                            f"(by {rule}, among the images under data.include). Check its folders or values "
                            f"against the dataset's files.")
    elif not chosen and not unlabelled:
        raise DataError(f"{archive.name} has no images to take as paintings (data.include, data.label_csv). "
                        f"Check them against the dataset's files.")
    class_names = tuple(sorted(set(chosen.values())))

    # Per-class cap: a seeded pick from each class, kept in sorted order.
    by_class: dict[int, list[PurePosixPath]] = {}
    for m in sorted(chosen):
        by_class.setdefault(class_names.index(chosen[m]), []).append(m)
    if cfg.per_class is not None:
        for label, ms in by_class.items():
            if len(ms) > cfg.per_class:
                keep = np.random.default_rng([cfg.split_seed, label]).permutation(len(ms))[:cfg.per_class]
                by_class[label] = [ms[i] for i in sorted(keep)]

    def items(split: str, pairs: list[tuple[PurePosixPath, int]]) -> list[_Item]:
        dests = _png_names([m for m, _ in pairs])
        return [_Item(f"{split}/{class_names[label] + '/' if label >= 0 else ''}{dest}", label,
                      partial(_read_member, zf, m.as_posix()), m.as_posix())
                for (m, label), dest in zip(pairs, dests)]

    monet = sorted([(m, label) for label, ms in by_class.items() for m in ms] + [(m, -1) for m in unlabelled])
    if len(photos) == 1:
        raise DataError(f"data.photos selects a single photo in {archive.name}; a train/test split needs at least 2.")
    test = set(_test_indices(len(photos), cfg.test_fraction, cfg.split_seed)) if photos else set()
    plan = {"train/monet": items("train/monet", monet),
            "train/photo": items("train/photo", [(m, -1) for i, m in enumerate(photos) if i not in test]),
            "test/photo": items("test/photo", [(m, -1) for i, m in enumerate(photos) if i in test])}
    stat = archive.stat()
    selection = {key: getattr(cfg, key) for key in ("dataset", "include", "classes", "label_csv", "label_column",
                                                    "photos", "per_class", "split_seed", "test_fraction")}
    return plan, class_names, [str(archive), stat.st_size, stat.st_mtime_ns, selection]


def _csv_labels(zf: zipfile.ZipFile, archive: Path, cfg) -> dict[str, list[str]]:
    """{member path: label values} from cfg.label_csv inside the zip. A cell may hold one value
    ("4") or a Python-style list ("['landscape', 'portrait']"). The column naming the image is
    the first of filename / file / path / image the CSV has."""
    try:
        raw = zf.read(cfg.label_csv)
    except KeyError:
        csvs = sorted(name for name in zf.namelist() if name.lower().endswith(".csv"))
        raise DataError(f"{archive.name} has no {cfg.label_csv} (data.label_csv); its CSV files: "
                        f"{', '.join(csvs) or 'none'}.") from None
    reader = csv.DictReader(io.StringIO(raw.decode("utf-8-sig")))
    columns = reader.fieldnames or []
    path_column = next((c for c in ("filename", "file", "path", "image") if c in columns), None)
    if path_column is None or cfg.label_column not in columns:
        missing = (f"no column {cfg.label_column!r} (data.label_column)" if path_column else
                   "no column naming the image files (filename, file, path or image)")
        raise DataError(f"{cfg.label_csv} in {archive.name} has {missing}; its columns: {', '.join(columns)}.")
    labels = {}
    for row in reader:
        cell = (row.get(cfg.label_column) or "").strip()
        if cell.startswith("["):
            try:
                values = [str(v).strip() for v in ast.literal_eval(cell)]
            except (ValueError, SyntaxError):
                values = [cell]
        else:
            values = [cell] if cell else []
        labels[(row.get(path_column) or "").strip().lstrip("/")] = values
    return labels


def _is_under(member: PurePosixPath, folder: str) -> bool:
    folder = folder.strip("/")
    return member.as_posix().startswith(folder + "/") if folder else True


def _as_list(values) -> list:
    return list(values) if isinstance(values, (list, tuple)) else [values]


def _png_names(rels: list[PurePosixPath] | list[Path]) -> list[str]:
    """The prepared name of each source file: its path with .png for its suffix, except that a.jpg
    and a.png (which would both become a.png) keep their full names (a.jpg.png)."""
    clashes = Counter(rel.with_suffix(".png") for rel in rels)
    return [(rel.with_suffix(".png") if clashes[rel.with_suffix(".png")] == 1 else rel.with_name(rel.name + ".png"))
            .as_posix() for rel in rels]


def _list_files(folder: Path) -> list[Path]:
    """Files under `folder` (recursively), relative to it, sorted; hidden files and folders left out."""
    return sorted(p.relative_to(folder) for p in folder.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _test_indices(n: int, fraction: float, seed: int) -> np.ndarray:
    """The indices (of n) held out for testing: round(n * fraction), at least 1, at most n - 1."""
    n_test = min(max(round(n * fraction), 1), n - 1)
    return np.random.default_rng(seed).permutation(n)[:n_test]


def _cap(items: list[_Item], cap: int, seed: int, split: str) -> list[_Item]:
    """At most `cap` items: a seeded random subset, kept in the original (sorted) order."""
    if len(items) <= cap:
        return items
    keep = np.random.default_rng([seed, SPLITS.index(split)]).permutation(len(items))[:cap]
    return [items[i] for i in sorted(keep)]


# --- Materializing a plan ------------------------------------------------------------------------


def _materialize(plan: dict[str, list[_Item]], class_names: tuple[str, ...], root: Path, image_size: int,
                 load_size: int, source: str, progress: Callable[[str], None]) -> PreparedData:
    """Write every image of `plan` under a temporary folder, then rename it to `root`."""
    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    min_side = min_source_side(image_size)
    try:
        files, skipped, digests = {}, {}, []
        # PIL decodes, resizes and encodes with the GIL released, so threads use every core.
        with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
            for split in SPLITS:
                items = plan[split]
                if not items:  # kaggle_dataset without data.photos: paintings only
                    progress(f"No images for {split}: the data section selects none (data.photos)")
                else:
                    progress(f"Preparing {len(items)} images for {split} ({load_size} px) in {root}")
                write = partial(_write_image, folder=tmp, load_size=load_size, min_side=min_side)
                # A progress bar on a terminal only (tqdm's disable=None): silent in logs and tests.
                results = list(tqdm(pool.map(write, items), total=len(items), desc=f"  {split}", unit="img",
                                    disable=None, leave=False))
                for reason in ("unreadable", "too small"):
                    bad = [item.name for item, (_, why) in zip(items, results) if why == reason]
                    if bad:
                        shown = ", ".join(bad[:5]) + (", ..." if len(bad) > 5 else "")
                        what = ("unreadable files" if reason == "unreadable" else
                                f"images smaller than {min_side} px (shorter side; a quarter of data.image_size)")
                        progress(f"skipped {len(bad)} {what} in {split}: {shown}")
                kept = [(item, digest) for item, (digest, _) in zip(items, results) if digest is not None]
                if items and not kept:
                    small = sum(why == "too small" for _, why in results)
                    raise DataError(f"None of the {len(items)} files of {split} could be used ({len(items) - small} "
                                    f"unreadable, {small} smaller than {min_side} px; for example {items[0].name}). "
                                    f"Replace them with JPEG or PNG images of at least {min_side} px."
                                    + (f" {LAYOUT}" if source == "folder" else ""))
                files[split] = sorted((item.dest, item.label) for item, _ in kept)
                skipped[split] = len(items) - len(kept)
                digests += [(item.dest, digest) for item, digest in kept]
        manifest = {"version": MANIFEST_VERSION, "source": source, "fingerprint": _hash(sorted(digests)),
                    "image_size": image_size, "load_size": load_size, "class_names": list(class_names),
                    "files": files, "skipped": skipped}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))  # last: it marks the folder complete
        _publish(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return load_prepared(root)


def _publish(tmp: Path, root: Path) -> None:
    """Rename the finished `tmp` folder to `root` (atomic on one file system)."""
    try:
        os.replace(tmp, root)
    except OSError:  # root exists: another process finished the same data first, or a stale leftover
        if (root / MANIFEST).is_file():
            return
        shutil.rmtree(root)
        os.replace(tmp, root)


def _write_image(item: _Item, folder: Path, load_size: int, min_side: int) -> tuple[str | None, str | None]:
    """Write one prepared PNG under `folder`; return (hash of its size and bytes, None), or (None,
    why it was skipped: "unreadable" | "too small")."""
    try:
        image = item.load(load_size)
    except _Unreadable:
        return None, "unreadable"
    # A JPEG's draft decode never goes below load_size, so a short side under min_side is the source's own.
    if min(image.size) < min_side:
        return None, "too small"
    image = _resize_short_side(image, load_size)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3)  # level 3: about as small as 6, much faster
    data = buffer.getvalue()
    path = folder / item.dest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return f"{len(data)}:{hashlib.sha256(data).hexdigest()}", None


def _read_member(zf: zipfile.ZipFile, name: str, load_size: int) -> Image.Image:
    """Decode one image of a zip (ZipFile reads are safe from several threads) as RGB."""
    try:
        data = zf.read(name)
    except (OSError, zipfile.BadZipFile, EOFError) as e:  # a damaged member: a CRC or header error
        raise _Unreadable(str(e)) from e
    return _read_file(io.BytesIO(data), load_size)


def _read_file(path: Path | io.BytesIO, load_size: int) -> Image.Image:
    """Decode an image file of any mode as RGB; raise _Unreadable if it is not a readable image."""
    try:
        with Image.open(path) as image:
            scale = load_size / min(image.size)
            image.draft(None, (int(image.width * scale) + 1, int(image.height * scale) + 1))  # JPEG: decode smaller
            image.load()
            return _to_rgb(ImageOps.exif_transpose(image))
    except Exception as e:  # PIL raises many types on bad data (OSError, SyntaxError, ValueError, ...)
        raise _Unreadable(str(e)) from e


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB from any PIL mode: 16-bit grey scaled to 8 bits, transparency composited onto white."""
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):  # 16-bit greyscale, 0..65535
        image = Image.fromarray((np.asarray(image, np.float32) / 257.0 + 0.5).clip(0, 255).astype(np.uint8))
    elif image.mode == "F":  # floating-point greyscale, taken as 0..255
        image = Image.fromarray(np.asarray(image, np.float32).clip(0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert("RGB")


def _resize_short_side(image: Image.Image, size: int) -> Image.Image:
    """Scale so that the shorter side is `size` px, keeping the aspect ratio."""
    w, h = image.size
    scale = size / min(w, h)
    target = (size, max(size, round(h * scale))) if w <= h else (max(size, round(w * scale)), size)
    return image if target == image.size else image.resize(target, Image.Resampling.BICUBIC, reducing_gap=3.0)


def _hash(value) -> str:
    """16 hex chars identifying a JSON-serializable value."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]
