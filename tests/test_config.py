"""Config loading: `_base_` inheritance, typed validation, clear errors, overrides."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from core.config import ConfigError, load_experiment, parse_overrides, read_yaml


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


MINIMAL = """
    name: t
    family: cyclegan
    data: {source: builtin, image_size: 32}
"""


def test_base_inheritance_merges_sections_and_later_files_win(tmp_path):
    write(tmp_path / "_base_" / "a.yaml", """
        family: cyclegan
        data: {source: builtin, image_size: 64, flip: false}
        model: {lr_g: 1.0e-3, lr_d: 1.0e-3}
    """)
    write(tmp_path / "_base_" / "b.yaml", """
        model: {lr_d: 5.0e-4}
    """)
    path = write(tmp_path / "exp.yaml", """
        _base_: [_base_/a.yaml, _base_/b.yaml]
        name: child
        data: {image_size: 32}
    """)
    cfg = load_experiment(path)
    assert cfg.name == "child"
    assert cfg.data.image_size == 32           # child overrides base
    assert cfg.data.flip is False              # untouched base key survives the merge
    assert cfg.model.lr_g == pytest.approx(1e-3)
    assert cfg.model.lr_d == pytest.approx(5e-4)  # second base overrides the first


def test_delete_marker_and_search_space_replaced_not_merged(tmp_path):
    write(tmp_path / "base.yaml", MINIMAL + """
    search:
      space:
        model.lr_g: {loguniform: [1.0e-5, 1.0e-3]}
        model.lr_d: {loguniform: [1.0e-5, 1.0e-3]}
    """)
    path = write(tmp_path / "exp.yaml", """
        _base_: base.yaml
        search:
          space:
            model.lambda_cycle: {uniform: [1.0, 12.0]}
    """)
    cfg = load_experiment(path)
    assert list(cfg.search.space) == ["model.lambda_cycle"]


def test_unknown_key_names_it_suggests_and_lists_valid_keys(tmp_path):
    path = write(tmp_path / "exp.yaml", MINIMAL + """
    model: {lamda_cycle: 5.0}
    """)
    with pytest.raises(ConfigError) as err:
        load_experiment(path)
    message = str(err.value)
    assert "'lamda_cycle'" in message
    assert "Did you mean 'lambda_cycle'" in message
    assert "lr_g" in message and "pool_size" in message  # the valid keys are listed


def test_unknown_section_and_family(tmp_path):
    path = write(tmp_path / "exp.yaml", """
        name: t
        family: stylegan9
        trian: {epochs: 3}
    """)
    with pytest.raises(ConfigError) as err:
        load_experiment(path)
    assert "'trian'" in str(err.value) and "Did you mean 'train'" in str(err.value)
    assert "stylegan9" in str(err.value) and "cyclegan" in str(err.value)


def test_wrong_types_and_impossible_values_are_all_reported(tmp_path):
    path = write(tmp_path / "exp.yaml", MINIMAL + """
    train: {epochs: three, batch_size: 0}
    search:
      space:
        model.lr_g: {loguniform: [1.0e-3, 1.0e-5]}
        model.lr_d: {loguniform: [0.0, 1.0]}
        model.pool_size: {gaussian: [1, 2]}
    """)
    with pytest.raises(ConfigError) as err:
        load_experiment(path)
    message = str(err.value)
    assert "train.epochs should be int, got 'three'" in message
    assert "train.batch_size must be >= 1" in message
    assert "range is empty" in message
    assert "loguniform needs low > 0" in message
    assert "unknown distribution 'gaussian'" in message


def test_search_space_key_must_name_a_real_field(tmp_path):
    path = write(tmp_path / "exp.yaml", MINIMAL + """
    search:
      space:
        model.learning_rate: {loguniform: [1.0e-5, 1.0e-3]}
    """)
    with pytest.raises(ConfigError, match="'learning_rate'.*Valid keys"):
        load_experiment(path)


def test_every_value_a_search_can_draw_is_validated_before_it_runs(tmp_path):
    """A choice or a range end that a fixed value would fail is refused when the config loads; it
    used to kill the trials that drew it, mid-search, with a traceback and a useless --resume hint."""
    path = write(tmp_path / "exp.yaml", """
    name: t
    family: wgan_gp
    data: {source: builtin, image_size: 32}
    search:
      space:
        model.g_steps: {choice: [0, 1]}
        model.d_steps: {int: [-3, 5]}
        model.lr_g: {loguniform: [1.0e-5, 1.0e-3]}
    """)
    with pytest.raises(ConfigError) as refused:
        load_experiment(path)
    assert "search.space.model.g_steps can draw 0, which is invalid: model.g_steps must be >= 1, got 0" in str(refused.value)
    assert "search.space.model.d_steps can draw -3, which is invalid: model.d_steps must be >= 1" in str(refused.value)
    assert "lr_g" not in str(refused.value)
    # A value valid only with another searched key's value (the VAE's cycle must exceed its warm-up)
    # is not refused: the search can pair them.
    vae = write(tmp_path / "vae.yaml", """
    name: v
    family: vae
    data: {source: builtin, image_size: 32}
    model: {beta_schedule: cyclic, beta_warmup: 5, beta_cycle: 10}
    search:
      space:
        model.beta_warmup: {int: [2, 30]}
        model.beta_cycle: {int: [10, 60]}
    """)
    assert load_experiment(vae).search.space


@pytest.mark.parametrize("overrides,message", [
    (["search.pbt={quantile_fraction: 0.5}"], "search.pbt is set but search.scheduler is asha"),
    (["search.searcher=random", "search.optuna={n_startup_trials: 3}"], "search.optuna is set but search.searcher is random"),
    (["search.scheduler=pbt", "search.searcher=random", "train.epochs=4", "search.pbt={perturbation_interval: 4}"],
     "PBT would never act: its first round comes after 4 epochs"),
    (["search.scheduler=pbt", "search.searcher=random", "train.epochs=2"], "PBT would never act: its first round comes after 2"),
])
def test_a_setting_that_cannot_act_is_refused(tmp_path, overrides, message):
    path = write(tmp_path / "exp.yaml", MINIMAL + """
    search:
      space:
        model.lr_g: {loguniform: [1.0e-5, 1.0e-3]}
    """)
    with pytest.raises(ConfigError, match=message):
        load_experiment(path, overrides)
    acting = [o for o in overrides if not o.startswith(("search.pbt=", "search.optuna=", "train.epochs="))]
    load_experiment(path, [*acting, "train.epochs=6"])   # the same without the setting that cannot act loads


def test_malformed_yaml_names_the_file(tmp_path):
    path = write(tmp_path / "bad.yaml", "name: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_experiment(path)


def test_missing_base_and_circular_base(tmp_path):
    path = write(tmp_path / "a.yaml", "_base_: nope.yaml\n")
    with pytest.raises(ConfigError, match="which does not exist"):
        read_yaml(path)
    write(tmp_path / "x.yaml", "_base_: y.yaml\n")
    write(tmp_path / "y.yaml", "_base_: x.yaml\n")
    with pytest.raises(ConfigError, match="Circular"):
        read_yaml(tmp_path / "x.yaml")


def test_overrides_reach_any_field_with_yaml_typed_values(tmp_path):
    path = write(tmp_path / "exp.yaml", MINIMAL)
    cfg = load_experiment(path, ["train.epochs=3", "model.lr_g=1e-4", "data.flip=false", "name=renamed"])
    assert cfg.train.epochs == 3
    assert cfg.model.lr_g == pytest.approx(1e-4)   # "1e-4" is a YAML string; coerced to float
    assert cfg.data.flip is False
    assert cfg.name == "renamed"
    with pytest.raises(ConfigError, match="Did you mean 'epochs'"):
        load_experiment(path, ["train.epoch=3"])
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        parse_overrides(["train.epochs"])


def test_every_search_space_in_the_repo_loads():

    spaces = sorted(Path(__file__).resolve().parents[1].glob("search_spaces/*.yaml"))
    assert spaces, "no search spaces found"
    for space in spaces:
        cfg = load_experiment(space)
        assert cfg.search.space, f"{space.name} searches nothing"


WGAN = """
    name: t
    family: wgan_gp
"""


def test_an_old_key_anywhere_names_the_new_one(tmp_path):
    # In the file, in an override and in search.space: the same message, naming the replacement.
    renamed = "model.gd_ratio was renamed: use model.g_steps and model.d_steps"
    in_file = write(tmp_path / "file.yaml", WGAN + """
    model: {gd_ratio: "1:5"}
    """)
    with pytest.raises(ConfigError, match=renamed):
        load_experiment(in_file)
    plain = write(tmp_path / "plain.yaml", WGAN)
    with pytest.raises(ConfigError, match=renamed):
        load_experiment(plain, ["model.gd_ratio=1:5"])
    in_space = write(tmp_path / "space.yaml", WGAN + """
    search:
      space:
        model.gd_ratio: {choice: ["1:1", "1:5"]}
    """)
    with pytest.raises(ConfigError, match=renamed):
        load_experiment(in_space)
    cyclegan = write(tmp_path / "cyclegan.yaml", MINIMAL + """
    model: {gan_loss: hinge, beta2: 0.99}
    """)
    with pytest.raises(ConfigError) as err:
        load_experiment(cyclegan)
    assert "model.gan_loss was renamed: use model.loss" in str(err.value)
    assert "model.beta2 was renamed: use model.betas_g and model.betas_d" in str(err.value)
    # The VAE's Adam betas are one key: its old beta1 names it, not the KL weight `beta` (which
    # the closest spelling would suggest).
    vae = write(tmp_path / "vae.yaml", "name: v\nfamily: vae\nmodel: {beta1: 0.5}\n")
    with pytest.raises(ConfigError, match=r"model\.beta1 was renamed: use model\.betas \(in model \(vae\)\)"):
        load_experiment(vae)


def test_a_searched_range_can_be_overridden_on_the_command_line(tmp_path):
    """Its key is dotted itself (search.space.model.lr_g): it used to be split into sections and fail
    with "unknown distribution 'lr_g'"."""
    path = write(tmp_path / "exp.yaml", MINIMAL + """
    search:
      space:
        model.lr_g: {loguniform: [1.0e-5, 1.0e-3]}
    """)
    cfg = load_experiment(path, ["search.space.model.lr_g={loguniform: [1.0e-5, 1.0e-2]}",
                                 "search.space.model.lr_d.loguniform=[1.0e-5, 1.0e-3]"])
    assert cfg.search.space == {"model.lr_g": {"loguniform": [1.0e-5, 1.0e-2]},
                                "model.lr_d": {"loguniform": [1.0e-5, 1.0e-3]}}


def test_a_renamed_key_is_only_suggested_where_the_new_key_exists(tmp_path):
    # The VAE never had g_steps: gd_ratio there is a plain unknown key.
    path = write(tmp_path / "vae.yaml", "name: t\nfamily: vae\nmodel: {gd_ratio: '1:5'}\n")
    with pytest.raises(ConfigError) as err:
        load_experiment(path)
    assert "unknown key 'gd_ratio'" in str(err.value) and "was renamed" not in str(err.value)


def test_adam_betas_are_pairs_in_yaml(tmp_path):
    path = write(tmp_path / "betas.yaml", WGAN + """
    model: {betas_g: [0.5, 0.999], betas_d: [0.0, 0.9]}
    """)
    cfg = load_experiment(path)
    assert (cfg.model.betas_g, cfg.model.betas_d) == ([0.5, 0.999], [0.0, 0.9])
    with pytest.raises(ConfigError, match=r"betas_g should be list, got 0.5"):
        load_experiment(path, ["model.betas_g=0.5"])
    with pytest.raises(ConfigError, match=r"model.betas_d must be a pair \[beta1, beta2\] .* got \[0.5, 1.5\]"):
        load_experiment(path, ["model.betas_d=[0.5, 1.5]"])


KAGGLE_PHOTOS = 7038   # photos in Kaggle's gan-getting-started


def test_shipped_cyclegan_spaces_never_score_a_test_photo_twice():
    # CycleGAN scores translated test photos, each once: the split must hold metrics.num_samples.
    from pathlib import Path

    for space in sorted(Path(__file__).resolve().parents[1].glob("search_spaces/*.yaml")):
        cfg = load_experiment(space)
        if cfg.family != "cyclegan":
            continue
        photos = KAGGLE_PHOTOS if cfg.data.source == "kaggle" else cfg.data.builtin_count
        test_photos = round(photos * cfg.data.test_fraction)
        assert cfg.metrics.num_samples <= test_photos, (
            f"{space.name}: metrics.num_samples {cfg.metrics.num_samples} > {test_photos} test photos")


def test_paintsweep_threads_must_be_a_whole_number_and_train_threads_wins(tmp_path, monkeypatch):
    path = write(tmp_path / "exp.yaml", MINIMAL)
    monkeypatch.setenv("PAINTSWEEP_THREADS", "two")
    with pytest.raises(ConfigError, match=r"PAINTSWEEP_THREADS must be a whole number of threads per trial, got 'two'"):
        load_experiment(path)
    assert load_experiment(path, ["train.threads=1"]).train.threads == 1   # the config's own value: the variable is not read
    monkeypatch.setenv("PAINTSWEEP_THREADS", "2")
    assert load_experiment(path).train.threads is None
    with pytest.raises(ConfigError, match=r"train.threads must be >= 1 or null, got 0"):
        load_experiment(path, ["train.threads=0"])


def test_validating_a_config_imports_only_the_family_it_names():
    """`import core.config` needs no torch; validating a config imports the family it names (its
    module imports torch) and no other family. A fresh interpreter, so other tests' imports do not count."""
    root = Path(__file__).resolve().parents[1]
    script = (
        "import json, sys\n"
        "import core.config\n"
        "torch_at_import = 'torch' in sys.modules\n"
        "core.config.load_experiment('search_spaces/vae_builtin.yaml')\n"
        "print(json.dumps({'torch_at_import': torch_at_import, 'modules': sorted(sys.modules)}))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert not seen["torch_at_import"], "import core.config imported torch"
    families = {m for m in seen["modules"] if m.startswith("core.models.")}
    assert "core.models.vae" in families
    assert not families & {"core.models.cyclegan", "core.models.wgan_gp"}, sorted(families)
    assert not any(m == "ray" or m.startswith("ray.") for m in seen["modules"]), "validating imported Ray"
