"""Score generated images with every registered metric, by one protocol, whoever made them.

    python -m retina_gans.evaluate ckpt_path=<run>/checkpoints/last.ckpt [n_samples=N reference_split=test]
    python -m retina_gans.evaluate samples=path.npz            # any framework's samples

`samples=` takes an .npz with an `images` array (what `sample` writes; or its only array): uint8 in MedMNIST's
layout, (N, H, W) grayscale or (N, H, W, C), or float (N, C, H, W) in [-1, 1]. The JSON written holds the metrics
and the protocol that produced them (extractors, sample count, reference split, noise seed, source).
"""

import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from retina_gans.checkpointing import CheckpointFileError
from retina_gans.data import SPLITS, DataFileError, ensure_data_file, load_split
from retina_gans.metrics import METRICS, GenerationMetrics, InceptionWeightsError
from retina_gans.overrides import run_cli
from retina_gans.pixels import to_uint8

log = logging.getLogger(__name__)
# FID and KID in a 128-d embedding: fewer samples than this give a singular covariance and an FID dominated by bias
MIN_SAMPLES = 200
SIZES = (28, 64, 128, 224)  # MedMNIST's image sizes


class EvaluateError(ValueError):
    """An `evaluate` argument it cannot use; the message names what was found and what is expected."""


def load_samples(path: str | os.PathLike) -> Tensor:
    """The images of an .npz as uint8 (N, C, H, W), or a one-line EvaluateError saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise EvaluateError(f"samples={path}: {'is a folder' if path.is_dir() else 'no such file'}; "
                            "pass an .npz file, e.g. the one `python -m retina_gans.sample` writes")
    try:
        with np.load(path, allow_pickle=False) as archive:  # never unpickles: an .npz cannot run code here
            keys = list(archive.keys())
            if "images" in keys:
                array = archive["images"]
            elif len(keys) == 1:
                array = archive[keys[0]]
            else:
                raise EvaluateError(f"samples={path} holds arrays {keys} but no `images`; name the array `images`")
    except EvaluateError:
        raise
    except Exception as error:  # not a zip, truncated, object arrays (pickles refused), ...
        raise EvaluateError(f"samples={path} is not a readable .npz of numeric arrays ({type(error).__name__}: "
                            f"{str(error).splitlines()[0] if str(error) else ''})") from None
    expected = ("expected uint8 (N, H, W) or (N, H, W, C) in MedMNIST's layout, or float (N, C, H, W) in [-1, 1], "
                f"with H = W in {SIZES} and C 1 or 3")
    shape = tuple(array.shape)
    if array.dtype == np.uint8:
        if array.ndim == 3:
            images = torch.from_numpy(array.copy())[:, None]  # (N, 1, H, W)
        elif array.ndim == 4 and shape[3] in (1, 3):
            images = torch.from_numpy(array.copy()).permute(0, 3, 1, 2).contiguous()
        else:
            raise EvaluateError(f"samples={path}: uint8 array of shape {shape}; {expected}")
    elif np.issubdtype(array.dtype, np.floating):
        if array.ndim != 4 or shape[1] not in (1, 3):
            raise EvaluateError(f"samples={path}: {array.dtype} array of shape {shape}; {expected}")
        if not np.isfinite(array).all():
            raise EvaluateError(f"samples={path}: the float images hold NaN or Inf values")
        low, high = float(array.min()), float(array.max())
        if low < -1.001 or high > 1.001:
            raise EvaluateError(f"samples={path}: float values in [{low:.3g}, {high:.3g}]; expected [-1, 1] "
                                "(for [0, 1] images use 2 * x - 1; for 0-255 store uint8)")
        images = to_uint8(torch.from_numpy(array.astype(np.float32)))
    else:
        raise EvaluateError(f"samples={path}: dtype {array.dtype}; {expected}")
    if images.shape[2] != images.shape[3] or images.shape[2] not in SIZES:
        raise EvaluateError(f"samples={path}: images of {images.shape[2]}x{images.shape[3]} pixels; {expected}")
    return images


def _check_count(n: int, what: str) -> None:
    if n < MIN_SAMPLES:
        raise EvaluateError(f"{what}: {n} images; the metrics need at least {MIN_SAMPLES} (FID's covariance is "
                            f"{128}-dimensional); generate more")


def evaluate_images(images: Tensor, reference_split: str, extractors: list[str] | str, inception_weights: str | None,
                    data_root: str, verify_md5: bool, device: str, c2st: bool,
                    labels: Tensor | None = None) -> dict[str, Any]:
    """Every registered metric of uint8 `images` (N, C, H, W) against the real `reference_split`; with the grade
    each image was generated as (`labels` (N,), conditional GANs), the per-grade metrics too."""
    size, channels = images.shape[2], images.shape[1]
    path = ensure_data_file(data_root, size, download=False, verify_md5=verify_md5)
    split = {name: load_split(path, name, size, channels) for name in {reference_split, "train", "test"}}
    metrics = GenerationMetrics(extractors, inception_weights, channels).to(device)
    grades = {} if labels is None else {"reference_labels": split[reference_split][1], "test_labels": split["test"][1]}
    metrics.set_reference(*(split[s][0].to(device) for s in (reference_split, "train", "test")), **grades)
    names = [m for m, spec in METRICS.items() if spec.every_validation or (c2st and m == "c2st")]
    values = {k: float(v) for k, v in metrics.compute(images.to(device), names, labels).items()}
    return {"metrics": values, "extractors": metrics.names, "n_reference": len(split[reference_split][0])}


def _check_out(out: Path, overwrite: bool) -> None:
    if out.is_dir():
        raise EvaluateError(f"out={out} is a folder; name a .json file")
    if out.exists() and not overwrite:
        raise EvaluateError(f"out={out} exists; add overwrite=true to replace it, or choose another out")
    folder = out.parent if out.parent.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not os.access(folder, os.W_OK):
        raise EvaluateError(f"cannot write to {folder}; pass out=<a writable path>.json")


def run(cfg: DictConfig) -> tuple[dict[str, Any], Path]:
    """Check every argument, then score; returns the result and the file to write."""
    ckpt = cfg.get("ckpt_path")
    samples = cfg.get("samples")
    if bool(ckpt) == bool(samples):
        raise EvaluateError("give exactly one of ckpt_path=<run>/checkpoints/last.ckpt or samples=<file>.npz")
    if cfg.reference_split not in SPLITS:
        raise EvaluateError(f"reference_split must be one of {list(SPLITS)}, got {cfg.reference_split!r}")
    for key in ("batch_size",):
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < 1:
            raise EvaluateError(f"{key} must be an integer >= 1, got {cfg[key]!r}")
    if cfg.n_samples is not None and (not isinstance(cfg.n_samples, int) or isinstance(cfg.n_samples, bool)
                                      or cfg.n_samples < MIN_SAMPLES):
        raise EvaluateError(f"n_samples must be an integer >= {MIN_SAMPLES} (or null: as many as the reference "
                            f"split has images), got {cfg.n_samples!r}")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    source = Path(to_absolute_path(str(ckpt or samples)))
    if samples:
        images = load_samples(source)
        if cfg.n_samples is not None:
            if cfg.n_samples > len(images):
                raise EvaluateError(f"n_samples={cfg.n_samples} but samples={samples} holds {len(images)} images")
            images = images[: cfg.n_samples]
        _check_count(len(images), f"samples={samples}")
        default_out = source.with_name(f"{source.stem}.eval-{cfg.reference_split}-n{len(images)}.json")
        protocol_source: dict[str, Any] = {"samples": str(source)}
        labels = None
    else:
        from retina_gans.models import GAN
        from retina_gans.sample import generate_samples, grade_labels

        gan = GAN.from_checkpoint(source, map_location=device)
        data = gan.run_config["data"]
        n = cfg.n_samples or {"train": 1080, "val": 120, "test": 400}[cfg.reference_split]
        _check_count(n, f"n_samples={n}")
        # the noise seed names the draw (seed 0, the default, keeps the name results had before it was added)
        draw = f"-noise{cfg.noise_seed}" if cfg.noise_seed != 0 else ""
        default_out = source.parent / f"eval-{source.stem}-{cfg.reference_split}-n{n}{draw}.json"
        protocol_source = {"checkpoint": str(source), "model": gan.run_config["model"]["_target_"],
                           "noise_seed": cfg.noise_seed, "ema": gan.ema is not None}
        images = None
        labels = grade_labels(gan, None, n)  # conditional: the train split's grade proportions; else None
    out = Path(to_absolute_path(cfg.out)) if cfg.out else default_out
    _check_out(out, cfg.overwrite)
    if images is None:
        images = generate_samples(gan, n, cfg.noise_seed, cfg.batch_size, labels)
        if images.shape[1] != data["channels"]:
            raise EvaluateError("the checkpoint's generator does not make its configured channel count")
    result = evaluate_images(images, cfg.reference_split, cfg.extractors, cfg.inception_weights,
                             to_absolute_path(cfg.data.root), cfg.data.verify_md5, device, cfg.c2st,
                             labels)
    return {
        **protocol_source,
        "protocol": {"n_samples": len(images), "reference_split": cfg.reference_split,
                     "n_reference": result["n_reference"], "extractors": result["extractors"],
                     "channels": images.shape[1], "size": images.shape[2], "c2st": bool(cfg.c2st)},
        "metrics": result["metrics"],
    }, out


def _write_json(obj: dict, out: Path) -> None:
    """Atomically: a temporary file beside `out`, renamed when complete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    try:
        result, out = run(cfg)
        _write_json(result, out)
    except (EvaluateError, CheckpointFileError, DataFileError, InceptionWeightsError) as error:
        log.error("error: %s", error)
        sys.exit(2)
    width = max(map(len, result["metrics"]))
    lines = [f"  {k:<{width}}  {v:.4g}" for k, v in result["metrics"].items()]
    log.info("%s\nwritten to %s", "\n".join(lines), out)


if __name__ == "__main__":
    run_cli(main)  # a job folder's path (with '=' and ',') works unquoted
