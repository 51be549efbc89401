"""Metric cost: one validation pass (every per-validation metric of the registry), the real side computed once."""

import time
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from retina_gans.bench.training import _sync
from retina_gans.data import ensure_data_file, load_split
from retina_gans.metrics import GenerationMetrics


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
    cfg: DictConfig, extractors: list[str], weights: str | None, n: int, device: torch.device
) -> dict[str, Any]:
    """One validation pass as GAN.on_validation_epoch_end does it: n generated images through the extractors and
    every per-validation metric of the registry; the real side is computed once beforehand (cached for the run)."""
    metrics_config = {**cfg.metrics, "extractors": list(extractors), "inception_weights": weights}
    gan = hydra.utils.instantiate(cfg.model, metrics=metrics_config).to(device)  # for its sampling path
    path = ensure_data_file(cfg.data.root, cfg.data.size, False, cfg.data.verify_md5)
    loaded = {s: load_split(path, s, cfg.data.size, cfg.data.channels) for s in ("train", "test")}
    split = {s: images.to(device) for s, (images, _) in loaded.items()}
    noise = torch.randn(n, cfg.model.latent_dim, generator=torch.Generator().manual_seed(0)).to(device)
    # conditional: each generated image of its reference image's grade, and the per-grade metrics, as validation does
    grades = loaded["train"][1][:n] if gan.conditional else None
    labels = {"reference_labels": grades, "test_labels": loaded["test"][1]} if gan.conditional else {}
    metrics = GenerationMetrics(list(extractors), weights, cfg.data.channels).to(device)
    clock = _Clock(device)
    metrics.set_reference(split["train"][:n], split["train"], split["test"], **labels)
    real_s = clock()
    passes = [_validation_pass(gan, metrics, noise, cfg.data.eval_batch_size, device, grades) for _ in range(2)]
    # a third pass, timed piece by piece: generation, each extractor, each registered metric
    pieces: dict[str, float] = {}
    clock()
    generated = _generate(gan, noise, cfg.data.eval_batch_size, grades)
    pieces["generate"] = clock()
    for name, extractor in metrics.extractors.items():
        with torch.no_grad():
            for chunk in generated.split(metrics.batch_size):
                extractor(chunk)
        pieces[f"extract/{name}"] = clock()
    for name in metrics.metric_names:
        metrics.compute(generated, [name], grades)  # includes one extraction: subtracted below
        pieces[f"metric/{name}"] = max(0.0, clock() - sum(v for k, v in pieces.items() if k.startswith("extract/")))
    # the first pass also pays one-off costs (lazy init, allocator warm-up): pass_s is the second
    return {"n_samples": n, "extractors": list(extractors), "real_features_once_s": real_s,
            "first_pass_s": passes[0][0], "pass_s": passes[1][0], "pass_breakdown_s": pieces,
            "metrics_computed": sorted(passes[1][1])}


class _Clock:
    """Seconds since the previous call (device synchronised)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.last = device, time.perf_counter()

    def __call__(self) -> float:
        _sync(self.device)
        now = time.perf_counter()
        elapsed, self.last = now - self.last, now
        return elapsed


def _generate(gan: Any, noise: torch.Tensor, batch_size: int, grades: torch.Tensor | None) -> torch.Tensor:
    if grades is None:
        return torch.cat([gan.generate(z) for z in noise.split(batch_size)])
    return torch.cat([gan.generate(z, g) for z, g in zip(noise.split(batch_size), grades.split(batch_size))])


def _validation_pass(gan: Any, metrics: GenerationMetrics, noise: torch.Tensor, batch_size: int,
                     device: torch.device, grades: torch.Tensor | None = None) -> tuple[float, list[str]]:
    """Seconds for generate -> extract -> every per-validation metric, and the metric keys."""
    start = time.perf_counter()
    generated = _generate(gan, noise, batch_size, grades)
    values = metrics.compute(generated, labels=grades)
    _sync(device)
    return time.perf_counter() - start, list(values)
