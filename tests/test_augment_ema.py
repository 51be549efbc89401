"""Generator EMA, DiffAugment and ADA: the EMA against its closed form, augmentation on every critic input with
gradients to the generator, ADA's p following each objective's overfitting signal, checkpoints and exact resume."""

import hydra
import lightning as L
import pytest
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import nn

from retina_gans import augment as aug
from retina_gans import objectives
from retina_gans.regularizers import LeCam
from retina_gans.ema import GeneratorEMA
from retina_gans.models import GAN
from retina_gans.pixels import to_uint8
from retina_gans.train import build, build_for_fit, train
from retina_gans.variants import variant_names
from tests.conftest import compose_config
from tests.test_exact_resume import RUN, SigtermDuringBatch, _flat_tensors


# ---- EMA ------------------------------------------------------------------------------------------------------
def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))


def _set(net: nn.Module, value: float) -> None:
    with torch.no_grad():
        for t in [*net.parameters(), net[1].running_mean, net[1].running_var]:
            t.fill_(value)
        net[1].num_batches_tracked.fill_(int(value))


def test_ema_update_is_the_closed_form_average_of_weights_and_batchnorm_statistics():
    # Without ramp-up: ema_T = beta^T w_0 + (1 - beta) sum_t beta^(T - t) w_t, beta = 0.5^(n / half-life).
    generator, ema = _net(), GeneratorEMA(half_life_images=100, ramp_up=None)
    _set(generator, 0.0)
    ema.attach(generator)
    beta, steps = 0.5 ** (25 / 100), [3.0, -1.0, 2.0, 5.0]
    for w in steps:
        _set(generator, w)
        ema.update(generator, 25)
    expected = (1 - beta) * sum(beta ** (len(steps) - t) * w for t, w in enumerate(steps, 1))
    for t in [*ema.generator.parameters(), ema.generator[1].running_mean, ema.generator[1].running_var]:
        assert torch.allclose(t, torch.full_like(t, expected), atol=1e-6)
    assert ema.generator[1].num_batches_tracked.item() == 5  # integer buffers copied
    assert ema.images == 100


def test_ema_ramp_up_copies_first_then_shortens_the_half_life_to_the_images_seen():
    generator, ema = _net(), GeneratorEMA(half_life_images=1000, ramp_up=0.5)
    ema.attach(generator)
    assert ema.beta(10) == 0.0  # no images yet: the first step copies the generator
    _set(generator, 4.0)
    ema.update(generator, 10)
    assert torch.all(ema.generator[0].weight == 4.0)
    assert ema.beta(10) == pytest.approx(0.5 ** (10 / 5))  # half-life min(1000, 0.5 * 10 images)
    ema.images = 10_000
    assert ema.beta(10) == pytest.approx(0.5 ** (10 / 1000))  # ramped up: the configured half-life


def test_ema_generator_draws_the_samples_and_survives_a_checkpoint(fast_config, tmp_path):
    train(fast_config("lsgan", "ema=stylegan2"))
    gan = GAN.from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert gan.ema.images == 1080  # one epoch: 5 generator steps, 1080 images
    noise = torch.randn(8, gan.latent_dim)
    with torch.no_grad():
        assert torch.equal(gan.generate(noise), to_uint8(gan.ema.generator.eval()(noise)))
        assert not torch.equal(gan.generate(noise), to_uint8(gan.generator.eval()(noise)))  # averaged, not the last


# ---- augmentation ---------------------------------------------------------------------------------------------
AUGMENTS = {"diffaugment": ["augment=diffaugment"],
            "ada": ["augment=ada", "model.augment.p=1.0", "model.augment.target=null"]}


@pytest.mark.parametrize("augment", AUGMENTS)
@pytest.mark.parametrize("channels", [1, 3])
def test_augmentations_change_every_image_and_are_differentiable(augment, channels, synthetic_data_dir):
    cfg = compose_config(["model=lsgan", f"data.root={synthetic_data_dir}", *AUGMENTS[augment]])
    pipe = hydra.utils.instantiate(cfg.model.augment)
    x = torch.rand(16, channels, 28, 28).mul(2).sub(1).requires_grad_(True)
    y = pipe(x)
    assert y.shape == x.shape and (y - x).flatten(1).abs().amax(1).min() > 0
    (y * torch.randn_like(y)).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_ada_with_p_zero_is_the_identity():
    x = torch.rand(8, 1, 28, 28) * 2 - 1
    assert torch.allclose(aug.ADA(p=0.0, target=None, interval=1, adjust_images=1)(x), x, atol=1e-5)


@pytest.mark.parametrize("augment", AUGMENTS)
@pytest.mark.parametrize("model", ["lsgan", "wgan_gp"])
def test_the_critic_sees_augmented_real_fake_and_penalty_inputs_and_the_generator_gets_gradients(
        augment, model, synthetic_data_dir):
    cfg = compose_config([f"model={model}", f"data.root={synthetic_data_dir}", "model.generator.width=8",
                          "model.critic.width=8", *AUGMENTS[augment]])
    gan = hydra.utils.instantiate(cfg.model)
    seen: list[torch.Tensor] = []
    forward = gan.augment.forward
    gan.augment.forward = lambda images: seen.append(images) or forward(images)
    real = torch.rand(4, 1, 28, 28) * 2 - 1
    fake = gan.generator(torch.randn(4, gan.latent_dim))
    gan.critic_loss(real, fake.detach())
    assert seen[0] is real and seen[1] is not real and torch.equal(seen[1], fake.detach())
    assert len(seen) == (3 if model == "wgan_gp" else 2)  # and the gradient penalty's interpolates
    seen.clear()
    gan.generator_loss(fake).backward()
    assert len(seen) == 1 and seen[0] is fake and fake.requires_grad  # the generated batch itself, with its graph
    grads = [p.grad for p in gan.generator.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


# ---- ADA's p against each objective's overfitting signal ---------------------------------------------------------------
OBJECTIVES = [objectives.LeastSquares, objectives.Wasserstein, objectives.NonSaturating, objectives.Hinge]


def _ada_p_after_training(objective: objectives.Objective, memorisable: bool) -> float:
    """p after a tiny MLP critic is trained 300 steps under ADA, real images against fresh noise: the real images
    either 4 fixed ones (it memorises them, augmented or not: overfitting; p starts at 0) or fresh draws of the
    fakes' distribution (nothing to learn; p starts at 0.5). p moves by 0.04 per adjustment, every 4 steps."""
    torch.manual_seed(0)
    critic = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.LeakyReLU(0.2), nn.Linear(128, 1), nn.Flatten(0))
    optimizer = torch.optim.Adam(critic.parameters(), lr=3e-3)
    ada = aug.ADA(p=0.0 if memorisable else 0.5, target=0.6, interval=4, adjust_images=16 * 100)
    fixed = torch.randn(4, 1, 8, 8)  # (4, C, H, W)
    for step in range(1, 301):
        real = fixed[torch.randint(0, 4, (16,))] if memorisable else torch.randn(16, 1, 8, 8)
        real_scores, fake_scores = critic(ada(real)), critic(ada(torch.randn(16, 1, 8, 8)))
        loss, _ = objective.critic_loss(real_scores, fake_scores)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ada.observe(objective, real_scores.detach(), fake_scores.detach())
        ada.after_critic_step(step)
    return ada.p.item()


@pytest.mark.parametrize("objective", OBJECTIVES, ids=lambda o: o.__name__)
def test_ada_raises_p_when_the_critic_memorises_the_real_images(objective):
    assert _ada_p_after_training(objective(), memorisable=True) > 0.3  # from 0, until r falls to the target


@pytest.mark.parametrize("objective", OBJECTIVES, ids=lambda o: o.__name__)
def test_ada_lowers_p_when_the_critic_has_nothing_to_memorise(objective):
    assert _ada_p_after_training(objective(), memorisable=False) < 0.05  # from 0.5


def test_the_overfitting_signals_per_objective():
    real, fake = torch.tensor([0.4, 0.6, 3.0, -2.0]), torch.tensor([1.0, 2.0])
    assert objectives.LeastSquares().overfitting_signs(real, fake).tolist() == [-1, 1, 1, -1]  # around 0.5
    assert objectives.NonSaturating().overfitting_signs(real, fake).tolist() == [1, 1, 1, -1]  # around 0
    assert objectives.Hinge().overfitting_signs(real, fake).tolist() == [1, 1, 1, -1]
    assert objectives.Wasserstein().overfitting_signs(real, fake).tolist() == [-1, -1, 1, -1]  # around mean fake 1.5
    shifted = objectives.Wasserstein().overfitting_signs(real + 100, fake + 100)  # a Wasserstein critic's free constant
    assert shifted.tolist() == [-1, -1, 1, -1]


def test_ada_refuses_an_objective_without_a_signal_unless_p_is_fixed():
    class NoSignal(objectives.Objective):
        pass

    with pytest.raises(ValueError, match="NoSignal declares none"):
        aug.ADA(p=0.0, target=0.6, interval=4, adjust_images=1000).attach(NoSignal())
    aug.ADA(p=0.5, target=None, interval=4, adjust_images=1000).attach(NoSignal())


# ---- LeCam -------------------------------------------------------------------------------------------------------
def test_lecam_is_the_closed_form_penalty_around_moving_averages_of_the_scores():
    lecam = LeCam(weight=0.5, decay=0.9)
    real, fake = torch.tensor([1.0, 3.0], requires_grad=True), torch.tensor([-1.0, 0.0])
    term, logged = lecam.score_penalty(real, fake)  # the first step copies the batch means: anchors (2, -0.5)
    assert torch.equal(lecam.anchors, torch.tensor([2.0, -0.5]))
    value = ((1 + 0.5) ** 2 + (3 + 0.5) ** 2) / 2 + ((-1 - 2) ** 2 + (0 - 2) ** 2) / 2  # real vs alpha_fake, fake vs alpha_real
    assert logged["lecam_penalty"].item() == pytest.approx(value) and term.item() == pytest.approx(0.5 * value)
    term.backward()
    assert torch.allclose(real.grad, 0.5 * 2 * (real.detach() + 0.5) / 2)  # the anchors are constants
    term, logged = lecam.score_penalty(torch.zeros(2), torch.ones(2))  # then an EMA of the means with decay 0.9
    assert torch.allclose(lecam.anchors, torch.tensor([0.9 * 2 + 0.1 * 0, 0.9 * -0.5 + 0.1 * 1]))
    assert logged["lecam_penalty"].item() == pytest.approx((0 + 0.35) ** 2 + (1 - 1.8) ** 2)
    assert lecam.steps.item() == 2 and {"anchors", "steps"} <= set(lecam.state_dict())


def test_lecam_pulls_the_critic_scores_of_real_and_fake_together():
    # 50 SGD steps of a linear critic on two separable clouds: with LeCam (weight 0.3, decay 0.9) the gap between
    # the mean real and mean fake scores stays a fraction of the plain non-saturating critic's (measured 0.62 vs 5.9).
    gaps = []
    for lecam in (None, LeCam(weight=0.3, decay=0.9)):
        torch.manual_seed(0)
        critic, real, fake = nn.Linear(4, 1), torch.randn(32, 4) + 1, torch.randn(32, 4) - 1
        optimizer = torch.optim.SGD(critic.parameters(), lr=0.05)
        for _ in range(50):
            real_scores, fake_scores = critic(real).squeeze(1), critic(fake).squeeze(1)
            loss = objectives.NonSaturating().critic_loss(real_scores, fake_scores)[0]
            if lecam is not None:
                loss = loss + lecam.score_penalty(real_scores, fake_scores)[0]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            gaps.append((critic(real).mean() - critic(fake).mean()).item())
    assert 0 < gaps[1] < 0.25 * gaps[0]


# ---- every variant, the configs ----------------------------------------------------------------------------------
@pytest.mark.parametrize("model", variant_names())
def test_every_variant_trains_with_ema_ada_and_lecam(model, fast_config):
    datamodule, gan, trainer = build(fast_config(model, "trainer.limit_train_batches=2", "model.n_critic=1",
                                                 "ema=stylegan2", "augment=ada", "model.augment.interval=1",
                                                 "lecam=tseng2021"))
    trainer.fit(gan, datamodule=datamodule)
    assert (gan.critic_steps, gan.generator_steps, gan.ema.images) == (2, 2, 512)
    assert gan.regularizers[-1] is gan.lecam and gan.lecam.steps.item() == 2  # after the variant's own
    assert {"train/ada_p_epoch", "train/ada_signal_epoch", "train/lecam_penalty_epoch"} <= set(trainer.callback_metrics)


def test_blog_has_no_augmentation_or_ema_and_small_data_has_the_ema_only():
    for experiment in ("blog", "blog_equal_steps"):
        cfg = compose_config(["model=wgan_gp", f"experiment={experiment}"])
        assert "augment" not in cfg.model and "ema" not in cfg.model and "lecam" not in cfg.model
    cfg = compose_config(["model=wgan_gp", "experiment=small_data"])
    assert "augment" not in cfg.model and "lecam" not in cfg.model  # measured: DiffAugment on top of the EMA doubled NS-GAN's FID (README)
    assert cfg.model.ema._target_ == "retina_gans.ema.GeneratorEMA"
    assert cfg.trainer.max_epochs == 600  # measured: NS-GAN's FID stops improving after about 450 epochs (README)
    cfg = compose_config(["model=wgan_gp", "experiment=small_data", "augment=diffaugment"])  # the earlier recipe
    assert cfg.model.augment._target_ == "retina_gans.augment.DiffAugment" and "ema" in cfg.model
    assert (cfg.data.batch_size, cfg.data.channels, cfg.model.generator_optimizer.lr) == (64, 1, 2e-4)  # the blog's


def test_small_data_gives_only_clipped_wgan_a_batchnorm_critic():
    """conf/recipe/<experiment>/<model>.yaml: an experiment's settings for one variant. experiment=small_data's
    clipped WGAN critic gets BatchNorm (measured: the checkerboard goes, README); the blog's stays without, as the
    blog writes; every other variant's critic is what it is without the recipe file; `~recipe` leaves it out."""
    def critic_norm(*overrides):
        return compose_config(list(overrides)).model.critic.batch_norm

    cfg = compose_config(["model=wgan", "experiment=small_data"])
    assert cfg.model.critic.batch_norm is True
    assert cfg.trainer.max_epochs == 400  # where its FID stops falling
    assert critic_norm("model=wgan", "experiment=blog") is False and critic_norm("model=wgan") is False
    assert critic_norm("model=wgan", "experiment=small_data", "~recipe") is False
    assert critic_norm("model=wgan", "experiment=small_data", "model.critic.batch_norm=false") is False
    for model in variant_names():
        if model != "wgan":
            assert critic_norm(f"model={model}", "experiment=small_data") == critic_norm(f"model={model}"), model


# ---- exact resume with the options on ----------------------------------------------------------------------------
@pytest.mark.parametrize("options", [
    ["ema=stylegan2", "augment=ada", "model.augment.interval=2", "model.augment.adjust_images=2000", "lecam=tseng2021"],
    pytest.param(["ema=stylegan2", "augment=diffaugment"], marks=pytest.mark.slow),
], ids=["ema+ada+lecam", "ema+diffaugment"])
def test_a_run_stopped_mid_epoch_with_ema_and_augmentation_resumes_bit_for_bit(options, synthetic_data_dir, tmp_path):
    # RUN (tests/test_exact_resume.py): wgan, n_critic 3, 9 batches per epoch, 2 epochs, last.ckpt every 4 batches.
    args = [*RUN, f"data.root={synthetic_data_dir}", *options]
    train(compose_config(args, tmp_path / "whole"))
    datamodule, gan, trainer = build_for_fit(compose_config(args, tmp_path / "stopped"))
    trainer.callbacks.append(SigtermDuringBatch(11))  # mid-epoch 2, between generator steps
    with pytest.raises(SIGTERMException):  # saved last.ckpt after batch 11, then stopped
        trainer.fit(gan, datamodule=datamodule)
    L.seed_everything(123)  # the resumed run must take every random state from the checkpoint
    train(compose_config([*args, f"ckpt_path={tmp_path / 'stopped' / 'checkpoints' / 'last.ckpt'}"],
                         tmp_path / "resumed"))
    a = torch.load(tmp_path / "whole" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["gan_steps"] == b["gan_steps"] == {"critic": 18, "generator": 6}
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert any(k.startswith("ema.generator.") for k in a["state_dict"])
    images = 4 * 128 + 2 * 56  # generator steps at critic steps 3, 6, ..., 18; 9 and 18 end an epoch (56 images)
    assert a["state_dict"]["ema._extra_state"] == b["state_dict"]["ema._extra_state"] == {"images": images}
    flat_a, flat_b = _flat_tensors(a["state_dict"]), _flat_tensors(b["state_dict"])  # weights, EMA, p, ADA's sums
    assert len(flat_a) == len(flat_b) and all(torch.equal(x, y) for x, y in zip(flat_a, flat_b))
    if "augment=ada" in options:
        assert a["state_dict"]["augment.p"] > 0  # p moved: the resume carried a live controller
    if "lecam=tseng2021" in options:
        assert a["state_dict"]["lecam.steps"] == 18  # the anchors are in the checkpoint, updated every critic step
    assert (tmp_path / "resumed" / "metrics.csv").read_text() == (tmp_path / "whole" / "metrics.csv").read_text()
