"""All GAN loss math, as pure functions of critic scores; the training loop knows none of it."""

from typing import Callable

import torch
from torch import Tensor
from torch.nn import functional as F


def least_squares_critic(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    """LS-GAN critic loss with targets real=1, fake=0 (Mao et al. 2017, eq. 9 with a=0, b=c=1)."""
    return 0.5 * ((real_scores - 1.0).square().mean() + fake_scores.square().mean())


def least_squares_generator(fake_scores: Tensor) -> Tensor:
    """LS-GAN generator loss: push fake scores to the real target 1 (Mao et al. 2017)."""
    return 0.5 * (fake_scores - 1.0).square().mean()


def wasserstein_estimate(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    """E[critic(real)] - E[critic(fake)]: the critic's estimate of the Wasserstein-1 distance (Arjovsky et al. 2017)."""
    return real_scores.mean() - fake_scores.mean()


def wasserstein_critic(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    """The critic maximises the Wasserstein estimate, so it minimises its negative."""
    return -wasserstein_estimate(real_scores, fake_scores)


def wasserstein_generator(fake_scores: Tensor) -> Tensor:
    """The generator raises the critic's score of its samples: -E[critic(fake)]."""
    return -fake_scores.mean()


def non_saturating_critic(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    """Binary cross-entropy of real=1, fake=0 on logits: softplus(-real) + softplus(fake) (Goodfellow et al. 2014)."""
    return F.softplus(-real_scores).mean() + F.softplus(fake_scores).mean()


def non_saturating_generator(fake_scores: Tensor) -> Tensor:
    """-log sigmoid(critic(fake)): the generator loss that does not saturate early (Goodfellow et al. 2014, sec. 3)."""
    return F.softplus(-fake_scores).mean()


def hinge_critic(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    """E[relu(1 - critic(real))] + E[relu(1 + critic(fake))] (Lim & Ye 2017; Miyato et al. 2018, eq. 16)."""
    return F.relu(1.0 - real_scores).mean() + F.relu(1.0 + fake_scores).mean()


def hinge_generator(fake_scores: Tensor) -> Tensor:
    """-E[critic(fake)], as the Wasserstein generator (Miyato et al. 2018, eq. 17)."""
    return -fake_scores.mean()


def r1_penalty(critic: Callable[[Tensor], Tensor], real: Tensor, grad_scale: float = 1.0) -> Tensor:
    """E[||grad_x critic(x)||^2] at real images (Mescheder et al. 2018, eq. 9, without the gamma / 2 factor).

    `grad_scale`: as in `gradient_penalty`, the float16 loss scale (1.0 otherwise).
    """
    real = real.detach().requires_grad_(True)  # (N, C, H, W)
    (grads,) = torch.autograd.grad(critic(real).sum() * grad_scale, real, create_graph=True)
    return (grads.float() / grad_scale).flatten(1).square().sum(1).mean()


def gradient_penalty(critic: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor, grad_scale: float = 1.0) -> Tensor:
    """E[(||grad_x critic(x)||_2 - 1)^2] at random interpolates of real and fake (Gulrajani et al. 2017, eq. 3).

    Under float16 mixed precision the scores are multiplied by the loss scaler's `grad_scale`
    before differentiating and the gradients divided by it again (PyTorch's AMP recipe for
    gradient penalties), so small gradients do not underflow; pass 1.0 otherwise.
    """
    alpha = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device, dtype=real.dtype)
    interpolates = (alpha * real + (1.0 - alpha) * fake).requires_grad_(True)  # (N, C, H, W)
    scores = critic(interpolates)
    (grads,) = torch.autograd.grad(scores.sum() * grad_scale, interpolates, create_graph=True)
    grads = grads.float() / grad_scale
    return (grads.flatten(1).norm(2, dim=1) - 1.0).square().mean()
