"""Every registered metric (`registry.METRICS`) of generated vs. real images, with the real side computed once.

Each extractor runs once per image set and hands its features to the metrics: torchmetrics' FID/KID/IS (whose
`feature` network is an identity, `Precomputed`), precision/recall/density/coverage, and pixel metrics. The real
side (embeddings, FID's real statistics and root, the real k-NN radii, the real spectrum) is computed once per run
by `set_reference`; each validation then costs one extraction of the generated images and the metric math.
Under DDP the caller gathers the generated images first, so every rank computes the same values from the whole set.

The extractors are deliberately NOT submodules: their weights stay out of the GAN's checkpoints (the
LightningModule's state_dict includes every submodule), DDP neither broadcasts nor tracks them, and
Lightning's `.train()` cannot switch them out of eval mode. `_apply` moves them with the module's device.
"""

import warnings
from typing import Callable

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance, poly_kernel
from torchmetrics.utilities import dim_zero_cat

from retina_gans.metrics.extractors import build_extractor, resolve_extractors
from retina_gans.metrics.registry import METRICS, Generated, Precomputed, Reference
from retina_gans.metrics.prdc import kth_neighbour_radii
from retina_gans.metrics.spectrum import radial_power_spectrum

_Precomputed = Precomputed  # the name earlier versions and tests import

METRICS_SEED = 0  # KID subsets and IS splits are random draws: fixed, so a value changes only when the images do


class _KernelInceptionDistance(KernelInceptionDistance):
    """torchmetrics' KID (Binkowski et al. 2018) with each kernel matrix computed once, not once per subset.

    A subset's kernel sums are quadratic forms of its 0/1 membership mask, so all subsets come from three
    matrix products. Same states (so the same DDP sync), the same random draws in the same order, the same
    unbiased MMD estimator: the values equal torchmetrics' up to float rounding, at a small fraction of the
    cost (100 subsets of 540 of 1080 samples: ~7 s -> ~0.1 s of CPU with 128-d features).
    """

    def compute(self) -> tuple[Tensor, Tensor]:
        real, fake = dim_zero_cat(self.real_features), dim_zero_cat(self.fake_features)  # (R, D), (F, D)
        m = self.subset_size
        if min(len(real), len(fake)) < m:
            raise ValueError(
                f"KID needs at least subset_size={m} real and generated samples, got {len(real)} and {len(fake)}"
            )
        draws = [(torch.randperm(len(real))[:m], torch.randperm(len(fake))[:m]) for _ in range(self.subsets)]
        mask_real = torch.zeros(self.subsets, len(real), dtype=real.dtype, device=real.device)  # (S, R)
        mask_fake = torch.zeros(self.subsets, len(fake), dtype=fake.dtype, device=fake.device)  # (S, F)
        mask_real.scatter_(1, torch.stack([r for r, _ in draws]).to(real.device), 1.0)
        mask_fake.scatter_(1, torch.stack([f for _, f in draws]).to(fake.device), 1.0)
        kernel = lambda a, b: poly_kernel(a, b, self.degree, self.gamma, self.coef)  # noqa: E731
        k_real, k_fake, k_cross = kernel(real, real), kernel(fake, fake), kernel(real, fake)  # (R, R), (F, F), (R, F)
        # per subset (S,): sums of the kernel over pairs of distinct members, and over real x fake member pairs
        within_real = ((mask_real @ k_real) * mask_real).sum(1) - mask_real @ k_real.diagonal()
        within_fake = ((mask_fake @ k_fake) * mask_fake).sum(1) - mask_fake @ k_fake.diagonal()
        cross = ((mask_real @ k_cross) * mask_fake).sum(1)
        scores = (within_real + within_fake) / (m * (m - 1)) - 2 * cross / m**2
        return scores.mean(), scores.std(unbiased=False)


class _FrechetDistance(FrechetInceptionDistance):
    """torchmetrics' FID with the matrix square root term computed as a symmetric eigenproblem.

    Tr sqrt(Σr Σf) is the sum of the square roots of the eigenvalues of Σr Σf, which are those of the symmetric
    PSD matrix sqrt(Σr) Σf sqrt(Σr) (a similar matrix). torchmetrics runs a general `eigvals` on Σr Σf, 2.5 s
    per validation on 2048-d Inception features on the 2-core CPU (idle). Here sqrt(Σr) is computed once per run
    (the real features do not change; 1.9 s with the first validation) and each later validation costs one
    symmetric `eigvalsh`, 0.8 s. Eigenvalues that rounding makes slightly negative count as 0, as torchmetrics'
    `.sqrt().real` does. Same states, same covariance estimates (float64), so the same DDP sync and values equal
    to torchmetrics' up to rounding (tests/test_metrics.py).
    """

    _sqrt_real: tuple[Tensor, Tensor] | None = None  # (real sample count, sqrt(Σr)) for the real features seen

    def compute(self) -> Tensor:
        if self.real_features_num_samples < 2 or self.fake_features_num_samples < 2:
            raise RuntimeError("More than one sample is required for both the real and fake distributed to compute FID")
        mean_real, cov_real = self._mean_and_covariance(self.real_features_sum, self.real_features_cov_sum,
                                                        self.real_features_num_samples)
        mean_fake, cov_fake = self._mean_and_covariance(self.fake_features_sum, self.fake_features_cov_sum,
                                                        self.fake_features_num_samples)
        if self._sqrt_real is None or not torch.equal(self._sqrt_real[0], self.real_features_num_samples):
            eigenvalues, eigenvectors = torch.linalg.eigh(cov_real)
            root = eigenvectors * eigenvalues.clamp(min=0).sqrt() @ eigenvectors.T  # (D, D), symmetric PSD
            self._sqrt_real = (self.real_features_num_samples.clone(), root)
        root = self._sqrt_real[1]
        trace_sqrt = torch.linalg.eigvalsh(root @ cov_fake @ root).clamp(min=0).sqrt().sum()
        fid = (mean_real - mean_fake).square().sum() + cov_real.trace() + cov_fake.trace() - 2 * trace_sqrt
        return fid.to(self.orig_dtype)

    @staticmethod
    def _mean_and_covariance(total: Tensor, cross_total: Tensor, n: Tensor) -> tuple[Tensor, Tensor]:
        """Mean (D,) and unbiased covariance (D, D) from the feature sum and the sum of outer products."""
        mean = total / n
        return mean, (cross_total - n * torch.outer(mean, mean)) / (n - 1)

    def reset(self) -> None:
        if self.reset_real_features:
            self._sqrt_real = None
        super().reset()


def frechet_distance(real: Tensor, fake: Tensor) -> float:
    """The FID between two feature sets (N, D), by the estimator validation uses (`_FrechetDistance`): for
    experiments on features no extractor makes (read-outs, concatenations)."""
    fid = _FrechetDistance(Precomputed(real.shape[1]), reset_real_features=False, sync_on_compute=False)
    fid.update(real, real=True)
    fid.update(fake, real=False)
    return float(fid.compute())


class GenerationMetrics(nn.Module):
    """The registered metrics of generated vs. real uint8 images, per feature extractor where a metric reads one.

    `set_reference(reference, train, test)` once, then `compute(generated)` as often as needed; with the real
    images' grades (`reference_labels`, `test_labels`) and the generated ones' (`compute(..., labels=)`), the
    per-grade metrics too (conditional GANs). Keys: see
    `registry.METRICS` (e.g. fid_retina_v2, kid_retina_v2_mean, precision_retina_v2, is_retina, spectral_distance,
    memorization). `metrics` picks registry names; default: every metric cheap enough for each validation.
    """

    def __init__(self, extractors: list[str] | str, inception_weights: str | None, channels: int,
                 metrics: list[str] | None = None, batch_size: int = 500) -> None:
        super().__init__()
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        unknown = sorted(set(metrics or ()) - set(METRICS))
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; choose from {sorted(METRICS)}")
        self.metric_names = list(metrics) if metrics is not None else [m for m, spec in METRICS.items()
                                                                          if spec.every_validation]
        self.names = resolve_extractors(extractors, inception_weights)
        self.channels = channels
        self.batch_size = batch_size
        # a plain dict is not registered by nn.Module: see the module docstring. Built under fork_rng: constructing a
        # network draws initial weights from torch's global generator, and a seed's training must not depend on
        # which metrics are configured (the loaded weights replace those draws anyway)
        with torch.random.fork_rng(devices=[]):
            self._extractors: dict[str, nn.Module] = {
                name: build_extractor(name, channels, inception_weights) for name in self.names
            }
        self.reference: Reference | None = None

    @property
    def extractors(self) -> dict[str, nn.Module]:
        return self._extractors

    def _apply(self, fn: Callable, recurse: bool = True) -> "GenerationMetrics":
        """Move the (unregistered) extractors along with the module (dtype casts do not reach them: float32), and the
        real side, recomputed on the new device (it holds torchmetrics states and cached roots)."""
        super()._apply(fn, recurse)
        probe = fn(torch.zeros(()))
        for extractor in self._extractors.values():
            extractor.to(probe.device)
        if self.reference is not None and self.reference.images.device != probe.device:
            ref = self.reference
            self.set_reference(ref.images.to(probe.device), ref.train.to(probe.device), ref.test.to(probe.device),
                               ref.labels, ref.test_labels)
        return self

    def _check(self, images: Tensor, what: str) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != self.channels:
            raise ValueError(
                f"{what}: expected uint8 images (N, {self.channels}, H, W), got {images.dtype} {list(images.shape)}; "
                "convert with retina_gans.pixels.to_uint8"
            )

    @torch.no_grad()
    def extract(self, images: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor | None]]:
        """Each extractor once over uint8 images (N, C, H, W): embeddings {ext: (N, D)}, logits {ext: (N, K) or None}."""
        embeddings: dict[str, Tensor] = {}
        logits: dict[str, Tensor | None] = {}
        for name, extractor in self._extractors.items():
            device = next(extractor.parameters()).device
            outputs = [extractor(chunk.to(device)) for chunk in images.split(self.batch_size)]
            embeddings[name] = torch.cat([e for e, _ in outputs]).double()
            logits[name] = None if outputs[0][1] is None else torch.cat([k for _, k in outputs]).float()
        return embeddings, logits

    @property
    def has_reference(self) -> bool:
        return self.reference is not None

    @torch.no_grad()
    def set_reference(self, reference: Tensor, train: Tensor, test: Tensor, reference_labels: Tensor | None = None,
                      test_labels: Tensor | None = None) -> None:
        """The real side, computed once: `reference` the images to compare with (uint8 (N, C, H, W)); `train` and
        `test` the real splits the memorization metrics measure distances to; the grades (N,) of `reference` and
        `test` for the per-grade metrics."""
        for what, images in (("reference", reference), ("train", train), ("test", test)):
            self._check(images, what)
        if len(reference) < 2:
            raise ValueError(f"the reference set needs at least 2 images, got {len(reference)}")
        embeddings, _ = self.extract(reference)
        ref = Reference(reference, train, test, embeddings)
        if reference_labels is not None:
            ref.labels = reference_labels.to(reference.device)
            if test_labels is not None:  # the grade classifier on real test images: what generated ones are held to
                ref.test_labels = test_labels.to(reference.device)
                ref.test_logits = self.extract(test)[1]
        with warnings.catch_warnings():  # "will save all extracted features in buffer": N x D, small here
            warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
            for name, features in embeddings.items():
                dim = features.shape[1]
                fid = _FrechetDistance(Precomputed(dim), reset_real_features=False, sync_on_compute=False)
                kid = _KernelInceptionDistance(Precomputed(dim), subset_size=2, reset_real_features=False,
                                               sync_on_compute=False)
                fid, kid = fid.to(features.device), kid.to(features.device)
                fid.update(features, real=True)
                kid.update(features, real=True)
                ref.cache[("fid", name)], ref.cache[("kid", name)] = fid, kid
                ref.cache[("prdc", name)] = kth_neighbour_radii(features)
                if ref.labels is not None:  # a KID per grade, with that grade's real features
                    for grade in ref.labels.unique().tolist():
                        kid = _KernelInceptionDistance(Precomputed(dim), subset_size=2, reset_real_features=False,
                                                       sync_on_compute=False).to(features.device)
                        kid.update(features[ref.labels == grade], real=True)
                        ref.cache[("kid", name, grade)] = kid
        ref.cache["spectrum"] = radial_power_spectrum(reference)
        self.reference = ref

    @torch.no_grad()
    def compute(self, generated: Tensor, metrics: list[str] | None = None,
                labels: Tensor | None = None) -> dict[str, Tensor]:
        """Every chosen metric of uint8 `generated` (M, C, H, W) against the reference; scalar tensors by key.
        `labels` (M,): the grade each image was generated as (conditional GANs), for the per-grade metrics."""
        if self.reference is None:
            raise RuntimeError("GenerationMetrics.compute() before set_reference(reference, train, test)")
        self._check(generated, "generated")
        if len(generated) < 2:
            raise ValueError(f"the metrics need at least 2 generated images, got {len(generated)}")
        embeddings, logits = self.extract(generated)
        gen = Generated(generated.to(self.reference.images.device), embeddings, logits,
                        None if labels is None else labels.to(self.reference.images.device))
        results: dict[str, Tensor] = {}
        # fork: the metrics' random draws use torch's global generator; the training RNG must not depend on them
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(METRICS_SEED)
            for name in metrics or self.metric_names:
                spec = METRICS[name]
                if spec.input == "embedding":
                    for ext in self.names:
                        results |= spec.compute(self.reference, gen, ext)
                elif spec.input == "logits":
                    for ext in self.names:
                        if logits[ext] is not None:
                            results |= spec.compute(self.reference, gen, ext)
                else:
                    results |= spec.compute(self.reference, gen)
        return {k: v.detach().float().cpu() if isinstance(v, Tensor) else torch.tensor(float(v))
                for k, v in results.items()}
