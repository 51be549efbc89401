"""Feature extractors for the generation metrics: each maps uint8 images to (embedding, logits or None).

Embedding metrics (FID, KID, precision/recall/density/coverage) read the embedding, IS the softmax of the logits;
returning both from one forward pass lets `GenerationMetrics` run each network once per image set.

- `retina_v2` (the main one): an embedding trained on the RetinaMNIST train split to tell images apart and to
  grade them (`retina_embedding.py`); it passes the validity check (README). No logits.
- `retina`: the grade classifier (`retina_classifier.py`); its 5-grade softmax gives IS, its embedding the old
  FID, kept for comparison with earlier numbers: it is nearly blind to noise and checkerboards.
- `inception`: torch-fidelity's FID Inception-v3, what papers report.
"""

import logging
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3, FeatureExtractorInceptionV3

from retina_gans.metrics.retina_classifier import INPUT_SIZE, N_CLASSES, load_retina_classifier
from retina_gans.metrics.retina_embedding import load_retina_embedding
from retina_gans.pixels import to_model_range

EXTRACTORS = ("retina_v2", "retina", "inception")
INCEPTION_WEIGHTS_NAME = Path(URL_INCEPTION_V3).name  # weights-inception-2015-12-05-6726825d.pth
HOW_TO_ENABLE_INCEPTION = (
    f"set metrics.inception_weights=/path/to/{INCEPTION_WEIGHTS_NAME} (torch-fidelity's FID Inception, "
    f"from {URL_INCEPTION_V3}) or run where torch-fidelity can download it"
)
log = logging.getLogger(__name__)


class InceptionWeightsError(ValueError):
    """The FID Inception network was asked for but its weights cannot be loaded."""


def _download_inception_weights(target: Path) -> bool:
    """Fetch torch-fidelity's Inception weights into torch hub's cache; False when offline or the download fails."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(URL_INCEPTION_V3, str(target), progress=False)
        return True
    except Exception as error:  # offline, proxy, disk: all mean "not available here"
        log.debug("Inception weights download failed: %s", error)
        return False


def inception_weights_path(inception_weights: str | None) -> Path | None:
    """The weights file to load: the given path, else torch-fidelity's copy in torch hub's cache (downloaded
    there first when possible); None when there is none. A given path that does not exist is an error, not a
    fallback, so a typo never silently drops the Inception metrics."""
    if inception_weights is not None:
        path = Path(inception_weights).expanduser()
        if not path.is_file():
            raise InceptionWeightsError(
                f"metrics.inception_weights={inception_weights} is not a file; {HOW_TO_ENABLE_INCEPTION}"
            )
        return path
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_NAME
    return cached if cached.is_file() or _download_inception_weights(cached) else None


def resolve_extractors(requested: list[str] | str, inception_weights: str | None) -> list[str]:
    """The extractor names to use, checked before training starts so a run never fails at its first validation.

    "auto" means retina_v2 and the retina classifier, plus Inception when its weights can be loaded (else one warning);
    an explicit "inception" without loadable weights is an error.
    """
    if requested == "auto":
        if inception_weights_path(inception_weights) is not None:
            return ["retina_v2", "retina", "inception"]
        warnings.warn(
            f"FID/KID/IS with Inception disabled (its weights are not available here); {HOW_TO_ENABLE_INCEPTION}",
            stacklevel=2,
        )
        return ["retina_v2", "retina"]
    names = [requested] if isinstance(requested, str) else list(requested)
    unknown = [n for n in names if n not in EXTRACTORS]
    if unknown or not names:
        raise ValueError(f"unknown metrics extractor(s) {unknown or names}; choose from {list(EXTRACTORS)} or 'auto'")
    if "inception" in names and inception_weights_path(inception_weights) is None:
        raise InceptionWeightsError(f"metrics extractor 'inception' needs its weights: {HOW_TO_ENABLE_INCEPTION}")
    return list(dict.fromkeys(names))  # drop duplicates, keep order


def _to_classifier_input(images: Tensor) -> Tensor:
    """uint8 (N, C, H, W) -> float in [-1, 1] at the 28x28 the in-domain networks were trained on."""
    x = to_model_range(images)
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):  # e.g. 64x64 data
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", antialias=True, align_corners=False)
    return x


class RetinaV2Extractor(nn.Module):
    """The retina_v2 embedding (N, 128); no class logits."""

    n_classes = None

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.network = load_retina_embedding(channels)
        self.embedding_dim = self.network.embedding_dim

    def forward(self, images: Tensor) -> tuple[Tensor, None]:
        return self.network(_to_classifier_input(images)), None


class RetinaExtractor(nn.Module):
    """The RetinaMNIST grade classifier: penultimate embedding (N, 128) and grade logits (N, 5)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.network = load_retina_classifier(channels)
        self.embedding_dim = self.network.embedding_dim
        self.n_classes = N_CLASSES

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        return self.network(_to_classifier_input(images))


class InceptionExtractor(nn.Module):
    """torch-fidelity's FID InceptionV3 ('2048' pool features, 'logits_unbiased'), so FID/KID/IS match its reference.

    torch-fidelity resizes to 299x299 with its TF1-compatible bilinear resize (no antialiasing); using its
    module directly, not torchmetrics' antialiased default, is what makes our FID equal torch-fidelity's.
    """

    embedding_dim = 2048
    n_classes = 1008  # the 2015 TF Inception's label set, as torch-fidelity's 'logits_unbiased'

    def __init__(self, weights_path: Path, chunk_size: int = 64) -> None:
        super().__init__()
        self.network = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(weights_path)
        )
        self.chunk_size = chunk_size  # bounds the 299x299 activations' memory, as torch-fidelity's batch_size does

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        images = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images  # grayscale -> 3 equal channels
        embeddings, logits = zip(*(self.network(chunk) for chunk in images.split(self.chunk_size)))
        return torch.cat(embeddings), torch.cat(logits)  # (N, 2048), (N, 1008)


def build_extractor(name: str, channels: int, inception_weights: str | None) -> nn.Module:
    """One frozen extractor in eval mode; it has `embedding_dim` and `n_classes` and maps uint8 images to
    (embedding (N, embedding_dim), logits (N, n_classes))."""
    if name == "retina_v2":
        extractor: nn.Module = RetinaV2Extractor(channels)
    elif name == "retina":
        extractor = RetinaExtractor(channels)
    elif name == "inception":
        path = inception_weights_path(inception_weights)
        if path is None:
            raise InceptionWeightsError(f"metrics extractor 'inception' needs its weights: {HOW_TO_ENABLE_INCEPTION}")
        extractor = InceptionExtractor(path)
    else:
        raise ValueError(f"unknown metrics extractor {name!r}; choose from {list(EXTRACTORS)}")
    return extractor.requires_grad_(False).eval()
