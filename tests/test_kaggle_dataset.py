"""The kaggle_dataset source on small zips laid out like the real datasets, offline: WikiArt
(steubk/wikiart: one folder per style, wclasses.csv coding each painting's genre) and Fruit360
(moltean/fruits: a folder per variety). The zip is placed where the download would put it, so
the real code path runs without network. The download's failures (403, 404) are tested against
a local HTTP server in test_data.py, next to the competition's."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from core.config import ConfigError, build_config, load_experiment
from core.data import DataError, ImageDataset, eval_transform, prepare_data
from core.models.vae import VAE

REPO = Path(__file__).resolve().parents[1]
SPACE = REPO / "search_spaces" / "vae_wikiart.yaml"
quiet = lambda message: None  # noqa: E731  (progress callback that prints nothing)

# wclasses.csv genre codes (ArtGAN's genre order) of the four genres vae_wikiart.yaml selects, plus
# one it leaves out.
GENRES = {"cityscape": 1, "genre_painting": 2, "landscape": 4, "portrait": 6, "still_life": 9}
STYLES = {"Impressionism": 12, "Realism": 21}
PER_GENRE = 3


def _jpeg(colour, size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def _csv(rows) -> str:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue()


def _wikiart_zip(path: Path) -> dict[str, str]:
    """A WikiArt-layout zip: <Style>/<artist>_<title>.jpg, PER_GENRE paintings per genre and style
    (colour encodes the genre), wclasses.csv (file, artist, genre, style as integer codes) and
    classes.csv (genre as a list of names). Also one painting wclasses.csv does not list and one
    1x1 painting. Returns {member: genre} of the listed paintings."""
    genre_of, wclasses = {}, [("file", "artist", "genre", "style")]
    classes = [("filename", "artist", "genre", "description", "phash", "width", "height", "genre_count", "subset")]
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for style, style_code in STYLES.items():
            for g, (genre, code) in enumerate(GENRES.items()):
                for i in range(PER_GENRE):
                    name = f"{style}/painter-{i}_{genre}-{i}-1874.jpg"
                    zf.writestr(name, _jpeg((40 * g, 200 - 30 * i, 100)))
                    genre_of[name] = genre
                    wclasses.append((name, i, code, style_code))
                    classes.append((name, f"painter {i}", f"['{style}']", f"{genre}-{i}", "f0f0", 40, 30, 1, "train"))
        zf.writestr("Impressionism/unknown-painter_untitled.jpg", _jpeg((9, 9, 9)))  # not in wclasses.csv
        zf.writestr("Impressionism/painter-9_speck.jpg", _jpeg((1, 2, 3), (1, 1)))  # listed, but 1 x 1 px
        wclasses.append(("Impressionism/painter-9_speck.jpg", 9, GENRES["landscape"], STYLES["Impressionism"]))
        zf.writestr("wclasses.csv", _csv(wclasses))
        zf.writestr("classes.csv", _csv(classes))
    return genre_of


@pytest.fixture
def wikiart(tmp_path):
    """(download folder holding wikiart.zip, {member: genre})."""
    folder = tmp_path / "kaggle" / "steubk" / "wikiart"
    return folder, _wikiart_zip(folder / "wikiart.zip")


def _wikiart_cfg(folder: Path, *overrides: str):
    """vae_wikiart.yaml as shipped, on the fake zip at 32 px (load size 36) and a tiny VAE."""
    return load_experiment(SPACE, [f"data.root={folder}", "data.image_size=32", "model.base_channels=4",
                                   "model.latent_dim=8", "train.batch_size=4",
                                   "search.baseline=false",   # latent_dim 8 is outside the searched choices
                                   *overrides])


def test_wikiart_genres_become_labelled_folders_and_the_conditional_vae_trains_on_them(wikiart, tmp_path, capsys):
    folder, genre_of = wikiart
    cfg = _wikiart_cfg(folder)
    data = prepare_data(cfg.data, tmp_path / "cache")
    out = capsys.readouterr().out
    assert "left out 1 images that wclasses.csv does not list" in out
    assert "skipped 1 images smaller than 8 px" in out and "painter-9_speck.jpg" in out

    # Impressionism paintings of the four selected genres, each in its genre's folder; Realism, the
    # still lifes and the unlisted painting are left out; the 1 x 1 one is skipped and counted.
    chosen = ("cityscape", "genre_painting", "landscape", "portrait")
    assert data.class_names == chosen
    expected = sorted((f"train/monet/{genre}/{member[:-4]}.png", chosen.index(genre))
                      for member, genre in genre_of.items() if member.startswith("Impressionism/") and genre in chosen)
    assert data.files["train/monet"] == expected and len(expected) == 4 * PER_GENRE
    assert data.skipped == {"train/monet": 1, "train/photo": 0, "test/photo": 0}
    assert data.files["train/photo"] == data.files["test/photo"] == []  # no photos: the VAE needs none
    with pytest.raises(DataError, match="has no photos, which this model family translates.*data.photos"):
        ImageDataset(data, "test/photo", eval_transform(cfg.data))  # what CycleGAN would see
    on_disk = sorted(p.relative_to(data.root).as_posix() for p in (data.root / "train/monet").rglob("*.png"))
    assert on_disk == [rel for rel, _ in expected]
    for rel, label in expected:
        with Image.open(data.root / rel) as image:
            assert image.size == (48, 36)  # 40 x 30 -> short side load_size 36, aspect kept
            red = image.getpixel((24, 18))[0]
        assert abs(red - 40 * list(GENRES).index(chosen[label])) <= 8  # the genre's colour: the right files

    # The conditional VAE takes the genres as its classes and trains a step on them.
    torch.manual_seed(0)
    family = VAE(cfg, data, torch.device("cpu"))
    assert family.num_classes == 4
    images, labels = next(iter(family.make_loader(torch.Generator().manual_seed(0))))
    assert images.shape == (4, 3, 32, 32) and set(labels.tolist()) <= {0, 1, 2, 3}
    weights = [*family.encoder.parameters(), *family.decoder.parameters()]
    before = [w.detach().clone() for w in weights]
    losses = family.train_step((images, labels))
    assert set(losses) >= {"loss", "loss_recon", "loss_kl"}
    assert torch.isfinite(torch.tensor(list(losses.values()))).all()
    assert all(not torch.equal(a, b) for a, b in zip(before, weights) if a.dim() > 1)  # every conv/linear moved
    samples = family.sample(3, label=chosen.index("landscape"))
    assert samples.shape == (3, 3, 32, 32) and samples.dtype == torch.uint8


def test_per_class_cap_is_seeded_and_the_selection_keys_the_cache(wikiart, tmp_path, capsys):
    folder, _ = wikiart
    capped = prepare_data(_wikiart_cfg(folder, "data.per_class=2").data, tmp_path / "cache", progress=quiet)
    counts = [sum(1 for _, label in capped.files["train/monet"] if label == k) for k in range(4)]
    # The cap picks before decoding: landscape's pick may include its 1 x 1 painting, skipped after.
    assert counts[0] == counts[1] == counts[3] == 2 and counts[2] in (1, 2)
    assert capped.skipped["train/monet"] == 2 - counts[2]
    again = prepare_data(_wikiart_cfg(folder, "data.per_class=2").data, tmp_path / "fresh", progress=quiet)
    assert again.files == capped.files  # same seed, same pick, in a fresh cache too
    other = prepare_data(_wikiart_cfg(folder, "data.per_class=2", "data.split_seed=3").data, tmp_path / "cache",
                         progress=quiet)
    assert other.root != capped.root

    assert prepare_data(_wikiart_cfg(folder, "data.per_class=2").data, tmp_path / "cache").root == capped.root
    assert "Reusing prepared data" in capsys.readouterr().out
    styles = prepare_data(_wikiart_cfg(folder, "data.per_class=2", "data.include=[Impressionism,Realism]").data,
                          tmp_path / "cache", progress=quiet)
    assert styles.root != capped.root and styles.class_names == capped.class_names
    assert {rel.split("/")[3] for rel, _ in styles.files["train/monet"]} == {"Impressionism", "Realism"}


def test_style_folders_as_labels_without_a_csv(wikiart, tmp_path):
    folder, genre_of = wikiart
    cfg = _wikiart_cfg(folder, "data.include=[Impressionism,Realism]", "data.label_csv=null", "data.classes=null")
    data = prepare_data(cfg.data, tmp_path / "cache", progress=quiet)
    assert data.class_names == ("Impressionism", "Realism")
    labels = [label for _, label in data.files["train/monet"]]
    # Every painting of both styles, the unlisted one too (no CSV to list it); the 1 x 1 one skipped.
    assert labels.count(0) == len(GENRES) * PER_GENRE + 1 and labels.count(1) == len(GENRES) * PER_GENRE


def _fruits_zip(path: Path) -> None:
    """A Fruit360-layout zip: fruits-360/Training/<variety>/*.jpg and fruits-360/Test/<variety>/*.jpg."""
    with zipfile.ZipFile(path, "w") as zf:
        for v, variety in enumerate(("Apple Golden 1", "Apple Golden 2", "Apple Red 1", "Banana")):
            for i in range(3):
                zf.writestr(f"fruits-360/Training/{variety}/{i}_100.jpg", _jpeg((60 * v, 50, 50), (20, 20)))
        for i in range(8):
            zf.writestr(f"fruits-360/Test/Apple Red 1/{i}_100.jpg", _jpeg((200, 20 * i, 0), (20, 20)))
        zf.writestr("fruits-360/LICENSE", "CC BY-SA 4.0")


def test_folders_mapped_to_classes_and_photos_split_reproducibly(tmp_path):
    folder = tmp_path / "kaggle" / "moltean" / "fruits"
    folder.mkdir(parents=True)
    _fruits_zip(folder / "fruits.zip")

    def prepare(seed: int, cache: str):
        cfg = build_config({"name": "t", "family": "vae", "data": {
            "source": "kaggle_dataset", "dataset": "moltean/fruits", "root": str(folder), "image_size": 16,
            "classes": {"Golden": ["fruits-360/Training/Apple Golden 1", "fruits-360/Training/Apple Golden 2"],
                        "Red": "fruits-360/Training/Apple Red 1"},
            "photos": ["fruits-360/Test"], "test_fraction": 0.25, "split_seed": seed}})
        return prepare_data(cfg.data, tmp_path / cache, progress=quiet)

    data = prepare(0, "cache")
    assert data.class_names == ("Golden", "Red")
    assert [label for _, label in data.files["train/monet"]] == [0] * 6 + [1] * 3  # no bananas
    assert data.files["train/monet"][0][0] == "train/monet/Golden/fruits-360/Training/Apple Golden 1/0_100.png"
    train = {Path(rel).name for rel, _ in data.files["train/photo"]}
    test = {Path(rel).name for rel, _ in data.files["test/photo"]}
    assert (len(train), len(test)) == (6, 2) and train | test == {f"{i}_100.png" for i in range(8)}
    assert prepare(0, "fresh").files == data.files
    assert {Path(rel).name for rel, _ in prepare(1, "cache").files["test/photo"]} != test


def test_selection_errors_name_what_exists(wikiart, tmp_path):
    folder, _ = wikiart
    with pytest.raises(DataError) as missing:
        prepare_data(_wikiart_cfg(folder, "data.include=[Impresionism]").data, tmp_path / "cache", progress=quiet)
    assert "no images under 'Impresionism'" in str(missing.value)
    assert "top-level folders with images: Impressionism, Realism" in str(missing.value)

    with pytest.raises(DataError) as column:
        prepare_data(_wikiart_cfg(folder, "data.label_column=genres").data, tmp_path / "cache", progress=quiet)
    assert "no column 'genres' (data.label_column); its columns: file, artist, genre, style" in str(column.value)

    with pytest.raises(DataError, match=r"has no labels\.csv \(data.label_csv\); its CSV files: classes.csv, "
                                        r"wclasses.csv"):
        prepare_data(_wikiart_cfg(folder, "data.label_csv=labels.csv").data, tmp_path / "cache", progress=quiet)

    with pytest.raises(DataError, match=r"data.classes 'nudes' gets no images from wikiart.zip \(by wclasses.csv "
                                        r"column 'genre'"):
        prepare_data(_wikiart_cfg(folder, "data.classes={portrait: [6], nudes: [55]}").data, tmp_path / "cache",
                     progress=quiet)

    with pytest.raises(ConfigError, match="needs data.dataset as owner/name"):
        _wikiart_cfg(folder, "data.dataset=wikiart")
    with pytest.raises(ConfigError, match="under more than one class"):
        _wikiart_cfg(folder, "data.classes={a: [1], b: [1]}")

    (folder / "wikiart.zip").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(DataError, match="not a valid zip .*force_download=true"):
        prepare_data(_wikiart_cfg(folder).data, tmp_path / "cache", progress=quiet)


def _cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env.update(HOME=str(home), PYTHONPATH=str(REPO), PAINTSWEEP_CACHE=str(home / "cache"))
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # two interpreters importing Ray and the kaggle client: about 20 s
def test_the_shipped_space_dry_runs_and_prepare_without_credentials_says_what_to_do(tmp_path):
    (tmp_path / "home").mkdir()
    dry = _cli("experiments/tune.py", "--space", str(SPACE), "--dry-run", home=tmp_path / "home")
    assert dry.returncode == 0, dry.stderr
    assert "source: kaggle_dataset" in dry.stdout and "model.beta_cycle" in dry.stdout

    prepare = _cli("experiments/prepare_data.py", "--space", str(SPACE), home=tmp_path / "home")
    assert prepare.returncode == 2 and prepare.stdout == ""
    assert prepare.stderr.startswith("error: No Kaggle credentials found, so the dataset steubk/wikiart cannot "
                                     "be downloaded. Create an API token")
    assert prepare.stderr.count("\n") == 1 and "Traceback" not in prepare.stderr
    assert str(tmp_path / "home/cache/kaggle/datasets/steubk/wikiart/wikiart.zip") in prepare.stderr


def test_dry_run_checks_a_dataset_zip_already_on_disk(wikiart, tmp_path, monkeypatch, capsys):
    """A zip where the download would put it is read by --dry-run as by the run (no network), so a
    wrong data.label_column is refused before the search, not when its first trial starts."""
    from tune_cli import load_script

    folder, _ = wikiart
    monkeypatch.setenv("PAINTSWEEP_CACHE", str(tmp_path / "cache"))
    tune = load_script("tune")
    tiny = [f"data.root={folder}", "data.image_size=32", "model.base_channels=4", "model.latent_dim=8",
            "train.batch_size=4", "search.baseline=false"]

    assert tune.main(["--space", str(SPACE), "--dry-run", *tiny, "data.label_column=genres"]) == 2
    err = capsys.readouterr().err
    assert "no column 'genres' (data.label_column); its columns: file, artist, genre, style" in err
    assert err.count("\n") == 1 and "Traceback" not in err

    assert tune.main(["--space", str(SPACE), "--dry-run", *tiny]) == 0
    out = capsys.readouterr().out
    assert "data and model checked" in out and "not checked" not in out
