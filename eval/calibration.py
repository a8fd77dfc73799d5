"""Calibration of classifiers: ECE, reliability diagrams and temperature scaling.

Guo, Pleiss, Sun & Weinberger, "On Calibration of Modern Neural Networks", ICML 2017.

Conventions (pinned by the tests):

* Confidence is the maximum predicted probability, the prediction its ``argmax`` (first index
  on ties, as :func:`torch.argmax`).
* ``n_bins`` equal-width bins on ``[0, 1]``; bin ``b`` is the half-open interval
  ``(b/n_bins, (b+1)/n_bins]`` and bin 0 also holds confidence exactly 0.
* ``ECE = sum_b (n_b / N) * |acc_b - conf_b|`` (15 bins by default).
* Inputs may be probabilities or logits. With ``logits=None`` (default) a ``[N, C]`` tensor is
  taken as probabilities when every entry lies in ``[0, 1]`` and every row sums to 1 within
  ``1e-4``; otherwise a softmax is applied. Pass ``logits=True/False`` to be explicit.
* Everything is computed in float64.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from contrastmix._atomic import png_bytes, write_bytes
from contrastmix._validation import check_positive, check_same_length, check_tensor

__all__ = [
    "to_probabilities",
    "expected_calibration_error",
    "reliability_diagram",
    "plot_reliability",
    "fit_temperature",
]


_LOG_T_MIN = float(np.log(1e-3))
_LOG_T_MAX = float(np.log(1e3))


def _check_labels(labels: object, n: int, num_classes: int) -> Tensor:
    check_tensor("labels", labels, ndim=1)
    assert isinstance(labels, Tensor)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"`labels` must be an integer tensor, got {labels.dtype}")
    if labels.shape[0] != n:
        raise ValueError(f"length mismatch: `probs` has {n} rows, `labels` has {labels.shape[0]}")
    if n and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"`labels` must lie in [0, {num_classes}) (number of columns), "
            f"got range [{int(labels.min())}, {int(labels.max())}]"
        )
    return labels


def to_probabilities(scores: Tensor, logits: bool | None = None) -> Tensor:
    """Return float64 class probabilities ``[N, C]`` from probabilities or logits.

    Args:
        scores: ``[N, C]`` probabilities or logits.
        logits: ``True`` = apply a softmax, ``False`` = already probabilities (checked),
            ``None`` = detect (probabilities iff entries in [0, 1] and rows sum to 1 ± 1e-4).

    Returns:
        ``[N, C]`` float64 probabilities.
    """
    check_tensor("probs", scores, ndim=2, floating=True)
    if scores.shape[1] < 1:
        raise ValueError(f"`probs` needs at least one column, got shape {tuple(scores.shape)}")
    s = scores.detach().to(torch.float64)
    looks_like_probs = bool(
        s.numel() == 0
        or (
            (s >= 0).all()
            and (s <= 1).all()
            and ((s.sum(dim=1) - 1).abs() <= 1e-4).all()
        )
    )
    if logits is None:
        logits = not looks_like_probs
    if logits:
        return torch.softmax(s, dim=1)
    if not looks_like_probs:
        raise ValueError(
            "`probs` must hold probabilities (entries in [0, 1], rows summing to 1) "
            "when logits=False; pass logits=True for raw scores"
        )
    return s


def reliability_diagram(
    probs: Tensor, labels: Tensor, n_bins: int = 15, *, logits: bool | None = None
) -> dict[str, np.ndarray | float]:
    """Per-bin confidence, accuracy and counts (the data of a reliability diagram).

    Args:
        probs: ``[N, C]`` probabilities or logits (see module docstring).
        labels: ``[N]`` integer labels in ``[0, C)``.
        n_bins: number of equal-width confidence bins.
        logits: see :func:`to_probabilities`.

    Returns:
        ``{"bin_lower", "bin_upper": [n_bins] edges, "confidence", "accuracy": [n_bins] means
        (NaN for empty bins), "counts": [n_bins] int64, "ece": float}``.
    """
    if not isinstance(n_bins, int) or isinstance(n_bins, bool) or n_bins < 1:
        raise ValueError(f"`n_bins` must be a positive int, got {n_bins!r}")
    p = to_probabilities(probs, logits)
    lab = _check_labels(labels, p.shape[0], p.shape[1]).to(p.device)
    n = p.shape[0]
    if n == 0:
        raise ValueError("`probs` is empty: ECE needs at least one sample")
    conf, pred = p.max(dim=1)
    correct = (pred == lab).to(torch.float64)
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64, device=p.device)
    # bucketize(right=False): edges[i-1] < x <= edges[i]  -> half-open (lo, hi] bins.
    idx = torch.bucketize(conf, edges[1:-1], right=False)
    counts = torch.bincount(idx, minlength=n_bins).to(torch.float64)
    conf_sum = torch.zeros(n_bins, dtype=torch.float64, device=p.device).index_add_(0, idx, conf)
    acc_sum = torch.zeros(n_bins, dtype=torch.float64, device=p.device).index_add_(
        0, idx, correct
    )
    nonempty = counts > 0
    safe = counts.clamp_min(1)
    conf_mean = torch.where(nonempty, conf_sum / safe, torch.full_like(conf_sum, float("nan")))
    acc_mean = torch.where(nonempty, acc_sum / safe, torch.full_like(acc_sum, float("nan")))
    ece = float(((acc_sum - conf_sum).abs()).sum() / n)
    return {
        "bin_lower": edges[:-1].cpu().numpy(),
        "bin_upper": edges[1:].cpu().numpy(),
        "confidence": conf_mean.cpu().numpy(),
        "accuracy": acc_mean.cpu().numpy(),
        "counts": counts.to(torch.int64).cpu().numpy(),
        "ece": ece,
    }


def expected_calibration_error(
    probs: Tensor, labels: Tensor, n_bins: int = 15, *, logits: bool | None = None
) -> float:
    """Expected calibration error ``sum_b (n_b/N) |acc_b - conf_b|`` (Guo et al., 2017).

    Args:
        probs: ``[N, C]`` probabilities or logits (see module docstring).
        labels: ``[N]`` integer labels.
        n_bins: number of equal-width bins (15 as in Guo et al.).
        logits: see :func:`to_probabilities`.

    Returns:
        ECE in ``[0, 1]``.
    """
    return float(reliability_diagram(probs, labels, n_bins, logits=logits)["ece"])


def plot_reliability(
    probs: Tensor,
    labels: Tensor,
    path: str | Path,
    n_bins: int = 15,
    *,
    logits: bool | None = None,
    title: str | None = None,
) -> Path:
    """Save a reliability diagram (accuracy per confidence bin vs. the diagonal) as a PNG.

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend switch).

    Args:
        probs: ``[N, C]`` probabilities or logits.
        labels: ``[N]`` integer labels.
        path: output file (parent folders are created).
        n_bins: number of bins.
        logits: see :func:`to_probabilities`.
        title: optional title; the ECE is always appended.

    Returns:
        The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    diag = reliability_diagram(probs, labels, n_bins, logits=logits)
    lower = np.asarray(diag["bin_lower"])
    upper = np.asarray(diag["bin_upper"])
    acc = np.nan_to_num(np.asarray(diag["accuracy"]), nan=0.0)
    conf = np.asarray(diag["confidence"])
    centers = (lower + upper) / 2
    width = upper - lower
    gap_base = np.where(np.isnan(conf), 0.0, np.minimum(acc, conf))
    gap = np.where(np.isnan(conf), 0.0, np.abs(acc - np.nan_to_num(conf)))

    fig = Figure(figsize=(4, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(centers, acc, width=width, edgecolor="black", color="tab:blue", label="accuracy")
    ax.bar(centers, gap, bottom=gap_base, width=width, color="tab:red", alpha=0.3, label="gap")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    head = f"{title} — " if title else ""
    ax.set_title(f"{head}ECE = {float(diag['ece']):.4f}")
    ax.legend(loc="upper left")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(out, png_bytes(fig, dpi=100))
    return out


def fit_temperature(logits: Tensor, labels: Tensor, *, max_iter: int = 100) -> float:
    """Temperature scaling: ``T = argmin_T CE(logits / T, labels)`` (Guo et al., 2017).

    Fitted on a held-out (validation) split, never on test. Optimises ``log T`` with L-BFGS
    (strong-Wolfe line search) in float64, starting from ``T = 1``, so ``T > 0`` always.
    ``log T`` is clamped to ``[log 1e-3, log 1e3]``: on perfectly separated validation logits
    the likelihood keeps improving as ``T -> 0`` and the bound keeps the result finite.

    Args:
        logits: ``[N, C]`` validation logits (not probabilities).
        labels: ``[N]`` integer labels in ``[0, C)``.
        max_iter: L-BFGS iteration budget.

    Returns:
        The temperature ``T > 0``; divide test logits by it.
    """
    check_tensor("logits", logits, ndim=2, floating=True)
    _check_labels(labels, logits.shape[0], logits.shape[1])
    check_same_length(logits=logits, labels=labels)
    check_positive("max_iter", max_iter)
    if logits.shape[0] == 0:
        raise ValueError("`logits` is empty: temperature scaling needs at least one sample")
    z = logits.detach().to(torch.float64)
    y = labels.to(z.device)
    log_t = torch.zeros((), dtype=torch.float64, device=z.device, requires_grad=True)
    opt = torch.optim.LBFGS(
        [log_t],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-10,
        tolerance_change=1e-14,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        opt.zero_grad()
        with torch.enable_grad():
            lt = log_t.clamp(_LOG_T_MIN, _LOG_T_MAX)
            loss = F.cross_entropy(z * torch.exp(-lt), y)
            loss.backward()
        return loss

    with torch.autocast(device_type=z.device.type, enabled=False):
        opt.step(closure)
    t = float(torch.exp(log_t.detach().clamp(_LOG_T_MIN, _LOG_T_MAX)))
    if not np.isfinite(t) or t <= 0:  # pragma: no cover - exp() of a finite float is > 0
        raise ValueError("temperature scaling diverged; check `logits`")
    return t
