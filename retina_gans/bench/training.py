"""Training throughput: the project's Lightning path against a bare PyTorch loop with the same pieces.

Both paths build the same nets, optimizers and losses from the same composed config and train on the same
in-memory tensor sliced by a permutation. The Lightning path is the real one (`retina_gans.train.build_for_fit` +
`trainer.fit`, with its loggers, checkpoints, sample grids and progress bar); validation inside its timed
window is subtracted (it is timed separately, per extractor). Throughput = real images through the critic
per second; the generator steps every `n_critic`-th batch. Clocks are synchronised only at window edges.
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
    """Times training batches warmup+1 .. warmup+steps of a fit, then stops it; validation inside is subtracted."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
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
        if self.start is None:
            return
        self.images += (batch[0] if isinstance(batch, (tuple, list)) else batch).shape[0]  # conditional: a pair
        # host time only (asynchronous on a GPU); a save inside the batch's end hooks counts as checkpoint time
        self.in_batch_s += time.perf_counter() - self._batch_start - self._saved_in_batch
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


def bench_lightning(cfg: DictConfig, warmup: int, steps: int) -> dict[str, Any]:
    """The project's training path, exactly as `retina_gans.train.train` runs it, stopped after the window."""
    datamodule, gan, trainer = build_for_fit(cfg)
    window = StepWindow(warmup, steps)
    trainer.callbacks.append(window)
    trainer.save_checkpoint = window.timed(trainer.save_checkpoint)  # what every checkpoint callback calls
    trainer.fit(gan, datamodule=datamodule)
    if window.end is None:
        raise RuntimeError(f"the fit stopped after {window.batches} batches, before the window's {warmup + steps}")
    seconds = window.end - window.start - window.validation_s
    result = _rates(window.images, window.generator_steps, steps, seconds, window.cpu_s - window.validation_cpu_s)
    # in batch: on_train_batch_start .. on_train_batch_end (training_step and the batch hooks); between batches:
    # data fetch, loop, logger writes at log_every_n_steps, epoch ends (sample grid, epoch metrics), checkpoints
    # apart (timed around trainer.save_checkpoint). All measured; the bare loop's s/batch is all "in batch".
    between = seconds - window.in_batch_s - window.checkpoint_s
    result |= {"in_batch_s": window.in_batch_s, "between_batches_s": between, "checkpoint_s": window.checkpoint_s,
               "checkpoints_in_window": window.checkpoints, "save_s": window.save_s,
               "in_batch_s_per_batch": window.in_batch_s / steps, "between_s_per_batch": between / steps,
               "checkpoint_s_per_batch": window.checkpoint_s / steps,
               "validation_in_window_s": window.validation_s, "device": str(gan.device)}
    return result


def train_images(cfg: DictConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The training split as float (N, C, H, W) in [-1, 1] and its grades (N,), on the device, read as the data
    module reads it."""
    path = ensure_data_file(cfg.data.root, cfg.data.size, False, cfg.data.verify_md5)
    images, labels = load_split(path, "train", cfg.data.size, cfg.data.channels)
    return to_model_range(images).to(device), labels.to(device)


def bench_bare(cfg: DictConfig, warmup: int, steps: int, device: torch.device) -> dict[str, Any]:
    """A plain PyTorch loop: the same nets, optimizers, batch size, n_critic, precision and compile, and the very
    loss, constraint, augmentation and EMA code of the Lightning path (the configured GAN's own `critic_loss`,
    `generator_loss`, `end_critic_step` and `end_generator_step`, called without a Trainer: no hooks, logging,
    checkpoints or optimizer wrappers)."""
    L.seed_everything(cfg.seed, verbose=False)
    gan = hydra.utils.instantiate(cfg.model).to(device)  # nets built (and compiled) as the Lightning path builds them
    generator, critic = gan.generator, gan.critic
    critic_opt = hydra.utils.instantiate(cfg.model.critic_optimizer)(critic.parameters())
    generator_opt = hydra.utils.instantiate(cfg.model.generator_optimizer)(generator.parameters())
    dtype = AUTOCAST_DTYPES[cfg.trainer.precision]
    # Under 16-mixed the gradient penalty reads the Trainer's loss scale; here, without a Trainer, it uses 1.0
    # (the same work; float16 needs CUDA).
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    n_critic = gan.n_critic

    def step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    images, labels = train_images(cfg, device)
    if gan.conditional:  # what the GAN's `setup` takes from the data module
        gan.grade_counts.copy_(torch.bincount(labels, minlength=len(gan.grade_counts)))
    batch_size, n = cfg.data.batch_size, len(images)
    order = torch.Generator().manual_seed(cfg.seed)
    batches = 0
    while batches < warmup + steps:
        permutation = torch.randperm(n, generator=order).to(device)  # one small copy per epoch
        for b in range(-(-n // batch_size)):
            if batches == warmup:
                _sync(device)
                start, cpu_start = time.perf_counter(), time.process_time()
                counted_images, counted_generator_steps = 0, gan.generator_steps
            batch = permutation[b * batch_size : (b + 1) * batch_size]
            real = images[batch]  # (B, C, H, W) in [-1, 1]
            real_grades = labels[batch] if gan.conditional else None  # (B,) or None, as the data module yields
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                with torch.no_grad():
                    fake, fake_grades = gan.sample_fakes(real.shape[0])
                loss, _ = gan.critic_loss(real, fake, real_grades, fake_grades)
            step(critic_opt, loss)
            gan.end_critic_step()  # constraints, the step count (lazy regularizers read it), ADA's p
            if gan.critic_steps % n_critic == 0:
                critic.requires_grad_(False)  # what the Lightning path does: no critic weight gradients
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    loss = gan.generator_loss(*gan.sample_fakes(real.shape[0]))
                step(generator_opt, loss)
                critic.requires_grad_(True)
                gan.end_generator_step(real.shape[0])  # the step count, the EMA
            batches += 1
            if batches > warmup:
                counted_images += real.shape[0]
            if batches == warmup + steps:
                break
    _sync(device)
    seconds, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    return _rates(counted_images, gan.generator_steps - counted_generator_steps, steps, seconds, cpu_s)


def bench_full_run(cfg: DictConfig) -> float:
    """Wall time of `python -m retina_gans.train experiment=blog ...` for one model, setup included."""
    start = time.perf_counter()
    train(cfg)
    return time.perf_counter() - start
