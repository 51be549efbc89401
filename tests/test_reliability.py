"""Bad input gives its own one-line error and touches nothing outside the run folder; checkpoints are never
half-written; a NaN stops (or skips) cleanly; a failing sweep job does not stop the others."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.errors import ConfigCompositionException

from retina_gans import checkpointing, data
from retina_gans.checkpointing import CheckpointFileError, read_checkpoint
from retina_gans.config_validation import ConfigError
from retina_gans.data import DataFileError, ensure_data_file
from retina_gans.divergence import DivergenceError
from retina_gans.train import train
from tests.conftest import FAST, compose_config, write_synthetic_retinamnist

PROJECT = Path(__file__).resolve().parents[1]


# ---- every bad input: its own error, nothing outside the run folder touched ----------------------------

def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A folder outside every run: data files good and bad, checkpoints good and bad."""
    root = tmp_path_factory.mktemp("inputs")
    good = write_synthetic_retinamnist(root / "good")
    (root / "empty").mkdir()
    (root / "not_zip").mkdir()
    (root / "not_zip" / "retinamnist.npz").write_bytes(b"PK\x03\x04 this is not a zip archive")
    (root / "truncated").mkdir()
    (root / "truncated" / "retinamnist.npz").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (root / "wrong_shape").mkdir()
    arrays = dict(np.load(good))
    arrays["train_images"] = arrays["train_images"][:, :20, :20]
    np.savez_compressed(root / "wrong_shape" / "retinamnist.npz", **arrays)
    (root / "bad_labels").mkdir()
    arrays = dict(np.load(good))
    arrays["train_labels"] = arrays["train_labels"] + 7
    np.savez_compressed(root / "bad_labels" / "retinamnist.npz", **arrays)
    (root / "is_a_dir" / "retinamnist.npz").mkdir(parents=True)

    cfg = compose_config(["model=lsgan", f"data.root={root / 'good'}", *FAST], root / "run")
    train(cfg)
    ckpt = root / "ckpt"
    ckpt.mkdir()
    good_ckpt = (root / "run" / "checkpoints" / "last.ckpt").read_bytes()
    (ckpt / "good.ckpt").write_bytes(good_ckpt)
    (ckpt / "truncated.ckpt").write_bytes(good_ckpt[: len(good_ckpt) // 2])
    (ckpt / "empty.ckpt").write_bytes(b"")
    (ckpt / "text.ckpt").write_text("not a checkpoint\n")
    torch.save({"weight": torch.zeros(3)}, ckpt / "foreign_state_dict.ckpt")
    torch.save({"callback": np.random.default_rng(0)}, ckpt / "foreign_pickle.ckpt")  # needs arbitrary unpickling
    # A mid-epoch checkpoint: the guard stops the run at critic step 4, last.ckpt is from after step 3.
    with pytest.raises(DivergenceError):
        train(compose_config(["model=lsgan", f"data.root={root / 'good'}", *FAST, "debug.inject_nan_at_step=4",
                              "callbacks.last_checkpoint.every_n_train_batches=1"], root / "run_mid"))
    (ckpt / "mid_epoch.ckpt").write_bytes((root / "run_mid" / "checkpoints" / "last.ckpt").read_bytes())
    flipped = bytearray(good_ckpt)
    flipped[len(flipped) // 3] ^= 0xFF  # one byte inside a stored tensor: only the CRC notices
    (ckpt / "flipped_byte.ckpt").write_bytes(bytes(flipped))
    return root


CASES = [  # id, model, overrides (with {inputs}), exception, message (regex)
    ("batch_size_zero", "lsgan", ["data.batch_size=0"], ConfigError, r"data.batch_size must be an integer >= 1, got 0"),
    ("batch_size_text", "lsgan", ["data.batch_size=abc"], ConfigError, r"data.batch_size must be an integer >= 1, got 'abc'"),
    ("batch_size_too_big", "lsgan", ["data.batch_size=5000"], ValueError, r"larger than the training set \(1080 images\)"),
    ("size", "lsgan", ["data.size=32"], ConfigError, r"data.size must be one of \[28, 64, 128, 224\]"),
    ("channels", "lsgan", ["data.channels=2"], ConfigError, r"data.channels must be one of \[1, 3\].*got 2"),
    ("reference_split", "lsgan", ["data.reference_split=training"], ConfigError, r"reference_split must be one of \['train', 'val', 'test'\]"),
    ("n_critic", "wgan", ["model.n_critic=0"], ConfigError, r"model.n_critic must be an integer >= 1"),
    ("latent_dim", "lsgan", ["model.latent_dim=-1"], ConfigError, r"model.latent_dim must be an integer >= 1, got -1"),
    ("clip_value", "wgan", ["model.clip_value=0"], ConfigError, r"model.clip_value must be a number > 0"),
    ("gp_weight", "wgan_gp", ["model.gp_weight=-1"], ConfigError, r"model.gp_weight must be a number >= 0, got -1"),
    ("width", "lsgan", ["model.generator.width=0"], ConfigError, r"model.generator.width must be an integer >= 1"),
    ("lr", "lsgan", ["model.critic_optimizer.lr=0"], ConfigError, r"model.critic_optimizer.lr must be a number > 0"),
    ("betas", "lsgan", ["model.generator_optimizer.betas=[0.5,1.0]"], ConfigError, r"betas must be two numbers in \[0, 1\)"),
    ("max_epochs", "lsgan", ["trainer.max_epochs=0"], ConfigError, r"trainer.max_epochs must be an integer >= 1"),
    ("check_val", "lsgan", ["trainer.check_val_every_n_epoch=0"], ConfigError, r"check_val_every_n_epoch must be null or an integer >= 1"),
    ("accelerator", "lsgan", ["trainer.accelerator=quantum"], ConfigError, r"trainer.accelerator must be one of \['auto', 'cpu'"),
    ("precision", "lsgan", ["trainer.precision=8-true"], ConfigError, r"trainer.precision must be one of \['32-true'"),
    ("extractors", "lsgan", ["metrics.extractors=[fid]"], ConfigError, r"metrics.extractors must be 'auto' or a non-empty list drawn from \['retina_v2', 'retina', 'inception'\], got \['fid'\]"),
    ("ema_half_life", "lsgan", ["ema=stylegan2", "model.ema.half_life_images=0"], ConfigError, r"model.ema.half_life_images must be a number > 0, got 0"),
    ("diffaugment_policy", "lsgan", ["augment=diffaugment", "model.augment.policy=[color,flip]"], ConfigError, r"model.augment.policy must be a non-empty list drawn from \['color', 'translation', 'cutout'\], got \['color', 'flip'\]"),
    ("ada_p", "lsgan", ["augment=ada", "model.augment.p=1.5"], ConfigError, r"model.augment.p must be a number in \[0, 1\], got 1.5"),
    ("ada_target", "wgan", ["augment=ada", "model.augment.target=1"], ConfigError, r"model.augment.target must be null \(p fixed\) or a number in \(-1, 1\), got 1"),
    ("ada_interval", "lsgan", ["augment=ada", "model.augment.interval=0"], ConfigError, r"model.augment.interval must be an integer >= 1, got 0"),
    ("lecam_decay", "nsgan", ["lecam=tseng2021", "model.lecam.decay=1"], ConfigError, r"model.lecam.decay must be a number in \[0, 1\), got 1"),
    ("lecam_weight", "nsgan", ["lecam=tseng2021", "model.lecam.weight=-0.1"], ConfigError, r"model.lecam.weight must be a number >= 0, got -0.1"),
    ("guard_action", "lsgan", ["callbacks.divergence_guard.action=ignore"], ConfigError, r"divergence_guard.action must be one of \['stop', 'skip'\]"),
    ("save_interval", "lsgan", ["callbacks.last_checkpoint.every_n_train_batches=0"], ConfigError, r"every_n_train_batches must be null or an integer >= 1"),
    ("data_missing", "lsgan", ["data.root={inputs}/empty", "data.download=false"], DataFileError, r"RetinaMNIST file not found: .*empty/retinamnist.npz"),
    ("data_is_a_folder", "lsgan", ["data.root={inputs}/is_a_dir"], DataFileError, r"is_a_dir/retinamnist.npz is not a file"),
    ("data_md5", "lsgan", ["data.root={inputs}/good", "data.verify_md5=true"], DataFileError, r"does not match MedMNIST's published md5"),
    ("data_not_zip", "lsgan", ["data.root={inputs}/not_zip"], DataFileError, r"not_zip/retinamnist.npz is not a readable MedMNIST npz"),
    ("data_truncated", "lsgan", ["data.root={inputs}/truncated"], DataFileError, r"truncated/retinamnist.npz is not a readable MedMNIST npz"),
    ("data_wrong_shape", "lsgan", ["data.root={inputs}/wrong_shape"], DataFileError, r"train_images is uint8\[1080, 20, 20, 3\].*expected uint8\[1080, 28, 28, 3\]"),
    ("data_bad_labels", "lsgan", ["data.root={inputs}/bad_labels"], DataFileError, r"train_labels hold values outside 0..4"),
    ("ckpt_missing", "lsgan", ["ckpt_path={inputs}/ckpt/nowhere.ckpt"], CheckpointFileError, r"checkpoint not found: .*nowhere.ckpt"),
    ("ckpt_folder", "lsgan", ["ckpt_path={inputs}/ckpt"], CheckpointFileError, r"checkpoint .*/ckpt is not a file"),
    ("ckpt_truncated", "lsgan", ["ckpt_path={inputs}/ckpt/truncated.ckpt"], CheckpointFileError, r"truncated.ckpt is truncated or not a torch checkpoint"),
    ("ckpt_empty", "lsgan", ["ckpt_path={inputs}/ckpt/empty.ckpt"], CheckpointFileError, r"empty.ckpt is truncated or not a torch checkpoint"),
    ("ckpt_text", "lsgan", ["ckpt_path={inputs}/ckpt/text.ckpt"], CheckpointFileError, r"text.ckpt is truncated or not a torch checkpoint"),
    ("ckpt_flipped_byte", "lsgan", ["ckpt_path={inputs}/ckpt/flipped_byte.ckpt"], CheckpointFileError, r"flipped_byte.ckpt (is corrupt \(bad CRC|cannot be loaded)"),
    ("ckpt_foreign_dict", "lsgan", ["ckpt_path={inputs}/ckpt/foreign_state_dict.ckpt"], CheckpointFileError, r"foreign_state_dict.ckpt is not a retina-gans training checkpoint \(missing state_dict"),
    ("ckpt_foreign_pickle", "lsgan", ["ckpt_path={inputs}/ckpt/foreign_pickle.ckpt"], CheckpointFileError, r"foreign_pickle.ckpt cannot be loaded \(UnpicklingError"),
    ("ckpt_ema_switched_on", "lsgan", ["ckpt_path={inputs}/ckpt/mid_epoch.ckpt", "ema=stylegan2"], ConfigError, r"other settings than this run has \(model.ema None -> retina_gans.ema.GeneratorEMA\).*repeat them \(~ema\)"),
    ("ckpt_lecam_switched_on", "lsgan", ["ckpt_path={inputs}/ckpt/mid_epoch.ckpt", "lecam=tseng2021"], ConfigError, r"other settings than this run has \(model.lecam None -> retina_gans.regularizers.LeCam\).*repeat them \(~lecam\)"),
    ("ckpt_other_batch_size", "lsgan", ["ckpt_path={inputs}/ckpt/mid_epoch.ckpt", "data.batch_size=128"], ConfigError, r"other settings than this run has \(data.batch_size 256 -> 128\).*repeat them \(data.batch_size=256\)"),
]


@pytest.mark.parametrize("model, overrides, error, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gives_its_error_and_touches_nothing_outside_the_run(model, overrides, error, message, inputs,
                                                                       synthetic_data_dir, tmp_path):
    overrides = [o.format(inputs=inputs) for o in overrides]
    root = [] if any(o.startswith("data.root=") for o in overrides) else [f"data.root={synthetic_data_dir}"]
    cfg = compose_config([f"model={model}", *root, *FAST, *overrides], tmp_path / "run")
    before = _tree(inputs), _tree(synthetic_data_dir)
    with pytest.raises(error, match=message) as raised:
        train(cfg)
    assert "\n" not in str(raised.value)  # one line
    assert (_tree(inputs), _tree(synthetic_data_dir)) == before


def test_unknown_config_key_is_rejected_by_hydra():
    with pytest.raises(ConfigCompositionException, match="n_critc"):
        compose_config(["model.n_critc=3"])


@pytest.mark.parametrize("overrides, message", [
    (["model.n_critic=0"], "error: model.n_critic must be an integer >= 1"),
    (["augment=ada", "model.augment.adjust_images=0"], "error: model.augment.adjust_images must be a number > 0"),
])
def test_a_bad_config_on_the_command_line_is_one_line_and_exit_code_2(overrides, message, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    result = subprocess.run([sys.executable, "-m", "retina_gans.train", *overrides, f"paths.log_dir={tmp_path}"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    output = result.stdout + result.stderr
    assert message in output and "Traceback" not in output


# ---- data download: atomic, offline --------------------------------------------------------------------

def test_interrupted_download_leaves_no_half_file(tmp_path, monkeypatch):
    class PartialDownload:
        def __init__(self, split, root, download, size):
            Path(root, "retinamnist.npz").write_bytes(b"PK\x03\x04 half a file")
            raise RuntimeError("connection reset\nmedmnist's multi-line advice")

    monkeypatch.setattr(data.medmnist, "RetinaMNIST", PartialDownload)
    with pytest.raises(DataFileError, match=r"could not download retinamnist.npz \(RuntimeError\)"):
        ensure_data_file(tmp_path / "data", 28, download=True, verify_md5=True)
    assert list((tmp_path / "data").iterdir()) == []  # neither the half file nor the temporary folder


def test_good_download_is_renamed_into_place(tmp_path, monkeypatch):
    class GoodDownload:
        def __init__(self, split, root, download, size):
            write_synthetic_retinamnist(Path(root))

    monkeypatch.setattr(data.medmnist, "RetinaMNIST", GoodDownload)
    path = ensure_data_file(tmp_path / "data", 28, download=True, verify_md5=False)
    assert path == tmp_path / "data" / "retinamnist.npz" and path.is_file()
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["retinamnist.npz"]
    monkeypatch.undo()  # the real medmnist reads the file back
    assert data.load_split(path, "test", 28, 1)[0].shape == (400, 1, 28, 28)


# ---- checkpoints: atomic writes --------------------------------------------------------------------------

def test_a_write_that_dies_halfway_keeps_the_previous_checkpoint(fast_config, tmp_path, monkeypatch):
    train(fast_config("lsgan"))
    last = tmp_path / "checkpoints" / "last.ckpt"
    good = last.read_bytes()
    real_save = torch.save

    def dies_halfway(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 the first bytes of a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpointing.torch, "save", dies_halfway)
    with pytest.raises(OSError, match="No space left"):
        checkpointing.atomic_torch_save({"x": 1}, last)
    monkeypatch.setattr(checkpointing.torch, "save", real_save)
    assert last.read_bytes() == good and read_checkpoint(last)["gan_steps"]["critic"] == 5
    assert [p.name for p in last.parent.iterdir()] == ["last.ckpt"]  # no temporary file left


# ---- divergence guard -----------------------------------------------------------------------------------

def test_nan_stops_the_run_keeps_the_last_good_checkpoint_and_marks_it_diverged(fast_config, tmp_path):
    cfg = fast_config("lsgan", "debug.inject_nan_at_step=3", "callbacks.last_checkpoint.every_n_train_batches=1",
                      "trainer.log_every_n_steps=1")
    with pytest.raises(DivergenceError, match=r"diverged at critic step 3 \(epoch 0\): critic_loss.* not finite") as raised:
        train(cfg)
    assert "last good checkpoint kept" in str(raised.value)
    last = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert last["gan_steps"]["critic"] == 2  # written after step 2, never after the NaN
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values() if t.is_floating_point())
    marker = json.loads((tmp_path / "diverged.json").read_text())
    assert marker["critic_step"] == 3 and "critic_loss" in marker["values"]
    assert "train/diverged" in (tmp_path / "metrics.csv").read_text().splitlines()[0]


def test_with_a_check_interval_the_nan_is_still_caught_before_any_checkpoint(fast_config, tmp_path):
    cfg = fast_config("lsgan", "debug.inject_nan_at_step=2", "callbacks.divergence_guard.check_every_n_steps=4",
                      "callbacks.last_checkpoint.every_n_train_batches=3")
    with pytest.raises(DivergenceError, match="critic step 2"):
        train(cfg)
    assert not (tmp_path / "checkpoints" / "last.ckpt").exists()  # the save after batch 3 checked first


def test_skip_drops_the_bad_update_and_the_run_completes(fast_config, tmp_path):
    metrics = train(fast_config("lsgan", "debug.inject_nan_at_step=2", "callbacks.divergence_guard.action=skip"))
    last = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert last["gan_steps"]["critic"] == 5
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values() if t.is_floating_point())
    assert metrics["train/skipped_batches"] == 1 and not (tmp_path / "diverged.json").exists()


# ---- sweeps ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_one_failing_sweep_job_does_not_stop_the_others_and_the_summary_names_it(synthetic_data_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    fast = [o for o in FAST if not o.startswith("~callbacks")] + ["~callbacks.best_checkpoint"]
    result = subprocess.run(
        [sys.executable, "-m", "retina_gans.train", "--multirun", "model=lsgan", "model.critic_optimizer.lr=-1,2e-4",
         f"data.root={synthetic_data_dir}", *fast, f"paths.log_dir={tmp_path}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0  # the sweep as a whole reports the failure ...
    (sweep,) = tmp_path.glob("train/multiruns/*")
    summary = json.loads((sweep / "summary.json").read_text())
    assert summary["counts"] == {"completed": 1, "diverged": 0, "failed": 1}
    failed, completed = summary["jobs"]
    assert "model.critic_optimizer.lr=-1" in failed["overrides"] and failed["status"] == "failed"
    assert failed["error"].startswith("ConfigError: model.critic_optimizer.lr must be a number > 0, got -1")
    assert completed["status"] == "completed"  # ... but the job after the failed one ran to the end
    assert (Path(completed["output_dir"]) / "checkpoints" / "last.ckpt").exists()
    failed_row = next(line for line in (sweep / "summary.md").read_text().splitlines() if line.startswith("| 0 |"))
    assert "model.critic_optimizer.lr=-1" in failed_row and "| failed |" in failed_row
