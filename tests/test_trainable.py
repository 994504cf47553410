"""The trainable, run without Ray (LocalSession): exact resume, divergence, reports, TensorBoard.

Every family is exercised through its builtin search spaces (those with data.source builtin), shrunk
to the session's tiny data: the spaces are found, not listed, and every registered family must have
one (the test-defined toy family's is in tests/spaces/)."""

import math
from pathlib import Path

import pytest
import torch

from core.config import apply_dotted, build_config, config_to_dict, load_experiment, read_yaml
from core.metrics import reference_statistics
from core.models import all_families
from core.trainable import CHECKPOINT_FILE, LocalSession, run_trial

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"
TEST_SPACES = Path(__file__).resolve().parent / "spaces"   # spaces of test-defined families
BUILTIN_SPACES = {path.name: path for folder in (SPACES, TEST_SPACES) for path in sorted(folder.glob("*.yaml"))
                  if (read_yaml(path).get("data") or {}).get("source") == "builtin"}


def test_every_family_has_an_offline_space():
    """What makes the parametrized tests below cover every family, the toy one included."""
    covered = {read_yaml(path)["family"] for path in BUILTIN_SPACES.values()}
    missing = sorted(set(all_families()) - covered)
    assert not missing, f"families without a builtin-data search space (data.source: builtin): {missing}"


def tiny_experiment(space: str, tiny_data, **extra) -> dict:
    """The space's fixed settings, at the size of the `tiny_data` fixture, 2 iterations an epoch."""
    overrides = [f"data.image_size={tiny_data.image_size}", f"data.load_size={tiny_data.load_size}",
                 "train.epochs=2", "train.eval_every=1", "train.iters_per_epoch=2", "train.batch_size=2",
                 "metrics.extractor=random", "metrics.num_samples=6", "metrics.kid_subset_size=4",
                 "metrics.batch_size=4", "logging.image_grid_size=2",
                 # the trainable, not the search: values outside the searched ranges, no racing
                 "search.baseline=false", "search.racing=false"]
    overrides += [f"{k}={v}" for k, v in extra.items()]
    return config_to_dict(load_experiment(BUILTIN_SPACES[space], overrides))


def run(tree, tiny_data, root, searched=None, trial_name="local", start_from=None, **kwargs):
    cfg = build_config(tree)
    reference = reference_statistics(tiny_data, cfg.metrics, cfg.cache_path)
    session = LocalSession(root, trial_name, start_from)
    run_trial(searched or {}, experiment=tree, prepared_root=tiny_data.root, reference_path=reference,
              session=session, **kwargs)
    return session


def load_state(session):
    return torch.load(session.latest_checkpoint() / CHECKPOINT_FILE, weights_only=True)


def assert_same_tensors(a, b, where="state"):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where} keys differ"
        for key in a:
            assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.parametrize("space", BUILTIN_SPACES)
def test_resume_equals_uninterrupted_training(space, tiny_data, tmp_path):
    tree = tiny_experiment(space, tiny_data)
    straight = run(tree, tiny_data, tmp_path / "straight")

    interrupted = run(tree, tiny_data, tmp_path / "resumed", max_epochs=1)
    assert len(interrupted.results) == 1
    torch.manual_seed(12345)  # disturb the global RNG: the checkpoint must restore it
    resumed = run(tree, tiny_data, tmp_path / "resumed")  # picks up checkpoint_000001
    assert [r["epoch"] for r in resumed.results] == [2]

    final_straight, final_resumed = load_state(straight), load_state(resumed)
    assert final_resumed["epoch"] == final_straight["epoch"] == 2
    # The global step goes on from the checkpoint (TensorBoard's x axis, the reports' `step`).
    assert final_resumed["step"] == final_straight["step"] == 2 * tree["train"]["iters_per_epoch"]
    assert resumed.results[-1]["step"] == straight.results[-1]["step"]
    assert_same_tensors(final_straight["family"], final_resumed["family"], "family")
    assert_same_tensors(final_straight["rng"], final_resumed["rng"], "rng")
    assert final_straight["best"] == final_resumed["best"]


def test_a_trial_takes_its_threads_from_paintsweep_threads_unless_the_config_sets_them(tiny_data, tmp_path, monkeypatch):
    tree = tiny_experiment("vae_builtin.yaml", tiny_data, **{"train.epochs": 1})
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("PAINTSWEEP_THREADS", "2")
        run(tree, tiny_data, tmp_path / "a")
        assert torch.get_num_threads() == 2
        run(apply_dotted(tree, {"train.threads": 1}), tiny_data, tmp_path / "b")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("space", BUILTIN_SPACES)
def test_reports_metrics_checkpoints_and_tensorboard(space, tiny_data, tmp_path):
    session = run(tiny_experiment(space, tiny_data), tiny_data, tmp_path)
    assert [r["epoch"] for r in session.results] == [1, 2]
    for result in session.results:
        for key in ("fid", "kid", "mifid", "memorization_distance", "best_fid", "images_per_s"):
            assert isinstance(result[key], float) and result[key] == result[key], key
        assert "random" in result["extractor"]  # every result says which extractor produced it
        assert result["trial_status"] == "ok"
    assert session.results[1]["best_fid"] == min(r["fid"] for r in session.results)
    assert len(list(tmp_path.glob("checkpoint_*"))) == 2

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0}).Reload()
    assert "metrics/fid" in events.Tags()["scalars"]
    assert any(tag.startswith("samples/") for tag in events.Tags()["images"])


def test_diverging_trial_ends_cleanly_and_keeps_earlier_checkpoints(tiny_data, tmp_path):
    tree = tiny_experiment("cyclegan_builtin.yaml", tiny_data, **{"train.epochs": 3, "train.iters_per_epoch": 4})
    first = run(tree, tiny_data, tmp_path, max_epochs=1)    # one good epoch, checkpointed
    good = torch.load(tmp_path / "checkpoint_000001" / CHECKPOINT_FILE, weights_only=True)
    blown = apply_dotted(tree, {"model.lr_g": 1.0e12, "model.lr_d": 1.0e12})
    session = run(blown, tiny_data, tmp_path)               # resumes with absurd LRs, then explodes

    last = session.results[-1]
    assert last["trial_status"] == "diverged" and last["diverged"] == 1
    assert "diverged" in last["status_detail"] and "epoch" in last["status_detail"]
    evaluated = [r["fid"] for r in first.results + session.results if r["trial_status"] == "ok"]
    assert evaluated and all(math.isfinite(fid) for fid in evaluated)   # real scores before the divergence
    # The searcher's view of the trial is its last report: the worst possible, not the pre-divergence
    # best, so TPE ranks it below every healthy trial in the stored study.
    assert last["best_fid"] == math.inf
    study = _optuna_study_after([{"best_fid": min(evaluated) + 5.0, "training_iteration": 1}, last])
    healthy, exploded = study.trials
    assert healthy.value < exploded.value == math.inf
    assert sorted(study.trials, key=lambda t: t.value)[-1].number == exploded.number
    # Checkpoints written before the divergence are untouched and finite.
    kept = torch.load(tmp_path / "checkpoint_000001" / CHECKPOINT_FILE, weights_only=True)
    assert_same_tensors(good["family"], kept["family"], "kept checkpoint")
    checkpoints = sorted(tmp_path.glob("checkpoint_*"))
    assert len(checkpoints) >= 1
    for checkpoint in checkpoints:
        state = torch.load(checkpoint / CHECKPOINT_FILE, weights_only=True)["family"]
        networks = {"G", "F", "D_monet", "D_photo"}
        assert networks <= set(state)
        for name in networks:
            assert all(torch.isfinite(t).all() for t in state[name].values()), f"{checkpoint.name}: {name}"


def _optuna_study_after(final_results: list[dict]):
    """The search's Optuna searcher told of trials that ended with these last reports; its (in-memory) study."""
    import optuna

    from core.searchers import ResumableOptunaSearch
    from core.space import optuna_space

    searcher = ResumableOptunaSearch(optuna_space({"model.lr_g": {"loguniform": [1e-4, 1e-3]}}), metric="best_fid",
                                     mode="min", study_name="diverged", storage=None,
                                     sampler=optuna.samplers.TPESampler(seed=0))
    for i, result in enumerate(final_results):
        searcher.suggest(str(i))
        searcher.on_trial_complete(str(i), result=result)
    return searcher.study


def test_saturated_generator_ends_the_trial_as_collapsed(tiny_data, tmp_path):
    """A generator whose tanh is saturated draws one image for every latent. Made by hand from a
    trained checkpoint, not by training at an absurd learning rate: lr 1.0 collapsed this WGAN-GP in
    epoch 4 on one seed at 1 thread, and in 10 epochs not at all on two other seeds or at 2 threads,
    so a test on that trajectory passed or failed by machine."""
    tree = tiny_experiment("wgan_gp_builtin.yaml", tiny_data, **{"train.iters_per_epoch": 4, "train.epochs": 3})
    first = run(tree, tiny_data, tmp_path, max_epochs=1)    # one healthy epoch, checkpointed
    assert [r["trial_status"] for r in first.results] == ["ok"] and first.results[0]["collapsed"] == 0
    # Saturate the generator and its EMA copy (which is what samples): the last convolution outputs
    # its bias, 20, everywhere, and tanh(20) is 1.0 in float32: every image all white. Its gradient
    # through tanh is ~1e-17, so the next epoch's steps cannot bring it back.
    path = tmp_path / "checkpoint_000001" / CHECKPOINT_FILE
    state = torch.load(path, weights_only=True)
    for network in ("G", "G_ema"):
        for key, value in state["family"][network].items():
            if "to_rgb.2." in key:
                value.copy_(torch.full_like(value, 20.0) if key.endswith("bias") else torch.zeros_like(value))
    torch.save(state, path)

    session = run(tree, tiny_data, tmp_path)                # resumes from the saturated checkpoint
    last = session.results[-1]
    assert [r["epoch"] for r in session.results] == [2]
    assert last["trial_status"] == "collapsed" and last["collapsed"] == 1
    assert "identical" in last["status_detail"]
    # The collapsed evaluation left no checkpoint: a collapsed model is not kept.
    assert sorted(p.name for p in tmp_path.glob("checkpoint_*")) == ["checkpoint_000001"]


def test_healthy_training_is_not_flagged_as_collapsed(tiny_data, tmp_path):
    session = run(tiny_experiment("cyclegan_builtin.yaml", tiny_data), tiny_data, tmp_path)
    assert all(r["collapsed"] == 0 and r["diversity"] > 0 for r in session.results)


def test_a_pbt_exploit_continues_the_donors_weights_with_the_new_values(tiny_data, tmp_path):
    """What Ray does in an exploit: the trial restarts from another trial's checkpoint with mutated
    values. The optimizers must run with the new values, from the donor's weights, and the report
    and the log must say who was copied, when, and what changed."""
    tree = tiny_experiment("cyclegan_builtin.yaml", tiny_data, **{"train.epochs": 3})
    old, new = {"model.lr_g": 2.0e-4, "model.lambda_cycle": 10.0}, {"model.lr_g": 5.0e-4, "model.lambda_cycle": 4.0}
    run(tree, tiny_data, tmp_path / "donor", searched=old, trial_name="donor", max_epochs=1)
    donor_checkpoint = tmp_path / "donor" / "checkpoint_000001"

    exploiting = run(tree, tiny_data, tmp_path / "b", searched=new, trial_name="b", start_from=donor_checkpoint)
    first = exploiting.results[0]
    assert first["epoch"] == 2 and first["exploited_from"] == "donor" and first["exploited_at_epoch"] == 1
    assert first["exploit_changes"] == "model.lr_g 0.0002 -> 0.0005; model.lambda_cycle 10 -> 4"
    assert "exploited_from" not in exploiting.results[1], "said once, in the first report after the exploit"
    state = torch.load(tmp_path / "b" / "checkpoint_000002" / CHECKPOINT_FILE, weights_only=True)
    assert state["trial"] == "b" and state["config"]["model"]["lr_g"] == 5.0e-4   # what it trained with
    assert [g["lr"] for g in state["family"]["opt_g"]["param_groups"]] == [5.0e-4]
    assert first["lr_g"] == 5.0e-4   # the learning rate epoch 2 trained with (cyclegan_builtin: no decay yet)

    # From the donor's weights: the same as the donor continuing with the new values itself, and
    # not the same as the new values trained from scratch.
    continued = run(tree, tiny_data, tmp_path / "c", searched=new, trial_name="donor", start_from=donor_checkpoint,
                    max_epochs=2)
    assert continued.results[0]["fid"] == first["fid"]
    scratch = run(tree, tiny_data, tmp_path / "d", searched=new, trial_name="d", max_epochs=2)
    assert scratch.results[-1]["fid"] != first["fid"]
