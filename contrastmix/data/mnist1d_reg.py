"""MNIST-1D regression: predict a continuous generation factor of an MNIST-1D signal.

Greydanus & Kobak, "Scaling down deep learning with MNIST-1D" (ICML 2024). The signals are built
with the ``mnist1d`` package's own templates (``mnist1d.data.get_templates``) and the same
pipeline as ``mnist1d.transform.transform`` at ``mnist1d.data.get_dataset_args()`` defaults —
pad + dilate onto a 72-sample canvas, amplitude scale, translate, correlated noise on the
padding, i.i.d. noise, shear, subsample to 40 samples — with two changes: the factors are
drawn from a local ``numpy.random.Generator`` (never the global RNG), and the dilation and the
translation are *continuous* so that one of them can be the regression target:

* ``target="time_scale"``: the dilation ``s`` (canvas samples per template sample). In
  ``mnist1d`` it is ``71 / (11 + p)`` with integer padding ``p in [36, 60]``, i.e. ``[1.0, 1.5]``;
  here ``s ~ U[1.0, 2.0)`` by default (a wider, continuous range makes a better regression
  target).
* ``target="shift"``: the circular translation ``k ~ U[0, 48)`` in canvas samples (``mnist1d``'s
  ``max_translation``; the final signal has 40/72 of that resolution).

All other factors (digit template, the non-target factor, amplitude, noise, shear) stay random
nuisances. Signals are standardised with the *training* split's scalar mean and standard
deviation (``mnist1d`` standardises with the whole dataset's). Nothing is downloaded.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["load_mnist1d_reg", "render_mnist1d", "MNIST1D_REG_LENGTH", "MNIST1D_REG_TARGETS"]

MNIST1D_REG_LENGTH = 40
MNIST1D_REG_TARGETS = ("time_scale", "shift")
_CANVAS = 72  # template_len (12) + padding[-1] (60)
_DEFAULT_RANGES = {"time_scale": (1.0, 2.0), "shift": (0.0, 48.0)}


def render_mnist1d(
    digits: np.ndarray,
    time_scale: np.ndarray,
    shift: np.ndarray,
    amplitude: np.ndarray,
    shear: np.ndarray,
    rng: np.random.Generator | None = None,
    *,
    corr_noise_scale: float = 0.25,
    iid_noise_scale: float = 2e-2,
    final_length: int = MNIST1D_REG_LENGTH,
) -> np.ndarray:
    """Render MNIST-1D signals for given generation factors (vectorised over samples).

    Args:
        digits: ``[N]`` digit classes (template index, 0..9).
        time_scale: ``[N]`` dilation: canvas samples per template sample (> 0).
        shift: ``[N]`` circular translation in canvas samples.
        amplitude: ``[N]`` multiplicative scale.
        shear: ``[N]`` shear coefficient (``x - shear * linspace(-0.5, 0.5)``).
        rng: Generator for the noise (required when a noise scale is > 0).
        corr_noise_scale: Scale of the Gaussian-smoothed noise on the padding.
        iid_noise_scale: Scale of the i.i.d. noise everywhere.
        final_length: Length of the subsampled signal.

    Returns:
        ``[N, final_length]`` float64 signals (not standardised).
    """
    from mnist1d.data import get_templates
    from scipy.ndimage import gaussian_filter1d

    tmpl = get_templates()["x"] + 1e-8  # [10, 12]
    n, tlen = digits.shape[0], tmpl.shape[1]
    t = np.arange(_CANVAS, dtype=np.float64)[None, :]
    # Position on the (un-translated) canvas, then in template-sample units.
    pos = np.mod(t - shift[:, None], _CANVAS)
    u = pos / time_scale[:, None]
    inside = u <= tlen - 1
    lo = np.clip(np.floor(u).astype(np.int64), 0, tlen - 2)
    frac = np.clip(u - lo, 0.0, 1.0)
    rows = tmpl[digits]  # [N, 12]
    val = (1 - frac) * np.take_along_axis(rows, lo, 1) + frac * np.take_along_axis(rows, lo + 1, 1)
    x = np.where(inside, val, 0.0) * amplitude[:, None]
    if corr_noise_scale > 0 or iid_noise_scale > 0:
        if rng is None:
            raise ValueError("`rng` is required when a noise scale is > 0")
        corr = gaussian_filter1d(corr_noise_scale * rng.standard_normal((n, _CANVAS)), 2, axis=1)
        x = np.where(inside, x, corr)
        x = x + iid_noise_scale * rng.standard_normal((n, _CANVAS))
    x = x - shear[:, None] * np.linspace(-0.5, 0.5, _CANVAS)[None, :]
    # Linear subsampling onto `final_length` points (mnist1d's `interpolate`).
    grid = np.linspace(0, _CANVAS - 1, final_length)
    i0 = np.clip(np.floor(grid).astype(np.int64), 0, _CANVAS - 2)
    w = grid - i0
    return x[:, i0] * (1 - w) + x[:, i0 + 1] * w


def load_mnist1d_reg(
    split: str = "train",
    *,
    seed: int = 0,
    target: str = "time_scale",
    num_samples: int = 5000,
    test_fraction: float = 0.2,
    target_range: tuple[float, float] | None = None,
) -> tuple[Tensor, Tensor]:
    """Generate the MNIST-1D regression split.

    Args:
        split: ``"train"`` or ``"test"``.
        seed: Generator seed; the same seed gives the same signals and the same split.
        target: ``"time_scale"`` or ``"shift"`` (see the module docstring).
        num_samples: Total number of signals (train + test).
        test_fraction: Share of the signals in the test split (the last ones generated).
        target_range: ``(low, high)`` of the uniform target law (default: ``(1, 2)`` for
            ``time_scale``, ``(0, 48)`` for ``shift``); the other factor keeps its default.

    Returns:
        ``x [N, 1, 40]`` float32 signals (standardised with train statistics) and ``y [N]``
        float32 targets.
    """
    if split not in ("train", "test"):
        raise ValueError(f"`split` must be 'train' or 'test', got {split!r}")
    if target not in MNIST1D_REG_TARGETS:
        raise ValueError(f"`target` must be one of {MNIST1D_REG_TARGETS}, got {target!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"`test_fraction` must be in (0, 1), got {test_fraction}")
    n_test = int(round(num_samples * test_fraction))
    if num_samples < 2 or n_test < 1 or n_test >= num_samples:
        raise ValueError(
            f"`num_samples` ({num_samples}) too small for test_fraction {test_fraction}"
        )
    ranges = dict(_DEFAULT_RANGES)
    if target_range is not None:
        low, high = target_range
        if not high > low or (target == "time_scale" and low <= 0):
            raise ValueError(f"`target_range` must be increasing (and > 0 for time_scale), got "
                             f"{target_range}")
        ranges[target] = (float(low), float(high))

    rng = np.random.default_rng(seed)
    n = num_samples
    digits = rng.integers(0, 10, n)
    time_scale = rng.uniform(*ranges["time_scale"], n)
    shift = rng.uniform(*ranges["shift"], n)
    amplitude = 1.0 + 0.4 * (rng.random(n) - 0.5)  # mnist1d scale_coeff = 0.4
    shear = 0.75 * (rng.random(n) - 0.5)  # mnist1d shear_scale = 0.75
    x = render_mnist1d(digits, time_scale, shift, amplitude, shear, rng)
    y = time_scale if target == "time_scale" else shift
    n_train = n - n_test
    mean, std = x[:n_train].mean(), x[:n_train].std()
    x = (x - mean) / std
    sl = slice(0, n_train) if split == "train" else slice(n_train, n)
    xs = torch.from_numpy(x[sl].astype(np.float32)).unsqueeze(1)
    return xs, torch.from_numpy(y[sl].astype(np.float32))
