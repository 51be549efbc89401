"""DCGAN-style generator and critic (Radford et al. 2016), sized from the image size, channels and width.

Both nets work on a ladder of resolutions: the image size is halved until it is at most 7
(28 -> 14 -> 7, 64 -> 32 -> 16 -> 8 -> 4), and each rung doubles the channel count going down.
"""

from torch import Tensor, nn


def resolution_ladder(image_size: int) -> list[int]:
    """Spatial sizes from the image down to the smallest rung, e.g. 28 -> [28, 14, 7]."""
    if image_size < 8 or image_size % 2:
        raise ValueError(f"image size {image_size} must be even and at least 8 (MedMNIST sizes: 28, 64, 128, 224)")
    sizes = [image_size]
    while sizes[-1] > 7:
        if sizes[-1] % 2:
            raise ValueError(f"image size {image_size} cannot be halved down to 7 or less")
        sizes.append(sizes[-1] // 2)
    return sizes


class Generator(nn.Module):
    """z (N, latent_dim) -> images (N, channels, image_size, image_size) in [-1, 1] (tanh)."""

    def __init__(self, latent_dim: int, image_size: int, channels: int, width: int, batch_norm: bool) -> None:
        super().__init__()
        sizes = resolution_ladder(image_size)
        rungs = len(sizes) - 1
        self.latent_dim = latent_dim
        self.start_shape = (width * 2 ** (rungs - 1), sizes[-1], sizes[-1])
        self.project = nn.Sequential(
            nn.Linear(latent_dim, self.start_shape[0] * sizes[-1] ** 2, bias=not batch_norm),
            nn.Unflatten(1, self.start_shape),
            nn.BatchNorm2d(self.start_shape[0]) if batch_norm else nn.Identity(),
            nn.ReLU(inplace=True),
        )
        layers: list[nn.Module] = []
        for rung in range(rungs - 1, 0, -1):  # widths 2^(rungs-1)*w ... 2w -> w
            c_in, c_out = width * 2**rung, width * 2 ** (rung - 1)
            layers += [
                nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=not batch_norm),
                nn.BatchNorm2d(c_out) if batch_norm else nn.Identity(),
                nn.ReLU(inplace=True),
            ]
        layers += [nn.ConvTranspose2d(width, channels, 4, stride=2, padding=1), nn.Tanh()]
        self.upsample = nn.Sequential(*layers)
        _init_dcgan(self)

    def forward(self, z: Tensor) -> Tensor:
        return self.upsample(self.project(z))


class Critic(nn.Module):
    """images (N, channels, image_size, image_size) -> unbounded scores (N,).

    Called `critic` for every variant (it is the LS-GAN discriminator too): the loss, not the
    network, decides how its scores are read. No sigmoid: LS-GAN regresses scores onto 0/1 targets.
    """

    def __init__(self, image_size: int, channels: int, width: int, batch_norm: bool) -> None:
        super().__init__()
        sizes = resolution_ladder(image_size)
        rungs = len(sizes) - 1
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        for rung in range(1, rungs):
            c_in, c_out = width * 2 ** (rung - 1), width * 2**rung
            layers += [
                nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=not batch_norm),
                nn.BatchNorm2d(c_out) if batch_norm else nn.Identity(),
                nn.LeakyReLU(0.2, inplace=True),
            ]
        layers += [nn.Flatten(), nn.Linear(width * 2 ** (rungs - 1) * sizes[-1] ** 2, 1)]
        self.score = nn.Sequential(*layers)
        _init_dcgan(self)

    def forward(self, images: Tensor) -> Tensor:
        return self.score(images).squeeze(1)


def _init_dcgan(module: nn.Module) -> None:
    """DCGAN initialisation: conv/linear weights ~ N(0, 0.02), BatchNorm scale ~ N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def has_batch_norm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())

