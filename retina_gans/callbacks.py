"""Callbacks that make a resumed run continue exactly where the interrupted one stopped."""

import csv
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.apply_func import convert_tensors_to_scalars
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.trainer.connectors.logger_connector.result import _Metadata, _ResultMetric, _Sync
from lightning.pytorch.trainer.states import RunningStage


class RNGStateCheckpoint(L.Callback):
    """Saves every random generator (python, numpy, torch CPU and CUDA) in the checkpoint and restores it on resume.

    Lightning restores weights, optimizers and loop positions but not RNG states; without them a
    resumed run draws different noise and diverges from the uninterrupted one. Stored as tensors and plain
    values only, so checkpoints load with `torch.load(weights_only=True)`.
    """

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
        state = {
            "python": random.getstate(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        random.setstate(state["python"])
        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class LoggedMetricsCheckpoint(L.Callback):
    """Carries the logged metrics across a resume, so a resumed run's metrics.csv equals the uninterrupted run's.

    Lightning does not checkpoint them: the epoch means (`train/*_epoch`) restart from zero after a mid-epoch
    resume, the CSV logger deletes an existing metrics.csv, and the row Lightning logs right after a save (the
    step row of that batch, or the epoch row after `on_train_epoch_end`) is never logged by the resumed run.
    So each checkpoint written during training holds: the CSV rows so far, that pending row (computed the way
    Lightning's logger connector will compute it), and mid-epoch the running training metric accumulators.
    Relies on Lightning 2.x internals (`_ResultMetric`, the logger connector); tests/test_exact_resume.py checks it.
    """

    def __init__(self) -> None:
        self._rows: list[dict[str, Any]] | None = None
        self._accumulators: list[dict[str, Any]] | None = None

    # ---- save --------------------------------------------------------------------------------------
    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.state.stage != RunningStage.TRAINING:  # e.g. the best checkpoint, written after validation
            return
        progress = trainer.fit_loop.epoch_progress.current
        epoch_end = progress.processed > progress.completed  # inside on_train_epoch_end
        rows = self._csv_rows(trainer)
        pending = self._pending_row(trainer, epoch_end)
        checkpoint["logged_metrics"] = {
            "rows": rows + ([pending] if pending else []),
            # after an epoch-end save Lightning resets the accumulators and starts a new epoch: nothing to carry
            "accumulators": None if epoch_end else self._save_accumulators(trainer),
        }

    @staticmethod
    def _csv_rows(trainer: L.Trainer) -> list[dict[str, Any]]:
        if not trainer.is_global_zero:  # loggers live on rank 0; only rank 0's checkpoint is written
            return []
        for logger in trainer.loggers:
            if isinstance(logger, CSVLogger):
                logger.save()  # flush the buffer so the file holds every row logged so far
                path = Path(logger.experiment.metrics_file_path)
                if path.is_file():
                    with open(path, newline="") as f:
                        return list(csv.DictReader(f))
        return []

    @staticmethod
    def _pending_row(trainer: L.Trainer, epoch_end: bool) -> dict[str, Any] | None:
        """The row Lightning logs right after this save (logger_connector.update_train_{step,epoch}_metrics)."""
        connector = trainer._logger_connector
        if not epoch_end and not (connector.should_update_logs or trainer.fast_dev_run):
            return None
        row = convert_tensors_to_scalars(dict(connector.metrics["log"]))
        if not row:
            return None
        step = row.pop("step", None)
        if step is None:
            row.setdefault("epoch", trainer.current_epoch)
            # at epoch end Lightning logs with the counter of the epoch's last batch (fit_loop.on_advance_end)
            step = trainer.fit_loop.epoch_loop._batches_that_stepped - (1 if epoch_end else 0)
        row["step"] = int(step)
        return row

    @staticmethod
    def _save_accumulators(trainer: L.Trainer) -> list[dict[str, Any]]:
        saved = []
        for key, metric in trainer.fit_loop.epoch_loop._results.items():
            if not metric.is_tensor:
                continue
            meta = metric.meta
            saved.append({
                "key": key,
                "meta": {"fx": meta.fx, "name": meta.name, "prog_bar": meta.prog_bar, "logger": meta.logger,
                         "on_step": meta.on_step, "on_epoch": meta.on_epoch, "reduce_fx": meta.reduce_fx.__name__,
                         "enable_graph": meta.enable_graph, "add_dataloader_idx": meta.add_dataloader_idx,
                         "dataloader_idx": meta.dataloader_idx, "metric_attribute": meta.metric_attribute},
                "sync": {"should": meta.sync.should, "rank_zero_only": meta.sync.rank_zero_only},
                "value": metric.value.detach().cpu(),
                "cumulated_batch_size": getattr(metric, "cumulated_batch_size", None),
                "forward_cache": None if metric._forward_cache is None else metric._forward_cache.detach().cpu(),
                "has_reset": metric.has_reset,
                "update_count": metric._update_count,
            })
        return saved

    # ---- resume ------------------------------------------------------------------------------------
    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("logged_metrics")
        if state is not None:
            self._rows, self._accumulators = state["rows"], state["accumulators"]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._rows:
            for logger in trainer.loggers:
                if isinstance(logger, CSVLogger) and trainer.is_global_zero:
                    logger.experiment.metrics[:0] = self._rows  # written before anything this run logs
        self._rows = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if not self._accumulators:
            return
        results = trainer.fit_loop.epoch_loop._results
        restored = {}
        for saved in self._accumulators:
            meta = _Metadata(**saved["meta"])
            # what LightningModule.log passes, so a later self.log of the same key finds equal metadata
            meta.sync = _Sync(_should=saved["sync"]["should"], fn=trainer.strategy.reduce,
                              rank_zero_only=saved["sync"]["rank_zero_only"])
            metric = _ResultMetric(meta, is_tensor=True)
            metric.value = saved["value"]
            if saved["cumulated_batch_size"] is not None:
                metric.cumulated_batch_size = saved["cumulated_batch_size"]
            metric._forward_cache = saved["forward_cache"]
            metric.has_reset, metric._update_count = saved["has_reset"], saved["update_count"]
            restored[saved["key"]] = metric.to(pl_module.device)
        results.update({**restored, **results})  # nothing logged yet this epoch, but never drop a live entry
        # Not the epoch's first batch: without this, the first self.log of this hook would reset what was restored.
        trainer._logger_connector._first_loop_iter = False
        self._accumulators = None
