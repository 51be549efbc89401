"""The radially averaged power spectrum of images and a distance between two sets' spectra.

Upsampling artefacts (checkerboards) and noise add power at high spatial frequencies, blur removes it; a GAN's
spectrum deviates from the real one exactly there (Durall et al. 2020). The distance is the mean absolute
difference of log10 mean power over the radial frequency bins: 0 for equal spectra, 0.3 for twice the power
at every frequency.
"""

import torch
from torch import Tensor

from retina_gans.pixels import to_model_range


def radial_power_spectrum(images: Tensor) -> Tensor:
    """uint8 (N, C, H, W) -> (R,) mean power per integer radial frequency, averaged over images (grey level of
    the channel mean, zero-mean per image so the DC term does not dominate)."""
    x = to_model_range(images).mean(dim=1)  # (N, H, W)
    x = x - x.mean(dim=(1, 2), keepdim=True)
    power = torch.fft.fftshift(torch.fft.fft2(x, norm="ortho"), dim=(-2, -1)).abs().square().mean(dim=0).double()
    h, w = power.shape
    ys, xs = torch.meshgrid(torch.arange(h) - h // 2, torch.arange(w) - w // 2, indexing="ij")
    radius = torch.hypot(ys.double(), xs.double()).round().long().flatten()  # (H*W,)
    keep = radius <= min(h, w) // 2  # the corners beyond the inscribed circle have only some directions
    sums = torch.zeros(int(radius[keep].max()) + 1, dtype=torch.float64).index_add_(0, radius[keep], power.flatten()[keep])
    counts = torch.bincount(radius[keep]).double()
    return sums / counts  # (R,)


def spectral_distance(real_spectrum: Tensor, fake_spectrum: Tensor) -> Tensor:
    """Mean |log10 P_fake(r) - log10 P_real(r)| over radial bins r >= 1 (DC excluded)."""
    floor = 1e-12  # a constant image has zero power: keep the log finite
    diff = (fake_spectrum[1:].clamp(min=floor).log10() - real_spectrum[1:].clamp(min=floor).log10()).abs()
    return diff.mean().float()
