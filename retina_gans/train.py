"""Train one GAN: `python -m retina_gans.train model=lsgan` (Hydra composes conf/config.yaml).

`train(cfg)` does the work and is what tests call with a composed config; `main` only wraps it
for the command line.
"""

import logging
import sys
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from retina_gans.data import DataFileError

log = logging.getLogger(__name__)


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"model.n_critic": 5, ...}, the form TensorBoard's HPARAMS tab shows."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = str(value) if isinstance(value, (list, tuple)) or value is None else value
    return flat


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, L.LightningModule, L.Trainer]:
    """Instantiate data, model and trainer from the composed config (no training yet)."""
    L.seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(cfg.data)
    model = hydra.utils.instantiate(cfg.model)
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values()]
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    return datamodule, model, trainer


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the configured GAN and return the final logged metrics as floats."""
    datamodule, model, trainer = build(cfg)
    datamodule.prepare_data()  # fail on a missing or corrupt data file before anything is written
    model.run_config = OmegaConf.to_container(cfg, resolve=True)
    for logger in trainer.loggers:
        logger.log_hyperparams(_flatten(model.run_config))
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        train(cfg)
    except (DataFileError, ValueError) as error:
        log.error("error: %s", error)
        sys.exit(2)


if __name__ == "__main__":
    main()
