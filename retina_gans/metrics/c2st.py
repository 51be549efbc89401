"""Classifier two-sample test (Lopez-Paz & Oquab 2017): can a small CNN tell generated from real images?

A fresh CNN is trained on one half of each set to label real 1 and generated 0 and scored on the other halves:
held-out accuracy 0.5 means the sets cannot be told apart; 1.0 that every image gives itself away. Too costly
for every validation (a training run of its own, a few seconds on a CPU), so `evaluate` and the report run it.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retina_gans.pixels import to_model_range

EPOCHS = 15
BATCH_SIZE = 64


def _critic(channels: int) -> nn.Module:
    """A small conv net: 28x28 -> 14 -> 7 -> one logit (any input size: global average pool)."""
    def block(c_in: int, c_out: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.LeakyReLU(0.2), nn.AvgPool2d(2))
    return nn.Sequential(block(channels, 32), block(32, 64), nn.Conv2d(64, 64, 3, padding=1), nn.LeakyReLU(0.2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 1))


def c2st_accuracy(real: Tensor, fake: Tensor, seed: int = 0, epochs: int = EPOCHS) -> Tensor:
    """Held-out accuracy of a CNN telling uint8 `real` (N, C, H, W) from uint8 `fake` (M, C, H, W); equal numbers
    of each (the smaller count), half of each to train, half to test. Deterministic for a seed; global RNG untouched."""
    n = min(len(real), len(fake)) // 2 * 2
    if n < 20:
        raise ValueError(f"the two-sample test needs at least 20 images of each set, got {len(real)} and {len(fake)}")
    generator = torch.Generator().manual_seed(seed)
    real = to_model_range(real[torch.randperm(len(real), generator=generator)[:n]].cpu())
    fake = to_model_range(fake[torch.randperm(len(fake), generator=generator)[:n]].cpu())
    half = n // 2
    x_train, x_test = torch.cat([real[:half], fake[:half]]), torch.cat([real[half:], fake[half:]])
    y = torch.cat([torch.ones(half), torch.zeros(half)])  # the same labels for both halves
    with torch.random.fork_rng(devices=[]), torch.enable_grad():  # callers score metrics under no_grad
        torch.manual_seed(seed)
        net = _critic(real.shape[1])
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
        for _ in range(epochs):
            order = torch.randperm(len(x_train), generator=generator)
            for i in range(0, len(order), BATCH_SIZE):
                idx = order[i : i + BATCH_SIZE]
                loss = F.binary_cross_entropy_with_logits(net(x_train[idx]).squeeze(1), y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        with torch.no_grad():
            predicted = torch.cat([net(chunk).squeeze(1) for chunk in x_test.split(256)]) > 0
    return (predicted == y.bool()).float().mean()
