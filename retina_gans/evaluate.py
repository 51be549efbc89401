"""Score a checkpoint with the same metrics as validation, for any sample count and reference split.

`python -m retina_gans.evaluate ckpt_path=... [n_samples=N reference_split=test]` writes a JSON with
the metrics and the protocol that produced them (extractors, sample count, split, noise seed).
"""

import json
import logging
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from retina_gans.data import SPLITS, ensure_data_file, load_split
from retina_gans.metrics import GenerationMetrics, memorization_ratio
from retina_gans.models import GAN
from retina_gans.sample import generate_samples

log = logging.getLogger(__name__)


def evaluate_checkpoint(
    ckpt_path: str,
    n_samples: int | None,
    reference_split: str,
    extractors: list[str] | str,
    inception_weights: str | None,
    data_root: str,
    verify_md5: bool,
    noise_seed: int,
    batch_size: int,
    device: str,
) -> dict[str, Any]:
    """Metrics of `n_samples` generated images against the real `reference_split`, plus memorization."""
    if reference_split not in SPLITS:
        raise ValueError(f"reference_split must be one of {SPLITS}, got {reference_split!r}")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    gan = GAN.from_checkpoint(ckpt_path, map_location=device)
    data = gan.run_config["data"]
    path = ensure_data_file(data_root, data["size"], download=False, verify_md5=verify_md5)
    split = {name: load_split(path, name, data["size"], data["channels"])[0] for name in {reference_split, "train", "test"}}
    reference = split[reference_split]
    n = n_samples or len(reference)
    if n < 2:
        raise ValueError(f"n_samples must be >= 2 (FID needs a covariance), got {n}")
    metrics = GenerationMetrics(extractors, inception_weights, data["channels"], n).to(device)
    for chunk in reference.split(batch_size):
        metrics.update(chunk.to(device), real=True)
    generated = generate_samples(gan, n, noise_seed, batch_size)  # uint8 (n, C, H, W) on the CPU
    for chunk in generated.split(batch_size):
        metrics.update(chunk.to(device), real=False)
    values = {k: float(v) for k, v in metrics.compute().items()}
    values["memorization"] = float(memorization_ratio(generated, split["train"], split["test"]))
    return {
        "checkpoint": str(ckpt_path),
        "model": gan.run_config["model"]["_target_"],
        "protocol": {"n_samples": n, "reference_split": reference_split, "n_reference": len(reference),
                     "extractors": metrics.names, "noise_seed": noise_seed},
        "metrics": values,
    }


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    ckpt = Path(to_absolute_path(cfg.ckpt_path))
    result = evaluate_checkpoint(
        str(ckpt), cfg.n_samples, cfg.reference_split, cfg.extractors, cfg.inception_weights,
        to_absolute_path(cfg.data_root), cfg.verify_md5, cfg.noise_seed, cfg.batch_size, cfg.device,
    )
    n = result["protocol"]["n_samples"]
    out = Path(to_absolute_path(cfg.out)) if cfg.out else ckpt.parent / f"eval-{ckpt.stem}-{cfg.reference_split}-n{n}.json"
    out.write_text(json.dumps(result, indent=2))
    log.info("%s\nwritten to %s", json.dumps(result["metrics"], indent=2), out)


if __name__ == "__main__":
    main()
