"""Differentiable augmentation of every image the critic sees (`augment=diffaugment` or `augment=ada`).

The GAN calls its critic only through `GAN.run_critic`, which augments first: real and generated batches in the
critic's loss, generated batches in the generator's loss (the gradient reaches the generator through the
augmentation), the gradient penalty's interpolates and R1's real images (the penalty's gradient is taken with
respect to the un-augmented images). A critic that only ever sees augmented images cannot tell augmented
data from real data, and the augmentations here are invertible in distribution, so they do not leak into the
generated images (Zhao et al. 2020, sec. 3; Karras et al. 2020, sec. 2). Images are (N, C, H, W) in [-1, 1];
the random draws use torch's global generator (saved and restored with every checkpoint).
"""

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn import functional as F

from retina_gans.objectives import Objective


class Augment(nn.Module):
    """An augmentation of the critic's input; ADA also watches the critic's real scores and adapts."""

    def attach(self, objective: Objective) -> None:
        """Called once, when the GAN is built."""

    def forward(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def observe(self, objective: Objective, real_scores: Tensor, fake_scores: Tensor) -> dict[str, Tensor]:
        """Called with each critic step's (detached) scores; returns values to log as train/<name>."""
        return {}

    def after_critic_step(self, critic_step: int) -> None:
        """Called after every critic optimizer step (1-based count)."""


# ---- DiffAugment (Zhao et al. 2020): every transform on every image, fresh parameters per image -------------------
def brightness(x: Tensor) -> Tensor:
    """Adds U(-0.5, 0.5) per image."""
    return x + (torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device) - 0.5)


def saturation(x: Tensor) -> Tensor:
    """Scales each pixel's distance from its grey level by U(0, 2) per image (RGB only)."""
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device) * 2) + mean


def contrast(x: Tensor) -> Tensor:
    """Scales the distance from the image's mean by U(0.5, 1.5) per image."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device) + 0.5) + mean


def translation(x: Tensor, ratio: float) -> Tensor:
    """Shifts each image by whole pixels, up to ratio x its size each way, filling with zeros (mid grey)."""
    n, _, h, w = x.shape
    max_y, max_x = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-max_y, max_y + 1, (n, 1), device=x.device)
    dx = torch.randint(-max_x, max_x + 1, (n, 1), device=x.device)
    rows = (torch.arange(h, device=x.device) + dy + 1).clamp(0, h + 1)  # (N, H) rows of the padded image
    cols = (torch.arange(w, device=x.device) + dx + 1).clamp(0, w + 1)  # (N, W)
    padded = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1)  # (N, H + 2, W + 2, C)
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    return padded[batch, rows.view(n, h, 1), cols.view(n, 1, w)].permute(0, 3, 1, 2)


def cutout(x: Tensor, ratio: float) -> Tensor:
    """Zeroes one square of ratio x the image's size per image, centred anywhere (clipped at the borders)."""
    n, _, h, w = x.shape
    size_y, size_x = int(h * ratio + 0.5), int(w * ratio + 0.5)
    top = torch.randint(0, h + (1 - size_y % 2), (n, 1, 1), device=x.device) - size_y // 2
    left = torch.randint(0, w + (1 - size_x % 2), (n, 1, 1), device=x.device) - size_x // 2
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (rows >= top) & (rows < top + size_y) & (cols >= left) & (cols < left + size_x)  # (N, H, W)
    return x * (~inside).unsqueeze(1).to(x.dtype)


DIFFAUGMENT_POLICIES = ("color", "translation", "cutout")


class DiffAugment(Augment):
    """DiffAugment (Zhao et al. 2020): `color` (brightness, saturation in RGB only, contrast), `translation`
    (up to 1/8 of the image) and `cutout` (a square of half the image), in the policy's order, every image."""

    def __init__(self, policy: list[str], translation: float, cutout: float) -> None:
        super().__init__()
        if not policy or any(p not in DIFFAUGMENT_POLICIES for p in policy):
            raise ValueError(f"model.augment.policy must be a non-empty list drawn from {list(DIFFAUGMENT_POLICIES)}, "
                             f"got {policy!r}")
        self.policy, self.translation, self.cutout = list(policy), translation, cutout

    def forward(self, images: Tensor) -> Tensor:
        x = images
        for name in self.policy:
            if name == "color":
                x = brightness(x)
                x = saturation(x) if x.shape[1] == 3 else x
                x = contrast(x)
            elif name == "translation":
                x = translation(x, self.translation)
            else:
                x = cutout(x, self.cutout)
        return x


# ---- ADA (Karras et al. 2020): each transform applied with probability p, p adapted to the critic's overfitting ----
def _reflect(index: Tensor, size: int) -> Tensor:
    """Indices up to size - 1 outside [0, size) mirrored back in (reflection without repeating the edge)."""
    return (size - 1) - ((size - 1) - index.abs()).abs()


class ADA(Augment):
    """Adaptive discriminator augmentation (Karras et al. 2020): x-flip, rotation by 90 degrees, integer translation
    (up to 1/8, reflected), isotropic scaling (log2-normal, sd 0.2, bilinear, reflected), brightness (+N(0, 0.2))
    and contrast (x 2^N(0, 0.5)), each applied to each image with probability p (stylegan2-ada's `bgc` pipeline
    without its arbitrary rotations, anisotropic and fractional transforms and hue/saturation/luma flips).

    p is adjusted every `interval` critic steps: r = E[objective.overfitting_signs(real, fake)] over the real
    images of those steps (all ranks: the sums are all-reduced), then p += sign(r - target) * images / adjust_images,
    clamped to [0, 1] (so p can go from 0 to 1 in `adjust_images` real images). The signal is the objective's:
    each objective says what "the critic is too sure about the real images" means for its scores
    (`retina_gans.objectives`). `target: null` keeps p fixed (no adaptation). p is a buffer (in checkpoints);
    it and r are logged as `ada_p` and `ada_signal` (r of the last adjustment, 0 before the first).
    """

    def __init__(self, p: float, target: float | None, interval: int, adjust_images: float) -> None:
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"model.augment.p must be in [0, 1], got {p!r}")
        if target is not None and not -1 < target < 1:
            raise ValueError(f"model.augment.target must be null or in (-1, 1), got {target!r}")
        if not (isinstance(interval, int) and interval >= 1):
            raise ValueError(f"model.augment.interval must be an integer >= 1, got {interval!r}")
        if not adjust_images > 0:
            raise ValueError(f"model.augment.adjust_images must be > 0, got {adjust_images!r}")
        self.target, self.interval, self.adjust_images = target, interval, float(adjust_images)
        self.register_buffer("p", torch.tensor(float(p)))
        # Not buffers: DDP broadcasts rank 0's buffers at every forward, which would overwrite each rank's own sums.
        self.sums = torch.zeros(2)  # [sum of signs, real images] since the last adjustment
        self.signal = torch.zeros(())

    def attach(self, objective: Objective) -> None:
        if self.target is not None and type(objective).overfitting_signs is Objective.overfitting_signs:
            raise ValueError(f"augment=ada adapts p to the objective's overfitting signal; {type(objective).__name__} "
                             "declares none (define overfitting_signs, or set model.augment.target=null for a fixed p)")

    def forward(self, images: Tensor) -> Tensor:
        x = images
        n, c, h, w = x.shape
        device = x.device

        def applied() -> Tensor:  # (N,) bool: which images this transform touches
            return torch.rand(n, device=device) < self.p

        # The pixel moves (flip, rotation, translation) as one gather: out[i, j] = x[source(i, j)]
        i = torch.arange(h, device=device).view(1, h, 1).expand(n, h, w)
        j = torch.arange(w, device=device).view(1, 1, w).expand(n, h, w)
        shift = (torch.rand(n, 2, 1, 1, device=device) * 2 - 1) * 0.125 * applied().view(n, 1, 1, 1)  # of the size
        i = _reflect(i - torch.round(shift[:, 0] * h).long(), h)
        j = _reflect(j - torch.round(shift[:, 1] * w).long(), w)
        if h == w:
            k = (torch.randint(0, 4, (n,), device=device) * applied()).view(n, 1, 1)  # quarter turns
            i, j = (torch.where(k == 1, j, torch.where(k == 2, h - 1 - i, torch.where(k == 3, h - 1 - j, i))),
                    torch.where(k == 1, w - 1 - i, torch.where(k == 2, w - 1 - j, torch.where(k == 3, i, j))))
        flip = (applied() & (torch.rand(n, device=device) < 0.5)).view(n, 1, 1)
        j = torch.where(flip, w - 1 - j, j)
        source = (i * w + j).view(n, 1, h * w).expand(n, c, h * w)
        x = x.flatten(2).gather(2, source).view(n, c, h, w)

        # Isotropic scaling about the centre; identity for the images it does not touch.
        scale = torch.exp2(torch.randn(n, device=device) * 0.2 * applied())
        theta = torch.zeros(n, 2, 3, device=device, dtype=x.dtype)
        theta[:, 0, 0] = theta[:, 1, 1] = 1 / scale
        grid = F.affine_grid(theta, [n, c, h, w], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

        # Colour, in [-1, 1] units: brightness added, contrast about mid grey.
        x = x + (torch.randn(n, 1, 1, 1, device=device) * 0.2 * applied().view(n, 1, 1, 1)).to(x.dtype)
        return x * torch.exp2(torch.randn(n, 1, 1, 1, device=device) * 0.5 * applied().view(n, 1, 1, 1)).to(x.dtype)

    def observe(self, objective: Objective, real_scores: Tensor, fake_scores: Tensor) -> dict[str, Tensor]:
        signs = objective.overfitting_signs(real_scores.flatten(), fake_scores.flatten()).float()  # (N,) in [-1, 1]
        if self.sums.device != signs.device:
            self.sums, self.signal = self.sums.to(signs.device), self.signal.to(signs.device)
        self.sums = self.sums + torch.stack((signs.sum(), signs.new_full((), float(signs.numel()))))
        return {"ada_p": self.p.detach(), "ada_signal": self.signal}

    def after_critic_step(self, critic_step: int) -> None:
        if self.target is None or critic_step % self.interval:
            return
        sums, self.sums = self.sums, torch.zeros_like(self.sums)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)  # every rank's signs: the same r and p everywhere
        self.signal = sums[0] / sums[1].clamp(min=1)
        adjust = torch.sign(self.signal - self.target) * sums[1] / self.adjust_images
        self.p.copy_((self.p + adjust).clamp(0, 1))  # on the device: no sync

    def get_extra_state(self) -> dict[str, Tensor]:
        return {"sums": self.sums, "signal": self.signal}

    def set_extra_state(self, state: dict[str, Tensor]) -> None:
        self.sums, self.signal = state["sums"].clone(), state["signal"].clone()
