"""RetinaMNIST as whole-split uint8 tensors, and a LightningDataModule that slices batches from them.

The whole training split is under 3 MB, so each split is decoded once into a tensor
(optionally kept on the accelerator) and batches are index slices: no per-item PIL decode,
no DataLoader workers, no host->device copy per step.
"""

import hashlib
import os
import shutil
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any, Iterator

import lightning as L
import medmnist
import numpy as np
import torch
from medmnist.info import INFO
from torch import Tensor
from torchvision.transforms.v2.functional import rgb_to_grayscale

from retina_gans.pixels import to_model_range

FLAG = "retinamnist"
SPLITS = ("train", "val", "test")
ROOT_ENV_VAR = "RETINA_GANS_DATA"


class DataFileError(RuntimeError):
    """The RetinaMNIST file is missing, corrupt or not in MedMNIST's format."""


def data_file(root: str | os.PathLike, size: int) -> Path:
    """Where medmnist keeps the file for this size: `retinamnist.npz`, `retinamnist_64.npz`, ..."""
    return Path(root) / f"{FLAG}{'' if size == 28 else f'_{size}'}.npz"


def published_md5(size: int) -> str:
    return INFO[FLAG]["MD5" if size == 28 else f"MD5_{size}"]


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def ensure_data_file(root: str | os.PathLike, size: int, download: bool, verify_md5: bool) -> Path:
    """Return the path of a good data file, downloading it atomically first when allowed.

    The download goes to a temporary folder beside the target and is renamed into place only
    when medmnist has checked its md5, so an interrupted download never leaves a half file.
    """
    path = data_file(root, size)
    how_to_fix = (
        f"put MedMNIST's {path.name} there (https://zenodo.org/records/10519652), "
        f"point data.root (or ${ROOT_ENV_VAR}) at the folder that holds it, or set data.download=true"
    )
    if path.exists() and not path.is_file():
        raise DataFileError(f"{path} is not a file; {how_to_fix}")
    if not path.exists():
        if not download:
            raise DataFileError(f"RetinaMNIST file not found: {path}; {how_to_fix}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise DataFileError(f"cannot create the data folder {path.parent} ({error.strerror}); {how_to_fix}") from None
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".download-") as tmp:
            try:
                medmnist.RetinaMNIST(split="train", root=tmp, download=True, size=size)
            except Exception as error:  # medmnist wraps every failure in a multi-line RuntimeError
                raise DataFileError(
                    f"could not download {path.name} ({type(error).__name__}); {how_to_fix.split(', or set')[0]}"
                ) from None
            if not (Path(tmp) / path.name).is_file():
                raise DataFileError(f"the download finished without writing {path.name}; {how_to_fix}")
            os.replace(Path(tmp) / path.name, path)  # same folder: atomic, a reader never sees a partial file
    if verify_md5 and _md5(path) != published_md5(size):
        raise DataFileError(
            f"{path} does not match MedMNIST's published md5 {published_md5(size)} (corrupt or truncated?); "
            f"delete it and download it again, or set data.verify_md5=false for a file you made yourself"
        )
    return path


def load_split(path: Path, split: str, size: int, channels: int) -> tuple[Tensor, Tensor]:
    """One split of a RetinaMNIST file as (uint8 images (N, C, H, W), int64 labels (N,)).

    Reads through medmnist's own dataset class, so a file medmnist rejects is rejected here too;
    grayscale uses the ITU-R 601-2 luma transform (what PIL's `convert("L")` does).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    if channels not in (1, 3):
        raise ValueError(f"data.channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    try:
        dataset = medmnist.RetinaMNIST(split=split, root=str(path.parent), download=False, size=size)
        images, labels = np.asarray(dataset.imgs), np.asarray(dataset.labels)
    except (zipfile.BadZipFile, zlib.error, ValueError, OSError, KeyError, EOFError) as error:
        raise DataFileError(
            f"{path} is not a readable MedMNIST npz ({type(error).__name__}: {error}); "
            "delete it and download it again"
        ) from None
    expected = (INFO[FLAG]["n_samples"][split], size, size, 3)
    if images.shape != expected or images.dtype != np.uint8 or len(labels) != expected[0]:
        raise DataFileError(
            f"{path}: {split}_images is {images.dtype}{list(images.shape)} with {len(labels)} labels, "
            f"expected uint8{list(expected)} as MedMNIST publishes it; replace the file with the official one"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= len(INFO[FLAG]["label"])):
        raise DataFileError(
            f"{path}: {split}_labels hold values outside 0..{len(INFO[FLAG]['label']) - 1} (the retinopathy grades); "
            "replace the file with the official one"
        )
    images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W) uint8
    if channels == 1:
        images = rgb_to_grayscale(images)  # (N, 1, H, W) uint8
    return images, torch.from_numpy(labels.reshape(-1).astype(np.int64))


class ShuffledBatches:
    """Batches sliced from an in-memory tensor, in an order fixed by (seed, epoch); with `labels`, (images, labels).

    Because the order is a pure function of the seed and the epoch, and the position within
    the epoch is part of `state_dict`, Lightning can resume it exactly mid-epoch. Under DDP each
    rank takes a disjoint stride of the same permutation (training) or a contiguous block (evaluation).
    """

    def __init__(
        self,
        images: Tensor,
        batch_size: int,
        shuffle: bool,
        drop_last: bool,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        with_indices: bool = False,
        labels: Tensor | None = None,
    ) -> None:
        self.images = images
        self.labels = labels  # (N,) int64 on the images' device, or None: batches are images alone
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.with_indices = with_indices
        self.epoch = 0
        self._resume_from_batch = 0
        # Lightning looks at these DataLoader attributes: it calls `sampler.set_epoch(epoch)` at each epoch start.
        self.sampler, self.batch_sampler = self, None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rank_order(self) -> Tensor:
        """This rank's image indices for the current epoch, on the CPU."""
        n = len(self.images)
        if not self.shuffle:  # contiguous blocks: gathered across ranks they keep the single-process order
            return torch.arange(n).tensor_split(self.world_size)[self.rank]
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        per_rank = n // self.world_size  # equal batch counts on every rank, or DDP's collectives wait forever
        return order[: per_rank * self.world_size][self.rank :: self.world_size]

    def __len__(self) -> int:
        n = len(self.images)
        per_rank = n // self.world_size if self.shuffle else len(torch.arange(n).tensor_split(self.world_size)[self.rank])
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)

    def __iter__(self) -> Iterator[Tensor | tuple[Tensor, Tensor]]:
        indices = self._rank_order().to(self.images.device)  # one small copy per epoch, then device-side slicing
        start, self._resume_from_batch = self._resume_from_batch, 0
        for b in range(start, len(self)):
            self._position = b + 1
            batch_indices = indices[b * self.batch_size : (b + 1) * self.batch_size]
            batch = self.images[batch_indices]
            if self.labels is not None:
                yield batch, self.labels[batch_indices]  # (B, C, H, W), (B,)
            else:
                yield (batch_indices, batch) if self.with_indices else batch

    def state_dict(self) -> dict[str, int]:
        # `position` counts batches handed out. Lightning's fetcher prefetches nothing from an iterable with a
        # length (it knows the last batch from `len`), so at a batch end it is exactly the batches trained on:
        # tests/test_exact_resume.py checks this against the loop's counter at every batch.
        return {"epoch": self.epoch, "position": getattr(self, "_position", 0), "batches": len(self),
                "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("batch_size", self.batch_size) != self.batch_size or state.get("batches", len(self)) != len(self):
            raise ValueError(
                f"the checkpoint's data order was saved with data.batch_size={state['batch_size']} "
                f"({state['batches']} batches per epoch), this run has data.batch_size={self.batch_size} "
                f"({len(self)}); resume with the run's own settings"
            )
        self.epoch = state["epoch"]
        self._resume_from_batch = state["position"] % max(len(self), 1)


class RetinaMNISTDataModule(L.LightningDataModule):
    """RetinaMNIST splits as tensors in [-1, 1]; training batches are shuffled slices, with their grades when
    `labels` (conditional models); without, batches are the image tensors alone (no label indexing per step)."""

    def __init__(
        self,
        root: str,
        size: int,
        channels: int,
        batch_size: int,
        eval_batch_size: int,
        drop_last: bool,
        download: bool,
        verify_md5: bool,
        on_device: bool,
        reference_split: str,
        labels: bool,
        seed: int,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.images: dict[str, Tensor] = {}  # split -> uint8 (N, C, H, W)
        self.labels: dict[str, Tensor] = {}

    def prepare_data(self) -> None:
        ensure_data_file(self.hparams.root, self.hparams.size, self.hparams.download, self.hparams.verify_md5)

    def setup(self, stage: str | None = None) -> None:
        if self.images:
            return
        path = ensure_data_file(self.hparams.root, self.hparams.size, False, self.hparams.verify_md5)
        for split in SPLITS:
            self.images[split], self.labels[split] = load_split(
                path, split, self.hparams.size, self.hparams.channels
            )
        if self.hparams.batch_size > len(self.images["train"]):
            raise ValueError(
                f"data.batch_size={self.hparams.batch_size} is larger than the training set "
                f"({len(self.images['train'])} images); choose at most {len(self.images['train'])}"
            )

    def model_images(self, split: str) -> Tensor:
        """A whole split as float (N, C, H, W) in [-1, 1], on the training device when `on_device`."""
        images = to_model_range(self.images[split])
        if self.hparams.on_device and self.trainer is not None:
            images = images.to(self.trainer.strategy.root_device)
        return images

    def _batches(self, split: str, batch_size: int, shuffle: bool, drop_last: bool, with_indices: bool,
                 labels: bool = False) -> ShuffledBatches:
        trainer: Any = self.trainer
        images = self.model_images(split)
        return ShuffledBatches(
            images,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            seed=self.hparams.seed,
            rank=trainer.global_rank if trainer else 0,
            world_size=trainer.world_size if trainer else 1,
            with_indices=with_indices,
            labels=self.labels[split].to(images.device) if labels else None,
        )

    def train_dataloader(self) -> ShuffledBatches:
        return self._batches("train", self.hparams.batch_size, True, self.hparams.drop_last, False,
                             self.hparams.labels)

    def val_dataloader(self) -> ShuffledBatches:
        """The metric reference split in order, with each image's index (it picks the matching evaluation noise)."""
        return self._batches(self.hparams.reference_split, self.hparams.eval_batch_size, False, False, True)
