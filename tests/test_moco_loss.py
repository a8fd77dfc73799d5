"""MoCo InfoNCE against a hand computation; no gradient into keys or queue."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from contrastmix.losses.moco import moco_infonce, moco_logits


def test_moco_loss_matches_hand_computation() -> None:
    q = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=1)
    k = F.normalize(torch.tensor([[1.0, 1.0], [0.0, 1.0]]), dim=1)
    queue = F.normalize(torch.tensor([[-1.0, 0.0], [1.0, -1.0], [0.0, 1.0]]), dim=1)
    t = 0.5
    # by hand, query 0: pos = cos45, negs = -1, cos45, 0
    s = math.sqrt(0.5)
    l0 = -s / t + math.log(math.exp(s / t) + math.exp(-1 / t) + math.exp(s / t) + math.exp(0))
    # query 1: pos = 1, negs = 0, -cos45, 1
    l1 = -1 / t + math.log(math.exp(1 / t) + 1 + math.exp(-s / t) + math.exp(1 / t))
    loss = moco_infonce(q, k, queue, temperature=t)
    assert loss.item() == pytest.approx((l0 + l1) / 2, rel=1e-6)


def test_gradient_only_reaches_the_query() -> None:
    q = F.normalize(torch.randn(4, 8), dim=1).requires_grad_(True)
    k = F.normalize(torch.randn(4, 8), dim=1).requires_grad_(True)
    queue = F.normalize(torch.randn(16, 8), dim=1).requires_grad_(True)
    moco_infonce(q, k, queue).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert k.grad is None and queue.grad is None


def test_empty_queue_gives_zero_loss_and_fp32_under_autocast() -> None:
    q = F.normalize(torch.randn(4, 8), dim=1)
    loss = moco_infonce(q, q, torch.empty(0, 8))
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        queue = F.normalize(torch.randn(5, 8), dim=1).bfloat16()  # unit rows: value-checked
        logits = moco_logits(q.bfloat16(), q.bfloat16(), queue, 0.2)
    assert logits.dtype == torch.float32


@pytest.mark.parametrize(
    ("q", "k", "queue", "needle"),
    [
        (torch.randn(4, 8), torch.randn(4, 7), torch.randn(3, 8), "`key`"),
        (torch.randn(4, 8), torch.randn(4, 8), torch.randn(3, 5), "`queue`"),
        (torch.randn(4, 8), torch.randn(3, 8), torch.randn(3, 8), "length mismatch"),
        (torch.full((4, 8), float("nan")), torch.randn(4, 8), torch.randn(3, 8), "`query`"),
    ],
)
def test_bad_input(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        moco_infonce(q, k, queue)


def test_same_instance_rows_leave_the_negatives() -> None:
    """With ids, the query's own older keys are masked: equal to a per-query queue without them."""
    torch.manual_seed(3)
    q = F.normalize(torch.randn(4, 8), dim=1).requires_grad_()
    k = F.normalize(torch.randn(4, 8), dim=1)
    queue = F.normalize(torch.randn(10, 8), dim=1)
    queue_ids = torch.tensor([0, 1, 2, 0, 7, 8, 9, 3, 3, 5])
    query_ids = torch.tensor([0, 3, 4, 9])
    loss = moco_infonce(q, k, queue, 0.2, queue_ids=queue_ids, query_ids=query_ids)
    ref = torch.stack([
        moco_infonce(q[b : b + 1], k[b : b + 1], queue[queue_ids != query_ids[b]], 0.2)
        for b in range(4)
    ]).mean()
    torch.testing.assert_close(loss, ref)
    loss.backward()
    assert torch.isfinite(q.grad).all()
    # every row is the query's own sample: only the positive is left, loss 0, finite gradient
    q2 = q.detach().clone().requires_grad_()
    loss2 = moco_infonce(q2, k, queue[:1].expand(4, 8).contiguous(), 0.2,
                         queue_ids=torch.zeros(4, dtype=torch.long),
                         query_ids=torch.zeros(4, dtype=torch.long))
    loss2.backward()
    assert loss2.item() == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(q2.grad).all()


def test_ids_must_come_together() -> None:
    q = F.normalize(torch.randn(2, 4), dim=1)
    with pytest.raises(ValueError, match="together"):
        moco_infonce(q, q, q, 0.2, queue_ids=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="query_ids"):
        moco_infonce(q, q, q, 0.2, queue_ids=torch.tensor([0, 1]), query_ids=torch.tensor([0]))


def test_moco_step_reads_no_tensor_value() -> None:
    """Forward and backward of MoCo InfoNCE (with ids) read no tensor value back to the host,
    under the accelerator rule (value checks off; see contrastmix._validation)."""
    from contrastmix import _validation
    from tests._host_reads import forbid_host_reads

    q = F.normalize(torch.randn(4, 8), dim=1).requires_grad_()
    k = F.normalize(torch.randn(4, 8), dim=1)
    queue = F.normalize(torch.randn(10, 8), dim=1)
    ids = {"queue_ids": torch.randint(0, 5, (10,)), "query_ids": torch.arange(4)}
    before = _validation.debug_checks()
    _validation.set_debug_checks(False)
    try:
        with forbid_host_reads():
            loss = moco_infonce(q, k, queue, 0.2, **ids)
            loss.backward()
            empty = moco_infonce(q, k, queue[:0], 0.2)
    finally:
        _validation.set_debug_checks(before)
    assert torch.isfinite(q.grad).all() and empty == 0
