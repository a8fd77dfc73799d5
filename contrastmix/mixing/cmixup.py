"""C-Mixup: label-similarity sampling of mixup partners for regression.

Yao et al., "C-Mixup: Improving Generalization in Regression", NeurIPS 2022. See docs/methods.md §3.

For sample ``i`` the mixing partner ``j`` is drawn with probability

    P(j | i) = softmax_j( -||y_i - y_j||^2 / (2 sigma^2) )

over the training set (``j = i`` included unless ``exclude_self``). Inputs (or hidden features)
and labels are then mixed with ``lambda ~ Beta(alpha, alpha)`` (alpha = 2), one lambda per batch
or per sample (:func:`contrastmix.mixing.beta.sample_lambda`). sigma -> inf is plain mixup
(uniform partners), sigma -> 0 is no mixing (every sample is its own partner); adding a
constant to the labels changes nothing.

Two sampling modes, neither of which builds an ``N x N`` matrix for large ``N``:

* ``window=None`` (exact): rows of ``P`` are built ``chunk_rows`` at a time (``[chunk, N]``
  memory, ``O(N^2)`` time). Works for 1-D labels ``[N]`` and vector labels ``[N, k]``
  (Euclidean distance).
* ``window=K`` (approximate, 1-D labels only): labels are sorted once; for sample ``i`` the
  softmax is restricted to the ``K`` labels nearest to ``y_i`` (a contiguous block of the sorted
  order, found by binary search), i.e. ``O(N K)`` memory and time. Partners outside the block
  are never drawn; their true probability is at most ``exp(-r^2 / (2 sigma^2))`` relative to
  ``i`` itself, with ``r`` the distance to the block edge, so the approximation is tight once
  the block spans a few sigma. It is exact when ``K >= N``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from contrastmix._numerics import safe_scale_threshold
from contrastmix._validation import check_positive, check_tensor, value_checks

__all__ = [
    "cmixup_probabilities",
    "cmixup_partners",
    "CMixupSampler",
    "mix",
]


# --------------------------------------------------------------------------------------------
# Probabilities and partner sampling.
# --------------------------------------------------------------------------------------------
def _check_labels(labels: object) -> Tensor:
    y = check_tensor("labels", labels, ndim=(1, 2))
    if y.shape[0] == 0:
        raise ValueError("`labels` must hold at least one sample, got 0")
    if not (y.is_floating_point() or y.dtype in (torch.int32, torch.int64, torch.int16)):
        raise ValueError(f"`labels` must be numeric, got {y.dtype}")
    y = y.to(torch.float64)
    return y if y.ndim == 2 else y[:, None]


def _logits_from_dist(d: Tensor, sigma: float) -> Tensor:
    """``-(d^2 - min_row d^2) / (2 sigma^2)`` from distances ``d`` (``inf``: never drawn).

    The row maximum is 0, so no row is all ``-inf``. Evaluated as
    ``-((d - m) / sigma) ((d + m) / sigma) / 2`` (``m`` the row minimum), which never squares
    a label distance: labels far apart (e.g. 1e200 in float64) give ``-inf`` (probability 0),
    not ``inf - inf = nan``.
    """
    m = d.min(dim=1, keepdim=True).values
    logits = -0.5 * ((d - m) / sigma) * ((d + m) / sigma)
    return logits.masked_fill(d == m, 0.0)  # exact 0 at the minimum (also for inf * 0)


def _dist(a: Tensor, b: Tensor) -> Tensor:
    """Euclidean distances ``[n, m]`` between label rows by direct differences (no expansion:
    exact for ties, no overflow from squaring large labels before subtracting)."""
    if a.shape[1] == 1:
        return (a - b.T).abs()
    if not (a.numel() and b.numel()):
        return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")
    # divide by the largest |label| only when squares could overflow (exactly 1 otherwise);
    # branchless: no host synchronisation for labels on a GPU
    s = torch.maximum(a.abs().amax(), b.abs().amax())
    s = torch.where(s > safe_scale_threshold(a.dtype), s, torch.ones_like(s))
    return torch.cdist(a / s, b / s, compute_mode="donot_use_mm_for_euclid_dist") * s


def cmixup_probabilities(labels: Tensor, sigma: float, *, exclude_self: bool = False) -> Tensor:
    """Dense C-Mixup partner probabilities (small ``N`` only: tests, analysis).

    Args:
        labels: ``[N]`` or ``[N, k]`` regression targets.
        sigma: Kernel bandwidth in label units (> 0).
        exclude_self: Give ``P(i | i) = 0``.

    Returns:
        ``[N, N]`` float64 matrix whose rows sum to one; row ``i`` is ``P(. | i)``.
    """
    y = _check_labels(labels)
    check_positive("sigma", sigma)
    n = y.shape[0]
    if exclude_self and n < 2:
        raise ValueError("`exclude_self=True` needs at least 2 labels")
    d = _dist(y, y)
    if exclude_self:
        d.fill_diagonal_(math.inf)
    return torch.softmax(_logits_from_dist(d, sigma), dim=1)


class CMixupSampler:
    """Draws C-Mixup partners from a fixed training set (labels sorted once).

    Example (input mixup for the supervised regression baseline)::

        sampler = CMixupSampler(train_y, sigma=2.0, window=256)
        for idx in loader_of_indices:                     # [b] dataset indices
            j = sampler.sample(idx, generator=g)          # [b] partner dataset indices
            lam = sample_lambda(len(idx), 2.0, generator=g).view(-1, 1)  # mixing.beta
            x_mix = lam * train_x[idx] + (1 - lam) * train_x[j]
            y_mix = lam[:, 0] * train_y[idx] + (1 - lam[:, 0]) * train_y[j]

    Within a batch, :func:`cmixup_partners` + :func:`mix` do the same.

    Args:
        labels: ``[N]`` or ``[N, k]`` training targets.
        sigma: Kernel bandwidth in label units (> 0).
        exclude_self: Never pick ``i`` as its own partner.
        window: ``None`` for exact sampling (rows of ``P`` built in chunks of ``chunk_rows``),
            or ``K`` to restrict each softmax to the ``K`` nearest labels (1-D labels only; see
            the module docstring). Exact when ``K >= N``.
        chunk_rows: Rows per chunk in exact mode (memory ``chunk_rows * N``).
    """

    def __init__(
        self,
        labels: Tensor,
        sigma: float,
        *,
        exclude_self: bool = False,
        window: int | None = None,
        chunk_rows: int = 1024,
    ) -> None:
        y = _check_labels(labels)
        check_positive("sigma", sigma)
        check_positive("chunk_rows", chunk_rows)
        n = y.shape[0]
        if exclude_self and n < 2:
            raise ValueError("`exclude_self=True` needs at least 2 labels")
        if window is not None:
            if window < 1 or (exclude_self and window < 2):
                raise ValueError(
                    f"`window` must be >= {2 if exclude_self else 1} (or None), got {window}"
                )
            if y.shape[1] != 1:
                raise ValueError(
                    "`window` needs 1-D labels (sorted order); use window=None for "
                    f"vector labels of shape {tuple(labels.shape)}"
                )
        self.labels = y
        self.sigma = float(sigma)
        self.exclude_self = exclude_self
        self.window = window
        self.chunk_rows = int(chunk_rows)
        self.num_samples = n
        if window is not None:
            flat = y[:, 0]
            self._order = torch.argsort(flat, stable=True)
            self._sorted = flat[self._order]
            self._rank = torch.empty_like(self._order)
            self._rank[self._order] = torch.arange(n, device=y.device)

    # ---------------------------------------------------------------- window candidates
    def window_candidates(self, indices: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Candidate partners and their probabilities in window mode.

        Args:
            indices: ``[b]`` dataset indices (default: all ``N``).

        Returns:
            ``(cand [b, K'], prob [b, K'])`` with ``K' = min(window, N)``: dataset indices of
            the ``K'`` labels nearest to each query (a contiguous block of the sorted order)
            and the softmax restricted to them (rows sum to one).
        """
        if self.window is None:
            raise ValueError("`window_candidates` needs a sampler built with `window`")
        idx = self._check_indices(indices)
        n = self.num_samples
        k = min(self.window, n)
        ys = self._sorted
        yq = self.labels[idx, 0]
        # The k nearest labels to y_r form the block [s, s + k) of the sorted order with the
        # smallest s such that y[s] + y[s + k] >= 2 y_r (h(s) = y[s] + y[s + k] is sorted).
        if k < n:
            h = ys[: n - k] + ys[k:]
            start = torch.searchsorted(h, 2.0 * yq, side="left").clamp(max=n - k)
        else:
            start = torch.zeros_like(idx)
        pos = start[:, None] + torch.arange(k, device=idx.device)[None, :]
        cand = self._order[pos]
        d = (ys[pos] - yq[:, None]).abs()
        if self.exclude_self:
            d = d.masked_fill(cand == idx[:, None], math.inf)
        prob = torch.softmax(_logits_from_dist(d, self.sigma), dim=1)
        return cand, prob

    def _check_indices(self, indices: Tensor | None) -> Tensor:
        dev = self.labels.device
        if indices is None:
            return torch.arange(self.num_samples, device=dev)
        check_tensor("indices", indices, ndim=1)
        if indices.is_floating_point():
            raise ValueError(f"`indices` must be an integer tensor, got {indices.dtype}")
        if indices.numel() and value_checks(indices) and (
            int(indices.min()) < 0 or int(indices.max()) >= self.num_samples
        ):
            raise ValueError(f"`indices` must lie in [0, {self.num_samples}), got out-of-range")
        # indices from the host to the labels' device: a copy that does not wait for it
        return indices.to(device=dev, dtype=torch.long, non_blocking=True)

    # ---------------------------------------------------------------- sampling
    def sample(
        self, indices: Tensor | None = None, *, generator: torch.Generator | None = None
    ) -> Tensor:
        """Draw one partner for each query index.

        Args:
            indices: ``[b]`` dataset indices (default: all ``N`` in order).
            generator: Optional generator (on the labels' device).

        Returns:
            ``[b]`` LongTensor of partner dataset indices.
        """
        idx = self._check_indices(indices)
        if idx.numel() == 0:
            return idx.clone()
        if self.window is not None:
            cand, prob = self.window_candidates(idx)
            pick = torch.multinomial(prob, 1, generator=generator)[:, 0]
            return cand.gather(1, pick[:, None])[:, 0]
        out = torch.empty_like(idx)
        y = self.labels
        for s in range(0, idx.numel(), self.chunk_rows):
            rows = idx[s : s + self.chunk_rows]
            d = _dist(y[rows], y)
            if self.exclude_self:
                d[torch.arange(rows.numel(), device=rows.device), rows] = math.inf
            prob = torch.softmax(_logits_from_dist(d, self.sigma), dim=1)
            out[s : s + rows.numel()] = torch.multinomial(prob, 1, generator=generator)[:, 0]
        return out

    __call__ = sample


def cmixup_partners(
    labels: Tensor,
    sigma: float,
    *,
    exclude_self: bool = False,
    window: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw one C-Mixup partner per sample among the given samples.

    Args:
        labels: ``[N]`` or ``[N, k]`` targets (e.g. of a batch, or of the whole training set).
        sigma: Kernel bandwidth in label units (> 0).
        exclude_self: Never pick ``i`` itself.
        window: ``None`` = exact (chunked rows, never ``N x N`` at once); ``K`` = softmax
            restricted to the ``K`` nearest labels in sorted order (approximation, exact when
            ``K >= N``; 1-D labels only).
        generator: Optional generator.

    Returns:
        ``[N]`` LongTensor: ``partners[i]`` indexes ``labels``.
    """
    sampler = CMixupSampler(labels, sigma, exclude_self=exclude_self, window=window)
    return sampler.sample(generator=generator)


def mix(
    x: Tensor, y: Tensor, partners: Tensor, lam: float | Tensor
) -> tuple[Tensor, Tensor]:
    """Mixup of each sample with its partner: ``lam * x + (1 - lam) * x[partners]``.

    Args:
        x: ``[N, ...]`` inputs or hidden features.
        y: ``[N]`` or ``[N, k]`` targets.
        partners: ``[N]`` LongTensor of indices into ``x`` / ``y`` (e.g. from
            :func:`cmixup_partners`).
        lam: Scalar, or ``[N]`` per-sample coefficients in ``[0, 1]`` (weight of ``x``; see
            :func:`contrastmix.mixing.beta.sample_lambda`).

    Returns:
        ``(x_mix [N, ...], y_mix)`` in the dtype of ``x`` / ``y`` (integer ``y`` becomes float).
    """
    check_tensor("x", x, ndim=tuple(range(1, 9)))
    check_tensor("y", y, ndim=(1, 2))
    check_tensor("partners", partners, ndim=1)
    if x.shape[0] != y.shape[0] or partners.shape[0] != x.shape[0]:
        raise ValueError(
            f"length mismatch: `x` has {x.shape[0]}, `y` has {y.shape[0]}, "
            f"`partners` has {partners.shape[0]} rows"
        )
    if partners.is_floating_point():
        raise ValueError(f"`partners` must be an integer tensor, got {partners.dtype}")
    n = x.shape[0]
    if n and value_checks(partners) and (int(partners.min()) < 0 or int(partners.max()) >= n):
        raise ValueError(f"`partners` must index rows of `x` (0..{n - 1})")
    lam_t = torch.as_tensor(lam, device=x.device)
    check_tensor("lam", lam_t, ndim=(0, 1))
    if lam_t.ndim == 1 and lam_t.shape[0] != n:
        raise ValueError(f"`lam` must be a scalar or have {n} entries, got {lam_t.shape[0]}")
    if value_checks(lam_t) and bool(((lam_t < 0) | (lam_t > 1)).any()):
        raise ValueError("`lam` must lie in [0, 1]")
    yf = y if y.is_floating_point() else y.to(torch.float32)
    lx = lam_t.to(x.dtype) if x.is_floating_point() else lam_t.float()
    lx = lx.reshape(-1, *([1] * (x.ndim - 1))) if lx.ndim == 1 else lx
    ly = lam_t.to(yf.dtype)
    ly = ly.reshape(-1, *([1] * (yf.ndim - 1))) if ly.ndim == 1 else ly
    x_mix = lx * x + (1 - lx) * x[partners]
    y_mix = ly * yf + (1 - ly) * yf[partners]
    return x_mix, y_mix
