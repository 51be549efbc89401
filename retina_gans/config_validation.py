"""Every numeric and choice field of the composed config checked before anything is built.

A declarative table: config key -> (test, what is allowed). A key absent from the config (e.g. `model.clip_value`
of LS-GAN, a callback removed with `~callbacks.x`) is not checked. Unknown keys never get here: Hydra's
struct mode already rejects `key=value` for a key the config does not have (add it with `+key=value`).
"""

import difflib
import math
from pathlib import Path
from typing import Any, Callable

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from retina_gans.augment import DIFFAUGMENT_POLICIES
from retina_gans.data import SPLITS
from retina_gans.metrics import EXTRACTORS

# Lightning 2.x `Trainer(precision=...)` and `Trainer(accelerator=...)` values.
PRECISIONS = ("32-true", "32", "64-true", "64", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "transformer-engine")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")


class ConfigError(ValueError):
    """A config value is outside what the run can use; the message names the key, the value and what is allowed."""


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def int_at_least(low: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _int(v) and v >= low), f"an integer >= {low}"


def one_of(*allowed: Any) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: not isinstance(v, bool) and v in allowed), f"one of {list(allowed)}"


def optional(rule: tuple[Callable[[Any], bool], str]) -> tuple[Callable[[Any], bool], str]:
    test, allowed = rule
    return (lambda v: v is None or test(v)), f"null or {allowed}"


POSITIVE = (lambda v: _number(v) and math.isfinite(v) and v > 0), "a number > 0"
NON_NEGATIVE = (lambda v: _number(v) and math.isfinite(v) and v >= 0), "a number >= 0"
BOOLEAN = (lambda v: isinstance(v, bool)), "true or false"
INTEGER = (lambda v: _int(v)), "an integer"
BETAS = (
    lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(_number(b) and 0 <= b < 1 for b in v),
    "two numbers in [0, 1), e.g. [0.5, 0.999]",
)
FRACTION_OR_COUNT = (
    lambda v: (_int(v) and v >= 0) or (isinstance(v, float) and 0.0 <= v <= 1.0),
    "a fraction in [0.0, 1.0] or a number of batches >= 0",
)
TRAIN_FRACTION_OR_COUNT = (  # 0 would train nothing and still exit 0
    lambda v: (_int(v) and v >= 1) or (isinstance(v, float) and 0.0 < v <= 1.0),
    "a fraction in (0.0, 1.0] or a number of batches >= 1",
)
EXTRACTOR_NAMES = (
    lambda v: v == "auto" or (isinstance(v, (list, tuple)) and len(v) > 0 and all(e in EXTRACTORS for e in v)),
    f"'auto' or a non-empty list drawn from {list(EXTRACTORS)}",
)
MAIN_METRIC_CHOICES = [f"fid_{e}" for e in EXTRACTORS] + [f"kid_{e}_mean" for e in EXTRACTORS] + ["spectral_distance"]
MAIN_METRIC = (lambda v: v in MAIN_METRIC_CHOICES, f"one of {MAIN_METRIC_CHOICES} (a lower-is-better distance)")
FRACTION_OPEN = (lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1]")
PROBABILITY = (lambda v: _number(v) and 0 <= v <= 1, "a number in [0, 1]")
ADA_TARGET = (lambda v: v is None or (_number(v) and -1 < v < 1), "null (p fixed) or a number in (-1, 1)")
DIFFAUGMENT_POLICY = (
    lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(p in DIFFAUGMENT_POLICIES for p in v),
    f"a non-empty list drawn from {list(DIFFAUGMENT_POLICIES)}",
)
DEVICES = (
    lambda v: v == "auto" or (_int(v) and (v >= 1 or v == -1)) or isinstance(v, (list, tuple)),
    "'auto', -1, an integer >= 1 or a list of device indices",
)

RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "seed": INTEGER,
    "data.size": one_of(28, 64, 128, 224),
    "data.channels": one_of(1, 3),
    "data.batch_size": int_at_least(1),
    "data.eval_batch_size": int_at_least(1),
    "data.reference_split": one_of(*SPLITS),
    "data.drop_last": BOOLEAN,
    "data.download": BOOLEAN,
    "data.verify_md5": BOOLEAN,
    "data.on_device": BOOLEAN,
    "model.latent_dim": int_at_least(1),
    "model.n_critic": int_at_least(1),
    "model.n_grid_samples": int_at_least(1),
    "model.clip_value": POSITIVE,
    "model.gp_weight": NON_NEGATIVE,
    "model.compile": BOOLEAN,
    "model.conditional": BOOLEAN,
    "model.fake_grades": one_of("train", "uniform"),
    "data.labels": BOOLEAN,
    "model.generator.width": int_at_least(1),
    "model.critic.width": int_at_least(1),
    "model.generator.batch_norm": BOOLEAN,
    "model.critic.batch_norm": BOOLEAN,
    "model.generator_optimizer.lr": POSITIVE,
    "model.critic_optimizer.lr": POSITIVE,
    "model.generator_optimizer.betas": BETAS,
    "model.critic_optimizer.betas": BETAS,
    "model.ema.half_life_images": POSITIVE,
    "model.ema.ramp_up": optional(POSITIVE),
    "model.augment.policy": DIFFAUGMENT_POLICY,
    "model.augment.translation": FRACTION_OPEN,
    "model.augment.cutout": FRACTION_OPEN,
    "model.augment.p": PROBABILITY,
    "model.augment.target": ADA_TARGET,
    "model.augment.interval": int_at_least(1),
    "model.augment.adjust_images": POSITIVE,
    "model.lecam.weight": NON_NEGATIVE,
    "model.lecam.decay": ((lambda v: _number(v) and 0 <= v < 1), "a number in [0, 1)"),
    "metrics.extractors": EXTRACTOR_NAMES,
    "metrics.noise_seed": INTEGER,
    "metrics.main": MAIN_METRIC,
    "trainer.max_epochs": ((lambda v: _int(v) and (v >= 1 or v == -1)), "an integer >= 1 (or -1 with trainer.max_steps)"),
    "trainer.max_steps": ((lambda v: _int(v) and (v >= 1 or v == -1)), "-1 (no limit) or an integer >= 1"),
    "trainer.check_val_every_n_epoch": optional(int_at_least(1)),
    "trainer.num_sanity_val_steps": int_at_least(-1),
    "trainer.log_every_n_steps": int_at_least(1),
    "trainer.limit_train_batches": TRAIN_FRACTION_OR_COUNT,
    "trainer.limit_val_batches": FRACTION_OR_COUNT,
    "trainer.accelerator": one_of(*ACCELERATORS),
    "trainer.precision": one_of(*PRECISIONS),
    "trainer.devices": DEVICES,
    "trainer.num_nodes": int_at_least(1),
    "callbacks.last_checkpoint.every_n_epochs": int_at_least(1),
    "callbacks.last_checkpoint.every_n_train_batches": optional(int_at_least(1)),
    "callbacks.divergence_guard.action": one_of("stop", "skip"),
    "callbacks.sample_grid.every_n_epochs": int_at_least(1),
    "callbacks.divergence_guard.check_every_n_steps": int_at_least(1),
    "debug.inject_nan_at_step": optional(int_at_least(1)),
}
# Messages the model constructors used to give, kept so either place reads the same.
WHY = {
    "model.n_critic": "critic steps per generator step",
    "model.clip_value": "critic weights are clamped to [-c, c]",
    "data.channels": "1 grayscale, 3 RGB",
    "data.size": "MedMNIST's sizes",
}


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


CONF = Path(__file__).resolve().parents[1] / "conf"


def _variants() -> list[str]:
    """The options of `model=`: conf/model/*.yaml, less the shared parts (`_dcgan`)."""
    return sorted(p.stem for p in (CONF / "model").glob("*.yaml") if not p.stem.startswith("_"))


def _top_level_keys() -> set[str]:
    """Every top-level key a config file defines: conf/config.yaml, its groups, and the `_global_` patches."""
    keys = {p.name for p in CONF.iterdir() if p.is_dir()}
    for path in [CONF / "config.yaml", *(CONF / "experiment").glob("*.yaml"), *(CONF / "hparams_search").glob("*.yaml")]:
        keys |= set(yaml.safe_load(path.read_text()) or {})
    return keys - {"defaults"}


def _check_choices(cfg: DictConfig) -> None:
    """The model is a variant, and no top-level key was added that nothing reads (Hydra's own hint for a typo,
    `+modle=wgan`, adds one and trains the default model)."""
    if OmegaConf.select(cfg, "model") is not None and OmegaConf.select(cfg, "model._target_") is None:
        raise ConfigError(f"the model config has no _target_: not a variant (model=_dcgan holds the nets the variants "
                          f"share); choose model={', model='.join(_variants())}")
    for key in set(cfg) - _top_level_keys():
        value = _plain(OmegaConf.select(cfg, str(key), throw_on_missing=False))
        near = difflib.get_close_matches(str(key), sorted(_top_level_keys()), n=1)
        hint = f"; did you mean {near[0]}={value}?" if near else ""
        raise ConfigError(f"unknown top-level key {key!r} (set with +{key}=...): nothing reads it{hint}")


def check_run_ends(cfg: DictConfig) -> None:
    """A training run must end: -1 epochs means "until max_steps", so it needs max_steps. (Not part of `validate`:
    the benchmark's fits run with -1 epochs and are stopped by their own callback.)"""
    if OmegaConf.select(cfg, "trainer.max_epochs", default=None) == -1 \
            and OmegaConf.select(cfg, "trainer.max_steps", default=-1) == -1:
        raise ConfigError("trainer.max_epochs=-1 needs trainer.max_steps >= 1 (else the run never ends); "
                          "set trainer.max_epochs to a number of epochs")


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError on the first value outside its rule: "model.n_critic must be an integer >= 1 (...), got 0"."""
    _check_choices(cfg)
    for key, (test, allowed) in RULES.items():
        sentinel = object()
        value = OmegaConf.select(cfg, key, default=sentinel, throw_on_missing=False)
        if value is sentinel:
            continue
        value = _plain(value)
        if not test(value):
            why = f" ({WHY[key]})" if key in WHY else ""
            raise ConfigError(f"{key} must be {allowed}{why}, got {value!r}")
    if OmegaConf.select(cfg, "model.conditional", default=False) \
            and not OmegaConf.select(cfg, "data.labels", default=False):
        raise ConfigError("model.conditional=true trains on the grades: data.labels must be true (its default "
                          "follows model.conditional; leave data.labels unset)")
    # Across fields: the one combination the model constructors reject (there it surfaces wrapped in Hydra's
    # InstantiationException, which is not a one-line error).
    if str(OmegaConf.select(cfg, "model._target_", default="")).endswith(".WGANGP") \
            and OmegaConf.select(cfg, "model.critic.batch_norm", default=False):
        raise ConfigError(
            "WGAN-GP penalises per-sample critic gradients, which BatchNorm couples across the batch; "
            "set model.critic.batch_norm=false"
        )
