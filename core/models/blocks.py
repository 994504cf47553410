"""Network building blocks shared by the GAN families, plus the two small training utilities
they share (the fake-image history pool and the linear LR decay).

Generators are assembled from LEGO blocks: a list of dicts, one per block, applied in order to a
(B, 3, H, W) image in [-1, 1]. The default CycleGAN generator (Johnson et al. 2016, as in Zhu et al.
2017 and junyanz/pytorch-CycleGAN-and-pix2pix) is itself such a list, `resnet_spec(ngf, n_blocks)`;
in YAML the same network reads

    model:
      generator: blocks
      blocks:                                          # shapes for a (B, 3, H, W) input, ngf = 64
        - {type: conv, out: 64, kernel: 7, pad: reflect}           # c7s1-64      (B, 64, H, W)
        - {type: conv, out: 128, stride: 2}                        # d128         (B, 128, H/2, W/2)
        - {type: conv, out: 256, stride: 2}                        # d256         (B, 256, H/4, W/4)
        - {type: residual, repeat: 9}                              # R256 x 9     same shape
        - {type: conv_transpose, out: 128}                         # u128         (B, 128, H/2, W/2)
        - {type: conv_transpose, out: 64}                          # u64          (B, 64, H, W)
        - {type: conv, out: 3, kernel: 7, pad: reflect, norm: false, act: tanh}   # c7s1-3 (B, 3, H, W)

and a small U-Net-style generator with skip connections reads

      blocks:
        - {type: double_conv, out: 32, save: enc1}                 # (B, 32, H, W), kept as "enc1"
        - {type: max_pool}                                         # (B, 32, H/2, W/2)
        - {type: double_conv, out: 64}                             # (B, 64, H/2, W/2)
        - {type: upsample_conv, out: 32}                           # (B, 32, H, W)
        - {type: double_conv, out: 32, skip: enc1}                 # input cat enc1: 64 -> 32 channels
        - {type: conv, out: 3, kernel: 1, norm: false, act: tanh}  # (B, 3, H, W)

Block types and their keys (each registered, with its defaults, by one `register_block` call below;
`out` is required where listed):
    conv            out, kernel=3, stride=1, pad=zeros|reflect, norm=true, act=relu
    conv_transpose  out, kernel=3, stride=2, norm=true, act=relu        (upsamples by `stride`)
    upsample_conv   out, scale=2, mode=nearest|bilinear, kernel=3, pad, norm, act
    double_conv     out, kernel=3, pad, norm, act                       (two conv-norm-act, U-Net)
    residual        kernel=3, dropout=0.0, repeat=1                     (x + conv-norm-relu-conv-norm(x))
    max_pool, avg_pool  kernel=2                                        (stride = kernel)
    dropout         p=0.5
Every block also takes `save: name` (remember its output) and `skip: name` with `skip_mode: cat|add`
(merge a saved output into its input: concatenate channels, or add). `norm: true` uses the
generator's norm (CycleGAN: `model.norm_g`: instance | batch | none); `act` is relu | leaky_relu
(slope 0.2) | tanh | none. The last block must output 3 channels with `act: tanh` and `norm: false`, at the input's resolution.
The spec is checked before anything is built: every problem is reported with the block's index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

import torch
from torch import nn

NORMS = ("instance", "batch", "none")
ACTIVATIONS = ("relu", "leaky_relu", "tanh", "none")
PADS = ("zeros", "reflect")


# --- Layers ------------------------------------------------------------------------------------


def exact_padding(kernel: int, stride: int) -> int:
    """Padding p with which a conv maps H to exactly H / stride (H divisible by stride):
    floor((H + 2p - k) / s) + 1 = H / s  <=>  -s <= 2p - k < 0. p = max(0, ceil((k - s) / 2)) is the
    smallest such p; none exists when 2p >= k (an even kernel at stride 1), which
    check_block_spec reports. The same p makes a transposed conv map H to exactly H * stride."""
    return max(0, math.ceil((kernel - stride) / 2))


def norm_layer(norm: str, channels: int) -> nn.Module:
    """The reference code's normalizations: instance norm without affine parameters or running
    statistics (so train and eval mode behave the same), batch norm with both."""
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if norm == "batch":
        return nn.BatchNorm2d(channels, affine=True, track_running_stats=True)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"Unknown norm {norm!r}. Valid: {', '.join(NORMS)}")


def activation(name: str) -> nn.Module:
    layers = {"relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.2), "tanh": nn.Tanh, "none": nn.Identity}
    if name not in layers:
        raise ValueError(f"Unknown activation {name!r}. Valid: {', '.join(ACTIVATIONS)}")
    return layers[name]()


def conv_norm_act(c_in: int, c_out: int, kernel: int, stride: int = 1, pad: str = "zeros",
                  norm: str = "instance", act: str = "relu") -> nn.Sequential:
    """Conv that maps H to H / stride exactly (H divisible by stride), then norm and activation."""
    padding = exact_padding(kernel, stride)
    layers: list[nn.Module] = []
    if pad == "reflect" and padding:
        layers.append(nn.ReflectionPad2d(padding))
        padding = 0
    # A conv bias right before a norm that subtracts the per-channel mean is removed by it: only
    # the un-normalized convs get one (the reference code keeps it; the outputs are the same).
    layers.append(nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=norm == "none"))
    layers += [norm_layer(norm, c_out), activation(act)]
    return nn.Sequential(*layers)


def conv_transpose_norm_act(c_in: int, c_out: int, kernel: int = 3, stride: int = 2,
                            norm: str = "instance", act: str = "relu") -> nn.Sequential:
    """Transposed conv that maps H to H * stride exactly: out = (H-1)s - 2p + k + op = Hs when
    op = s + 2p - k, which exact_padding keeps in [0, s) (k=3, s=2 -> p=1, op=1 as in the paper)."""
    padding = exact_padding(kernel, stride)
    output_padding = stride + 2 * padding - kernel
    return nn.Sequential(
        nn.ConvTranspose2d(c_in, c_out, kernel, stride, padding, output_padding, bias=norm == "none"),
        norm_layer(norm, c_out), activation(act))


class ResidualBlock(nn.Module):
    """x + (reflect-pad, conv3, norm, ReLU, [dropout], reflect-pad, conv3, norm)(x): channels and size kept."""

    def __init__(self, channels: int, norm: str = "instance", kernel: int = 3, dropout: float = 0.0):
        super().__init__()
        layers = [conv_norm_act(channels, channels, kernel, 1, "reflect", norm, "relu")]
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers.append(conv_norm_act(channels, channels, kernel, 1, "reflect", norm, "none"))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def init_weights(net: nn.Module, gain: float = 0.02) -> nn.Module:
    """The reference code's 'normal' init: conv/linear weights ~ N(0, gain), batch-norm scales
    ~ N(1, gain), biases 0. Uses the torch global RNG, so the trial seed fixes it."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
    return net


# --- Discriminator -----------------------------------------------------------------------------


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al. 2017): a grid of real/fake logits, each seeing one image patch.

    n_layers stride-2 convs (k4, channels ndf * min(2^i, 8), LeakyReLU 0.2, no norm on the first),
    one stride-1 conv, then a stride-1 conv to 1 channel. n_layers = 3 gives the paper's 70x70
    patches and, for a (B, 3, H, W) input, logits of shape (B, 1, H/8 - 2, W/8 - 2)."""

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3, norm: str = "instance"):
        super().__init__()
        layers = [nn.Conv2d(in_channels, ndf, 4, 2, 1), activation("leaky_relu")]
        channels = ndf
        for i in range(1, n_layers + 1):
            stride = 2 if i < n_layers else 1   # the last of these keeps the size
            out = ndf * min(2 ** i, 8)
            layers += [nn.Conv2d(channels, out, 4, stride, 1, bias=norm == "none"),
                       norm_layer(norm, out), activation("leaky_relu")]
            channels = out
        layers.append(nn.Conv2d(channels, 1, 4, 1, 1))   # (B, 1, h, w) logits, no sigmoid
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def patch_output_size(image_size: int, n_layers: int) -> int:
    """Side of the PatchGAN's logit grid: each k4/s2/p1 conv halves (floor), each k4/s1/p1 conv
    takes one pixel off; 0 means the image is too small for this many layers."""
    size = image_size
    for _ in range(n_layers):
        size = (size + 2 - 4) // 2 + 1
    return max(size - 2, 0)


# --- LEGO generator ----------------------------------------------------------------------------

REQUIRED = object()  # marks a key without a default
WIRING_KEYS = {"type": None, "save": None, "skip": None, "skip_mode": "cat"}
CHOICES = {"pad": PADS, "act": ACTIVATIONS, "mode": ("nearest", "bilinear"), "skip_mode": ("cat", "add")}


@dataclass(frozen=True)
class BlockType:
    """Everything about one block type, in one place (`register_block`)."""
    name: str
    keys: dict              # the type's keys -> defaults (REQUIRED: no default); `norm: True` uses the model's norm
    output: Callable[[dict, int, Fraction], tuple[int, Fraction]]   # (args, c_in, scale) -> (c_out, scale)
    build: Callable[[dict, int, int, str], nn.Module]               # (args, c_in, c_out, norm) -> the module
    maps_to_image: bool = False   # may be the last block (out: 3, act: tanh, norm: false)


BLOCK_TYPES: dict[str, BlockType] = {}


def register_block(name: str, keys: dict, *, output, build, maps_to_image: bool = False) -> None:
    """Make `{type: <name>, ...}` available in generator block lists. Names are unique; keys must not
    shadow the wiring keys every block takes; output and build must be callables."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"Block type name must be an identifier, got {name!r}")
    if name in BLOCK_TYPES:
        raise ValueError(f"Block type {name!r} is already registered")
    if not isinstance(keys, dict) or set(keys) & set(WIRING_KEYS):
        raise ValueError(f"Block type {name!r}: keys must be a dict not using {', '.join(WIRING_KEYS)}")
    if not (callable(output) and callable(build)):
        raise TypeError(f"Block type {name!r}: output and build must be callables")
    if maps_to_image and not {"out", "act", "norm"} <= set(keys):
        raise ValueError(f"Block type {name!r} can map to the image only with out, act and norm keys")
    BLOCK_TYPES[name] = BlockType(name, keys, output, build, maps_to_image)


# (args, channels, scale) -> (channels, scale) for the blocks that keep both.
def _same(a, c, s):
    return c, s


register_block("conv", {"out": REQUIRED, "kernel": 3, "stride": 1, "pad": "zeros", "norm": True, "act": "relu"},
               output=lambda a, c, s: (a["out"], s / a["stride"]), maps_to_image=True,
               build=lambda a, c_in, c_out, norm: conv_norm_act(c_in, c_out, a["kernel"], a["stride"], a["pad"],
                                                               norm, a["act"]))
register_block("conv_transpose", {"out": REQUIRED, "kernel": 3, "stride": 2, "norm": True, "act": "relu"},
               output=lambda a, c, s: (a["out"], s * a["stride"]), maps_to_image=True,
               build=lambda a, c_in, c_out, norm: conv_transpose_norm_act(c_in, c_out, a["kernel"], a["stride"],
                                                                         norm, a["act"]))
# Resize-then-conv avoids the checkerboard artifacts of transposed convs (Odena et al. 2016).
register_block("upsample_conv", {"out": REQUIRED, "scale": 2, "mode": "nearest", "kernel": 3, "pad": "zeros",
                                 "norm": True, "act": "relu"},
               output=lambda a, c, s: (a["out"], s * a["scale"]), maps_to_image=True,
               build=lambda a, c_in, c_out, norm: nn.Sequential(
                   nn.Upsample(scale_factor=a["scale"], mode=a["mode"]),
                   conv_norm_act(c_in, c_out, a["kernel"], 1, a["pad"], norm, a["act"])))
register_block("double_conv", {"out": REQUIRED, "kernel": 3, "pad": "zeros", "norm": True, "act": "relu"},
               output=lambda a, c, s: (a["out"], s),
               build=lambda a, c_in, c_out, norm: nn.Sequential(
                   conv_norm_act(c_in, c_out, a["kernel"], 1, a["pad"], norm, a["act"]),
                   conv_norm_act(c_out, c_out, a["kernel"], 1, a["pad"], norm, a["act"])))
register_block("residual", {"kernel": 3, "dropout": 0.0, "repeat": 1}, output=_same,
               build=lambda a, c_in, c_out, norm: nn.Sequential(
                   *[ResidualBlock(c_in, norm, a["kernel"], a["dropout"]) for _ in range(a["repeat"])]))
register_block("max_pool", {"kernel": 2}, output=lambda a, c, s: (c, s / a["kernel"]),
               build=lambda a, c_in, c_out, norm: nn.MaxPool2d(a["kernel"]))
register_block("avg_pool", {"kernel": 2}, output=lambda a, c, s: (c, s / a["kernel"]),
               build=lambda a, c_in, c_out, norm: nn.AvgPool2d(a["kernel"]))
register_block("dropout", {"p": 0.5}, output=_same, build=lambda a, c_in, c_out, norm: nn.Dropout(a["p"]))


class BlockSpecError(ValueError):
    """A generator `blocks` list that cannot be built; the message lists every problem."""


@dataclass(frozen=True)
class Block:
    """One checked block: its options with defaults filled in, and the shapes it sees."""
    type: str
    args: dict            # the type's keys (BLOCK_TYPES[type].keys), defaults filled in
    save: str | None      # name under which its output is kept
    skip: str | None      # saved output merged into its input
    skip_mode: str        # cat (channels add up) | add (channels must match)
    in_channels: int      # after the skip merge
    out_channels: int
    scale: Fraction       # output resolution / generator input resolution


def resnet_spec(ngf: int = 64, n_blocks: int = 9) -> list[dict]:
    """The paper's ResNet generator as blocks: c7s1-ngf, d2ngf, d4ngf, R4ngf x n, u2ngf, ungf, c7s1-3."""
    spec = [{"type": "conv", "out": ngf, "kernel": 7, "pad": "reflect"},
            {"type": "conv", "out": 2 * ngf, "stride": 2},
            {"type": "conv", "out": 4 * ngf, "stride": 2}]
    if n_blocks:
        spec.append({"type": "residual", "repeat": n_blocks})
    spec += [{"type": "conv_transpose", "out": 2 * ngf},
             {"type": "conv_transpose", "out": ngf},
             {"type": "conv", "out": 3, "kernel": 7, "pad": "reflect", "norm": False, "act": "tanh"}]
    return spec


def check_block_spec(spec, in_channels: int = 3) -> list[Block]:
    """Validate a blocks list and work out every block's channels and resolution.
    Raises BlockSpecError listing all problems."""
    if not isinstance(spec, (list, tuple)) or not spec:
        raise BlockSpecError("blocks must be a non-empty list of block dicts, e.g. "
                             "[{type: conv, out: 64}, ...]; see core/models/blocks.py")
    errors: list[str] = []
    blocks: list[Block] = []
    saved: dict[str, tuple[int, Fraction]] = {}   # name -> (channels, scale)
    channels, scale = in_channels, Fraction(1)
    for index, raw in enumerate(spec):
        where = f"block {index}"
        if not isinstance(raw, dict):
            errors.append(f"{where} must be a dict like {{type: conv, out: 64}}, got {raw!r}")
            continue
        kind = raw.get("type")
        if kind not in BLOCK_TYPES:
            errors.append(f"{where}: unknown type {kind!r}. Valid types: {', '.join(BLOCK_TYPES)}")
            continue
        where = f"block {index} ({kind})"
        args, problems = _block_args(kind, raw, where)
        errors += problems
        if problems:
            continue

        # Merge a saved output into the input.
        skip, mode = raw.get("skip"), raw.get("skip_mode", "cat")
        if skip is not None:
            if skip not in saved:
                known = ", ".join(saved) or "none yet"
                errors.append(f"{where}: skip {skip!r} names no earlier block's `save` (saved so far: {known})")
                continue
            skip_channels, skip_scale = saved[skip]
            if skip_scale != scale:
                errors.append(f"{where}: skip {skip!r} was saved at {skip_scale} of the input resolution "
                              f"but this block receives {scale}; skip to a block at the same resolution")
                continue
            if mode == "add" and skip_channels != channels:
                errors.append(f"{where}: skip_mode add needs equal channels, got {channels} and "
                              f"{skip_channels} from {skip!r}; use skip_mode: cat or match `out`")
                continue
            if mode == "cat":
                channels += skip_channels

        out, new_scale = BLOCK_TYPES[kind].output(args, channels, scale)
        blocks.append(Block(kind, args, raw.get("save"), skip, mode, channels, out, new_scale))
        channels, scale = out, new_scale
        if raw.get("save") is not None:
            if raw["save"] in saved:
                errors.append(f"{where}: save name {raw['save']!r} is used twice; names must be unique")
            saved[raw["save"]] = (channels, scale)

    if not errors:
        last = blocks[-1]
        image_types = [name for name, block_type in BLOCK_TYPES.items() if block_type.maps_to_image]
        if (not BLOCK_TYPES[last.type].maps_to_image or last.out_channels != 3 or last.args["act"] != "tanh"
                or last.args["norm"]):
            errors.append(f"the last block must map to the image: a {' or '.join(image_types)} with "
                          f"out: 3, act: tanh, norm: false (e.g. {{type: conv, out: 3, kernel: 7, "
                          f"pad: reflect, norm: false, act: tanh}}), got {_describe(spec[-1])}")
        if last.scale != 1:
            errors.append(f"the blocks change the resolution by {last.scale}; the output must have the "
                          f"input's size (as many upsamplings as downsamplings)")
    if errors:
        raise BlockSpecError("invalid generator blocks:\n    " + "\n    ".join(errors))
    return blocks


def _block_args(kind: str, raw: dict, where: str) -> tuple[dict, list[str]]:
    """The type's keys with defaults filled in, and the problems with the given values."""
    defaults = BLOCK_TYPES[kind].keys
    errors = []
    for key in raw:
        if key not in defaults and key not in WIRING_KEYS:
            valid = ", ".join([*defaults, *WIRING_KEYS])
            errors.append(f"{where}: unknown key {key!r}. Valid keys for {kind}: {valid}")
    args = {}
    for key, default in defaults.items():
        value = raw.get(key, default)
        if value is REQUIRED:
            errors.append(f"{where}: missing required key {key!r}")
            continue
        expected = int if default is REQUIRED else type(default)
        ok = isinstance(value, expected) and not (expected is not bool and isinstance(value, bool))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            errors.append(f"{where}: {key} must be {expected.__name__}, got {value!r}")
        elif key in CHOICES and value not in CHOICES[key]:
            errors.append(f"{where}: {key} must be one of {', '.join(CHOICES[key])}, got {value!r}")
        elif key in ("out", "kernel", "stride", "scale", "repeat") and value < 1:
            errors.append(f"{where}: {key} must be >= 1, got {value}")
        elif key in ("p", "dropout") and not 0.0 <= value < 1.0:
            errors.append(f"{where}: {key} must be in [0, 1), got {value}")
        args[key] = value
    for key in ("save", "skip"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            errors.append(f"{where}: {key} must be a name (string), got {raw[key]!r}")
    if "kernel" in args and kind not in ("max_pool", "avg_pool") and not errors:
        stride = args.get("stride", 1)
        if 2 * exact_padding(args["kernel"], stride) >= args["kernel"]:   # an even kernel at stride 1
            errors.append(f"{where}: kernel {args['kernel']} at stride {stride} cannot keep the image size "
                          f"exact (no symmetric padding does); use an odd kernel")
    mode = raw.get("skip_mode", "cat")
    if mode not in CHOICES["skip_mode"]:
        errors.append(f"{where}: skip_mode must be cat or add, got {mode!r}")
    elif "skip_mode" in raw and raw.get("skip") is None:
        errors.append(f"{where}: skip_mode is set but skip is not; name the saved output to merge")
    return args, errors


def _describe(raw) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in raw.items()) + "}" if isinstance(raw, dict) else repr(raw)


def _build_block(block: Block, norm: str) -> nn.Module:
    """The module of a checked block; `norm: false` switches the model's norm off for this block."""
    block_norm = "none" if block.args.get("norm") is False else norm
    return BLOCK_TYPES[block.type].build(block.args, block.in_channels, block.out_channels, block_norm)


class BlockGenerator(nn.Module):
    """An image-to-image generator built from a checked blocks list (see the module docstring):
    (B, 3, H, W) in [-1, 1] -> (B, 3, H, W) in [-1, 1]."""

    def __init__(self, spec: list[dict], norm: str = "instance"):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"Unknown norm {norm!r}. Valid: {', '.join(NORMS)}")
        plan = check_block_spec(spec)
        self.blocks = nn.ModuleList(_build_block(b, norm) for b in plan)
        self.wiring = [(b.skip, b.skip_mode, b.save) for b in plan]   # plain data, not in state_dict
        # Smallest resolution reached: H must be divisible by 1 / min_scale.
        self.min_scale = min(b.scale for b in plan)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        saved: dict[str, torch.Tensor] = {}
        for block, (skip, mode, save) in zip(self.blocks, self.wiring):
            if skip is not None:
                x = torch.cat([x, saved[skip]], dim=1) if mode == "cat" else x + saved[skip]
            x = block(x)
            if save is not None:
                saved[save] = x
        return x


def resnet_generator(ngf: int = 64, n_blocks: int = 9, norm: str = "instance") -> BlockGenerator:
    return BlockGenerator(resnet_spec(ngf, n_blocks), norm)


# --- Training utilities ------------------------------------------------------------------------


class ImagePool:
    """History of generated images for the discriminator update (Shrivastava et al. 2017), as the
    reference ImagePool: until `size` images are stored each new image is stored and returned;
    after that each image is, with probability 1/2, swapped for a random stored one (which is
    returned), else returned as is. Draws come from the torch global CPU RNG, so the trainable's
    RNG checkpoint covers them, and the stored images are in state_dict: resume is exact."""

    def __init__(self, size: int):
        if size < 0:
            raise ValueError(f"ImagePool size must be >= 0, got {size}")
        self.size = size
        self.images: list[torch.Tensor] = []   # each (C, H, W), detached

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) fresh fakes -> (B, C, H, W) mix of fresh and stored fakes (detached)."""
        images = images.detach()
        if self.size == 0:
            return images
        out = []
        for image in images:
            image = image.clone()   # a view would keep the whole batch alive in the pool
            if len(self.images) < self.size:
                self.images.append(image)
                out.append(image)
            elif torch.rand(()).item() > 0.5:
                index = int(torch.randint(self.size, ()).item())
                out.append(self.images[index])
                self.images[index] = image
            else:
                out.append(image)
        return torch.stack(out)

    def state_dict(self) -> dict:
        # (N, C, H, W) with N <= size; an empty pool is a (0,) tensor.
        return {"images": torch.stack(self.images) if self.images else torch.empty(0)}

    def load_state_dict(self, state: dict) -> None:
        images = state["images"]
        if len(images) > self.size:
            raise ValueError(f"ImagePool state holds {len(images)} images but the pool size is {self.size}")
        self.images = list(images.unbind(0)) if images.numel() else []

    def to(self, device: torch.device) -> ImagePool:
        self.images = [image.to(device) for image in self.images]
        return self


def linear_decay_factor(epoch: int, wait_epochs: int, decay_epochs: int, min_factor: float = 0.0) -> float:
    """LR multiplier for 0-based `epoch`: 1 for the first `wait_epochs` epochs, then linear decay
    over `decay_epochs` epochs, reaching `min_factor` at epoch wait + decay and staying there.

    The reference code's 'linear' policy (1 - max(0, epoch + 1 - n_epochs) / (n_epochs_decay + 1))
    with its floor 0 generalized to `min_factor`."""
    progress = min(max(epoch + 1 - wait_epochs, 0) / (decay_epochs + 1), 1.0)
    return 1.0 - (1.0 - min_factor) * progress
