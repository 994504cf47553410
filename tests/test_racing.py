"""Racing and trial order (core/racing.py): the rules on a ledger filled by hand, no Ray.

A "configuration" here is {"lr": value}; the baseline is {"lr": 1.0}. Scores are FIDs (lower is
better); `finish` reports a trial's curve epoch by epoch and ends it, as Ray would.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from core.config import ConfigError, load_experiment
from core.racing import CONTINUE, STOP, RaceLedger, RacingOptions, configuration_key, racing_seed

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"
BASE = {"lr": 1.0}


def ledger(lag=2, seeds=3, challengers=1, rungs=(), epochs=3, racing=True):
    return RaceLedger(metric="fid", epochs=epochs, lag=lag, base_seed=0,
                      racing=RacingOptions(seeds=seeds, challengers=challengers) if racing else None,
                      rungs=list(rungs), reduction_factor=2, baseline_key=configuration_key(BASE))


def propose(book: RaceLedger, config=None):
    """What the searcher does for the next trial: a racing run if the ledger asks for one, else
    `config` (Optuna's proposal). Returns the record."""
    k = len(book.trials)
    assert book.ready(k), f"trial {k} proposed before trials 0..{k - book.lag} finished"
    race = book.next_race(k)
    if race is not None:
        values, seed = race
        return book.add(f"t{k}", {**values, "train.seed": seed}, seed, races=True)
    assert config is not None, f"trial {k}: the ledger asked to explore"
    return book.add(f"t{k}", config, 0, races=False)


def finish(book: RaceLedger, record, curve):
    for epoch, value in enumerate(curve, start=1):
        book.record_result(record.trial_id, {"epoch": epoch, "fid": value})
    book.record_end(record.trial_id, None, errored=False)


def test_racing_seeds_start_at_the_trials_own_and_skip_it_later():
    assert [racing_seed(i, 0) for i in range(4)] == [0, 100, 101, 102]
    assert [racing_seed(i, 101) for i in range(4)] == [101, 100, 102, 103]


def test_trial_k_waits_for_trial_k_minus_lag_and_is_told_in_trial_order():
    book = ledger(lag=2)
    t0, t1 = propose(book, BASE), propose(book)           # the baseline, then its second seed
    assert t1.races and t1.seed == 100 and t1.key == t0.key
    assert not book.ready(2)                              # trial 0 still running
    finish(book, t1, [9, 5, 3])                           # trial 1 finishes first ...
    assert not book.ready(2)                              # ... which does not let trial 2 start
    finish(book, t0, [10, 6, 4])
    assert book.ready(2) and [t.trial_id for t in book.to_tell(2)] == ["t0"]   # trial 1 is not told yet
    assert [t.trial_id for t in book.to_tell(3)] == ["t0", "t1"]


def test_the_incumbent_and_the_baseline_race_on_the_same_seeds_until_the_interval_is_below_one():
    book = ledger(lag=1, seeds=4, challengers=0)
    finish(book, propose(book, BASE), [10, 6, 4.0])
    finish(book, propose(book), [10, 6, 4.4])             # baseline, seed 100
    finish(book, propose(book, {"lr": 2.0}), [8, 4, 2.0])  # explores: beats the baseline on seed 0
    raced = []
    for curve in ([8, 4, 3.2], [10, 6, 4.2], [8, 4, 2.2]):   # the incumbent gets seed 100 (the baseline has
        record = propose(book)                               # it), then seed 101 goes to both
        raced.append((record.key, record.seed))
        finish(book, record, curve)
    assert raced == [(configuration_key({"lr": 2.0}), 100), (configuration_key(BASE), 101),
                     (configuration_key({"lr": 2.0}), 101)]
    leader = book.incumbent(book.trials)
    assert leader.key == configuration_key({"lr": 2.0}) and leader.paired == 3
    assert leader.verdict == "better than the defaults" and leader.high < 1
    assert book.next_race(len(book.trials)) is None        # decided: the next trial explores


def test_a_challenger_within_noise_is_raced_and_replaces_the_incumbent_only_on_as_many_seeds():
    book = ledger(lag=1, seeds=3, challengers=1)
    a_key, b_key, base_key = (configuration_key(v) for v in ({"lr": 2.0}, {"lr": 3.0}, BASE))
    finals = {(base_key, 0): 4.0, (base_key, 100): 4.4, (base_key, 101): 4.2,
              (a_key, 0): 3.0, (a_key, 100): 4.5, (a_key, 101): 4.0,    # A: ahead, noisy, undecided
              (b_key, 0): 2.6, (b_key, 100): 2.9, (b_key, 101): 3.0}    # B: ahead of A on every seed
    order = []
    for proposal in [BASE, None, {"lr": 2.0}, None, None, None, {"lr": 3.0}, None, None]:
        record = propose(book, proposal)
        order.append((record.key, record.seed))
        finish(book, record, [9, 8, finals[record.key, record.seed]])
        if record.key == b_key and record.seed == 0:
            assert book.incumbent(book.trials).key == a_key          # one seed cannot unseat three
    assert order == [(base_key, 0), (base_key, 100), (a_key, 0), (a_key, 100), (base_key, 101), (a_key, 101),
                     (b_key, 0), (b_key, 100), (b_key, 101)]          # B raced to A's seeds
    assert book.incumbent(book.trials).key == b_key                  # as many seeds, lower ratio: replaced


def test_a_seed_is_never_given_twice_while_trials_run():
    book = ledger(lag=3, seeds=3)
    t0 = propose(book, BASE)
    t1 = propose(book)
    t2 = propose(book, {"lr": 2.0})
    pairs = {(t.key, t.seed) for t in (t0, t1, t2)}
    assert len(pairs) == 3
    finish(book, t0, [10, 6, 4.0])
    t3 = propose(book, {"lr": 3.0})     # baseline has seeds 0 and 100 proposed: nothing to race yet
    assert not t3.races


def test_a_rung_stops_only_beyond_the_seed_noise_at_that_epoch():
    quiet = ledger(lag=1, rungs=[1], racing=False)
    noisy = ledger(lag=1, rungs=[1], racing=False)
    for book, spread in ((quiet, 1.01), (noisy, 2.0)):
        finish(book, book.add("b0", BASE, 0, races=False), [10, 6, 4])
        finish(book, book.add("b1", {**BASE, "train.seed": 100}, 100, races=True), [10 * spread, 6, 4])
        finish(book, book.add("x2", {"lr": 2.0}, 0, races=False), [8, 5, 3])
        finish(book, book.add("x3", {"lr": 3.0}, 0, races=False), [9, 5, 3])
        book.add("x4", {"lr": 4.0}, 0, races=False)
        book.record_result("x4", {"epoch": 1, "fid": 16.0})   # 2x the cut-off (the better half's worst: 9)
    assert quiet.rung_decision("x4", 1) == STOP
    assert noisy.rung_decision("x4", 1) == CONTINUE            # seed noise at epoch 1 is as large as the gap
    assert noisy.trials[-1].stopped_at is None and quiet.trials[-1].stopped_at == 1


def test_without_repeated_seeds_a_rung_is_ashas_and_never_stops_the_baseline_or_a_racing_run():
    book = ledger(lag=1, rungs=[1], racing=False)
    finish(book, book.add("b0", BASE, 0, races=False), [10, 6, 4])
    finish(book, book.add("x1", {"lr": 2.0}, 0, races=False), [8, 5, 3])
    book.add("x2", {"lr": 3.0}, 0, races=False)
    book.record_result("x2", {"epoch": 1, "fid": 10.5})
    assert book.rung_decision("x2", 1) == STOP                 # noise unknown: ASHA's cut at the better half
    book.add("b3", {**BASE, "train.seed": 100}, 100, races=True)
    book.record_result("b3", {"epoch": 1, "fid": 50.0})
    assert book.rung_decision("b3", 1) == CONTINUE
    assert book.rung_decision("x2", 2) == CONTINUE             # not a rung epoch


def test_standings_pair_seeds_and_rank_by_the_ratio_over_them():
    book = ledger(lag=1)
    for name, values, seed, final in [("b0", BASE, 0, 4.0), ("b1", BASE, 100, 6.0),
                                      ("a0", {"lr": 2.0}, 0, 2.0), ("a1", {"lr": 2.0}, 100, 3.0),
                                      ("c0", {"lr": 3.0}, 0, 3.6)]:
        finish(book, book.add(name, {**values, "train.seed": seed}, seed, races=seed != 0), [9, 8, final])
    rows = {s.key: s for s in book.standings()}
    a, c = rows[configuration_key({"lr": 2.0})], rows[configuration_key({"lr": 3.0})]
    # (2 + 3) / (4 + 6); with 2 seeds Fieller's set is unbounded, so the difference: -2.5
    assert (a.seeds, a.paired, a.scale, a.estimate) == (2, 2, "difference", pytest.approx(-2.5))
    assert a.gap == pytest.approx(math.log(0.5))
    assert (c.seeds, c.paired, c.estimate) == (1, 1, pytest.approx(0.9)) and math.isnan(c.low)
    assert [s.key for s in book.standings()][0] == a.key


def test_a_stopped_or_failed_trial_has_no_final_score():
    book = ledger(lag=1, rungs=[1])
    stopped = book.add("s", {"lr": 2.0}, 0, races=False)
    finish(book, stopped, [5, 4, 3])
    stopped.stopped_at = 1
    failed = book.add("f", {"lr": 3.0}, 0, races=False)
    book.record_end("f", {"epoch": 3, "fid": 2.0}, errored=True)
    assert book.final(stopped) is None and book.final(failed) is None


def test_the_ledger_survives_saving(tmp_path):
    book = ledger()
    finish(book, propose(book, BASE), [10, 6, 4])
    copy = ledger()
    copy.load_state(book.state())
    assert copy.trials == book.trials and copy.get("t0").scores == {1: 10, 2: 6, 3: 4}


@pytest.mark.parametrize("override, fragment", [
    ("search.racing={seeds: 1}", "search.racing.seeds must be >= 2"),
    ("search.racing={sedes: 3}", "sedes"),
    ("search.racing=3", "search.racing should be bool"),
    ("search.baseline=false", "needs search.baseline: true"),
    ("search.scheduler=fifo", None),
])
def test_racing_settings_that_cannot_act_are_refused(override, fragment):
    if fragment is None:
        load_experiment(SPACES / "quickstart.yaml", [override])   # racing with fifo: fine
        return
    with pytest.raises(ConfigError, match=fragment):
        load_experiment(SPACES / "quickstart.yaml", [override])


def test_racing_with_random_search_or_a_searched_seed_is_refused():
    with pytest.raises(ConfigError, match="search.racing needs search.searcher: optuna"):
        load_experiment(SPACES / "quickstart.yaml", ["search.searcher=random"])
    with pytest.raises(ConfigError, match="do not search train.seed"):
        load_experiment(SPACES / "quickstart.yaml", ["search.space={train.seed: {choice: [0, 1]}}"])
