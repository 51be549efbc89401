import hashlib
from pathlib import Path

import pytest
import torch

from tests.metrics_fixtures import REAL_DATA_DIR, synthetic_fundus, write_synthetic_retinamnist
from retina_gans.data import load_split
from retina_gans.metrics import retina_classifier
from retina_gans.metrics.extractors import RetinaExtractor
from retina_gans.metrics.retina_classifier import load_retina_classifier, weights_file

# The committed weights, as the README states them; retrain with the command stored in each file.
COMMITTED_SHA256 = {
    1: "73ef5d09c1f29b3d15711cef05d69b82bfdd2cd94dd1be9984c61b362e7e84b7",
    3: "8b8cb6b30a1c73bece76f25aad9a1e0a908628ae5186fd10214fd63b46b13bea",
}


@pytest.mark.parametrize("channels", [1, 3])
def test_retina_classifier_committed_weights_match_their_sha256(channels: int):
    assert hashlib.sha256(weights_file(channels).read_bytes()).hexdigest() == COMMITTED_SHA256[channels]


@pytest.mark.parametrize("channels", [1, 3])
def test_retina_classifier_committed_weights_load_with_their_metadata(channels: int):
    saved = torch.load(weights_file(channels), weights_only=True)
    assert saved["channels"] == channels and saved["embedding_dim"] == 128
    assert saved["command"].startswith("python -m retina_gans.metrics.retina_classifier")
    assert weights_file(channels).stat().st_size < 1_000_000
    model = load_retina_classifier(channels)
    assert not model.training and not any(p.requires_grad for p in model.parameters())


@pytest.mark.real_data
@pytest.mark.parametrize("channels", [1, 3])
def test_retina_classifier_reproduces_its_recorded_test_accuracy(channels: int):
    path = REAL_DATA_DIR / "retinamnist.npz"
    if not path.exists():
        pytest.skip(f"{path} not present")
    images, labels = load_split(path, "test", 28, channels)
    _, logits = RetinaExtractor(channels)(images)
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    assert accuracy == pytest.approx(torch.load(weights_file(channels), weights_only=True)["test_accuracy"], abs=1e-6)


@pytest.mark.parametrize("size", [28, 64])
def test_retina_extractor_gives_embedding_and_logits(size: int):
    embedding, logits = RetinaExtractor(1)(synthetic_fundus(5, 1, seed=0, size=size))
    assert embedding.shape == (5, 128) and logits.shape == (5, 5)


def test_retina_classifier_loading_rejects_weights_for_other_channels(tmp_path: Path):
    path = tmp_path / "c3.pt"
    path.write_bytes(weights_file(3).read_bytes())
    with pytest.raises(ValueError, match="3 channels"):
        load_retina_classifier(1, path)


def test_retina_classifier_augment_keeps_shape_and_is_seeded():
    x = torch.rand(6, 3, 28, 28)
    a = retina_classifier._augment(x, torch.Generator().manual_seed(0))
    b = retina_classifier._augment(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)


@pytest.mark.slow
def test_retina_classifier_training_command_is_deterministic(tmp_path: Path):
    write_synthetic_retinamnist(tmp_path / "data")
    deterministic = torch.are_deterministic_algorithms_enabled()  # main() sets it process-wide
    states = []
    for run in ("a", "b"):
        out = tmp_path / f"{run}.pt"
        retina_classifier.main(["--channels", "1", "--data-root", str(tmp_path / "data"), "--out", str(out),
                                "--epochs", "1", "--skip-md5"])
        saved = torch.load(out, weights_only=True)
        assert 0.0 <= saved["test_accuracy"] <= 1.0 and "--epochs 1" in saved["command"]
        states.append(saved["state_dict"])
    torch.use_deterministic_algorithms(deterministic)
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
