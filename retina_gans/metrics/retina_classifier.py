"""A small CNN that grades diabetic retinopathy (5 classes) on 28x28 RetinaMNIST: the in-domain feature extractor.

Inception features of 28x28 fundus images upsampled to 299x299 measure mostly ImageNet texture statistics;
a classifier trained on the same domain gives FID/KID an embedding (the penultimate layer) and IS a softmax
that respond to what matters here. Train the weights (under the pinned numerics of `asset_recipe`) with

    python -m retina_gans.metrics.retina_classifier --channels 1 --data-root ../shared/data \
        --out retina_gans/assets/retina_classifier_c1.pt

and compare a retrained copy with the shipped weights with `--verify` (they predate the pinning; see `asset_recipe`).

The recipe itself, `fit_classifier`, takes tensors and leaves the caller's RNG and global flags as they were:
`retina_gans.utility` trains fresh graders with it on real and generated images.
"""

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retina_gans.data import ensure_data_file, load_split
from retina_gans.metrics import asset_recipe
from retina_gans.pixels import to_model_range

ASSETS = Path(__file__).resolve().parent.parent / "assets"
INPUT_SIZE = 28
N_CLASSES = 5


def weights_file(channels: int) -> Path:
    """The committed weights for grayscale (1) or RGB (3) inputs."""
    return ASSETS / f"retina_classifier_c{channels}.pt"


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class RetinaClassifier(nn.Module):
    """Four conv blocks -> global average pool (the embedding) -> linear logits over the 5 DR grades. `width`: the
    first blocks' channels (w, w, 2w; the committed weights: 32)."""

    def __init__(self, channels: int, embedding_dim: int = 128, width: int = 32) -> None:
        super().__init__()
        self.channels = channels
        self.embedding_dim = embedding_dim
        w = width
        self.body = nn.Sequential(
            _conv_block(channels, w), _conv_block(w, w), nn.MaxPool2d(2),  # (N, w, 14, 14)
            _conv_block(w, 2 * w), nn.MaxPool2d(2),  # (N, 2w, 7, 7)
            _conv_block(2 * w, embedding_dim),  # (N, D, 7, 7)
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),  # (N, D), non-negative like Inception's pool3
        )
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(embedding_dim, N_CLASSES)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """float (N, C, 28, 28) in [-1, 1] -> (embedding (N, D), logits (N, 5))."""
        embedding = self.body(x)
        return embedding, self.head(self.dropout(embedding))


def load_retina_classifier(channels: int, path: str | Path | None = None) -> RetinaClassifier:
    """The trained classifier in eval mode with frozen weights (the committed asset unless `path` is given)."""
    path = Path(path) if path is not None else weights_file(channels)
    if not path.is_file():
        raise FileNotFoundError(
            f"retina classifier weights not found: {path}; train them with "
            f"`python -m retina_gans.metrics.retina_classifier --channels {channels} --out {path}`"
        )
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if saved["channels"] != channels:
        raise ValueError(f"{path} holds a classifier for {saved['channels']} channels, not {channels}")
    model = RetinaClassifier(channels, saved["embedding_dim"])
    model.load_state_dict(saved["state_dict"])
    return model.requires_grad_(False).eval()


def _augment(x: Tensor, generator: torch.Generator) -> Tensor:
    """Random horizontal/vertical flips and shifts of up to 2 pixels (reflect padding); x float (N, C, 28, 28)."""
    n = x.shape[0]
    flip_h = torch.rand(n, generator=generator) < 0.5
    flip_v = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip_h[:, None, None, None], x.flip(3), x)
    x = torch.where(flip_v[:, None, None, None], x.flip(2), x)
    padded = F.pad(x, (2, 2, 2, 2), mode="reflect")  # (N, C, 32, 32)
    dy, dx = torch.randint(0, 5, (2, n), generator=generator)
    rows = (dy[:, None] + torch.arange(INPUT_SIZE))[:, None, :, None]  # (N, 1, 28, 1)
    cols = (dx[:, None] + torch.arange(INPUT_SIZE))[:, None, None, :]  # (N, 1, 1, 28)
    batch = torch.arange(n)[:, None, None, None]
    chans = torch.arange(x.shape[1])[None, :, None, None]
    return padded[batch, chans, rows, cols]


@torch.no_grad()
def _evaluate(model: RetinaClassifier, images: Tensor, labels: Tensor) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of the model on uint8 images (N, C, 28, 28)."""
    model.eval()
    _, logits = model(to_model_range(images))
    return (logits.argmax(1) == labels).float().mean().item(), F.cross_entropy(logits, labels).item()


def fit_classifier(train_images: Tensor, train_labels: Tensor, val_images: Tensor, val_labels: Tensor, *,
                   epochs: int, seed: int, width: int = 32, embedding_dim: int = 128,
                   log: Callable[[str], None] | None = print) -> tuple[RetinaClassifier, dict]:
    """The project's grade-classifier recipe on uint8 images (N, C, 28, 28) and grades (N,): AdamW with a one-cycle
    schedule, flips and 2-pixel shifts, batch 64; keeps the epoch with the best val accuracy (ties: lower val loss).

    Every random draw (initial weights, dropout, order, augmentation) follows `seed` inside a forked RNG: the caller's
    global RNG is left as it was and no global flag is set (the training command sets deterministic algorithms for
    its own process)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = RetinaClassifier(train_images.shape[1], embedding_dim, width)
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
        steps_per_epoch = -(-len(train_images) // 64)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3, total_steps=epochs * steps_per_epoch)
        generator = torch.Generator().manual_seed(seed)
        best, best_key, best_epoch = None, (-1.0, 0.0), -1
        for epoch in range(epochs):
            model.train()
            order = torch.randperm(len(train_images), generator=generator)
            for i in range(0, len(order), 64):
                idx = order[i : i + 64]
                x = _augment(to_model_range(train_images[idx]), generator)
                _, logits = model(x)
                loss = F.cross_entropy(logits, train_labels[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
            val_accuracy, val_loss = _evaluate(model, val_images, val_labels)
            if (val_accuracy, -val_loss) > best_key:
                best_key = (val_accuracy, -val_loss)
                best = {k: v.clone() for k, v in model.state_dict().items()}
                best_epoch = epoch
            if log is not None:
                log(f"epoch {epoch:3d} loss {loss.item():.3f} val_acc {val_accuracy:.3f} val_loss {val_loss:.3f}")
    model.load_state_dict(best)
    return model.eval(), {"best_epoch": best_epoch, "val_accuracy": best_key[0]}


def train(
    channels: int, data_root: str, epochs: int, seed: int, verify_md5: bool = True
) -> tuple[RetinaClassifier, dict]:
    """Fit on the train split, keep the epoch with the best val accuracy (ties: lower val loss), report test."""
    path = ensure_data_file(data_root, 28, download=False, verify_md5=verify_md5)
    splits = {s: load_split(path, s, 28, channels) for s in ("train", "val", "test")}
    model, report = fit_classifier(*splits["train"], *splits["val"], epochs=epochs, seed=seed,
                                   log=lambda line: print(line, flush=True))
    test_accuracy, test_loss = _evaluate(model, *splits["test"])
    return model, {**report, "test_accuracy": test_accuracy, "test_loss": test_loss}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--channels", type=int, choices=(1, 3), required=True)
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--out", default=None, help="default: the committed asset path for --channels")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-md5", action="store_true", help="for a data file you made yourself (tests)")
    asset_recipe.add_arguments(parser)
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else weights_file(args.channels)
    start = time.perf_counter()
    with asset_recipe.portable_numerics(args.threads):
        model, report = train(args.channels, args.data_root, args.epochs, args.seed, not args.skip_md5)
    seconds = time.perf_counter() - start  # printed, not saved: the file's bytes must not depend on timing
    if args.verify:
        print(f"retrained: {report}")
        return asset_recipe.verify(out, model.state_dict(), args.threads)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": model.state_dict(),
            "channels": args.channels,
            "embedding_dim": model.embedding_dim,
            "command": "python -m retina_gans.metrics.retina_classifier "
            + shlex.join(argv if argv is not None else sys.argv[1:]),
            "torch_version": str(torch.__version__),  # a plain str: weights_only loading rejects TorchVersion
            **report,
        },
        out,
    )
    print(f"saved {out} after {seconds:.0f} s: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
