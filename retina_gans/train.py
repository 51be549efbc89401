"""Train one GAN: `python -m retina_gans.train model=lsgan` (Hydra composes conf/config.yaml).

`train(cfg)` does the work and is what tests call with a composed config; `main` only wraps it
for the command line.
"""

import contextlib
import fcntl
import logging
import os
import re
import shlex
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from retina_gans.checkpointing import CheckpointFileError, completed_epochs, read_checkpoint, temporary_files
from retina_gans.config_validation import ConfigError, check_run_ends, validate
from retina_gans.data import DataFileError
from retina_gans.divergence import DivergenceError
from retina_gans.overrides import override, run_cli

log = logging.getLogger(__name__)

# The metrics TensorBoard's HPARAMS tab shows beside each run's config.
HPARAM_METRICS = ("val/fid_retina_v2", "val/kid_retina_v2_mean", "val/precision_retina_v2", "val/recall_retina_v2",
                  "val/spectral_distance", "val/is_retina", "val/memorization",
                  "train/generator_loss_epoch", "train/critic_loss_epoch")
# What a resumed run may set differently from the run it resumes; each is applied on resume and recorded. Anything
# else is refused: the restored optimizer state would silently keep the old lr and betas and the restored RNG state
# the old seed, other values would change the experiment half-way, and other nets cannot load the weights.
RESUME_MAY_CHANGE = (
    "ckpt_path", "paths.", "task_name", "optimized_metric", "debug.", "data.root", "data.download",
    "data.verify_md5", "metrics.inception_weights", "trainer.max_epochs", "trainer.max_steps", "equal_steps.epochs",
    "trainer.default_root_dir", "trainer.accelerator", "trainer.enable_progress_bar", "trainer.enable_model_summary",
    "trainer.log_every_n_steps", "trainer.check_val_every_n_epoch", "trainer.num_sanity_val_steps",
    "callbacks.last_checkpoint.", "callbacks.best_checkpoint.dirpath", "callbacks.progress_bar.", "callbacks.sample_grid.",
    "callbacks.divergence_guard.check_every_n_steps", "callbacks.divergence_guard.inject_nan_at_step", "logger.",
)
# What every run printed that does not concern a user of this project (each is covered in the README).
QUIET_WARNINGS = (
    r"Experiment logs directory .* exists and is not empty",  # CSVLogger's; a resumed run carries its rows over
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # inside Lightning
    r"metrics.extractors=auto: Inception left out",  # said once, as a log line (see `train`)
)
QUIET_LINES = re.compile(r"💡 Tip:|`Trainer\(limit_(train|val)_batches=1.0\)` was configured")
RUN_FILES = ("metrics.csv", "hparams.yaml", "events.out.tfevents.*", "checkpoints/*.ckpt")  # a run folder's marks


class RunFolderError(RuntimeError):
    """The run folder cannot take this run: another run is in it or using it, or it cannot be written."""


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
        if isinstance(logger, TensorBoardLogger):
            _hparams_session(logger, _flatten(model.run_config))
    return datamodule, model, trainer


@rank_zero_only  # as Lightning's log_hyperparams: other ranks' loggers have no writer
def _hparams_session(logger: TensorBoardLogger, params: dict[str, Any]) -> None:
    """TensorBoard's HPARAMS tab needs a session summary naming the metrics; Lightning writes one only when given
    metric values at the start (which would put a fake point on every curve), so it is written here without."""
    from torch.utils.tensorboard.summary import hparams

    for summary in hparams(params, {key: 0.0 for key in HPARAM_METRICS}):  # values unused: only the tags are kept
        logger.experiment._get_file_writer().add_summary(summary)


def _config_differences(saved: dict[str, Any], cfg: DictConfig) -> list[tuple[str, Any, Any]]:
    """(key, checkpoint's value, this run's value) for every setting a resume may not change."""
    ours = _flatten(OmegaConf.to_container(cfg, resolve=True))
    theirs = _flatten(saved)

    def copied(key: str) -> bool:  # `model.generator.channels: ${data.channels}`: the source key is listed instead
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        return isinstance(node, DictConfig) and leaf in node and OmegaConf.is_interpolation(node, leaf)

    differences = [(k, theirs[k], ours[k]) for k in sorted(theirs.keys() & ours.keys())
                   if theirs[k] != ours[k] and not k.startswith(RESUME_MAY_CHANGE) and not copied(k)]
    for group in MODEL_PARTS:  # switched on or off: its keys are on one side only
        mine, before = OmegaConf.select(cfg, f"model.{group}"), (saved.get("model") or {}).get(group)
        if (mine is None) != (before is None):
            differences.append((f"model.{group}", before and before["_target_"], mine and mine["_target_"]))
    return differences


# Config groups whose option lands in model.<group> (`# @package model.<group>`), null when off.
MODEL_PARTS = ("augment", "ema", "lecam")


def _option(group: str, target: str) -> str | None:
    """`retina_gans.models.WGAN` -> `wgan`: the conf/<group> option that builds it."""
    for path in sorted((Path(__file__).resolve().parents[1] / "conf" / group).glob("*.yaml")):
        if OmegaConf.load(path).get("_target_") == target:
            return path.stem
    return None


def check_resume(checkpoint: dict[str, Any], cfg: DictConfig) -> None:
    """Refuse, before anything is built or written, a checkpoint that this config cannot continue exactly: another
    variant, net shape, channel count or latent size, or any changed setting outside RESUME_MAY_CHANGE."""
    saved = checkpoint.get("run_config")
    if saved is None:  # written before checkpoints carried their config: only the weights' shapes can be checked
        return _check_shapes(checkpoint, cfg)
    differences = _config_differences(saved, cfg)
    if not differences:
        return _check_shapes(checkpoint, cfg)
    fixes = []
    for key, theirs, _ in differences:
        if key == "model._target_":
            fixes.append(f"model={_option('model', theirs) or theirs}")
        elif key.removeprefix("model.") in MODEL_PARTS:
            group = key.removeprefix("model.")
            fixes.append(f"{group}={_option(group, theirs) or theirs}" if theirs else f"~{group}")  # ~: off
        elif not (key.startswith("model.") and any(k == "model._target_" for k, _, _ in differences)):
            fixes.append(f"{key}={theirs}")
    changed = ", ".join(f"{k} {theirs} -> {ours}" for k, theirs, ours in differences)
    raise ConfigError(
        f"ckpt_path={cfg.ckpt_path} was trained with other settings than this run has ({changed}); a resumed run "
        f"keeps its settings: repeat them ({' '.join(fixes)}), or leave out ckpt_path to start a new run"
    )


def _check_shapes(checkpoint: dict[str, Any], cfg: DictConfig) -> None:
    """The nets this config builds must take the checkpoint's weights (else Lightning fails after writing files)."""
    nets = {name: hydra.utils.instantiate(cfg.model[name]) for name in ("generator", "critic")}
    ours = {f"{name}.{k}": tuple(v.shape) for name, net in nets.items() for k, v in net.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in checkpoint["state_dict"].items() if k.split(".")[0] in nets}
    wrong = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
    if wrong:
        raise ConfigError(
            f"ckpt_path={cfg.ckpt_path} holds nets of another shape than this config builds ({len(wrong)} tensors, "
            f"e.g. {wrong[0]}: {theirs.get(wrong[0], 'absent')} in the checkpoint, {ours.get(wrong[0], 'absent')} "
            "here); resume with the model, data.size, data.channels and model.latent_dim it was trained with"
        )


def _first_process() -> bool:
    """Rank 0 of a DDP/SLURM run, or a plain run: the process that owns the run folder (the others write nothing)."""
    return all(int(os.environ.get(v) or 0) == 0 for v in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def _checkpoint_dirs(cfg: DictConfig) -> list[Path]:
    callbacks = cfg.get("callbacks") or {}
    return sorted({Path(c.dirpath) for c in callbacks.values() if c is not None and c.get("dirpath")})


def _checkpoint_bytes(cfg: DictConfig) -> int:
    """About what one checkpoint of this model takes: fp32 weights and Adam's two moments, for both nets, and the
    EMA generator's weights when there is one."""
    sizes = {name: sum(p.numel() for p in hydra.utils.instantiate(cfg.model[name]).parameters())
             for name in ("generator", "critic")}
    ema = sizes["generator"] if cfg.model.get("ema") else 0
    return 4 * (3 * (sizes["generator"] + sizes["critic"]) + ema) + (1 << 20)


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder) as probe:
            probe.write(b"x")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as error:
        raise RunFolderError(f"cannot write to {folder} ({error.strerror or error}); make it writable or choose "
                             "another run folder with hydra.run.dir=...") from None


@contextlib.contextmanager
def claim_run_folder(cfg: DictConfig) -> Iterator[Path]:
    """Hold the run folder for this run: refuse one that another process is using (a lock) or that holds another
    run (unless resuming that run from its own checkpoint), and one where checkpoints cannot be written or would
    not fit; remove temporary checkpoint files a killed run left. Checked before anything of the run is written."""
    run_dir = Path(cfg.paths.output_dir)
    if not _first_process():
        yield run_dir
        return
    _check_writable(run_dir)
    lock = open(run_dir / ".lock", "a+")
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.seek(0)
            owner = lock.read().strip() or "another process"
            raise RunFolderError(f"run folder {run_dir} is in use by {owner}; wait for that run to end or choose "
                                 "another folder with hydra.run.dir=...") from None
        found = sorted({str(p.relative_to(run_dir)) for pattern in RUN_FILES for p in run_dir.glob(pattern)})
        ckpt = Path(cfg.ckpt_path).resolve() if cfg.get("ckpt_path") else None
        if found and not (ckpt is not None and ckpt.is_relative_to(run_dir.resolve())):
            raise RunFolderError(
                f"run folder {run_dir} already holds a run ({', '.join(found[:3])}); resume it with "
                f"{override('ckpt_path', run_dir / 'checkpoints' / 'last.ckpt')}, or choose another folder with hydra.run.dir=..."
            )
        lock.seek(0)
        lock.truncate()
        lock.write(f"process {os.getpid()} on {os.uname().nodename}\n")
        lock.flush()
        for folder in _checkpoint_dirs(cfg):
            _check_writable(folder)
            free, needed = shutil.disk_usage(folder).free, 3 * _checkpoint_bytes(cfg)  # last, best, a temporary
            if free < needed:
                raise RunFolderError(f"{folder} has {free / 2**20:.0f} MiB free; this run's checkpoints need about "
                                     f"{needed / 2**20:.0f} MiB (free space or choose another run folder)")
            stale = temporary_files(folder)
            for path in stale:  # no other process holds this folder: these are a killed run's half-written files
                path.unlink(missing_ok=True)
            if stale:
                log.info("removed %d temporary checkpoint file(s) a killed run left in %s", len(stale), folder)
        yield run_dir
    finally:
        lock.close()  # releases the lock; the file stays (removing it could let two runs lock different files)


def _save_hydra_config(run_dir: Path, cfg: DictConfig) -> None:
    """`.hydra/` as Hydra writes it (config, hydra, overrides), written by the run once its checks passed, so a
    refused run never overwrites the folder's own (conf/hydra/default.yaml sets `output_subdir: null`)."""
    if not HydraConfig.initialized() or HydraConfig.get().output_subdir is not None or not _first_process():
        return  # DDP's other ranks: Lightning starts them with output_subdir=null too, and rank 0 writes
    hydra_cfg = HydraConfig.instance().cfg  # {"hydra": ...}
    folder = run_dir / ".hydra"
    folder.mkdir(exist_ok=True)
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (folder / "hydra.yaml").write_text(OmegaConf.to_yaml(hydra_cfg))
    (folder / "overrides.yaml").write_text(OmegaConf.to_yaml(hydra_cfg.hydra.overrides.task))


def resume_command(cfg: DictConfig, *extra: str) -> str:
    """The command that continues this run: its own overrides (a resume keeps the settings), then ckpt_path."""
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    replaced = ("ckpt_path=", "hydra.", *(e.split("=", 1)[0] + "=" for e in extra))
    keep = [o for o in overrides if not o.lstrip("+~").startswith(replaced)]
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    return shlex.join(["python", "-m", "retina_gans.train", *keep, *extra, override("ckpt_path", last)])


def _summary(trainer: L.Trainer, cfg: DictConfig) -> str:
    metrics = trainer.callback_metrics
    shown = [k for k in sorted(metrics) if k.startswith("val/") and not k.endswith("_std")]
    values = ", ".join(f"{k} {float(metrics[k]):.4g}" for k in shown) or "no validation ran"
    steps = int(metrics["train/generator_steps"]) if "train/generator_steps" in metrics else "?"
    epochs = f"{trainer.current_epoch} epoch{'s' if trainer.current_epoch != 1 else ''}"
    return (f"finished {epochs} ({steps} generator steps); final {values}; "
            f"run folder {cfg.paths.output_dir}")


class _QuietLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not QUIET_LINES.search(record.getMessage())


@contextlib.contextmanager
def _quiet_console() -> Iterator[None]:
    """Leave out the lines every run printed that do not concern the user (QUIET_WARNINGS, QUIET_LINES)."""
    handlers = [h for name in ("", "lightning.pytorch", "lightning.fabric") for h in logging.getLogger(name).handlers]
    quiet = _QuietLines()
    with warnings.catch_warnings():
        for pattern in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        for handler in handlers:
            handler.addFilter(quiet)
        try:
            yield
        finally:
            for handler in handlers:
                handler.removeFilter(quiet)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the configured GAN and return the final logged metrics as floats (empty: the resumed run had finished).

    Every check comes before anything of the run is written: the config, the checkpoint to resume (readable,
    ours, and this config able to continue it), and the run folder (free, writable, room for checkpoints)."""
    validate(cfg)
    check_run_ends(cfg)
    if cfg.get("ckpt_path"):  # a truncated or foreign checkpoint fails here, before anything is built or written
        checkpoint = read_checkpoint(cfg.ckpt_path)
        check_resume(checkpoint, cfg)
        epochs = completed_epochs(checkpoint)
        del checkpoint
        if cfg.trainer.max_epochs != -1 and epochs >= cfg.trainer.max_epochs:
            log.info("%s: this run already finished its %d epochs (trainer.max_epochs=%d); nothing to do. "
                     "Raise trainer.max_epochs to train it further.", cfg.ckpt_path, epochs, cfg.trainer.max_epochs)
            return {}
    with claim_run_folder(cfg) as run_dir, _quiet_console():
        _save_hydra_config(run_dir, cfg)
        if cfg.metrics.extractors == "auto" and not torch.cuda.is_available():
            log.info("validation metrics: retina_v2 and retina extractors (metrics.extractors=auto leaves Inception out "
                     "without a GPU; name it to use it)")
        datamodule, model, trainer = build_for_fit(cfg)
        try:
            trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        except SIGTERMException:  # a SystemExit too; `main` says how to resume
            raise
        except SystemExit:  # Lightning's answer to Ctrl-C: it stops the fit, then calls sys.exit(1)
            if trainer.interrupted:
                log.error("interrupted (Ctrl-C); last.ckpt keeps the last completed save; resume with: %s",
                          resume_command(cfg))
                raise SystemExit(130) from None
            raise
        if trainer.global_rank == 0 and not trainer.received_sigterm:
            log.info("%s", _summary(trainer, cfg))  # after Lightning's "`Trainer.fit` stopped: ..."
            log.info("to train it further: %s", resume_command(cfg, f"trainer.max_epochs={2 * trainer.current_epoch}"))
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """The command line; returns the final `optimized_metric` (if set) for Hydra's sweepers to optimise."""
    in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    for name in ("lightning.pytorch", "lightning.fabric"):  # Lightning's own lines into train.log too
        logger = logging.getLogger(name)
        files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]  # this job's
        logger.handlers = [h for h in logger.handlers if not isinstance(h, logging.FileHandler)] + files
    try:
        metrics = train(cfg)
    except SIGTERMException:  # Lightning saw SIGTERM, finished the batch and LastCheckpoint saved last.ckpt
        log.error("stopped by SIGTERM; resume with: %s", resume_command(cfg))
        sys.exit(143)
    except (ValueError, DataFileError, CheckpointFileError, DivergenceError, RunFolderError) as error:  # ConfigError is a ValueError
        log.error("error: %s", error)
        if in_sweep:  # Hydra marks this job failed, runs the others, re-raises at the end; the summary names it
            raise
        sys.exit(3 if isinstance(error, DivergenceError) else 2)
    if not metrics:  # resumed a run that had finished
        return None
    return metrics[cfg.optimized_metric] if cfg.get("optimized_metric") else None


if __name__ == "__main__":
    run_cli(main)  # a job folder's path (with '=' and ',') works unquoted
