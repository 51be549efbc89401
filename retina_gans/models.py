"""The GAN LightningModule (schedule, sampling, logging, metrics) and the named variants, each a class assembled
from parts: an objective (`retina_gans.objectives`) and critic regularizers (`retina_gans.regularizers`). Hybrids need
no class: `_target_: retina_gans.models.GAN` with `objective` and `regularizers` in the config. Any variant may add,
by config, an augmentation of the critic's input (`retina_gans.augment`) and a generator EMA (`retina_gans.ema`).

Counting: Lightning's `trainer.global_step` counts every `optimizer.step()` of both optimizers
(Lightning issue #17958), so `trainer.max_steps` bounds critic + generator steps together. The
schedule is counted here instead: one training batch = one critic step; the generator steps after
every `n_critic`-th critic step, counted across epoch boundaries. One epoch = one pass of the
training data through the critic. `train/critic_steps` and `train/generator_steps` are logged
at each epoch end; the x-axis of step-level curves is the batch (= critic step) counter.
"""

import warnings
from functools import partial
from pathlib import Path
from typing import Any, Callable

import hydra
import lightning as L
import torch
from omegaconf import OmegaConf
from torch import Tensor, nn
from torchmetrics.utilities.distributed import gather_all_tensors

from retina_gans import objectives, regularizers
from retina_gans.augment import Augment
from retina_gans.ema import GeneratorEMA
from retina_gans.metrics import GenerationMetrics, resolve_extractors
from retina_gans.pixels import to_uint8
from retina_gans.sample_grid import write_sample_grid
from retina_gans.training_log import TrainingLog

OptimizerFactory = Callable[..., torch.optim.Optimizer]


def training_extractors(requested: list[str] | str) -> list[str] | str:
    """`auto` during training leaves Inception out on a machine without a GPU: it costs about 0.3 s of CPU per image,
    minutes per validation, every few epochs of a run whose epochs take a second. Asked for by name, it is used."""
    if requested == "auto" and not torch.cuda.is_available():
        warnings.warn("metrics.extractors=auto: Inception left out of training validation on a machine without a GPU "
                      "(minutes per validation on CPU); set metrics.extractors=[retina_v2,retina,inception] to use it, "
                      "or score a checkpoint once with python -m retina_gans.evaluate", stacklevel=2)
        return ["retina_v2", "retina"]
    return requested


class GAN(L.LightningModule):
    """A generator and a critic trained alternately by manual optimization, with an objective and critic regularizers.

    `variant`: how reports show it ({name, color, family}: display name, matplotlib colour, loss family); from the
    variant's conf/model file (absent from checkpoints written before it existed).
    `conditional`: the nets take the DR grade (built with `grades` > 0); training batches are (images, grades) and
    generated batches get grades drawn per `fake_grades` ("train": the train split's frequencies; "uniform").
    `augment`: applied to every critic input (`run_critic`); `ema`: the averaged generator that `generate` draws
    from; `lecam`: LeCam regularization of the critic, after the variant's own regularizers. Each off (None) unless
    the config's `augment`/`ema`/`lecam` groups choose one (and in checkpoints from before).
    """

    def __init__(
        self,
        generator: nn.Module,
        critic: nn.Module,
        generator_optimizer: OptimizerFactory,
        critic_optimizer: OptimizerFactory,
        latent_dim: int,
        n_critic: int,
        n_grid_samples: int,
        metrics: dict[str, Any],
        compile: bool,
        objective: objectives.Objective,
        regularizers: list[regularizers.Regularizer],
        variant: dict[str, str] | None = None,
        conditional: bool = False,  # defaults: configs of checkpoints from before the options
        fake_grades: str = "train",
        augment: Augment | None = None,
        ema: GeneratorEMA | None = None,
        lecam: regularizers.LeCam | None = None,
    ) -> None:
        super().__init__()
        if n_critic < 1:
            raise ValueError(f"model.n_critic must be >= 1 (critic steps per generator step), got {n_critic}")
        self.automatic_optimization = False
        self.generator = generator
        self.critic = critic
        self.objective = objective
        self.lecam = lecam  # a module: its anchors are in the state dict, so in checkpoints
        self.regularizers = list(regularizers) + ([lecam] if lecam is not None else [])
        for regularizer in self.regularizers:
            regularizer.attach(self.critic)
        self.variant = dict(variant or {})
        self.augment = augment
        if augment is not None:
            augment.attach(objective)
        self.ema = ema
        if ema is not None:
            ema.attach(self.generator)  # before compiling: the average stays an eager copy
        self.generator_optimizer = generator_optimizer
        self.critic_optimizer = critic_optimizer
        if compile:  # in place (nn.Module.compile), so state_dict keys and checkpoints are unchanged
            self.generator.compile()
            if not any(r.double_backward for r in self.regularizers):  # torch.compile has no double backward
                self.critic.compile()
        self.latent_dim = latent_dim
        self.n_critic = n_critic
        self.conditional, self.fake_grades = conditional, fake_grades
        if conditional:
            self._init_conditioning()
        self.metrics_config = metrics
        self.extractors = resolve_extractors(training_extractors(metrics["extractors"]), metrics["inception_weights"])
        self.critic_steps = 0
        self.generator_steps = 0
        self.training_log = TrainingLog()
        # Fixed noise, regenerated from a constant seed (not saved): every run and epoch draws the same samples.
        noise = torch.Generator().manual_seed(metrics["noise_seed"])
        self.register_buffer("grid_noise", torch.randn(n_grid_samples, latent_dim, generator=noise), persistent=False)
        self.metrics: GenerationMetrics | None = None
        self.run_config: dict[str, Any] | None = None  # the composed Hydra config, set by `train`
        self._generated: list[Tensor] = []

    def _init_conditioning(self) -> None:
        grades = getattr(self.generator, "grades", 0)
        if not grades or getattr(self.critic, "grades", 0) != grades:
            raise ValueError("model.conditional=true needs nets built with the grade count (model.generator.grades "
                             "and model.critic.grades > 0, as conf/model/_dcgan.yaml sets them)")
        if self.fake_grades not in ("train", "uniform"):
            raise ValueError(f"model.fake_grades must be one of ['train', 'uniform'], got {self.fake_grades!r}")
        # Training images per grade, set from the data in `setup`; saved with the weights, so `sample grades=real`
        # works from a checkpoint alone.
        self.register_buffer("grade_counts", torch.zeros(grades))

    # ---- the parts, called by the training step and by the benchmark's bare loop -------------------------
    def run_critic(self, images: Tensor, grades: Tensor | None = None) -> Tensor:
        """The critic as every loss and penalty sees it: behind the augmentation, when there is one; conditional:
        with the images' grades (N,) (an augmentation moves pixels, never the label)."""
        if self.augment is not None:
            images = self.augment(images)
        return self.critic(images) if grades is None else self.critic(images, grades)

    def critic_loss(self, real: Tensor, fake: Tensor, real_grades: Tensor | None = None,
                    fake_grades: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """The critic's loss on a real and a (detached) fake batch, penalties included, plus extra values to log.

        Conditional: each batch's grades (N,). The penalties see the critic with the real images' grades bound: the
        gradient penalty's interpolates keep them, R1 is taken at the real images."""
        critic = self.run_critic if real_grades is None else partial(self.run_critic, grades=real_grades)
        real_scores, fake_scores = critic(real), self.run_critic(fake, fake_grades)
        loss, extra = self.objective.critic_loss(real_scores, fake_scores)
        if self.augment is not None:
            extra |= self.augment.observe(self.objective, real_scores.detach(), fake_scores.detach())
        for regularizer in self.regularizers:  # each may add a term from the images and one from the scores
            for term, values in (regularizer.penalty(critic, real, fake, self.critic_steps + 1, self._grad_scale),
                                 regularizer.score_penalty(real_scores, fake_scores)):
                if term is not None:
                    loss = loss + term
                extra |= values
        return loss, extra

    def generator_loss(self, fake: Tensor, grades: Tensor | None = None) -> Tensor:
        return self.objective.generator_loss(self.run_critic(fake, grades))

    def constrain_critic(self) -> None:
        """Called after every critic step (weight clipping acts here)."""
        for regularizer in self.regularizers:
            regularizer.after_step(self.critic)

    def end_critic_step(self) -> None:
        """After every critic optimizer step: the critic's constraints, the step count, ADA's adjustment of p."""
        self.constrain_critic()
        self.critic_steps += 1
        if self.augment is not None:
            self.augment.after_critic_step(self.critic_steps)

    def end_generator_step(self, n_images: int) -> None:
        """After every generator optimizer step on n_images generated images (this process's): the count, the EMA
        (whose half-life counts the images of all ranks)."""
        self.generator_steps += 1
        if self.ema is not None:
            self.ema.update(self.generator, n_images * (self._trainer.world_size if self._trainer else 1))

    def _grad_scale(self) -> float:
        """The float16 loss scale (Lightning's scaler under 16-mixed; it syncs), else 1.0: penalties on input
        gradients undo it (PyTorch's AMP recipe)."""
        scaler = getattr(getattr(self._trainer, "precision_plugin", None), "scaler", None)
        return scaler.get_scale() if scaler else 1.0

    # ---- the schedule -------------------------------------------------------------------------
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.critic_optimizer(self.critic.parameters()), self.generator_optimizer(self.generator.parameters())]

    def _outside_autocast(self) -> torch.autocast:
        """Backward and optimizer steps without autocast. Under `*-mixed` precision Lightning runs the whole
        training_step in autocast; backward ops keep their forward dtypes either way (PyTorch recommends leaving
        autocast before backward), but autocast's dispatch on every backward and Adam op cost about 10 % of a
        bf16 step on CPU (measured: 34-38 ms against 32-33 ms per WGAN-GP critic step)."""
        return torch.autocast(self.device.type, enabled=False)

    def _update(self, optimizer: Any, loss: Tensor) -> None:
        """zero_grad, backward, step of one net, outside autocast."""
        with self._outside_autocast():
            optimizer.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            optimizer.step()

    def sample_noise(self, n: int) -> Tensor:
        return torch.randn(n, self.latent_dim, device=self.device)

    def sample_grades(self, n: int) -> Tensor | None:
        """Grades (n,) for a generated batch, drawn per `fake_grades`; None for an unconditional GAN."""
        if not self.conditional:
            return None
        weights = self.grade_counts if self.fake_grades == "train" else torch.ones_like(self.grade_counts)
        return torch.multinomial(weights, n, replacement=True)

    def sample_fakes(self, n: int) -> tuple[Tensor, Tensor | None]:
        """A generated batch (n, C, H, W) in [-1, 1] in the generator's current mode, and its grades (n,) or None."""
        grades = self.sample_grades(n)
        noise = self.sample_noise(n)
        return (self.generator(noise) if grades is None else self.generator(noise, grades)), grades

    def training_step(self, batch: Tensor | tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """One critic step on this batch; one generator step after every n_critic-th critic step.

        Returns the detached losses and the generated batch, for callbacks (the divergence guard) to check.
        """
        real, real_grades = batch if self.conditional else (batch, None)  # (N, C, H, W) in [-1, 1], (N,)
        critic_opt, generator_opt = self.optimizers()
        with torch.no_grad():  # the critic's loss sees the generator only through this detached batch
            fake, fake_grades = self.sample_fakes(real.shape[0])  # (N, C, H, W) in [-1, 1], (N,) or None
        critic_loss, extra = self.critic_loss(real, fake, real_grades, fake_grades)
        self._update(critic_opt, critic_loss)
        self.end_critic_step()
        logged = {"critic_loss": critic_loss.detach(), **extra}

        if self.critic_steps % self.n_critic == 0:
            # The generator's backward passes through the critic; its weights need no gradients. This is the one
            # requires_grad flip that matters (Lightning's toggled_optimizer flips every parameter of both nets,
            # twice per step, and restores them from a dict).
            self.critic.requires_grad_(False)
            try:
                generator_loss = self.generator_loss(*self.sample_fakes(real.shape[0]))
                self._update(generator_opt, generator_loss)
            finally:
                self.critic.requires_grad_(True)
            self.end_generator_step(real.shape[0])
            logged["generator_loss"] = generator_loss.detach()
        self.training_log.add(logged, real.shape[0])
        connector = self.trainer._logger_connector
        if connector.should_update_logs:  # Lightning's own test for writing a step row
            # Straight to the loggers through Lightning's own writer (same keys, step and "epoch" column as
            # `self.log_dict(..., on_step=True)`): `self.log` moves each key's accumulator with `Metric.to` on every
            # call, 2-3 ms of Python per key on this CPU, 0.75 ms of every WGAN batch at log_every_n_steps=10.
            connector.log_metrics({f"train/{k}_step": v for k, v in self.training_log.latest.items()})
        return {"fake": fake, **logged}  # fake: (N, C, H, W), no grad

    def on_train_epoch_end(self) -> None:
        epoch_values = {f"train/{k}_epoch": v for k, v in self.training_log.epoch_means().items()}
        epoch_values |= {"train/critic_steps": float(self.critic_steps), "train/generator_steps": float(self.generator_steps)}
        self.log_dict(epoch_values, on_step=False, on_epoch=True)
        self.training_log.start_epoch()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["gan_steps"] = {"critic": self.critic_steps, "generator": self.generator_steps}
        checkpoint["training_log"] = self.training_log.state_dict()  # mid-epoch: this epoch's sums so far
        if self.run_config is not None:  # lets `evaluate` and `sample` rebuild the nets from the checkpoint alone
            checkpoint["run_config"] = self.run_config

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.critic_steps = checkpoint["gan_steps"]["critic"]
        self.generator_steps = checkpoint["gan_steps"]["generator"]
        if "training_log" in checkpoint:  # absent from checkpoints written before it existed
            self.training_log.load_state_dict(checkpoint["training_log"], self.device)

    @staticmethod
    def from_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> "GAN":
        """Rebuild the trained GAN from a training checkpoint alone (it carries the run's resolved config).

        Weights-only loading (`read_checkpoint`): a checkpoint from anyone runs no code here; a missing, truncated
        or foreign file raises a one-line CheckpointFileError. The stored config may only name our own classes.
        """
        from retina_gans.checkpointing import CheckpointFileError, check_targets, read_checkpoint

        checkpoint = read_checkpoint(path, map_location=map_location, required=("state_dict", "run_config"))
        model_config = OmegaConf.create(check_targets(checkpoint["run_config"]["model"], path))
        model_config.metrics.extractors = ["retina_v2"]  # the nets do not depend on it; avoids a download attempt
        model_config.compile = False  # sampling does not need a compiled net
        gan = hydra.utils.instantiate(model_config)
        try:
            gan.load_state_dict(checkpoint["state_dict"])
        except RuntimeError as error:  # shapes that do not match the stored config: a tampered file
            raise CheckpointFileError(f"checkpoint {path}: its weights do not fit its own config "
                                      f"({str(error).strip().splitlines()[0][:160]})") from None
        gan.run_config = checkpoint["run_config"]
        return gan.eval()

    # ---- samples --------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, noise: Tensor, grades: Tensor | None = None) -> Tensor:
        """Samples in eval mode (BatchNorm uses running statistics), as uint8 (N, C, H, W); from the EMA generator
        when there is one (grids, validation, `sample`, `evaluate` all come here); conditional: of `grades` (N,)."""
        if self.conditional and grades is None:
            raise ValueError("a conditional GAN generates images of given grades: generate(noise, grades)")
        generator = self.ema.generator if self.ema is not None else self.generator
        was_training = generator.training
        generator.eval()
        noise = noise.to(self.device)
        images = to_uint8(generator(noise) if grades is None else generator(noise, grades.to(self.device)))
        generator.train(was_training)
        return images

    def grid_inputs(self, columns: int = 8) -> tuple[Tensor, Tensor | None]:
        """The fixed grid noise, and for a conditional GAN a row per grade: the same `columns` noise vectors in every
        row, so a column shows one z across the grades (grades (R * columns,), row r = grade r)."""
        if not self.conditional:
            return self.grid_noise, None
        noise = self.grid_noise[:columns]
        grades = torch.arange(len(self.grade_counts), device=noise.device)
        return noise.repeat(len(grades), 1), grades.repeat_interleave(len(noise))

    def write_sample_grid(self) -> None:
        """The fixed-noise grid of this epoch, to TensorBoard and to `<run>/samples/epoch_NNNN.png` (conditional: a
        row per grade, grade 0 at the top); when, the `SampleGrid` callback decides."""
        run_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)  # a broadcast: every rank must ask
        if not self.trainer.is_global_zero:
            return
        path = run_dir / "samples" / f"epoch_{self.current_epoch:04d}.png"
        write_sample_grid(self.generate(*self.grid_inputs()), path, self.loggers, "samples", self.current_epoch)

    # ---- metrics in the validation hooks ----------------------------------------------------------
    def setup(self, stage: str) -> None:
        if self.metrics is not None or stage not in ("fit", "validate"):
            return
        data = self.trainer.datamodule
        reference = data.images[data.hparams.reference_split]
        noise = torch.Generator().manual_seed(self.metrics_config["noise_seed"] + 1)
        self.register_buffer(
            "eval_noise", torch.randn(len(reference), self.latent_dim, generator=noise), persistent=False
        )
        if self.conditional:  # one generated image per reference image, of its grade: the same grade mix
            self.register_buffer("eval_grades", data.labels[data.hparams.reference_split].clone(), persistent=False)
            self.grade_counts.copy_(torch.bincount(data.labels["train"], minlength=len(self.grade_counts)))
        self.metrics = GenerationMetrics(self.extractors, self.metrics_config["inception_weights"], reference.shape[1])

    def on_train_epoch_start(self) -> None:
        """The final epoch is always validated, whatever trainer.check_val_every_n_epoch is, so every run ends with
        metrics (a 7-epoch run with validation every 5 epochs reports epoch 7, not 5). Lightning reads the interval
        at each epoch's end; runs bounded only by trainer.max_steps have no known final epoch."""
        trainer = self.trainer
        if trainer.max_epochs not in (None, -1) and trainer.current_epoch == trainer.max_epochs - 1 \
                and trainer.check_val_every_n_epoch is not None:
            trainer.check_val_every_n_epoch = 1

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Generate this shard's share of the evaluation set (the real side is computed once, at the first
        validation after the sanity check)."""
        indices, _ = batch  # (B,), (B, C, H, W) in [-1, 1]
        self._generated.append(self.generate(self.eval_noise[indices],
                                             self.eval_grades[indices] if self.conditional else None))

    def on_validation_epoch_end(self) -> None:
        generated, self._generated = torch.cat(self._generated), []
        if self.trainer.sanity_checking:  # a partial pass: only checks that generation runs
            return
        if self.trainer.world_size > 1:  # contiguous shards, in rank order: the single-process order
            generated = torch.cat(gather_all_tensors(generated))  # (n_total, C, H, W)
        if not self.metrics.has_reference:  # once per run, on the training device
            data = self.trainer.datamodule
            grades = {"reference_labels": data.labels[data.hparams.reference_split],
                      "test_labels": data.labels["test"]} if self.conditional else {}
            self.metrics.set_reference(*(data.images[s].to(self.device)
                                         for s in (data.hparams.reference_split, "train", "test")), **grades)
        # the whole set on every rank: the same values everywhere; conditional: per-grade metrics too
        values = self.metrics.compute(generated, labels=self.eval_grades if self.conditional else None)
        self.log_dict({f"val/{k}": v for k, v in values.items()}, sync_dist=False)


class LSGAN(GAN):
    """Least-squares GAN (Mao et al. 2017): the least-squares objective, no critic constraint."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(objective=objectives.LeastSquares(), regularizers=[], **kwargs)


class WGAN(GAN):
    """WGAN with weight clipping (Arjovsky et al. 2017): every critic parameter is clamped to [-c, c] after each step."""

    def __init__(self, *, clip_value: float, **kwargs: Any) -> None:
        super().__init__(objective=objectives.Wasserstein(), regularizers=[regularizers.WeightClipping(clip_value)],
                         **kwargs)


class WGANGP(GAN):
    """WGAN with gradient penalty (Gulrajani et al. 2017); no weight clipping."""

    def __init__(self, *, gp_weight: float, **kwargs: Any) -> None:
        super().__init__(objective=objectives.Wasserstein(), regularizers=[regularizers.GradientPenalty(gp_weight)],
                         **kwargs)


class NSGAN(GAN):
    """The original GAN with the non-saturating generator loss (Goodfellow et al. 2014): DCGAN's baseline."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(objective=objectives.NonSaturating(), regularizers=[], **kwargs)


class HingeGAN(GAN):
    """Hinge-loss GAN (Lim & Ye 2017), no critic constraint."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(objective=objectives.Hinge(), regularizers=[], **kwargs)


class LSGANGP(GAN):
    """LS-GAN with the WGAN-GP gradient penalty: the hybrid of LS-GAN and WGAN the blog asked for."""

    def __init__(self, *, gp_weight: float, **kwargs: Any) -> None:
        super().__init__(objective=objectives.LeastSquares(), regularizers=[regularizers.GradientPenalty(gp_weight)],
                         **kwargs)


class SNGAN(GAN):
    """Spectrally normalized GAN (Miyato et al. 2018): hinge loss, spectral norm on every critic layer."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(objective=objectives.Hinge(), regularizers=[regularizers.SpectralNorm()], **kwargs)
