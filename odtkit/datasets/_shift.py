"""The deterministic 'new sensor' shift that turns digits into the digits-shift target domain."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._checks import check_real

DIGITS_SHIFT_DESCRIPTION = (
    "digits-shift (severity {severity}): the target domain of a transfer task. The 1797 "
    "scikit-learn digits are split into disjoint, stratified source and target halves; the "
    "target half is seen through a different camera. At severity 1 it is tilted (rotation "
    "12 deg +- 5 deg per image), zoomed in 8 % and off-centre by up to 1 px, slightly "
    "defocused (Gaussian blur, sigma 0.4 px), with lower contrast (gain 0.9), a small "
    "brightness offset (+0.02) and read noise (sigma 0.02), clipped to [0, 1]; every "
    "amount scales with severity. Pretrain on .source, adapt on this task's train split."
)

SHIFT_SEED = 20240  # the target domain's fixed 'sensor' randomness


def _gaussian_kernel(sigma_px: float) -> torch.Tensor:
    """3x3 normalised Gaussian kernel, shape (1, 1, 3, 3)."""
    r = torch.arange(-1.0, 2.0)
    g = torch.exp(-(r**2) / (2 * sigma_px**2))
    k = torch.outer(g, g)
    return (k / k.sum())[None, None]


def sensor_shift(x: torch.Tensor, severity: float = 1.0) -> torch.Tensor:
    """Apply the target-domain sensor shift to images ``x`` (N, 1, H, W) in [0, 1].

    Same input and severity give the same output (the randomness has a fixed seed);
    ``severity`` 0 returns the images unchanged, 1 is the calibrated default.
    """
    check_real("severity", severity, low=0)
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"expected images of shape (N, 1, H, W), got {tuple(x.shape)}")
    if severity == 0:
        return x.clone()
    s = float(severity)
    n, _, h, w = x.shape
    gen = torch.Generator().manual_seed(SHIFT_SEED)
    # geometry: a tilted, slightly zoomed, off-centre camera (per-sample jitter)
    angle = torch.deg2rad(s * (12.0 + 5.0 * (2 * torch.rand(n, generator=gen) - 1)))
    zoom = 1.0 + s * 0.08
    shift_px = s * (2 * torch.rand(n, 2, generator=gen) - 1)  # up to 1 px each way
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    theta[:, 0, 2] = shift_px[:, 0] * 2 / w  # normalised coordinates: 2 units per side
    theta[:, 1, 2] = shift_px[:, 1] * 2 / h
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    y = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # optics: a slight defocus
    y = F.conv2d(y, _gaussian_kernel(0.4 * s), padding=1)
    # sensor response: lower gain, small offset, read noise
    gain, offset = max(1.0 - 0.1 * s, 0.05), 0.02 * s
    y = offset + gain * y + 0.02 * s * torch.randn(y.shape, generator=gen)
    return y.clamp(0, 1).to(torch.float32)
