"""Train one GAN: `python -m retina_gans.train model=lsgan` (Hydra composes conf/config.yaml).

`train(cfg)` does the work and is what tests call with a composed config; `main` only wraps it
for the command line.
"""

import logging
import sys
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from retina_gans.checkpointing import CheckpointFileError, completed_epochs, read_checkpoint
from retina_gans.config_validation import validate
from retina_gans.data import DataFileError
from retina_gans.divergence import DivergenceError

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
    validate(cfg)  # every numeric and choice field, before anything is built
    L.seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(cfg.data)
    model = hydra.utils.instantiate(cfg.model)
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values()]
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    return datamodule, model, trainer


def build_for_fit(cfg: DictConfig) -> tuple[L.LightningDataModule, L.LightningModule, L.Trainer]:
    """`build`, then what every fit needs first: the data file checked, the config in the model (for its
    checkpoints) and in the loggers' hyperparameters. Shared by `train` and the benchmark's Lightning path."""
    datamodule, model, trainer = build(cfg)
    datamodule.prepare_data()  # fail on a missing or corrupt data file before anything is written
    model.run_config = OmegaConf.to_container(cfg, resolve=True)
    for logger in trainer.loggers:
        logger.log_hyperparams(_flatten(model.run_config))
    return datamodule, model, trainer


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the configured GAN and return the final logged metrics as floats (empty: the resumed run had finished)."""
    validate(cfg)
    if cfg.get("ckpt_path"):  # a truncated or foreign checkpoint fails here, before anything is built or written
        epochs = completed_epochs(read_checkpoint(cfg.ckpt_path))
        if cfg.trainer.max_epochs != -1 and epochs >= cfg.trainer.max_epochs:
            log.info("%s: this run already finished its %d epochs (trainer.max_epochs=%d); nothing to do. "
                     "Raise trainer.max_epochs to train it further.", cfg.ckpt_path, epochs, cfg.trainer.max_epochs)
            return {}
    datamodule, model, trainer = build_for_fit(cfg)
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """The command line; returns the final `optimized_metric` (if set) for Hydra's sweepers to optimise."""
    in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        metrics = train(cfg)
    except SIGTERMException:  # Lightning saw SIGTERM, finished the batch and LastCheckpoint saved last.ckpt
        log.error("stopped by SIGTERM; resume with ckpt_path=%s/checkpoints/last.ckpt", cfg.paths.output_dir)
        sys.exit(143)
    except (ValueError, DataFileError, CheckpointFileError, DivergenceError) as error:  # ConfigError is a ValueError
        log.error("error: %s", error)
        if in_sweep:  # Hydra marks this job failed, runs the others, re-raises at the end; the summary names it
            raise
        sys.exit(3 if isinstance(error, DivergenceError) else 2)
    if not metrics:  # resumed a run that had finished
        return None
    return metrics[cfg.optimized_metric] if cfg.get("optimized_metric") else None


if __name__ == "__main__":
    main()
