"""Progress bars on long work: reference statistics and shared-asset transfers draw a tqdm bar on a
terminal (a pseudo-terminal here) and print nothing when their output is a pipe, as in Ray's
workers, logs and tests."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_on(terminal: bool, code: str, tmp_path: Path) -> str:
    """Run `code` in a fresh Python with stderr on a pseudo-terminal (terminal=True) or a pipe;
    returns what it wrote to stderr. The bars' delay is set to 0 so tiny work shows them too."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PAINTSWEEP_CACHE": str(tmp_path / "cache")}
    if not terminal:
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stderr
    controller, follower = pty.openpty()
    # A pseudo-terminal starts 0 columns wide, and tqdm draws nothing in 0 columns: 120 x 40.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=follower)
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:   # the child closed the terminal (Linux raises EIO)
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)
    assert process.wait(timeout=120) == 0, output.decode(errors="replace")
    return output.decode(errors="replace")


TRANSFER = """
import filecmp
from pathlib import Path
import core.cluster as cluster
cluster.PROGRESS_DELAY_S = 0
root = Path({tmp!r})
source = root / "source"
(source / "a" / "b").mkdir(parents=True)
(source / "empty").mkdir()
(source / "a" / "b" / "big.bin").write_bytes(bytes(range(256)) * 12_000)   # 3 MiB: several chunks
(source / "top.txt").write_text("top")
storage = cluster.Storage.parse("file://" + str(root / "bucket"))   # a URI: the remote code path
storage.upload(source, storage.join("assets"), desc="uploading test assets")
storage.download(storage.join("assets"), root / "back", desc="downloading test assets")
storage.download(storage.join("assets", "top.txt"), root / "one" / "top.txt")
same = filecmp.dircmp(source, root / "back")
assert not same.diff_files and not same.left_only and not same.right_only, same.report()
assert filecmp.cmp(source / "a" / "b" / "big.bin", root / "back" / "a" / "b" / "big.bin", shallow=False)
assert (root / "back" / "empty").is_dir() and (root / "one" / "top.txt").read_text() == "top"
"""


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "pipe"])
def test_transfers_copy_everything_with_a_bar_only_on_a_terminal(tmp_path, terminal):
    shown = run_on(terminal, TRANSFER.format(tmp=str(tmp_path)), tmp_path)
    if terminal:
        assert "uploading test assets" in shown and "downloading test assets" in shown
        assert "/2.93M" in shown, shown   # counted in bytes: 3,072,003 B
    else:
        assert shown == ""


REFERENCE = """
import core.metrics as metrics
from core.config import DataConfig, MetricsConfig
from core.data import prepare_data
from pathlib import Path
metrics.PROGRESS_DELAY_S = 0
cache = Path({tmp!r}) / "cache"
prepared = prepare_data(DataConfig(source="builtin", image_size=32, builtin_count=12), cache, progress=lambda m: None)
metrics.reference_statistics(prepared, MetricsConfig(extractor="random", batch_size=4), cache, progress=lambda m: None)
"""


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "pipe"])
def test_reference_statistics_show_a_bar_only_on_a_terminal(tmp_path, terminal):
    shown = run_on(terminal, REFERENCE.format(tmp=str(tmp_path)), tmp_path)
    if terminal:
        # Every Monet counted: a total of 12 (the bar is cleared when done, so its last frame may not show 12/12).
        assert "reference statistics (train/monet)" in shown and "/12 [" in shown, shown
    else:
        assert shown == ""
