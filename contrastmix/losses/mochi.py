"""MoCHi loss: MoCo InfoNCE with per-query synthetic hard negatives.

Kalantidis et al., "Hard Negative Mixing for Contrastive Learning", NeurIPS 2020; on top of
MoCo v2 (Chen et al., 2020). See docs/methods.md §1. The synthetic logits come from the fast path
:func:`contrastmix.mixing.mochi.mochi_logits` (no ``B × (s+s') × d`` tensor).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contrastmix._validation import (
    check_positive,
    check_sample_ids,
    check_unit_norm,
)
from contrastmix.losses._contracts import check_queue_inputs
from contrastmix.losses.fused_infonce import fused_infonce, proxy_accuracy, row_max
from contrastmix.losses.moco import same_instance_mask, scaled_parts
from contrastmix.mixing.mochi import (
    _check_hparams,
    _mochi_coefficients,
)

__all__ = ["mochi_loss", "MoCHiLoss", "same_class_mask"]


def mochi_loss(
    query: Tensor,
    key: Tensor,
    queue: Tensor,
    temperature: float = 0.2,
    *,
    num_hard: int = 1024,
    num_mix: int = 1024,
    num_query_mix: int = 128,
    exclude_same_instance: bool = True,
    queue_ids: Tensor | None = None,
    query_ids: Tensor | None = None,
    generator: torch.Generator | None = None,
    mix: bool = True,
    queue_labels: Tensor | None = None,
    query_labels: Tensor | None = None,
) -> Tensor:
    """MoCHi loss: MoCo InfoNCE over ``[key, queue, synthetic]`` logits, target 0.

    The function form of :class:`MoCHiLoss` (same arguments: the module's constructor
    arguments plus those of its :meth:`~MoCHiLoss.forward`; same value for the same draws).

    Args:
        query: ``[B, d]`` L2-normalised queries (with gradient).
        key: ``[B, d]`` L2-normalised momentum keys (no gradient flows into them).
        queue: ``[K, d]`` L2-normalised *filled* queue rows (no gradient flows into them).
        temperature: τ > 0 (0.2).
        num_hard: ``N``, hard-set size per query (1024).
        num_mix: ``s``, type-1 synthetic negatives per query (1024).
        num_query_mix: ``s'``, type-2 synthetic negatives per query (128).
        exclude_same_instance: Leave queue rows of the query's own sample out of the InfoNCE
            denominator too (see :class:`MoCHiLoss`).
        queue_ids: Optional ``[K]`` sample ids of the queue rows.
        query_ids: Optional ``[B]`` sample ids of the queries.
        generator: Optional ``torch.Generator`` for the mixing draws.
        mix: Append synthetic negatives (False: plain MoCo, e.g. during the method's warm-up).
        queue_labels: Optional ``[K]`` class labels of the queue rows (``-1``: unknown).
        query_labels: Optional ``[B]`` class labels of the queries: given with
            ``queue_labels``, queue rows of the query's class are left out of its hard set
            (the class oracle, a diagnostic that uses labels; they stay in the denominator).

    Returns:
        Scalar mean loss (fp32 or wider).
    """
    check_positive("temperature", temperature)
    _check_hparams(num_hard, num_mix, num_query_mix)
    loss, _, _ = _mochi(
        query, key, queue, float(temperature), num_hard, num_mix, num_query_mix,
        bool(exclude_same_instance), queue_ids, query_ids, generator, bool(mix),
        queue_labels, query_labels,
    )
    return loss


def same_class_mask(queue_labels: Tensor | None, query_labels: Tensor | None, n_queue: int,
                    n_query: int, device: torch.device) -> Tensor | None:
    """``[B, K]`` bool, True where queue row ``j`` has query ``b``'s class label.

    Returns ``None`` when no labels are given; both or neither must be given, as integer
    tensors of ``K`` and ``B`` entries. A queue label of ``-1`` (unknown) matches no query.
    """
    if queue_labels is None and query_labels is None:
        return None
    if queue_labels is None or query_labels is None:
        raise ValueError("`queue_labels` and `query_labels` must be given together (or neither)")
    for name, t, n in (("queue_labels", queue_labels, n_queue),
                       ("query_labels", query_labels, n_query)):
        if not isinstance(t, Tensor) or t.ndim != 1 or t.shape[0] != n:
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"`{name}` must be a [{n}] tensor, got {shape}")
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"`{name}` must hold integer class labels, got {t.dtype}")
    nb = torch.device(device).type != "cpu"
    ql = query_labels.to(device, non_blocking=nb).unsqueeze(1)
    kl = queue_labels.to(device, non_blocking=nb).unsqueeze(0)
    return (ql == kl) & (kl >= 0)


def _mochi(
    query: Tensor,
    key: Tensor,
    queue: Tensor,
    temperature: float,
    num_hard: int,
    num_mix: int,
    num_query_mix: int,
    exclude_same_instance: bool,
    queue_ids: Tensor | None,
    query_ids: Tensor | None,
    generator: torch.Generator | None,
    mix: bool,
    queue_labels: Tensor | None = None,
    query_labels: Tensor | None = None,
) -> tuple[Tensor, Tensor, bool]:
    """:func:`mochi_loss` on checked hyper-parameters: ``(loss, proxy, mixed)``, ``proxy`` the
    share of queries whose key logit beats every real negative (0-d tensor), ``mixed`` whether
    synthetic negatives were appended."""
    check_queue_inputs(query, key, queue)
    check_unit_norm("query", query)
    check_unit_norm("key", key)
    queue_norms = check_unit_norm("queue", queue)  # None when value checks are off
    # [B, K] rows of each query's own sample, out of its denominator when
    # exclude_same_instance (None without ids); the hard set leaves them out either way
    check_sample_ids(queue_ids, query_ids, queue.shape[0], query.shape[0])
    same = (
        same_instance_mask(queue_ids, query_ids, queue.shape[0], query.shape[0], query.device)
        if exclude_same_instance else None
    )
    # the class oracle: rows of the query's class are kept out of its hard set only
    oracle = same_class_mask(queue_labels, query_labels, queue.shape[0], query.shape[0],
                             query.device)
    do_mix = mix and num_mix + num_query_mix > 0 and queue.shape[0] >= num_hard
    dtype = torch.promote_types(query.dtype, torch.float32)
    with torch.autocast(device_type=query.device.type, enabled=False):
        q = query.to(dtype)
        n = queue.detach().to(dtype)
        pos, real = scaled_parts(q, key.to(dtype), n, temperature, same)
        if not do_mix:
            real_max = row_max(real)
            return fused_infonce(pos, real, real_max), proxy_accuracy(pos, real_max), False
        queue_sq = None if queue_norms is None else queue_norms.to(dtype).square()
        select, masked = real, same is not None
        if oracle is not None:  # -inf where ineligible: own sample (with ids) or own class
            own = same_instance_mask(queue_ids, query_ids, queue.shape[0], query.shape[0],
                                     query.device)
            select = real.detach().masked_fill(oracle if own is None else oracle | own,
                                               float("-inf"))
            masked = True
        coef = _mochi_coefficients(
            q, n, select, num_hard, num_mix, num_query_mix,
            queue_ids=queue_ids, query_ids=query_ids, generator=generator,
            logit_scale=1.0 / temperature, masked=masked, queue_sq=queue_sq,
        )
        # the row maximum: the selection's largest eligible logit, unless rows ineligible for
        # the hard set (the query's own sample, its class under the oracle) are still in the
        # denominator
        own_unmasked = (queue_ids is not None and same is None) or oracle is not None
        real_max = real.detach().amax(dim=1) if own_unmasked else coef.top
        q_dot_qbar = (q * q.detach()).sum(dim=1, keepdim=True)
        loss = fused_infonce(pos, real, real_max, coef=coef, q_dot_qbar=q_dot_qbar)
        return loss, proxy_accuracy(pos, real_max), True


class MoCHiLoss(nn.Module):
    """MoCo InfoNCE over ``[key, queue, synthetic]`` logits, target 0 (a queue loss).

    Logits per query: ``[q·k, q·n_1 .. q·n_K, q·h_1 .. q·h_s, q·h'_1 .. q·h'_s'] / τ``. With
    ``num_mix = num_query_mix = 0`` (or mixing disabled) this is exactly
    :func:`contrastmix.losses.moco.moco_infonce`. :func:`mochi_loss` is the function form.

    No mixing (docs/methods.md §1 step 5) when ``mix=False`` is passed to :meth:`forward`
    (the method's warm-up epochs: the schedule is the method's), or while the queue holds
    fewer than ``num_hard`` real keys. Pass only the *filled* queue rows (e.g.
    ``MemoryBank.features``). Once mixing is on, ``N`` is used as is
    (:func:`~contrastmix.mixing.mochi.mochi_negatives` itself clamps ``N`` to the queue size).

    Args:
        temperature: τ > 0 (0.2 in MoCo v2 / MoCHi).
        num_hard: ``N``, hard-set size per query (1024).
        num_mix: ``s``, type-1 synthetic negatives per query (1024).
        num_query_mix: ``s'``, type-2 synthetic negatives per query (128).
        exclude_same_instance: Also leave queue rows of the query's own sample (given by
            ``queue_ids``/``query_ids``) out of the InfoNCE denominator, as
            :func:`~contrastmix.losses.moco.moco_infonce` does when given ids (the default;
            ``False`` keeps them as negatives, as the original MoCo does). They are always
            kept out of the hard set. Without ids nothing is excluded.

    Attributes:
        last_mixed: Whether the last call appended synthetic negatives.
        last_proxy: Share of queries of the last call whose key logit beats every *real*
            negative logit (the MoCo proxy task), a 0-d tensor on the inputs' device (no host
            synchronisation); ``None`` before the first call.
        last_proxy_accuracy: The same as a float (NaN before the first call); reading it
            synchronises with the device.

    Inputs must be L2-normalised: non-normalised ``query``/``key``/``queue`` raise
    ``ValueError`` (``check_unit_norm``), as do NaN, wrong shapes and bad hyper-parameters.
    The NaN and unit-norm checks are value checks (:mod:`contrastmix._validation`): they run
    on CPU tensors and are skipped on accelerators unless debug checks are on, so a training
    step on a GPU never waits for the device. Shape and hyper-parameter checks always run.
    """

    def __init__(
        self,
        temperature: float = 0.2,
        num_hard: int = 1024,
        num_mix: int = 1024,
        num_query_mix: int = 128,
        exclude_same_instance: bool = True,
    ) -> None:
        super().__init__()
        check_positive("temperature", temperature)
        _check_hparams(num_hard, num_mix, num_query_mix)
        self.temperature = float(temperature)
        self.num_hard = num_hard
        self.num_mix = num_mix
        self.num_query_mix = num_query_mix
        self.exclude_same_instance = bool(exclude_same_instance)
        self.last_mixed = False
        self.last_proxy: Tensor | None = None

    @property
    def last_proxy_accuracy(self) -> float:
        """Proxy-task accuracy of the last call (a float; syncs once when read on a GPU)."""
        return float("nan") if self.last_proxy is None else float(self.last_proxy)

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, num_hard={self.num_hard}, "
            f"num_mix={self.num_mix}, num_query_mix={self.num_query_mix}, "
            f"exclude_same_instance={self.exclude_same_instance}"
        )

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        queue: Tensor,
        *,
        queue_ids: Tensor | None = None,
        query_ids: Tensor | None = None,
        generator: torch.Generator | None = None,
        mix: bool = True,
        queue_labels: Tensor | None = None,
        query_labels: Tensor | None = None,
    ) -> Tensor:
        """Compute the loss.

        Args:
            query: ``[B, d]`` L2-normalised queries (with gradient).
            key: ``[B, d]`` L2-normalised momentum keys (no gradient flows into them).
            queue: ``[K, d]`` L2-normalised filled queue rows (no gradient flows into them).
            queue_ids: Optional ``[K]`` sample ids of the queue rows.
            query_ids: Optional ``[B]`` sample ids of the queries: queue rows of the same
                sample are kept out of that query's hard set (and out of the InfoNCE
                denominator when ``exclude_same_instance``).
            generator: Optional ``torch.Generator`` for the mixing draws.
            mix: Append synthetic negatives (False: plain MoCo, e.g. the method's warm-up).
            queue_labels: Optional ``[K]`` class labels of the queue rows (``-1``: unknown).
            query_labels: Optional ``[B]`` class labels of the queries: given with
                ``queue_labels``, rows of the query's class are left out of its hard set
                (the class oracle, a diagnostic; they stay in the InfoNCE denominator).

        Returns:
            Scalar mean loss (fp32 or wider).
        """
        loss, self.last_proxy, self.last_mixed = _mochi(
            query, key, queue, self.temperature, self.num_hard, self.num_mix,
            self.num_query_mix, self.exclude_same_instance, queue_ids, query_ids, generator,
            bool(mix), queue_labels, query_labels,
        )
        return loss
