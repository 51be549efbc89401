"""Damage of known size applied to real images, for validating metrics (Heusel et al. 2017's set and more).

Each damage maps uint8 images (N, C, H, W) to uint8 images of the same shape at a given strength; strength
0 (or the identity) returns the input. Randomness comes from an explicit `torch.Generator`, so the damaged
sets are the same on every run. Set-level damages (collapse, dropping grades, copying) take the labels or
the training split as well.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from retina_gans.pixels import to_model_range, to_uint8


def gaussian_noise(images: Tensor, sigma: float, generator: torch.Generator) -> Tensor:
    """Additive Gaussian noise of standard deviation `sigma` in [-1, 1] units (0.1 is about 13 grey levels)."""
    x = to_model_range(images)
    return to_uint8(x + sigma * torch.randn(x.shape, generator=generator))


def gaussian_blur(images: Tensor, sigma: float, generator: torch.Generator | None = None) -> Tensor:
    """Separable Gaussian blur of standard deviation `sigma` pixels (kernel radius 3 sigma, reflect padding)."""
    if sigma <= 0:
        return images
    radius = max(1, math.ceil(3 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(taps**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    x = to_model_range(images)
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = F.conv2d(x, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return to_uint8(x)


def salt_and_pepper(images: Tensor, fraction: float, generator: torch.Generator) -> Tensor:
    """A `fraction` of the pixels (all channels of a pixel together) set to black or white, half each."""
    n, _, h, w = images.shape
    hit = torch.rand(n, 1, h, w, generator=generator) < fraction
    white = torch.rand(n, 1, h, w, generator=generator) < 0.5
    value = torch.where(white, 255, 0).to(torch.uint8).expand_as(images)
    return torch.where(hit.expand_as(images), value, images)


def black_rectangles(images: Tensor, count: float, generator: torch.Generator, size: int = 5) -> Tensor:
    """`count` black size x size squares per image at uniform random positions (they may overlap)."""
    out = images.clone()
    n, _, h, w = images.shape
    for _ in range(int(count)):
        ys = torch.randint(0, h - size + 1, (n,), generator=generator)
        xs = torch.randint(0, w - size + 1, (n,), generator=generator)
        for i in range(n):
            out[i, :, ys[i] : ys[i] + size, xs[i] : xs[i] + size] = 0
    return out


def fundus_rectangles(images: Tensor, count: float, generator: torch.Generator, train: Tensor, size: int = 5) -> Tensor:
    """`count` black size x size squares per image, each wholly on the fundus: where the train split's mean image
    exceeds half its maximum (468 of 784 pixels at 28x28; 287 of the 576 positions of a 5x5 square lie inside it).
    Not in the validity check (its rectangles are uniform, as Heusel et al.'s); for docs/embedding_experiments.md."""
    mean = train.float().mean((0, 1))
    inside = (mean > mean.max() / 2).float()[None, None]
    positions = (F.avg_pool2d(inside, size, stride=1)[0, 0] > 0.999).nonzero()  # squares wholly inside
    out = images.clone()
    for _ in range(int(count)):
        picks = positions[torch.randint(0, len(positions), (len(images),), generator=generator)]
        for i, (y, x) in enumerate(picks.tolist()):
            out[i, :, y : y + size, x : x + size] = 0
    return out


def swirl(images: Tensor, strength: float, generator: torch.Generator | None = None) -> Tensor:
    """A swirl about the image centre with scikit-image's `swirl` mapping (its `radius` = the image side: the twist
    decays to 1/1000 at that distance), as Heusel et al. 2017 used it.

    Pixels are moved, not interpolated (nearest-neighbour sampling): at 28x28, bilinear resampling of the sub-pixel
    shifts far from the centre blurs the whole image by about half a pixel at every strength, so the damage measured
    blur more than swirl (the main FID rose 3.9x at strength 0.5 and fell to 2.5x at strength 4); blur has its own
    row."""
    if strength == 0:
        return images
    n, c, h, w = images.shape
    decay = min(h, w) / 5 * math.log(2)  # scikit-image's radius / 5 * ln 2
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    cy, cx = (h - 1) / 2, (w - 1) / 2
    rho = torch.hypot(ys - cy, xs - cx)
    theta = torch.atan2(ys - cy, xs - cx) + strength * torch.exp(-rho / decay)
    src_x, src_y = cx + rho * torch.cos(theta), cy + rho * torch.sin(theta)  # where each output pixel samples
    grid = torch.stack([src_x / (w - 1) * 2 - 1, src_y / (h - 1) * 2 - 1], dim=-1)  # (H, W, 2) in [-1, 1]
    x = F.grid_sample(to_model_range(images), grid.expand(n, h, w, 2), mode="nearest",
                      padding_mode="reflection", align_corners=True)
    return to_uint8(x)


def checkerboard(images: Tensor, amplitude: float, generator: torch.Generator | None = None, period: int = 2) -> Tensor:
    """A checkerboard of +-`amplitude` grey levels with cells of period/2 pixels: a transposed-convolution
    artefact (Odena et al. 2016)."""
    _, _, h, w = images.shape
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    sign = ((ys // (period // 2) + xs // (period // 2)) % 2) * 2 - 1  # (H, W) of +-1
    return (images.float() + amplitude * sign).round().clamp(0, 255).to(torch.uint8)


def mode_collapse(images: Tensor, k: float, generator: torch.Generator) -> Tensor:
    """The set replaced by `k` distinct images of it, each repeated (N stays the same)."""
    k = int(k)
    if k >= len(images):
        return images
    chosen = torch.randperm(len(images), generator=generator)[:k]
    return images[chosen[torch.arange(len(images)) % k]]


def drop_grades(images: Tensor, grades: float, generator: torch.Generator, labels: Tensor) -> Tensor:
    """The images of the `grades` highest DR grades (4, then 3, ...) replaced by the remaining grades' images, cycled
    in a random order so each is repeated about equally (N stays the same): mode dropping."""
    if int(grades) == 0:
        return images
    kept = images[labels < (int(labels.max()) + 1 - int(grades))]
    order = torch.randperm(len(kept), generator=generator)
    return kept[order[torch.arange(len(images)) % len(kept)]]


def copy_training(images: Tensor, fraction: float, generator: torch.Generator, train: Tensor) -> Tensor:
    """A `fraction` of the images replaced by exact copies of training images: memorization."""
    n = len(images)
    m = round(fraction * n)
    out = images.clone()
    slots = torch.randperm(n, generator=generator)[:m]
    out[slots] = train[torch.randperm(len(train), generator=generator)[:m]]
    return out
