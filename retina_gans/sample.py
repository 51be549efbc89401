"""Write samples of a trained GAN as uint8 arrays in MedMNIST's layout, for any outside tool.

`python -m retina_gans.sample ckpt_path=... n=1000 out=samples.npz` -> `images`: (N, H, W) for
grayscale or (N, H, W, 3) for RGB, uint8, like MedMNIST's `*_images` arrays.
"""

import logging
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.utils import to_absolute_path
from omegaconf import DictConfig
from torch import Tensor

from retina_gans.models import GAN

log = logging.getLogger(__name__)


def generate_samples(gan: GAN, n: int, noise_seed: int, batch_size: int) -> Tensor:
    """n samples from a fixed noise seed, as uint8 (n, C, H, W)."""
    noise = torch.randn(n, gan.latent_dim, generator=torch.Generator().manual_seed(noise_seed))
    return torch.cat([gan.generate(chunk).cpu() for chunk in noise.split(batch_size)])


def medmnist_layout(images: Tensor) -> np.ndarray:
    """uint8 (N, C, H, W) -> (N, H, W) when C == 1, else (N, H, W, C): MedMNIST's array layout."""
    array = images.permute(0, 2, 3, 1).numpy()
    return array[..., 0] if array.shape[-1] == 1 else array


def write_samples(ckpt_path: str, n: int, out: str, noise_seed: int, batch_size: int) -> Path:
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    gan = GAN.from_checkpoint(ckpt_path)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, images=medmnist_layout(generate_samples(gan, n, noise_seed, batch_size)))
    return path


@hydra.main(version_base="1.3", config_path="../conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    path = write_samples(to_absolute_path(cfg.ckpt_path), cfg.n, to_absolute_path(cfg.out), cfg.noise_seed, cfg.batch_size)
    log.info("wrote %d samples to %s", cfg.n, path)


if __name__ == "__main__":
    main()
