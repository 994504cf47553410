"""Download Kaggle files: a competition's (by default gan-getting-started: 300 Monet paintings and
7038 photos, 256 x 256 JPEG, in monet_jpg/ and photo_jpg/), unzipped; or a dataset's zip (e.g.
steubk/wikiart), which is read in place by core/data/prepare.py (WikiArt's is about 30 GB:
unzipping it would double that on disk).

    folder = fetch_competition("gan-getting-started", Path("~/.cache/paintsweep/kaggle/gan-getting-started"))
    archive = fetch_dataset("steubk/wikiart", Path("~/.cache/paintsweep/kaggle/datasets/steubk/wikiart"))

Every failure becomes a DataError that says what to do: no credentials, rules or terms not
accepted (HTTP 403; only the website can accept them), no such competition or dataset (HTTP 404),
Kaggle unreachable. A zip already in the folder is used without any network access, so a manual
download works too. On a terminal the client's own download progress bar is shown.

Facts about the `kaggle` package (2.2.4) this module relies on, read in its source:
- `import kaggle` (also implied by importing `kaggle.api...`) authenticates at import time and
  prints help text when it finds no credentials; so it is imported only when a download is needed,
  with its output captured.
- `KaggleApi` reads KAGGLE_CONFIG_DIR once, when it is imported; `_config_dir` below resolves the
  folder the same way at call time and the client is pointed at it.
- Credentials it accepts, in order: an access token (KAGGLE_API_TOKEN, holding the token or a file
  path, or ~/.kaggle/access_token), a legacy API key (username and key in kaggle.json in the
  config folder, or KAGGLE_USERNAME / KAGGLE_KEY), OAuth credentials from `kaggle auth login`
  (~/.kaggle/credentials.json).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from core.errors import DataError

IMAGE_FOLDERS = ("monet_jpg", "photo_jpg")  # what we use from the competition zip (it also has TFRecords)
EXTRACTED_MARKER = ".extracted"  # written after a complete unzip: its presence means "ready"


def fetch_competition(competition: str, folder: Path, force_download: bool = False,
                      progress: Callable[[str], None] = print) -> Path:
    """Make sure `folder` holds the competition's monet_jpg/ and photo_jpg/; return `folder`.

    Downloads `<folder>/<competition>.zip` unless it is there already (or `force_download`), then
    unzips the image folders. A finished unzip is reused without network access."""
    folder = Path(folder).expanduser()
    archive = folder / f"{competition}.zip"
    if (folder / EXTRACTED_MARKER).is_file() and not force_download:
        progress(f"Using the Kaggle files already in {folder}")
        return folder
    if force_download or not archive.is_file():
        download(Source("competition", competition), folder, progress)
    extract(archive, folder, progress)
    return folder


def fetch_dataset(dataset: str, folder: Path, force_download: bool = False,
                  progress: Callable[[str], None] = print) -> Path:
    """Make sure `folder` holds the complete zip of Kaggle dataset `dataset` ("owner/name"); return
    its path, `<folder>/<name>.zip`. Downloads it unless it is there already (or `force_download`);
    a zip the client left half-written (its `.kaggle-partial` marker beside it) is downloaded again."""
    folder = Path(folder).expanduser()
    source = Source("dataset", dataset)
    archive = folder / source.zip_name
    if is_downloaded(source, folder) and not force_download:
        progress(f"Using the Kaggle dataset zip already in {archive}")
        return archive
    download(source, folder, progress)
    return archive


def is_downloaded(source: Source, folder: Path) -> bool:
    """Whether `folder` holds what fetch_competition/fetch_dataset would use without the network:
    a competition's unzipped folders or its zip; a dataset's complete zip (the client writes a
    `.kaggle-partial` marker beside it until the download completes)."""
    folder = Path(folder).expanduser()
    archive = folder / source.zip_name
    if source.kind == "competition":
        return (folder / EXTRACTED_MARKER).is_file() or archive.is_file()
    return archive.is_file() and not archive.with_name(archive.name + ".kaggle-partial").exists()


def extract(archive: Path, folder: Path, progress: Callable[[str], None] = print) -> None:
    """Unzip the image folders of a competition zip into `folder` (replacing earlier ones)."""
    progress(f"Unzipping {archive.name} into {folder}")
    (folder / EXTRACTED_MARKER).unlink(missing_ok=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.namelist() if m.split("/", 1)[0] in IMAGE_FOLDERS]
            missing = [d for d in IMAGE_FOLDERS if not any(m.startswith(d + "/") for m in members)]
            if missing:
                raise DataError(f"{archive} has no {' or '.join(missing)}/ folder: it is not the Monet "
                                f"competition's zip. Delete it and download again (data.force_download=true).")
            for name in IMAGE_FOLDERS:
                shutil.rmtree(folder / name, ignore_errors=True)
            zf.extractall(folder, members)  # extractall strips absolute paths and '..' from names
    except zipfile.BadZipFile as e:
        raise DataError(f"{archive} is not a valid zip ({e}); the download was probably interrupted. "
                        f"Rerun with data.force_download=true (or --force-download).") from None
    (folder / EXTRACTED_MARKER).write_text("complete\n")


@dataclass(frozen=True)
class Source:
    """What to download from Kaggle: a competition (slug) or a dataset ("owner/name")."""

    kind: str   # "competition" | "dataset"
    name: str

    @property
    def page(self) -> str:
        return f"https://www.kaggle.com/{self.kind}s/{self.name}"

    @property
    def zip_name(self) -> str:  # what the client saves it as
        return self.name.split("/")[-1] + ".zip"


def download(source: Source, folder: Path, progress: Callable[[str], None] = print) -> None:
    """Download `<folder>/<name>.zip` of a competition or dataset with the official client,
    translating its failures. On a terminal the client prints its own progress bar."""
    what = f"the {source.kind} {source.name}"
    manual = (f"Or download the zip by hand from {source.page}"
              f"{'/data' if source.kind == 'competition' else ''} and save it as {folder / source.zip_name}: "
              f"the next run uses it without network. Or arrange any images as train/monet, train/photo, "
              f"test/photo and use data.source=folder data.root=<that folder>.")
    credentials = credential_source()
    if credentials is None:
        config = Path(os.environ.get("KAGGLE_CONFIG_DIR") or "~/.kaggle")
        damage = _key_file_damage(_config_dir() / "kaggle.json")
        if damage:
            raise DataError(
                f"{_config_dir() / 'kaggle.json'} {damage}, so {what} cannot be downloaded. Create a new API "
                f"token on kaggle.com -> Settings -> API -> Create New Token and save the downloaded kaggle.json "
                f"over it (it holds {{\"username\": ..., \"key\": ...}}); or set the environment variables "
                f"KAGGLE_USERNAME and KAGGLE_KEY. " + manual)
        raise DataError(
            f"No Kaggle credentials found, so {what} cannot be downloaded. Create an API token on "
            f"kaggle.com -> Settings -> API -> Create New Token, save the downloaded kaggle.json as "
            f"{config / 'kaggle.json'} and run `chmod 600 {config / 'kaggle.json'}` (KAGGLE_CONFIG_DIR "
            f"moves that folder); or set the environment variables KAGGLE_USERNAME and KAGGLE_KEY; or "
            f"set KAGGLE_API_TOKEN to a new-style access token. " + manual)

    folder.mkdir(parents=True, exist_ok=True)
    progress(f"Downloading {what} from Kaggle into {folder} (credentials: {credentials}) ...")
    from requests.exceptions import HTTPError, RequestException  # installed with kaggle

    # The client prints banners on import and authentication: always hidden. Its download
    # progress bar (tqdm, on stderr) is let through when someone is watching a terminal.
    terminal = sys.stderr.isatty()
    try:
        with _quiet():
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            api.config_dir = str(_config_dir())
            api.config = os.path.join(api.config_dir, api.config_file)
            api.authenticate()
        with contextlib.nullcontext() if terminal else _quiet():
            if source.kind == "competition":
                api.competition_download_files(source.name, path=str(folder), force=True, quiet=not terminal)
            else:
                api.dataset_download_files(source.name, path=str(folder), force=True, quiet=not terminal)
    except SystemExit:  # authenticate() exits when it accepts none of the credentials it found
        raise DataError(f"Kaggle did not accept the credentials from {credentials}. Create a new token on "
                        f"kaggle.com -> Settings -> API and replace them. " + manual) from None
    except HTTPError as e:
        status = e.response.status_code if e.response is not None else None
        if status == 403:
            if source.kind == "competition":
                accept = f"the competition's rules, which only the website can do. Open {source.page}/rules"
            else:
                accept = (f"the dataset's terms, which only the website can do. Open {source.page} (its "
                          f"Download button asks for them)")
            raise DataError(f"Kaggle refused to download {what} (HTTP 403): this account has not accepted "
                            f"{accept}, sign in as the account of your API token, accept the "
                            f"{'rules' if source.kind == 'competition' else 'terms'}, and rerun.") from None
        if status == 401:
            raise DataError(f"Kaggle rejected the credentials from {credentials} (HTTP 401). Create a new token "
                            f"on kaggle.com -> Settings -> API and replace them. " + manual) from None
        if status == 404:
            key = "data.competition" if source.kind == "competition" else "data.dataset"
            raise DataError(f"Kaggle has no {source.kind} {source.name!r} (HTTP 404). Check {key}: it is the "
                            f"part of the {source.kind}'s address after kaggle.com/{source.kind}s/"
                            f"{' (owner/name)' if source.kind == 'dataset' else ''}; open {source.page} "
                            f"to see whether it exists.") from None
        raise DataError(f"Kaggle could not serve {what}: {e}. Try again later. " + manual) from None
    except RequestException as e:
        raise DataError(f"Kaggle could not be reached to download {what}: {e}. Check the network "
                        f"connection (or the HTTPS_PROXY setting). " + manual) from None


def credential_source() -> str | None:
    """Where the Kaggle client will find credentials, as words for messages (never the secret);
    None when there are none. Checked without importing `kaggle` or touching the network."""
    token = os.environ.get("KAGGLE_API_TOKEN")
    if token:
        return "the KAGGLE_API_TOKEN environment variable"
    home = Path("~/.kaggle").expanduser()
    for name in ("access_token", "access_token.txt"):
        if _nonempty(home / name):
            return str(home / name)
    key_file = _config_dir() / "kaggle.json"
    try:
        values = json.loads(key_file.read_text()) if key_file.is_file() else {}
    except (OSError, ValueError):
        values = {}
    values = values if isinstance(values, dict) else {}
    username = os.environ.get("KAGGLE_USERNAME") or values.get("username")
    key = os.environ.get("KAGGLE_KEY") or values.get("key")
    if username and key:
        in_env = "KAGGLE_USERNAME" in os.environ and "KAGGLE_KEY" in os.environ
        return "the KAGGLE_USERNAME / KAGGLE_KEY environment variables" if in_env else str(key_file)
    if _nonempty(home / "credentials.json"):
        return f"{home / 'credentials.json'} (kaggle auth login)"
    return None


def _key_file_damage(key_file: Path) -> str | None:
    """What is wrong with a kaggle.json that exists but gives no credentials, in words for a
    message (never its contents); None when it is absent or sound."""
    try:
        text = key_file.read_text() if key_file.is_file() else None
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    except UnicodeDecodeError:
        return "is not a text file"
    if text is None:
        return None
    try:
        values = json.loads(text)
    except ValueError as e:
        return f"is not valid JSON (line {e.lineno}, column {e.colno})" if isinstance(e, json.JSONDecodeError) \
            else "is not valid JSON"
    if not isinstance(values, dict):
        return "is not a JSON object with \"username\" and \"key\""
    missing = [name for name in ("username", "key") if not values.get(name)]
    return f"has no {' and no '.join(repr(m) for m in missing)}" if missing else None


def _config_dir() -> Path:
    """The folder the Kaggle client reads kaggle.json from: KAGGLE_CONFIG_DIR, else ~/.kaggle, else
    (on Linux, when ~/.kaggle does not exist) $XDG_CONFIG_HOME/kaggle."""
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        return Path(os.environ["KAGGLE_CONFIG_DIR"])
    home = Path("~/.kaggle").expanduser()
    if sys.platform.startswith("linux") and not home.exists():
        return Path(os.environ.get("XDG_CONFIG_HOME") or Path("~/.config").expanduser()) / "kaggle"
    return home


def _nonempty(path: Path) -> bool:
    try:
        return path.is_file() and bool(path.read_text().strip())
    except OSError:
        return False


@contextlib.contextmanager
def _quiet():
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield
