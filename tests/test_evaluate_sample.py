import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from retina_gans.evaluate import run
from retina_gans.models import GAN
from retina_gans.sample import write_samples
from retina_gans.train import train
from tests.test_evaluate_samples import evaluate_config


@pytest.fixture(scope="module")
def trained_checkpoints(tmp_path_factory, synthetic_data_dir):
    """last.ckpt of a one-epoch grayscale LS-GAN and of an RGB WGAN-GP on the synthetic data."""
    from tests.conftest import FAST, compose_config

    checkpoints = {}
    for model, channels in [("lsgan", 1), ("wgan_gp", 3)]:
        out = tmp_path_factory.mktemp(model)
        cfg = compose_config([f"model={model}", f"data.root={synthetic_data_dir}", f"data.channels={channels}", *FAST], out)
        train(cfg)
        checkpoints[channels] = out / "checkpoints" / "last.ckpt"
    return checkpoints


@pytest.mark.parametrize("channels, layout", [(1, (50, 28, 28)), (3, (50, 28, 28, 3))])
def test_sample_writes_uint8_in_medmnist_layout(trained_checkpoints, tmp_path, channels, layout):
    path = write_samples(str(trained_checkpoints[channels]), 50, str(tmp_path / "s.npz"), noise_seed=0, batch_size=16)
    images = np.load(path)["images"]
    assert images.shape == layout and images.dtype == np.uint8
    assert images.std() > 0  # not a constant image
    again = np.load(write_samples(str(trained_checkpoints[channels]), 50, str(tmp_path / "t.npz"), 0, 50))["images"]
    assert np.array_equal(images, again)  # fixed noise seed, independent of the batch size


def test_from_checkpoint_restores_the_trained_generator(trained_checkpoints):
    gan = GAN.from_checkpoint(trained_checkpoints[1])
    assert type(gan).__name__ == "LSGAN" and not gan.generator.training
    assert gan.run_config["model"]["latent_dim"] == 100


def test_from_checkpoint_rejects_a_foreign_file(tmp_path):
    import torch

    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="not a retina-gans training checkpoint"):
        GAN.from_checkpoint(tmp_path / "other.ckpt")


@pytest.mark.parametrize("split, n", [("test", 200), ("train", None)])
def test_evaluate_scores_a_checkpoint_against_any_split(trained_checkpoints, synthetic_data_dir, tmp_path, split, n):
    cfg = evaluate_config(ckpt_path=str(trained_checkpoints[1]), n_samples=n, reference_split=split,
                          root=synthetic_data_dir, out=str(tmp_path / "e.json"))
    result, out = run(cfg)
    assert result["protocol"]["n_samples"] == (n or 1080)
    assert result["protocol"]["n_reference"] == {"test": 400, "train": 1080}[split]
    metrics = result["metrics"]
    assert {"fid_retina", "kid_retina_mean", "is_retina", "precision_retina", "spectral_distance", "memorization",
            "copy_fraction"} <= set(metrics)
    assert all(math.isfinite(v) for v in metrics.values())
    assert metrics["fid_retina"] > 0 and 1.0 <= metrics["is_retina"] <= 5.0


def test_evaluate_default_output_names_the_noise_draw(trained_checkpoints, synthetic_data_dir, tmp_path):
    """Draws 0 and 1 of the same checkpoint land in two files: the second is not refused as an existing result."""
    ckpt = tmp_path / "run" / "last.ckpt"
    ckpt.parent.mkdir()
    shutil.copy(trained_checkpoints[1], ckpt)
    draws = [run(evaluate_config(synthetic_data_dir, ckpt_path=str(ckpt), n_samples=200, reference_split="test",
                                 noise_seed=seed)) for seed in (0, 1)]
    assert [Path(out).name for _, out in draws] == ["eval-last-test-n200.json", "eval-last-test-n200-noise1.json"]
    assert [result["noise_seed"] for result, _ in draws] == [0, 1]
    assert draws[0][0]["metrics"]["fid_retina"] != draws[1][0]["metrics"]["fid_retina"]  # two different draws


def test_evaluate_command_writes_json_beside_the_checkpoint(trained_checkpoints, synthetic_data_dir, tmp_path):
    """...typed as the README writes it, unquoted, for a checkpoint in a compare job's folder ('=' and ',' in it)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "RETINA_GANS_LOGS": str(tmp_path)}
    ckpt = tmp_path / "0_experiment=blog,model=lsgan,seed=0" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    shutil.copy(trained_checkpoints[1], ckpt)
    result = subprocess.run(
        [sys.executable, "-m", "retina_gans.evaluate", f"ckpt_path={ckpt}", "n_samples=200", "reference_split=test",
         "extractors=[retina]", f"data.root={synthetic_data_dir}", "data.verify_md5=false", "device=cpu", "c2st=false"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    written = json.loads((ckpt.parent / "eval-last-test-n200.json").read_text())
    assert written["protocol"]["n_samples"] == 200 and "fid_retina" in written["metrics"]
