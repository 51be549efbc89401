import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from retina_gans.sample_grid import SampleGrid
from retina_gans.train import build, train
from retina_gans.variants import variant_names
from tests.conftest import FAST, REAL_DATA_DIR, compose_config

MODELS = variant_names()
PROJECT = Path(__file__).resolve().parents[1]


def adam_steps(optimizer: torch.optim.Optimizer) -> int:
    """How many times this Adam actually stepped (its own per-parameter counter)."""
    return int(next(iter(optimizer.state.values()))["step"])


@pytest.mark.parametrize("model", MODELS)
def test_fit_takes_exactly_the_scheduled_critic_and_generator_steps(model, fast_config):
    # 1080 images in batches of 256 -> 5 batches per epoch (the last one 56); 2 epochs -> 10 critic steps.
    cfg = fast_config(model, "model.n_critic=3", "trainer.max_epochs=2")
    datamodule, gan, trainer = build(cfg)
    trainer.fit(gan, datamodule=datamodule)
    critic_opt, generator_opt = (o.optimizer for o in gan.optimizers())
    assert (gan.critic_steps, gan.generator_steps) == (10, 3)  # generator after critic steps 3, 6, 9
    assert (adam_steps(critic_opt), adam_steps(generator_opt)) == (10, 3)
    assert trainer.global_step == 13  # Lightning counts both optimizers' steps (#17958)
    assert trainer.callback_metrics["train/generator_steps"] == 3


class AssertClipped(L.Callback):
    def __init__(self, c: float) -> None:
        self.c, self.checked = c, 0

    def on_train_batch_end(self, trainer, gan, *args) -> None:  # every batch ends with a critic step
        assert max(p.abs().max().item() for p in gan.critic.parameters()) <= self.c
        self.checked += 1


def test_wgan_critic_weights_stay_clipped_after_every_critic_step(fast_config):
    cfg = fast_config("wgan", "model.clip_value=0.005")
    datamodule, gan, trainer = build(cfg)
    check = AssertClipped(0.005)
    trainer.callbacks.append(check)
    trainer.fit(gan, datamodule=datamodule)
    assert check.checked == 5
    assert any(p.abs().max() == 0.005 for p in gan.critic.parameters())  # the clip was actually active


@pytest.mark.parametrize("model", MODELS)
def test_step_losses_are_logged_under_their_names(model, fast_config, tmp_path):
    metrics = train(fast_config(model, "model.n_critic=1"))
    expected = {"train/critic_loss_epoch", "train/generator_loss_epoch", "train/critic_steps"}
    expected |= {"wgan": {"train/wasserstein_distance_epoch"}, "lsgan_gp": {"train/gradient_penalty_epoch"},
                 "wgan_gp": {"train/wasserstein_distance_epoch", "train/gradient_penalty_epoch"}}.get(model, set())
    assert expected <= set(metrics)
    assert all(math.isfinite(metrics[k]) for k in expected)
    assert list((tmp_path / "samples").glob("epoch_0000.png"))  # the fixed-noise grid of the epoch
    assert list(tmp_path.glob("events.out.tfevents.*")) and (tmp_path / "metrics.csv").exists()
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()


def test_epoch_means_are_the_batch_weighted_means_of_the_step_values(fast_config, tmp_path):
    # every batch logged: 5 batches per epoch (4 x 256 + 56), generator after every 2nd critic step
    train(fast_config("wgan_gp", "model.n_critic=2", "trainer.max_epochs=2", "trainer.log_every_n_steps=1"))
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    sizes = [256, 256, 256, 256, 56]
    for epoch in (0, 1):
        steps = [r for r in rows if r["epoch"] == str(epoch) and r["train/critic_loss_step"]]
        (end,) = [r for r in rows if r["epoch"] == str(epoch) and r["train/critic_loss_epoch"]]
        assert len(steps) == 5
        for name in ("critic_loss", "wasserstein_distance", "gradient_penalty"):
            values = [float(r[f"train/{name}_step"]) for r in steps]
            weighted = sum(v * n for v, n in zip(values, sizes)) / sum(sizes)
            assert float(end[f"train/{name}_epoch"]) == pytest.approx(weighted, rel=1e-5)
    # the generator loss: the latest value on every step row, and the mean over the generator's own steps
    generator = [r["train/generator_loss_step"] for r in rows if r["train/critic_loss_step"]]
    assert generator[0] == ""  # no generator step yet
    assert generator[1] == generator[2] != generator[3] == generator[4]  # it stepped at critic steps 2 and 4
    (end,) = [r for r in rows if r["epoch"] == "0" and r["train/generator_loss_epoch"]]
    weighted = (float(generator[1]) * 256 + float(generator[3]) * 256) / 512
    assert float(end["train/generator_loss_epoch"]) == pytest.approx(weighted, rel=1e-5)


def test_sample_grid_png_and_tensorboard_image_hold_the_same_grayscale_grid(fast_config, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torchvision.io import decode_png

    train(fast_config("lsgan", "model.n_grid_samples=16"))
    png = (tmp_path / "samples" / "epoch_0000.png").read_bytes()
    grid = decode_png(torch.frombuffer(bytearray(png), dtype=torch.uint8))
    assert grid.shape == (1, 2 + 2 * 30, 2 + 8 * 30)  # 16 samples, 8 per row, 28 px + 2 px padding, one channel
    assert grid.float().std() > 0  # generated pixels, not an empty canvas
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    events.Reload()
    (image,) = events.Images("samples")
    assert (image.step, image.encoded_image_string) == (0, png)


def test_sample_grid_is_written_every_n_epochs_and_after_the_last(fast_config, tmp_path):
    train(fast_config("lsgan", "trainer.max_epochs=5", "callbacks.sample_grid.every_n_epochs=2"))
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == [
        "epoch_0001.png", "epoch_0003.png", "epoch_0004.png"]  # epochs 2 and 4 (1-based), and the last


def test_sample_grid_interval_must_be_a_positive_integer():
    with pytest.raises(ValueError, match="callbacks.sample_grid.every_n_epochs must be an integer >= 1"):
        SampleGrid(0)


def final_weights(cfg) -> torch.Tensor:
    datamodule, gan, trainer = build(cfg)
    trainer.fit(gan, datamodule=datamodule)
    return torch.cat([p.detach().flatten() for p in gan.parameters()])


def test_same_seed_same_weights_different_seed_different(fast_config):
    first = final_weights(fast_config("wgan_gp", "seed=1"))
    again = final_weights(fast_config("wgan_gp", "seed=1"))
    other = final_weights(fast_config("wgan_gp", "seed=2"))
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_resume_from_last_checkpoint_continues_the_schedule(fast_config, tmp_path):
    train(fast_config("wgan", "model.n_critic=2"))
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["gan_steps"] == {"critic": 5, "generator": 2}
    cfg = fast_config("wgan", "model.n_critic=2", "trainer.max_epochs=2", f"ckpt_path={last}")
    datamodule, gan, trainer = build(cfg)
    trainer.fit(gan, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    assert (gan.critic_steps, gan.generator_steps) == (10, 5)


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.n_critic=0", "n_critic must be an integer >= 1"),
        ("model.clip_value=0", "clip_value must be a number > 0"),
        ("model.gp_weight=-1", "gp_weight must be a number >= 0"),
        ("model.critic.batch_norm=true", "set model.critic.batch_norm=false"),
    ],
)
def test_invalid_hyperparameters_fail_when_the_model_is_built(override, message, fast_config):
    model = "wgan" if "clip" in override else "wgan_gp"
    with pytest.raises(ValueError, match=message):
        build(fast_config(model, override))


@pytest.mark.real_data
@pytest.mark.skipif(not (REAL_DATA_DIR / "retinamnist.npz").exists(), reason="../shared/data/retinamnist.npz not here")
@pytest.mark.parametrize("model", MODELS)
def test_one_real_epoch_of_each_variant(model, tmp_path):
    overrides = [f"model={model}", f"data.root={REAL_DATA_DIR}", "trainer.max_epochs=1", "accelerator=cpu",
                 "callbacks.progress_bar.refresh_rate=0", "trainer.check_val_every_n_epoch=1"]
    cfg = compose_config(overrides, tmp_path)
    datamodule, gan, trainer = build(cfg)
    trainer.fit(gan, datamodule=datamodule)
    real = datamodule.model_images("train")
    assert real.shape == (1080, 1, 28, 28) and real.min() >= -1 and real.max() <= 1
    assert gan.critic_steps == 17 and math.isfinite(trainer.callback_metrics["val/fid_retina"])


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    return subprocess.run([sys.executable, "-m", "retina_gans.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


CLI_FAST = [o for o in FAST if not o.startswith("~callbacks")] + ["~callbacks.best_checkpoint"]


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_trains(synthetic_data_dir, tmp_path):
    fast = [o for o in CLI_FAST if not o.startswith("accelerator=")]
    result = run_cli("accelerator=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "model=wgan_gp",
                     f"data.root={synthetic_data_dir}", *fast, "data.batch_size=128",
                     f"paths.log_dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (last,) = tmp_path.glob("train/runs/wgan_gp/*/checkpoints/last.ckpt")
    # Each rank takes half of every epoch: ceil(540 / 128) = 5 critic steps per process.
    assert torch.load(last, weights_only=False)["gan_steps"]["critic"] == 5


@pytest.mark.slow
def test_multirun_puts_each_job_in_its_own_folder(synthetic_data_dir, tmp_path):
    result = run_cli("--multirun", "model=lsgan,wgan", "seed=0,1", f"data.root={synthetic_data_dir}",
                     *CLI_FAST, f"paths.log_dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p.parent.parent.name for p in tmp_path.glob("train/multiruns/*/*/checkpoints/last.ckpt"))
    assert [job.split("_", 1)[0] for job in jobs] == ["0", "1", "2", "3"]  # named by number, then overrides
    assert all(len(job) <= 2 + 120 for job in jobs) and jobs[0].startswith("0_accelerator=cpu,callbacks.")


def test_missing_data_is_one_clear_line_and_exit_code_2(tmp_path):
    result = run_cli(f"data.root={tmp_path / 'nowhere'}", "data.download=false", f"paths.log_dir={tmp_path}",
                     cwd=tmp_path)
    assert result.returncode == 2
    assert "RetinaMNIST file not found" in result.stderr and "Traceback" not in result.stderr


class RecordDtypes(L.Callback):
    def __init__(self) -> None:
        self.fake_dtypes, self.grad_dtypes = set(), set()

    def on_train_batch_end(self, trainer, gan, outputs, batch, batch_idx) -> None:
        self.fake_dtypes.add(outputs["fake"].dtype)
        self.grad_dtypes |= {p.grad.dtype for p in gan.critic.parameters() if p.grad is not None}


@pytest.mark.parametrize("model", ["lsgan", "wgan_gp"])
def test_bf16_mixed_trains_with_bf16_forward_passes_and_fp32_weights_and_gradients(model, fast_config):
    datamodule, gan, trainer = build(fast_config(model, "trainer.precision=bf16-mixed", "model.n_critic=1"))
    dtypes = RecordDtypes()
    trainer.callbacks.append(dtypes)
    trainer.fit(gan, datamodule=datamodule)
    assert dtypes.fake_dtypes == {torch.bfloat16}  # the generator ran under autocast
    assert dtypes.grad_dtypes == {torch.float32} and all(p.dtype == torch.float32 for p in gan.parameters())
    assert all(math.isfinite(float(v)) for k, v in trainer.callback_metrics.items() if k.startswith("train/"))
