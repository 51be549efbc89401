import warnings
from pathlib import Path

import pytest
import torch
import torch_fidelity
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from tests.metrics_fixtures import UInt8Images, random_inception_weights, synthetic_fundus  # noqa: F401 (fixture)
from retina_gans.metrics import GenerationMetrics, InceptionWeightsError, memorization_ratio, resolve_extractors
from retina_gans.metrics import extractors as extractors_module
from retina_gans.metrics.generation_metrics import _FrechetDistance, _KernelInceptionDistance, _Precomputed

N_INCEPTION = 6  # Inception at 299x299 costs ~0.3 s per image on a 2-core CPU: keep these sets tiny


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache and a download that fails, as on a machine without internet."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(extractors_module, "_download_inception_weights", lambda target: False)
    return tmp_path


def retina_metrics(n_samples: int | None = None, channels: int = 3) -> GenerationMetrics:
    """The grade-classifier extractor only (n_samples: kept for the call sites; the metrics follow the inputs)."""
    return GenerationMetrics(["retina"], None, channels)


def evaluate(metrics: GenerationMetrics, real: torch.Tensor, fake: torch.Tensor) -> dict[str, float]:
    metrics.set_reference(real, real, real)
    return {k: v.item() for k, v in metrics.compute(fake).items()}


# ---- FID / KID / IS on the retina extractor -------------------------------------------------------
def test_generation_metrics_fid_of_a_set_against_itself_is_zero():
    images = synthetic_fundus(300, 3, seed=0)
    assert evaluate(retina_metrics(300), images, images)["fid_retina"] == pytest.approx(0.0, abs=1e-6)


def test_generation_metrics_fid_grows_with_noise():
    real = synthetic_fundus(300, 1, seed=0)
    g = torch.Generator().manual_seed(1)
    fids = []
    for std in (0.0, 8.0, 16.0, 32.0, 64.0):
        noisy = (real.float() + std * torch.randn(real.shape, generator=g)).round().clamp(0, 255).to(torch.uint8)
        fids.append(evaluate(retina_metrics(300, channels=1), real, noisy)["fid_retina"])
    assert all(a < b for a, b in zip(fids, fids[1:])), fids


def test_generation_metrics_kid_of_two_halves_is_zero_within_its_std():
    images = synthetic_fundus(600, 3, seed=0)
    values = evaluate(retina_metrics(300), images[:300], images[300:])
    assert values["kid_retina_std"] > 0  # subsets differ (subset_size = n_samples // 2)
    assert abs(values["kid_retina_mean"]) <= 3 * values["kid_retina_std"]


def test_generation_metrics_kid_subset_size_follows_the_smaller_set():
    """torchmetrics' fixed 1000 fails below 2000 samples (the README's `n_samples=5000 reference_split=test` crashed)."""
    metrics = retina_metrics()
    metrics.set_reference(*(synthetic_fundus(40, 3, seed=0),) * 3)
    metrics.compute(synthetic_fundus(100, 3, seed=1))
    assert metrics.reference.cache[("kid", "retina")].subset_size == 20


def test_generation_metrics_is_lies_between_one_and_the_number_of_classes():
    values = evaluate(retina_metrics(300), synthetic_fundus(300, 3, seed=0), synthetic_fundus(300, 3, seed=1))
    assert 1.0 - 1e-6 <= values["is_retina"] <= 5.0 + 1e-6


def test_generation_metrics_is_of_a_constant_input_is_one():
    constant = torch.full((100, 3, 28, 28), 120, dtype=torch.uint8)
    values = evaluate(retina_metrics(100), synthetic_fundus(100, 3, seed=0), constant)
    assert values["is_retina"] == pytest.approx(1.0, abs=1e-5)


def test_generation_metrics_returns_every_registered_key_per_extractor():
    values = evaluate(retina_metrics(64), synthetic_fundus(64, 3, seed=0), synthetic_fundus(64, 3, seed=1))
    assert set(values) == {"fid_retina", "kid_retina_mean", "kid_retina_std", "is_retina", "is_retina_std",
                           "precision_retina", "recall_retina", "density_retina", "coverage_retina",
                           "spectral_distance", "memorization", "copy_fraction"}


def test_generation_metrics_accepts_64x64_images():
    values = evaluate(retina_metrics(64, 1), synthetic_fundus(64, 1, 0, size=64), synthetic_fundus(64, 1, 1, size=64))
    assert all(torch.isfinite(torch.tensor(v)) for v in values.values())


def test_generation_metrics_rejects_float_or_wrong_channel_images():
    metrics = retina_metrics(8, channels=1)
    real = synthetic_fundus(8, 1, seed=0)
    with pytest.raises(ValueError, match="uint8"):
        metrics.set_reference(torch.rand(8, 1, 28, 28), real, real)
    with pytest.raises(ValueError, match="uint8"):
        metrics.set_reference(synthetic_fundus(8, 3, seed=0), real, real)
    metrics.set_reference(real, real, real)
    with pytest.raises(ValueError, match="uint8"):
        metrics.compute(torch.rand(8, 1, 28, 28))


def test_generation_metrics_extracts_real_features_once_and_generated_once_per_compute():
    metrics = retina_metrics(64)
    calls = []
    metrics.extractors["retina"].register_forward_hook(lambda module, inputs, output: calls.append(inputs[0]))
    real, fake = synthetic_fundus(64, 3, seed=0), synthetic_fundus(64, 3, seed=1)
    metrics.set_reference(real, real, real)
    first = metrics.compute(fake)
    values = metrics.compute(fake)  # a second validation: only the generated images are extracted again
    assert len(calls) == 3  # one extractor pass per image set, shared by every metric
    assert values == first  # same images, fixed KID/IS draws: same values


def test_generation_metrics_compute_before_reference_is_an_error():
    with pytest.raises(RuntimeError, match="set_reference"):
        retina_metrics().compute(synthetic_fundus(8, 3, seed=0))


def test_generation_metrics_compute_leaves_the_global_rng_untouched():
    metrics = retina_metrics(64)
    metrics.set_reference(*(synthetic_fundus(64, 3, seed=0),) * 3)
    torch.manual_seed(123)
    metrics.compute(synthetic_fundus(64, 3, seed=1))
    after = torch.rand(1)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(1))


# ---- checkpoints and device moves ---------------------------------------------------------------------
class _Parent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.generator = nn.Linear(2, 2)
        self.metrics = retina_metrics(16)


def test_generation_metrics_state_dict_excludes_extractor_weights():
    parent = _Parent()
    evaluate(parent.metrics, synthetic_fundus(16, 3, seed=0), synthetic_fundus(16, 3, seed=1))
    state = parent.state_dict()
    assert set(state) == {"generator.weight", "generator.bias"}
    restored = _Parent()
    restored.load_state_dict(state, strict=True)
    assert torch.equal(restored.generator.weight, parent.generator.weight)
    extractor_params = {id(p) for p in parent.metrics.extractors["retina"].parameters()}
    assert not extractor_params & {id(p) for p in parent.parameters()}


def test_generation_metrics_dtype_casts_and_train_mode_do_not_reach_the_extractor():
    parent = _Parent().double().train()
    extractor = parent.metrics.extractors["retina"]
    assert next(extractor.parameters()).dtype == torch.float32
    assert not extractor.training
    evaluate(parent.metrics, synthetic_fundus(16, 3, seed=0), synthetic_fundus(16, 3, seed=1))


# ---- Inception: offline on random weights, parity with torch-fidelity --------------------------------
@pytest.fixture(scope="module")
def inception_run(random_inception_weights: Path) -> dict:
    """Grayscale real/fake sets through GenerationMetrics with both extractors, on random Inception weights."""
    real, fake = synthetic_fundus(N_INCEPTION, 1, seed=0), synthetic_fundus(N_INCEPTION, 1, seed=1)
    metrics = GenerationMetrics(["retina", "inception"], str(random_inception_weights), 1)
    return {"real": real, "fake": fake, "values": evaluate(metrics, real, fake)}


@pytest.mark.slow
def test_generation_metrics_inception_runs_offline_on_a_weights_file(inception_run: dict):
    values = inception_run["values"]
    for name in ("retina", "inception"):
        assert {f"fid_{name}", f"kid_{name}_mean", f"kid_{name}_std", f"is_{name}", f"is_{name}_std"} <= set(values)
    assert values["fid_inception"] > 0
    assert 1.0 - 1e-6 <= values["is_inception"] <= 1008  # float32 rounding around exactly 1


@pytest.mark.slow
def test_generation_metrics_inception_fid_matches_torch_fidelity(inception_run: dict, random_inception_weights: Path):
    reference = torch_fidelity.calculate_metrics(
        input1=UInt8Images(inception_run["fake"].expand(-1, 3, -1, -1)),
        input2=UInt8Images(inception_run["real"].expand(-1, 3, -1, -1)),
        fid=True, feature_extractor_weights_path=str(random_inception_weights),
        cuda=False, cache=False, verbose=False, batch_size=N_INCEPTION, save_cpu_ram=True,
    )["frechet_inception_distance"]
    # Same network, same TF1-style resize; only float32 batching and the covariance formula differ: 1e-4 relative.
    assert inception_run["values"]["fid_inception"] == pytest.approx(reference, rel=1e-4)


# ---- resolving extractor names -----------------------------------------------------------------------
def test_resolve_extractors_auto_without_weights_warns_once_and_keeps_retina(offline_hub: Path):
    with pytest.warns(UserWarning, match=r"metrics\.inception_weights=") as record:
        assert resolve_extractors("auto", None) == ["retina_v2", "retina"]
    assert len(record) == 1


def test_resolve_extractors_auto_with_weights_adds_inception(random_inception_weights: Path, offline_hub: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_extractors("auto", str(random_inception_weights)) == ["retina_v2", "retina", "inception"]


def test_resolve_extractors_auto_uses_torch_hub_cache(offline_hub: Path):
    (offline_hub / "checkpoints").mkdir()
    (offline_hub / "checkpoints" / extractors_module.INCEPTION_WEIGHTS_NAME).touch()
    assert resolve_extractors("auto", None) == ["retina_v2", "retina", "inception"]


def test_resolve_extractors_explicit_inception_without_weights_is_an_error(offline_hub: Path):
    with pytest.raises(InceptionWeightsError, match=r"metrics\.inception_weights=") as error:
        resolve_extractors(["retina", "inception"], None)
    assert isinstance(error.value, ValueError) and "\n" not in str(error.value)


def test_resolve_extractors_missing_weights_file_is_an_error(tmp_path: Path):
    with pytest.raises(InceptionWeightsError, match="is not a file"):
        resolve_extractors("auto", str(tmp_path / "typo.pth"))


def test_resolve_extractors_unknown_name_lists_the_allowed_ones():
    with pytest.raises(ValueError, match=r"choose from \['retina_v2', 'retina', 'inception'\]") as error:
        resolve_extractors(["retina", "vgg"], None)
    assert "\n" not in str(error.value)


# ---- memorization ------------------------------------------------------------------------------------
def test_memorization_ratio_of_training_copies_is_zero():
    train, test = synthetic_fundus(200, 3, seed=0), synthetic_fundus(100, 3, seed=1)
    assert memorization_ratio(train[:50].clone(), train, test).item() == pytest.approx(0.0, abs=1e-6)


def test_memorization_ratio_of_the_test_split_is_one():
    train, test = synthetic_fundus(200, 3, seed=0), synthetic_fundus(100, 3, seed=1)
    assert memorization_ratio(test, train, test, chunk_size=7).item() == 1.0


def test_memorization_ratio_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="generated"):
        memorization_ratio(synthetic_fundus(4, 1, 0), synthetic_fundus(4, 3, 0), synthetic_fundus(4, 3, 1))


@pytest.mark.filterwarnings("ignore:.*will save all extracted features")
def test_kernel_inception_distance_matches_torchmetrics():
    real, fake = fid_pair(64, seed=3, shift=0.2)
    ours = _KernelInceptionDistance(_Precomputed(64), subset_size=150)
    reference = KernelInceptionDistance(nn.Identity(), subset_size=150)
    for metric in (ours, reference):
        metric.update(real, real=True)
        metric.update(fake, real=False)
    torch.manual_seed(0)
    mean, std = ours.compute()
    torch.manual_seed(0)
    expected_mean, expected_std = reference.compute()
    assert mean.item() == pytest.approx(expected_mean.item(), rel=1e-5)
    assert std.item() == pytest.approx(expected_std.item(), rel=1e-4)


def fid_pair(dim: int, seed: int, shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Correlated real and generated features (300, dim): a full-rank and a low-rank-ish covariance."""
    g = torch.Generator().manual_seed(seed)
    real = torch.randn(300, dim, generator=g) @ torch.randn(dim, dim, generator=g)
    fake = torch.randn(300, dim // 2, generator=g) @ torch.randn(dim // 2, dim, generator=g) + shift
    return real, fake


@pytest.mark.parametrize("dim", [16, 400])  # 400 > 300 samples: singular covariances, as with 2048-d Inception
def test_frechet_distance_matches_torchmetrics(dim):
    real, fake = fid_pair(dim, seed=dim, shift=0.5)
    ours, reference = _FrechetDistance(_Precomputed(dim)), FrechetInceptionDistance(_Precomputed(dim))
    for metric in (ours, reference):
        metric.update(real, real=True)
        metric.update(fake, real=False)
    assert ours.compute().item() == pytest.approx(reference.compute().item(), rel=1e-6)


def test_frechet_distance_reuses_the_real_root_until_the_real_features_change():
    real, fake = fid_pair(16, seed=1, shift=0.0)
    other_real, other_fake = fid_pair(16, seed=2, shift=1.0)
    ours = _FrechetDistance(_Precomputed(16), reset_real_features=False)
    reference = FrechetInceptionDistance(_Precomputed(16), reset_real_features=False)
    for metric in (ours, reference):
        metric.update(real, real=True)
        metric.update(fake, real=False)
        metric.compute()
        metric.reset()  # a later validation: same real features, new generated ones
        metric.update(other_fake, real=False)
    assert ours.compute().item() == pytest.approx(reference.compute().item(), rel=1e-6)
    for metric in (ours, reference):  # what GenerationMetrics.reset_all does: the real set is replaced
        metric.reset_real_features = True
        metric.reset()
        metric.update(other_real, real=True)
        metric.update(fake, real=False)
    assert ours.compute().item() == pytest.approx(reference.compute().item(), rel=1e-6)


def test_training_auto_leaves_inception_out_without_a_gpu_but_keeps_it_when_named(monkeypatch: pytest.MonkeyPatch):
    from retina_gans.models import training_extractors

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match="without a GPU"):
        assert training_extractors("auto") == ["retina_v2", "retina"]
    assert training_extractors(["retina", "inception"]) == ["retina", "inception"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert training_extractors("auto") == "auto"  # resolved as usual: Inception if its weights load
