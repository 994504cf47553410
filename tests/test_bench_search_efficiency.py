"""benchmarks/bench_search_efficiency.py's accounting: the replay of a search's evaluations in the
order they happened, the budget each costs, and the stopper that ends a search at its budget."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_search_efficiency",
                                               ROOT / "benchmarks" / "bench_search_efficiency.py")
bench = sys.modules["bench_search_efficiency"] = importlib.util.module_from_spec(_spec)   # (dataclasses need it)
_spec.loader.exec_module(bench)


def _result(trial: str, rows: list[tuple[int, int, float]], config: dict):
    """A ResultGrid entry: its per-evaluation frame (timestamp, epoch, fid) and final config."""
    frame = pd.DataFrame(rows, columns=["timestamp", "epoch", "fid"]).assign(trial_id=trial)
    return SimpleNamespace(metrics_dataframe=frame, config=config)


def test_the_replay_orders_evaluations_by_time_and_charges_each_its_epochs():
    grid = [_result("a", [(10, 1, 5.0), (12, 2, 4.0), (14, 3, 3.0)], {"lr": 1}),
            _result("b", [(11, 1, 6.0), (13, 2, math.nan)], {"lr": 2}),   # diverged: NaN, epochs still spent
            _result("c", [(15, 1, 2.5)], {"lr": 3})]
    events, configs = bench.replay(grid, "fid", eval_every=1)
    nan_as_none = [(spent, None if math.isnan(score) else score, trial) for spent, score, trial in events.events]
    assert nan_as_none == [(1, 5.0, "a"), (2, 6.0, "b"), (3, 4.0, "a"), (4, None, "b"), (5, 3.0, "a"), (6, 2.5, "c")]
    assert events.budget == 6
    assert events.best_within(5) == 3.0 and events.winner_within(5) == "a"
    assert events.best_within(6) == 2.5 and events.winner_within(6) == "c"
    assert events.trials_within(2) == 2
    assert events.budget_to_reach(4.0, limit=6) == 3
    assert events.budget_to_reach(2.5, limit=5) is None     # reached only at 6, past the limit
    assert configs == {"a": {"lr": 1}, "b": {"lr": 2}, "c": {"lr": 3}}

    every_two, _ = bench.replay(grid, "fid", eval_every=2)   # one report covers two epochs
    assert every_two.budget == 12 and every_two.budget_to_reach(4.0, limit=12) == 6


def test_the_epoch_budget_stops_the_whole_search_once_spent():
    stopper = bench.EpochBudget(budget=4, eval_every=2)
    assert stopper("t1", {"epoch": 2}) is False and not stopper.stop_all()
    assert stopper("t1", {"epoch": 2}) is False and not stopper.stop_all(), "the same report counts once"
    assert stopper("t2", {"epoch": 2}) is False and stopper.stop_all()


def test_a_budget_target_is_decided_only_when_the_seeds_interval_is_on_one_side():
    ratios = [0.44, 0.47, 0.61, 0.77, math.inf]           # the 2026-12-01 CycleGAN run: one seed not reached
    interval = bench.median_interval(ratios)
    assert interval == (0.44, math.inf), "5 seeds: the 90% interval of the median is [min, max]"
    assert bench.target_verdict(0.61, interval, 0.5).startswith("missed by the median; not decided")
    ten = [0.1, 0.2, 0.25, 0.3, 0.3, 0.35, 0.4, 0.42, 0.45, 0.9]
    low, high = bench.median_interval(ten)
    assert (low, high) == (0.2, 0.45), "10 seeds: the 2nd and 9th order statistics (98%)"
    assert bench.target_verdict(0.325, (low, high), 0.5).startswith("holds; decided")
    assert bench.target_verdict(0.8, (0.6, 1.0), 0.5).startswith("missed; decided")
    four = bench.median_interval([0.1, 0.2, 0.3, 0.4])
    assert all(math.isnan(end) for end in four), "4 seeds: even [min, max] covers the median only 88%"
    assert "too few seeds" in bench.target_verdict(0.25, four, 0.5)


def test_a_search_top_k_ranks_its_trials_by_their_best_within_the_budget():
    grid = [_result("a", [(10, 1, 5.0), (12, 2, 4.0), (14, 3, 3.0)], {"lr": 1}),
            _result("b", [(11, 1, 3.5), (13, 2, math.nan)], {"lr": 2}),
            _result("c", [(15, 1, 2.5)], {"lr": 3})]
    events, _ = bench.replay(grid, "fid", eval_every=1)
    assert events.top_within(6, 3) == ["c", "a", "b"]
    assert events.top_within(4, 3) == ["b", "a"], "within 4 epochs a's best is 4.0 and c has not reported"
    assert events.top_within(6, 1) == [events.winner_within(6)] == ["c"]


def test_the_pick_is_the_rank_with_the_lowest_mean_over_the_retrainings():
    assert bench.pick_rank([[5.0, 5.2], [4.1, 4.9], [4.4, 4.5]]) == 3      # means 5.1, 4.5, 4.45
    assert bench.pick_rank([[5.0, 5.2], [], [3.0]]) == 1                  # rank 2 none complete, rank 3 one
    assert bench.pick_rank([[], [4.0]]) is None


def test_a_ratio_target_also_carries_the_baselines_uncertainty():
    base = [5.0, 6.0, 7.0]   # mean 6, sd 1; t(0.95, 2 dof) = 2.919986: mean's 90% interval 6 -+ 1.685854
    low, high = bench.with_baseline_noise((0.6, 0.7), base)
    assert low == pytest.approx(0.6 * 6 / (6 + 1.685854), rel=1e-5)
    assert high == pytest.approx(0.7 * 6 / (6 - 1.685854), rel=1e-5)
    assert bench.target_verdict(0.65, (low, high), 0.8).startswith("holds by the median; not decided")
    tight = bench.with_baseline_noise((0.6, 0.7), [5.99, 6.0, 6.01])
    assert bench.target_verdict(0.65, tight, 0.8).startswith("holds; decided")
    assert bench.with_baseline_noise((0.6, 0.7), [0.1, 2.0, 4.0])[1] == math.inf   # its interval reaches 0
    assert all(math.isnan(end) for end in bench.with_baseline_noise((0.6, 0.7), [6.0]))


def test_the_better_count_pairs_the_retrainings_by_seed():
    from core import confirm as C

    bests = {C.BASELINE: {1000: 1.0, 1001: 1.2, 1002: 0.8}, "a": {1000: 0.5, 1002: 0.3}, "b": {1001: 1.4}}
    ratios, better = bench.ratios_to_baseline(bests, ["a", "b", "missing"])
    assert ratios == pytest.approx([0.4 / 1.0, 1.4 / 1.0])
    assert better == 1, "a: 0.5 lower on both seeds it shares with the defaults; b: one seed, too few"


@pytest.mark.parametrize("space", bench.SPACES, ids=lambda p: p.stem)
def test_every_optuna_sampler_is_a_method_that_searches_the_benchmark_spaces(space):
    """--methods takes any sampler of core/sampler_registry.py with ASHA (GP+ASHA, ...), built at the
    benchmark's size; one that cannot search the space is refused there, as by tune.py."""
    from core.config import ConfigError, load_experiment
    from core.sampler_registry import SAMPLERS

    assert {f"{name.upper()}+ASHA" for name in SAMPLERS} <= set(bench.METHODS)
    assert bench.DEFAULT_METHODS == ["random+FIFO", "TPE+ASHA", "PBT"]
    built = {}
    for name in SAMPLERS:
        try:
            cfg = load_experiment(space, [*bench.BENCH_SIZE, *bench.METHODS[f"{name.upper()}+ASHA"]])
        except ConfigError as error:
            built[name] = str(error)
            continue
        assert (cfg.search.sampler or "tpe", cfg.search.scheduler, cfg.search.baseline) == (name, "asha", True)
        built[name] = "ok"
    assert built["tpe"] == built["random"] == "ok", built
    if space.stem == "vae_builtin":   # its β schedule keys exist only `when:` their schedule is drawn
        assert "search.sampler gp models only keys that every trial has" in built["gp"], built
    else:
        assert built["gp"] == "ok", built
