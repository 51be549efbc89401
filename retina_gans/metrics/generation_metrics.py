"""FID, KID and IS for each feature extractor, with real features kept across validations.

Feature extraction runs once per image batch: `update` calls each extractor once and hands the resulting
features to torchmetrics' FID/KID/IS, whose `feature` network is an identity (`_Precomputed`). The
alternatives are worse: giving the three metrics the extractor itself runs it three times per batch, and
a wrapper that caches the last batch's outputs keys a cache on tensor identity (fragile across devices and
in-place ops). torchmetrics' own update code still owns the state layout and the DDP reduction.

The extractors are deliberately NOT submodules: their weights stay out of the GAN's checkpoints (the
LightningModule's state_dict includes every submodule), DDP neither broadcasts nor tracks them, and
Lightning's `.train()` cannot switch them out of eval mode. `_apply` moves them with the module's device.
"""

import warnings
from typing import Callable

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance, poly_kernel
from torchmetrics.utilities import dim_zero_cat

from retina_gans.metrics.extractors import build_extractor, resolve_extractors

KID_MAX_SUBSET_SIZE = 1000  # torchmetrics' and torch-fidelity's default subset size, reached from 2000 samples
IS_SPLITS = 10  # as in Salimans et al. 2016 and torch-fidelity
METRICS_SEED = 0  # KID subsets and IS splits are random draws: fixed, so a value changes only when the images do


class _Precomputed(nn.Module):
    """Identity 'feature network' for torchmetrics: its inputs already are features (N, D)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features  # FID reads this instead of probing with a dummy image

    def forward(self, features: Tensor) -> Tensor:
        return features


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


class GenerationMetrics(nn.Module):
    """FID, KID (Binkowski et al. 2018) and IS (Salimans et al. 2016) of generated vs. real uint8 images.

    Keys of `compute()`: fid_{ext}, kid_{ext}_mean, kid_{ext}_std, is_{ext}, is_{ext}_std per extractor.
    """

    def __init__(
        self, extractors: list[str] | str, inception_weights: str | None, channels: int, n_samples: int
    ) -> None:
        super().__init__()
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.names = resolve_extractors(extractors, inception_weights)
        self.channels = channels
        self.n_samples = n_samples
        self._real_final = False  # see has_real
        # a plain dict is not registered by nn.Module: see the module docstring
        self._extractors: dict[str, nn.Module] = {
            name: build_extractor(name, channels, inception_weights) for name in self.names
        }
        self.fid, self.kid, self.inception_score = nn.ModuleDict(), nn.ModuleDict(), nn.ModuleDict()
        # KID averages MMD over 100 random subsets; half the samples per subset keeps the subsets different
        # (so kid_std means something) and stays within what each side has (torchmetrics' 1000 fails below that)
        subset_size = max(2, min(KID_MAX_SUBSET_SIZE, n_samples // 2))
        is_splits = max(1, min(IS_SPLITS, n_samples // 2))  # a one-image split always scores exactly 1
        with warnings.catch_warnings():  # "will save all extracted features in buffer": n_samples x D, small here
            warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
            for name, extractor in self._extractors.items():
                embedding = _Precomputed(extractor.embedding_dim)
                self.fid[name] = _FrechetDistance(embedding, reset_real_features=False)
                self.kid[name] = _KernelInceptionDistance(embedding, subset_size=subset_size, reset_real_features=False)
                self.inception_score[name] = InceptionScore(_Precomputed(extractor.n_classes), splits=is_splits)

    @property
    def extractors(self) -> dict[str, nn.Module]:
        return self._extractors

    def _apply(self, fn: Callable, recurse: bool = True) -> "GenerationMetrics":
        """Move the (unregistered) extractors to the metrics' device; dtype casts do not reach them (float32)."""
        super()._apply(fn, recurse)
        device = next(iter(self.fid.values())).device  # torchmetrics tracks its device through dtype-safe _apply
        for extractor in self._extractors.values():
            extractor.to(device)
        return self

    @torch.inference_mode()
    def update(self, images: Tensor, real: bool) -> None:
        """Add a batch of uint8 images (N, C, H, W), C = channels, to the real or the generated set."""
        if real and self._real_final:
            raise RuntimeError("the real features are final (has_real is True): feed real images only while it is False")
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != self.channels:
            raise ValueError(
                f"expected uint8 images (N, {self.channels}, H, W), got {images.dtype} {list(images.shape)}; "
                "convert with retina_gans.pixels.to_uint8"
            )
        for name, extractor in self._extractors.items():
            embedding, logits = extractor(images)  # (N, D), (N, K): the one expensive call
            self.fid[name].update(embedding, real=real)
            self.kid[name].update(embedding, real=real)
            if not real:
                self.inception_score[name].update(logits)

    @property
    def has_real(self) -> bool:
        """The real features are complete: a compute() has used them, so later validations feed only generated
        images. False during the whole first validation (every batch feeds its real images) and after reset_all().
        A plain Python flag, so checking it in every validation_step costs no device sync."""
        return self._real_final

    def compute(self) -> dict[str, Tensor]:
        """All metrics over the images seen since the last reset; under DDP call it on every rank (it syncs)."""
        if not self._real_final and self.fid[self.names[0]].real_features_num_samples == 0:
            raise RuntimeError("GenerationMetrics.compute() before any real images: call update(real_images, real=True)")
        results = {}
        # fork: the metrics' random draws use torch's global generator; the training RNG must not depend on them
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(METRICS_SEED)
            for name in self.names:
                results[f"fid_{name}"] = self.fid[name].compute()
                results[f"kid_{name}_mean"], results[f"kid_{name}_std"] = self.kid[name].compute()
                results[f"is_{name}"], results[f"is_{name}_std"] = self.inception_score[name].compute()
        self._real_final = True
        return results

    @torch.inference_mode()
    def reset_fake(self) -> None:
        """Forget generated images, keep the real features for the next validation."""
        for metric in (*self.fid.values(), *self.kid.values(), *self.inception_score.values()):
            metric.reset()

    @torch.inference_mode()
    def reset_all(self) -> None:
        """Forget everything, e.g. after Lightning's sanity-check validation fed a partial real set."""
        self._real_final = False
        for metric in (*self.fid.values(), *self.kid.values()):
            metric.reset_real_features = True
            metric.reset()
            metric.reset_real_features = False
        for metric in self.inception_score.values():
            metric.reset()
