"""Every metric the project reports, registered once by name: what it reads, which way is better, and whether it is
cheap enough for every validation. Validation, `evaluate`, the validity check, the benchmark and the report all
loop over this registry; adding a metric is one decorated function here.

A metric function takes the cached real side (`Reference`) and the generated side (`Generated`), plus the
extractor name for embedding and logit metrics, and returns {key: scalar tensor}.
"""

import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
import yaml
from torch import Tensor, nn
from torchmetrics.image.inception import InceptionScore

from retina_gans.metrics.c2st import c2st_accuracy
from retina_gans.metrics.memorization import memorization
from retina_gans.metrics.prdc import prdc
from retina_gans.metrics.retina_classifier import N_CLASSES
from retina_gans.metrics.spectrum import radial_power_spectrum, spectral_distance

GRADES = range(N_CLASSES)  # the DR grades 0-4

class Precomputed(nn.Module):
    """Identity 'feature network' for torchmetrics: its inputs already are features (N, D) or logits (N, K)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features  # FID reads this instead of probing with a dummy image

    def forward(self, features: Tensor) -> Tensor:
        return features


INPUTS = ("embedding", "logits", "pixels", "train")  # embedding/logits: per extractor; pixels: uint8; train: + train/test


@dataclass
class Reference:
    """The real side, computed once per run: per extractor the embedding (N, D) and what is derived from it."""

    images: Tensor  # uint8 (N, C, H, W), the reference split
    train: Tensor  # uint8, for memorization
    test: Tensor
    embeddings: dict[str, Tensor] = field(default_factory=dict)
    cache: dict[str, object] = field(default_factory=dict)  # e.g. ("prdc", ext) -> radii; per-metric state
    labels: Tensor | None = None  # (N,) grades of `images`: the per-grade metrics run when these and the generated
    test_labels: Tensor | None = None  # (T,) grades of `test`                       images' grades are known
    test_logits: dict[str, Tensor | None] = field(default_factory=dict)  # per extractor, of `test`


@dataclass
class Generated:
    images: Tensor  # uint8 (M, C, H, W)
    embeddings: dict[str, Tensor] = field(default_factory=dict)
    logits: dict[str, Tensor | None] = field(default_factory=dict)
    labels: Tensor | None = None  # (M,) the grade each image was generated as (conditional GANs)


@dataclass(frozen=True)
class Metric:
    name: str  # registry name, e.g. "fid"
    keys: tuple[str, ...]  # logged keys; "{ext}" is replaced by the extractor name
    input: str  # one of INPUTS
    better: tuple[str, ...]  # per key: "lower", "higher", "half" (0.5 is best) or "one" (1 is best)
    title: str  # short display name
    description: str
    every_validation: bool  # False: evaluate / report only (too slow for every validation)
    compute: Callable[..., dict[str, Tensor]]


METRICS: dict[str, Metric] = {}


def register(name: str, keys: tuple[str, ...], input: str, better: tuple[str, ...], title: str, description: str,
             every_validation: bool = True) -> Callable:
    if len(better) != len(keys):
        raise ValueError(f"metric {name}: one direction per key, got {better} for {keys}")

    def add(fn: Callable[..., dict[str, Tensor]]) -> Callable[..., dict[str, Tensor]]:
        METRICS[name] = Metric(name, keys, input, better, title, description, every_validation, fn)
        return fn
    return add


def metric_for_key(key: str) -> Metric | None:
    """The registered metric that logs `key` (e.g. 'fid_retina_v2' or 'val/fid_retina_v2'), or None."""
    key = key.removeprefix("val/")
    for metric in METRICS.values():
        for template in metric.keys:
            prefix, _, suffix = template.partition("{ext}")
            if (key == template) or ("{ext}" in template and key.startswith(prefix) and key.endswith(suffix)
                                      and len(key) > len(prefix) + len(suffix)):
                return metric
    return None


def configured_main() -> str:
    """`metrics.main` of conf/metrics/default.yaml (e.g. 'fid_retina_v2'): the metric every decision reads. The
    validity check and the report (for runs that predate the key) read it here instead of a copy of its value."""
    from retina_gans.variants import CONF_DIR  # read at call time: tests point it elsewhere

    return yaml.safe_load((CONF_DIR / "metrics" / "default.yaml").read_text())["main"]


def extractor_of_key(key: str) -> str | None:
    """'fid_retina_v2' -> 'retina_v2'; None for a key without an extractor (memorization)."""
    metric = metric_for_key(key)
    if metric is None or metric.input not in ("embedding", "logits"):
        return None
    key = key.removeprefix("val/")
    for template in metric.keys:
        prefix, _, suffix = template.partition("{ext}")
        if key.startswith(prefix) and key.endswith(suffix):
            return key[len(prefix) : len(key) - len(suffix)]
    return None


def direction(key: str) -> str:
    """'lower', 'higher', 'half' or 'one' for a logged key ('lower' for keys no metric logs)."""
    metric = metric_for_key(key)
    if metric is None:
        return "lower"
    key = key.removeprefix("val/")
    ext = extractor_of_key(key)
    for template, better in zip(metric.keys, metric.better):
        if template.replace("{ext}", ext or "") == key:
            return better
    return "lower"


# ---- the metrics ----------------------------------------------------------------------------------------------
# FID, KID and IS use torchmetrics' classes (their state layout and estimators), fed precomputed features by
# GenerationMetrics, which keeps one instance per extractor in the reference cache.

@register("fid", ("fid_{ext}",), "embedding", ("lower",), "FID",
          "Fréchet distance between Gaussian fits of the real and generated embeddings (Heusel et al. 2017)")
def _fid(ref: Reference, gen: Generated, ext: str) -> dict[str, Tensor]:
    fid = ref.cache[("fid", ext)]
    fid.update(gen.embeddings[ext], real=False)
    value = fid.compute()
    fid.reset()  # forgets the generated features only (reset_real_features=False)
    return {f"fid_{ext}": value}


@register("kid", ("kid_{ext}_mean", "kid_{ext}_std"), "embedding", ("lower", "lower"), "KID",
          "kernel inception distance: unbiased squared MMD, cubic polynomial kernel, mean and sd over 100 subsets "
          "of min(1000, n/2) (Binkowski et al. 2018); unbiased at small n")
def _kid(ref: Reference, gen: Generated, ext: str) -> dict[str, Tensor]:
    kid = ref.cache[("kid", ext)]
    n_real = len(ref.embeddings[ext])
    # torchmetrics' and torch-fidelity's 1000, reached from 2000 samples; half the smaller set below that
    kid.subset_size = max(2, min(1000, min(n_real, len(gen.embeddings[ext])) // 2))
    kid.update(gen.embeddings[ext], real=False)
    mean, std = kid.compute()
    kid.reset()
    return {f"kid_{ext}_mean": mean, f"kid_{ext}_std": std}


@register("kid_per_grade", tuple(f"kid_{{ext}}_grade{g}" for g in GRADES), "embedding", ("lower",) * len(GRADES),
          "KID per grade",
          "KID of the generated images of each requested grade against the real reference images of that grade "
          "(conditional GANs; subsets of half the smaller set: 33 for grade 4's 66 train images, so its spread is "
          "the widest)")
def _kid_per_grade(ref: Reference, gen: Generated, ext: str) -> dict[str, Tensor]:
    if ref.labels is None or gen.labels is None:
        return {}
    values = {}
    for grade in GRADES:
        kid, fake = ref.cache.get(("kid", ext, grade)), gen.embeddings[ext][gen.labels == grade]
        if kid is None or len(fake) < 4:  # no real or too few generated images of this grade
            continue
        n_real = int((ref.labels == grade).sum())
        kid.subset_size = max(2, min(1000, min(n_real, len(fake)) // 2))  # as `_kid`: half the smaller set
        kid.update(fake, real=False)
        values[f"kid_{ext}_grade{grade}"] = kid.compute()[0]
        kid.reset()
    return values


@register("grade_consistency",
          ("grade_accuracy_{ext}_mean",) + tuple(f"grade_accuracy_{{ext}}_grade{g}" for g in GRADES)
          + tuple(f"real_test_grade_accuracy_{{ext}}_grade{g}" for g in GRADES),
          "logits", ("higher",) * (1 + 2 * len(GRADES)), "grade consistency",
          "the grade classifier's accuracy on generated images of each requested grade (and its mean over grades), "
          "next to its accuracy on the real test images of that grade (conditional GANs)")
def _grade_consistency(ref: Reference, gen: Generated, ext: str) -> dict[str, Tensor]:
    logits = gen.logits.get(ext)
    if ext != "retina" or logits is None or gen.labels is None:  # the project's grade classifier only
        return {}
    values, predicted = {}, logits.argmax(1)
    for grade in GRADES:
        asked = gen.labels == grade
        if asked.any():
            values[f"grade_accuracy_{ext}_grade{grade}"] = (predicted[asked] == grade).float().mean()
        test_logits = ref.test_logits.get(ext)
        if test_logits is not None and (ref.test_labels == grade).any():
            real = ref.test_labels == grade
            values[f"real_test_grade_accuracy_{ext}_grade{grade}"] = (test_logits[real].argmax(1) == grade).float().mean()
    if values:
        values[f"grade_accuracy_{ext}_mean"] = torch.stack([v for k, v in values.items() if not k.startswith("real")]).mean()
    return values


@register("prdc", ("precision_{ext}", "recall_{ext}", "density_{ext}", "coverage_{ext}"), "embedding",
          ("higher", "higher", "one", "higher"),
          "precision/recall/density/coverage",
          "k-NN fidelity (precision, density) and diversity (recall, coverage), k = 5 "
          "(Kynkäänniemi et al. 2019; Naeem et al. 2020)")
def _prdc(ref: Reference, gen: Generated, ext: str) -> dict[str, Tensor]:
    values = prdc(ref.embeddings[ext], gen.embeddings[ext], ref.cache[("prdc", ext)])
    return {f"{name}_{ext}": value for name, value in values.items()}


@register("is", ("is_{ext}", "is_{ext}_std"), "logits", ("higher", "lower"), "IS",
          "inception score over the extractor's classes (Salimans et al. 2016); 10 splits")
def _inception_score(ref: Reference, gen: Generated, ext: str) -> dict[str, Tensor]:
    logits = gen.logits[ext]  # (M, K)
    splits = max(1, min(10, len(logits) // 2))  # a one-image split always scores exactly 1
    with warnings.catch_warnings():  # "will save all extracted features in buffer": M x K logits, small here
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        score = InceptionScore(Precomputed(logits.shape[1]), splits=splits, sync_on_compute=False).to(logits.device)
    score.update(logits)
    mean, std = score.compute()
    return {f"is_{ext}": mean, f"is_{ext}_std": std}


@register("spectrum", ("spectral_distance",), "pixels", ("lower",), "spectrum",
          "mean |log10 power ratio| of the radially averaged power spectra (Durall et al. 2020): noise, "
          "checkerboards, blur")
def _spectrum(ref: Reference, gen: Generated, ext: None = None) -> dict[str, Tensor]:
    return {"spectral_distance": spectral_distance(ref.cache["spectrum"], radial_power_spectrum(gen.images))}


@register("memorization", ("memorization", "copy_fraction"), "train", ("higher", "lower"), "memorization",
          "median nearest-training-image pixel distance of generated / of real test images (< 1: closer to the "
          "training set than unseen real images), and the share of near-copies (real test images: 0.05)")
def _memorization(ref: Reference, gen: Generated, ext: None = None) -> dict[str, Tensor]:
    return memorization(gen.images, ref.train.to(gen.images.device), ref.test.to(gen.images.device))


@register("c2st", ("c2st_accuracy",), "pixels", ("half",), "C2ST",
          "classifier two-sample test: held-out accuracy of a CNN telling generated from real (0.5: "
          "indistinguishable; Lopez-Paz & Oquab 2017)", every_validation=False)
def _c2st(ref: Reference, gen: Generated, ext: None = None) -> dict[str, Tensor]:
    return {"c2st_accuracy": c2st_accuracy(ref.images, gen.images)}
