"""Fixtures for the metrics tests: synthetic fundus-like images, a synthetic RetinaMNIST file, random Inception weights."""

from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch_fidelity.feature_extractor_inceptionv3 as fidelity_inception
from torch import Tensor

from tests.conftest import REAL_DATA_DIR, SPLIT_SIZES  # noqa: F401 (REAL_DATA_DIR re-exported for the metrics tests)


def synthetic_fundus(n: int, channels: int, seed: int, size: int = 28) -> Tensor:
    """uint8 (n, C, size, size): a bright disc with smooth random texture, i.e. roughly what RetinaMNIST looks like."""
    g = torch.Generator().manual_seed(seed)
    texture = F.interpolate(torch.rand(n, channels, 5, 5, generator=g), size=(size, size), mode="bicubic")
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    disc = (1 - (xx**2 + yy**2)).clamp(min=0).sqrt()  # (size, size)
    brightness = 0.5 + 0.5 * torch.rand(n, channels, 1, 1, generator=g)
    return (255 * disc * brightness * (0.6 + 0.4 * texture)).round().clamp(0, 255).to(torch.uint8)


def write_synthetic_retinamnist(root: Path) -> Path:
    """A `retinamnist.npz` in MedMNIST's format with the real split sizes; labels follow image brightness."""
    arrays = {}
    for i, (split, n) in enumerate(SPLIT_SIZES.items()):
        images = synthetic_fundus(n, 3, seed=i)  # (n, 3, 28, 28)
        labels = (images.float().mean(dim=(1, 2, 3)) / 255 * 10).long().clamp(0, 4)  # (n,)
        arrays[f"{split}_images"] = images.permute(0, 2, 3, 1).numpy()
        arrays[f"{split}_labels"] = labels.numpy().astype(np.uint8).reshape(n, 1)
    root.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(root / "retinamnist.npz", **arrays)
    return root / "retinamnist.npz"


@pytest.fixture(scope="session")
def random_inception_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised state dict of torch-fidelity's FID Inception, saved like the real weights file.

    Only building the architecture is patched (its constructor would download the real weights); the
    code under test loads this file through its normal path. Kaiming-normal convs keep the activations
    from vanishing through 90-odd layers, so features differ between images.
    """
    with mock.patch.object(fidelity_inception, "load_state_dict_from_url", lambda *args, **kwargs: {}), \
         mock.patch.object(fidelity_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None):
        torch.manual_seed(0)
        network = fidelity_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    for module in network.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    torch.save(network.state_dict(), path)
    return path


class UInt8Images(torch.utils.data.Dataset):
    """A uint8 (N, 3, H, W) tensor as the Dataset torch-fidelity's calculate_metrics takes."""

    def __init__(self, images: Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Tensor:
        return self.images[i]
