"""Experiment configuration: YAML with `_base_` inheritance, validated into typed dataclasses.

One experiment = one YAML file (usually a search space in `search_spaces/`). Its sections map to
the dataclasses below; the `model:` section is validated against the dataclass of the chosen
family (`core.models.<family>.Config`). Every key is checked: a misspelled key is an error that
names it, suggests the closest valid key and lists all valid keys.

    cfg = load_experiment("search_spaces/quickstart.yaml", overrides=["train.epochs=3"])
    cfg.model.lr_g, cfg.train.epochs, cfg.search.space

A dotted key (`model.lr_g`) addresses any field, both in command-line overrides and in the
searched space, so the trainable applies a trial's sampled values with the same function.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from core.errors import ConfigError
from core.metric_registry import METRICS
from core.models import get_family
from core.sampler_registry import DEFAULT as DEFAULT_SAMPLER, SAMPLERS, Sampler, that_can
from core.space import baseline_point


# --- The sections ------------------------------------------------------------------------------


@dataclass
class DataConfig:
    source: str = "builtin"              # builtin | folder | kaggle | kaggle_dataset
    root: str | None = None              # folder: dir with train/monet, train/photo, test/photo; kaggle*: download dir
    image_size: int = 256                # px, square side the networks see (images under a quarter of it are skipped)
    load_size: int | None = None         # px, resize before the random crop; None = image_size * 286/256 (paper)
    random_crop: bool = True             # augmentation: resize to load_size, random crop to image_size
    flip: bool = True                    # augmentation: random horizontal flip
    test_fraction: float = 0.1           # kaggle*, builtin: share of photos held out as test/photo (scored)
    split_seed: int = 0                  # seed of the reproducible train/test split (and of every capped pick)
    max_images: int | None = None        # cap per domain after the split (smoke tests); None = all
    builtin_count: int = 300             # builtin: images per domain (photos and paintings)
    competition: str = "gan-getting-started"  # kaggle: competition slug
    dataset: str | None = None           # kaggle_dataset: owner/name as in kaggle.com/datasets/owner/name
    include: list[str] | None = None     # kaggle_dataset: folders of the dataset holding the paintings; None = all
    classes: dict | None = None          # kaggle_dataset: label -> folder(s) or label_column values; None = sub-folders
    label_csv: str | None = None         # kaggle_dataset: CSV in the dataset that labels the images (e.g. wclasses.csv)
    label_column: str = "genre"          # kaggle_dataset: the column of label_csv holding the label
    photos: list[str] | None = None      # kaggle_dataset: folders of photos (split by test_fraction); None = no photos
    per_class: int | None = None         # kaggle_dataset: at most this many paintings per class (seeded); None = all
    force_download: bool = False         # kaggle, kaggle_dataset: download again even if present
    num_workers: int = 0                 # DataLoader worker processes per trial

    def validate(self) -> list[str]:
        errors = []
        if self.source not in ("builtin", "folder", "kaggle", "kaggle_dataset"):
            errors.append(f"data.source must be builtin, folder, kaggle or kaggle_dataset, got {self.source!r}")
        if self.source == "folder" and not self.root:
            errors.append("data.source 'folder' needs data.root: a directory with train/monet, train/photo, test/photo")
        if self.source == "kaggle_dataset":
            errors.extend(self.dataset_selection_errors())
        if self.image_size < 16 or self.image_size % 4:
            errors.append(f"data.image_size must be a multiple of 4 and >= 16, got {self.image_size}")
        if self.load_size is not None and self.load_size < self.image_size:
            errors.append(f"data.load_size ({self.load_size}) must be >= data.image_size ({self.image_size})")
        if not 0.0 < self.test_fraction < 1.0:
            errors.append(f"data.test_fraction must be between 0 and 1, got {self.test_fraction}")
        if self.builtin_count < 8:
            errors.append(f"data.builtin_count must be >= 8, got {self.builtin_count}")
        return errors

    def dataset_selection_errors(self) -> list[str]:
        errors = []
        if not self.dataset or self.dataset.count("/") != 1 or not all(self.dataset.split("/")):
            errors.append(f"data.source 'kaggle_dataset' needs data.dataset as owner/name (the end of the dataset's "
                          f"address kaggle.com/datasets/owner/name, e.g. steubk/wikiart), got {self.dataset!r}")
        for key in ("include", "photos"):
            folders = getattr(self, key)
            if folders is not None and (not folders or not all(isinstance(f, str) and f.strip("/") for f in folders)):
                errors.append(f"data.{key} must be a non-empty list of folder names in the dataset, got {folders!r}")
        if self.classes is not None:
            values = [v for vs in self.classes.values() for v in (vs if isinstance(vs, list) else [vs])]
            bad = [str(name) for name in self.classes if not isinstance(name, str) or not name
                   or "/" in name or name.startswith(".")]
            if not self.classes or bad:
                errors.append(f"data.classes must map class labels (folder-safe names: no '/', not starting with "
                              f"'.') to folders or label values, got {self.classes!r}")
            elif len(values) != len(set(map(str, values))):
                errors.append("data.classes names a folder or label value under more than one class; give each "
                              "to one class")
        if self.per_class is not None and self.per_class < 1:
            errors.append(f"data.per_class must be >= 1 or null, got {self.per_class}")
        return errors

    @property
    def resolved_load_size(self) -> int:
        return self.load_size or round(self.image_size * 286 / 256)


@dataclass
class TrainConfig:
    epochs: int = 10                     # epochs per trial (ASHA may stop a trial earlier)
    batch_size: int = 1                  # images per iteration (CycleGAN paper: 1)
    eval_every: int = 1                  # epochs between evaluations; each one reports and checkpoints
    iters_per_epoch: int | None = None   # cap on iterations per epoch; None = one pass over the data
    seed: int = 0                        # trial seed (weights, shuffling, augmentation)
    device: str = "auto"                 # auto | cpu | cuda
    amp: bool = False                    # bfloat16 autocast on CUDA (ignored on CPU)
    threads: int | None = None           # torch CPU threads per trial; None = $PAINTSWEEP_THREADS, else the CPUs
                                         # the trial was given (another count sums in another order: a cheap
                                         # stand-in for another CPU)

    def validate(self) -> list[str]:
        errors = []
        if self.epochs < 1:
            errors.append(f"train.epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            errors.append(f"train.batch_size must be >= 1, got {self.batch_size}")
        if not 1 <= self.eval_every <= max(self.epochs, 1):
            errors.append(f"train.eval_every must be between 1 and train.epochs ({self.epochs}), got {self.eval_every}")
        if self.iters_per_epoch is not None and self.iters_per_epoch < 1:
            errors.append(f"train.iters_per_epoch must be >= 1 or null, got {self.iters_per_epoch}")
        if self.device not in ("auto", "cpu", "cuda"):
            errors.append(f"train.device must be auto, cpu or cuda, got {self.device!r}")
        if self.threads is not None and self.threads < 1:
            errors.append(f"train.threads must be >= 1 or null, got {self.threads}")
        threads_env = os.environ.get("PAINTSWEEP_THREADS", "")
        if self.threads is None and threads_env and not (threads_env.isdigit() and int(threads_env) >= 1):
            errors.append(f"PAINTSWEEP_THREADS must be a whole number of threads per trial, got {threads_env!r} "
                          f"(unset it to give each trial as many threads as it has CPUs)")
        return errors


@dataclass
class MetricsConfig:
    extractor: str = "inception-fid-helper"  # a registered name: core.feature_extractors.EXTRACTORS
    num_samples: int = 500               # generated images scored per evaluation
    reference_samples: int | None = None # cap on reference (Monet) images; None = all
    kid_subset_size: int = 100           # KID subset size (clipped to the sample counts)
    batch_size: int = 50                 # feature-extraction batch size (does not change the values)
    weights_path: str | None = None      # inception: local torch-fidelity weights instead of the download
    mifid_threshold: float = 0.1         # Kaggle: memorization distance below this penalizes FID

    def validate(self) -> list[str]:
        errors = []
        from core.feature_extractors import EXTRACTORS, extractor_names   # torch-fidelity: imported when needed

        if self.extractor not in EXTRACTORS:
            errors.append(f"metrics.extractor must be one of {extractor_names()}, got {self.extractor!r}")
        if self.num_samples < 2:
            errors.append(f"metrics.num_samples must be >= 2, got {self.num_samples}")
        if self.kid_subset_size < 2:
            errors.append(f"metrics.kid_subset_size must be >= 2, got {self.kid_subset_size}")
        if self.weights_path and not Path(os.path.expanduser(self.weights_path)).is_file():
            errors.append(f"metrics.weights_path {self.weights_path!r} is not a file")
        return errors


@dataclass
class LoggingConfig:
    tensorboard: bool = True             # per-trial scalars and image grids under the trial directory
    image_grid_size: int = 8             # images per TensorBoard grid
    wandb: bool = False                  # log each trial to Weights & Biases through Ray's callback
    wandb_project: str = "paintsweep"
    wandb_mode: str | None = None        # online | offline | disabled; None = online with WANDB_API_KEY, else offline

    def validate(self) -> list[str]:
        if self.wandb_mode not in (None, "online", "offline", "disabled"):
            return [f"logging.wandb_mode must be online, offline or disabled, got {self.wandb_mode!r}"]
        return []


DISTRIBUTIONS = ("loguniform", "uniform", "int", "choice")
SCHEDULERS = ("asha", "fifo", "pbt")


@dataclass
class OptunaOptions:
    """`search.optuna:`, how Optuna's sampler runs (searcher: optuna); each sampler takes only some of
    these (core.sampler_registry, Sampler.options)."""
    n_startup_trials: int | None = None  # tpe, gp, cmaes: trials proposed at random before the model; None = tpe, gp:
                                         #   min(10, max(3, num_samples // 4)); cmaes: 1 (Optuna's: it starts from the centre)
    multivariate: bool = True            # tpe: model the hyperparameters jointly, not one by one
    constant_liar: bool | None = None    # tpe: keep concurrent proposals apart; None = on when max_concurrent > 1
    population_size: int = 50            # nsga2: trials per generation (the first generation is random)

    def validate(self) -> list[str]:
        errors = []
        if self.n_startup_trials is not None and self.n_startup_trials < 0:
            errors.append(f"search.optuna.n_startup_trials must be >= 0 or null, got {self.n_startup_trials}")
        if self.population_size < 2:   # NSGA-II's crossover takes two parents
            errors.append(f"search.optuna.population_size must be >= 2, got {self.population_size}")
        return errors


@dataclass
class PBTOptions:
    """`search.pbt:`, Population Based Training (scheduler: pbt)."""
    perturbation_interval: int | None = None  # epochs between exploit/explore rounds; None = 2 * train.eval_every
    quantile_fraction: float = 0.25      # the bottom fraction copies the top fraction's weights and values
    resample_probability: float = 0.25   # explore: chance of resampling a value instead of perturbing it x0.8/x1.2

    def validate(self) -> list[str]:
        errors = []
        if self.perturbation_interval is not None and self.perturbation_interval < 1:
            errors.append(f"search.pbt.perturbation_interval must be >= 1 epoch, got {self.perturbation_interval}")
        if not 0.0 < self.quantile_fraction <= 0.5:
            errors.append(f"search.pbt.quantile_fraction must be in (0, 0.5], got {self.quantile_fraction}")
        if not 0.0 <= self.resample_probability <= 1.0:
            errors.append(f"search.pbt.resample_probability must be in [0, 1], got {self.resample_probability}")
        return errors


@dataclass
class SearchConfig:
    space: dict = field(default_factory=dict)  # dotted key -> {loguniform|uniform|int: [low, high]} or {choice: [...]},
                                         #   optionally `when: {other.key: value or [values]}` (core/space.py)
    metric: str = "fid"                  # fid | mifid | kid (minimized) | precision | recall (maximized);
                                         #   a list ([fid, recall]) searches several at once (objectives)
    objectives: list[str] | None = None  # set from a list `metric`: Optuna's multi-objective search, the
                                         #   Pareto front first in the leaderboard; ASHA and checkpoints use the first
    searcher: str = "optuna"             # optuna (search.sampler, seeded, study on disk) | random (Ray's)
    sampler: str | None = None           # searcher optuna: tpe | gp | cmaes | nsga2 | qmc | random; None = tpe
                                         #   (core/sampler_registry.py says what each can search)
    seed: int = 0                        # searcher seed
    baseline: bool = True                # the first trial trains the space's own values of the searched keys
    optuna: dict = field(default_factory=dict)  # OptunaOptions: n_startup_trials, multivariate, constant_liar,
                                         #   population_size (each for the samplers that take it)
    scheduler: str = "asha"              # asha (stops bad trials early) | fifo (runs every trial to the end) | pbt
    grace_period: int = 1                # ASHA: epochs before a trial can be stopped
    reduction_factor: int = 2            # ASHA: keep 1/reduction_factor of trials at each rung
    pbt: dict = field(default_factory=dict)  # PBTOptions: perturbation_interval, quantile_fraction, resample_probability
    racing: bool | dict = False          # more seeds for the configurations that decide the answer, inside the
                                         #   search (core/racing.py): true, or {seeds: 4, challengers: 1}
    num_samples: int = 8                 # trials
    max_concurrent: int = 2              # trials running at once
    time_budget: str | float | None = None  # wall-clock budget of the whole search: "6h", "90m" or hours; None = none
    cpus_per_trial: float = 1
    gpus_per_trial: float = 0            # fractional values share one GPU between trials
    keep_checkpoints: int = 3            # per trial, the best by the metric (the latest is always kept too)
    max_failures: int = 0                # retries of a crashed trial from its last checkpoint

    def validate(self) -> list[str]:
        errors = []
        if self.metric not in METRICS:
            errors.append(f"search.metric must be one of {', '.join(METRICS)} (or a list of them), got {self.metric!r}")
        if self.objectives is not None:
            bad = [m for m in self.objectives if m not in METRICS]
            if bad or len(set(self.objectives)) != len(self.objectives) or len(self.objectives) < 2:
                errors.append(f"search.metric as a list needs two or more different metrics of {', '.join(METRICS)}, "
                              f"got {self.objectives!r}")
            elif self.objectives[0] != self.metric:
                errors.append(f"search.objectives {self.objectives!r} must start with search.metric {self.metric!r}")
            if self.scheduler == "pbt":
                errors.append("search.scheduler pbt ranks trials by one metric: use one search.metric with pbt, "
                              "or scheduler asha/fifo for several")
        if self.searcher not in ("optuna", "random"):
            errors.append(f"search.searcher must be optuna or random, got {self.searcher!r}")
        if self.scheduler not in SCHEDULERS:
            errors.append(f"search.scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
        if self.scheduler == "pbt" and self.searcher != "random":
            errors.append("search.scheduler pbt needs search.searcher: random (PBT evolves a population of "
                          "randomly started trials; Optuna's TPE would propose into it blind)")
        for name, value in [("num_samples", self.num_samples), ("max_concurrent", self.max_concurrent),
                            ("grace_period", self.grace_period), ("keep_checkpoints", self.keep_checkpoints)]:
            if value < 1:
                errors.append(f"search.{name} must be >= 1, got {value}")
        if self.reduction_factor < 2:
            errors.append(f"search.reduction_factor must be >= 2, got {self.reduction_factor}")
        if self.cpus_per_trial <= 0 or self.gpus_per_trial < 0:
            errors.append("search.cpus_per_trial must be > 0 and search.gpus_per_trial >= 0")
        for name, cls in (("optuna", OptunaOptions), ("pbt", PBTOptions)):
            options = _build_section(cls, getattr(self, name) or {}, f"search.{name}", errors)
            if options is not None:
                errors.extend(options.validate())
        errors.extend(self._racing_errors())
        errors.extend(self._sampler_errors())
        try:
            self.time_budget_s
        except ValueError as e:
            errors.append(str(e))
        if not isinstance(self.space, dict):
            errors.append("search.space must be a mapping of dotted keys to distributions")
        else:
            for key, spec in self.space.items():
                errors.extend(_validate_distribution(key, spec, self.space))
        return errors

    @property
    def metrics(self) -> list[str]:
        """What the search optimizes: [metric], or the objectives of a multi-objective search."""
        return list(self.objectives) if self.objectives else [self.metric]

    def _racing_errors(self) -> list[str]:
        from core.racing import RacingOptions

        if self.racing is False or self.racing is None:
            return []
        if not isinstance(self.racing, (bool, dict)):
            return [f"search.racing must be true, false or a mapping (seeds, challengers), got {self.racing!r}"]
        errors = []
        options = _build_section(RacingOptions, self.racing if isinstance(self.racing, dict) else {},
                                 "search.racing", errors)
        if options is not None:
            errors.extend(options.validate())
        if self.searcher != "optuna" or self.scheduler not in ("asha", "fifo") or self.objectives:
            errors.append("search.racing needs search.searcher: optuna, scheduler asha or fifo and one search.metric "
                          "(racing compares configurations on one score); turn racing off or change those")
        if not self.baseline:
            errors.append("search.racing compares every configuration with the baseline on shared seeds: it needs "
                          "search.baseline: true")
        if "train.seed" in (self.space if isinstance(self.space, dict) else {}):
            errors.append("search.racing gives configurations further train.seed values itself: do not search "
                          "train.seed with racing on")
        return errors

    def _sampler_errors(self) -> list[str]:
        """A sampler that cannot search this space, or is not installed. Optuna would not fail: it
        would draw what its sampler cannot model at random and say so in a log line."""
        if self.sampler is None:
            return []
        if self.sampler not in SAMPLERS:
            return [f"search.sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}"]
        sampler, errors = SAMPLERS[self.sampler], []
        name = f"search.sampler {sampler.name}"
        if self.objectives and not sampler.multi_objective:
            errors.append(f"{name} optimizes one metric, and search.metric is a list {self.objectives!r}: use one "
                          f"metric, or sampler {' or '.join(that_can(multi_objective=True, learns=True))} for several")
        space = self.space if isinstance(self.space, dict) else {}
        specs = {key: spec for key, spec in space.items() if isinstance(spec, dict)}
        choices = [key for key, spec in specs.items() if "choice" in spec]
        if choices and not sampler.categorical:
            errors.append(f"{name} models ranges only: it would draw the choice key(s) {', '.join(choices)} at random. "
                          f"Use sampler {' or '.join(that_can(categorical=True, learns=True))}, "
                          f"or search those keys as ranges")
        conditional = [key for key, spec in specs.items() if spec.get("when")]
        if conditional and not sampler.conditional:
            errors.append(f"{name} models only keys that every trial has: it would draw {', '.join(conditional)} "
                          f"(when:) at random. Use sampler {' or '.join(that_can(conditional=True))}, or drop "
                          f"the when: conditions (the keys are then searched in every trial)")
        missing = sampler.missing_packages()
        if missing:
            errors.append(f"{name} needs {', '.join(missing)}, not installed here: pip install {' '.join(missing)}")
        return errors

    @property
    def sampler_spec(self) -> Sampler:
        """The Optuna sampler's entry in core.sampler_registry (tpe unless search.sampler says otherwise)."""
        return SAMPLERS[self.sampler or DEFAULT_SAMPLER]

    @property
    def racing_options(self):
        """core.racing.RacingOptions, or None when racing is off."""
        from core.racing import RacingOptions

        if not self.racing:
            return None
        return RacingOptions(**(self.racing if isinstance(self.racing, dict) else {}))

    @property
    def in_trial_order(self) -> bool:
        """Whether the search decides in trial order (core.racing): Optuna with one metric, rungs or none."""
        return self.searcher == "optuna" and not self.objectives and self.scheduler in ("asha", "fifo")

    @property
    def optuna_options(self) -> OptunaOptions:
        return OptunaOptions(**(self.optuna or {}))

    @property
    def pbt_options(self) -> PBTOptions:
        return PBTOptions(**(self.pbt or {}))

    @property
    def time_budget_s(self) -> float | None:
        """search.time_budget in seconds: "6h", "90m", "45s" or a number of hours."""
        budget = self.time_budget
        if budget is None:
            return None
        units = {"h": 3600.0, "m": 60.0, "s": 1.0}
        text = str(budget).strip().lower()
        try:
            seconds = float(text[:-1]) * units[text[-1]] if text[-1:] in units else float(text) * 3600.0
        except ValueError:
            seconds = math.nan
        if not 0 < seconds < math.inf:
            raise ValueError(f"search.time_budget must be a positive, finite duration such as \"6h\", \"90m\" or a "
                             f"number of hours (leave it out for no budget), got {budget!r}")
        return seconds


def _validate_distribution(key: str, spec: Any, space: dict | None = None) -> list[str]:
    where = f"search.space.{key}"
    if isinstance(spec, dict) and "when" in spec:
        errors = _validate_when(key, spec["when"], space or {})
        if errors:
            return errors
        spec = {k: v for k, v in spec.items() if k != "when"}
    if not isinstance(spec, dict) or len(spec) != 1:
        return [f"{where} must be one of {{{' | '.join(DISTRIBUTIONS)}: ...}} (plus an optional when: ...), got {spec!r}"]
    (kind, args), = spec.items()
    if kind not in DISTRIBUTIONS:
        close = difflib.get_close_matches(str(kind), DISTRIBUTIONS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return [f"{where}: unknown distribution {kind!r}.{hint} Valid: {', '.join(DISTRIBUTIONS)}"]
    if kind == "choice":
        if not isinstance(args, list) or len(args) < 1:
            return [f"{where}: choice needs a non-empty list of values, got {args!r}"]
        return []
    if not (isinstance(args, list) and len(args) == 2 and all(isinstance(a, (int, float)) for a in args)):
        return [f"{where}: {kind} needs [low, high] numbers, got {args!r}"]
    low, high = args
    if not low < high:
        return [f"{where}: {kind} range is empty: low ({low}) must be < high ({high})"]
    if kind == "loguniform" and low <= 0:
        return [f"{where}: loguniform needs low > 0 (it samples log(value)), got {low}"]
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        return [f"{where}: int needs whole-number bounds, got {args!r}"]
    return []


def _validate_when(key: str, when: Any, space: dict) -> list[str]:
    """`when: {model.loss: wgan-gp}` or `{model.beta_schedule: [linear, cyclic]}`: the key is searched only
    while every named key has one of the given values. The named keys must be `choice` keys of the same
    space that are not themselves conditional (one level, so the order of sampling is plain)."""
    where = f"search.space.{key}.when"
    if not isinstance(when, dict) or not when:
        return [f"{where} must map other searched keys to a value or a list of values, e.g. "
                f"when: {{model.loss: wgan-gp}}; got {when!r}"]
    errors = []
    for other, values in when.items():
        parent = space.get(other)
        if other == key or not isinstance(parent, dict) or "choice" not in parent:
            choices = [k for k, v in space.items() if isinstance(v, dict) and "choice" in v and k != key]
            errors.append(f"{where}: {other!r} must be another `choice` key of search.space "
                          f"(choice keys: {', '.join(choices) or 'none'})")
            continue
        if "when" in parent:
            errors.append(f"{where}: {other!r} is itself conditional; a condition may only name "
                          f"unconditional keys")
            continue
        wanted = values if isinstance(values, list) else [values]
        unknown = [v for v in wanted if v not in parent["choice"]]
        if unknown:
            errors.append(f"{where}: {other} never takes {', '.join(map(repr, unknown))} (its choices: "
                          f"{', '.join(map(repr, parent['choice']))})")
    return errors


@dataclass
class ExperimentConfig:
    name: str                            # experiment directory name under the storage path
    family: str                          # registered model family: cyclegan, ...
    model: Any                           # the family's Config dataclass
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    cache_dir: str = "~/.cache/paintsweep"  # builtin data, prepared images, reference statistics, weights

    @property
    def cache_path(self) -> Path:
        return Path(os.path.expanduser(os.environ.get("PAINTSWEEP_CACHE", self.cache_dir)))


# Model keys that were renamed when every family got one vocabulary (README, "Model families"):
# an old key, in a file, an override or search.space, is an error that names its replacement.
# Each applies to the families whose Config has the new keys.
RENAMED_MODEL_KEYS: dict[str, tuple[str, ...]] = {
    "gd_ratio": ("g_steps", "d_steps"),        # "1:5" -> g_steps: 1, d_steps: 5
    "gan_loss": ("loss",),
    "norm": ("norm_g", "norm_d"),
    "beta1": ("betas_g", "betas_d", "betas"),  # beta1/beta2 -> betas_g/betas_d (GANs), betas (VAE): [beta1, beta2]
    "beta2": ("betas_g", "betas_d", "betas"),
    "beta1_g": ("betas_g",),
    "beta2_g": ("betas_g",),
    "beta1_d": ("betas_d",),
    "beta2_d": ("betas_d",),
    "gp_lambda": ("lambda_gp",),
}

SECTIONS = {"data": DataConfig, "train": TrainConfig, "metrics": MetricsConfig,
            "logging": LoggingConfig, "search": SearchConfig}
TOP_LEVEL_KEYS = ("name", "family", "description", "cache_dir", "model", *SECTIONS)


# --- Loading -----------------------------------------------------------------------------------


def read_yaml(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> dict:
    """Read a YAML file, resolving `_base_` (a path or list of paths, relative to the file).

    Bases are merged in order, then the file itself on top; mappings merge key by key, anything
    else (lists included) is replaced. A key set to `_delete_` is removed."""
    path = Path(path).resolve()
    if path in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path))
        raise ConfigError(f"Circular _base_ inheritance: {chain}")
    if not path.is_file():
        if _seen:
            raise ConfigError(f"{_seen[-1]} names _base_ {path}, which does not exist; fix the _base_ path "
                              f"(it is relative to the file that names it)")
        raise ConfigError(f"Config file not found: {path}")
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}. Fix the syntax at the position shown.") from None
    if raw is None:
        raise ConfigError(f"{path} is empty: a search space needs at least `name:` and `family:` (or a `_base_:` "
                          f"that sets them); see search_spaces/quickstart.yaml")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (name, family, data, model, ...), "
                          f"got a {type(raw).__name__}")
    bases = raw.pop("_base_", [])
    bases = [bases] if isinstance(bases, str) else bases
    merged: dict = {}
    for base in bases:
        merged = deep_merge(merged, read_yaml(path.parent / base, (*_seen, path)))
    return deep_merge(merged, raw)


def deep_merge(base: dict, top: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if value == "_delete_":
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict) and key != "space":
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`["train.epochs=3", "model.lr_g=1e-4"]` -> {"train.epochs": 3, "model.lr_g": 0.0001}.
    Values are parsed as YAML, so numbers, booleans, lists and null work as in the files."""
    parsed = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"Override {item!r} must look like section.key=value, e.g. train.epochs=3")
        try:
            parsed[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            parsed[key.strip()] = value
    return parsed


def _dotted_parts(dotted: str) -> list[str]:
    """"model.lr_g" -> ["model", "lr_g"]; under search.space a key is itself dotted, so
    "search.space.model.lr_g.loguniform" -> ["search", "space", "model.lr_g", "loguniform"]."""
    parts = dotted.split(".")
    if parts[:2] == ["search", "space"] and len(parts) >= 4:
        return [*parts[:2], f"{parts[2]}.{parts[3]}", *parts[4:]]
    return parts


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    """Set `tree["model"]["lr_g"] = value` for dotted == "model.lr_g" (creating sections)."""
    *parents, leaf = _dotted_parts(dotted)
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"Cannot set {dotted!r}: {part!r} is not a section")
        node = child
    node[leaf] = value


def get_dotted(tree: dict, dotted: str) -> Any:
    """`tree["model"]["lr_g"]` for dotted == "model.lr_g"; None where the tree has no such key."""
    for part in _dotted_parts(dotted):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def apply_dotted(tree: dict, values: dict[str, Any]) -> dict:
    out = copy.deepcopy(tree)
    for key, value in values.items():
        set_dotted(out, key, value)
    return out


def build_config(tree: dict, source: str = "config", check_searched_values: bool = False) -> ExperimentConfig:
    """Validate a merged YAML tree into an ExperimentConfig; raise one ConfigError listing every problem.
    The `model:` section is checked against the named family's Config: this imports that family's
    module (core/models/<family>.py), and no other. `check_searched_values`: also every value the
    search can draw (`_check_searched_values`), so that no trial dies mid-search on one; on for a
    search about to run (load_experiment), off for a trial's own point or a finished experiment."""
    search = tree.get("search")
    if isinstance(search, dict) and isinstance(search.get("metric"), list) and search["metric"]:
        # `metric: [fid, recall]`: the first drives ASHA and checkpoint ranking, all of them the searcher.
        tree = {**tree, "search": {**search, "metric": search["metric"][0], "objectives": list(search["metric"])}}

    errors = _unknown_keys(tree, TOP_LEVEL_KEYS, "top level")
    for required in ("name", "family"):
        if required not in tree:
            errors.append(f"missing required key {required!r}")
    if "name" in tree:
        errors.extend(_check_name(tree["name"]))
    family_name = tree.get("family")
    family_cls = None
    if family_name is not None:
        try:
            family_cls = get_family(family_name)
        except KeyError as e:
            errors.append(str(e.args[0]))

    sections = {}
    for name, cls in SECTIONS.items():
        sections[name] = _build_section(cls, tree.get(name) or {}, name, errors)
    model = _build_section(family_cls.Config, tree.get("model") or {}, f"model ({family_name})",
                           errors, renamed=RENAMED_MODEL_KEYS) if family_cls else None

    for section in (*sections.values(), model):
        if section is not None and hasattr(section, "validate"):
            errors.extend(section.validate())
    if not errors:
        errors.extend(_check_settings_act(sections["search"], sections["train"]))
    if family_cls is not None and model is not None and not errors:
        errors.extend(_check_space_keys(tree, sections["search"].space))
        if check_searched_values and not errors:
            errors.extend(_check_searched_values(tree, sections["search"].space))

    if errors:
        raise ConfigError(f"Invalid configuration in {source}:\n  - " + "\n  - ".join(errors))
    return ExperimentConfig(name=str(tree["name"]), family=family_name, model=model,
                            description=str(tree.get("description", "")),
                            cache_dir=str(tree.get("cache_dir", "~/.cache/paintsweep")), **sections)


def pbt_interval(search: SearchConfig, train: TrainConfig) -> int:
    """PBT's interval in epochs: a multiple of train.eval_every, so every round finds a fresh checkpoint."""
    every = train.eval_every
    interval = search.pbt_options.perturbation_interval or 2 * every
    return max(every, interval // every * every)


def _check_settings_act(search: SearchConfig, train: TrainConfig) -> list[str]:
    """A setting that cannot act is an error, not silently ignored: PBT's options under another
    scheduler, Optuna's under random search, and a PBT that would never exploit (its first round
    comes at or after the last epoch, where nothing is exploited)."""
    errors = []
    if search.pbt and search.scheduler != "pbt":
        errors.append(f"search.pbt is set but search.scheduler is {search.scheduler}: PBT's settings act only with "
                      f"scheduler: pbt. Remove search.pbt, or set search.scheduler: pbt")
    if search.optuna and search.searcher != "optuna":
        errors.append(f"search.optuna is set but search.searcher is {search.searcher}: remove search.optuna, or set "
                      f"search.searcher: optuna")
    if search.sampler is not None and search.searcher != "optuna":
        errors.append(f"search.sampler is set but search.searcher is {search.searcher}: Optuna's samplers act only "
                      f"with searcher: optuna (sampler: random is Optuna's, searcher: random is Ray's). Remove "
                      f"search.sampler, or set search.searcher: optuna")
    elif search.searcher == "optuna":
        sampler = search.sampler_spec
        for key in search.optuna or {}:
            if key not in sampler.options:
                takes = [s for s in SAMPLERS if key in SAMPLERS[s].options]
                errors.append(f"search.optuna.{key} acts only with sampler {' or '.join(takes)}, and this search "
                              f"uses {sampler.name}: remove search.optuna.{key}")
    if search.scheduler == "pbt" and pbt_interval(search, train) >= train.epochs:
        errors.append(f"PBT would never act: its first round comes after {pbt_interval(search, train)} epochs "
                      f"(search.pbt.perturbation_interval, a multiple of train.eval_every {train.eval_every}) and "
                      f"train.epochs is {train.epochs}. Lower the interval below train.epochs, or train longer")
    return errors


def _check_name(name) -> list[str]:
    """The experiment's name is its directory under --storage: one plain path component, so that
    an experiment never lands outside the storage (`../x`, `/tmp/x`) or in a hidden directory."""
    text = str(name)
    if not text or text in (".", "..") or text.startswith(".") or "/" in text or "\\" in text:
        return [f"name must be one folder name (letters, digits, - and _; it becomes <storage>/<name>), "
                f"got {text!r}: choose another --name"]
    return []


def _check_space_keys(tree: dict, space: dict) -> list[str]:
    """Every searched key must name an existing field of its section."""
    errors = []
    for key in space:
        section, _, leaf = key.partition(".")
        if section not in (*SECTIONS, "model") or not leaf or "." in leaf:
            errors.append(f"search.space key {key!r} must be section.field, e.g. model.lr_g")
            continue
        valid = _field_names(section, tree)
        if leaf not in valid:
            errors.extend(_unknown_keys({leaf: None}, valid, f"search.space ({section})",
                                        renamed=RENAMED_MODEL_KEYS if section == "model" else {}))
    return errors


def _check_searched_values(tree: dict, space: dict) -> list[str]:
    """Each choice and both ends of each range, through the same validation as a fixed value: a
    searched `model.g_steps: {choice: [0]}` is as wrong as `model.g_steps: 0`. A value that fails
    with the other keys at the config's values passes if one other searched key's choice or range end
    makes it valid (the VAE's beta_cycle must exceed beta_warmup: a search that draws both can pair
    them); the message is the validation's own, for the value drawn."""
    from core.space import dimensions

    def problems(values: dict) -> list[str]:
        try:
            build_config(apply_dotted(tree, values), check_searched_values=False)
        except ConfigError as e:
            return [line.strip()[2:] for line in str(e).splitlines()[1:]]
        return []

    dims = dimensions(space)
    candidates = {d.key: list(d.args) for d in dims}   # a choice's values, or a range's two ends
    errors = []
    for d in dims:
        for value in candidates[d.key]:
            found = problems({d.key: value})
            if found and not any(not problems({d.key: value, other: paired})
                                 for other in candidates if other != d.key for paired in candidates[other]):
                errors.append(f"search.space.{d.key} can draw {value!r}, which is invalid: {found[0]}")
    return errors


def _field_names(section: str, tree: dict) -> tuple[str, ...]:
    cls = get_family(tree["family"]).Config if section == "model" else SECTIONS[section]
    return tuple(f.name for f in dataclasses.fields(cls))


def _unknown_keys(values: dict, valid: tuple[str, ...] | list[str], where: str,
                  renamed: dict[str, tuple[str, ...]] | None = None) -> list[str]:
    """One error per key not in `valid`: a renamed key (`renamed`: old -> new keys) names its
    replacement; any other names the closest valid key and lists them all."""
    errors = []
    for key in values:
        new = [k for k in (renamed or {}).get(key, ()) if k in valid]   # its replacements in this family
        if key not in valid and new:
            errors.append(f"model.{key} was renamed: use {' and '.join(f'model.{k}' for k in new)}"
                          f" (in {where})")
        elif key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            errors.append(f"unknown key {key!r} in {where}.{hint} Valid keys: {', '.join(valid)}")
    return errors


def _build_section(cls: type, values: Any, where: str, errors: list[str],
                   renamed: dict[str, tuple[str, ...]] | None = None):
    if not isinstance(values, dict):
        errors.append(f"section {where!r} must be a mapping, got {values!r}")
        return cls()
    fields = {f.name: f for f in dataclasses.fields(cls)}
    errors.extend(_unknown_keys(values, tuple(fields), where, renamed))
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            continue
        try:
            kwargs[key] = _coerce(value, hints[key])
        except (TypeError, ValueError):
            errors.append(f"{where}.{key} should be {_type_name(hints[key])}, got {value!r}")
    try:
        return cls(**kwargs)
    except TypeError as e:
        errors.append(f"section {where}: {e}")
        return None


def _coerce(value: Any, hint: Any) -> Any:
    """Check `value` against a simple type hint, converting int -> float and '1e-4' -> float."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):   # Optional[int] and int | None
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg)
            except (TypeError, ValueError):
                pass
        raise TypeError
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise TypeError
        return list(value) if origin is list else tuple(value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise TypeError
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise TypeError
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
            raise TypeError
        return int(value)
    if hint is float:
        if isinstance(value, bool):
            raise TypeError
        return float(value)  # also accepts "1e-4", which YAML 1.1 reads as a string
    if hint is str:
        if not isinstance(value, str):
            raise TypeError
        return value
    return value


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def config_to_dict(cfg: ExperimentConfig) -> dict:
    """The plain tree of a config (what a checkpoint stores and a trial receives)."""
    return dataclasses.asdict(cfg)


def load_experiment(path: str | os.PathLike, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read, merge, override and validate an experiment YAML file."""
    tree = apply_dotted(read_yaml(path), parse_overrides(overrides or []))
    cfg = build_config(tree, source=str(path), check_searched_values=True)
    if cfg.search.baseline and cfg.search.space:
        try:
            baseline_point(cfg)   # a search space whose own values it cannot represent
        except ConfigError as e:
            raise ConfigError(f"Invalid configuration in {path}:\n  - {e}") from None
    return cfg
