"""Training throughput: the project's Lightning path against a bare PyTorch loop with the same pieces.

Both paths build the same nets, optimizers and losses from the same composed config and train on the same
in-memory tensor sliced by a permutation. The Lightning path is the real one (`retina_gans.train.build_for_fit` +
`trainer.fit`, with its loggers, checkpoints, sample grids and progress bar); validation inside its timed
window is subtracted (it is timed separately, per extractor). Throughput = real images through the critic
per second; the generator steps every `n_critic`-th batch.

Pairing. This 2-core host's speed swings by +-20 % from one second to the next (another tenant; the same bare
batch measured alone: 32-50 ms within a minute), so two paths timed in separate windows, even back to back, differ
by that much. With `bare=` given, `bench_lightning` runs one bare batch right after each Lightning batch, in the
same process, and takes each path's time from its own batches: both see the host of the same 100 ms, and their
ratio over 85 batches repeats within about 1-2 %. Clocks are synchronised around each bare batch then (on a GPU
that also makes the Lightning path wait for its device every batch); without `bare=`, only at window edges.
"""

import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from retina_gans.data import ensure_data_file, load_split
from retina_gans.pixels import to_model_range
from retina_gans.train import build_for_fit, train

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
AUTOCAST_DTYPES = {"32-true": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
TINY = ["model.generator.width=8", "model.critic.width=8", "trainer.num_sanity_val_steps=0"]


def compose_config(overrides: list[str], output_dir: Path) -> DictConfig:
    """The real conf/ composed as `python -m retina_gans.train experiment=blog ...` would see it."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=blog", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepWindow(L.Callback):
    """Times training batches warmup+1 .. warmup+steps of a fit, then stops it; validation inside is subtracted.
    With a `bare` loop, one bare batch runs (and is timed) after each Lightning batch, warm-up included, and its
    time is subtracted from the Lightning path's too."""

    def __init__(self, warmup: int, steps: int, bare: "BareLoop | None" = None) -> None:
        self.warmup, self.steps, self.bare = warmup, steps, bare
        self.bare_s = self.bare_cpu_s = 0.0
        self.bare_images = self.bare_generator_steps = 0
        self.batches = self.images = self.generator_steps = 0
        self.start = self.end = None
        self.in_batch_s = self.validation_s = self.validation_cpu_s = self.checkpoint_s = 0.0
        self.checkpoints = 0
        self.save_s: list[float] = []  # every training-time save of the fit, in the window or not
        self._validating = False
        self._saved_in_batch = 0.0

    def timed(self, save: Any) -> Any:
        """`trainer.save_checkpoint`, timed: saves during training (not the best checkpoint after a validation,
        which is inside the subtracted validation time) count as checkpoint time when they fall in the window."""
        def timed_save(*args: Any, **kwargs: Any) -> None:
            start = time.perf_counter()
            save(*args, **kwargs)
            if not self._validating:
                self.save_s.append(time.perf_counter() - start)
                self._saved_in_batch += self.save_s[-1]  # a mid-epoch save inside on_train_batch_end
                if self.start is not None and self.end is None:
                    self.checkpoint_s += self.save_s[-1]
                    self.checkpoints += 1
        return timed_save

    def _now(self, gan: L.LightningModule) -> float:
        _sync(gan.device)
        return time.perf_counter()

    def on_train_batch_start(self, trainer: L.Trainer, gan: Any, batch: Any, batch_idx: int) -> None:
        if self.batches == self.warmup:
            self.start, self._generator_steps = self._now(gan), gan.generator_steps
            self._cpu_start = time.process_time()
        self._batch_start, self._saved_in_batch = time.perf_counter(), 0.0

    def on_train_batch_end(self, trainer: L.Trainer, gan: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.batches += 1
        if self.start is not None:
            self.images += (batch[0] if isinstance(batch, (tuple, list)) else batch).shape[0]  # conditional: a pair
            # host time only (asynchronous on a GPU); a save inside the batch's end hooks counts as checkpoint time
            self.in_batch_s += time.perf_counter() - self._batch_start - self._saved_in_batch
        if self.bare is not None:
            start, cpu_start = self._now(gan), time.process_time()
            images, generator_steps = self.bare.step()
            if self.start is not None:
                self.bare_s += self._now(gan) - start
                self.bare_cpu_s += time.process_time() - cpu_start
                self.bare_images += images
                self.bare_generator_steps += generator_steps
        if self.start is None:
            return
        if self.batches == self.warmup + self.steps:
            self.end = self._now(gan)
            self.cpu_s = time.process_time() - self._cpu_start
            self.generator_steps = gan.generator_steps - self._generator_steps
            trainer.should_stop = True

    def on_validation_start(self, trainer: L.Trainer, gan: Any) -> None:
        self._validation_start, self._validation_cpu_start = self._now(gan), time.process_time()
        self._validating = True

    def on_validation_end(self, trainer: L.Trainer, gan: Any) -> None:
        self._validating = False
        if self.start is not None and self.end is None:
            self.validation_s += self._now(gan) - self._validation_start
            self.validation_cpu_s += time.process_time() - self._validation_cpu_start


def _rates(images: int, generator_steps: int, batches: int, seconds: float, cpu_s: float) -> dict[str, float]:
    """Throughputs over a window; cpu_s (this process's CPU time, all threads) is the figure that survives a
    shared machine best on CPU, wall time the one that counts."""
    return {"images_per_s": images / seconds, "generator_steps_per_s": generator_steps / seconds,
            "s_per_batch": seconds / batches, "window_s": seconds, "window_cpu_s": cpu_s,
            "images_per_cpu_s": images / cpu_s, "images": images, "generator_steps": generator_steps,
            "batches": batches}


def bench_lightning(cfg: DictConfig, warmup: int, steps: int,
                    bare: "BareLoop | None" = None) -> dict[str, Any]:
    """The project's training path, exactly as `retina_gans.train.train` runs it, stopped after the window. With
    `bare`, one of its batches after each Lightning batch: the result then holds the bare loop's rates too, under
    "bare", measured on the interleaved batches."""
    datamodule, gan, trainer = build_for_fit(cfg)
    window = StepWindow(warmup, steps, bare)
    trainer.callbacks.append(window)
    trainer.save_checkpoint = window.timed(trainer.save_checkpoint)  # what every checkpoint callback calls
    trainer.fit(gan, datamodule=datamodule)
    if window.end is None:
        raise RuntimeError(f"the fit stopped after {window.batches} batches, before the window's {warmup + steps}")
    seconds = window.end - window.start - window.validation_s - window.bare_s
    cpu_s = window.cpu_s - window.validation_cpu_s - window.bare_cpu_s
    result = _rates(window.images, window.generator_steps, steps, seconds, cpu_s)
    # in batch: on_train_batch_start .. on_train_batch_end (training_step and the batch hooks); between batches:
    # data fetch, loop, logger writes at log_every_n_steps, epoch ends (sample grid, epoch metrics), checkpoints
    # apart (timed around trainer.save_checkpoint). All measured; the bare loop's s/batch is all "in batch".
    between = seconds - window.in_batch_s - window.checkpoint_s
    result |= {"in_batch_s": window.in_batch_s, "between_batches_s": between, "checkpoint_s": window.checkpoint_s,
               "checkpoints_in_window": window.checkpoints, "save_s": window.save_s,
               "in_batch_s_per_batch": window.in_batch_s / steps, "between_s_per_batch": between / steps,
               "checkpoint_s_per_batch": window.checkpoint_s / steps,
               "validation_in_window_s": window.validation_s, "device": str(gan.device)}
    if bare is not None:
        result["bare"] = _rates(window.bare_images, window.bare_generator_steps, steps, window.bare_s,
                                window.bare_cpu_s)
    return result


def train_images(cfg: DictConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The training split as float (N, C, H, W) in [-1, 1] and its grades (N,), on the device, read as the data
    module reads it."""
    path = ensure_data_file(cfg.data.root, cfg.data.size, False, cfg.data.verify_md5)
    images, labels = load_split(path, "train", cfg.data.size, cfg.data.channels)
    return to_model_range(images).to(device), labels.to(device)


class BareLoop:
    """A plain PyTorch loop, one batch per `step()`: the same nets, optimizers, batch size, n_critic, precision and
    compile, and the very loss, constraint, augmentation and EMA code of the Lightning path (the configured GAN's own
    `critic_loss`, `generator_loss`, `end_critic_step` and `end_generator_step`, called without a Trainer: no hooks,
    logging, checkpoints or optimizer wrappers); data: the train split as one tensor sliced by a permutation."""

    def __init__(self, cfg: DictConfig, device: torch.device) -> None:
        L.seed_everything(cfg.seed, verbose=False)
        self.gan = gan = hydra.utils.instantiate(cfg.model).to(device)  # nets built (and compiled) as Lightning's
        self.critic_opt = hydra.utils.instantiate(cfg.model.critic_optimizer)(gan.critic.parameters())
        self.generator_opt = hydra.utils.instantiate(cfg.model.generator_optimizer)(gan.generator.parameters())
        self.dtype = AUTOCAST_DTYPES[cfg.trainer.precision]
        self.device = device
        # Under 16-mixed the gradient penalty reads the Trainer's loss scale; here, without a Trainer, it uses 1.0
        # (the same work; float16 needs CUDA).
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype is torch.float16)
        self.images, self.labels = train_images(cfg, device)
        if gan.conditional:  # what the GAN's `setup` takes from the data module
            gan.grade_counts.copy_(torch.bincount(self.labels, minlength=len(gan.grade_counts)))
        self.batch_size = cfg.data.batch_size
        self.order = torch.Generator().manual_seed(cfg.seed)
        self.permutation, self.position = None, len(self.images)

    def _update(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()

    def step(self) -> tuple[int, int]:
        """One batch (one critic step; a generator step after every n_critic-th); returns (images, generator
        steps) of it."""
        gan, device, dtype = self.gan, self.device, self.dtype
        if self.position >= len(self.images):  # a new epoch: one small copy of a fresh permutation
            self.permutation, self.position = torch.randperm(len(self.images), generator=self.order).to(device), 0
        batch = self.permutation[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        real = self.images[batch]  # (B, C, H, W) in [-1, 1]
        real_grades = self.labels[batch] if gan.conditional else None  # (B,) or None, as the data module yields
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            with torch.no_grad():
                fake, fake_grades = gan.sample_fakes(real.shape[0])
            loss, _ = gan.critic_loss(real, fake, real_grades, fake_grades)
        self._update(self.critic_opt, loss)
        gan.end_critic_step()  # constraints, the step count (lazy regularizers read it), ADA's p
        if gan.critic_steps % gan.n_critic:
            return real.shape[0], 0
        gan.critic.requires_grad_(False)  # what the Lightning path does: no critic weight gradients
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = gan.generator_loss(*gan.sample_fakes(real.shape[0]))
        self._update(self.generator_opt, loss)
        gan.critic.requires_grad_(True)
        gan.end_generator_step(real.shape[0])  # the step count, the EMA
        return real.shape[0], 1


def bench_bare(cfg: DictConfig, warmup: int, steps: int, device: torch.device) -> dict[str, Any]:
    """The bare loop alone: `warmup` untimed batches, then `steps` timed ones."""
    loop = BareLoop(cfg, device)
    for _ in range(warmup):
        loop.step()
    _sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    images = generator_steps = 0
    for _ in range(steps):
        counted = loop.step()
        images, generator_steps = images + counted[0], generator_steps + counted[1]
    _sync(device)
    return _rates(images, generator_steps, steps, time.perf_counter() - start, time.process_time() - cpu_start)


def bench_full_run(cfg: DictConfig) -> float:
    """Wall time of `python -m retina_gans.train experiment=blog ...` for one model, setup included."""
    start = time.perf_counter()
    train(cfg)
    return time.perf_counter() - start
