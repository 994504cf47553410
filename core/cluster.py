"""Where a search runs and where it keeps its results: the Ray cluster and the storage.

    connect("auto")                     # or "HOST:PORT" of `ray start --head`; None starts a local Ray
    check_resources(cfg)                # a trial that fits on no node is an error, not an endless wait
    storage = Storage.parse("s3://bucket/runs")   # or a local / shared file-system path
    storage.check_writable()

A local path is used as is. A URI (s3://, gs://, anything `pyarrow.fs.FileSystem.from_uri` reads)
is resolved once into a pyarrow file system plus a path, which Ray Tune is given as
`storage_filesystem` (so query options such as `?endpoint_override=host:9000&scheme=http` for an
S3-compatible server work everywhere). Credentials come from the usual environment variables
(AWS_ACCESS_KEY_ID, GOOGLE_APPLICATION_CREDENTIALS, ...) on every node; they are never printed.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

from core.config import ExperimentConfig
from core.errors import ClusterError

STARTUP_TRIES = 2         # a local Ray that does not come up in time is started once more, then reported
CONNECT_TIMEOUT_S = 5.0   # a cluster address that does not answer within this is reported, not waited on
PROGRESS_DELAY_S = 2.0    # a transfer shows a progress bar once it has run this long
COPY_CHUNK_BYTES = 1 << 20
COPY_THREADS = 8          # files copied at once (pyarrow.fs.copy_files uses a thread pool too)


# --- The Ray cluster ----------------------------------------------------------------------------


def connect(address: str | None, log_to_driver: bool = True) -> None:
    """Start a local Ray (address None) or join a running cluster ("auto" or "HOST:PORT").
    `log_to_driver`: the trials' own output (each epoch's line, Ray's checkpoint messages) is
    printed by this driver too; without it, it stays in the trials' logs (core.driver's console)."""
    import ray

    if ray.is_initialized():
        return
    if address is None:
        from core.internals import quiet_token_authentication_notice

        quiet_token_authentication_notice()
        _start_local_ray(log_to_driver)
        return
    if address != "auto":
        # Ray itself retries an address that does not answer for minutes before failing.
        _check_reachable(address)
    try:
        ray.init(address=address, logging_level="WARNING", log_to_driver=log_to_driver)
    except (ConnectionError, RuntimeError) as e:
        raise ClusterError(f"Cannot connect to the Ray cluster at --address {address}: {e}. "
                           f"Start one with `ray start --head` (and `ray start --address=HEAD:6379` on "
                           f"the other machines), pass the head's HOST:PORT, or drop --address to run "
                           f"on this machine only.") from None


def _start_local_ray(log_to_driver: bool) -> None:
    """ray.init of a private cluster, tried STARTUP_TRIES times: Ray gives its raylet a fixed 30 s
    to register (core.internals.is_startup_timeout), which a loaded machine, or one still busy with the
    processes of a driver killed a moment ago, can miss; the next try usually works."""
    import ray

    from core.internals import is_startup_timeout

    for attempt in range(1, STARTUP_TRIES + 1):
        try:
            # "local", not None: ray.init() alone would join a cluster left running by `ray start`.
            ray.init(address="local", include_dashboard=False, logging_level="WARNING", log_to_driver=log_to_driver)
            return
        except Exception as e:   # Ray raises a bare Exception for this
            if not is_startup_timeout(e):
                raise
            ray.shutdown()   # the half-started node's processes
            if attempt < STARTUP_TRIES:
                logging.getLogger(__name__).warning("Ray did not start in time (%s); trying once more", e)
    raise ClusterError(f"Ray did not start on this machine, {STARTUP_TRIES} times: its processes did not come up "
                       f"within Ray's start-up timeout. Ray processes left by an earlier driver that was killed can "
                       f"cause this (`ray stop` ends them), or a machine too loaded to start them in time (wait for "
                       f"other work to finish). Then run the same command again (with --resume to continue a search).")


def _check_reachable(address: str) -> None:
    host, _, port = address.split("://")[-1].rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"--address must be 'auto' or HOST:PORT (e.g. 10.0.0.5:6379), got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise ClusterError(f"Cannot reach the Ray cluster at --address {address} ({e}). Check that "
                           f"`ray start --head --port={port}` runs on {host} and that the port is open, "
                           f"or drop --address to run on this machine only.") from None


def check_resources(cfg: ExperimentConfig) -> None:
    """A trial asking for more than any one node has would wait forever: say so before the search.

    Checks the nodes alive now (an autoscaling cluster that would add a bigger node is not
    foreseen: start that node first)."""
    import ray

    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    need = {"CPU": cfg.search.cpus_per_trial, "GPU": cfg.search.gpus_per_trial}
    for name, amount in need.items():
        if amount <= 0:
            continue
        most = max((node.get(name, 0) for node in nodes), default=0)
        if most < amount:
            where = "no node has a GPU" if name == "GPU" and most == 0 else f"the largest node has {most:g}"
            raise ClusterError(f"Each trial asks for {amount:g} {name} (search.{name.lower()}s_per_trial) but "
                               f"{where} ({len(nodes)} node(s) in the cluster). Lower "
                               f"search.{name.lower()}s_per_trial, or add a node that has them.")


# --- Storage: a local path or a URI ---------------------------------------------------------------


@dataclass(frozen=True)
class Storage:
    """Where experiments are stored. `filesystem` is None for a local path."""

    given: str            # what the user passed to --storage
    path: str             # absolute local path, or the path on `filesystem` (e.g. "bucket/runs")
    filesystem: object    # pyarrow.fs.FileSystem for a URI, None for a local path

    @classmethod
    def parse(cls, storage: str | os.PathLike) -> "Storage":
        given = str(storage)
        if "://" not in given:
            return cls(given, os.path.abspath(os.path.expanduser(given)), None)
        import pyarrow.fs

        try:
            filesystem, path = pyarrow.fs.FileSystem.from_uri(given)
        except Exception as e:  # pyarrow raises ArrowInvalid/OSError/ValueError for bad URIs
            raise ClusterError(f"--storage {given!r} is not a storage URI this installation can open ({e}). "
                               f"Use a local path, or an s3:// / gs:// URI.") from None
        return cls(given, path.rstrip("/"), filesystem)

    @property
    def remote(self) -> bool:
        return self.filesystem is not None

    def join(self, *parts: str) -> str:
        return "/".join([self.path, *parts])

    def check_writable(self) -> None:
        """Write and delete a probe file, so a bad bucket or missing credentials fail now."""
        if not self.remote:
            try:
                Path(self.path).mkdir(parents=True, exist_ok=True)
                probe = Path(self.path) / f".paintsweep-probe-{uuid.uuid4().hex}"
                probe.write_bytes(b"")
                probe.unlink()
            except OSError as e:
                raise ClusterError(f"Cannot write to --storage {self.given}: {e}") from None
            return
        probe = self.join(f".paintsweep-probe-{uuid.uuid4().hex}")
        try:
            self.filesystem.create_dir(self.path)
            with self.filesystem.open_output_stream(probe) as f:
                f.write(b"")
            self.filesystem.delete_file(probe)
        except Exception as e:  # pyarrow maps cloud errors to OSError subclasses with the server's text
            raise ClusterError(f"Cannot write to --storage {self.given}: {e}. Check that the bucket exists and "
                               f"that this machine and every Ray node have credentials for it (e.g. "
                               f"AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or AWS_ENDPOINT_URL for an "
                               f"S3-compatible server).") from None

    def exists(self, path: str) -> bool:
        import pyarrow.fs

        if not self.remote:
            return os.path.exists(path)
        return self.filesystem.get_file_info(path).type != pyarrow.fs.FileType.NotFound

    def upload(self, local: Path, path: str, desc: str = "uploading") -> None:
        """Copy a local file or directory to `path` on the storage."""
        import pyarrow.fs

        _copy_tree(pyarrow.fs.LocalFileSystem(), str(Path(local).absolute()), self.filesystem, path, desc)

    def download(self, path: str, local: Path, desc: str = "downloading") -> None:
        """Copy a file or directory at `path` on the storage to `local`."""
        import pyarrow.fs

        local.parent.mkdir(parents=True, exist_ok=True)
        _copy_tree(self.filesystem, path, pyarrow.fs.LocalFileSystem(), str(Path(local).absolute()), desc)


def _copy_tree(source_fs, source: str, destination_fs, destination: str, desc: str) -> None:
    """Copy a file, or a directory with everything in it, between two pyarrow file systems, as
    `pyarrow.fs.copy_files` does (several files at once, 1 MiB chunks), but counting the bytes: a
    terminal shows a progress bar once the transfer has taken PROGRESS_DELAY_S (the prepared Kaggle
    data is thousands of files, hundreds of MB). Off a terminal it stays silent."""
    import pyarrow.fs
    from concurrent.futures import ThreadPoolExecutor
    from tqdm import tqdm

    top = source_fs.get_file_info(source)
    if top.type == pyarrow.fs.FileType.NotFound:
        raise FileNotFoundError(f"{source} does not exist")
    if top.type == pyarrow.fs.FileType.Directory:
        entries = source_fs.get_file_info(pyarrow.fs.FileSelector(source, recursive=True))
        directories = [destination, *(f"{destination}/{e.path[len(source):].strip('/')}"
                                      for e in entries if e.type == pyarrow.fs.FileType.Directory)]
        files = [(e, f"{destination}/{e.path[len(source):].strip('/')}")
                 for e in entries if e.type == pyarrow.fs.FileType.File]
    else:
        directories, files = [destination.rpartition("/")[0]], [(top, destination)]
    for directory in sorted(set(directories) | {target.rpartition("/")[0] for _, target in files}):
        if directory:
            destination_fs.create_dir(directory, recursive=True)

    with tqdm(total=sum(entry.size for entry, _ in files), desc=desc, unit="B", unit_scale=True,
              unit_divisor=1024, disable=None, delay=PROGRESS_DELAY_S, leave=False) as bar:
        def copy(entry, target: str) -> None:
            with source_fs.open_input_stream(entry.path) as reader, \
                    destination_fs.open_output_stream(target) as writer:
                while chunk := reader.read(COPY_CHUNK_BYTES):
                    writer.write(chunk)
                    bar.update(len(chunk))

        with ThreadPoolExecutor(max_workers=COPY_THREADS) as pool:
            for done in [pool.submit(copy, entry, target) for entry, target in files]:
                done.result()   # the first failure is raised here, as copy_files would


# --- Shipping the prepared data and reference statistics to every node ---------------------------


@dataclass(frozen=True)
class SharedAssets:
    """The driver's prepared data and reference statistics, also uploaded next to the experiment
    in remote storage, so a trial on a node without the driver's cache fetches them once per node
    instead of recomputing them (the reference cache has no lock; trials only ever read)."""

    storage: Storage       # a remote Storage (local paths are readable by every node of a shared FS)
    path: str              # <experiment>/assets on the storage
    prepared_root: str     # the driver's local copies: used as they are where they exist
    reference_path: str
    fingerprint: str       # the prepared data's fingerprint: a local copy must match it

    COMPLETE = "COMPLETE"  # written last: assets without it are a half-finished upload

    @classmethod
    def upload(cls, storage: Storage, experiment_path: str, prepared_root: str, reference_path: str,
               fingerprint: str, progress=print) -> "SharedAssets":
        assets = cls(storage, f"{experiment_path}/assets", prepared_root, reference_path, fingerprint)
        if not storage.exists(f"{assets.path}/{cls.COMPLETE}"):
            progress(f"uploading the prepared data and reference statistics to {storage.given} ({assets.path})")
            storage.upload(Path(prepared_root), f"{assets.path}/prepared", desc="uploading prepared data")
            storage.upload(Path(reference_path), f"{assets.path}/{Path(reference_path).name}",
                           desc="uploading reference statistics")
            with storage.filesystem.open_output_stream(f"{assets.path}/{cls.COMPLETE}") as f:
                f.write(fingerprint.encode())
        return assets

    def localize(self, cache_path: Path) -> tuple[str, str]:
        """(prepared_root, reference_path) readable on this node: the driver's own files where they
        exist (same machine or shared cache), else a per-node copy fetched from storage once."""
        from core.data import load_prepared

        here = Path(self.prepared_root) / "manifest.json"
        if here.is_file() and Path(self.reference_path).is_file() \
                and load_prepared(self.prepared_root).fingerprint == self.fingerprint:
            return self.prepared_root, self.reference_path
        local = cache_path / "shipped" / f"{self.fingerprint}-{Path(self.reference_path).stem}"
        if not local.is_dir():
            # Fetched into a private folder and renamed: concurrent trials on one node never
            # see a half-downloaded copy (the loser of the race keeps the winner's).
            partial = local.with_name(f"{local.name}.{uuid.uuid4().hex}.partial")
            self.storage.download(self.path, partial, desc="downloading the shared data")
            try:
                os.replace(partial, local)
            except OSError:
                import shutil

                shutil.rmtree(partial, ignore_errors=True)
        return str(local / "prepared"), str(local / Path(self.reference_path).name)
