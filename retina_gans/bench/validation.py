"""Metric cost: one validation pass per feature extractor, real features extracted once beforehand."""

import time
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from retina_gans.bench.training import _sync
from retina_gans.data import ensure_data_file, load_split
from retina_gans.metrics import GenerationMetrics, memorization_ratio


def random_inception_weights(folder: Path) -> Path:
    """A randomly initialised state dict of torch-fidelity's FID Inception: costs what the real weights cost.

    The constructor loads weights from the given file; an empty file with loading switched off yields the
    bare architecture, which is then saved in the real weights' format (as tests/metrics_fixtures.py does).
    """
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Unloaded(FeatureExtractorInceptionV3):
        def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
            return None

    empty = folder / "empty.pth"
    torch.save({}, empty)
    torch.manual_seed(0)
    network = Unloaded("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    for module in network.modules():  # keeps activations alive through ~90 layers, so features differ
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    path = folder / "random-inception.pth"
    torch.save(network.state_dict(), path)
    return path


def bench_validation(
    cfg: DictConfig, extractor: str, weights: str | None, n: int, device: torch.device
) -> dict[str, Any]:
    """One validation pass as GAN.validation_step/on_validation_epoch_end do it: n generated images through the
    extractor + FID/KID/IS + memorization; the n real ones are extracted once beforehand (cached for the run)."""
    metrics_config = {**cfg.metrics, "extractors": [extractor], "inception_weights": weights}
    gan = hydra.utils.instantiate(cfg.model, metrics=metrics_config).to(device)  # for its sampling path
    path = ensure_data_file(cfg.data.root, cfg.data.size, False, cfg.data.verify_md5)
    split = {s: load_split(path, s, cfg.data.size, cfg.data.channels)[0].to(device) for s in ("train", "test")}
    real = split["train"][:n]  # uint8 (n, C, H, W)
    noise = torch.randn(n, cfg.model.latent_dim, generator=torch.Generator().manual_seed(0)).to(device)
    metrics = GenerationMetrics([extractor], weights, cfg.data.channels, n).to(device)
    start = time.perf_counter()
    for chunk in real.split(cfg.data.eval_batch_size):
        metrics.update(chunk, real=True)
    _sync(device)
    real_s = time.perf_counter() - start
    passes = [_validation_pass(gan, metrics, noise, split, cfg.data.eval_batch_size, device) for _ in range(2)]
    # a third pass, timed piece by piece (torchmetrics' compute per metric, as GenerationMetrics.compute calls it)
    pieces: dict[str, float] = {}
    clock = _Clock(device)
    generated = [gan.generate(z) for z in noise.split(cfg.data.eval_batch_size)]
    pieces["generate"] = clock()
    for images in generated:
        metrics.update(images, real=False)
    pieces["extract"] = clock()
    for key, group in (("fid", metrics.fid), ("kid", metrics.kid), ("is", metrics.inception_score)):
        group[extractor].compute()
        pieces[key] = clock()
    memorization_ratio(torch.cat(generated), split["train"], split["test"])
    pieces["memorization"] = clock()
    metrics.reset_fake()
    # the first pass also pays one-off costs (lazy init, allocator warm-up): pass_s is the second
    return {"n_samples": n, "real_features_once_s": real_s, "first_pass_s": passes[0][0], "pass_s": passes[1][0],
            "pass_breakdown_s": pieces, "metrics_computed": sorted(passes[1][1])}


class _Clock:
    """Seconds since the previous call (device synchronised)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.last = device, time.perf_counter()

    def __call__(self) -> float:
        _sync(self.device)
        now = time.perf_counter()
        elapsed, self.last = now - self.last, now
        return elapsed


def _validation_pass(gan: Any, metrics: GenerationMetrics, noise: torch.Tensor, split: dict[str, torch.Tensor],
                     batch_size: int, device: torch.device) -> tuple[float, list[str]]:
    """Seconds for generate -> extract -> FID/KID/IS -> memorization -> reset_fake, and the metric names."""
    start = time.perf_counter()
    generated = [gan.generate(z) for z in noise.split(batch_size)]
    for images in generated:
        metrics.update(images, real=False)
    values = metrics.compute()
    values["memorization"] = memorization_ratio(torch.cat(generated), split["train"], split["test"])
    metrics.reset_fake()
    _sync(device)
    return time.perf_counter() - start, list(values)
