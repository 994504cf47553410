"""Sample gallery: pick an experiment, a trial and one of its kept checkpoints, generate images live.

    streamlit run analysis/gallery.py -- --storage runs

GANs and VAEs: choose the seed, the number of images and (conditional VAE) the class. Families
that translate photos (CycleGAN): translate a test photo of the experiment's data, or upload your
own. The trial's searched values, scores and config are shown beside the images.

It reads checkpoints and accepts uploads, so it is private by default: analysis/.streamlit/config.toml
makes Streamlit listen on localhost only (`--server.address 0.0.0.0` exposes it deliberately), and
it browses only experiments under the `--storage` folder it was started with.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import streamlit as st  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from analysis.checkpoints import load_checkpoint, sample  # noqa: E402
from analysis.experiments import NotAnExperiment, find_experiments, load_experiment_dir  # noqa: E402
from core.config import config_to_dict  # noqa: E402
from core.data import ImageDataset, eval_transform  # noqa: E402


def storage_root() -> Path:
    """The --storage folder the gallery was started with: the only tree it browses."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--storage", default="runs", help="where experiments are stored (tune.py --storage)")
    storage = parser.parse_known_args()[0].storage   # known args only: tests run this file under pytest
    return Path(os.path.abspath(os.path.expanduser(storage)))


def folder_under(root: Path, typed: str) -> Path | None:
    """The folder the sidebar names (relative paths are relative to `root`), or None when it lies
    outside `root`: symbolic links and `..` are resolved first, so neither leads out."""
    folder = (root / os.path.expanduser(typed.strip())).resolve()
    return folder if folder.is_relative_to(root.resolve()) else None


@st.cache_data(show_spinner="Reading the experiment...")
def trials_of(experiment_dir: str):
    exp = load_experiment_dir(experiment_dir)
    return exp.trials, exp.searched, exp.metric


@st.cache_resource(show_spinner="Loading the checkpoint...", max_entries=4)
def checkpoint(path: str):
    return load_checkpoint(path, progress=lambda message: None)


def as_pil(images: torch.Tensor) -> list[Image.Image]:
    """uint8 (N, 3, H, W) -> N PIL images."""
    return [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in images]


st.set_page_config(page_title="paintsweep gallery", layout="wide")
st.title("paintsweep sample gallery")

root = storage_root()
typed = st.sidebar.text_input("Experiments folder (inside --storage)", str(root), key="storage",
                              help=f"{root} or a folder inside it; restart the gallery with another --storage "
                                   f"to browse elsewhere")
storage = folder_under(root, typed)
if storage is None:
    st.error(f"{typed} is outside {root}, the folder this gallery was started with, so it is not shown. "
             f"To browse it, restart the gallery with `--storage` pointing at it: "
             f"streamlit run analysis/gallery.py -- --storage <folder>")
    st.stop()
experiments = find_experiments(storage)
if not experiments:
    st.error(f"No paintsweep experiment in {storage}: it must hold <name>/ directories written "
             f"by experiments/tune.py (each with experiment.yaml and Ray Tune's state). Give the folder passed "
             f"as --storage to tune.py.")
    st.stop()

choice = st.sidebar.selectbox("Experiment", [p.name for p in experiments], key="experiment")
try:
    trials, searched, metric = trials_of(str(storage / choice))
except NotAnExperiment as e:
    st.error(str(e))
    st.stop()
kept = trials.dropna(subset=["checkpoint"])
if kept.empty:
    st.error(f"No trial of {choice} kept a checkpoint (none reached an evaluation).")
    st.stop()

trial_name = st.sidebar.selectbox("Trial (best first)", list(kept["trial"]), key="trial",
                                  format_func=lambda t: f"{t}  {metric}={kept.set_index('trial').loc[t, metric]:.4g}")
row = kept.set_index("trial").loc[trial_name]
checkpoints = sorted(Path(row["trial_dir"]).glob("checkpoint_*"), reverse=True)
best_index = [str(p) for p in checkpoints].index(row["checkpoint"]) if row["checkpoint"] in map(str, checkpoints) else 0
checkpoint_dir = st.sidebar.selectbox("Checkpoint", checkpoints, index=best_index, key="checkpoint",
                                      format_func=lambda p: p.name + ("  (best)" if str(p) == row["checkpoint"] else ""))
loaded = checkpoint(str(checkpoint_dir))

images, caption = None, ""
if loaded.family.translates_photos:
    upload = st.sidebar.file_uploader("Your photo (optional)", type=["jpg", "jpeg", "png"], key="upload")
    if upload is not None:
        photo = eval_transform(loaded.cfg.data)(Image.open(upload).convert("RGB"))   # (3, S, S) in [-1, 1]
        caption = upload.name
    else:
        test_photos = ImageDataset(loaded.data, "test/photo", eval_transform(loaded.cfg.data))
        index = st.sidebar.number_input(f"Test photo (0-{len(test_photos) - 1})", 0, len(test_photos) - 1, 0,
                                        key="photo")
        photo, caption = test_photos[index][0], f"test photo {index}"
    generated = sample(loaded, 1, photos=photo[None])
    images = [Image.fromarray(((photo.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()),
              *as_pil(generated)]
    captions = [caption, "translated"]
else:
    seed = st.sidebar.number_input("Seed", 0, 2**31 - 1, 0, key="seed")
    count = st.sidebar.slider("Images", 1, 32, 8, key="count")
    label = None
    if loaded.family.conditional_on_labels:
        names = loaded.data.class_names
        label = st.sidebar.selectbox("Class", range(len(names)), format_func=lambda i: names[i], key="label")
    images = as_pil(sample(loaded, count, seed=int(seed), label=label))
    captions = [f"seed {seed} #{i}" for i in range(len(images))]

left, right = st.columns([3, 2])
with left:
    st.subheader(f"{trial_name} / {Path(checkpoint_dir).name} (epoch {loaded.epoch})")
    st.image(images, caption=captions, width=max(128, loaded.cfg.data.image_size))
with right:
    st.subheader("Searched values and scores")
    st.table(row[[*searched, "status", f"best_{metric}", "fid", "mifid", "kid", "epoch"]].astype(str).rename("value"))
    st.caption(f"Scores at the trial's best evaluation; features: {loaded.extractor}")
    with st.expander("Full config"):
        st.json(config_to_dict(loaded.cfg), expanded=False)
