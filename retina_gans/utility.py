"""Do a conditional GAN's images help a diabetic-retinopathy grader? Train fresh grade classifiers on real, synthetic
and mixed training sets and test each on the real test split (train on synthetic, test on real; augmentation).

    python -m retina_gans.utility ckpt_path=<run>/checkpoints/last.ckpt [seeds=5 epochs=8 width=8]

Settings (each classifier: `retina_classifier.fit_classifier`, the project's recipe, selected on the real val split,
never on test; mean and sd over `seeds` classifier seeds; the synthetic images are the same for every seed):
- `real`: the real train split only, the baseline;
- `synthetic`: synthetic images only, as many and with the same grade counts as the real train split (TSTR);
- `real+balance`: real, plus synthetic images topping every grade up to the largest grade's count;
- `real+equal`: real, plus as many synthetic images again, with the real grade counts.
Test metrics are MedMNIST's: accuracy and the macro one-vs-rest AUC of the softmax.
"""

import contextlib
import itertools
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import hydra
import torch
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from retina_gans.checkpointing import CheckpointFileError
from retina_gans.data import SPLITS, DataFileError, ensure_data_file, load_split
from retina_gans.metrics.retina_classifier import INPUT_SIZE, N_CLASSES, fit_classifier
from retina_gans.overrides import run_cli
from retina_gans.pixels import to_model_range

log = logging.getLogger(__name__)

Sampler = Callable[[Tensor], Tensor]  # grades (n,) int64 -> uint8 images (n, C, H, W) of those grades
SETTINGS = ("real", "synthetic", "real+balance", "real+equal")


class UtilityError(ValueError):
    """A `utility` argument it cannot use; the message names the argument and the fix."""


def binary_auc(scores: Tensor, positive: Tensor) -> float:
    """Area under the ROC curve of `scores` (N,) for the boolean `positive` (N,): the Mann-Whitney U statistic over
    n_pos * n_neg, ties counted half (what sklearn's roc_auc_score gives)."""
    values, order = scores.double().sort()
    _, inverse, counts = torch.unique_consecutive(values, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    ranks = torch.empty_like(values)
    ranks[order] = ((ends - counts + 1 + ends) / 2)[inverse]  # 1-based, ties get their average rank
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs positive and negative examples")
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def macro_auc(probabilities: Tensor, labels: Tensor) -> float:
    """Mean over classes of the one-vs-rest AUC of probabilities (N, K) (MedMNIST's `getAUC` for multi-class)."""
    return sum(binary_auc(probabilities[:, k], labels == k) for k in range(probabilities.shape[1])) \
        / probabilities.shape[1]


@torch.no_grad()
def test_scores(model: torch.nn.Module, images: Tensor, labels: Tensor) -> dict[str, float]:
    """Accuracy and macro AUC of a classifier on uint8 images (N, C, 28, 28) with grades (N,)."""
    model.eval()
    _, logits = model(to_model_range(images))
    return {"accuracy": (logits.argmax(1) == labels).float().mean().item(),
            "auc": macro_auc(logits.softmax(1), labels)}


def training_sets(images: Tensor, labels: Tensor, sample: Sampler) -> dict[str, tuple[Tensor, Tensor]]:
    """The four settings' training sets (uint8 images (N, C, H, W), grades (N,)) from the real train split."""
    counts = torch.bincount(labels, minlength=N_CLASSES)
    synthetic = sample(labels)  # as many as the real split, grade for grade
    top_up = torch.cat([torch.full((int(counts.max() - c),), g, dtype=torch.int64) for g, c in enumerate(counts)])
    extra = sample(top_up)
    return {"real": (images, labels), "synthetic": (synthetic, labels),
            "real+balance": (torch.cat([images, extra]), torch.cat([labels, top_up])),
            "real+equal": (torch.cat([images, synthetic]), torch.cat([labels, labels]))}


def _summary(values: list[float]) -> dict[str, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return {"mean": float(t.mean()), "sd": float(t.std()) if len(t) > 1 else 0.0}


def utility(sample: Sampler, splits: dict[str, tuple[Tensor, Tensor]], seeds: int, epochs: int, width: int,
            progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every setting x classifier seed: fit on the setting's training set, select on `splits["val"]`, score on
    `splits["test"]` (each (uint8 images, grades)). Returns per setting the per-seed and summarised scores."""
    results: dict[str, Any] = {}
    for name, (images, labels) in training_sets(*splits["train"], sample).items():
        runs = []
        for seed in range(seeds):
            start = time.perf_counter()
            model, report = fit_classifier(images, labels, *splits["val"], epochs=epochs, seed=seed, width=width,
                                           embedding_dim=4 * width, log=None)
            runs.append({"seed": seed, **report, **test_scores(model, *splits["test"]),
                         "seconds": time.perf_counter() - start})
            if progress:
                progress(f"{name} seed {seed}: test accuracy {runs[-1]['accuracy']:.3f} AUC {runs[-1]['auc']:.3f}")
        results[name] = {"n_train": len(labels), "grade_counts": torch.bincount(labels, minlength=N_CLASSES).tolist(),
                         "accuracy": _summary([r["accuracy"] for r in runs]), "auc": _summary([r["auc"] for r in runs]),
                         "runs": runs}
    return results


def table(results: dict[str, Any]) -> str:
    """The settings as a Markdown table: training images, test accuracy and AUC (mean ± sd), AUC against real."""
    baseline = results["real"]["auc"]["mean"]
    rows = ["| setting | train images | test accuracy | test AUC | AUC / real |", "| --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        rows.append(f"| {name} | {r['n_train']} | {r['accuracy']['mean']:.3f} ± {r['accuracy']['sd']:.3f} | "
                    f"{r['auc']['mean']:.3f} ± {r['auc']['sd']:.3f} | {r['auc']['mean'] / baseline:.3f} |")
    return "\n".join(rows)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to n for a block, then restored. The grade classifier's small convolutions ran
    5-16x slower with 2 threads than with 1 on the shared, loaded 2-core CPU (0.7 s per 1,080-image epoch with 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def gan_sampler(gan: Any, noise_seed: int, batch_size: int) -> Sampler:
    """A conditional GAN's images of requested grades; each call draws fresh noise (seeds noise_seed, +1, ...)."""
    from retina_gans.sample import generate_samples

    seeds = itertools.count(noise_seed)
    return lambda grades: generate_samples(gan, len(grades), next(seeds), batch_size, grades)


def run(cfg: DictConfig) -> tuple[dict[str, Any], Path]:
    """Check every argument, then train and score every setting; returns the result and the JSON file to write."""
    from retina_gans.models import GAN

    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.ckpt_path:
        raise UtilityError("ckpt_path is required: ckpt_path=<run>/checkpoints/last.ckpt of a conditional run")
    for key in ("seeds", "epochs", "width", "batch_size", "threads"):
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < 1:
            raise UtilityError(f"{key} must be an integer >= 1, got {cfg[key]!r}")
    source = Path(to_absolute_path(cfg.ckpt_path))
    out = Path(to_absolute_path(cfg.out)) if cfg.out else source.parent / f"utility-{source.stem}.json"
    if out.exists() and not cfg.overwrite:
        raise UtilityError(f"out={out} exists; add overwrite=true to replace it, or choose another out")
    gan = GAN.from_checkpoint(source)
    if not gan.conditional:
        raise UtilityError(f"ckpt_path={cfg.ckpt_path} is an unconditional run: utility needs images of given grades; "
                           "train with model.conditional=true")
    data = gan.run_config["data"]
    if data["size"] != INPUT_SIZE:
        raise UtilityError(f"the checkpoint makes {data['size']}x{data['size']} images; the grade classifier takes "
                           f"{INPUT_SIZE}x{INPUT_SIZE}: use a data.size=28 run")
    path = ensure_data_file(to_absolute_path(cfg.data.root), data["size"], download=False,
                            verify_md5=cfg.data.verify_md5)
    splits = {s: load_split(path, s, data["size"], data["channels"]) for s in SPLITS}
    start = time.perf_counter()
    with torch_threads(cfg.threads):
        results = utility(gan_sampler(gan, cfg.noise_seed, cfg.batch_size), splits, cfg.seeds, cfg.epochs, cfg.width,
                          progress=log.info)
    return {"checkpoint": str(source), "model": gan.run_config["model"]["_target_"],
            "protocol": {"seeds": cfg.seeds, "epochs": cfg.epochs, "width": cfg.width, "noise_seed": cfg.noise_seed,
                         "threads": cfg.threads,
                         "selection": "best val accuracy (ties: lower val loss)", "test": "real test split",
                         "settings": list(SETTINGS)},
            "seconds": time.perf_counter() - start, "settings": results}, out


@hydra.main(version_base="1.3", config_path="../conf", config_name="utility")
def main(cfg: DictConfig) -> None:
    from retina_gans.evaluate import _write_json

    try:
        result, out = run(cfg)
        _write_json(result, out)
    except (UtilityError, CheckpointFileError, DataFileError) as error:
        log.error("error: %s", error)
        sys.exit(2)
    log.info("downstream utility (%d classifier seeds, %.0f s):\n%s\nwritten to %s", cfg.seeds, result["seconds"],
             table(result["settings"]), out)


if __name__ == "__main__":
    run_cli(main)  # a job folder's path (with '=' and ',') works unquoted
