"""Per-batch training values (losses, Wasserstein estimate, penalty), logged without a `self.log` call per batch.

Why not `self.log(..., on_step=True, on_epoch=True)` every batch: each call costs about 1 ms of Python on this
CPU (metadata checks, a signature inspection, moving its accumulator), 3-4 calls per batch were 4-5 % of a WGAN
step, and Lightning writes step values to the loggers only every `log_every_n_steps` batches anyway. Here each
batch adds its values to on-device sums (no host sync); `GAN` logs the latest values on logging steps (straight
through Lightning's logger connector: a `self.log` call costs 2-3 ms per key there) and the epoch means at epoch end, under the keys Lightning would have used (`<name>_step`, `<name>_epoch`). Means are
weighted by batch size, as Lightning's are, so the last, smaller batch of an epoch counts for what it holds.
"""

from typing import Any

from torch import Tensor


class TrainingLog:
    """Running batch-size-weighted sums of this epoch and the latest value, per name; carried in checkpoints."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}  # name -> 0-d float tensor on the device: sum of value * batch size
        self.counts: dict[str, int] = {}  # name -> images counted this epoch
        self.latest: dict[str, Tensor] = {}  # name -> the last value added (kept across epochs, like Lightning's)

    def add(self, values: dict[str, Tensor], batch_size: int) -> None:
        for name, value in values.items():
            value = value.detach().float()
            weighted = value * batch_size
            self.sums[name] = self.sums[name] + weighted if name in self.sums else weighted
            self.counts[name] = self.counts.get(name, 0) + batch_size
            self.latest[name] = value

    def epoch_means(self) -> dict[str, Tensor]:
        return {name: total / self.counts[name] for name, total in self.sums.items()}

    def start_epoch(self) -> None:
        self.sums, self.counts = {}, {}

    def state_dict(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "counts": dict(self.counts), "latest": dict(self.latest)}

    def load_state_dict(self, state: dict[str, Any], device: Any) -> None:
        self.sums = {k: v.to(device) for k, v in state["sums"].items()}
        self.counts = dict(state["counts"])
        self.latest = {k: v.to(device) for k, v in state["latest"].items()}
