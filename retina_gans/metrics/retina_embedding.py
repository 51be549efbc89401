"""`retina_v2`: the in-domain embedding behind the project's main FID, trained on the RetinaMNIST train split.

Why not the grade classifier (`retina`): a classifier keeps what predicts the grade and discards the rest; at
28x28 the grade lives in coarse structure, so its globally pooled features barely see pixel noise or
checkerboards (noise that a person plainly sees moved its FID 1.5x; see the README's validity table). Here the
network is trained, self-supervised on the train split, to tell every training image apart from every other one
(instance discrimination with SimCLR's NT-Xent loss; Chen et al. 2020). Telling 1,080 similar fundus images apart
needs everything that makes one image different from another, fine texture included. The two views of an image
differ only by flips, 90-degree rotations and shifts of up to 2 pixels: changes a metric should not count. No noise,
blur, cutout or colour augmentation is used, no labels, and nothing is fitted to the damages of the validity check.
(Adding a grade-prediction head was tried: it made the embedding less sensitive to every damage.)

Train the weights (seed 0, under the pinned numerics of `asset_recipe`: one thread, AVX2 kernels, deterministic
algorithms) with

    python -m retina_gans.metrics.retina_embedding --channels 1 --data-root ../shared/data \
        --out retina_gans/assets/retina_v2_c1.pt

and check a machine against the shipped weights with `--verify` (retrains, writes nothing, says whether every weight
is equal). The shipped weights predate the pinning and are not reproduced bit for bit on this project's current
machine (see `asset_recipe`).
"""

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retina_gans.data import ensure_data_file, load_split
from retina_gans.metrics import asset_recipe
from retina_gans.metrics.retina_classifier import _conv_block
from retina_gans.pixels import to_model_range

ASSETS = Path(__file__).resolve().parent.parent / "assets"
INPUT_SIZE = 28


def weights_file(channels: int) -> Path:
    return ASSETS / f"retina_v2_c{channels}.pt"


class RetinaEmbeddingNet(nn.Module):
    """Five conv blocks, two poolings -> global average (the embedding, (N, D)); a projection head for training."""

    def __init__(self, channels: int, embedding_dim: int = 128, projection_dim: int = 64) -> None:
        super().__init__()
        self.channels = channels
        self.embedding_dim = embedding_dim
        self.body = nn.Sequential(
            _conv_block(channels, 32), _conv_block(32, 32), nn.MaxPool2d(2),  # (N, 32, 14, 14)
            _conv_block(32, 64), _conv_block(64, 64), nn.MaxPool2d(2),  # (N, 64, 7, 7)
            _conv_block(64, embedding_dim), nn.AdaptiveAvgPool2d(1), nn.Flatten(),  # (N, D)
        )
        # training only (SimCLR): the loss acts on a projection, the embedding is what comes before it
        self.projection = nn.Sequential(nn.Linear(embedding_dim, embedding_dim), nn.ReLU(inplace=True),
                                        nn.Linear(embedding_dim, projection_dim))

    def forward(self, x: Tensor) -> Tensor:
        """float (N, C, 28, 28) in [-1, 1] -> embedding (N, D)."""
        return self.body(x)


def load_retina_embedding(channels: int, path: str | Path | None = None) -> RetinaEmbeddingNet:
    """The trained network in eval mode with frozen weights (the committed asset unless `path` is given)."""
    path = Path(path) if path is not None else weights_file(channels)
    if not path.is_file():
        raise FileNotFoundError(
            f"retina_v2 embedding weights not found: {path}; train them with "
            f"`python -m retina_gans.metrics.retina_embedding --channels {channels} --out {path}`"
        )
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if saved["channels"] != channels:
        raise ValueError(f"{path} holds an embedding for {saved['channels']} channels, not {channels}")
    model = RetinaEmbeddingNet(channels, saved["embedding_dim"])
    model.body.load_state_dict({k.removeprefix("body."): v for k, v in saved["state_dict"].items()})
    return model.requires_grad_(False).eval()


def symmetry(x: Tensor, generator: torch.Generator) -> Tensor:
    """One of the 8 symmetries of the square per image (x- and y-flips, then a transpose: rotations by 90 degrees and
    reflections); x float (N, C, 28, 28)."""
    n = x.shape[0]
    x = torch.where((torch.rand(n, generator=generator) < 0.5)[:, None, None, None], x.flip(3), x)
    x = torch.where((torch.rand(n, generator=generator) < 0.5)[:, None, None, None], x.flip(2), x)
    return torch.where((torch.rand(n, generator=generator) < 0.5)[:, None, None, None], x.transpose(2, 3), x)


def shift(x: Tensor, generator: torch.Generator) -> Tensor:
    """Whole-pixel shifts of up to 2 pixels per image (reflect padding); x float (N, C, 28, 28)."""
    n = x.shape[0]
    padded = F.pad(x, (2, 2, 2, 2), mode="reflect")  # (N, C, 32, 32)
    dy, dx = torch.randint(0, 5, (2, n), generator=generator)
    rows = (dy[:, None] + torch.arange(INPUT_SIZE))[:, None, :, None]  # (N, 1, 28, 1)
    cols = (dx[:, None] + torch.arange(INPUT_SIZE))[:, None, None, :]  # (N, 1, 1, 28)
    return padded[torch.arange(n)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None], rows, cols]


def augment(x: Tensor, generator: torch.Generator) -> Tensor:
    """A training view: a random symmetry of the square, then a shift of up to 2 pixels."""
    return shift(symmetry(x, generator), generator)


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """SimCLR's contrastive loss: each view must pick its partner among the 2N - 1 other views."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)  # (2N, P)
    n = len(z1)
    similarity = (z @ z.T / temperature).fill_diagonal_(float("-inf"))
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(similarity, partner)


def train_embedding(images: Tensor, channels: int, epochs: int, seed: int, batch_size: int = 216,
                    temperature: float = 0.2) -> RetinaEmbeddingNet:
    """Instance discrimination on uint8 `images` (N, C, 28, 28); no labels. Sets no global flags (the CLI does)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    x = to_model_range(images)
    model = RetinaEmbeddingNet(channels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps_per_epoch = len(x) // batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3, total_steps=epochs * steps_per_epoch)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        for i in range(steps_per_epoch):
            idx = order[i * batch_size : (i + 1) * batch_size]
            e1, e2 = model(augment(x[idx], generator)), model(augment(x[idx], generator))
            loss = nt_xent(model.projection(e1), model.projection(e2), temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        print(f"epoch {epoch:3d} loss {loss.item():.3f}", flush=True)
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--channels", type=int, choices=(1, 3), required=True)
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--out", default=None, help="default: the committed asset path for --channels")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-md5", action="store_true", help="for a data file you made yourself (tests)")
    asset_recipe.add_arguments(parser)
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else weights_file(args.channels)
    start = time.perf_counter()
    with asset_recipe.portable_numerics(args.threads):  # first: the kernels read their caps once
        path = ensure_data_file(args.data_root, 28, download=False, verify_md5=not args.skip_md5)
        images, _ = load_split(path, "train", 28, args.channels)
        model = train_embedding(images, args.channels, args.epochs, args.seed)
    seconds = time.perf_counter() - start  # printed, not saved: the file's bytes must not depend on timing
    state_dict = {k: v for k, v in model.state_dict().items() if k.startswith("body.")}
    if args.verify:
        return asset_recipe.verify(out, state_dict, args.threads)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({
        "state_dict": state_dict,
        "channels": args.channels,
        "embedding_dim": model.embedding_dim,
        "command": "python -m retina_gans.metrics.retina_embedding " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "torch_version": str(torch.__version__),
    }, out)
    print(f"saved {out} after {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
