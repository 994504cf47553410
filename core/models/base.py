"""The one contract between the training loop and the model families, as a template base class
(in the spirit of junyanz/pytorch-CycleGAN-and-pix2pix `models/base_model.py`).

`core/trainable.py` never knows how many networks or optimizers a family has. It builds a family
from the experiment config, hands it batches, asks it for images to score, and saves/restores its
state. A family DECLARES what it has; this class does the mechanics that every family shares:

    class MyGAN(Family):
        Config = Config                                   # dataclass of the YAML `model:` section
        network_names = ("G", "D")                        # attributes holding its nn.Modules
        optimizer_keys = {"opt_g": ("lr_g", "betas_g"),   # optimizer attribute -> the Config keys of
                          "opt_d": ("lr_d", "betas_d")}   #   its learning rate and Adam betas
        architecture_keys = ("ngf", "ndf", "latent_dim")  # Config keys fixed for a trial's life
        tiny = {"ngf": 4, "ndf": 4}                       # small enough for the CPU contract test

        def build(self): ...          # create the networks and optimizers (torch.optim.Adam(params))
        def make_loader(self, generator): ...
        def train_step(self, batch): ...
        def generate(self, n, batch_size): ...
        def draw_samples(self, n, seed, label, photos): ...
        def image_grids(self): ...

The base class then does, for every family alike:
  - checkpoint state: every network and optimizer by name, the epoch, plus `extra_state()` (image
    pools...), in one flat dict;
  - learning rates and betas: applied from the config at build, after `load_state_dict` and in
    `set_hparams` (PBT), times the family's `lr_factor(epoch)` schedule, so the optimizers always run
    with a pure function of (current config, epoch) and never with values saved in a checkpoint;
  - `set_hparams` refusing to change an `architecture_keys` value;
  - `end_epoch`: logs what the finished epoch trained with (learning rates by their config keys, plus
    `schedule_values(epoch)`), then moves on;
  - `eval_mode(*nets)`: eval mode + no_grad + autocast, networks' modes restored afterwards;
  - `autocast()`: bfloat16 on CUDA when train.amp, the only place that decides it;
  - `data_loader(dataset, ...)`: the training DataLoader's workers and memory pinning;
  - `sample()`: refuses a `label` / `photos` the family cannot use (`conditional_on_labels`,
    `translates_photos`), then calls the family's `draw_samples`.
Optional parts have explicit defaults that say "none": `lr_factor` 1 (constant), `schedule_values`
{}, `extra_state` {}, `eval_metrics` {}.

A family registers itself with `@register_family("name")`, which checks its declarations against
its `Config`; the config loader uses `Config` to validate the `model:` section of a YAML file.
Adding a family is one file, core/models/<name>.py, plus its search space: the config loader finds
it by its name (core/models/registry.py) and the tests iterate the registry.
"""

from __future__ import annotations

import abc
import dataclasses
from contextlib import contextmanager
from typing import Any, ClassVar, Iterable, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader

from core.errors import ConfigError
from core.models.registry import FAMILIES


class Family(abc.ABC):
    """A model family: its networks, optimizers, schedules and training step (see the module docstring)."""

    name: ClassVar[str]                                   # set by @register_family
    Config: ClassVar[type]                                # dataclass of the family's hyperparameters
    network_names: ClassVar[tuple[str, ...]]              # attributes holding the networks
    optimizer_keys: ClassVar[dict[str, tuple[str, str]]]  # optimizer attribute -> (lr key, betas key)
    architecture_keys: ClassVar[tuple[str, ...]]          # Config keys that cannot change in set_hparams
    conditional_on_labels: ClassVar[bool] = False         # sample() takes a class `label`
    translates_photos: ClassVar[bool] = False             # sample() takes input `photos`
    tiny: ClassVar[dict[str, Any]] = {}                   # model: values small enough for the CPU contract test
                                                          #   at 32 px (tests/test_family_contract.py), non-default
                                                          #   where a default would hide something

    def __init__(self, cfg, data, device: torch.device):
        self.cfg = cfg        # core.config.ExperimentConfig (cfg.model is an instance of self.Config)
        self.data = data      # core.data.PreparedData: the materialized Kaggle-layout dataset
        self.device = device
        self.amp = cfg.train.amp and device.type == "cuda"
        self.epoch = 0        # the epoch being trained (0-based): decides the schedules
        self.build()
        for name in self.network_names:
            if not isinstance(getattr(self, name, None), nn.Module):
                raise TypeError(f"{type(self).__name__}.build() must set self.{name} to an nn.Module "
                                f"(it is listed in network_names)")
        for name in self.optimizer_keys:
            if not isinstance(getattr(self, name, None), torch.optim.Optimizer):
                raise TypeError(f"{type(self).__name__}.build() must set self.{name} to an optimizer "
                                f"(it is listed in optimizer_keys)")
        self._apply_optimizer_settings()

    # --- What a family implements ----------------------------------------------------------

    @abc.abstractmethod
    def build(self) -> None:
        """Create the networks (on self.device) and optimizers named in the declarations. The
        optimizers' lr and betas are set from the config afterwards, by the base class."""

    @abc.abstractmethod
    def make_loader(self, generator: torch.Generator) -> DataLoader:
        """The training DataLoader for one epoch, shuffled by `generator` (reproducible)."""

    @abc.abstractmethod
    def train_step(self, batch: Any) -> dict[str, float]:
        """All optimizer steps of one iteration (g_steps/d_steps inside). Returns losses as floats."""

    @abc.abstractmethod
    def generate(self, n: int, batch_size: int) -> Iterable[torch.Tensor]:
        """Yield uint8 image batches, (B, 3, H, W) on CPU, `n` distinct images in all, to score against
        the Monet reference set (CycleGAN: translated held-out photos; GAN/VAE: samples)."""

    @abc.abstractmethod
    def draw_samples(self, n: int, seed: int, label: int | None, photos: torch.Tensor | None) -> torch.Tensor:
        """`sample()` after its arguments were checked against what the family accepts."""

    @abc.abstractmethod
    def image_grids(self) -> dict[str, torch.Tensor]:
        """Named image grids for TensorBoard, each a float (3, H, W) tensor in [0, 1]."""

    # --- Optional parts: defaults that say "none" ---------------------------------------------

    def lr_factor(self, epoch: int, lr_key: str) -> float:
        """Multiplier of the config's learning rate `lr_key` during 0-based `epoch`. None: constant 1."""
        return 1.0

    def schedule_values(self, epoch: int) -> dict[str, float]:
        """Scheduled values (other than learning rates) used during `epoch`, to log. None: {}."""
        return {}

    def extra_state(self) -> dict:
        """State beyond networks, optimizers and the epoch (image pools, ...). None: {}."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        """Restore what `extra_state` returned (`state` is the whole state dict). None: nothing to restore."""

    def eval_metrics(self) -> dict[str, float]:
        """Family-specific numbers reported with every evaluation (held-out reconstruction...). None: {}."""
        return {}

    # --- Shared mechanics ----------------------------------------------------------------------

    def modules(self) -> dict[str, nn.Module]:
        """The networks by name: checkpointed, and checked for finite weights by the trainable."""
        return {name: getattr(self, name) for name in self.network_names}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {name: getattr(self, name) for name in self.optimizer_keys}

    def end_epoch(self, epoch: int) -> dict[str, float]:
        """Epoch `epoch` (0-based) is done: returns what it trained with (learning rates keyed by their
        config keys, e.g. `lr_g`, and `schedule_values`), then moves on to epoch `epoch + 1`."""
        finished = {**self._apply_optimizer_settings(), **self.schedule_values(epoch)}
        self.epoch = epoch + 1
        self._apply_optimizer_settings()
        return finished

    def set_hparams(self, model_cfg) -> None:
        """Train from now on with `model_cfg` (a resumed trial's, or a PBT mutation): learning rates
        and betas go to the optimizers now; loss weights, schedules and step counts are read from the
        config at every step. Keys that shape the networks or the data cannot change."""
        changed = [key for key in self.architecture_keys if getattr(model_cfg, key) != getattr(self.cfg.model, key)]
        if changed:
            raise ConfigError(f"model.{', model.'.join(changed)} cannot change during training (they shape the "
                              f"{self.name} networks or the data split); search them, do not mutate them.")
        self.cfg = dataclasses.replace(self.cfg, model=model_cfg)
        self._apply_optimizer_settings()

    def _apply_optimizer_settings(self) -> dict[str, float]:
        """Set every optimizer's lr (config value x schedule at self.epoch) and betas from the config.
        Returns the learning rates by their config keys."""
        m, rates = self.cfg.model, {}
        for name, (lr_key, betas_key) in self.optimizer_keys.items():
            rates[lr_key] = getattr(m, lr_key) * self.lr_factor(self.epoch, lr_key)
            for group in getattr(self, name).param_groups:
                group["lr"], group["betas"] = rates[lr_key], tuple(getattr(m, betas_key))
        return rates

    def data_loader(self, dataset, **kwargs) -> DataLoader:
        """A training DataLoader with data.num_workers worker processes and pinned memory on CUDA."""
        return DataLoader(dataset, num_workers=self.cfg.data.num_workers, pin_memory=self.device.type == "cuda",
                          **kwargs)

    def autocast(self):
        """bfloat16 autocast on CUDA when train.amp is set; a no-op otherwise."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    @contextmanager
    def eval_mode(self, *nets: nn.Module) -> Iterator[None]:
        """Eval mode (batch-norm running statistics, no dropout), no autograd and autocast; each
        network's mode is restored afterwards. Do not yield from inside it: a generator's caller
        would run with autograd off meanwhile."""
        modes = [net.training for net in nets]
        for net in nets:
            net.eval()
        try:
            with torch.no_grad(), self.autocast():
                yield
        finally:
            for net, mode in zip(nets, modes):
                net.train(mode)

    def sample(self, n: int, seed: int = 0, label: int | None = None,
               photos: torch.Tensor | None = None) -> torch.Tensor:
        """Fresh images for people (gallery, notebooks): uint8 (n, 3, H, W) on the CPU, reproducible
        from `seed`. `label`: a class index, for families with conditional_on_labels; `photos`: float
        (n, 3, H, W) in [-1, 1], for families with translates_photos (without them, test photos
        picked by `seed`). Giving either to a family that cannot use it is an error."""
        if label is not None and not self.conditional_on_labels:
            raise ValueError(f"This {self.name} model is not conditional on class labels: sample it without `label`")
        if photos is not None and not self.translates_photos:
            raise ValueError(f"The {self.name} family does not translate photos: sample it without `photos`")
        return self.draw_samples(n, seed, label, photos)

    # --- Checkpointing ----------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything needed to resume exactly, one flat dict: each network and optimizer under its
        name, "epoch", and the family's extra_state(). Only tensors and plain Python values (it is
        loaded with `torch.load(weights_only=True)`)."""
        state = {**{name: net.state_dict() for name, net in self.modules().items()},
                 **{name: opt.state_dict() for name, opt in self.optimizers().items()},
                 "epoch": self.epoch}
        extra = self.extra_state()
        clash = set(extra) & set(state)
        if clash:
            raise ValueError(f"{type(self).__name__}.extra_state() reuses the names {sorted(clash)}")
        return state | extra

    def load_state_dict(self, state: dict) -> None:
        for name, net in self.modules().items():
            net.load_state_dict(state[name])
        for name, opt in self.optimizers().items():
            opt.load_state_dict(state[name])   # moves its tensors to the parameters' device
        self.epoch = state["epoch"]
        self.load_extra_state(state)
        self._apply_optimizer_settings()   # this config's values, not the saved ones


def register_family(name: str):
    """Class decorator: make a Family available to configs as `family: <name>` (core/models/registry.py),
    after checking that its declarations are complete and name real fields of its Config, and that a
    built-in family lives in core/models/<name>.py, where a lookup by name imports it."""

    def decorator(cls: type[Family]) -> type[Family]:
        if not (isinstance(cls, type) and issubclass(cls, Family)):
            raise TypeError(f"@register_family({name!r}) expects a Family subclass, got {cls!r}")
        package, _, module = cls.__module__.rpartition(".")
        if package == "core.models" and module != name:
            raise TypeError(f"Family {name!r} is defined in core/models/{module}.py: a built-in family lives in "
                            f"core/models/{name}.py, so that `family: {name}` finds it")
        if name in FAMILIES and FAMILIES[name] is not cls:
            raise ValueError(f"Model family {name!r} is already registered by {FAMILIES[name]!r}")
        if not dataclasses.is_dataclass(getattr(cls, "Config", None)):
            raise TypeError(f"Family {name!r} must define a dataclass `Config` of its hyperparameters")
        for declaration in ("network_names", "optimizer_keys", "architecture_keys"):
            if not hasattr(cls, declaration):
                raise TypeError(f"Family {name!r} must declare `{declaration}` (see core/models/base.py)")
        if not cls.network_names:
            raise TypeError(f"Family {name!r} declares no networks (network_names is empty)")
        fields = {f.name for f in dataclasses.fields(cls.Config)}
        used = [*cls.architecture_keys, *(key for keys in cls.optimizer_keys.values() for key in keys), *cls.tiny]
        missing = [key for key in used if key not in fields]
        if missing:
            raise TypeError(f"Family {name!r} declares keys its Config lacks: {', '.join(missing)}")
        cls.name = name
        FAMILIES[name] = cls
        return cls

    return decorator


# --- Config checks every family uses --------------------------------------------------------------


def betas_errors(key: str, betas: Any) -> list[str]:
    """Adam betas are a pair [beta1, beta2], each in [0, 1) (YAML `[0.5, 0.999]`)."""
    if not (isinstance(betas, (list, tuple)) and len(betas) == 2
            and all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0.0 <= b < 1.0 for b in betas)):
        return [f"model.{key} must be a pair [beta1, beta2] of Adam betas, each in [0, 1), e.g. [0.5, 0.999]; "
                f"got {betas!r}"]
    return []
