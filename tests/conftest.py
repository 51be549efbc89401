"""Shared fixtures: a synthetic RetinaMNIST file in MedMNIST's exact format, and composed configs."""

import os
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
# The real file: $RETINA_GANS_DATA (CI sets it), else the development machines' ../shared/data.
REAL_DATA_DIR = Path(os.environ.get("RETINA_GANS_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
SPLIT_SIZES = {"train": 1080, "val": 120, "test": 400}  # medmnist checks these against its INFO table


def write_synthetic_retinamnist(root: Path, size: int = 28, seed: int = 0) -> Path:
    """Random images with a per-class brightness, so the data has some structure; real split sizes."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in SPLIT_SIZES.items():
        labels = rng.integers(0, 5, size=(n, 1), dtype=np.uint8)
        base = 40 + 40 * labels.reshape(n, 1, 1, 1).astype(np.int16)
        noise = rng.integers(-30, 30, size=(n, size, size, 3), dtype=np.int16)
        arrays[f"{split}_images"] = np.clip(base + noise, 0, 255).astype(np.uint8)
        arrays[f"{split}_labels"] = labels
    root.mkdir(parents=True, exist_ok=True)
    path = root / ("retinamnist.npz" if size == 28 else f"retinamnist_{size}.npz")
    np.savez_compressed(path, **arrays)
    return path


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("medmnist")
    write_synthetic_retinamnist(root)
    return root


# Small nets, one short epoch, no checkpoints of the best metric: what most tests need.
FAST = [
    "model.generator.width=8",
    "model.critic.width=8",
    "data.batch_size=256",
    "data.verify_md5=false",
    "trainer.max_epochs=1",
    "trainer.enable_model_summary=false",
    "callbacks.progress_bar.refresh_rate=0",
    "trainer.limit_val_batches=0",
    "trainer.num_sanity_val_steps=0",
    "accelerator=cpu",
    "~callbacks.best_checkpoint",
]


def compose_config(overrides: list[str], output_dir: Path | None = None) -> DictConfig:
    """The real conf/ composed with overrides, as `python -m retina_gans.train ...` would see it."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    return cfg


@pytest.fixture
def fast_config(tmp_path: Path, synthetic_data_dir: Path):
    """compose(model, *overrides) -> a config for a tiny CPU fit on synthetic data in tmp_path."""

    def make(model: str, *overrides: str) -> DictConfig:
        return compose_config([f"model={model}", f"data.root={synthetic_data_dir}", *FAST, *overrides], tmp_path)

    return make
