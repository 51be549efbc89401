"""A run killed mid-epoch and resumed from its last checkpoint ends exactly like the run never interrupted."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from retina_gans.train import build, train

PROJECT = Path(__file__).resolve().parents[1]


class RecordLoaderPosition(L.Callback):
    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []

    def on_train_batch_end(self, trainer, gan, outputs, batch, batch_idx) -> None:
        (loader,) = trainer.fit_loop._combined_loader.flattened
        self.seen.append((loader.state_dict()["position"], trainer.fit_loop.epoch_loop.batch_progress.current.completed + 1))


def test_loader_position_at_a_batch_end_is_the_batches_trained_not_one_ahead(fast_config):
    # 1080 images in batches of 256: 5 per epoch. Lightning's fetcher would prefetch one batch from an
    # iterable without a length; the saved position must count batches trained, not batches fetched.
    datamodule, gan, trainer = build(fast_config("lsgan", "trainer.max_epochs=2"))
    record = RecordLoaderPosition()
    trainer.callbacks.append(record)
    trainer.fit(gan, datamodule=datamodule)
    assert record.seen == [(b, b) for b in range(1, 6)] * 2


def test_resuming_a_finished_run_says_so_and_does_nothing(fast_config, tmp_path, caplog):
    train(fast_config("lsgan"))
    last = tmp_path / "checkpoints" / "last.ckpt"
    before = last.stat().st_mtime_ns
    with caplog.at_level("INFO"):
        assert train(fast_config("lsgan", f"ckpt_path={last}")) == {}
    assert "already finished its 1 epochs" in caplog.text
    assert last.stat().st_mtime_ns == before


def _flat_tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for k in sorted(obj, key=str) for t in _flat_tensors(obj[k])]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _flat_tensors(v)]
    return []


# wgan, n_critic 3: the generator schedule straddles the kill; its generator has BatchNorm (running statistics).
# 1080 images in batches of 128: 9 batches per epoch, 2 epochs; last.ckpt every 4 batches and every epoch;
# step rows every 2 batches; validation (all metrics) at the end of epoch 2.
RUN = ["model=wgan", "model.n_critic=3", "model.generator.width=8", "model.critic.width=8", "data.verify_md5=false",
       "data.batch_size=128", "trainer.max_epochs=2", "trainer.check_val_every_n_epoch=2",
       "trainer.num_sanity_val_steps=0", "trainer.log_every_n_steps=2", "callbacks.progress_bar.refresh_rate=0",
       "trainer.enable_model_summary=false", "accelerator=cpu", "~callbacks.best_checkpoint",
       "callbacks.last_checkpoint.every_n_train_batches=4"]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "retina_gans.train", *args]


def _saved_batches(path: Path) -> int:
    """Training batches done when `path` was written (the write is atomic, so reading it mid-run is safe)."""
    try:
        return torch.load(path, weights_only=True)["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["processed"]
    except (FileNotFoundError, RuntimeError, EOFError):
        return -1


@pytest.mark.slow
@pytest.mark.parametrize("options", [
    [],
    # conditional: batches carry grades, generated grades are drawn from the RNG, grade_counts is a saved buffer;
    # the generator EMA and ADA (p adjusted every 2 critic steps, fast enough to move in 18): their state too
    ["model.conditional=true", "ema=stylegan2", "augment=ada", "model.augment.interval=2",
     "model.augment.adjust_images=2000"],
], ids=["plain", "conditional+ema+ada"])
def test_sigkill_mid_epoch_then_resume_equals_the_uninterrupted_run(options, synthetic_data_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    args = [*RUN, f"data.root={synthetic_data_dir}", *options]
    whole = subprocess.run(_cli(*args, f"hydra.run.dir={tmp_path / 'whole'}"), env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-3000:]

    killed_dir = tmp_path / "killed"
    killed = subprocess.Popen(_cli(*args, f"hydra.run.dir={killed_dir}"), env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = killed_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while _saved_batches(last) < 12 and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)  # wait for the save after batch 12: mid-epoch 2, after an epoch-end save
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    interrupted_at = torch.load(last, weights_only=True)
    fit_loop = interrupted_at["loops"]["fit_loop"]
    assert fit_loop["epoch_progress"]["current"]["completed"] == 1  # in the second epoch ...
    assert 0 < fit_loop["epoch_loop.batch_progress"]["current"]["processed"] < 9  # ... mid-epoch

    resumed = subprocess.run(_cli(*args, f"hydra.run.dir={tmp_path / 'resumed'}", f"ckpt_path={last}"), env=env,
                             cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    a = torch.load(tmp_path / "whole" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["gan_steps"] == b["gan_steps"] == {"critic": 18, "generator": 6}
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:  # bit for bit: weights, BatchNorm running statistics, the EMA and ADA's state
        x, y = _flat_tensors(a["state_dict"][key]), _flat_tensors(b["state_dict"][key])
        assert a["state_dict"][key] == b["state_dict"][key] if not x else all(map(torch.equal, x, y)), key
    opt_a, opt_b = _flat_tensors(a["optimizer_states"]), _flat_tensors(b["optimizer_states"])
    assert len(opt_a) == len(opt_b) and all(torch.equal(x, y) for x, y in zip(opt_a, opt_b))
    # Every logged row, step and epoch metrics and the validation metrics, as text.
    whole_csv = (tmp_path / "whole" / "metrics.csv").read_text()
    assert "val/fid_retina" in whole_csv.splitlines()[0]
    assert (tmp_path / "resumed" / "metrics.csv").read_text() == whole_csv


@pytest.mark.slow
def test_sigterm_saves_the_last_checkpoint_and_exits_143(synthetic_data_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    run_dir = tmp_path / "run"
    args = [*RUN, f"data.root={synthetic_data_dir}", "trainer.max_epochs=50", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(_cli(*args), env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while _saved_batches(last) < 4 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    saved_before = _saved_batches(last)
    proc.send_signal(signal.SIGTERM)
    output = "".join(proc.communicate(timeout=300))
    assert proc.returncode == 143, output[-3000:]
    assert "stopped by SIGTERM; resume with: python -m retina_gans.train " in output and "Traceback" not in output
    assert f"ckpt_path={run_dir}/checkpoints/last.ckpt" in output
    # Usually saved again at the batch end where Lightning stopped (checked exactly in-process below); a signal
    # landing between that batch's checkpoint hook and Lightning's check stops it with the last save kept.
    assert _saved_batches(last) >= saved_before > 0


class SigtermDuringBatch(L.Callback):
    """Sends this process SIGTERM at the start of one training batch, as a scheduler would mid-step."""

    def __init__(self, batch: int) -> None:
        self.batch = batch  # 1-based, counted over the whole run

    def on_train_batch_start(self, trainer, gan, batch, batch_idx) -> None:
        if trainer.fit_loop.epoch_loop.total_batch_idx + 1 == self.batch:
            os.kill(os.getpid(), signal.SIGTERM)  # Lightning's handler only sets trainer.received_sigterm


def test_sigterm_mid_batch_saves_that_batch_then_stops(synthetic_data_dir, tmp_path):
    from lightning.pytorch.utilities.exceptions import SIGTERMException
    from tests.conftest import compose_config

    cfg = compose_config([*RUN, f"data.root={synthetic_data_dir}", "trainer.max_epochs=50"], tmp_path)
    datamodule, gan, trainer = build(cfg)
    trainer.callbacks.append(SigtermDuringBatch(6))  # not a save point: those are batches 4, 8 and epoch ends
    with pytest.raises(SIGTERMException):
        trainer.fit(gan, datamodule=datamodule)
    assert _saved_batches(tmp_path / "checkpoints" / "last.ckpt") == 6 == gan.critic_steps
