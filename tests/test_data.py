"""The data layer: sources, caching, manifests, datasets, transforms, Kaggle failures.

Everything runs offline on tiny images. The Kaggle tests drive the real `kaggle` client in a
subprocess against a local HTTP server (see `_download_in_subprocess`)."""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.config import DataConfig
from core.data import (SPLITS, DataError, ImageDataset, UnpairedDataset, eval_transform, load_prepared,
                       prepare_data, train_transform)
from core.data.kaggle import credential_source

REPO = Path(__file__).resolve().parents[1]
KINDS = ("forest", "meadow", "mountain", "sea", "sunset")
quiet = lambda message: None  # noqa: E731  (progress callback that prints nothing)


def _digests(root: Path) -> dict[str, str]:
    """sha256 of every file under root except the manifest, by relative path (read from disk)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "manifest.json"}


def _save(path: Path, image: Image.Image, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)


# --- builtin ---------------------------------------------------------------------------------------


def test_builtin_is_deterministic_cached_and_reused(tmp_path, capsys):
    cfg = DataConfig(source="builtin", image_size=16, builtin_count=10, test_fraction=0.2)
    first = prepare_data(cfg, tmp_path / "a", progress=quiet)
    second = prepare_data(cfg, tmp_path / "b", progress=quiet)  # a fresh cache: generated again
    assert _digests(first.root) == _digests(second.root)
    assert first.fingerprint == second.fingerprint and len(first.fingerprint) == 16
    assert first.root.parent == tmp_path / "a" / "builtin"

    mtimes = {p: p.stat().st_mtime_ns for p in first.root.rglob("*")}
    again = prepare_data(cfg, tmp_path / "a")  # same cache: reused, nothing rewritten
    assert "Reusing" in capsys.readouterr().out
    assert again == first
    assert {p: p.stat().st_mtime_ns for p in first.root.rglob("*")} == mtimes

    other_seed = prepare_data(DataConfig(source="builtin", image_size=16, builtin_count=10, test_fraction=0.2,
                                         split_seed=1), tmp_path / "a", progress=quiet)
    assert other_seed.root != first.root
    assert set(_digests(other_seed.root).values()).isdisjoint(_digests(first.root).values())


def test_builtin_labels_counts_and_sizes(tiny_data):
    assert tiny_data.class_names == KINDS
    assert (tiny_data.count("train/monet"), tiny_data.count("train/photo"), tiny_data.count("test/photo")) == (24, 18, 6)
    assert tiny_data.skipped == {split: 0 for split in SPLITS}
    assert (tiny_data.image_size, tiny_data.load_size) == (32, 36)  # 36 = round(32 * 286 / 256)

    on_disk = {p.relative_to(tiny_data.root).as_posix() for p in tiny_data.root.rglob("*.png")}
    listed = {rel for split in SPLITS for rel, _ in tiny_data.files[split]}
    assert on_disk == listed
    for split in SPLITS:
        for rel, label in tiny_data.files[split]:
            assert rel.startswith(split + "/")
            assert KINDS[label] == rel.split("/")[2]  # label = index of the sub-folder name
            with Image.open(tiny_data.root / rel) as image:
                assert (image.mode, image.size) == ("RGB", (36, 36))
    monet_labels = [label for _, label in tiny_data.files["train/monet"]]
    assert sorted(np.bincount(monet_labels)) == [4, 5, 5, 5, 5]  # kinds take turns: balanced classes


def test_builtin_domains_differ_in_image_statistics(tiny_data):
    """Paintings: pastel (lifted darks, less saturated) and stroke-textured; photos: neither."""
    def features(rel):
        rgb = np.asarray(Image.open(tiny_data.root / rel), np.float64) / 255
        luma = rgb @ [0.299, 0.587, 0.114]
        texture = np.abs(np.diff(luma, axis=0)).mean() + np.abs(np.diff(luma, axis=1)).mean()
        return [np.percentile(luma, 5), (rgb.max(-1) - rgb.min(-1)).mean(), texture]

    paintings = np.array([features(rel) for rel, _ in tiny_data.files["train/monet"]])
    photos = np.array([features(rel) for split in ("train/photo", "test/photo") for rel, _ in tiny_data.files[split]])
    pooled = np.sqrt((paintings.var(0) + photos.var(0)) / 2)
    effect = (paintings.mean(0) - photos.mean(0)) / pooled
    assert effect[0] > 2 and effect[1] < -2 and effect[2] > 2, effect  # darks lifted, paler, more texture
    # A nearest-centroid classifier on the standardized statistics tells the domains apart.
    scale = np.concatenate([paintings, photos]).std(0)
    c_paint, c_photo = paintings.mean(0) / scale, photos.mean(0) / scale
    def is_painting(f):
        return np.linalg.norm(f / scale - c_paint) < np.linalg.norm(f / scale - c_photo)
    correct = sum(map(is_painting, paintings)) + sum(not is_painting(f) for f in photos)
    assert correct / (len(paintings) + len(photos)) >= 0.95
    # Photos vary in content: no two photos are alike.
    flat = [np.asarray(Image.open(tiny_data.root / rel), np.float64).ravel() for rel, _ in tiny_data.files["train/photo"]]
    assert min(np.abs(a - b).mean() for i, a in enumerate(flat) for b in flat[i + 1:]) > 5


def test_max_images_caps_every_split_with_the_same_pictures(tmp_path):
    full = prepare_data(DataConfig(source="builtin", image_size=16, builtin_count=20), tmp_path, progress=quiet)
    capped_cfg = DataConfig(source="builtin", image_size=16, builtin_count=20, max_images=3)
    capped = prepare_data(capped_cfg, tmp_path, progress=quiet)
    assert {split: capped.count(split) for split in SPLITS} == {"train/monet": 3, "train/photo": 3, "test/photo": 2}
    full_bytes, capped_bytes = _digests(full.root), _digests(capped.root)
    assert all(full_bytes[rel] == digest for rel, digest in capped_bytes.items())  # a subset, same pictures
    assert len({rel.split("/")[2] for rel, _ in capped.files["train/monet"]}) > 1  # a shuffle, not the first kind
    assert prepare_data(capped_cfg, tmp_path / "fresh", progress=quiet).files == capped.files


# --- folder ----------------------------------------------------------------------------------------


def _jpeg_bytes(colour=(200, 40, 40), size=(10, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "JPEG")
    return buffer.getvalue()


def _mixed_folder(root: Path) -> None:
    """train/monet with two classes and images of many modes and sizes, plus 3 broken files."""
    rgba = Image.new("RGBA", (40, 20), (255, 0, 0, 0))  # left half: transparent red
    rgba.paste((0, 0, 255, 255), (20, 0, 40, 20))  # right half: opaque blue
    _save(root / "train/monet/water/a.png", rgba)
    _save(root / "train/monet/water/b.jpg", Image.new("CMYK", (30, 30), (0, 255, 255, 0)))  # CMYK red
    palette = Image.new("P", (24, 24), 0)
    palette.putpalette([0, 160, 0] + [0, 0, 0] * 255)  # index 0 = green
    _save(root / "train/monet/trees/c.png", palette)
    _save(root / "train/monet/trees/d.png", Image.fromarray(np.full((20, 20), 128 * 257, np.uint16)))  # 16-bit grey
    _save(root / "train/monet/trees/e.jpg", Image.new("L", (25, 50), 90))
    (root / "train/monet/trees/truncated.jpg").write_bytes(_jpeg_bytes(size=(64, 64))[:200])
    (root / "train/monet/notes.txt").write_text("not an image")
    (root / "train/monet/water/empty.png").write_bytes(b"")
    (root / "train/photo").mkdir(parents=True)
    (root / "train/photo/p1.jpg").write_bytes(_jpeg_bytes(size=(30, 20)))
    (root / "train/photo/p2.jpg").write_bytes(b"\xff\xd8garbage")
    (root / "test/photo").mkdir(parents=True)
    (root / "test/photo/t1.jpg").write_bytes(_jpeg_bytes((10, 200, 10)))
    (root / "test/photo/t2.png").write_bytes(b"")  # unreadable, but not the whole split
    (root / "test/photo/t3.jpg").write_bytes(_jpeg_bytes((10, 10, 200)))
    (root / "test/photo/.DS_Store").write_bytes(b"\0\0")  # hidden files are not data: ignored, not counted


def test_folder_source_converts_every_mode_and_skips_unreadable_files(tmp_path, capsys):
    _mixed_folder(tmp_path / "data")
    cfg = DataConfig(source="folder", root=str(tmp_path / "data"), image_size=16)  # load_size 18
    data = prepare_data(cfg, tmp_path / "cache")
    out = capsys.readouterr().out
    assert "skipped 3 unreadable files in train/monet: " in out
    assert all(name in out for name in ("notes.txt", "trees/truncated.jpg", "water/empty.png"))
    assert "skipped 1 unreadable files in train/photo: p2.jpg" in out
    assert data.skipped == {"train/monet": 3, "train/photo": 1, "test/photo": 1}
    assert {split: data.count(split) for split in SPLITS} == {"train/monet": 5, "train/photo": 1, "test/photo": 2}
    assert data.class_names == ("trees", "water")
    assert dict(data.files["train/monet"]) == {"train/monet/trees/c.png": 0, "train/monet/trees/d.png": 0,
                                               "train/monet/trees/e.png": 0, "train/monet/water/a.png": 1,
                                               "train/monet/water/b.png": 1}
    assert all(label == -1 for split in ("train/photo", "test/photo") for _, label in data.files[split])

    def pixels(rel):
        with Image.open(data.root / rel) as image:
            assert image.mode == "RGB" and min(image.size) == 18
            return np.asarray(image, np.int32)

    a = pixels("train/monet/water/a.png")
    assert a.shape == (18, 36, 3)  # 40 x 20 -> short side 18, aspect kept
    assert np.abs(a[9, 2] - [255, 255, 255]).max() <= 3  # transparent -> white, not the hidden red
    assert np.abs(a[9, 33] - [0, 0, 255]).max() <= 3
    assert np.abs(pixels("train/monet/water/b.png")[9, 9] - [255, 0, 0]).max() <= 20  # CMYK
    assert np.abs(pixels("train/monet/trees/c.png")[9, 9] - [0, 160, 0]).max() <= 3  # palette
    assert np.abs(pixels("train/monet/trees/d.png")[9, 9] - 128).max() <= 1  # 16-bit scaled, not clipped
    assert pixels("train/monet/trees/e.png").shape == (36, 18, 3)  # 25 x 50 grey

    assert prepare_data(cfg, tmp_path / "cache").root == data.root  # reused while nothing changed
    assert "Reusing" in capsys.readouterr().out
    (tmp_path / "data/test/photo/t4.jpg").write_bytes(_jpeg_bytes())
    changed = prepare_data(cfg, tmp_path / "cache", progress=quiet)
    assert changed.root != data.root and changed.count("test/photo") == 3
    assert changed.fingerprint != data.fingerprint


def test_folder_errors_name_the_directory_and_the_layout(tmp_path):
    root = tmp_path / "data"
    (root / "train/monet").mkdir(parents=True)
    (root / "train/photo").mkdir(parents=True)
    (root / "train/monet/m.jpg").write_bytes(_jpeg_bytes())
    (root / "train/photo/p.jpg").write_bytes(_jpeg_bytes())
    cfg = DataConfig(source="folder", root=str(root), image_size=16)
    with pytest.raises(DataError) as missing:
        prepare_data(cfg, tmp_path / "cache", progress=quiet)
    assert f"{root / 'test/photo'} does not exist" in str(missing.value)
    assert "Expected layout" in str(missing.value) and "<root>/train/monet/" in str(missing.value)

    (root / "test/photo").mkdir(parents=True)
    with pytest.raises(DataError, match=r"test/photo holds no files"):
        prepare_data(cfg, tmp_path / "cache", progress=quiet)

    (root / "test/photo/broken.jpg").write_bytes(b"\xff\xd8\xff")
    with pytest.raises(DataError, match=r"None of the 1 files of test/photo could be used \(1 unreadable, 0 smaller than 8 px"):
        prepare_data(cfg, tmp_path / "cache", progress=quiet)
    assert not list((tmp_path / "cache/prepared").iterdir())  # nothing half-prepared left behind

    with pytest.raises(DataError, match="has no manifest.json"):
        load_prepared(root)


def test_images_far_below_the_training_size_are_skipped_and_counted(tmp_path, capsys):
    """Below a quarter of data.image_size (at least 8 px) on the shorter side, an image would be
    upscaled into a blur: skipped and counted like an unreadable file, in every split."""
    root = tmp_path / "data"
    _save(root / "train/monet/dot.png", Image.new("RGB", (1, 1), (200, 0, 0)))
    _save(root / "train/monet/strip.png", Image.new("RGB", (64, 15), (0, 200, 0)))  # 15 < 64 / 4
    _save(root / "train/monet/ok.png", Image.new("RGB", (16, 40), (0, 0, 200)))      # exactly 16: kept
    _save(root / "train/photo/p.jpg", Image.new("RGB", (70, 70)))
    _save(root / "test/photo/t.jpg", Image.new("RGB", (70, 70)))
    _save(root / "test/photo/tiny.jpg", Image.new("RGB", (3, 90)))
    cfg = DataConfig(source="folder", root=str(root), image_size=64)  # load_size 72; minimum 16 px
    data = prepare_data(cfg, tmp_path / "cache")
    out, err = capsys.readouterr()
    assert err == ""  # no progress bar when stderr is not a terminal
    assert "skipped 2 images smaller than 16 px (shorter side; a quarter of data.image_size) in train/monet: " \
           "dot.png, strip.png" in out
    assert "skipped 1 images smaller than 16 px" in out and "in test/photo: tiny.jpg" in out
    assert data.skipped == {"train/monet": 2, "train/photo": 0, "test/photo": 1}
    assert data.files["train/monet"] == [("train/monet/ok.png", -1)]
    assert data.files["test/photo"] == [("test/photo/t.png", -1)]

    (root / "train/monet/ok.png").unlink()
    with pytest.raises(DataError, match=r"None of the 2 files of train/monet could be used \(0 unreadable, 2 "
                                        r"smaller than 16 px"):
        prepare_data(cfg, tmp_path / "cache", progress=quiet)


# --- transforms and datasets -----------------------------------------------------------------------


def test_transforms_shape_range_crop_and_flip():
    cfg = DataConfig(image_size=32)  # load_size 36
    halves = np.zeros((36, 40, 3), np.uint8)
    halves[:, 20:] = 255  # left black, right white
    image = Image.fromarray(halves)

    x = eval_transform(cfg)(image)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert torch.all(x[:, :, 0] == -1) and torch.all(x[:, :, -1] == 1)  # [0, 255] -> [-1, 1], no flip
    assert torch.equal(eval_transform(cfg)(image), x)  # no randomness

    torch.manual_seed(0)
    flips = [train_transform(DataConfig(image_size=32, random_crop=False))(image) for _ in range(12)]
    assert all(torch.equal(y, x) or torch.equal(y, x.flip(-1)) for y in flips)
    assert any(torch.equal(y, x) for y in flips) and any(torch.equal(y, x.flip(-1)) for y in flips)

    ramp = Image.fromarray(np.tile(np.arange(40, dtype=np.uint8)[None, :, None] * 6, (36, 1, 3)))
    crop = train_transform(DataConfig(image_size=32, flip=False))
    crops = [crop(ramp) for _ in range(12)]
    assert all(c.shape == (3, 32, 32) and c.min() >= -1 and c.max() <= 1 for c in crops)
    assert len({round(c[0, 0, 0].item(), 4) for c in crops}) > 1  # the crop window moves
    assert all(torch.all(c[:, :, 1:] >= c[:, :, :-1]) for c in crops)  # ... and never flips


def test_image_dataset_items_and_a_file_that_broke_after_preparation(tiny_data, tiny_data_cfg, tmp_path, caplog):
    dataset = ImageDataset(tiny_data, "train/monet", eval_transform(tiny_data_cfg))
    assert len(dataset) == 24
    x, label = dataset[3]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and -1 <= x.min() < x.max() <= 1
    assert label == tiny_data.files["train/monet"][3][1]

    copy = tmp_path / "copy"
    shutil.copytree(tiny_data.root, copy)
    broken_rel = tiny_data.files["train/monet"][3][0]
    (copy / broken_rel).write_bytes(b"no longer a PNG")
    damaged = ImageDataset(load_prepared(copy), "train/monet", eval_transform(tiny_data_cfg))
    with caplog.at_level(logging.WARNING, logger="core.data.datasets"):
        for _ in range(3):
            y, y_label = damaged[3]
    assert torch.equal(y, dataset[4][0]) and y_label == dataset[4][1]  # the next image stands in
    assert damaged.unreadable == {broken_rel}
    assert len([r for r in caplog.records if broken_rel in r.getMessage()]) == 1  # logged once

    with pytest.raises(DataError, match="split must be one of"):
        ImageDataset(tiny_data, "val/photo", eval_transform(tiny_data_cfg))


def test_unpaired_dataset_is_reproducible_under_a_seed(tiny_data, tiny_data_cfg):
    transform = train_transform(tiny_data_cfg)
    pairs = UnpairedDataset(ImageDataset(tiny_data, "train/photo", transform),
                            ImageDataset(tiny_data, "train/monet", transform))
    assert len(pairs) == 24  # max(18 photos, 24 paintings)

    def draw(seed):
        torch.manual_seed(seed)
        return [pairs[i] for i in range(8)]

    first, again, other = draw(0), draw(0), draw(1)
    assert set(first[0]) == {"photo", "monet", "label"}
    assert all(torch.equal(a["photo"], b["photo"]) and torch.equal(a["monet"], b["monet"]) and a["label"] == b["label"]
               for a, b in zip(first, again))
    assert any(not torch.equal(a["monet"], b["monet"]) for a, b in zip(first, other))
    assert all(0 <= item["label"] < len(KINDS) for item in first)


# --- kaggle ----------------------------------------------------------------------------------------

SECRET = "s3cr3t-4a7f9e"


@pytest.fixture
def no_kaggle_credentials(monkeypatch, tmp_path):
    """An environment where the Kaggle client finds no credentials: a fresh HOME and config dir."""
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kaggle-config"))
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_kaggle_without_credentials_says_where_to_put_the_token(no_kaggle_credentials, monkeypatch):
    tmp = no_kaggle_credentials
    cfg = DataConfig(source="kaggle", root=str(tmp / "kaggle"), image_size=16)
    with pytest.raises(DataError) as error:
        prepare_data(cfg, tmp / "cache", progress=quiet)
    message = str(error.value)
    for expected in ("No Kaggle credentials found", "Settings -> API -> Create New Token",
                     str(tmp / "kaggle-config" / "kaggle.json"), "chmod 600", "KAGGLE_USERNAME", "KAGGLE_KEY",
                     "data.source=folder"):
        assert expected in message

    monkeypatch.setenv("KAGGLE_KEY", SECRET)  # half a key: still no credentials, and never echoed
    with pytest.raises(DataError) as error:
        prepare_data(cfg, tmp / "cache", progress=quiet)
    assert "No Kaggle credentials found" in str(error.value) and SECRET not in str(error.value)


def test_kaggle_credential_sources(no_kaggle_credentials, monkeypatch):
    tmp = no_kaggle_credentials
    assert credential_source() is None
    (tmp / "kaggle-config").mkdir()
    (tmp / "kaggle-config/kaggle.json").write_text(json.dumps({"username": "painter", "key": SECRET}))
    assert credential_source() == str(tmp / "kaggle-config/kaggle.json")
    (tmp / "kaggle-config/kaggle.json").unlink()
    monkeypatch.setenv("KAGGLE_USERNAME", "painter")
    monkeypatch.setenv("KAGGLE_KEY", SECRET)
    assert "KAGGLE_USERNAME" in credential_source()
    monkeypatch.delenv("KAGGLE_KEY")
    (tmp / "home/.kaggle").mkdir()
    (tmp / "home/.kaggle/access_token").write_text(SECRET)  # new-style token, always read from ~/.kaggle
    assert credential_source() == str(tmp / "home/.kaggle/access_token")
    monkeypatch.setenv("KAGGLE_API_TOKEN", SECRET)
    assert credential_source() == "the KAGGLE_API_TOKEN environment variable"


class _Kaggle(http.server.BaseHTTPRequestHandler):
    """Answers each request with the next of `statuses`, like Kaggle does for a competition whose
    rules (or a dataset whose terms) were not accepted (403), for a name it does not know (404), or
    with the zip (200)."""

    statuses: list[int] = []
    archive = b""  # status 200: the zip to serve
    requests: list[tuple[str, str]] = []

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        _Kaggle.requests.append((self.path, self.headers.get("Authorization", "")))
        status = _Kaggle.statuses.pop(0)
        if status == 200:
            body, kind = self.archive, "application/zip"
        else:
            body = json.dumps({"code": status, "message": "You must accept this competition's rules."}).encode()
            kind = "application/json"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _download_in_subprocess(tmp: Path, proxy_port: int, fetches: list[str]) -> subprocess.CompletedProcess:
    """Run fetch_competition or fetch_dataset (one call per entry of `fetches`, each into its own
    folder tmp/<i>/download) in one fresh interpreter with the real kaggle client and credentials
    from a temporary KAGGLE_CONFIG_DIR; each call's output follows a line `=== <i>`.
    KAGGLE_API_ENVIRONMENT=LOCALHOST (read by the client when it is imported, hence the subprocess)
    makes it call http://localhost, and HTTP_PROXY sends that plain-HTTP request to
    127.0.0.1:proxy_port: no network, no patching."""
    config = tmp / "kaggle-config"
    config.mkdir(parents=True)
    (config / "kaggle.json").write_text(json.dumps({"username": "painter", "key": SECRET}))
    (config / "kaggle.json").chmod(0o600)
    (tmp / "home").mkdir()
    proxy = f"http://127.0.0.1:{proxy_port}"
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp / "home"), "PYTHONPATH": str(REPO),
           "KAGGLE_CONFIG_DIR": str(config), "KAGGLE_API_ENVIRONMENT": "LOCALHOST",
           "HTTP_PROXY": proxy, "http_proxy": proxy, "NO_PROXY": "", "no_proxy": ""}
    call = {"competition": "fetch_competition('gan-getting-started', folder, progress=lambda m: None)",
            "dataset": "fetch_dataset('steubk/wikiart', folder, progress=lambda m: None)"}
    script = ["import sys; from pathlib import Path",
              "from core.data import DataError",
              "from core.data.kaggle import fetch_competition, fetch_dataset"]
    for i, fetch in enumerate(fetches):
        script += [f"print('=== {i}')", f"folder = Path(sys.argv[1]) / '{i}' / 'download'",
                   "try:", f"    {call[fetch]}", "except DataError as e:", "    print('DataError:', e)"]
    return subprocess.run([sys.executable, "-c", "\n".join(script), str(tmp)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)


# What the local Kaggle answers, in order, and what each call asks for: one interpreter for all four.
KAGGLE_ANSWERS = {"competition 403": (403, "competition"), "dataset 403": (403, "dataset"),
                  "dataset 404": (404, "dataset"), "dataset 200": (200, "dataset")}


@pytest.fixture(scope="module")
def local_kaggle(tmp_path_factory) -> dict[str, tuple[str, tuple[str, str], Path]]:
    """{answer: (what the call printed, the (path, Authorization) of its one request, its download
    folder)} for the calls of KAGGLE_ANSWERS against a local Kaggle."""
    tmp = tmp_path_factory.mktemp("local-kaggle")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("Impressionism/a.jpg", _jpeg_bytes())
    _Kaggle.archive = buffer.getvalue()
    _Kaggle.statuses = [status for status, _ in KAGGLE_ANSWERS.values()]
    _Kaggle.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Kaggle)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = _download_in_subprocess(tmp, server.server_address[1], [f for _, f in KAGGLE_ANSWERS.values()])
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout + result.stderr
    outputs = re.split(r"^=== \d+\n", result.stdout, flags=re.M)[1:]
    assert len(outputs) == len(_Kaggle.requests) == len(KAGGLE_ANSWERS), (result.stdout, _Kaggle.requests)  # one request a call
    return {answer: (out, request, tmp / str(i) / "download")
            for i, (answer, out, request) in enumerate(zip(KAGGLE_ANSWERS, outputs, _Kaggle.requests))}


def test_kaggle_403_explains_how_to_accept_the_rules(local_kaggle):
    out, (path, auth), _ = local_kaggle["competition 403"]
    assert "DataError:" in out and "HTTP 403" in out
    assert "https://www.kaggle.com/competitions/gan-getting-started/rules" in out
    assert "accept the rules" in out
    # The real client made the download call, authenticated with the key from KAGGLE_CONFIG_DIR.
    assert path.endswith("/competitions.CompetitionApiService/DownloadDataFiles")
    assert base64.b64decode(auth.removeprefix("Basic ")).decode() == f"painter:{SECRET}"


def test_kaggle_dataset_403_and_404_say_accept_the_terms_or_check_the_name(local_kaggle):
    out, (path, auth), download = local_kaggle["dataset 403"]
    assert out.startswith("DataError: Kaggle refused to download the dataset steubk/wikiart (HTTP 403)")
    assert "accepted the dataset's terms" in out
    assert "Open https://www.kaggle.com/datasets/steubk/wikiart" in out
    assert path.endswith("/datasets.DatasetApiService/DownloadDataset")
    assert base64.b64decode(auth.removeprefix("Basic ")).decode() == f"painter:{SECRET}"
    assert not (download / "wikiart.zip").exists()

    out, _, _ = local_kaggle["dataset 404"]
    assert out.startswith("DataError: Kaggle has no dataset 'steubk/wikiart' (HTTP 404). Check data.dataset")


def test_kaggle_dataset_zip_is_downloaded_by_the_client_then_used_offline(local_kaggle):
    out, (path, _), download = local_kaggle["dataset 200"]
    assert "DataError" not in out
    assert path.endswith("/datasets.DatasetApiService/DownloadDataset")
    assert sorted(p.name for p in download.iterdir()) == ["wikiart.zip"]  # no .kaggle-partial marker left
    assert (download / "wikiart.zip").read_bytes() == _Kaggle.archive
    messages = []
    from core.data.kaggle import fetch_dataset

    assert fetch_dataset("steubk/wikiart", download, progress=messages.append) == download / "wikiart.zip"
    assert messages == [f"Using the Kaggle dataset zip already in {download / 'wikiart.zip'}"]


def test_kaggle_unreachable_explains_the_manual_route(tmp_path):
    with socket.socket() as probe:  # a port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = _download_in_subprocess(tmp_path, port, ["competition"])
    assert result.returncode == 0, result.stderr
    assert "DataError: Kaggle could not be reached to download the competition gan-getting-started" in result.stdout
    assert "gan-getting-started.zip" in result.stdout and "data.source=folder" in result.stdout


def _competition_zip(path: Path, monets: int, photos: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(monets):
            zf.writestr(f"monet_jpg/m{i:02d}.jpg", _jpeg_bytes((20 * i, 100, 50), (12, 12)))
        for i in range(photos):
            zf.writestr(f"photo_jpg/p{i:02d}.jpg", _jpeg_bytes((50, 15 * i, 100), (12, 12)))
        zf.writestr("monet_tfrec/monet00-60.tfrec", b"tfrecord")


def test_kaggle_zip_is_unzipped_and_photos_split_reproducibly(no_kaggle_credentials):
    tmp = no_kaggle_credentials  # no credentials: this path must not need the network
    _competition_zip(tmp / "kaggle/gan-getting-started.zip", monets=4, photos=12)

    def prepare(seed, cache):
        cfg = DataConfig(source="kaggle", root=str(tmp / "kaggle"), image_size=16, test_fraction=0.25, split_seed=seed)
        return prepare_data(cfg, tmp / cache, progress=quiet)

    data = prepare(5, "cache")
    assert {split: data.count(split) for split in SPLITS} == {"train/monet": 4, "train/photo": 9, "test/photo": 3}
    assert data.class_names == () and all(label == -1 for split in SPLITS for _, label in data.files[split])
    train = {Path(rel).stem for rel, _ in data.files["train/photo"]}
    test = {Path(rel).stem for rel, _ in data.files["test/photo"]}
    assert train | test == {f"p{i:02d}" for i in range(12)} and not train & test
    assert sorted((tmp / "kaggle").iterdir()) == [tmp / "kaggle" / name for name in
                                                  (".extracted", "gan-getting-started.zip", "monet_jpg", "photo_jpg")]

    assert prepare(5, "fresh-cache").files == data.files  # same seed, same split
    other = {Path(rel).stem for rel, _ in prepare(6, "cache").files["test/photo"]}
    assert len(other) == 3 and other != test


def test_kaggle_broken_zip_asks_for_a_new_download(no_kaggle_credentials):
    tmp = no_kaggle_credentials
    (tmp / "kaggle").mkdir()
    (tmp / "kaggle/gan-getting-started.zip").write_bytes(b"PK\x03\x04 interrupted download")
    with pytest.raises(DataError, match="force_download=true"):
        prepare_data(DataConfig(source="kaggle", root=str(tmp / "kaggle"), image_size=16), tmp / "cache", progress=quiet)


@pytest.mark.parametrize("content, damage", [
    ("{\"username\": \"painter\", \"key\": ", "is not valid JSON (line 1, column"),
    ("[\"painter\"]", "is not a JSON object"),
    ("{\"username\": \"painter\"}", "has no 'key'"),
    ("{}", "has no 'username' and no 'key'"),
])
def test_a_damaged_kaggle_json_is_named_not_reported_missing(no_kaggle_credentials, content, damage):
    tmp = no_kaggle_credentials
    (tmp / "kaggle-config").mkdir()
    (tmp / "kaggle-config/kaggle.json").write_text(content.replace("painter", SECRET))
    cfg = DataConfig(source="kaggle", root=str(tmp / "kaggle"), image_size=16)
    with pytest.raises(DataError) as error:
        prepare_data(cfg, tmp / "cache", progress=quiet)
    message = str(error.value)
    assert message.startswith(f"{tmp / 'kaggle-config/kaggle.json'} {damage}")
    assert "No Kaggle credentials found" not in message and "Create New Token" in message
    assert SECRET not in message
