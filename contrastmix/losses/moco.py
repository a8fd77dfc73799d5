"""MoCo InfoNCE with a queue of negatives.

He et al., "Momentum Contrast for Unsupervised Visual Representation Learning", CVPR 2020;
Chen et al., "Improved Baselines with Momentum Contrastive Learning" (MoCo v2), 2020.
See docs/methods.md §1 ("Base").
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contrastmix._validation import check_positive, check_unit_norm, same_instance_mask
from contrastmix.losses._contracts import check_queue_inputs
from contrastmix.losses.fused_infonce import fused_infonce

__all__ = ["moco_parts", "moco_logits", "moco_infonce", "MoCoLoss", "same_instance_mask"]


def moco_parts(
    query: Tensor,
    key: Tensor,
    queue: Tensor,
    temperature: float,
    *,
    queue_ids: Tensor | None = None,
    query_ids: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The two parts of the MoCo logits, in fp32 (or wider): ``([B, 1], [B, K])``.

    ``pos = q·k / τ`` and ``neg = q·n_j / τ``, computed as ``(q / τ)·x`` (the ``[B, d]``
    query is scaled, not the ``[B, K]`` logits). With sample ids, queue rows that hold the
    query's own sample (an older key of the same image: with a queue as large as the dataset
    every query meets one) are not negatives: their logit is ``-inf`` (zero probability,
    zero gradient; the positive keeps every row finite).

    Args:
        query: ``[B, d]`` L2-normalised queries (with gradient).
        key: ``[B, d]`` L2-normalised keys of the momentum encoder (detached here).
        queue: ``[K, d]`` L2-normalised negatives (detached here), ``K`` may be 0.
        temperature: τ > 0.
        queue_ids: Optional ``[K]`` sample ids of the queue rows.
        query_ids: Optional ``[B]`` sample ids of the queries.

    Returns:
        ``(pos [B, 1], neg [B, K])`` logits.

    Raises:
        ValueError: naming the argument: wrong shapes, an empty batch, NaN / inf or rows that
            are not L2-normalised (value checks: on CPU tensors, or with
            ``CONTRASTMIX_DEBUG_CHECKS=1``), ``temperature <= 0``.
    """
    check_queue_inputs(query, key, queue)
    # value checks (CPU, or everywhere with debug checks), each with its own dtype's tolerance
    check_unit_norm("query", query)
    check_unit_norm("key", key)
    check_unit_norm("queue", queue)
    check_positive("temperature", temperature)
    same = same_instance_mask(queue_ids, query_ids, queue.shape[0], query.shape[0], query.device)
    dtype = torch.promote_types(query.dtype, torch.float32)
    with torch.autocast(device_type=query.device.type, enabled=False):
        return scaled_parts(query.to(dtype), key.to(dtype), queue.to(dtype), temperature, same)


def scaled_parts(q: Tensor, key: Tensor, queue: Tensor, temperature: float,
                 same: Tensor | None) -> tuple[Tensor, Tensor]:
    """:func:`moco_parts` on checked inputs of one dtype (no autocast handling): ``(q / τ)·k``
    and ``(q / τ)·queue`` (key and queue detached), rows ``same`` of ``neg`` set to ``-inf``."""
    qs = q / temperature
    pos = (qs * key.detach()).sum(dim=1, keepdim=True)
    neg = qs @ queue.detach().T
    if same is not None:
        neg.masked_fill_(same, float("-inf"))  # in place: mm saves its inputs only
    return pos, neg


def moco_logits(
    query: Tensor,
    key: Tensor,
    queue: Tensor,
    temperature: float,
    *,
    queue_ids: Tensor | None = None,
    query_ids: Tensor | None = None,
) -> Tensor:
    """Logits ``[q·k, q·n_1 .. q·n_K] / τ`` computed in fp32 (or wider): :func:`moco_parts`
    (same arguments) concatenated; ``[B, 1 + K]``, column 0 is the positive."""
    pos, neg = moco_parts(query, key, queue, temperature, queue_ids=queue_ids,
                          query_ids=query_ids)
    return torch.cat([pos, neg], dim=1)


def moco_infonce(
    query: Tensor,
    key: Tensor,
    queue: Tensor,
    temperature: float = 0.2,
    *,
    queue_ids: Tensor | None = None,
    query_ids: Tensor | None = None,
) -> Tensor:
    """MoCo InfoNCE: cross-entropy of :func:`moco_logits` with target 0.

    Computed from :func:`moco_parts` by :func:`~contrastmix.losses.fused_infonce.fused_infonce`
    (same value and gradient, without the concatenated logits).

    Args:
        query: ``[B, d]`` L2-normalised queries.
        key: ``[B, d]`` L2-normalised momentum keys (no gradient flows into them).
        queue: ``[K, d]`` L2-normalised negatives (no gradient flows into them).
        temperature: τ (0.2 for MoCo v2).
        queue_ids: Optional ``[K]`` sample ids of the queue rows; with ``query_ids``, rows of
            the query's own sample are left out of its negatives.
        query_ids: Optional ``[B]`` sample ids of the queries.

    Returns:
        Scalar mean loss (fp32).
    """
    pos, neg = moco_parts(query, key, queue, temperature, queue_ids=queue_ids,
                          query_ids=query_ids)
    return fused_infonce(pos, neg)


class MoCoLoss(nn.Module):
    """Module form of :func:`moco_infonce` (a queue loss: ``(query, key, queue, ...)``).

    Args:
        temperature: τ > 0 (0.2 in MoCo v2).

    Shapes:
        ``forward(query [B, d], key [B, d], queue [K, d], *, queue_ids [K] = None,
        query_ids [B] = None) -> scalar``. With ``num_mix = num_query_mix = 0``
        :class:`~contrastmix.losses.mochi.MoCHiLoss` gives the same value.
    """

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        check_positive("temperature", temperature)
        self.temperature = float(temperature)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        queue: Tensor,
        *,
        queue_ids: Tensor | None = None,
        query_ids: Tensor | None = None,
    ) -> Tensor:
        return moco_infonce(query, key, queue, self.temperature, queue_ids=queue_ids,
                            query_ids=query_ids)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
