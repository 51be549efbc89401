"""The fixed-noise sample grid, written every few epochs and after the last: one PNG encoding, shared by the file
and TensorBoard.

Why not `save_image` + `SummaryWriter.add_image`: they encoded the same grid twice, in RGB even for grayscale
data, and add_image also runs a Lanczos resize at scale 1; together about 60 ms per epoch, 6 % of a WGAN epoch
on this CPU. torchvision's libpng encoder on the grid in the data's own channels takes about 2 ms.
"""

from pathlib import Path

import lightning as L
from tensorboard.compat.proto.summary_pb2 import Summary
from torch import Tensor
from torchvision.io import encode_png
from torchvision.utils import make_grid

from retina_gans.checkpointing import is_last_epoch


def encode_grid(images: Tensor, nrow: int = 8) -> tuple[bytes, int, int, int]:
    """PNG bytes of uint8 images (N, C, H, W), C in {1, 3}, tiled nrow per row; plus (height, width, channels)."""
    channels = images.shape[1]
    grid = make_grid(images.cpu(), nrow=nrow)[:channels].contiguous()  # make_grid makes 3 channels of 1
    return encode_png(grid).numpy().tobytes(), grid.shape[1], grid.shape[2], channels


def write_sample_grid(images: Tensor, path: Path, loggers: list, tag: str, step: int) -> None:
    """The grid as `path` (a PNG file) and as image `tag` at `step` in every TensorBoard logger."""
    png, height, width, channels = encode_grid(images)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    image = Summary.Image(height=height, width=width, colorspace=channels, encoded_image_string=png)
    for logger in loggers:
        if isinstance(logger, L.pytorch.loggers.TensorBoardLogger):  # the proto add_image builds, without re-encoding
            logger.experiment._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)


class SampleGrid(L.Callback):
    """Writes the GAN's fixed-noise grid (`GAN.write_sample_grid`) at the end of every `every_n_epochs`-th epoch and
    of the last one. Why not every epoch: the grid costs a generator pass on 64 noise vectors, a PNG encoding and,
    for TensorBoard, a CRC computed in pure Python on its writer thread, about 25 ms on this CPU, 1.5 ms of every
    50 ms WGAN batch at the blog's 17 batches per epoch (measured by `make bench`). The default, 5, is the
    validation interval's, so each validated epoch has its grid."""

    def __init__(self, every_n_epochs: int) -> None:
        if not (isinstance(every_n_epochs, int) and every_n_epochs >= 1):
            raise ValueError(f"callbacks.sample_grid.every_n_epochs must be an integer >= 1, got {every_n_epochs!r}")
        self.every_n_epochs = every_n_epochs

    def on_train_epoch_end(self, trainer: L.Trainer, gan: L.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0 or is_last_epoch(trainer):
            gan.write_sample_grid()
