"""The numbers a search reports, recomputed in the test: MiFID (from evaluate, a trial's reports and
export), a resumed trial's values, the beta-VAE's held-out metrics and the leaderboard's order.

FID, the memorization distance and MiFID are recomputed here with NumPy from the features (the
extractor's output), following their definitions, not core.metrics' code paths:
    FID  = |mu_g - mu_r|^2 + tr(S_g) + tr(S_r) - 2 tr sqrt(S_r S_g)
    d    = mean over generated g of min over reference r of 1 - |cos(g, r)|      (Kaggle)
    MiFID = FID / (d if d < threshold else 1)
"""

import dataclasses
import io
import math
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from core import metrics as M
from core.config import build_config
from core.feature_extractors import get_extractor
from core.models import get_family
from core.trainable import CHECKPOINT_FILE
from test_trainable import run, tiny_experiment


# --- The definitions, in NumPy ----------------------------------------------------------------------


def numpy_fid(generated: np.ndarray, reference: np.ndarray) -> float:
    """generated (N, D), reference (M, D) features -> FID.

    With the centered features B (N, D) and A (M, D), S_g = B^T B / (N - 1) and S_r = A^T A / (M - 1),
    so the eigenvalues of S_r S_g are the squared singular values of A B^T / sqrt((M - 1)(N - 1)), and
    tr sqrt(S_r S_g) is the sum of those singular values (the nuclear norm): an (M, N) SVD instead of
    a (D, D) eigenproblem, and a different route from core.metrics' (N, N) one."""
    n, m = len(generated), len(reference)
    B, A = generated - generated.mean(0), reference - reference.mean(0)
    tr_sqrt = np.linalg.svd(A @ B.T, compute_uv=False).sum() / np.sqrt((m - 1) * (n - 1))
    trace_g, trace_r = (B ** 2).sum() / (n - 1), (A ** 2).sum() / (m - 1)
    mean_term = ((generated.mean(0) - reference.mean(0)) ** 2).sum()
    return float(mean_term + trace_g + trace_r - 2 * tr_sqrt)


def numpy_memorization(generated: np.ndarray, reference: np.ndarray) -> float:
    g = generated / np.linalg.norm(generated, axis=1, keepdims=True)
    r = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    return float((1 - np.abs(g @ r.T)).min(axis=1).mean())


def numpy_mifid(fid: float, distance: float, threshold: float) -> float:
    return fid / (distance if distance < threshold else 1.0)


def features_of(batches, metrics_cfg, cache_dir) -> np.ndarray:
    extractor = get_extractor(metrics_cfg.extractor, metrics_cfg.weights_path, cache_dir)
    return M.extract_features(batches, extractor, metrics_cfg.batch_size).double().numpy()


def reference_of(tree, tiny_data) -> M.Reference:
    cfg = build_config(tree)
    return M.load_reference(M.reference_statistics(tiny_data, cfg.metrics, cfg.cache_path, progress=lambda m: None))


# --- MiFID as evaluate reports it ----------------------------------------------------------------------


def test_evaluate_reports_fid_over_the_thresholded_kaggle_distance_with_absolute_cosine(tiny_data):
    """Reference features that point AWAY from the generated ones (negated, then scaled per
    component): cos(g, r) is close to -1, so Kaggle's 1 - |cos| is small (a copy, penalized) while
    1 - cos would be close to 2 (no penalty). The random extractor's features are >= 0 (ReLU), so
    without the negation |cos| = cos and the absolute value would go untested."""
    tree = tiny_experiment("cyclegan_builtin.yaml", tiny_data, **{"metrics.mifid_threshold": 0.3})
    cfg = build_config(tree)
    reference = reference_of(tree, tiny_data)
    images = torch.randint(0, 256, (8, 3, 32, 32), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    generated = features_of([images], cfg.metrics, cfg.cache_path)                     # (8, 2048)

    scale = np.random.default_rng(0).uniform(0.5, 1.5, size=generated.shape)
    ref = np.concatenate([-generated * scale, -generated[::-1] * scale[::-1] * 2.0])  # (16, 2048), all <= 0
    assert (ref < 0).any() and (generated > 0).any()
    negated = dataclasses.replace(reference, features=torch.from_numpy(ref).float(), count=len(ref),
                                  mu=ref.mean(0), sigma=np.cov(ref, rowvar=False))
    scores = M.evaluate([images[:3], images[3:]], negated, cfg.metrics)

    ref32 = ref.astype(np.float32).astype(np.float64)   # what the Reference holds
    distance = numpy_memorization(generated, ref32)
    fid = numpy_fid(generated, ref)
    g = generated / np.linalg.norm(generated, axis=1, keepdims=True)
    r = ref32 / np.linalg.norm(ref32, axis=1, keepdims=True)
    without_absolute = (1 - g @ r.T).min(axis=1).mean()
    assert distance < 0.3 < without_absolute, "the test needs |cos| to decide the threshold branch"
    assert scores[M.MEMORIZATION] == pytest.approx(distance, rel=1e-5)
    assert scores[M.FID] == pytest.approx(fid, rel=1e-4)
    assert scores[M.MIFID] == pytest.approx(numpy_mifid(fid, distance, 0.3), rel=1e-4)
    assert scores[M.MIFID] > 3 * scores[M.FID]   # memorized: penalized

    # A threshold below the distance: not memorized, MiFID is the FID itself.
    assert distance > 0.01
    strict = dataclasses.replace(cfg.metrics, mifid_threshold=0.01)
    assert M.evaluate([images], negated, strict)[M.MIFID] == pytest.approx(fid, rel=1e-4)


# --- MiFID as a trial reports it and export prints it ------------------------------------------------


@pytest.fixture(scope="module")
def one_epoch_trial(tiny_data, tmp_path_factory):
    """A CycleGAN trial of one epoch with a MiFID threshold every distance falls below (so the
    reported MiFID must divide by the distance itself). Its data config is the `tiny_data` fixture's, so
    export, which rebuilds the data from the checkpoint's config, scores against the same Monets."""
    tree = tiny_experiment("cyclegan_builtin.yaml", tiny_data, **{"train.epochs": 1, "metrics.mifid_threshold": 1.0,
                                                            "data.builtin_count": 24})
    root = tmp_path_factory.mktemp("one-epoch")
    session = run(tree, tiny_data, root)
    return tree, session, root / "checkpoint_000001"


def test_a_trials_reported_scores_are_the_definitions_applied_to_its_images(one_epoch_trial, tiny_data):
    tree, session, checkpoint = one_epoch_trial
    (result,) = session.results
    cfg = build_config(tree)
    family = get_family(cfg.family)(cfg, tiny_data, torch.device("cpu"))
    family.load_state_dict(torch.load(checkpoint / CHECKPOINT_FILE, weights_only=True)["family"])
    generated = features_of(family.generate(cfg.metrics.num_samples, 4), cfg.metrics, cfg.cache_path)
    reference = reference_of(tree, tiny_data).features.double().numpy()

    distance, fid = numpy_memorization(generated, reference), numpy_fid(generated, reference)
    assert distance < 1.0
    assert result["memorization_distance"] == pytest.approx(distance, rel=1e-5)
    assert result["fid"] == pytest.approx(fid, rel=1e-4)
    assert result["mifid"] == pytest.approx(numpy_mifid(fid, distance, 1.0), rel=1e-4)
    assert result["best_mifid"] == result["mifid"] and result["best_fid"] == result["fid"]


def test_export_scores_exactly_the_images_it_wrote(one_epoch_trial, tiny_data, tmp_path, capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
    import export

    tree, _, checkpoint = one_epoch_trial
    out = tmp_path / "images.zip"
    assert export.main([str(checkpoint), "--out", str(out), "--count", "5", "--any-count", "--upscale"]) == 0
    printed = capsys.readouterr().out

    with zipfile.ZipFile(out) as archive:
        images = [np.asarray(Image.open(io.BytesIO(archive.read(name))).convert("RGB"))
                  for name in sorted(archive.namelist())]
    assert len(images) == 5 and images[0].shape == (256, 256, 3)
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()      # (5, 3, 256, 256) uint8
    cfg = build_config(tree)
    generated = features_of([batch], cfg.metrics, cfg.cache_path)
    reference = reference_of(tree, tiny_data).features.double().numpy()
    distance, fid = numpy_memorization(generated, reference), numpy_fid(generated, reference)
    mifid = numpy_mifid(fid, distance, cfg.metrics.mifid_threshold)
    assert f"FID {fid:.4f}   MiFID {mifid:.4f}   memorization distance {distance:.4f}" in printed, printed


# --- A resumed trial trains with its config's values ----------------------------------------------------


def test_a_resumed_trial_trains_with_the_changed_learning_rate_and_loss_weight(tiny_data, tmp_path):
    """Interrupted after epoch 1 and resumed (the same trial, its own checkpoint) with a new lr_g and
    lambda_cycle: the optimizer steps with the new rate, the checkpoint records the new values, and
    the weight changes training (the resume differs from one with only the weight left as it was)."""
    tree = tiny_experiment("cyclegan_builtin.yaml", tiny_data, **{"train.epochs": 2, "search.baseline": "false"})
    old = {"model.lr_g": 2.0e-4, "model.lambda_cycle": 10.0}
    new = {"model.lr_g": 7.0e-4, "model.lambda_cycle": 3.0}
    for root in ("new", "same-weight"):
        run(tree, tiny_data, tmp_path / root, searched=old, max_epochs=1)
    resumed = run(tree, tiny_data, tmp_path / "new", searched=new)
    same_weight = run(tree, tiny_data, tmp_path / "same-weight", searched={**new, "model.lambda_cycle": 10.0})

    (result,) = resumed.results
    assert result["epoch"] == 2 and result["lr_g"] == 7.0e-4
    state = torch.load(tmp_path / "new" / "checkpoint_000002" / CHECKPOINT_FILE, weights_only=True)
    assert [g["lr"] for g in state["family"]["opt_g"]["param_groups"]] == [7.0e-4]
    assert state["config"]["model"]["lambda_cycle"] == 3.0
    assert result["loss_cycle"] != same_weight.results[0]["loss_cycle"]
    other = torch.load(tmp_path / "same-weight" / "checkpoint_000002" / CHECKPOINT_FILE, weights_only=True)
    assert different_weights(state["family"]["G"], other["family"]["G"])

    # And the new rate is what Adam stepped with: a resume with the old rate ends elsewhere.
    run(tree, tiny_data, tmp_path / "old", searched=old, max_epochs=1)
    run(tree, tiny_data, tmp_path / "old", searched={**old, "model.lambda_cycle": 3.0})
    kept = torch.load(tmp_path / "old" / "checkpoint_000002" / CHECKPOINT_FILE, weights_only=True)
    assert different_weights(state["family"]["G"], kept["family"]["G"])


def different_weights(a: dict, b: dict) -> bool:
    assert a.keys() == b.keys()
    return any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())


# --- The beta-VAE's held-out metrics ---------------------------------------------------------------------


def test_vae_held_out_metrics_are_computed_on_exactly_the_held_out_paintings(tiny_data):
    from core.data import ImageDataset, eval_transform

    tree = tiny_experiment("vae_builtin.yaml", tiny_data, **{
        "model.holdout_every": 3, "model.conditional": "false", "metrics.batch_size": 3, "search.baseline": "false"})
    cfg = build_config(tree)
    torch.manual_seed(0)
    family = get_family("vae")(cfg, tiny_data, torch.device("cpu"))
    for batch in family.make_loader(torch.Generator().manual_seed(0)):   # one epoch, so the nets are not at init
        family.train_step(batch)

    paintings = ImageDataset(tiny_data, "train/monet", eval_transform(cfg.data))
    held_out = list(range(0, len(paintings), 3))                          # 0, 3, 6, ...: every 3rd
    assert 2 <= len(held_out) < len(paintings)

    def recon_and_kl(indices):
        x = torch.stack([paintings[i][0] for i in indices])               # (n, 3, 32, 32) in [-1, 1]
        family.encoder.eval(), family.decoder.eval()
        with torch.no_grad():
            mu, logvar = family.encoder(x)
            x_hat = family.decoder(mu)                                    # posterior mean, (n, 3, 32, 32) in [0, 1]
        family.encoder.train(), family.decoder.train()
        mse = (x_hat.double() - (x.double() + 1) / 2).square().mean().item()
        kl = (0.5 * (mu.double() ** 2 + logvar.double().exp() - 1 - logvar.double()).sum(1)).mean().item()
        return mse, kl

    reported = family.eval_metrics()
    mse, kl = recon_and_kl(held_out)
    assert reported["recon_mse"] == pytest.approx(mse, rel=1e-4)
    assert reported["kl"] == pytest.approx(kl, rel=1e-4)
    # The same numbers on the training paintings differ: the test can tell the two sets apart.
    training_mse, _ = recon_and_kl([i for i in range(len(paintings)) if i % 3])
    assert training_mse != pytest.approx(mse, rel=1e-3)


# --- The leaderboard's order -------------------------------------------------------------------------------


def constructed_grid(tmp_path, histories: dict[str, tuple[dict, list[dict]]]):
    """Ray Tune Results of finished trials with the given configs and report histories."""
    from ray.tune import Result

    results = []
    for name, (config, history) in histories.items():
        (tmp_path / name).mkdir()
        # Ray's Result.config is the last report's "config", as in result.json.
        results.append(Result(metrics={**history[-1], "config": config}, checkpoint=None, error=None,
                              path=str(tmp_path / name), metrics_dataframe=pd.DataFrame(history),
                              best_checkpoints=[]))
    return results


def evaluation(epoch, fid, kid, mifid):
    return {"epoch": epoch, "fid": fid, "kid": kid, "mifid": mifid}


@pytest.mark.parametrize("metric", ["fid", "kid", "mifid"])
def test_leaderboard_ranks_by_the_best_evaluation_of_the_search_metric_nan_last_baseline_marked(
        tiny_data, tmp_path, metric):
    from core.results import leaderboard
    from core.space import baseline_point

    tree = tiny_experiment("cyclegan_builtin.yaml", tiny_data, **{"train.epochs": 3, "search.metric": metric,
                                                            "search.baseline": "true"})
    cfg = build_config(tree)
    baseline = baseline_point(cfg)
    point = lambda lr: {**baseline, "model.lr_g": lr}   # noqa: E731
    # The three metrics rank the trials differently on purpose (best by FID: b, by KID: c, by MiFID:
    # a). Best evaluations are not the last ones (the board takes each trial's best).
    grid = constructed_grid(tmp_path, {
        "a": (point(1e-3), [evaluation(1, 5.0, 0.30, 3.0), evaluation(2, 4.0, 0.20, 1.0), evaluation(3, 4.5, 0.25, 2.0)]),
        "b": (point(5e-4), [evaluation(1, 3.0, 0.40, 9.0), evaluation(2, 1.0, 0.35, 8.0), evaluation(3, 2.0, 0.50, 9.5)]),
        "nan": (point(2e-3), [{"epoch": 1, "fid": math.nan, "kid": math.nan, "mifid": math.nan,
                               "trial_status": "diverged", "status_detail": "diverged: loss_g=nan"}]),
        "base": (baseline, [evaluation(1, 6.0, 0.10, 7.0), evaluation(2, 7.0, 0.15, 6.0), evaluation(3, 6.5, 0.12, 6.5)]),
        "c": (point(3e-5), [evaluation(1, 9.0, 0.05, 5.0), evaluation(2, 8.0, 0.08, 4.0), evaluation(3, 8.5, 0.09, 4.5)]),
    })
    board = leaderboard(grid, cfg)

    expected = {"fid": ["b", "a", "base", "c", "nan"], "kid": ["c", "base", "a", "b", "nan"],
                "mifid": ["a", "c", "base", "b", "nan"]}[metric]
    assert list(board["trial"]) == expected
    best = {"fid": {"a": 4.0, "b": 1.0, "base": 6.0, "c": 8.0}, "kid": {"a": 0.20, "b": 0.35, "base": 0.10, "c": 0.05},
            "mifid": {"a": 1.0, "b": 8.0, "base": 6.0, "c": 4.0}}
    for _, row in board.iterrows():
        if row["trial"] == "nan":
            assert math.isnan(row[f"best_{metric}"]) and row["status"] == "diverged"
        else:
            assert row[f"best_{metric}"] == best[metric][row["trial"]]
    assert list(board.loc[board["baseline"], "trial"]) == ["base"]
    assert list(board["status"][board["trial"] != "nan"]) == ["completed"] * 4


def test_the_pareto_front_keeps_the_trials_no_other_beats_on_every_objective():
    """By hand, FID lower and precision higher are better: a is best on FID, c on precision, b
    between them on both (on the front); d is beaten by b on both, e ties b on FID and is worse on
    precision (dominated); f has no scores. At smoke sizes precision is often the same for every
    trial, so the two-objective search alone cannot tell a one-objective front from this one."""
    from core.results import pareto_front

    board = pd.DataFrame({"trial": list("abcdef"),
                          "best_fid": [1.0, 2.0, 3.0, 2.5, 2.0, math.nan],
                          "best_precision": [0.2, 0.5, 0.9, 0.4, 0.3, math.nan]})
    assert pareto_front(board, ["fid", "precision"]) == [True, True, True, False, False, False]
    # The same points with precision's direction ignored (both "lower is better") give another front.
    assert pareto_front(board.assign(best_kid=board["best_precision"]), ["fid", "kid"]) == [
        True, False, False, False, False, False]
