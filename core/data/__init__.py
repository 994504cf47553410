"""The data layer: every source (builtin, folder, kaggle) materialized once into a cached folder
in the Kaggle layout (train/monet, train/photo, test/photo), and PyTorch datasets over it.

    data = prepare_data(cfg.data, cfg.cache_path)                 # driver: build or reuse
    data = load_prepared(root)                                    # trial: read the manifest
    photos = ImageDataset(data, "train/photo", train_transform(cfg.data))
    pairs = UnpairedDataset(photos, ImageDataset(data, "train/monet", train_transform(cfg.data)))
"""

from core.data.datasets import ImageDataset, UnpairedDataset, eval_transform, train_transform
from core.errors import DataError
from core.data.prepare import SPLITS, PreparedData, load_prepared, needs_download, prepare_data

__all__ = ["DataError", "ImageDataset", "PreparedData", "SPLITS", "UnpairedDataset", "eval_transform",
           "load_prepared", "needs_download", "prepare_data", "train_transform"]
