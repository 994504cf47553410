"""experiments/report.py: one self-contained report.html of a finished smoke search, opened in
headless Chromium at 1280 px (a real browser, from the file alone): the answer on the first screen,
nothing wider than the window; plus the sections that appear only when their data exists."""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
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
    """What a browser would fetch (every src/href), the images (src, alt), the tables' cells row by
    row, and the text of the answer box (id="answer")."""

    def __init__(self, text: str):
        super().__init__()
        self.sources, self.images, self.tables, self._cell = [], [], [], None
        self.answer, self._answer_depth = "", 0
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.sources += [attrs[k] for k in ("src", "href") if k in attrs]
        if tag == "img":
            self.images.append((attrs["src"], attrs.get("alt", "")))
        if self._answer_depth or attrs.get("id") == "answer":
            self._answer_depth += tag != "wbr"   # (a void element: no end tag)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        if self._answer_depth:
            self.answer += data

    def handle_endtag(self, tag):
        if self._answer_depth:
            self._answer_depth -= 1
            self.answer += "\n" if tag == "p" else ""
        if tag in ("td", "th"):
            self.tables[-1][-1].append(self._cell.strip())
            self._cell = None


def write_confirmations(exp_dir: Path) -> None:
    """confirm/ and confirm-holdout/ as experiments/confirm.py leaves them (its plan.yaml and
    confirm.csv, by core.confirm's own functions), from made-up seed results instead of retraining:
    the winner clearly better than the defaults on the same seeds, any other candidate not."""
    import yaml

    from core import confirm as C
    from core.config import build_config

    cfg = build_config(yaml.safe_load((exp_dir / "experiment.yaml").read_text()))
    baseline = [1.0, 1.3, 1.1]
    for run, plan, winner in ((C.CONFIRM_DIR, lambda: C.make_plan(exp_dir, cfg, top=2, n_seeds=3), [0.6, 0.8, 0.7]),
                              (C.HOLDOUT_DIR, lambda: C.make_holdout_plan(exp_dir, cfg, n_seeds=3), [0.7, 0.9, 0.75])):
        plan, finals = plan(), {C.BASELINE: baseline, "top 1": winner}   # paired by seed: p < 0.05
        (exp_dir / run).mkdir()
        plan.save(exp_dir / run / C.PLAN_FILE)
        results = [C.SeedResult(label, seed, f"{label}-{seed}", "completed", best=final * 0.9, final=final,
                                checkpoint=None)
                   for label in plan.candidates
                   for seed, final in zip(plan.seeds, finals.get(label, [1.05, 1.25, 1.2]))]
        C.confirm_table(results, plan, cfg.search.metric).to_csv(exp_dir / run / C.TABLE_FILE, index=False)


# Run in the page once it has loaded; its findings go into <html data-layout="..."> for --dump-dom.
LAYOUT_PROBE = """<script>
addEventListener("load", () => {
  const width = document.documentElement.clientWidth;
  const right = (el) => el.getBoundingClientRect().right;
  const clipper = (el) => {   // the nearest ancestor that scrolls or clips sideways: its own box
    for (let a = el.parentElement; a && a !== document.body; a = a.parentElement)
      if (getComputedStyle(a).overflowX !== "visible") return a;
    return null;
  };
  const overflowing = [...document.body.querySelectorAll("*")].filter((el) => {
    const box = clipper(el);
    return right(el) > width + 0.5 && (!box || right(box) > width + 0.5);
  }).map((el) => `${el.tagName} ${el.className} ${right(el)}`);
  // The columns a reader decides by must show without scrolling their table's box.
  const hidden = [...document.querySelectorAll("th")].filter((th) =>
    ["trial", "candidate", "verdict", "verdict_holm", "incumbent", "estimate", "low", "high"].includes(th.textContent)
    && right(th) > Math.min(width, right(clipper(th) || document.body)) + 0.5).map((th) => th.textContent);
  const answer = document.getElementById("answer").getBoundingClientRect();
  document.documentElement.dataset.layout = JSON.stringify({
    width, scrollWidth: document.documentElement.scrollWidth, overflowing, hidden,
    answerTop: answer.top, answerBottom: answer.bottom});
});
</script>"""


def test_not_an_experiment_is_one_clear_error(tmp_path, capsys):
    code = load_script("report").main([str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "not a paintsweep experiment directory" in err
    assert "Traceback" not in err and not list(tmp_path.iterdir())


@pytest.mark.slow
def test_report_opens_in_headless_chromium(smoke_experiments, tmp_path):
    """The smoke search with a confirmation and a held-out run beside it (made up: no retraining)."""
    from analysis import load_experiment_dir, samples
    from core import confirm as C

    experiment = tmp_path / "experiment"
    shutil.copytree(smoke_experiments["cyclegan_builtin"], experiment, symlinks=True)
    write_confirmations(experiment)
    out = tmp_path / "report.html"
    done = subprocess.run([sys.executable, str(REPORT), str(experiment), "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and f"Wrote {out}" in done.stdout, done.stderr[-3000:]
    assert not (experiment / "report.html").exists()   # --out was honoured
    text = out.read_text(encoding="utf-8")
    page = Page(text)

    # Self-contained: nothing to fetch, every figure an embedded PNG that decodes.
    assert all(source.startswith("data:image/png;base64,") for source in page.sources), page.sources[:5]
    figures = [Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))) for s in page.sources]
    assert len(figures) >= 4 and all(f.width > 100 and f.height > 100 for f in figures)

    # The answer first: what was searched, the best configuration, and confirm.py's own lines.
    exp = load_experiment_dir(experiment)
    assert text.index('id="answer"') < text.index("<table")
    _, confirm_lines, _ = C.leaderboard_annotations(experiment, exp.cfg, exp.trials)
    labels = [line.split(":", 1)[0] + ":" for line in confirm_lines]
    assert labels == [C.LEADERBOARD_LINE, C.BEST_LINE, C.HOLDOUT_LINE]
    answer = page.answer.splitlines()
    assert answer[0].startswith("Searched: 2 trials of cyclegan over " + ", ".join(exp.searched))
    assert answer[1].startswith("Best: " + ", ".join(f"{k}=" for k in exp.searched[:1]))
    assert answer[2:5] == confirm_lines   # word for word what leaderboard.txt ends with
    assert "confirmed: better than the defaults" in answer[2] and answer[4].endswith(
        f"better than the defaults ({C.HOLDOUT_DIR}/{C.TABLE_FILE})")
    # ... then what to ship, as confirm.py --holdout ends: the pick, better on new seeds, and its export.
    assert answer[5].startswith(f"{C.SHIP_LINE} top ") and "better than the defaults on new seeds: " \
        "python experiments/export.py " in answer[5] and len(answer) == 6, answer

    # The leaderboard: one row per trial, best first, with the searched values and the scores.
    header, *rows = page.tables[0]
    assert {"trial", "status", "best_fid", "fid", "mifid", "kid", "epoch", "checkpoint", *exp.searched} <= set(header)
    assert header[0] == "trial" and header.index("best_fid") < header.index(exp.searched[0])   # the scores first
    assert [row[header.index("trial")] for row in rows] == list(exp.trials["trial"])
    assert [float(row[header.index("best_fid")]) for row in rows] == pytest.approx(
        list(exp.trials["best_fid"]), rel=1e-3)   # shown to 4 significant digits
    # The confirmation and held-out tables: the verdict columns first.
    for table in page.tables[1:3]:
        assert table[0][:4] == ["candidate", "verdict", "verdict_holm", "estimate"]
        assert table[1][:2] == ["baseline", "baseline"] and table[2][:2] == ["top 1", C.BETTER]

    # Sample grids: each pixel a whole block, exactly the grid the trial logged, no smoothing.
    grids = samples.top_trial_grids(exp.trials)
    shown = [(src, alt) for src, alt in page.images if "each pixel drawn as" in alt]
    assert len(shown) == sum(len(images) for images in grids.values()) > 0
    for src, alt in shown:
        trial, tag = re.match(r"(\S+): best fid [^;]+; (\S+), each pixel drawn as", alt).groups()
        factor = int(re.search(r"drawn as (\d+)x", alt)[1])
        drawn = np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB"))
        assert factor >= 2 and np.array_equal(drawn, grids[trial][tag].repeat(factor, 0).repeat(factor, 1))

    # A real browser renders it from the file alone, 1280 px wide, with a probe of its layout.
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.fail("Chromium is missing: install it with `apt-get update && apt-get install -y chromium`")
    probed = tmp_path / "probed.html"
    probed.write_text(text.replace("</body>", LAYOUT_PROBE + "</body>"), encoding="utf-8")
    shot_path = tmp_path / "report.png"
    # Chromium leaves a singleton-socket folder in $TMPDIR: give it a short private one (a socket
    # path must stay under 108 characters), removed afterwards.
    with tempfile.TemporaryDirectory(prefix="chromium-") as scratch:
        shown = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                                f"--user-data-dir={scratch}/profile", "--window-size=1280,4000",
                                f"--screenshot={shot_path}", "--dump-dom", probed.as_uri()],
                               capture_output=True, text=True, timeout=120, env={**os.environ, "TMPDIR": scratch})
    found = re.search(r'data-layout="([^"]*)"', shown.stdout)
    assert found, f"no layout probe in Chromium's DOM dump: {shown.stdout[:300]!r} {shown.stderr[-2000:]}"
    layout = json.loads(html.unescape(found[1]))
    # (The window's 1280 px less a scrollbar where Chromium draws one.)
    assert 1250 <= layout["width"] <= 1280 and layout["scrollWidth"] <= layout["width"], layout
    assert layout["overflowing"] == [] and layout["hidden"] == [], layout   # nothing wider than the window
    assert 0 <= layout["answerTop"] < layout["answerBottom"] <= 800, layout   # the answer on the first screen
    shot = np.asarray(Image.open(shot_path).convert("RGB")).astype(np.int16)   # (H, W, 3)
    assert shot.shape == (4000, 1280, 3) and shot.std() > 10   # the page, not a blank or error screen
    # The figures are the colourful part of a white page: far more coloured pixels than text makes.
    colourful = (shot.max(axis=2) - shot.min(axis=2)) > 40
    assert colourful.sum() > 50_000, f"no figures in the screenshot ({colourful.sum()} coloured px)"
    assert colourful[:300].sum() < colourful.sum() / 10   # the top is the answer and the tables, then figures


def test_answer_without_a_confirmation_gives_the_command(smoke_experiments):
    from analysis import load_experiment_dir
    from analysis.answer import answer
    from core.results import versus_baseline

    exp = load_experiment_dir(smoke_experiments["cyclegan_builtin"])
    lines = answer(exp)
    assert [label for label, _ in lines] == ["Searched:", "Best:", "Confirmation:"]
    best = exp.trials.iloc[0]
    assert lines[1][1] == (", ".join(f"{k}={best[k]:.4g}" if isinstance(best[k], float) else f"{k}={best[k]}"
                                     for k in exp.searched)
                           + ": " + versus_baseline(exp.trials, "fid").removeprefix("best: "))
    assert lines[2][1].startswith("not run yet") and f"python experiments/confirm.py {exp.path} retrains" in lines[2][1]


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
    # Not a table confirm.py wrote: the answer says so instead of failing the report.
    assert "Confirmation: unreadable (confirm/confirm.csv); rerun python experiments/confirm.py" in page.answer
