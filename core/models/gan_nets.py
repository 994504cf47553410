"""Networks of the noise-to-image GAN family (`core/models/wgan_gp.py`).

Generators map a latent vector z, (B, latent_dim), to images (B, 3, S, S) in [-1, 1]; S is a power of
two (32 to 256 px in practice). Critics map images to scores: one per image (`DCGANCritic`) or one per
patch (`core.models.blocks.PatchDiscriminator`).

- `UNetGenerator`: seed 001's encoder-decoder (blocks of two convolutions with pooling, mirrored by
  up-convolutions with two convolutions, skip connections, LeakyReLU), fed from noise as described in
  its docstring.
- `ResNetGenerator`: seed 002's generator: a dense layer to a 4x4 feature map, then residual
  up-sampling blocks with skip connections, each doubling the resolution; batch norm, LeakyReLU, tanh.
- `DCGANCritic`: stride-2 4x4 convolutions from S down to 4x4, then one 4x4 convolution to a score.

Normalization is a choice (the critic's: `norm_layer`): a WGAN-GP critic must not use batch norm,
because batch norm makes each sample's score depend on the rest of the batch, and the gradient
penalty constrains the gradient of each sample's score with respect to that sample alone.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from core.models import blocks

NORMS = (*blocks.NORMS, "layer")   # the critic's; the generators take blocks.NORMS
LEAKY_SLOPE = 0.2  # LeakyReLU negative slope (DCGAN, both seeds)


def norm_layer(kind: str, channels: int) -> nn.Module:
    """For the critic: `core.models.blocks.norm_layer` (instance | batch | none) plus `layer`, a
    GroupNorm with one group, which normalizes each sample over (C, H, W): layer norm for
    convolutional features (the WGAN-GP paper's replacement for batch norm in the critic)."""
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    return blocks.norm_layer(kind, channels)


def apply_spectral_norm(module: nn.Module) -> nn.Module:
    """Spectral-normalize every convolution and dense layer inside `module` (in place)."""
    for layer in list(module.modules()):
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            spectral_norm(layer)
    return module


def doublings(image_size: int, base: int, what: str) -> int:
    """How many times `base` px must double to reach `image_size` px (which must be base * 2^k, k >= 1)."""
    k = math.log2(image_size / base) if image_size > base > 0 else 0.5
    if not k.is_integer():
        raise ValueError(f"{what} needs data.image_size = {base} px x a power of two >= 2 (e.g. 32, 64, 128, "
                         f"256 px), got {image_size} px. Change data.image_size.")
    return int(k)


def double_conv(c_in: int, c_out: int, norm: str) -> nn.Sequential:
    """Two 3x3 convolutions, each followed by normalization (instance | batch | none) and LeakyReLU;
    keeps H and W (blocks.py's `double_conv` block with act: leaky_relu)."""
    return nn.Sequential(blocks.conv_norm_act(c_in, c_out, 3, norm=norm, act="leaky_relu"),
                         blocks.conv_norm_act(c_out, c_out, 3, norm=norm, act="leaky_relu"))


class UNetGenerator(nn.Module):
    """Seed 001's U-Net generator, fed from a latent vector.

    How noise enters: seed 001 fed its U-Net an image of static. Here z goes through a dense layer to a
    small canvas (ngf, b, b), b = `bottleneck` px, which is bilinearly up-sampled to (ngf, S, S) and
    given to the U-Net as its input image. The dense layer lets every latent coordinate shape the
    whole canvas, and `generate()` only has to draw a vector, as for the ResNet generator.

    depth = log2(S / b) levels. Encoder level i = 0 .. depth-1: double_conv to c_i = ngf * 2^i (capped
    at 8 * ngf) channels at S/2^i px, kept for the skip connection, then 2x2 max pooling. Bottleneck:
    double_conv at b px. Decoder level i = depth-1 .. 0: a 2x2 stride-2 up-convolution to c_i channels,
    concatenation with the encoder's level-i features, double_conv. Output: a 1x1 convolution to RGB
    and tanh. Giving the bottleneck in px (not the depth) lets one config serve every image size.
    """

    def __init__(self, latent_dim: int, image_size: int, ngf: int, bottleneck: int, norm: str,
                 spectral_norm_ends: bool):
        super().__init__()
        depth = doublings(image_size, bottleneck, f"The unet generator with model.unet_bottleneck={bottleneck}")
        self.canvas_size = bottleneck
        self.ngf = ngf
        widths = [ngf * min(2 ** i, 8) for i in range(depth + 1)]  # c_0 .. c_depth
        inputs = [ngf, *widths[:depth]]                             # channels entering level i

        self.dense = nn.Linear(latent_dim, ngf * bottleneck ** 2)
        self.upsample = nn.Upsample(size=(image_size, image_size), mode="bilinear", align_corners=False)
        self.encoder = nn.ModuleList(double_conv(inputs[i], widths[i], norm) for i in range(depth))
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = double_conv(inputs[depth], widths[depth], norm)
        self.up_convs = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2)
                                      for i in reversed(range(depth)))
        self.decoder = nn.ModuleList(double_conv(2 * widths[i], widths[i], norm) for i in reversed(range(depth)))
        self.to_rgb = nn.Conv2d(widths[0], 3, 1)
        if spectral_norm_ends:
            spectral_norm(self.dense)
            spectral_norm(self.to_rgb)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.dense(z).view(-1, self.ngf, self.canvas_size, self.canvas_size)  # (B, ngf, b, b)
        x = self.upsample(x)                                                    # (B, ngf, S, S)
        skips = []
        for block in self.encoder:
            x = block(x)                     # (B, c_i, S/2^i, S/2^i)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)               # (B, c_depth, b, b)
        for up, block, skip in zip(self.up_convs, self.decoder, reversed(skips)):
            x = block(torch.cat([up(x), skip], dim=1))
        return torch.tanh(self.to_rgb(x))    # (B, 3, S, S)


class UpResBlock(nn.Module):
    """Residual block that doubles H and W: norm, LeakyReLU, 2x nearest up-sampling, 3x3 conv, norm,
    LeakyReLU, 3x3 conv; the skip connection is the up-sampled input through a 1x1 conv (to c_out)."""

    def __init__(self, c_in: int, c_out: int, norm: str):
        super().__init__()
        self.main = nn.Sequential(
            blocks.norm_layer(norm, c_in), nn.LeakyReLU(LEAKY_SLOPE), nn.Upsample(scale_factor=2),
            nn.Conv2d(c_in, c_out, 3, padding=1), blocks.norm_layer(norm, c_out), nn.LeakyReLU(LEAKY_SLOPE),
            nn.Conv2d(c_out, c_out, 3, padding=1),
        )
        self.skip = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(c_in, c_out, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + self.skip(x)   # (B, c_out, 2H, 2W)


class ResNetGenerator(nn.Module):
    """Seed 002's generator: z -> dense -> (c_0, 4, 4) -> k = log2(S/4) UpResBlocks -> norm, LeakyReLU,
    3x3 conv to RGB, tanh. After block i (1..k) there are ngf * min(2^(k-i), 8) channels, so the last
    block has ngf and the 4x4 map has ngf * min(2^k, 8) (seed 002 at 256 px: 512 = 8 * 64)."""

    def __init__(self, latent_dim: int, image_size: int, ngf: int, norm: str, spectral_norm_ends: bool):
        super().__init__()
        k = doublings(image_size, 4, "The resnet generator")
        widths = [ngf * min(2 ** (k - i), 8) for i in range(k + 1)]  # c_0 (4x4) .. c_k (S x S)
        self.dense = nn.Linear(latent_dim, widths[0] * 16)
        self.blocks = nn.Sequential(*(UpResBlock(c_in, c_out, norm) for c_in, c_out in zip(widths, widths[1:])))
        self.to_rgb = nn.Sequential(blocks.norm_layer(norm, widths[-1]), nn.LeakyReLU(LEAKY_SLOPE),
                                    nn.Conv2d(widths[-1], 3, 3, padding=1))
        if spectral_norm_ends:
            spectral_norm(self.dense)
            spectral_norm(self.to_rgb[-1])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.dense(z).view(z.shape[0], -1, 4, 4)   # (B, c_0, 4, 4)
        x = self.blocks(x)                             # (B, ngf, S, S)
        return torch.tanh(self.to_rgb(x))              # (B, 3, S, S)


class DCGANCritic(nn.Module):
    """DCGAN-style critic: a 4x4 stride-2 conv (no norm, as in DCGAN) from S px to S/2, more 4x4 stride-2
    convs with norm and LeakyReLU down to 4x4 px (channels ndf * 2^i, capped at 8 * ndf), then a 4x4
    convolution without padding to one score per image. Returns (B,): raw scores (logits)."""

    def __init__(self, image_size: int, ndf: int, norm: str):
        super().__init__()
        k = doublings(image_size, 4, "The dcgan critic")
        widths = [ndf * min(2 ** i, 8) for i in range(k)]
        layers: list[nn.Module] = [nn.Conv2d(3, widths[0], 4, stride=2, padding=1), nn.LeakyReLU(LEAKY_SLOPE)]
        for c_in, c_out in zip(widths, widths[1:]):
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), norm_layer(norm, c_out),
                       nn.LeakyReLU(LEAKY_SLOPE)]
        layers.append(nn.Conv2d(widths[-1], 1, 4))  # (B, 1, 1, 1)
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()   # (B,)
