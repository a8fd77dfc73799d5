"""Batched two-view augmentations for 1-D signals (MNIST-1D and similar).

The transforms act on a whole batch ``[B, C, L]`` at once with per-sample random parameters, on
whatever device the batch lives on, so augmentation is never the bottleneck of a small-signal
run. They mirror the nuisance factors of the MNIST-1D generator: time dilation (random resized
crop), circular translation, amplitude scaling, a linear trend (shear) and additive noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from contrastmix._validation import check_tensor

__all__ = ["SignalAugment"]


def _uniform(n: int, lo: float, hi: float, like: Tensor, g: torch.Generator | None) -> Tensor:
    u = torch.rand(n, generator=g, device=like.device if g is None else g.device)
    return (lo + (hi - lo) * u).to(like.device, like.dtype)


@dataclass
class SignalAugment:
    """Random resized crop in time, circular shift, amplitude scale, shear and jitter.

    Args:
        crop_scale: Range of the kept fraction of the signal length (resampled back to ``L``).
        max_shift: Largest circular shift as a fraction of ``L`` (0 disables).
        amplitude: Range of the multiplicative amplitude factor.
        shear: Largest slope of an added linear trend (``x += c * linspace(-0.5, 0.5)``).
        noise_std: Standard deviation of additive Gaussian jitter.
        flip_prob: Probability of reversing time (off by default: digits are not symmetric).

    Call with ``x [B, C, L]`` (or ``[B, L]``) and an optional ``torch.Generator``; returns a new
    tensor of the same shape and dtype.
    """

    crop_scale: tuple[float, float] = (0.6, 1.0)
    max_shift: float = 1.0
    amplitude: tuple[float, float] = (0.8, 1.2)
    shear: float = 0.5
    noise_std: float = 0.05
    flip_prob: float = 0.0

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        check_tensor("x", x, ndim=(2, 3), floating=True)
        squeeze = x.ndim == 2
        if squeeze:
            x = x.unsqueeze(1)
        b, _, length = x.shape
        g = generator
        pos = torch.linspace(0.0, 1.0, length, device=x.device, dtype=x.dtype)

        # Random resized crop: sample a window [start, start + s] and resample it to L points.
        s = _uniform(b, self.crop_scale[0], self.crop_scale[1], x, g)
        start = _uniform(b, 0.0, 1.0, x, g) * (1.0 - s)
        t = start[:, None] + s[:, None] * pos[None, :]  # [B, L] in [0, 1]
        # Circular shift (the MNIST-1D generator translates circularly).
        if self.max_shift > 0:
            t = t + _uniform(b, 0.0, self.max_shift, x, g)[:, None]
        if self.flip_prob > 0:
            flip = _uniform(b, 0.0, 1.0, x, g) < self.flip_prob
            t = torch.where(flip[:, None], 1.0 - t, t)
        src = (t * (length - 1)) % length  # fractional source index, wrapped
        i0 = src.floor().long().clamp_(0, length - 1)
        i1 = (i0 + 1) % length
        w = (src - i0.to(x.dtype)).unsqueeze(1)
        idx0 = i0.unsqueeze(1).expand(-1, x.shape[1], -1)
        idx1 = i1.unsqueeze(1).expand(-1, x.shape[1], -1)
        out = (1 - w) * x.gather(2, idx0) + w * x.gather(2, idx1)

        amp = _uniform(b, self.amplitude[0], self.amplitude[1], x, g)
        out = out * amp[:, None, None]
        if self.shear > 0:
            slope = _uniform(b, -self.shear, self.shear, x, g)
            out = out + slope[:, None, None] * (pos - 0.5)[None, None, :]
        if self.noise_std > 0:
            noise = torch.randn(
                out.shape, generator=g, device=x.device if g is None else g.device
            ).to(out.device, out.dtype)
            out = out + self.noise_std * noise
        return out.squeeze(1) if squeeze else out
