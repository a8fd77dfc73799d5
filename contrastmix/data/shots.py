"""Many- / medium- / few-shot groups of test targets (imbalanced-regression evaluation).

Yang et al., "Delving into Deep Imbalanced Regression", ICML 2021: the label axis is cut into
bins; a test sample is *many-shot* when its bin holds more than ``many`` training samples,
*few-shot* when it holds fewer than ``few``, and *medium-shot* otherwise. The one implementation
behind the rotated-digits bundle's groups (:data:`contrastmix.data.rotated_digits.SHOT_SETTINGS`)
and the linear probe's per-group metrics (:func:`contrastmix.eval.probe.shot_groups`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from contrastmix._validation import check_positive, check_tensor

__all__ = ["shot_groups", "SHOT_NAMES", "MANY_SHOT", "MEDIUM_SHOT", "FEW_SHOT"]

#: Names of the groups returned by :func:`shot_groups`, indexed by group id.
SHOT_NAMES: tuple[str, str, str] = ("many", "medium", "few")
#: Group ids.
MANY_SHOT, MEDIUM_SHOT, FEW_SHOT = 0, 1, 2


def _bin_ids(
    bins: int | Tensor | None,
    value_range: tuple[float, float] | None,
    bin_width: float | None,
) -> Callable[[Tensor], Tensor]:
    """The function mapping targets to integer bin ids, from one of the three bin settings."""
    if bins is not None and bin_width is not None:
        raise ValueError("give either `bins` (a count or edges) or `bin_width`, not both")
    if bins is None:
        if value_range is not None:
            raise ValueError("`value_range` goes with an integer `bins` (a number of bins)")
        width = 1.0 if bin_width is None else float(bin_width)
        check_positive("bin_width", width)

        def by_width(v: Tensor) -> Tensor:
            return torch.floor(v.detach().to(torch.float64).cpu() / width).long()

        return by_width
    if isinstance(bins, bool) or not isinstance(bins, (int, Tensor)):
        raise ValueError(f"`bins` must be an int or a tensor of edges, got {type(bins).__name__}")
    if isinstance(bins, int):
        check_positive("bins", bins)
        if value_range is None:
            raise ValueError("an integer `bins` needs `value_range=(low, high)`")
        low, high = (float(x) for x in value_range)
        if not high > low:
            raise ValueError(f"`value_range` must be increasing, got {value_range}")
        edges = torch.linspace(low, high, bins + 1, dtype=torch.float64)
    else:
        if value_range is not None:
            raise ValueError("`value_range` goes with an integer `bins`, not with bin edges")
        edges = check_tensor("bins", bins, ndim=1).to(torch.float64).cpu()
        if edges.numel() < 2 or not bool((edges[1:] > edges[:-1]).all()):
            raise ValueError("`bins` edges must be at least 2 strictly increasing values")
    inner = edges[1:-1]

    def by_edges(v: Tensor) -> Tensor:
        return torch.bucketize(v.detach().to(torch.float64).cpu(), inner, right=True)

    return by_edges


def shot_groups(
    train_targets: Tensor,
    test_targets: Tensor,
    bins: int | Tensor | None = None,
    *,
    value_range: tuple[float, float] | None = None,
    bin_width: float | None = None,
    many: int = 100,
    few: int = 20,
) -> Tensor:
    """Many- / medium- / few-shot group of each test target (Yang et al., ICML 2021).

    Bins, one of:

    * ``bin_width=w`` (the default, ``w = 1``): unbounded bins ``[k w, (k + 1) w)``, i.e.
      ``floor(y / w)`` (class index itself for integer labels);
    * ``bins=M, value_range=(low, high)``: ``M`` equal-width bins over the range;
    * ``bins=edges``: ``[M + 1]`` strictly increasing bin edges.

    With a count or edges, values outside the range fall into the first / last bin.

    The defaults ``many = 100``, ``few = 20`` are the literature's (AgeDB-DIR / IMDB-WIKI-DIR,
    1-year bins, 12k-190k training images); smaller data sets scale them down (rotated digits:
    :data:`contrastmix.data.rotated_digits.SHOT_SETTINGS`).

    Args:
        train_targets: ``[N]`` training targets (or labels), ``N >= 1``.
        test_targets: ``[M]`` test targets.
        bins: Number of equal-width bins over ``value_range``, or a tensor of bin edges.
        value_range: ``(low, high)`` for an integer ``bins``.
        bin_width: Width of unbounded bins (> 0); not with ``bins``.
        many: Strictly more training samples in the bin than this -> many-shot.
        few: Strictly fewer training samples in the bin than this -> few-shot
            (``few <= many + 1``, so that no bin is both).

    Returns:
        ``[M]`` int64 group ids on ``test_targets``' device: :data:`MANY_SHOT` (0),
        :data:`MEDIUM_SHOT` (1) or :data:`FEW_SHOT` (2); names in :data:`SHOT_NAMES`.

    Raises:
        ValueError: non-1-D or non-finite targets, no training target, an inconsistent bin
            setting or thresholds.
    """
    check_tensor("train_targets", train_targets, ndim=1)
    check_tensor("test_targets", test_targets, ndim=1)
    if train_targets.numel() == 0:
        raise ValueError("`train_targets` is empty")
    check_positive("many", many, allow_zero=True)
    check_positive("few", few, allow_zero=True)
    if few > many + 1:
        raise ValueError(f"`few` ({few}) must not exceed `many` + 1 ({many + 1})")
    bin_of = _bin_ids(bins, value_range, bin_width)
    tr, te = bin_of(train_targets), bin_of(test_targets)
    uniq, counts = torch.unique(tr, return_counts=True)  # sorted
    pos = torch.searchsorted(uniq, te).clamp(max=uniq.numel() - 1)
    cnt = torch.where(uniq[pos] == te, counts[pos], torch.zeros_like(te))
    groups = torch.full_like(te, MEDIUM_SHOT)
    groups[cnt > many] = MANY_SHOT
    groups[cnt < few] = FEW_SHOT
    return groups.to(test_targets.device)
