"""A short run's final weights are pinned: speed work and refactors must not change what a seed produces.

Recorded with the code of commit 4ded04d (before issue 13's speed work and issue 14's parts), on this project's
development machine (torch 2.14 CPU, AVX512, 2 threads). CPU kernels may round differently on another ISA or
thread count, so the exact digest is asserted only where the recording machine's kernels are; elsewhere the
per-tensor sums must agree to 1e-4 (a changed schedule, RNG draw or loss moves them by far more).
"""

import hashlib

import pytest
import torch

from retina_gans.train import build

# model -> (sha256 of the nets' state_dict tensors (weights, BatchNorm statistics) in key order, sum of all entries as float64)
PINNED = {
    "lsgan": ("4a4a6d83cab94fcf707faba5afea4f490f3e8f0ffeaa40018c192f61a4954109", 168.79008010730968),
    "wgan": ("4e66da87d8297275abdacbeffeda8d46b57d5a604758ca212aa7d8b1781daff1", 70.14874041218991),
    "wgan_gp": ("ab0c4ce5235aa5655485ed5cfc7b127072b3d35c5f620651285a4ece41036b4f", 70.41546828765695),
}
RECORDED_ON = ("2.14", "AVX512", 2)  # torch major.minor, CPU capability, threads


def digest(state: dict[str, torch.Tensor]) -> tuple[str, float]:
    h = hashlib.sha256()
    total = 0.0
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(key.encode())
        h.update(t.numpy().tobytes())
        total += float(t.double().sum())
    return h.hexdigest(), total


def same_kernels() -> bool:
    version = ".".join(torch.__version__.split(".")[:2])
    return (version, torch.backends.cpu.get_cpu_capability(), torch.get_num_threads()) == RECORDED_ON


@pytest.mark.parametrize("model", sorted(PINNED))
def test_short_run_final_weights_are_pinned(model, fast_config):
    # 2 epochs of 9 batches (128, the last 56): 18 critic steps; the WGANs' generator steps after every 5th.
    cfg = fast_config(model, "trainer.max_epochs=2", "data.batch_size=128", "seed=3")
    datamodule, gan, trainer = build(cfg)
    trainer.fit(gan, datamodule=datamodule)
    nets = {k: v for k, v in gan.state_dict().items() if k.startswith(("generator.", "critic."))}
    sha, total = digest(nets)
    expected_sha, expected_total = PINNED[model]
    if same_kernels():
        assert sha == expected_sha
    assert total == pytest.approx(expected_total, rel=1e-4)
