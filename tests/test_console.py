"""The console of a run (core.driver.TrialEvents, quiet_console): one line per event of a trial,
a failure's one line and its error file, the live line on a terminal, and Ray's and Optuna's own
output switched off and back. Driven with stand-in trials, in milliseconds; the real searches'
consoles are checked on the shared smoke search (test_search.py) and, with --verbose, on the toy
search (test_new_family.py)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import optuna

from core.driver import TrialEvents, failure_reason, quiet_console

TASK_ERROR = """Failure # 1 (occurred at 2026-12-03_18-35-03)
ray::ImplicitFunc.train() (pid=10203, ip=10.0.0.1, actor_id=c2c1, repr=tune_trainable)
  File "/work/main/core/trainable.py", line 190, in tune_trainable
    losses = family.train_step(batch)
  File "/work/main/core/models/wgan_gp.py", line 88, in train_step
    raise ValueError("the critic's input has 4 channels, the data 3")
ValueError: the critic's input has 4 channels, the data 3
"""

LOST_WORKER = """Failure # 1 (occurred at 2026-12-03_18-35-03)
ValueError: an earlier failure
Failure # 2 (occurred at 2026-12-03_18-36-10)
The actor died unexpectedly before finishing this task.
\tclass_name: ImplicitFunc
\tactor_id: c2c110a3aa8bf1a8b732baad09000000
\tpid: 10203
The actor is dead because its worker process has died. Worker exit type: SYSTEM_ERROR
"""


class Trial(SimpleNamespace):
    """What the callback reads of a Ray Tune Trial."""

    def __str__(self) -> str:
        return self.name


def trial(name="wgan_gp_1a2b3c4d", **fields) -> Trial:
    defaults = dict(name=name, status="RUNNING", last_result={}, config={}, error_file=None, path=f"/runs/exp/{name}",
                    checkpoint=None, num_failures=0, max_failures=3)
    return Trial(**{**defaults, **fields})


def test_an_ended_trial_is_one_line_with_its_status_best_and_epochs_and_which_run_it_is():
    events = TrialEvents("fid", epochs=6)
    last = {"epoch": 6, "best_fid": 0.35346, "best_epoch": 5, "trial_status": "ok"}
    assert events.end_line(trial(last_result=last)) == \
        "Trial wgan_gp_1a2b3c4d completed, best fid 0.3535 at epoch 5 after 6/6 epochs"
    stopped = {"epoch": 2, "best_fid": 2.1, "best_epoch": 2}
    assert events.end_line(trial(last_result=stopped, config={"train.seed": 100})) == \
        "Trial wgan_gp_1a2b3c4d stopped early, best fid 2.1 at epoch 2 after 2/6 epochs (seed 100)"
    diverged = {"epoch": 1, "best_fid": float("inf"), "trial_status": "diverged",
                "status_detail": "diverged: loss_d=nan at epoch 1 iteration 3; trial stopped (try lower learning rates)"}
    assert events.end_line(trial(last_result=diverged, config={"candidate": "top 1", "train.seed": 1000})) == \
        ("Trial wgan_gp_1a2b3c4d diverged after 1/6 epochs (diverged: loss_d=nan at epoch 1 iteration 3; trial "
         "stopped (try lower learning rates)) (top 1, seed 1000)")


def test_a_failure_is_its_errors_one_line_and_where_the_error_file_is(tmp_path):
    assert failure_reason(TASK_ERROR) == "ValueError: the critic's input has 4 channels, the data 3"
    assert failure_reason(LOST_WORKER) == ("The actor died unexpectedly before finishing this task. The actor is "
                                           "dead because its worker process has died. Worker exit type: SYSTEM_ERROR")
    assert failure_reason("") == "no error recorded"

    staged = tmp_path / "error.txt"   # the driver's copy; the line names the one in the storage
    staged.write_text(TASK_ERROR)
    events = TrialEvents("fid", epochs=6)
    failed = trial(last_result={"epoch": 2}, error_file=str(staged), num_failures=4)
    assert events.failure_line(failed, retried=False) == (
        "Trial wgan_gp_1a2b3c4d failed after 2/6 epochs: ValueError: the critic's input has 4 channels, the data 3 "
        "(error file /runs/exp/wgan_gp_1a2b3c4d/error.txt)")
    retried = trial(last_result={"epoch": 1}, error_file=str(staged), num_failures=1,
                    checkpoint=SimpleNamespace(path="/runs/exp/wgan_gp_1a2b3c4d/checkpoint_000000"))
    assert events.failure_line(retried, retried=True).endswith(
        "(error file /runs/exp/wgan_gp_1a2b3c4d/error.txt); retry 1 of 3, resumed from checkpoint_000000")
    assert events.failure_line(trial(num_failures=1, max_failures=-1), retried=True) == \
        "Trial wgan_gp_1a2b3c4d failed after 0/6 epochs: no error recorded; retry 1, started again from scratch"


def test_a_pbt_exploit_is_one_line_naming_the_donor(capsys):
    events = TrialEvents("fid", epochs=6)
    events.on_trial_result(0, [], trial(), {"epoch": 3, "exploited_from": "wgan_gp_0000", "exploited_at_epoch": 2,
                                            "exploit_changes": "model.lr_g 0.0001 -> 0.00012"})
    events.on_trial_result(0, [], trial(), {"epoch": 4})   # an ordinary epoch: nothing
    assert capsys.readouterr().out == ("Trial wgan_gp_1a2b3c4d exploit at epoch 2: continues wgan_gp_0000's weights, "
                                       "with model.lr_g 0.0001 -> 0.00012\n")


def test_on_a_terminal_a_live_line_is_redrawn_in_place_and_cleared_for_each_event(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")   # the terminal's width (shutil.get_terminal_size reads it first)
    events = TrialEvents("fid", epochs=6, live=True)
    events.setup(total_num_samples=12)
    trials = [trial("wgan_gp_0", status="TERMINATED", last_result={"epoch": 6, "best_fid": 0.9, "best_epoch": 6}),
              trial("wgan_gp_1", status="RUNNING", last_result={"epoch": 3, "best_fid": 0.35}),
              trial("wgan_gp_2", status="RUNNING"), trial("wgan_gp_3", status="PENDING")]
    assert events.status_line(trials) == \
        "0:00 | 1/12 trials done | wgan_gp_1 epoch 3/6 | wgan_gp_2 epoch 0/6 | 1 pending | best fid 0.35 (wgan_gp_1)"
    events.on_trial_result(0, trials, trials[1], {"epoch": 3})
    events.on_step_end(0, trials)
    events.on_step_end(0, trials)   # within the second, nothing new: not redrawn
    events.on_trial_complete(0, trials, trials[0])
    events.on_experiment_end(trials)
    out = capsys.readouterr().out
    assert out == ("\r\033[K" + events.status_line(trials) + "\r\033[K"
                   + "Trial wgan_gp_0 completed, best fid 0.9 at epoch 6 after 6/6 epochs\n")
    # Never wider than the terminal: a line that wraps would not be redrawn in place.
    monkeypatch.setenv("COLUMNS", "40")
    events.on_step_end(0, trials)
    assert capsys.readouterr().out == "\r\033[K" + events.status_line(trials)[:39]
    # Not on a terminal (a log file): the events only.
    quiet = TrialEvents("fid", epochs=6)
    quiet.on_step_end(0, trials)
    quiet.on_experiment_end(trials)
    assert capsys.readouterr().out == ""


def test_quiet_console_switches_rays_and_optunas_output_off_and_puts_them_back(monkeypatch):
    monkeypatch.delenv("TUNE_PRINT_ALL_TRIAL_ERRORS", raising=False)
    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "1")
    optuna.logging.set_verbosity(optuna.logging.INFO)
    with quiet_console():
        assert os.environ["RAY_AIR_NEW_OUTPUT"] == "0" and os.environ["TUNE_PRINT_ALL_TRIAL_ERRORS"] == "0"
        assert optuna.logging.get_verbosity() == optuna.logging.WARNING
    assert os.environ["RAY_AIR_NEW_OUTPUT"] == "1" and "TUNE_PRINT_ALL_TRIAL_ERRORS" not in os.environ
    assert optuna.logging.get_verbosity() == optuna.logging.INFO
