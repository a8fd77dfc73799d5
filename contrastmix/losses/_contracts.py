"""Input checks of the three loss families (one helper per family, one set of messages).

The call shapes are documented in :mod:`contrastmix.losses` (the table in its docstring):

* queue losses ``(query [B, d], key [B, d], queue [K, d], ...)``: :func:`check_queue_inputs`;
* view losses ``(features [B, V, d], labels [B], ...)``: :func:`check_view_inputs` (called by
  :func:`flatten_views`);
* paired losses ``(a [B, d], b [B, d], ...)``: :func:`check_pair_inputs`.

Every member of a family calls its family's helper first, so a wrong shape fails the same way,
with a one-line ``ValueError`` that names the argument, whichever loss of the family is used.
Shape checks always run; NaN / unit-norm checks are value checks (:mod:`contrastmix._validation`:
on CPU tensors, or everywhere with debug checks on).
"""

from __future__ import annotations

import torch
from torch import Tensor

from contrastmix._validation import check_same_length, check_tensor, check_unit_norm

__all__ = ["check_queue_inputs", "check_view_inputs", "flatten_views", "check_pair_inputs"]


# --------------------------------------------------------------------------------------------
# Queue losses (MoCo, MoCHi).
# --------------------------------------------------------------------------------------------
def check_queue_inputs(query: object, key: object, queue: object) -> int:
    """Check ``query [B, d]``, ``key [B, d]`` and ``queue [K, d]`` (floating, finite,
    ``B >= 1``; ``K`` may be 0).

    Returns:
        ``d``, the embedding dimension.

    Raises:
        ValueError: a non-tensor, a wrong number of dimensions, an integer dtype, NaN / inf,
            ``key`` or ``queue`` of another width than ``query``, ``key`` of another length, or
            an empty batch.
    """
    check_tensor("query", query, ndim=2, floating=True)
    assert isinstance(query, Tensor)
    d = int(query.shape[1])
    check_tensor("key", key, ndim=2, dim=d, floating=True)
    check_tensor("queue", queue, ndim=2, dim=d, floating=True)
    assert isinstance(key, Tensor)
    check_same_length(query=query, key=key)
    if query.shape[0] == 0:
        raise ValueError("`query` must hold at least one row (the batch is empty)")
    return d


# --------------------------------------------------------------------------------------------
# View losses (SupCon, RnC, SupReMix).
# --------------------------------------------------------------------------------------------
def check_view_inputs(
    features: object,
    labels: object,
    *,
    labels_required: bool = True,
    unit_norm: bool = False,
) -> tuple[int, int, int]:
    """Check ``features [B, V, d]`` (floating, finite, ``B, V >= 1``) and ``labels [B]``.

    Args:
        features: ``[B, V, d]`` embeddings, ``V`` views of ``B`` samples.
        labels: ``[B]`` real labels (one per sample, shared by its views), or ``None`` where
            the loss allows it (``labels_required=False``: SupCon's self-supervised case).
        labels_required: Reject ``labels=None``.
        unit_norm: Also require L2-normalised rows (a value check; bf16 / fp16 get a looser
            tolerance, their rounding alone moves norms by up to ~4e-3).

    Returns:
        ``(B, V, d)``.

    Raises:
        ValueError: naming ``features`` or ``labels``.
    """
    check_tensor("features", features, ndim=3, floating=True)
    assert isinstance(features, Tensor)
    b, v, d = (int(s) for s in features.shape)
    if b == 0 or v == 0:
        raise ValueError(
            f"`features` must have B >= 1 and V >= 1, got shape {tuple(features.shape)}"
        )
    if unit_norm:
        check_unit_norm("features", features)  # tolerance fits features.dtype
    if labels is None:
        if labels_required:
            raise ValueError("`labels` is required: one real label per sample, shape [B]")
        return b, v, d
    check_tensor("labels", labels, ndim=1)
    assert isinstance(labels, Tensor)
    if labels.shape[0] != b:
        raise ValueError(
            f"`labels` must have one entry per sample: `features` has {b} rows, "
            f"`labels` has {labels.shape[0]}"
        )
    if labels.dtype == torch.bool or labels.is_complex():
        raise ValueError(f"`labels` must be real numbers, got {labels.dtype}")
    return b, v, d


def flatten_views(
    features: Tensor,
    labels: Tensor | None,
    *,
    labels_required: bool = True,
    unit_norm: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Check the views (:func:`check_view_inputs`, same keywords) and flatten them view-major:
    row ``v * B + b`` is view ``v`` of sample ``b``.

    Args:
        features: ``[B, V, d]`` embeddings.
        labels: ``[B]`` labels, or ``None`` when not ``labels_required``.
        labels_required: Reject ``labels=None``.
        unit_norm: Require L2-normalised rows.

    Returns:
        ``(z [V*B, d], y [V*B] or None)``; ``z`` keeps the input dtype, ``y`` the labels' dtype
        on ``z``'s device.
    """
    b, v, d = check_view_inputs(
        features, labels, labels_required=labels_required, unit_norm=unit_norm
    )
    z = features.transpose(0, 1).reshape(v * b, d)
    return z, None if labels is None else labels.to(z.device).repeat(v)


# --------------------------------------------------------------------------------------------
# Paired losses (CLIP, m2-mix, M3CoL).
# --------------------------------------------------------------------------------------------
def check_pair_inputs(a: object, b: object, names: tuple[str, str] = ("a", "b")) -> int:
    """Check a pair of embeddings ``a [B, d]``, ``b [B, d]`` (floating, finite, ``B >= 1``).

    Args:
        a: ``[B, d]`` embeddings of the first modality.
        b: ``[B, d]`` embeddings of the second modality, row ``i`` paired with ``a[i]``.
        names: The two argument names used in the messages (e.g. ``("image", "text")``).

    Returns:
        ``B``.

    Raises:
        ValueError: naming the argument: a non-tensor, not 2-D, an integer dtype, NaN / inf,
            different embedding dimensions or batch sizes, or an empty batch.
    """
    n1, n2 = names
    check_tensor(n1, a, ndim=2, floating=True)
    check_tensor(n2, b, ndim=2, floating=True)
    assert isinstance(a, Tensor) and isinstance(b, Tensor)
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"`{n1}` and `{n2}` must have the same embedding dimension, got {a.shape[1]} and "
            f"{b.shape[1]} (project the modalities to a common dimension first)"
        )
    n = check_same_length(**{n1: a, n2: b})
    if n == 0:
        raise ValueError(f"`{n1}` and `{n2}` must hold at least one row")
    return n
