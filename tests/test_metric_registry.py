"""core/metric_registry.py: the one table of metrics, and the places that read it."""

import subprocess
import sys
from pathlib import Path

import pytest

from core.config import ConfigError, build_config
from core.metric_registry import METRICS, direction, ratio_is_meaningful

ROOT = Path(__file__).resolve().parents[1]


def test_the_registry_states_each_metrics_direction_and_whether_a_ratio_means_anything():
    assert {name: direction(name) for name in METRICS} == {
        "fid": "min", "mifid": "min", "kid": "min", "precision": "max", "recall": "max"}
    assert ratio_is_meaningful("fid") and ratio_is_meaningful("mifid")
    assert not ratio_is_meaningful("kid"), "KID is often negative near a good generator"


def test_the_registry_imports_no_torch():
    code = "import sys, core.metric_registry; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_config_validation_tensorboard_tags_and_hparams_read_the_registry():
    from core.tracking import HPARAM_METRICS, scalar_tag

    with pytest.raises(ConfigError, match="search.metric must be one of fid, mifid, kid, precision, recall"):
        build_config({"name": "x", "family": "vae", "search": {"metric": "inception_score"}})
    for name in METRICS:   # precision and recall were logged under train/ while the lists disagreed
        assert scalar_tag(name) == f"metrics/{name}"
    assert [t for t in HPARAM_METRICS if t.startswith("metrics/best_")] == [
        f"metrics/best_{m.name}" for m in METRICS.values() if m.in_hparams]
