"""`evaluate samples=path.npz`: any framework's samples scored by the same protocol; bad files get one line, exit 2."""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from retina_gans.evaluate import EvaluateError, load_samples, run
from tests.conftest import REAL_DATA_DIR

ROOT = Path(__file__).resolve().parents[1]


def evaluate_config(root: Path, **overrides) -> "OmegaConf":
    """conf/evaluate.yaml as Hydra composes it, with the data folder and overrides (no Hydra run needed)."""
    cfg = OmegaConf.load(ROOT / "conf" / "evaluate.yaml")
    cfg.pop("hydra")
    cfg.data.root = str(root)
    cfg.data.verify_md5 = False
    cfg.extractors = ["retina"]
    cfg.c2st = False
    cfg.device = "cpu"
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def medmnist_images(n: int, channels: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (n, 28, 28) if channels == 1 else (n, 28, 28, channels)
    return rng.integers(0, 256, shape, dtype=np.uint8)


@pytest.mark.parametrize("layout", ["uint8 NHW", "uint8 NHWC", "uint8 NHWC gray", "float NCHW"])
def test_load_samples_reads_every_documented_layout(tmp_path, layout):
    gray = medmnist_images(10, 1)  # (10, 28, 28)
    array = {"uint8 NHW": gray, "uint8 NHWC": np.repeat(gray[..., None], 3, axis=3), "uint8 NHWC gray": gray[..., None],
             "float NCHW": gray[:, None].astype(np.float32) / 127.5 - 1}[layout]
    np.savez(tmp_path / "s.npz", images=array)
    images = load_samples(tmp_path / "s.npz")
    assert images.dtype.is_floating_point is False and images.shape[0] == 10 and images.shape[2:] == (28, 28)
    assert (images[:, 0].numpy() == gray).all()  # the same pixels whatever the layout


BAD_FILES = {  # name: (what to write, a phrase the one-line error must contain)
    "missing": (None, "no such file"),
    "folder": ("dir", "is a folder"),
    "text": (b"hello", "not a readable .npz"),
    "truncated": ("truncated", "not a readable .npz"),
    "pickled objects": ({"images": np.array([{"a": 1}], dtype=object)}, "not a readable .npz"),
    "two arrays, no images": ({"a": medmnist_images(5, 1), "b": medmnist_images(5, 1)}, "no `images`"),
    "wrong rank": ({"images": np.zeros((5, 28), np.uint8)}, "expected uint8 (N, H, W)"),
    "channels first uint8": ({"images": np.zeros((5, 3, 28, 28), np.uint8)}, "expected uint8 (N, H, W)"),
    "4 channels": ({"images": np.zeros((5, 28, 28, 4), np.uint8)}, "expected uint8 (N, H, W)"),
    "float out of range": ({"images": np.full((5, 1, 28, 28), 255.0, np.float32)}, "expected [-1, 1]"),
    "float NaN": ({"images": np.full((5, 1, 28, 28), np.nan, np.float32)}, "NaN"),
    "int64": ({"images": np.zeros((5, 28, 28), np.int64)}, "dtype int64"),
    "not square": ({"images": np.zeros((5, 28, 30), np.uint8)}, "28x30"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_load_samples_refuses_bad_files_in_one_line(tmp_path, case):
    content, phrase = BAD_FILES[case]
    path = tmp_path / "s.npz"
    if content == "dir":
        path.mkdir()
    elif content == "truncated":
        np.savez(path, images=medmnist_images(50, 1))
        path.write_bytes(path.read_bytes()[:200])
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, dict):
        np.savez(path, **content)
    with pytest.raises(EvaluateError, match=None) as error:
        load_samples(path)
    message = str(error.value)
    assert phrase in message and "\n" not in message, message


@pytest.mark.parametrize("overrides, phrase", [
    ({}, "exactly one of"),
    ({"ckpt_path": "a.ckpt", "samples": "b.npz"}, "exactly one of"),
    ({"samples": "s.npz", "reference_split": "foo"}, "reference_split must be one of"),
    ({"samples": "s.npz", "n_samples": 0}, "n_samples must be an integer >= 200"),
    ({"samples": "s.npz", "n_samples": 10}, "n_samples must be an integer >= 200"),
    ({"samples": "s.npz", "batch_size": 0}, "batch_size must be an integer >= 1"),
    ({"samples": "few.npz"}, "the metrics need at least 200"),
    ({"samples": "s.npz", "n_samples": 500}, "holds 300 images"),
])
def test_evaluate_refuses_bad_arguments_before_any_work(tmp_path, synthetic_data_dir, overrides, phrase, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.savez(tmp_path / "s.npz", images=medmnist_images(300, 1))
    np.savez(tmp_path / "few.npz", images=medmnist_images(50, 1))
    cfg = evaluate_config(synthetic_data_dir, **{k: str(tmp_path / v) if k in ("samples", "ckpt_path") else v
                                                 for k, v in overrides.items()})
    with pytest.raises(EvaluateError) as error:
        run(cfg)
    assert phrase in str(error.value) and "\n" not in str(error.value), str(error.value)


def test_evaluate_scores_rgb_samples_against_the_rgb_reference(tmp_path, synthetic_data_dir):
    np.savez(tmp_path / "rgb.npz", images=medmnist_images(300, 3))
    result, out = run(evaluate_config(synthetic_data_dir, samples=str(tmp_path / "rgb.npz")))
    assert result["protocol"]["channels"] == 3 and result["protocol"]["n_samples"] == 300
    assert out == tmp_path / "rgb.eval-train-n300.json"


def test_evaluate_refuses_to_replace_an_existing_result(tmp_path, synthetic_data_dir):
    np.savez(tmp_path / "s.npz", images=medmnist_images(300, 1))
    (tmp_path / "taken.json").write_text("{}")
    cfg = evaluate_config(synthetic_data_dir, samples=str(tmp_path / "s.npz"), out=str(tmp_path / "taken.json"))
    with pytest.raises(EvaluateError, match="overwrite=true"):
        run(cfg)
    assert (tmp_path / "taken.json").read_text() == "{}"


@pytest.mark.slow
def test_evaluate_command_answers_a_bad_file_with_one_line_and_exit_2(tmp_path):
    (tmp_path / "bad.npz").write_text("not an archive")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RETINA_GANS_LOGS": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "retina_gans.evaluate", f"samples={tmp_path / 'bad.npz'}"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "not a readable .npz" in errors[0], result.stderr


@pytest.mark.real_data
@pytest.mark.slow
def test_evaluate_scores_real_test_images_near_the_floor_and_noisy_ones_far(tmp_path):
    """The real test split as 'samples' scores near the metric floor; the same images with plainly visible noise
    score many times higher in the main FID (the validity check in miniature, through the command's path)."""
    if not (REAL_DATA_DIR / "retinamnist.npz").is_file():
        pytest.skip("real data not available")
    from retina_gans.data import ensure_data_file, load_split
    from retina_gans.sample import medmnist_layout
    import torch

    images, _ = load_split(ensure_data_file(REAL_DATA_DIR, 28, False, False), "test", 28, 1)
    np.savez(tmp_path / "real.npz", images=medmnist_layout(images))
    noisy = (images.float() / 127.5 - 1 + 0.1 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0)))
    np.savez(tmp_path / "noisy.npz", images=noisy.clamp(-1, 1).numpy())  # float NCHW in [-1, 1]
    scores = {}
    for name in ("real", "noisy"):
        cfg = evaluate_config(REAL_DATA_DIR, samples=str(tmp_path / f"{name}.npz"), extractors=["retina_v2"])
        scores[name] = run(cfg)[0]["metrics"]
    assert all(math.isfinite(v) for v in scores["noisy"].values())
    assert scores["noisy"]["fid_retina_v2"] > 10 * scores["real"]["fid_retina_v2"]
    assert scores["real"]["memorization"] == pytest.approx(1.0)  # the test split against itself as reference
