"""How close generated images are to the training set, relative to how close unseen real images are."""

import torch
from torch import Tensor


def _nearest_train_distance(images: Tensor, train: Tensor, chunk_size: int) -> Tensor:
    """L2 distance (N,) from each image to its nearest training image, in [0, 1] pixel space, flattened."""
    train_flat = train.flatten(1).double() / 255  # (M, C*H*W)
    return torch.cat([
        torch.cdist(chunk.flatten(1).double() / 255, train_flat).amin(dim=1)  # (chunk, M) -> (chunk,)
        for chunk in images.split(chunk_size)
    ])


COPY_QUANTILE = 0.05  # a generated image nearer its nearest training image than 95 % of real test images are: a copy


def memorization(generated: Tensor, train: Tensor, test: Tensor, chunk_size: int = 256) -> dict[str, Tensor]:
    """`memorization` (the ratio below) and `copy_fraction`: the share of generated images closer to their nearest
    training image than the 5th percentile of the real test images' nearest-training distances (unseen real images
    score 0.05 by construction; a generator that copies scores more)."""
    _check(generated, train, test)
    generated_distance = _nearest_train_distance(generated, train, chunk_size)
    test_distance = _nearest_train_distance(test, train, chunk_size)
    threshold = torch.quantile(test_distance, COPY_QUANTILE)
    return {
        "memorization": (generated_distance.median() / test_distance.median()).float(),
        "copy_fraction": (generated_distance < threshold).float().mean(),
    }


def _check(generated: Tensor, train: Tensor, test: Tensor) -> None:
    for name, images in (("generated", generated), ("train", train), ("test", test)):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1:] != train.shape[1:]:
            raise ValueError(f"{name}: expected uint8 (N, {', '.join(map(str, train.shape[1:]))}), "
                             f"got {images.dtype} {list(images.shape)}")


def memorization_ratio(generated: Tensor, train: Tensor, test: Tensor, chunk_size: int = 256) -> Tensor:
    """median nearest-train distance of generated images / the same median for the real test images.

    Distances are Euclidean between flattened images scaled to [0, 1] (uint8 / 255). A ratio well below 1
    means the generator's samples sit closer to training images than unseen real images do: copying.
    All three inputs are uint8 (N, C, H, W) with the same C, H, W.
    """
    _check(generated, train, test)
    generated_median = _nearest_train_distance(generated, train, chunk_size).median()
    test_median = _nearest_train_distance(test, train, chunk_size).median()
    return (generated_median / test_median).float()
