"""CycleGAN (Zhu et al. 2017): unpaired photo -> Monet translation, as in the reference code
junyanz/pytorch-CycleGAN-and-pix2pix (models/cycle_gan_model.py).

Networks: G (photo -> monet) and F (monet -> photo), each a ResNet generator or a LEGO blocks
generator (core/models/blocks.py); D_monet (real Monets vs G(photo)) and D_photo (real photos vs
F(monet)), 70x70 PatchGANs. One iteration = one step of Adam on G and F jointly, then one on both
discriminators, which see fakes drawn from a 50-image history pool.

    loss_G = gan(D_monet(G(photo))) + gan(D_photo(F(monet)))                             (loss_g_gan)
           + lambda_cycle * (|F(G(photo)) - photo|_1 + |G(F(monet)) - monet|_1)          (loss_cycle)
           + lambda_identity * lambda_cycle * (|G(monet) - monet|_1 + |F(photo) - photo|_1)  (loss_identity)
    loss_D = 1/2 (d(D_monet(monet), D_monet(pool(G(photo)))) + d(D_photo(photo), D_photo(pool(F(monet)))))

Scored images: G applied to the held-out test photos, each photo once (building the family refuses a
metrics.num_samples larger than their number: a duplicated image would bias FID, KID, precision and
recall).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch
from torch.nn.functional import l1_loss
from torch.utils.data import DataLoader
from torchvision.utils import make_grid

from core.data import ImageDataset, UnpairedDataset, eval_transform, train_transform
from core.models.base import Family, betas_errors, register_family
from core.models.blocks import (NORMS, BlockSpecError, ImagePool, PatchDiscriminator, BlockGenerator,
                                check_block_spec, init_weights, linear_decay_factor, patch_output_size,
                                resnet_spec)
from core.metrics import to_uint8
from core.models.losses import GAN_LOSSES, get_loss

GENERATORS = ("resnet", "blocks")


@dataclass
class Config:
    generator: str = "resnet"            # resnet (the paper's) | blocks (LEGO list in `blocks`)
    blocks: list[dict] | None = None     # generator == blocks: block dicts, see core/models/blocks.py
    ngf: int = 64                        # resnet: generator channels after the first conv
    ndf: int = 64                        # discriminator channels after the first conv
    n_res_blocks: int | None = None      # resnet: residual blocks; None = 9 at image_size >= 256, else 6
    n_layers_d: int = 3                  # PatchGAN stride-2 layers (3 = 70x70 patches)
    norm_g: str = "instance"             # generators' normalization: instance | batch | none
    norm_d: str = "instance"             # discriminators' normalization: instance | batch | none
    loss: str = "lsgan"                  # lsgan | bce | hinge | wgan (core/models/losses.py)
    lambda_cycle: float = 10.0           # weight of each cycle-consistency L1 term
    lambda_identity: float = 0.5         # identity L1 weight, RELATIVE to lambda_cycle (reference code):
                                         #   the identity terms are weighted lambda_identity * lambda_cycle
    pool_size: int = 50                  # fake images kept for the discriminators; 0 = no pool
    lr_g: float = 2e-4                   # Adam learning rate of G and F (before the schedule)
    lr_d: float = 2e-4                   # Adam learning rate of both discriminators
    betas_g: list[float] = field(default_factory=lambda: [0.5, 0.999])   # Adam betas of G and F
    betas_d: list[float] = field(default_factory=lambda: [0.5, 0.999])   # Adam betas of both discriminators
    wait_epochs: int = 100               # epochs at the full learning rate ...
    decay_epochs: int = 100              # ... then epochs of linear decay to min_lr, held afterwards.
                                         #   Evaluated at the epoch index, independent of train.epochs
    min_lr: float = 0.0                  # learning rate at the end of the decay (both optimizers)
    init_gain: float = 0.02              # std of the normal weight init

    def validate(self) -> list[str]:
        errors = []
        if self.generator not in GENERATORS:
            errors.append(f"model.generator must be one of {', '.join(GENERATORS)}, got {self.generator!r}")
        elif self.generator == "blocks":
            if not self.blocks:
                errors.append("model.generator is 'blocks' but model.blocks is empty: give a list of block "
                              "dicts, e.g. [{type: conv, out: 64, kernel: 7, pad: reflect}, ...] "
                              "(format: core/models/blocks.py)")
            else:
                try:
                    check_block_spec(self.blocks)
                except BlockSpecError as e:
                    errors.append(f"model.blocks: {e}")
        elif self.blocks is not None:
            errors.append("model.blocks is set but model.generator is 'resnet'; set model.generator: blocks "
                          "to use them, or remove model.blocks")
        for name in ("norm_g", "norm_d"):
            if getattr(self, name) not in NORMS:
                errors.append(f"model.{name} must be one of {', '.join(NORMS)}, got {getattr(self, name)!r}")
        if self.loss not in GAN_LOSSES:
            errors.append(f"model.loss must be one of {', '.join(GAN_LOSSES)}, got {self.loss!r}")
        for name in ("ngf", "ndf", "n_layers_d"):
            if getattr(self, name) < 1:
                errors.append(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_res_blocks is not None and self.n_res_blocks < 0:
            errors.append(f"model.n_res_blocks must be >= 0 or null (9 at >= 256 px, else 6), got {self.n_res_blocks}")
        for name in ("lambda_cycle", "lambda_identity", "min_lr", "pool_size", "wait_epochs", "decay_epochs"):
            if getattr(self, name) < 0:
                errors.append(f"model.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("lr_g", "lr_d", "init_gain"):
            if not getattr(self, name) > 0:
                errors.append(f"model.{name} must be > 0, got {getattr(self, name)}")
        if self.min_lr > min(self.lr_g, self.lr_d):
            errors.append(f"model.min_lr ({self.min_lr}) must be <= lr_g ({self.lr_g}) and lr_d ({self.lr_d}): "
                          f"the schedule decays towards it")
        errors += betas_errors("betas_g", self.betas_g) + betas_errors("betas_d", self.betas_d)
        return errors

    def res_blocks(self, image_size: int) -> int:
        """The paper's rule: 9 residual blocks for 256 px and above, 6 below (128 px)."""
        if self.n_res_blocks is not None:
            return self.n_res_blocks
        return 9 if image_size >= 256 else 6


@register_family("cyclegan")
class CycleGAN(Family):
    Config = Config
    network_names = ("G", "F", "D_monet", "D_photo")
    optimizer_keys = {"opt_g": ("lr_g", "betas_g"), "opt_d": ("lr_d", "betas_d")}
    architecture_keys = ("generator", "blocks", "ngf", "ndf", "n_res_blocks", "n_layers_d", "norm_g", "norm_d",
                         "pool_size", "init_gain")
    translates_photos = True
    tiny = {"ngf": 4, "ndf": 4, "n_res_blocks": 1, "pool_size": 2,
            "wait_epochs": 1, "decay_epochs": 2}   # the LR decay starts at epoch 1

    def build(self) -> None:
        m, size = self.cfg.model, self.cfg.data.image_size

        # Networks. Both generators share one architecture; the trainable has seeded the global RNG.
        spec = m.blocks if m.generator == "blocks" else resnet_spec(m.ngf, m.res_blocks(size))
        self.G = BlockGenerator(spec, m.norm_g)   # photo -> monet
        self.F = BlockGenerator(spec, m.norm_g)   # monet -> photo
        if size % self.G.min_scale.denominator:
            raise ValueError(f"data.image_size {size} must be divisible by {self.G.min_scale.denominator}: "
                             f"the generator downsamples to {self.G.min_scale} of the input")
        if patch_output_size(size, m.n_layers_d) < 1:
            raise ValueError(f"data.image_size {size} is too small for a PatchGAN with model.n_layers_d="
                             f"{m.n_layers_d}; lower n_layers_d or raise image_size")
        self.D_monet = PatchDiscriminator(3, m.ndf, m.n_layers_d, m.norm_d)
        self.D_photo = PatchDiscriminator(3, m.ndf, m.n_layers_d, m.norm_d)
        for net in self.modules().values():
            init_weights(net, m.init_gain).to(self.device)

        # Optimizers: one for both generators, one for both discriminators (reference code).
        self.opt_g = torch.optim.Adam(itertools.chain(self.G.parameters(), self.F.parameters()))
        self.opt_d = torch.optim.Adam(itertools.chain(self.D_monet.parameters(), self.D_photo.parameters()))

        # History of fakes shown to each discriminator.
        self.pool_monet = ImagePool(m.pool_size)   # G(photo)
        self.pool_photo = ImagePool(m.pool_size)   # F(monet)

        # Every scored image is a distinct test photo, translated once: duplicates would shrink the
        # generated covariance and bias FID, KID, precision and recall.
        self.test_photos = ImageDataset(self.data, "test/photo", eval_transform(self.cfg.data))
        self.monets = ImageDataset(self.data, "train/monet", eval_transform(self.cfg.data))   # grids only
        if self.cfg.metrics.num_samples > len(self.test_photos):
            raise ValueError(f"metrics.num_samples ({self.cfg.metrics.num_samples}) exceeds the "
                             f"{len(self.test_photos)} held-out test photos that CycleGAN translates for scoring; "
                             f"lower metrics.num_samples or raise data.test_fraction")

    # --- Training ---------------------------------------------------------------------------

    def make_loader(self, generator: torch.Generator) -> DataLoader:
        photos = ImageDataset(self.data, "train/photo", train_transform(self.cfg.data))
        monets = ImageDataset(self.data, "train/monet", train_transform(self.cfg.data))
        dataset = UnpairedDataset(photos, monets)
        if len(dataset) < self.cfg.train.batch_size:
            raise ValueError(f"train.batch_size ({self.cfg.train.batch_size}) is larger than the "
                             f"{len(dataset)} training pairs, so an epoch has no full batch; lower it")
        return self.data_loader(dataset, batch_size=self.cfg.train.batch_size, shuffle=True, generator=generator,
                                drop_last=True)

    def train_step(self, batch: dict) -> dict[str, float]:
        m = self.cfg.model
        gan = get_loss(m.loss)
        photo = batch["photo"].to(self.device, non_blocking=True)   # (B, 3, H, W) in [-1, 1]
        monet = batch["monet"].to(self.device, non_blocking=True)   # (B, 3, H, W) in [-1, 1]
        discriminators = (self.D_monet, self.D_photo)

        # Generators: fool both discriminators, close both cycles, keep colors (identity).
        # The discriminators get no gradients here (saves their backward, as the reference does).
        for net in discriminators:
            net.requires_grad_(False)
        with self.autocast():
            fake_monet = self.G(photo)                      # (B, 3, H, W)
            fake_photo = self.F(monet)
            loss_g_gan = (gan.g(self.D_monet(fake_monet).float())
                          + gan.g(self.D_photo(fake_photo).float()))
            loss_cycle = m.lambda_cycle * (l1_loss(self.F(fake_monet).float(), photo)
                                           + l1_loss(self.G(fake_photo).float(), monet))
            if m.lambda_identity > 0:
                loss_identity = m.lambda_identity * m.lambda_cycle * (
                    l1_loss(self.G(monet).float(), monet) + l1_loss(self.F(photo).float(), photo))
            else:
                loss_identity = torch.zeros((), device=self.device)
            loss_g = loss_g_gan + loss_cycle + loss_identity
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()

        # Discriminators: real vs. fakes from the history pools; halved to slow D relative to G.
        for net in discriminators:
            net.requires_grad_(True)
        pooled_monet = self.pool_monet.query(fake_monet.float())   # detached
        pooled_photo = self.pool_photo.query(fake_photo.float())
        with self.autocast():
            loss_d = 0.5 * (gan.d(self.D_monet(monet).float(), self.D_monet(pooled_monet).float())
                            + gan.d(self.D_photo(photo).float(), self.D_photo(pooled_photo).float()))
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()

        values = torch.stack([loss_g, loss_g_gan, loss_cycle, loss_identity, loss_d]).detach().tolist()  # one sync
        return dict(zip(("loss_g", "loss_g_gan", "loss_cycle", "loss_identity", "loss_d"), values))

    def lr_factor(self, epoch: int, lr_key: str) -> float:
        """Constant for wait_epochs, then linear decay to min_lr over decay_epochs: a pure function of
        the epoch index and the current config, so nothing drifts on resume and a changed lr applies at once."""
        m = self.cfg.model
        return linear_decay_factor(epoch, m.wait_epochs, m.decay_epochs, m.min_lr / getattr(m, lr_key))

    # --- Evaluation -------------------------------------------------------------------------

    def generate(self, n: int, batch_size: int):
        """G on the first n held-out test photos, each once: n uint8 images."""
        if n > len(self.test_photos):
            raise ValueError(f"{n} images requested but CycleGAN translates each of the {len(self.test_photos)} "
                             f"test photos once; ask for at most {len(self.test_photos)}")
        for start in range(0, n, batch_size):
            photos = torch.stack([self.test_photos[i][0] for i in range(start, min(n, start + batch_size))])
            with self.eval_mode(self.G):
                images = to_uint8(self.G(photos.to(self.device)))   # (b, 3, H, W) uint8, CPU
            yield images   # outside the `with`: the caller runs with its own grad mode meanwhile

    def draw_samples(self, n: int, seed: int, label: int | None, photos: torch.Tensor | None) -> torch.Tensor:
        """G on `photos`, or on n test photos picked by `seed`."""
        if photos is None:
            picks = torch.randperm(len(self.test_photos), generator=torch.Generator().manual_seed(seed))[:n]
            photos = torch.stack([self.test_photos[i][0] for i in picks.tolist()])   # (n, 3, H, W) in [-1, 1]
        with self.eval_mode(self.G):
            return to_uint8(self.G(photos.to(self.device)))

    def image_grids(self) -> dict[str, torch.Tensor]:
        """Rows: input, translation, reconstruction, for image_grid_size test photos / Monets spread
        evenly over the (class-sorted) files, so every scene kind shows up."""
        k = self.cfg.logging.image_grid_size
        grids = {}
        for name, dataset, forward, backward in (("photo_to_monet", self.test_photos, self.G, self.F),
                                                 ("monet_to_photo", self.monets, self.F, self.G)):
            picks = torch.linspace(0, len(dataset) - 1, min(k, len(dataset))).round().long().tolist()
            x = torch.stack([dataset[i][0] for i in picks]).to(self.device)
            with self.eval_mode(forward, backward):
                y = forward(x)
                rows = torch.cat([x, y, backward(y)]).float().cpu()   # (3k, 3, H, W)
            grids[name] = make_grid((rows + 1) / 2, nrow=len(x)).clamp(0, 1)
        return grids

    # --- Checkpointing ----------------------------------------------------------------------

    def extra_state(self) -> dict:
        return {"pool_monet": self.pool_monet.state_dict(), "pool_photo": self.pool_photo.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        self.pool_monet.load_state_dict(state["pool_monet"])
        self.pool_photo.load_state_dict(state["pool_photo"])
        self.pool_monet.to(self.device)
        self.pool_photo.to(self.device)
