"""Generator/critic pairs, sized from the image size, channels and width: DCGAN's (Radford et al. 2016) and a
ResNet pair (the residual blocks of Gulrajani et al. 2017 and Miyato et al. 2018). The `net` config group picks one.

Both pairs work on a ladder of resolutions: the image size is halved until it is at most 7
(28 -> 14 -> 7, 64 -> 32 -> 16 -> 8 -> 4), and each rung doubles the channel count going down.
Generators upsample by transposed convolution or by resize-convolution (`upsample=resize`: nearest-neighbour x2, then
a 3x3 convolution; Odena et al. 2016, no checkerboard artifacts).

Conditional nets (`grades` > 0, set by `model.conditional=true`): the generator concatenates a learned grade embedding
to z; the critic adds a projection term <embed(grade), phi(x)> to its score, phi being the features its last linear
layer reads (Miyato & Koyama 2018). With `grades=0` (the default) the nets are exactly the unconditional ones: no
extra modules, parameters or random draws.
"""

import torch
from torch import Tensor, nn

UPSAMPLING = ("transposed", "resize")


def _upsample(c_in: int, c_out: int, how: str, bias: bool) -> nn.Module:
    """x2 upsampling convolution: (N, c_in, H, W) -> (N, c_out, 2H, 2W)."""
    if how == "transposed":
        return nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=bias)
    if how == "resize":
        return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias))
    raise ValueError(f"model.generator.upsample must be one of {list(UPSAMPLING)}, got {how!r}")


def _grade_embedding(grades: int, dim: int, std: float) -> nn.Embedding | None:
    """A learned vector per grade, ~ N(0, std); None for an unconditional net (`grades` = 0)."""
    if not grades:
        return None
    embedding = nn.Embedding(grades, dim)
    nn.init.normal_(embedding.weight, 0.0, std)
    return embedding


def _with_grades(z: Tensor, embedding: nn.Embedding, grades: Tensor | None) -> Tensor:
    """z (N, latent_dim) -> (N, latent_dim + embedding dim): the grade embedding concatenated to the noise."""
    if grades is None:
        raise ValueError("a conditional generator needs the grade of each sample: generator(z, grades)")
    return torch.cat([z, embedding(grades)], dim=1)


def _projection(embedding: nn.Embedding, features: Tensor, grades: Tensor | None) -> Tensor:
    """The projection discriminator's class term <embed(grade), phi(x)> (Miyato & Koyama 2018, eq. 3): (N,)."""
    if grades is None:
        raise ValueError("a conditional critic needs the grade of each image: critic(images, grades)")
    return (embedding(grades) * features).sum(dim=1)


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

    def __init__(self, latent_dim: int, image_size: int, channels: int, width: int, batch_norm: bool,
                 upsample: str = "transposed", grades: int = 0, grade_embedding_dim: int = 0) -> None:
        # defaults: configs of checkpoints from before the options
        super().__init__()
        sizes = resolution_ladder(image_size)
        rungs = len(sizes) - 1
        self.latent_dim = latent_dim
        self.grades = grades
        self.start_shape = (width * 2 ** (rungs - 1), sizes[-1], sizes[-1])
        self.project = nn.Sequential(
            nn.Linear(latent_dim + (grade_embedding_dim if grades else 0), self.start_shape[0] * sizes[-1] ** 2,
                      bias=not batch_norm),
            nn.Unflatten(1, self.start_shape),
            nn.BatchNorm2d(self.start_shape[0]) if batch_norm else nn.Identity(),
            nn.ReLU(inplace=True),
        )
        layers: list[nn.Module] = []
        for rung in range(rungs - 1, 0, -1):  # widths 2^(rungs-1)*w ... 2w -> w
            c_in, c_out = width * 2**rung, width * 2 ** (rung - 1)
            layers += [
                _upsample(c_in, c_out, upsample, bias=not batch_norm),
                nn.BatchNorm2d(c_out) if batch_norm else nn.Identity(),
                nn.ReLU(inplace=True),
            ]
        layers += [_upsample(width, channels, upsample, bias=True), nn.Tanh()]
        self.upsample = nn.Sequential(*layers)
        _init_dcgan(self)
        self.grade_embedding = _grade_embedding(grades, grade_embedding_dim, 1.0)  # after: the same draws as before

    def forward(self, z: Tensor, grades: Tensor | None = None) -> Tensor:
        """z (N, latent_dim), grades (N,) int64 when conditional -> (N, C, H, W) in [-1, 1]."""
        if self.grades:
            z = _with_grades(z, self.grade_embedding, grades)
        return self.upsample(self.project(z))


class Critic(nn.Module):
    """images (N, channels, image_size, image_size) -> unbounded scores (N,).

    Called `critic` for every variant (it is the LS-GAN discriminator too): the loss, not the
    network, decides how its scores are read. No sigmoid: LS-GAN regresses scores onto 0/1 targets.
    """

    def __init__(self, image_size: int, channels: int, width: int, batch_norm: bool, grades: int = 0) -> None:
        super().__init__()
        self.grades = grades
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
        features = width * 2 ** (rungs - 1) * sizes[-1] ** 2
        layers += [nn.Flatten(), nn.Linear(features, 1)]
        self.score = nn.Sequential(*layers)
        _init_dcgan(self)
        self.projection = _grade_embedding(grades, features, 0.02)  # DCGAN's std, as the linear head beside it

    def forward(self, images: Tensor, grades: Tensor | None = None) -> Tensor:
        """images (N, C, H, W), grades (N,) int64 when conditional -> scores (N,)."""
        if not self.grades:
            return self.score(images).squeeze(1)
        features = self.score[:-1](images)  # (N, D): what the last linear layer reads
        return self.score[-1](features).squeeze(1) + _projection(self.projection, features, grades)


class ResBlockUp(nn.Module):
    """BN-ReLU-up-conv3x3-BN-ReLU-conv3x3, plus an upsampled 1x1-conv shortcut (Gulrajani et al. 2017, app. F)."""

    def __init__(self, c_in: int, c_out: int, batch_norm: bool, upsample: str) -> None:
        super().__init__()
        norm = (lambda c: nn.BatchNorm2d(c)) if batch_norm else (lambda c: nn.Identity())
        self.residual = nn.Sequential(norm(c_in), nn.ReLU(), _upsample(c_in, c_out, upsample, bias=True), norm(c_out),
                                      nn.ReLU(), nn.Conv2d(c_out, c_out, 3, padding=1))
        self.shortcut = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.residual(x) + self.shortcut(x)


class ResBlockDown(nn.Module):
    """(ReLU)-conv3x3-ReLU-conv3x3-avgpool, plus a 1x1-conv-avgpool shortcut; no pre-activation on the image."""

    def __init__(self, c_in: int, c_out: int, batch_norm: bool, first: bool) -> None:
        super().__init__()
        norm = (lambda c: nn.BatchNorm2d(c)) if batch_norm else (lambda c: nn.Identity())
        self.residual = nn.Sequential(nn.Identity() if first else nn.ReLU(), nn.Conv2d(c_in, c_out, 3, padding=1),
                                      norm(c_out), nn.ReLU(), nn.Conv2d(c_out, c_out, 3, padding=1), nn.AvgPool2d(2))
        self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1), nn.AvgPool2d(2))

    def forward(self, x: Tensor) -> Tensor:
        return self.residual(x) + self.shortcut(x)


class ResNetGenerator(nn.Module):
    """z (N, latent_dim) -> images (N, channels, image_size, image_size) in [-1, 1]: a linear projection to the
    smallest rung, one residual up-block per rung (channels halving), BN-ReLU-conv3x3-tanh."""

    def __init__(self, latent_dim: int, image_size: int, channels: int, width: int, batch_norm: bool,
                 upsample: str, grades: int = 0, grade_embedding_dim: int = 0) -> None:
        super().__init__()
        sizes = resolution_ladder(image_size)
        rungs = len(sizes) - 1
        self.grades = grades
        self.start_shape = (width * 2 ** (rungs - 1), sizes[-1], sizes[-1])
        in_features = latent_dim + (grade_embedding_dim if grades else 0)
        self.project = nn.Sequential(nn.Linear(in_features, self.start_shape[0] * sizes[-1] ** 2),
                                     nn.Unflatten(1, self.start_shape))
        widths = [width * 2**rung for rung in range(rungs - 1, -1, -1)] + [width]  # e.g. 2w, w, w for 28x28
        self.blocks = nn.Sequential(*(ResBlockUp(c_in, c_out, batch_norm, upsample)
                                      for c_in, c_out in zip(widths[:-1], widths[1:])))
        self.to_image = nn.Sequential(nn.BatchNorm2d(width) if batch_norm else nn.Identity(), nn.ReLU(),
                                      nn.Conv2d(width, channels, 3, padding=1), nn.Tanh())
        self.grade_embedding = _grade_embedding(grades, grade_embedding_dim, 1.0)

    def forward(self, z: Tensor, grades: Tensor | None = None) -> Tensor:
        if self.grades:
            z = _with_grades(z, self.grade_embedding, grades)
        return self.to_image(self.blocks(self.project(z)))


class ResNetCritic(nn.Module):
    """images (N, channels, image_size, image_size) -> scores (N,): one residual down-block per rung (channels
    doubling), ReLU, sum over space, linear (Miyato et al. 2018, table 4)."""

    def __init__(self, image_size: int, channels: int, width: int, batch_norm: bool, grades: int = 0) -> None:
        super().__init__()
        self.grades = grades
        rungs = len(resolution_ladder(image_size)) - 1
        widths = [channels] + [width * 2**rung for rung in range(rungs)]
        self.blocks = nn.Sequential(*(ResBlockDown(c_in, c_out, batch_norm, first=i == 0)
                                      for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:]))))
        self.score = nn.Linear(widths[-1], 1)
        self.projection = _grade_embedding(grades, widths[-1], 0.02)

    def forward(self, images: Tensor, grades: Tensor | None = None) -> Tensor:
        features = self.blocks(images).relu().sum(dim=(2, 3))  # (N, C)
        scores = self.score(features).squeeze(1)
        return scores + _projection(self.projection, features, grades) if self.grades else scores


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

