"""The one home of the pixel-range convention: [-1, 1] floats in the models, uint8 everywhere else."""

import torch
from torch import Tensor


def to_model_range(images: Tensor) -> Tensor:
    """uint8 (N, C, H, W) in [0, 255] -> float32 (N, C, H, W) in [-1, 1]."""
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")
    return images.float().div_(127.5).sub_(1.0)


def to_uint8(images: Tensor) -> Tensor:
    """float (N, C, H, W) in [-1, 1] -> uint8 (N, C, H, W); values outside the range are clipped."""
    return ((images.float() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
