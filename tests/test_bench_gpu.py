"""bench_gpu.py's count of trials training at once, read from Ray's result.json rows (the GPU runs
themselves need a GPU: their figures are in benchmarks/RESULTS.md)."""

import importlib.util
import json
from pathlib import Path

_spec = importlib.util.spec_from_file_location("bench_gpu", Path(__file__).parents[1] / "benchmarks" / "bench_gpu.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def write_trial(exp: Path, name: str, epochs: list[tuple[int, float, float]]) -> None:
    """epochs: (timestamp when reported, seconds the epoch took, images_per_s), as Ray writes them."""
    (exp / name).mkdir(parents=True)
    rows = [{"timestamp": t, "time_this_iter_s": took, "images_per_s": rate} for t, took, rate in epochs]
    (exp / name / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_trials_that_overlap_count_together_and_one_that_starts_in_the_second_another_ended_does_not(tmp_path):
    write_trial(tmp_path, "a", [(110, 10.0, 30.0), (120, 10.0, 32.0)])   # trains 100-120
    write_trial(tmp_path, "b", [(115, 10.0, 34.0), (125, 10.0, 36.0)])   # 105-125: with a
    write_trial(tmp_path, "c", [(126, 1.0, 80.0)])                       # 125-126: after b, same second
    most, median = bench.trained_at_once(tmp_path)
    assert most == 2
    assert median == 34.0


def test_serial_trials_train_one_at_a_time_though_whole_second_timestamps_make_them_touch(tmp_path):
    # Each one's first epoch reaches back half a second before the last one's report, rounded
    # down to its second: they seem to overlap by 0.5 s at their ends, not in their middles.
    for i in range(3):
        write_trial(tmp_path, f"t{i}", [(100 + 20 * i + 10, 10.5, 50.0), (100 + 20 * i + 20, 10.0, 50.0)])
    assert bench.trained_at_once(tmp_path) == (1, 50.0)
