"""Variants from parts: every conf/model file builds and trains, the parts match their formulas, checkpoints of the
code before parts still load, and a variant added outside the package is found by train, bench, compare and report."""

import math
import os
import subprocess
import sys
from pathlib import Path

import hydra
import pytest
import torch
from torch import nn

from retina_gans import losses, models, objectives, regularizers
from retina_gans.bench import main as bench_main
from retina_gans.models import GAN
from retina_gans.train import build, train
from retina_gans.variants import blog_variants, card, search_dirs, variant_names
from tests.conftest import FAST, compose_config

VARIANTS = variant_names()
FIXTURES = Path(__file__).resolve().parent / "fixtures"
PROJECT = Path(__file__).resolve().parents[1]


def test_the_variants_are_the_files_of_conf_model():
    files = sorted(p.stem for p in (PROJECT / "conf" / "model").glob("*.yaml") if not p.stem.startswith("_"))
    assert VARIANTS == files and len(VARIANTS) >= 7
    assert blog_variants() == ["lsgan", "wgan", "wgan_gp"]  # compare's default: the cards with the blog's numbers


@pytest.mark.parametrize("model", VARIANTS)
def test_every_variant_builds_a_gan_class_with_its_card(model, synthetic_data_dir):
    cfg = compose_config([f"model={model}", f"data.root={synthetic_data_dir}"])
    gan = hydra.utils.instantiate(cfg.model)
    assert isinstance(gan, GAN) and isinstance(gan.objective, objectives.Objective)
    assert hasattr(models, type(gan).__name__)  # a named LightningModule class, importable from retina_gans.models
    shown = card(model)
    assert shown["name"] and shown["color"] and shown["family"] != "other"
    assert gan.variant == {k: v for k, v in cfg.model.variant.items()}  # the card travels with the run


@pytest.mark.parametrize("model", VARIANTS)
def test_every_variant_trains_on_two_batches(model, fast_config):
    datamodule, gan, trainer = build(fast_config(model, "trainer.limit_train_batches=2", "model.n_critic=1"))
    trainer.fit(gan, datamodule=datamodule)
    assert (gan.critic_steps, gan.generator_steps) == (2, 2)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
    assert {"train/critic_loss_epoch", "train/generator_loss_epoch"} <= set(logged)
    assert all(math.isfinite(v) for v in logged.values())


@pytest.mark.parametrize("model", ["lsgan", "wgan", "wgan_gp"])
def test_checkpoints_written_before_parts_still_load(model):
    # Written by commit 0a400db (one class per variant, losses fused in them): width 4, latent 8, one epoch.
    path = FIXTURES / f"{model}_0a400db.ckpt"
    gan = GAN.from_checkpoint(path)
    saved = torch.load(path, weights_only=True)["state_dict"]
    assert type(gan).__name__ == saved_class(path) and gan.state_dict().keys() == saved.keys()
    assert all(torch.equal(gan.state_dict()[k], v) for k, v in saved.items())
    assert gan.generate(torch.randn(4, 8)).shape == (4, 1, 28, 28)


def saved_class(path: Path) -> str:
    return torch.load(path, weights_only=True)["run_config"]["model"]["_target_"].rsplit(".", 1)[1]


# ---- the parts against their formulas ---------------------------------------------------------------------------
def test_non_saturating_and_hinge_losses_match_their_formulas():
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731
    assert losses.non_saturating_critic(real, fake).item() == pytest.approx(
        (softplus(-2.0) + softplus(1.0)) / 2 + (softplus(0.5) + softplus(-3.0)) / 2)
    assert losses.non_saturating_generator(fake).item() == pytest.approx((softplus(-0.5) + softplus(3.0)) / 2)
    assert losses.hinge_critic(real, fake).item() == pytest.approx((0 + 2) / 2 + (1.5 + 0) / 2)
    assert losses.hinge_generator(fake).item() == pytest.approx(1.25)


def test_r1_of_a_linear_critic_is_its_squared_weight_norm_and_lazy_r1_scales_by_its_interval():
    torch.manual_seed(0)
    critic = nn.Sequential(nn.Flatten(), nn.Linear(12, 1))
    score = lambda x: critic(x).squeeze(1)  # noqa: E731
    real = torch.randn(5, 3, 2, 2)
    assert losses.r1_penalty(score, real).item() == pytest.approx(critic[1].weight.square().sum().item(), rel=1e-5)
    lazy = regularizers.R1(gamma=2.0, interval=4)
    terms = [lazy.penalty(score, real, real, step, lambda: 1.0)[0] for step in range(1, 9)]
    assert [t is None for t in terms] == [True, True, True, False] * 2
    assert terms[3].item() == pytest.approx(0.5 * 2.0 * 4 * critic[1].weight.square().sum().item(), rel=1e-5)


def test_spectral_norm_bounds_every_critic_layer_and_keeps_batch_norm_out_of_penalties():
    torch.manual_seed(0)
    critic = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 26 * 26, 1))
    regularizers.SpectralNorm().attach(critic)
    for _ in range(30):  # one power iteration per training-mode forward pass
        critic(torch.randn(2, 1, 28, 28))
    linear = critic[2].weight  # the normalized weight
    assert torch.linalg.matrix_norm(linear, ord=2).item() == pytest.approx(1.0, rel=1e-3)
    with pytest.raises(ValueError, match="set model.critic.batch_norm=false"):
        regularizers.R1(1.0, 1).attach(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)))


def test_a_hybrid_is_config_only(fast_config):
    # non-saturating objective + lazy R1, through the generic GAN class: no new code
    cfg = fast_config("nsgan", "model._target_=retina_gans.models.GAN", "model.critic.batch_norm=false",
                      "+model.objective._target_=retina_gans.objectives.NonSaturating",
                      "+model.regularizers=[{_target_: retina_gans.regularizers.R1, gamma: 1.0, interval: 2}]",
                      "trainer.limit_train_batches=2")
    datamodule, gan, trainer = build(cfg)
    trainer.fit(gan, datamodule=datamodule)
    assert type(gan) is GAN and isinstance(gan.regularizers[0], regularizers.R1)
    assert math.isfinite(float(trainer.callback_metrics["train/r1_penalty_epoch"]))


# ---- a variant added outside the package: no other edit ------------------------------------------------------
TOY_OBJECTIVE = '''
from retina_gans import losses
from retina_gans.objectives import Objective


class Toy(Objective):
    """Least squares with targets +-1: a toy objective for the test."""

    def critic_loss(self, real_scores, fake_scores):
        return ((real_scores - 1).square().mean() + (fake_scores + 1).square().mean()) / 2, {}

    def generator_loss(self, fake_scores):
        return losses.least_squares_generator(fake_scores)
'''
TOY_VARIANT = """defaults:
  - _dcgan
  - _self_
_target_: retina_gans.models.GAN
objective: {_target_: toy_objective.Toy}
regularizers: []
variant: {name: Toy GAN, color: 'tab:olive', family: toy squares}
"""


@pytest.fixture
def toy_variant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """conf/model/toy.yaml and its objective's module in a temporary folder; returns the overrides that add it."""
    (tmp_path / "toy_conf" / "model").mkdir(parents=True)
    (tmp_path / "toy_conf" / "model" / "toy.yaml").write_text(TOY_VARIANT)
    (tmp_path / "toy_code").mkdir()
    (tmp_path / "toy_code" / "toy_objective.py").write_text(TOY_OBJECTIVE)
    monkeypatch.syspath_prepend(str(tmp_path / "toy_code"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "toy_code"), str(PROJECT)]))
    return [f"hydra.searchpath=[file://{tmp_path / 'toy_conf'}]"]


def test_a_toy_variant_in_a_temporary_config_folder_trains_and_is_listed(toy_variant, fast_config, tmp_path):
    assert "toy" in variant_names(search_dirs(toy_variant)) and "toy" not in VARIANTS
    assert card("toy", extra_dirs=search_dirs(toy_variant))["name"] == "Toy GAN"
    metrics = train(fast_config("toy", *toy_variant))
    assert math.isfinite(metrics["train/critic_loss_epoch"])


@pytest.mark.slow
def test_a_toy_variant_is_benched_with_its_own_objective(toy_variant, synthetic_data_dir, tmp_path):
    report = bench_main(["--tiny", "--device", "cpu", "--extractors", "retina", "--models", "toy", "--data-root",
                         str(synthetic_data_dir), "--json-out", str(tmp_path / "bench.json"), "data.verify_md5=false",
                         *toy_variant])
    assert set(report["training"]) == {"toy"} and report["training"]["toy"]["ratio"]["images_per_s"] > 0


@pytest.mark.slow
def test_a_toy_variant_is_compared_and_reported_with_its_card(toy_variant, synthetic_data_dir, tmp_path):
    sweep = tmp_path / "compare"
    overrides = [f"data.root={synthetic_data_dir}", *[o for o in FAST if not o.startswith("~")],
                 "data.verify_md5=false", f"paths.log_dir={tmp_path}"]
    result = subprocess.run([sys.executable, "-m", "retina_gans.compare", "--seeds", "1", "--models", "toy,hinge",
                             "--sweep-dir", str(sweep), *overrides, *toy_variant], cwd=tmp_path, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    report = (sweep / "report" / "report.md").read_text()
    assert "Toy GAN" in report and "Hinge GAN" in report
    figures = {p.name for p in (sweep / "report").rglob("*.png")}
    assert {"c-loss-toy_squares.png", "c-loss-hinge.png", "g-loss.png"} <= figures
