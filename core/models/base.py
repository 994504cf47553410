"""The one contract between the training loop and the model families.

`core/trainable.py` never knows how many networks or optimizers a family has. It builds a family
from the experiment config, hands it batches, asks it for images to score, and saves/restores its
state. Everything model-specific (losses, G:D ratio, LR decay, beta schedule, image pools) lives
behind this interface.

A family registers itself with `@register_family("name")`; the config loader uses the registered
class's `Config` dataclass to validate the `model:` section of a YAML file.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar, Iterable

import torch
from torch.utils.data import DataLoader


class Family(abc.ABC):
    """A model family: its networks, optimizers, schedules and training step.

    Subclasses set `Config` to a dataclass of their hyperparameters (the YAML `model:` section).
    """

    name: ClassVar[str]
    Config: ClassVar[type]

    def __init__(self, cfg, data, device: torch.device):
        self.cfg = cfg        # core.config.ExperimentConfig (cfg.model is an instance of self.Config)
        self.data = data      # core.data.PreparedData: the materialized Kaggle-layout dataset
        self.device = device

    # --- Training ---------------------------------------------------------------------------

    @abc.abstractmethod
    def make_loader(self, generator: torch.Generator) -> DataLoader:
        """The training DataLoader for one epoch, shuffled by `generator` (reproducible)."""

    @abc.abstractmethod
    def train_step(self, batch: Any) -> dict[str, float]:
        """All optimizer steps of one iteration (G:D ratio inside). Returns losses as floats."""

    @abc.abstractmethod
    def end_epoch(self, epoch: int) -> dict[str, float]:
        """Called after each epoch (0-based): LR decay, beta schedule, ... Returns the values to log
        (learning rates, beta), keyed like `lr_g`."""

    def set_hparams(self, model_cfg) -> None:
        """Re-apply the config's hyperparameters after `load_state_dict` (which restores optimizers
        with the learning rates they were saved with): a resumed or PBT-mutated trial trains with
        the values of its current config. Families with optimizers must override this and call super."""
        self.cfg = dataclasses.replace(self.cfg, model=model_cfg)

    # --- Evaluation -------------------------------------------------------------------------

    @abc.abstractmethod
    def generate(self, n: int, batch_size: int) -> Iterable[torch.Tensor]:
        """Yield uint8 image batches, (B, 3, H, W) on CPU, `n` images in all, to score against the
        Monet reference set (CycleGAN: translated held-out photos; GAN/VAE: samples)."""

    @abc.abstractmethod
    def sample(self, n: int, seed: int = 0, label: int | None = None,
               photos: torch.Tensor | None = None) -> torch.Tensor:
        """Fresh images for people (gallery, notebooks): uint8 (n, 3, H, W) on the CPU, reproducible
        from `seed`. `label`: a class index for conditional models; `photos`: float (n, 3, H, W) in
        [-1, 1] for translation models (without them, test photos picked by `seed`)."""

    def eval_metrics(self) -> dict[str, float]:
        """Family-specific held-out metrics reported beside FID at each evaluation; none by default."""
        return {}

    @abc.abstractmethod
    def image_grids(self) -> dict[str, torch.Tensor]:
        """Named image grids for TensorBoard, each a float (3, H, W) tensor in [0, 1]."""

    # --- Checkpointing ----------------------------------------------------------------------

    @abc.abstractmethod
    def state_dict(self) -> dict:
        """Everything needed to resume exactly: networks, optimizers, schedules, pools. Must hold
        only tensors and plain Python values (it is loaded with `torch.load(weights_only=True)`)."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict) -> None:
        ...

    def modules(self) -> dict[str, torch.nn.Module]:
        """The networks, by name (for parameter counts and export). Override to expose them."""
        return {}


FAMILIES: dict[str, type[Family]] = {}


def register_family(name: str):
    """Class decorator: make a Family available to configs as `family: <name>`."""

    def decorator(cls: type[Family]) -> type[Family]:
        if not (isinstance(cls, type) and issubclass(cls, Family)):
            raise TypeError(f"@register_family({name!r}) expects a Family subclass, got {cls!r}")
        if name in FAMILIES and FAMILIES[name] is not cls:
            raise ValueError(f"Model family {name!r} is already registered by {FAMILIES[name]!r}")
        if not dataclasses.is_dataclass(getattr(cls, "Config", None)):
            raise TypeError(f"Family {name!r} must define a dataclass `Config` of its hyperparameters")
        cls.name = name
        FAMILIES[name] = cls
        return cls

    return decorator


def get_family(name: str) -> type[Family]:
    import core.models  # noqa: F401  (importing the package registers every family)

    if name not in FAMILIES:
        raise KeyError(f"Unknown model family {name!r}. Available: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]
