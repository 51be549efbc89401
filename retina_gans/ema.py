"""An exponential moving average of the generator (Yazici et al. 2019; Karras et al. 2020's `G_ema`), the generator
that draws the sample grids, the validation metrics, `sample` and `evaluate` when it is switched on (`ema=stylegan2`).
"""

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn


class GeneratorEMA(nn.Module):
    """Weights averaged over the generator's steps, with a half-life counted in generated images and a ramp-up.

    After each generator step of a batch of n images, as stylegan2-ada's training loop does:
        half_life = min(half_life_images, ramp_up * images_before_this_step)   (ramp_up null: half_life_images)
        beta = 0.5 ** (n / half_life);  ema = beta * ema + (1 - beta) * generator
    so with the ramp-up the first step copies the generator (beta = 0) and early steps forget fast, when the
    generator's first weights are worth nothing. Images are the generator's own batches (a step of a global
    batch of 64 counts 64 whatever n_critic is): the half-life is then the same number of generator updates
    for every variant.

    BatchNorm buffers are averaged with the same beta, not copied (stylegan2-ada copies buffers, but its generator
    has no BatchNorm): a running mean or variance is a smooth function of the weights, so to first order the
    average of the generator's statistics over the window is the statistics of the averaged weights, while a copy
    would be the statistics of the latest weights, which the averaged generator does not have. Integer buffers
    (`num_batches_tracked`) are copied.

    Not `torch.optim.swa_utils.AveragedModel`: its `update_parameters` reads its step counter back to the host
    twice per call (a device sync each generator step on a GPU), `get_ema_multi_avg_fn` fixes one decay (no
    ramp-up), and with `use_buffers` it would average integer buffers. Here the image count is a Python int
    (saved through `get_extra_state`, so checkpoints resume it exactly) and an update is two fused foreach ops.
    """

    def __init__(self, half_life_images: float, ramp_up: float | None) -> None:
        super().__init__()
        if not (isinstance(half_life_images, (int, float)) and half_life_images > 0 and math.isfinite(half_life_images)):
            raise ValueError(f"model.ema.half_life_images must be a number > 0, got {half_life_images!r}")
        if ramp_up is not None and not (isinstance(ramp_up, (int, float)) and ramp_up > 0):
            raise ValueError(f"model.ema.ramp_up must be null or a number > 0, got {ramp_up!r}")
        self.half_life_images, self.ramp_up = float(half_life_images), ramp_up
        self.images = 0  # generated images of the generator steps averaged so far
        self.generator: nn.Module | None = None

    def attach(self, generator: nn.Module) -> None:
        """Called once, when the GAN is built (before any compile): the average starts as a copy of the generator."""
        self.generator = copy.deepcopy(generator).requires_grad_(False)

    def beta(self, n_images: int) -> float:
        """The weight of the old average at a step of n_images, given the images counted so far."""
        half_life = self.half_life_images
        if self.ramp_up is not None:
            half_life = min(half_life, self.ramp_up * self.images)
        return 0.5 ** (n_images / half_life) if half_life > 0 else 0.0

    @torch.no_grad()
    def update(self, generator: nn.Module, n_images: int) -> None:
        """Average in the generator's weights after one of its steps on n_images images (its global batch)."""
        beta = self.beta(n_images)
        averaged, current = self._tensors(generator)
        if averaged[0]:  # weights and floating-point buffers
            torch._foreach_lerp_(averaged[0], current[0], 1.0 - beta)
        if averaged[1]:  # integer buffers
            torch._foreach_copy_(averaged[1], current[1])
        self.images += n_images

    def _tensors(self, generator: nn.Module) -> tuple[tuple[list[Tensor], list[Tensor]], ...]:
        """([averaged float tensors], [averaged integer tensors]), and the generator's, in the same order."""
        mine = [*self.generator.parameters(), *self.generator.buffers()]
        theirs = [*generator.parameters(), *generator.buffers()]
        floating = [t.is_floating_point() for t in mine]
        split = lambda ts: ([t.detach() for t, f in zip(ts, floating) if f],  # noqa: E731
                            [t.detach() for t, f in zip(ts, floating) if not f])
        return split(mine), split(theirs)

    def get_extra_state(self) -> dict[str, Any]:
        return {"images": self.images}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.images = int(state["images"])
