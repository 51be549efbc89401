"""Fidelity and diversity from k-nearest-neighbour balls in an embedding.

Improved precision and recall (Kynkäänniemi et al. 2019) and density and coverage (Naeem et al. 2020), k = 5.
Each real (generated) sample gets a ball reaching its k-th nearest real (generated) neighbour:
- precision: the share of generated samples inside some real ball (are the samples realistic);
- recall: the share of real samples inside some generated ball (is the real variety covered);
- density: how many real balls hold a generated sample, per k, averaged (> 1: samples crowd where reals are dense);
- coverage: the share of real samples whose own ball holds a generated sample (a recall robust to outliers).
The real radii depend on the real set only: `real_radii` is computed once per run, like the real FID statistics.
"""

import torch
from torch import Tensor

K = 5


def kth_neighbour_radii(features: Tensor, k: int = K) -> Tensor:
    """(N,) distance from each row of `features` (N, D) to its k-th nearest other row."""
    distances = torch.cdist(features, features)  # (N, N), zero diagonal
    return distances.kthvalue(k + 1, dim=1).values  # the 1st smallest is the point itself


def prdc(real: Tensor, fake: Tensor, real_radii: Tensor, k: int = K) -> dict[str, Tensor]:
    """precision, recall, density, coverage of `fake` (M, D) against `real` (N, D) with cached `real_radii` (N,)."""
    fake_radii = kth_neighbour_radii(fake, k)  # (M,)
    distances = torch.cdist(real, fake)  # (N, M)
    in_real_ball = distances <= real_radii[:, None]  # (N, M): fake j inside real i's ball
    return {
        "precision": in_real_ball.any(dim=0).float().mean(),
        "recall": (distances <= fake_radii[None, :]).any(dim=1).float().mean(),
        "density": in_real_ball.sum(dim=0).float().mean() / k,
        "coverage": (distances.amin(dim=1) <= real_radii).float().mean(),
    }
