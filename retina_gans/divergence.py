"""Divergence guard: a NaN or Inf in a loss or in the generator's output stops the run (or skips the batch).

`GAN.training_step` returns its detached losses and the generated batch; this callback checks them. The check
stays on the device (one boolean per value) and is read back only every `check_every_n_steps` steps, before
every checkpoint write and before validation, so on a GPU the hot path has no per-step host-device sync.
"""

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

log = logging.getLogger(__name__)

ACTIONS = ("stop", "skip")
MARKER = "diverged.json"


class DivergenceError(RuntimeError):
    """Training produced a NaN or Inf; the run stopped and kept its last good checkpoint."""


class DivergenceGuard(L.Callback):
    """Watches every loss the training step returns, and the generated batch, for non-finite values.

    stop (default): raise DivergenceError naming the critic step and the values, write `<run>/diverged.json`
    and log `train/diverged = 1`; checkpoints are written only after a clean check (see LastCheckpoint).
    skip: before each optimizer step, drop the update if its gradients are not finite (this needs a decision
    per step, so it reads a flag back every step) and put back that net's BatchNorm statistics; a batch whose update was dropped is logged and training goes on,
    unless the weights themselves are no longer finite (then it stops as above). The skipped batch's losses are
    still logged as they were (NaN), so that epoch's mean losses read NaN; `train/skipped_batches` counts them.
    inject_nan_at_step: TEST/DEBUG HOOK ONLY: fill the real batch of that critic step (1-based) with NaN.
    """

    def __init__(self, action: str, check_every_n_steps: int, inject_nan_at_step: int | None = None) -> None:
        if action not in ACTIONS:
            raise ValueError(f"divergence guard action must be one of {ACTIONS}, got {action!r}")
        self.action = action
        self.check_every_n_steps = check_every_n_steps
        self.inject_nan_at_step = inject_nan_at_step
        self._pending: list[tuple[int, list[str], Tensor]] = []  # (critic step, value names, non-finite flags)
        self._dropped_update = False
        self._buffers: dict[torch.nn.Module, list[Tensor]] = {}
        self.skipped_batches = 0

    def on_train_batch_start(self, trainer: L.Trainer, gan: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._dropped_update = False
        if self.action == "skip":  # BatchNorm running statistics: the bad batch's forward pass changes them too
            self._buffers = {net: [b.detach().clone() for b in net.buffers()] for net in (gan.generator, gan.critic)}
        if self.inject_nan_at_step is not None and gan.critic_steps + 1 == self.inject_nan_at_step:
            images = batch[0] if isinstance(batch, (tuple, list)) else batch  # conditional: (images, grades)
            images.fill_(float("nan"))  # a copy sliced from the data tensor: the data set itself is untouched

    def on_before_optimizer_step(self, trainer: L.Trainer, gan: L.LightningModule, optimizer: Any) -> None:
        if self.action != "skip":
            return
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grads and not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
            params = {p for group in optimizer.param_groups for p in group["params"]}
            for p in params:  # Adam skips parameters without a gradient: no update at all
                p.grad = None
            for net, saved in self._buffers.items():
                if any(p in params for p in net.parameters()):
                    for buffer, value in zip(net.buffers(), saved):
                        buffer.copy_(value)
            self._dropped_update = True

    def on_train_batch_end(self, trainer: L.Trainer, gan: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not outputs:
            return
        names = list(outputs)
        # A NaN or Inf anywhere in a value makes its sum non-finite (a sum of finite images cannot overflow): one
        # reduction per image batch and one isfinite for all, not an isfinite + all per value (0.6 ms a batch on CPU).
        sums = [v if v.dim() == 0 else v.sum() for v in (outputs[k] for k in names)]
        flags = ~torch.isfinite(torch.stack([v.float() for v in sums]))  # (len(names),) bool, on device
        self._pending.append((gan.critic_steps, names, flags))
        if self.action == "skip" or len(self._pending) >= self.check_every_n_steps:
            self.check_pending(trainer)

    def on_validation_start(self, trainer: L.Trainer, gan: L.LightningModule) -> None:
        if trainer.training or trainer.state.fn == "fit":
            self.check_pending(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, gan: L.LightningModule) -> None:
        self.check_pending(trainer)

    def check_pending(self, trainer: L.Trainer) -> None:
        """Read back the flags of the steps not checked yet (one sync); stop or skip on the first bad one."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        bad = torch.stack([flags.any() for _, _, flags in pending]).cpu()  # the one host-device sync
        for (step, names, flags), is_bad in zip(pending, bad.tolist()):
            if not is_bad:
                continue
            values = [n for n, f in zip(names, flags.cpu().tolist()) if f]
            gan = trainer.lightning_module
            if self.action == "skip" and self._dropped_update and all(torch.isfinite(p).all() for p in gan.parameters()):
                self.skipped_batches += 1
                log.warning("critic step %d: %s not finite; update dropped, batch skipped", step, ", ".join(values))
                gan.log("train/skipped_batches", float(self.skipped_batches), on_step=False, on_epoch=True, reduce_fx="max")
                continue
            self._stop(trainer, step, values)

    def _stop(self, trainer: L.Trainer, step: int, values: list[str]) -> None:
        run_dir = Path(trainer.default_root_dir)
        last = run_dir / "checkpoints" / "last.ckpt"
        kept = f"last good checkpoint kept: {last}" if last.exists() else "no checkpoint had been written yet"
        message = (
            f"training diverged at critic step {step} (epoch {trainer.current_epoch}): "
            f"{', '.join(values)} not finite (NaN/Inf); {kept}"
        )
        if trainer.is_global_zero:
            marker = {"diverged": True, "critic_step": step, "epoch": trainer.current_epoch, "values": values,
                      "last_checkpoint": str(last) if last.exists() else None}
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
            for logger in trainer.loggers:
                logger.log_metrics({"train/diverged": 1.0}, step=trainer.fit_loop.epoch_loop._batches_that_stepped)
                logger.save()
        raise DivergenceError(message)
