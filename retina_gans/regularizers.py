"""Critic constraints and penalties, independent of the objective: weight clipping, gradient penalty, R1, spectral
normalization and LeCam. Each may change the critic once when the GAN is built (`attach`), add a term to the critic's
loss from the images (`penalty`) or from the scores the loss already computed (`score_penalty`), or act after each
critic step (`after_step`).

`penalty` gets the critic as a function of images: for a conditional GAN, with the real images' grades bound
(`GAN.critic_loss`), so the gradient penalty's interpolates and R1's real images are scored with those grades.
"""

from typing import Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from retina_gans import losses
from retina_gans.networks import has_batch_norm

Critic = Callable[[Tensor], Tensor]  # images (N, C, H, W) -> scores (N,)


class Regularizer:
    """A critic constraint or penalty; the default of each hook does nothing."""

    double_backward = False  # differentiates through an input gradient: torch.compile cannot compile the critic

    def attach(self, critic: nn.Module) -> None:
        """Called once, when the GAN is built."""

    def penalty(self, critic: Critic, real: Tensor, fake: Tensor, critic_step: int,
                grad_scale: Callable[[], float]) -> tuple[Tensor | None, dict[str, Tensor]]:
        """The weighted term added to the critic's loss at this (1-based) critic step, or None, and values to log.
        `critic`: the critic as the losses see it (`GAN.run_critic`: behind the augmentation when there is one)."""
        return None, {}

    def score_penalty(self, real_scores: Tensor, fake_scores: Tensor) -> tuple[Tensor | None, dict[str, Tensor]]:
        """The weighted term added to the critic's loss from this step's critic scores (N,) of the real and the
        generated batch (with their graph: no second critic pass), or None, and values to log."""
        return None, {}

    def after_step(self, critic: nn.Module) -> None:
        """Called after every critic optimizer step."""


def _per_sample(name: str, critic: nn.Module) -> None:
    if has_batch_norm(critic):
        raise ValueError(f"{name} penalises per-sample critic gradients, which BatchNorm couples across the batch; "
                         "set model.critic.batch_norm=false")


class WeightClipping(Regularizer):
    """Every critic parameter clamped to [-clip_value, clip_value] after each step (Arjovsky et al. 2017)."""

    def __init__(self, clip_value: float) -> None:
        if not clip_value > 0:
            raise ValueError(f"model.clip_value must be > 0 (weights are clamped to [-c, c]), got {clip_value}")
        self.clip_value = clip_value

    @torch.no_grad()
    def after_step(self, critic: nn.Module) -> None:
        c = self.clip_value
        for p in critic.parameters():
            p.clamp_(-c, c)


class GradientPenalty(Regularizer):
    """weight * E[(||grad critic(x_hat)|| - 1)^2] at real/fake interpolates (Gulrajani et al. 2017), logged as
    `gradient_penalty` (unweighted)."""

    double_backward = True

    def __init__(self, weight: float) -> None:
        if not weight >= 0:
            raise ValueError(f"model.gp_weight must be >= 0, got {weight}")
        self.weight = weight

    def attach(self, critic: nn.Module) -> None:
        _per_sample("The gradient penalty", critic)

    def penalty(self, critic: Critic, real: Tensor, fake: Tensor, critic_step: int,
                grad_scale: Callable[[], float]) -> tuple[Tensor | None, dict[str, Tensor]]:
        value = losses.gradient_penalty(critic, real, fake, grad_scale())
        return self.weight * value, {"gradient_penalty": value.detach()}


class R1(Regularizer):
    """gamma / 2 * E[||grad critic(x)||^2] on real images (Mescheder et al. 2018), logged as `r1_penalty`. Lazy with
    `interval` > 1: computed every interval-th critic step and scaled by interval (Karras et al. 2020, sec. B)."""

    double_backward = True

    def __init__(self, gamma: float, interval: int) -> None:
        if not gamma >= 0:
            raise ValueError(f"R1 gamma must be >= 0, got {gamma}")
        if not (isinstance(interval, int) and interval >= 1):
            raise ValueError(f"R1 interval must be an integer >= 1 (critic steps between penalties), got {interval}")
        self.gamma, self.interval = gamma, interval

    def attach(self, critic: nn.Module) -> None:
        _per_sample("R1", critic)

    def penalty(self, critic: Critic, real: Tensor, fake: Tensor, critic_step: int,
                grad_scale: Callable[[], float]) -> tuple[Tensor | None, dict[str, Tensor]]:
        if critic_step % self.interval:
            return None, {}
        value = losses.r1_penalty(critic, real, grad_scale())
        return 0.5 * self.gamma * self.interval * value, {"r1_penalty": value.detach()}


class SpectralNorm(Regularizer):
    """Every conv and linear weight of the critic, and a conditional critic's projection embedding, divided by its
    largest singular value, estimated by one power iteration per forward pass (Miyato et al. 2018; Miyato & Koyama
    2018 for the embedding; torch.nn.utils.parametrizations.spectral_norm)."""

    def attach(self, critic: nn.Module) -> None:
        for module in list(critic.modules()):
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
                spectral_norm(module)


class LeCam(nn.Module, Regularizer):
    """weight * (E[(D(x) - alpha_fake)^2] + E[(D(G(z)) - alpha_real)^2]) (Tseng et al. 2021, eq. 3), logged as
    `lecam_penalty` (unweighted): real scores are pulled toward a moving average of past fake scores and fake scores
    toward one of past real scores, which bounds how far the critic can separate the training images from the
    generated ones. alpha_real and alpha_fake are exponential moving averages of the batch means of the (augmented)
    scores with `decay` per critic step, the first step copying; over DDP ranks the batch means are all-reduced, so
    every rank holds the same anchors. The anchors are buffers: they are in checkpoints and a run resumes exactly.
    The paper's squared form (its code clamps each difference at 0 from one side; the two agree while real scores
    stay above fake ones, the case the term exists for)."""

    def __init__(self, weight: float, decay: float) -> None:
        nn.Module.__init__(self)
        if not weight >= 0:
            raise ValueError(f"model.lecam.weight must be >= 0, got {weight}")
        if not 0 <= decay < 1:
            raise ValueError(f"model.lecam.decay must be in [0, 1), got {decay}")
        self.weight, self.decay = weight, decay
        self.register_buffer("anchors", torch.zeros(2))  # alpha_real, alpha_fake
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # updates so far (0: the next one copies)

    def score_penalty(self, real_scores: Tensor, fake_scores: Tensor) -> tuple[Tensor | None, dict[str, Tensor]]:
        with torch.no_grad():
            means = torch.stack([real_scores.mean(), fake_scores.mean()]).to(self.anchors.dtype)
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(means)
                means /= dist.get_world_size()
            keep = self.decay * (self.steps > 0)  # tensor math, no host sync: 0 on the first step
            self.anchors.mul_(keep).add_((1 - keep) * means)
            self.steps += 1
        alpha_real, alpha_fake = self.anchors.to(real_scores.dtype)
        value = (real_scores - alpha_fake).square().mean() + (fake_scores - alpha_real).square().mean()
        return self.weight * value, {"lecam_penalty": value.detach()}
