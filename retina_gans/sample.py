"""Write samples of a trained GAN as uint8 arrays in MedMNIST's layout, for any outside tool.

`python -m retina_gans.sample ckpt_path=... n=1000 out=samples.npz` -> `images`: (N, H, W) for
grayscale or (N, H, W, 3) for RGB, uint8, like MedMNIST's `*_images` arrays. A conditional checkpoint also writes
`labels` (N, 1) uint8, like MedMNIST's `*_labels`: the grade each image was generated as, chosen by `grades=`
(`[3,4]`: n split evenly over those grades; `balanced`: over all grades; `real`, the default: in the training
split's grade proportions). An existing `out` is kept unless `overwrite=true`; the data folder is never written to.
"""

import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from retina_gans.checkpointing import CheckpointFileError
from retina_gans.models import GAN
from retina_gans.overrides import run_cli

log = logging.getLogger(__name__)


class SampleError(ValueError):
    """A `sample` argument it cannot use; the message names the argument and the fix."""


def generate_samples(gan: GAN, n: int, noise_seed: int, batch_size: int, labels: Tensor | None = None) -> Tensor:
    """n samples from a fixed noise seed, as uint8 (n, C, H, W); of the grades `labels` (n,) for a conditional GAN."""
    noise = torch.randn(n, gan.latent_dim, generator=torch.Generator().manual_seed(noise_seed))
    if labels is None:
        return torch.cat([gan.generate(chunk).cpu() for chunk in noise.split(batch_size)])
    return torch.cat([gan.generate(z, g).cpu() for z, g in zip(noise.split(batch_size), labels.split(batch_size))])


GRADES_HELP = "grades=[3,4] (n split evenly over those grades), grades=balanced or grades=real"


def split_counts(weights: list[float], n: int) -> list[int]:
    """n split in proportion to `weights`, the remainder to the largest fractional parts (Hamilton's method)."""
    total = sum(weights)
    exact = [n * w / total for w in weights]
    counts = [int(e) for e in exact]
    for i in sorted(range(len(weights)), key=lambda i: exact[i] - counts[i], reverse=True)[: n - sum(counts)]:
        counts[i] += 1
    return counts


def grade_labels(gan: GAN, grades: Any, n: int) -> Tensor | None:
    """The grade of each of the n samples (n,), in blocks of ascending grade; None for an unconditional GAN.
    `grades`: a list of grades, "balanced", "real" or None (a conditional GAN: "real")."""
    if not gan.conditional:
        if grades is not None:
            raise SampleError(f"grades={grades} needs a conditional checkpoint (trained with model.conditional=true); "
                              "this one is unconditional: leave grades out")
        return None
    n_grades = len(gan.grade_counts)
    grades = "real" if grades is None else grades
    if isinstance(grades, int) and not isinstance(grades, bool):
        grades = [grades]
    if grades == "balanced":
        chosen, weights = list(range(n_grades)), [1.0] * n_grades
    elif grades == "real":
        chosen, weights = list(range(n_grades)), gan.grade_counts.tolist()
    elif isinstance(grades, (list, tuple)) and grades and all(
            isinstance(g, int) and not isinstance(g, bool) and 0 <= g < n_grades for g in grades):
        chosen, weights = sorted(set(grades)), [1.0] * len(set(grades))
    else:
        raise SampleError(f"grades must be a list of grades in 0..{n_grades - 1}, balanced or real, got {grades!r}; "
                          f"e.g. {GRADES_HELP}")
    counts = split_counts(weights, n)
    return torch.cat([torch.full((c,), g, dtype=torch.int64) for g, c in zip(chosen, counts)])


def medmnist_layout(images: Tensor) -> np.ndarray:
    """uint8 (N, C, H, W) -> (N, H, W) when C == 1, else (N, H, W, C): MedMNIST's array layout."""
    array = images.permute(0, 2, 3, 1).numpy()
    return array[..., 0] if array.shape[-1] == 1 else array


def _data_folders(extra: list[str | None]) -> list[Path]:
    """Where RetinaMNIST files live: $RETINA_GANS_DATA, ./data and the checkpoint's own data.root."""
    folders = [os.environ.get("RETINA_GANS_DATA"), "data", *extra]
    return [Path(f).resolve() for f in folders if f]


def check_out(out: str | os.PathLike, overwrite: bool, data_roots: list[str | None] = ()) -> Path:
    """The file `write_samples` will write, or a one-line SampleError: `out` must name a .npz file, outside the
    data folder, that does not exist yet (unless overwrite)."""
    path = Path(out)
    if path.is_dir():
        raise SampleError(f"out={out} is a folder; name a file, e.g. out={path / 'samples.npz'}")
    if path.suffix != ".npz":
        raise SampleError(f"out={out} must end in .npz (numpy writes .npz archives), e.g. out={path.with_suffix('.npz')}")
    if path.name.lower().startswith("retinamnist") or path.resolve().parent in _data_folders(list(data_roots)):
        raise SampleError(f"out={out} is in the data folder or named like the dataset; write samples elsewhere")
    if path.exists() and not overwrite:
        raise SampleError(f"out={out} exists; add overwrite=true to replace it, or choose another out")
    return path


def write_samples(ckpt_path: str, n: int, out: str, noise_seed: int, batch_size: int, overwrite: bool = False,
                  grades: Any = None) -> Path:
    """Sample `n` images (of `grades`, for a conditional checkpoint) and write them to `out` (atomically: a
    temporary file beside it, renamed when complete)."""
    for name, value, low in (("n", n, 1), ("batch_size", batch_size, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise SampleError(f"{name} must be an integer >= {low}, got {value!r}")
    if not isinstance(noise_seed, int) or isinstance(noise_seed, bool):
        raise SampleError(f"noise_seed must be an integer, got {noise_seed!r}")
    check_out(out, overwrite)
    gan = GAN.from_checkpoint(ckpt_path)
    path = check_out(out, overwrite, [(gan.run_config.get("data") or {}).get("root")])
    labels = grade_labels(gan, grades, n)
    arrays = {"images": medmnist_layout(generate_samples(gan, n, noise_seed, batch_size, labels))}
    if labels is not None:
        arrays["labels"] = labels.numpy().astype(np.uint8).reshape(-1, 1)  # MedMNIST's (N, 1) uint8
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)  # a file object: numpy adds no suffix
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path.resolve()


@hydra.main(version_base="1.3", config_path="../conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    try:
        if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.ckpt_path:
            raise SampleError("ckpt_path is required: ckpt_path=<run>/checkpoints/last.ckpt")
        grades = OmegaConf.to_container(cfg.grades) if OmegaConf.is_config(cfg.grades) else cfg.grades
        path = write_samples(to_absolute_path(cfg.ckpt_path), cfg.n, to_absolute_path(str(cfg.out)), cfg.noise_seed,
                             cfg.batch_size, cfg.overwrite, grades)
    except (SampleError, CheckpointFileError) as error:
        log.error("error: %s", error)
        sys.exit(2)
    log.info("wrote %d samples to %s", cfg.n, path)


if __name__ == "__main__":
    run_cli(main)  # a job folder's path (with '=' and ',') works unquoted
