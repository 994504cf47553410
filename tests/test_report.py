"""experiments/report.py: one self-contained report.html of a finished smoke search, opened in
headless Chromium (a real browser, from the file alone), plus the sections that appear only when
their data exists."""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tune_cli import load_script

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "experiments" / "report.py"


class Page(HTMLParser):
    """What a browser would fetch (every src/href) and the tables' cells, row by row."""

    def __init__(self, text: str):
        super().__init__()
        self.sources, self.tables, self._cell = [], [], None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.sources += [attrs[k] for k in ("src", "href") if k in attrs]
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append(self._cell.strip())
            self._cell = None


def test_not_an_experiment_is_one_clear_error(tmp_path, capsys):
    code = load_script("report").main([str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "not a paintsweep experiment directory" in err
    assert "Traceback" not in err and not list(tmp_path.iterdir())


@pytest.mark.slow
def test_report_opens_in_headless_chromium(smoke_experiments, tmp_path):
    experiment = smoke_experiments["cyclegan_builtin"]
    out = tmp_path / "report.html"
    done = subprocess.run([sys.executable, str(REPORT), str(experiment), "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and f"Wrote {out}" in done.stdout, done.stderr[-3000:]
    assert not (experiment / "report.html").exists()   # --out was honoured
    page = Page(out.read_text(encoding="utf-8"))

    # Self-contained: nothing to fetch, every figure an embedded PNG that decodes.
    assert all(source.startswith("data:image/png;base64,") for source in page.sources), page.sources[:5]
    figures = [Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))) for s in page.sources]
    assert len(figures) >= 4 and all(f.width > 100 and f.height > 100 for f in figures)

    # The leaderboard: one row per trial, best first, with the searched values and the scores.
    from analysis import load_experiment_dir

    exp = load_experiment_dir(experiment)
    header, *rows = page.tables[0]
    assert {"trial", "status", "best_fid", "fid", "mifid", "kid", "epoch", "checkpoint", *exp.searched} <= set(header)
    assert [row[header.index("trial")] for row in rows] == list(exp.trials["trial"])
    assert [float(row[header.index("best_fid")]) for row in rows] == pytest.approx(
        list(exp.trials["best_fid"]), rel=1e-3)   # shown to 4 significant digits
    assert "Confirmation runs" not in out.read_text()   # no confirm.csv: no section

    # A real browser renders it from the file alone.
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.fail("Chromium is missing: install it with `apt-get update && apt-get install -y chromium`")
    shot_path = tmp_path / "report.png"
    # Chromium leaves a singleton-socket folder in $TMPDIR: give it a short private one (a socket
    # path must stay under 108 characters), removed afterwards.
    with tempfile.TemporaryDirectory(prefix="chromium-") as scratch:
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={scratch}/profile", "--window-size=1300,2400",
                        f"--screenshot={shot_path}", out.as_uri()], capture_output=True, timeout=120,
                       env={**os.environ, "TMPDIR": scratch})
    shot = np.asarray(Image.open(shot_path).convert("RGB")).astype(int)   # (H, W, 3)
    assert shot.shape == (2400, 1300, 3) and shot.std() > 10   # the page, not a blank or error screen
    # The figures are the colourful part of a white page: far more coloured pixels than text makes.
    colourful = (shot.max(axis=2) - shot.min(axis=2)) > 40
    assert colourful.sum() > 50_000, f"no figures in the screenshot ({colourful.sum()} coloured px)"
    assert colourful[:300].sum() < colourful.sum() / 10   # the top is the title and the table, then figures


def test_confirmation_results_and_unknown_columns_are_shown(smoke_experiments, tmp_path):
    """Columns the leaderboard may gain (a baseline flag, precision) and confirm/confirm.csv appear as
    they are; the figures are left to the test above (top_k=0 skips the sample grids)."""
    import pandas as pd

    from analysis import load_experiment_dir
    from analysis.report import render_report

    experiment = tmp_path / "copy"
    shutil.copytree(smoke_experiments["cyclegan_builtin"], experiment, symlinks=True)
    (experiment / "confirm").mkdir()   # where experiments/confirm.py writes its table
    pd.DataFrame({"trial": ["defaults", "winner"], "seeds": [3, 3], "fid_mean": [0.97, 1.10],
                  "fid_std": [0.11, 0.11]}).to_csv(experiment / "confirm" / "confirm.csv", index=False)
    exp = load_experiment_dir(experiment)
    exp.trials["baseline"] = [True, False]
    exp.trials["precision"] = [0.5, None]
    page = Page(render_report(exp, top_k=0))
    header, *rows = page.tables[0]
    assert "baseline" in header and "precision" in header
    assert [row[header.index("baseline")] for row in rows] == ["True", "False"]
    assert [row[header.index("precision")] for row in rows] == ["0.5", ""]
    confirm_header, *confirm_rows = page.tables[1]
    assert confirm_header == ["trial", "seeds", "fid_mean", "fid_std"]
    assert confirm_rows == [["defaults", "3", "0.97", "0.11"], ["winner", "3", "1.1", "0.11"]]
