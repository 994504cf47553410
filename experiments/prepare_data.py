"""Prepare (download, generate, resize) the data of an experiment and say what it holds.

    python experiments/prepare_data.py --space search_spaces/quickstart.yaml
    python experiments/prepare_data.py --space search_spaces/cyclegan.yaml --force-download data.max_images=50
    python experiments/prepare_data.py --space search_spaces/vae_wikiart.yaml   # a Kaggle dataset, by genre

Running it before a search is optional (the search prepares the data too), but it surfaces data
problems (credentials, rules, unreadable files) before any trial starts.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from core.config import ConfigError, load_experiment  # noqa: E402
from core.data import SPLITS, DataError, prepare_data  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", required=True, help="experiment YAML, e.g. search_spaces/quickstart.yaml")
    parser.add_argument("--force-download", action="store_true",
                        help="kaggle, kaggle_dataset: download the competition or dataset again")
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. data.image_size=64")
    args = parser.parse_args(argv)

    overrides = args.overrides + (["data.force_download=true"] if args.force_download else [])
    try:
        cfg = load_experiment(args.space, overrides)
        data = prepare_data(cfg.data, cfg.cache_path)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    print(f"\nData ({cfg.data.source}) ready in {data.root}")
    print(f"  fingerprint {data.fingerprint}, images {data.load_size} px (short side), "
          f"networks see {data.image_size} px crops")
    for split in SPLITS:
        skipped = f", {data.skipped[split]} files skipped (unreadable or too small)" if data.skipped[split] else ""
        print(f"  {split:12s} {data.count(split):6d} images{skipped}")
    if data.class_names:
        counts = Counter(label for _, label in data.files["train/monet"])
        print("  classes (train/monet): " + ", ".join(f"{name} {counts[i]}" for i, name in enumerate(data.class_names)))
    else:
        print("  classes: none (flat folders)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
