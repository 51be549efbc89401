"""Checkpoint files that are never half-written, checked before a run resumes from them, and written often enough
that a killed run loses at most one interval.

Lightning's own `TorchCheckpointIO` writes through an fsspec transaction whose temporary file lives in the system
temp folder, so on most machines the final step is a cross-device copy: a kill during it leaves a truncated
`last.ckpt` and the previous good one is gone. Here the temporary file sits beside the target and is renamed over
it (`os.replace`, atomic on POSIX) only once it is complete and flushed to disk.
"""

import os
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Callable

import lightning as L
import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

# What every checkpoint written by `retina_gans.train` holds; anything else is not ours to resume from.
REQUIRED_KEYS = ("state_dict", "optimizer_states", "loops", "callbacks", "gan_steps", "epoch")


class CheckpointFileError(ValueError):
    """A checkpoint passed as ckpt_path is missing, truncated or not one of ours."""


def _umask() -> int:
    """The process umask, read without changing it (`os.umask` would, for a moment, in every thread)."""
    try:
        with open("/proc/self/status") as f:
            return int(next(line.split()[1] for line in f if line.startswith("Umask:")), 8)
    except (OSError, StopIteration, ValueError):
        return 0o022


def temporary_files(folder: Path) -> list[Path]:
    """What `atomic_torch_save` leaves in `folder` when the process is killed (SIGKILL) between write and rename."""
    return sorted(folder.glob(".*.ckpt.*.tmp"))


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync it, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a checkpoint gets the mode of any other file
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt/SIGTERM included: never leave the temporary file behind
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable; not possible on every filesystem
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu",
                    required: tuple[str, ...] = REQUIRED_KEYS) -> dict[str, Any]:
    """Load a training checkpoint, or raise a one-line CheckpointFileError that names the file and what is wrong.

    Loads with `weights_only=True`: our checkpoints hold only tensors and plain Python values (the run's config
    as plain data), so a file that needs arbitrary pickled objects is not one of ours (and is not executed).
    `required`: the keys the caller needs (resuming needs the loop state; sampling the weights and the config).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointFileError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointFileError(f"checkpoint {path} is not a file; pass .../checkpoints/last.ckpt")
    if path.stat().st_size == 0 or not zipfile.is_zipfile(path):
        raise CheckpointFileError(
            f"checkpoint {path} is truncated or not a torch checkpoint (not a complete zip archive); "
            "resume from another checkpoint of the run"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()  # CRC of every member: catches flipped bytes the central directory hides
        if damaged is not None:
            raise CheckpointFileError(f"checkpoint {path} is corrupt (bad CRC in {damaged}); resume from another checkpoint")
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except CheckpointFileError:
        raise
    except Exception as error:  # torch raises RuntimeError / UnpicklingError / EOFError with multi-line messages
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise CheckpointFileError(
            f"checkpoint {path} cannot be loaded ({type(error).__name__}: {first_line[:160]}); "
            "it is corrupt or was not written by retina_gans.train"
        ) from None
    missing = [k for k in required if not isinstance(checkpoint, dict) or k not in checkpoint]
    if missing:
        raise CheckpointFileError(
            f"checkpoint {path} is not a retina-gans training checkpoint (missing {', '.join(missing)}); "
            "pass a checkpoints/last.ckpt written by retina_gans.train"
        )
    return checkpoint


# What a stored config may name for Hydra to build: our own classes and torch's optimizers, nothing else.
OWN_TARGETS = ("retina_gans.", "torch.optim.")


def check_targets(config: Any, path: str | os.PathLike) -> Any:
    """Return `config` (a part of a checkpoint's run_config) if every `_target_` in it is one of ours; Hydra's
    instantiate imports and calls whatever a `_target_` names, so a file from elsewhere could run code through it."""
    def targets(tree: Any) -> list[str]:
        if isinstance(tree, dict):
            return [str(v) for k, v in tree.items() if k == "_target_"] + [t for v in tree.values() for t in targets(v)]
        return [t for v in tree for t in targets(v)] if isinstance(tree, list) else []

    foreign = [t for t in targets(config) if not t.startswith(OWN_TARGETS)]
    if foreign:
        raise CheckpointFileError(f"checkpoint {path} names classes outside retina_gans and torch.optim in its "
                                  f"config ({', '.join(foreign)}); refusing to build them")
    return config


def completed_epochs(checkpoint: dict[str, Any]) -> int:
    """Epochs whose training pass had finished when the checkpoint was written (Lightning's loop counters)."""
    return int(checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO with same-folder temp file + os.replace writes, and checked, one-line-error loads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        atomic_torch_save(checkpoint, Path(path))

    def load_checkpoint(
        self, path: _PATH, map_location: Callable | None = lambda storage, loc: storage, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return read_checkpoint(path, map_location=map_location)


def is_last_epoch(trainer: L.Trainer) -> bool:
    """Whether training stops after this epoch (called at an epoch end): `fit_loop.done`'s tests, without its side
    effects."""
    loop = trainer.fit_loop
    max_epochs, max_steps = loop.max_epochs, loop.max_steps
    return (trainer.should_stop
            or (max_epochs is not None and max_epochs >= 0 and loop.epoch_progress.current.processed >= max_epochs)
            or (max_steps >= 0 and loop.epoch_loop.global_step >= max_steps))


class LastCheckpoint(Checkpoint):
    """Writes `<dirpath>/last.ckpt` at the end of every `every_n_epochs`-th epoch once `every_n_seconds` have passed
    since the last save, at the end of training's last epoch, every `every_n_train_batches` training batches (= critic
    steps) if set, and when the run is asked to stop by SIGTERM (Lightning sets `trainer.received_sigterm` and raises
    at the end of the batch, so this saves just before it exits). A SIGKILL loses at most `every_n_seconds` plus one
    epoch. Why the time limit: a save costs about 35 ms (10.8 MB at the blog's size), and an epoch of a WGAN about
    0.5 s on a 2-core CPU, so a save per epoch was 2 ms of every 26 ms batch.

    Mid-epoch saves happen at a batch end, the point Lightning's loops resume from exactly; a batch that ends an
    epoch is saved by the epoch-end save instead (resuming from its batch end would skip the epoch's end:
    validation, sample grid, epoch metrics). Before each save every `DivergenceGuard` checks the steps it has not
    checked yet, so diverged weights never overwrite the last good checkpoint.
    """

    FILENAME = "last.ckpt"

    def __init__(self, dirpath: str, every_n_epochs: int, every_n_train_batches: int | None,
                 every_n_seconds: float) -> None:
        if not every_n_seconds >= 0:
            raise ValueError(f"callbacks.last_checkpoint.every_n_seconds must be a number >= 0, got {every_n_seconds}")
        self.path = Path(dirpath) / self.FILENAME
        self.every_n_epochs = every_n_epochs
        self.every_n_train_batches = every_n_train_batches
        self.every_n_seconds = every_n_seconds
        self._last_save = time.monotonic()  # reset when training starts and at every save

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_save = time.monotonic()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        loop = trainer.fit_loop.epoch_loop
        if loop.batch_progress.is_last_batch:
            return
        every = self.every_n_train_batches
        if trainer.received_sigterm or (every and (loop.total_batch_idx + 1) % every == 0):
            self.save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        due = ((trainer.current_epoch + 1) % self.every_n_epochs == 0
               and time.monotonic() - self._last_save >= self.every_n_seconds)
        if trainer.received_sigterm or due or is_last_epoch(trainer):
            self.save(trainer)

    def save(self, trainer: L.Trainer) -> None:
        from retina_gans.divergence import DivergenceGuard  # the guard imports nothing from here

        for guard in (c for c in trainer.callbacks if isinstance(c, DivergenceGuard)):
            guard.check_pending(trainer)  # raises before anything is written if a pending step diverged
        trainer.save_checkpoint(self.path, weights_only=False)  # the full training state
        self._last_save = time.monotonic()
