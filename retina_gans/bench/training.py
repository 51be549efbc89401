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
from omegaconf import DictConfig, OmegaConf, open_dict

from retina_gans import losses
from retina_gans.data import ensure_data_file, load_split
from retina_gans.models import LSGAN, WGAN, WGANGP
from retina_gans.pixels import to_model_range
from retina_gans.train import build_for_fit, train

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
MODELS = ("lsgan", "wgan", "wgan_gp")
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
        self.in_batch_s = self.validation_s = self.validation_cpu_s = 0.0

    def _now(self, gan: L.LightningModule) -> float:
        _sync(gan.device)
        return time.perf_counter()

    def on_train_batch_start(self, trainer: L.Trainer, gan: Any, batch: Any, batch_idx: int) -> None:
        if self.batches == self.warmup:
            self.start, self._generator_steps = self._now(gan), gan.generator_steps
            self._cpu_start = time.process_time()
        self._batch_start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, gan: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.batches += 1
        if self.start is None:
            return
        self.images += batch.shape[0]
        self.in_batch_s += time.perf_counter() - self._batch_start  # host time only: asynchronous on a GPU
        if self.batches == self.warmup + self.steps:
            self.end = self._now(gan)
            self.cpu_s = time.process_time() - self._cpu_start
            self.generator_steps = gan.generator_steps - self._generator_steps
            trainer.should_stop = True

    def on_validation_start(self, trainer: L.Trainer, gan: Any) -> None:
        self._validation_start, self._validation_cpu_start = self._now(gan), time.process_time()

    def on_validation_end(self, trainer: L.Trainer, gan: Any) -> None:
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
    trainer.fit(gan, datamodule=datamodule)
    if window.end is None:
        raise RuntimeError(f"the fit stopped after {window.batches} batches, before the window's {warmup + steps}")
    seconds = window.end - window.start - window.validation_s
    result = _rates(window.images, window.generator_steps, steps, seconds, window.cpu_s - window.validation_cpu_s)
    # between batches: data fetch, loop, logger writes at log_every_n_steps, epoch ends (checkpoint, sample grid)
    result |= {"in_batch_s": window.in_batch_s, "between_batches_s": seconds - window.in_batch_s,
               "validation_in_window_s": window.validation_s, "device": str(gan.device)}
    return result


def train_images(cfg: DictConfig, device: torch.device) -> torch.Tensor:
    """The training split as float (N, C, H, W) in [-1, 1] on the device, read as the data module reads it."""
    path = ensure_data_file(cfg.data.root, cfg.data.size, False, cfg.data.verify_md5)
    return to_model_range(load_split(path, "train", cfg.data.size, cfg.data.channels)[0]).to(device)


def bench_bare(cfg: DictConfig, warmup: int, steps: int, device: torch.device) -> dict[str, Any]:
    """A plain PyTorch loop: the same nets, optimizers, losses, batch size, n_critic, precision and compile."""
    L.seed_everything(cfg.seed, verbose=False)
    m = OmegaConf.to_container(cfg.model, resolve=True)  # plain dict: OmegaConf access is slow in a hot loop
    gan_class = hydra.utils.get_class(m["_target_"])
    generator = hydra.utils.instantiate(cfg.model.generator).to(device)
    critic = hydra.utils.instantiate(cfg.model.critic).to(device)
    if m["compile"]:
        generator.compile()
        if gan_class.critic_compilable:
            critic.compile()
    critic_opt = hydra.utils.instantiate(cfg.model.critic_optimizer)(critic.parameters())
    generator_opt = hydra.utils.instantiate(cfg.model.generator_optimizer)(generator.parameters())
    dtype = AUTOCAST_DTYPES[cfg.trainer.precision]
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)

    def critic_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        real_scores, fake_scores = critic(real), critic(fake)
        if issubclass(gan_class, LSGAN):
            return losses.least_squares_critic(real_scores, fake_scores)
        loss = losses.wasserstein_critic(real_scores, fake_scores)
        if issubclass(gan_class, WGANGP):  # get_scale() syncs under 16-mixed, as in the model
            loss = loss + m["gp_weight"] * losses.gradient_penalty(critic, real, fake, scaler.get_scale())
        return loss

    generator_loss = losses.least_squares_generator if issubclass(gan_class, LSGAN) else losses.wasserstein_generator
    clip = m["clip_value"] if issubclass(gan_class, WGAN) else None
    latent_dim, n_critic = m["latent_dim"], m["n_critic"]

    def step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    images = train_images(cfg, device)
    batch_size, n = cfg.data.batch_size, len(images)
    order = torch.Generator().manual_seed(cfg.seed)
    batches = critic_steps = generator_steps = 0
    while batches < warmup + steps:
        permutation = torch.randperm(n, generator=order).to(device)  # one small copy per epoch
        for b in range(-(-n // batch_size)):
            if batches == warmup:
                _sync(device)
                start, cpu_start = time.perf_counter(), time.process_time()
                counted_images, counted_generator_steps = 0, generator_steps
            real = images[permutation[b * batch_size : (b + 1) * batch_size]]  # (B, C, H, W) in [-1, 1]
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                with torch.no_grad():
                    fake = generator(torch.randn(real.shape[0], latent_dim, device=device))
                loss = critic_loss(real, fake)
            step(critic_opt, loss)
            if clip is not None:
                with torch.no_grad():
                    for p in critic.parameters():
                        p.clamp_(-clip, clip)
            critic_steps += 1
            if critic_steps % n_critic == 0:
                critic.requires_grad_(False)  # what Lightning's toggled_optimizer does: no critic weight grads
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    loss = generator_loss(critic(generator(torch.randn(real.shape[0], latent_dim, device=device))))
                step(generator_opt, loss)
                critic.requires_grad_(True)
                generator_steps += 1
            batches += 1
            if batches > warmup:
                counted_images += real.shape[0]
            if batches == warmup + steps:
                break
    _sync(device)
    seconds, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    return _rates(counted_images, generator_steps - counted_generator_steps, steps, seconds, cpu_s)


def bench_full_run(cfg: DictConfig) -> float:
    """Wall time of `python -m retina_gans.train experiment=blog ...` for one model, setup included."""
    start = time.perf_counter()
    train(cfg)
    return time.perf_counter() - start
