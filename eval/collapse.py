"""Neural-collapse metrics and the geometry of mixup features (docs/methods.md §8).

* Papyan, Han & Donoho, "Prevalence of neural collapse during the terminal phase of deep
  learning training", PNAS 2020 (NC1-NC4).
* Fisher, Meng & Papyan, "Pushing Boundaries: Mixup's Influence on Neural Collapse",
  ICLR 2024 (mixup geometry).

Notation: features ``h_i`` (input of the last linear layer, ``[N, d]``), labels ``y_i``,
classifier ``W`` (``[C, d]``, one row per class) and bias ``b`` (``[C]``); class means
``mu_c``, global mean ``mu_G`` and centred means ``M~ = [mu_c - mu_G]``.

Conventions (pinned by the tests):

* Everything is float64. Classes with no sample are dropped; ``num_classes`` reports the
  ``C'`` classes that remain and all ``1/C`` factors use ``C'``.
* **NC1** ``= Tr(Sigma_W Sigma_B^+) / C'`` as in Papyan et al. (some public plots show
  ``C' x NC1 = Tr(Sigma_W Sigma_B^+)``; multiply by ``num_classes`` to compare). The
  pseudo-inverse keeps the top ``C' - 1`` eigen-pairs of ``Sigma_B`` (its rank is at most
  ``C' - 1``) and drops eigenvalues below ``pinv_rtol x`` the largest. The trace is computed as
  ``(1/N) sum_i ||Lambda^{-1/2} V^T (h_i - mu_{y_i})||^2 / C'`` without forming
  ``Sigma_W`` (``O(N d C)`` instead of ``O(N d^2)``). If all class means coincide NC1 is
  ``inf`` (with a warning).
* **NC2** ``std/mean`` of ``||mu_c - mu_G||`` (and of ``||w_c||``); equiangularity is the
  standard deviation of the ``C'(C'-1)`` off-diagonal cosines; max-angle is
  ``mean |cos + 1/(C'-1)|``. Every ``std`` uses the ``n - 1`` divisor. For ``W`` the cosines
  are those of the raw rows ``w_c`` (as in the authors' notebook).
* **NC3** ``= || W'/||W'||_F - M~/||M~||_F ||_F^2`` with ``W'`` the rows of the present
  classes.
* **NC4** = share of samples whose classifier decision ``argmax_c (w_c . h + b_c)`` (over all
  ``C`` rows: the classifier's real decision) differs from the nearest present class mean.
* Warnings for ``C' = 2`` (NC2 equiangularity is trivially 0) and ``d < C' - 1`` (no simplex
  ETF exists in ``d`` dimensions).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastmix._atomic import png_bytes, write_bytes
from contrastmix._numerics import unit_rows
from contrastmix._validation import check_same_length, check_tensor

__all__ = ["neural_collapse", "mixup_geometry", "mixed_pair_features", "three_class_projection",
           "plot_mixup_projection"]


def _int_tensor(name: str, y: object) -> Tensor:
    check_tensor(name, y, ndim=1)
    assert isinstance(y, Tensor)
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"`{name}` must be an integer tensor of class indices, got {y.dtype}")
    if y.numel() and int(y.min()) < 0:
        raise ValueError(f"`{name}` must be >= 0, got min {int(y.min())}")
    return y


def _check_classifier(
    weight: Tensor | None, bias: Tensor | None, d: int, max_label: int
) -> tuple[Tensor | None, Tensor | None]:
    if weight is None:
        if bias is not None:
            raise ValueError("`bias` given without `weight`")
        return None, None
    check_tensor("weight", weight, ndim=2, dim=d, floating=True)
    if weight.shape[0] <= max_label:
        raise ValueError(
            f"`weight` has {weight.shape[0]} rows but the labels go up to {max_label}"
        )
    if bias is not None:
        check_tensor("bias", bias, ndim=1, floating=True)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(
                f"`bias` must have {weight.shape[0]} entries (rows of `weight`), "
                f"got {bias.shape[0]}"
            )
    return weight, bias


def _off_diag_cos(v: Tensor) -> Tensor:
    """Cosines of all ordered pairs ``c != c'`` of the rows of ``v`` (``C (C-1)`` values)."""
    u = unit_rows(v, dim=1)
    g = u @ u.T
    c = g.shape[0]
    mask = ~torch.eye(c, dtype=torch.bool, device=g.device)
    return g[mask]


def _std(x: Tensor) -> float:
    return float(x.std(unbiased=True)) if x.numel() > 1 else 0.0


def _equinorm(v: Tensor) -> float:
    norms = torch.linalg.vector_norm(v, dim=1)
    mean = float(norms.mean())
    return _std(norms) / mean if mean > 0 else float("nan")


def _angles(v: Tensor) -> tuple[float, float]:
    c = v.shape[0]
    cos = _off_diag_cos(v)
    return _std(cos), float((cos + 1.0 / (c - 1)).abs().mean())


def neural_collapse(
    features: Tensor,
    labels: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    *,
    global_mean: str = "sample",
    pinv_rtol: float = 1e-10,
) -> dict[str, float | int | str]:
    """Neural-collapse metrics NC1-NC4 (Papyan, Han & Donoho, 2020; docs/methods.md §8).

    Args:
        features: ``[N, d]`` penultimate features ``h``.
        labels: ``[N]`` integer labels ``>= 0``.
        weight: optional ``[C, d]`` last-layer weights (row ``c`` = class ``c``).
        bias: optional ``[C]`` last-layer bias (zero when omitted).
        global_mean: ``"sample"`` (mean of all features) or ``"class_means"`` (mean of the
            class means — the balanced version).
        pinv_rtol: relative tolerance of the pseudo-inverse of ``Sigma_B``.

    Returns:
        ``{"nc1", "nc2_equinorm", "nc2_equiangular", "nc2_max_angle", "num_classes",
        "num_samples", "global_mean"}`` and, with ``weight``, ``"nc2_equinorm_weight",
        "nc2_equiangular_weight", "nc2_max_angle_weight", "nc3", "nc4"``.

    Raises:
        ValueError: NaN features, length mismatch, fewer than two classes, bad shapes.
    """
    check_tensor("features", features, ndim=2, floating=True)
    labels = _int_tensor("labels", labels)
    check_same_length(features=features, labels=labels)
    if global_mean not in ("sample", "class_means"):
        raise ValueError(f"`global_mean` must be 'sample' or 'class_means', got {global_mean!r}")
    if not pinv_rtol >= 0:
        raise ValueError(f"`pinv_rtol` must be >= 0, got {pinv_rtol}")
    n, d = features.shape
    if n == 0:
        raise ValueError("`features` is empty")
    weight, bias = _check_classifier(weight, bias, d, int(labels.max()))

    with torch.no_grad(), torch.autocast(device_type=features.device.type, enabled=False):
        h = features.detach().to(torch.float64)
        y = labels.to(h.device)
        classes, y_idx = torch.unique(y, sorted=True, return_inverse=True)
        c = classes.numel()
        if c < 2:
            raise ValueError(
                f"`labels` hold a single class ({int(classes[0])}): neural collapse needs >= 2"
            )
        if c == 2:
            warnings.warn(
                "neural_collapse: only 2 classes — NC2 equiangularity is trivially 0",
                stacklevel=2,
            )
        if d < c - 1:
            warnings.warn(
                f"neural_collapse: d={d} < C-1={c - 1}, no simplex ETF exists; "
                "NC2/NC3 cannot reach 0",
                stacklevel=2,
            )
        counts = torch.bincount(y_idx, minlength=c).to(torch.float64)
        mu = torch.zeros(c, d, dtype=torch.float64, device=h.device).index_add_(0, y_idx, h)
        mu = mu / counts[:, None]
        mu_g = h.mean(dim=0) if global_mean == "sample" else mu.mean(dim=0)
        m_tilde = mu - mu_g  # [C', d], rows are mu_c - mu_G

        # NC1 via the eigen-decomposition of Sigma_B = M~^T M~ / C' (SVD of M~).
        _, s, vh = torch.linalg.svd(m_tilde, full_matrices=False)
        eig = s.pow(2) / c
        keep = min(c - 1, eig.numel())
        eig, vh = eig[:keep], vh[:keep]
        ok = eig > pinv_rtol * float(eig[0]) if eig.numel() and float(eig[0]) > 0 else None
        if ok is None or not bool(ok.any()):
            warnings.warn(
                "neural_collapse: all class means coincide (Sigma_B = 0); NC1 is inf",
                stacklevel=2,
            )
            nc1 = math.inf
        else:
            eig, vh = eig[ok], vh[ok]
            resid = h - mu[y_idx]  # [N, d]
            proj = (resid @ vh.T) / eig.sqrt()  # [N, r]
            nc1 = float(proj.pow(2).sum() / n) / c

        eq_mu = _equinorm(m_tilde)
        ang_mu, max_mu = _angles(m_tilde)
        out: dict[str, float | int | str] = {
            "nc1": nc1,
            "nc2_equinorm": eq_mu,
            "nc2_equiangular": ang_mu,
            "nc2_max_angle": max_mu,
            "num_classes": int(c),
            "num_samples": int(n),
            "global_mean": global_mean,
        }
        if weight is not None:
            w_all = weight.detach().to(device=h.device, dtype=torch.float64)
            w = w_all[classes]
            ang_w, max_w = _angles(w)
            out["nc2_equinorm_weight"] = _equinorm(w)
            out["nc2_equiangular_weight"] = ang_w
            out["nc2_max_angle_weight"] = max_w
            w_f = torch.linalg.matrix_norm(w)
            m_f = torch.linalg.matrix_norm(m_tilde)
            out["nc3"] = float((w / w_f - m_tilde / m_f).pow(2).sum())
            b_all = (
                bias.detach().to(device=h.device, dtype=torch.float64)
                if bias is not None
                else torch.zeros(w_all.shape[0], dtype=torch.float64, device=h.device)
            )
            pred_clf = (h @ w_all.T + b_all).argmax(dim=1)
            d2 = (h.pow(2).sum(1, keepdim=True) - 2 * h @ mu.T + mu.pow(2).sum(1)[None, :])
            pred_ncc = classes[d2.argmin(dim=1)]
            out["nc4"] = float((pred_clf != pred_ncc).to(torch.float64).mean())
    return out


def mixup_geometry(
    features_mixed: Tensor,
    lam: Tensor,
    labels_a: Tensor,
    labels_b: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    global_mean: Tensor,
    bins: int = 10,
) -> dict[str, np.ndarray | float | int]:
    """Geometry of features of mixed inputs (Fisher et al., ICLR 2024; docs/methods.md §8).

    Features ``h~`` of inputs ``lam * x_a + (1 - lam) * x_b``; ``lam`` weights class ``a``.
    Measures, per ``lam`` bin (``bins`` equal-width bins ``[lo, hi)`` on ``[0, 1]``, the last
    one closed):

    * same-class mixes (``a == b``): ``cos(h~ - mu_G, w_a)``;
    * different-class mixes: the logit margin ``(w_a - w_b) . h~ + b_a - b_b`` (0 on the
      a-b decision boundary; Fisher et al. find ``lam = 0.5`` on it) and the share of
      off-plane energy ``||r - P r||^2 / ||r||^2`` of ``r = h~ - mu_G`` outside
      ``span{w_a, w_b}`` (0 for features in that plane; 0 when ``r = 0``).

    Args:
        features_mixed: ``[N, d]`` features of mixed inputs.
        lam: ``[N]`` mixing coefficients in ``[0, 1]``.
        labels_a: ``[N]`` labels of the first inputs (weight ``lam``).
        labels_b: ``[N]`` labels of the second inputs (weight ``1 - lam``).
        weight: ``[C, d]`` classifier.
        bias: ``[C]`` bias or ``None`` (zero).
        global_mean: ``[d]`` global mean ``mu_G`` of the clean training features.
        bins: number of ``lam`` bins.

    Returns:
        numpy arrays ``bin_edges [bins+1]``, ``bin_centers``, ``same_class_cos``,
        ``same_class_count``, ``margin_mean``, ``margin_std`` (n-1 divisor),
        ``different_class_count``, ``off_plane_share`` (per bin; NaN where a bin is empty)
        and scalars ``same_class_cos_mean``, ``off_plane_share_mean``,
        ``margin_zero_crossing`` (``lam`` where the least-squares line of margin vs ``lam``
        crosses 0; NaN when undefined), ``num_same_class``, ``num_different_class``.
    """
    check_tensor("features_mixed", features_mixed, ndim=2, floating=True)
    d = features_mixed.shape[1]
    check_tensor("lam", lam, ndim=1, floating=True)
    la = _int_tensor("labels_a", labels_a)
    lb = _int_tensor("labels_b", labels_b)
    check_same_length(features_mixed=features_mixed, lam=lam, labels_a=la, labels_b=lb)
    check_tensor("global_mean", global_mean, ndim=1, dim=d, floating=True)
    if not isinstance(bins, int) or isinstance(bins, bool) or bins < 1:
        raise ValueError(f"`bins` must be a positive int, got {bins!r}")
    n = features_mixed.shape[0]
    if n == 0:
        raise ValueError("`features_mixed` is empty")
    if float(lam.min()) < 0 or float(lam.max()) > 1:
        raise ValueError("`lam` must lie in [0, 1]")
    max_label = max(int(la.max()), int(lb.max()))
    if weight is None:
        raise ValueError("`weight` is required for mixup_geometry")
    _check_classifier(weight, bias, d, max_label)

    with torch.no_grad(), torch.autocast(device_type=features_mixed.device.type, enabled=False):
        dev = features_mixed.device
        h = features_mixed.detach().to(torch.float64)
        lam64 = lam.detach().to(device=dev, dtype=torch.float64)
        la, lb = la.to(dev), lb.to(dev)
        w = weight.detach().to(device=dev, dtype=torch.float64)
        b = (
            bias.detach().to(device=dev, dtype=torch.float64)
            if bias is not None
            else torch.zeros(w.shape[0], dtype=torch.float64, device=dev)
        )
        r = h - global_mean.detach().to(device=dev, dtype=torch.float64)
        wa, wb = w[la], w[lb]
        bin_idx = (lam64 * bins).floor().long().clamp(0, bins - 1)

        same = la == lb
        diff = ~same
        cos = F.cosine_similarity(r, wa, dim=1, eps=1e-300)
        margin = ((wa - wb) * h).sum(dim=1) + b[la] - b[lb]
        # Off-plane energy: Gram-Schmidt basis of span{w_a, w_b}.
        e1 = unit_rows(wa, dim=1, eps=1e-300)
        u = wb - (wb * e1).sum(dim=1, keepdim=True) * e1
        u_norm = torch.linalg.vector_norm(u, dim=1, keepdim=True)
        e2 = torch.where(u_norm > 1e-12 * torch.linalg.vector_norm(wb, dim=1, keepdim=True),
                         u / u_norm.clamp_min(1e-300), torch.zeros_like(u))
        in_plane = (r * e1).sum(1, keepdim=True) * e1 + (r * e2).sum(1, keepdim=True) * e2
        r_sq = r.pow(2).sum(dim=1)
        off = (r - in_plane).pow(2).sum(dim=1)
        off_share = torch.where(r_sq > 0, off / r_sq.clamp_min(1e-300), torch.zeros_like(r_sq))

        def per_bin(values: Tensor, mask: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            mean = np.full(bins, np.nan)
            std = np.full(bins, np.nan)
            count = np.zeros(bins, dtype=np.int64)
            for k in range(bins):
                sel = values[mask & (bin_idx == k)]
                count[k] = sel.numel()
                if sel.numel():
                    mean[k] = float(sel.mean())
                if sel.numel() > 1:
                    std[k] = float(sel.std(unbiased=True))
            return mean, std, count

        cos_mean, _, same_count = per_bin(cos, same)
        margin_mean, margin_std, diff_count = per_bin(margin, diff)
        off_mean, _, _ = per_bin(off_share, diff)

        zero_cross = float("nan")
        n_diff = int(diff.sum())
        if n_diff >= 2:
            lx, my = lam64[diff], margin[diff]
            lx_c = lx - lx.mean()
            var = float((lx_c * lx_c).sum())
            if var > 0:
                slope = float((lx_c * (my - my.mean())).sum()) / var
                intercept = float(my.mean()) - slope * float(lx.mean())
                if slope != 0:
                    zero_cross = -intercept / slope
        edges = np.linspace(0.0, 1.0, bins + 1)
        return {
            "bin_edges": edges,
            "bin_centers": (edges[:-1] + edges[1:]) / 2,
            "same_class_cos": cos_mean,
            "same_class_count": same_count,
            "margin_mean": margin_mean,
            "margin_std": margin_std,
            "different_class_count": diff_count,
            "off_plane_share": off_mean,
            "same_class_cos_mean": float(cos[same].mean()) if bool(same.any()) else float("nan"),
            "off_plane_share_mean": float(off_share[diff].mean()) if n_diff else float("nan"),
            "margin_zero_crossing": zero_cross,
            "num_same_class": int(same.sum()),
            "num_different_class": n_diff,
        }


@torch.no_grad()
def mixed_pair_features(
    backbone: nn.Module, x_a: Tensor, x_b: Tensor, lams: Tensor, *, batch_size: int = 1024,
) -> tuple[Tensor, Tensor]:
    """Features of ``lam x_a + (1 - lam) x_b`` for every pair and every ``lam`` of a grid.

    The input of :func:`mixup_geometry` (pairs from
    :func:`contrastmix.mixing.pairs.sample_pairs`). The backbone runs in eval mode (BatchNorm
    running statistics) under ``no_grad``; every sub-module's train/eval flag is restored.

    Args:
        backbone: Any module mapping ``[B, ...]`` to ``[B, d]``.
        x_a: ``[P, ...]`` first inputs of the pairs (on the backbone's device).
        x_b: ``[P, ...]`` second inputs of the pairs.
        lams: ``[L]`` mixing weights of ``x_a``.
        batch_size: Forward batch size.

    Returns:
        ``(features [L * P, d] float32 on CPU, lam [L * P])``, ``lam``-major.
    """
    check_tensor("x_a", x_a, floating=True)
    check_tensor("x_b", x_b, floating=True)
    check_tensor("lams", lams, ndim=1, floating=True)
    if x_a.shape != x_b.shape:
        raise ValueError(f"`x_a` {tuple(x_a.shape)} and `x_b` {tuple(x_b.shape)} differ")
    modes = [(m, m.training) for m in backbone.modules()]
    backbone.eval()
    try:
        feats: list[Tensor] = []
        lam_out: list[Tensor] = []
        for lam in lams.tolist():
            mixed = lam * x_a + (1.0 - lam) * x_b
            for s in range(0, mixed.shape[0], batch_size):
                feats.append(backbone(mixed[s: s + batch_size]).float().cpu())
            lam_out.append(torch.full((x_a.shape[0],), lam, dtype=torch.float32))
    finally:
        for m, t in modes:
            m.train(t)
    return torch.cat(feats).flatten(1), torch.cat(lam_out)


def three_class_projection(
    features: Tensor, weight: Tensor, classes: tuple[int, int, int], global_mean: Tensor
) -> Tensor:
    """2-D coordinates of ``h - mu_G`` in the plane of three centred classifier rows.

    The rows ``w_a, w_b, w_c`` minus their mean span (at most) a plane, where a simplex ETF
    appears as an equilateral triangle; the coordinates use an orthonormal basis of it
    (QR, float64), for the "3-class projection coloured by lambda" plot of Fisher et al.

    Args:
        features: ``[N, d]``; weight: ``[C, d]``; classes: three distinct class indices;
        global_mean: ``[d]``.

    Returns:
        ``[N, 2]`` float64 coordinates.
    """
    check_tensor("features", features, ndim=2, floating=True)
    d = features.shape[1]
    check_tensor("weight", weight, ndim=2, dim=d, floating=True)
    check_tensor("global_mean", global_mean, ndim=1, dim=d, floating=True)
    if len(classes) != 3 or len(set(classes)) != 3:
        raise ValueError(f"`classes` must be three distinct class indices, got {classes}")
    if min(classes) < 0 or max(classes) >= weight.shape[0]:
        raise ValueError(f"`classes` must index rows of `weight` (0..{weight.shape[0] - 1})")
    w3 = weight.detach().to(torch.float64)[list(classes)]
    w3 = w3 - w3.mean(dim=0, keepdim=True)
    q, _ = torch.linalg.qr(w3.T)  # [d, 3]; the centred rows have rank <= 2
    basis = q[:, :2].to(features.device)
    r = features.detach().to(torch.float64) - global_mean.detach().to(
        device=features.device, dtype=torch.float64
    )
    return r @ basis


def plot_mixup_projection(
    coords: Tensor, lam: Tensor, path: str | Path, *, title: str | None = None
) -> Path:
    """Scatter ``[N, 2]`` coordinates (from :func:`three_class_projection`) coloured by lambda.

    Uses matplotlib's Agg canvas (no pyplot). Returns the PNG path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    check_tensor("coords", coords, ndim=2, dim=2)
    check_tensor("lam", lam, ndim=1)
    check_same_length(coords=coords, lam=lam)
    xy = coords.detach().cpu().to(torch.float64).numpy()
    fig = Figure(figsize=(4.5, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=lam.detach().cpu().numpy(), cmap="coolwarm", s=4,
                    vmin=0.0, vmax=1.0)
    fig.colorbar(sc, ax=ax, label="lambda")
    ax.set_aspect("equal", adjustable="datalim")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(out, png_bytes(fig, dpi=100))
    return out
