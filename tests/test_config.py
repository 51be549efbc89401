from pathlib import Path

import hydra
import pytest
from hydra.errors import MissingConfigException

from retina_gans.models import GAN
from tests.conftest import CONF_DIR, compose_config

GROUPS = ["data", "model", "net", "augment", "ema", "metrics", "trainer", "accelerator", "logger", "callbacks",
          "experiment", "paths"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml") if not p.stem.startswith("_"))


@pytest.mark.parametrize("group, option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_config_option_composes(group, option):
    cfg = compose_config([f"{group}={option}"])
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"


@pytest.mark.parametrize("model", options("model"))
def test_every_model_choice_builds(model, synthetic_data_dir):
    cfg = compose_config([f"model={model}", f"data.root={synthetic_data_dir}"])
    gan = hydra.utils.instantiate(cfg.model)
    assert isinstance(gan, GAN) and gan.n_critic >= 1  # each variant's own checks: tests/test_variants.py


def test_best_checkpoint_and_sweeps_select_on_the_validated_main_metric():
    """The best checkpoint (and the report's sample grids read from it) follows metrics.main, not the old FID."""
    from retina_gans.metrics.registry import direction

    cfg = compose_config(["hparams_search=optuna", "model=wgan_gp"])
    assert cfg.metrics.main == "fid_retina_v2"
    assert cfg.callbacks.best_checkpoint.monitor == "val/fid_retina_v2" == cfg.optimized_metric
    assert cfg.callbacks.best_checkpoint.mode == "min" and direction(cfg.metrics.main) == "lower"
    assert compose_config(["metrics.main=kid_retina_v2_mean"]).callbacks.best_checkpoint.monitor == "val/kid_retina_v2_mean"


def test_blog_experiment_is_the_blog_setup():
    for model, n_critic in [("lsgan", 1), ("wgan", 5), ("wgan_gp", 5)]:
        cfg = compose_config([f"model={model}", "experiment=blog"])
        assert (cfg.trainer.max_epochs, cfg.data.batch_size, cfg.model.latent_dim) == (50, 64, 100)
        assert (cfg.data.channels, cfg.data.size, cfg.model.n_critic) == (1, 28, n_critic)
        for opt in (cfg.model.generator_optimizer, cfg.model.critic_optimizer):
            assert (opt._target_, opt.lr, opt.betas[0]) == ("torch.optim.Adam", 2e-4, 0.5)
        assert cfg.model.critic.batch_norm == (model == "lsgan")  # BatchNorm in the LS-GAN nets only


def test_unknown_model_lists_the_available_ones():
    with pytest.raises(MissingConfigException, match="lsgan"):
        compose_config(["model=dcgan"])
