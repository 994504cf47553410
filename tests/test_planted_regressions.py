"""benchmarks/planted_regressions.py stays usable: each bug it plants replaces text that occurs
exactly once in today's code (one had gone stale when the line it removed was rewritten, and the
script then reports "cannot plant" instead of whether the tests catch it)."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
_spec = importlib.util.spec_from_file_location("planted_regressions", ROOT / "benchmarks" / "planted_regressions.py")
planted = sys.modules["planted_regressions"] = importlib.util.module_from_spec(_spec)   # (dataclasses need it)
_spec.loader.exec_module(planted)


@pytest.mark.parametrize("regression", planted.REGRESSIONS, ids=lambda r: r.name)
def test_each_planted_regression_can_be_planted(regression):
    for path, old, _ in regression.changes:
        assert (ROOT / path).read_text().count(old) == 1, f"{regression.name}: {old!r} in {path}"
    for test_file in regression.tests:
        assert (ROOT / test_file).is_file(), test_file
