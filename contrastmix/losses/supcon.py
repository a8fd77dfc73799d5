"""Supervised contrastive loss (SupCon), the "L_out" form.

Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020, eq. 2. See docs/methods.md §2 (the
reduction target of SupReMix).

``features [B, V, d]`` (V views of B samples, L2-normalised) are flattened view-major into
``N = V * B`` anchors ``z`` (row ``v * B + b`` is view ``v`` of sample ``b``). For anchor ``i``
with positives ``P(i) = {p != i : y_p = y_i}``:

    L_i = -1/|P(i)| * sum_{p in P(i)} log( exp(z_i.z_p / tau) / sum_{a != i} exp(z_i.z_a / tau) )

``L`` is the mean of ``L_i`` over anchors with at least one positive. Positives are *exact*
label equality, which makes the loss usable for classification labels and for regression
labels alike; for "SupCon on binned labels" the caller bins continuous targets first (e.g.
``torch.bucketize(y, edges)``). With ``labels=None`` the only positives are the other views of
the same sample (SimCLR / NT-Xent).

Anchors without any positive (e.g. ``B = 1`` and ``V = 1``, or a unique label with one view) are
excluded from the mean; if no anchor is left the loss is ``0`` with a zero (finite) gradient
that is still connected to ``features``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contrastmix._validation import check_positive
from contrastmix.losses._contracts import flatten_views

__all__ = ["supcon_loss", "SupConLoss", "flatten_views"]

# Finite stand-in for log(0) in masked log-sum-exps: exp(_NEG - x) underflows to exactly 0 for
# any realistic logit x, and a fully masked row stays finite (no NaN in the backward pass).
_NEG = -1e9


def supcon_loss(features: Tensor, labels: Tensor | None = None, temperature: float = 0.1) -> Tensor:
    """SupCon "out" loss (Khosla et al. 2020, eq. 2).

    Args:
        features: ``[B, V, d]`` L2-normalised embeddings (V views per sample).
        labels: ``[B]`` class or regression labels (positives = exact equality), or ``None``
            for the self-supervised case (positives = other views of the same sample).
        temperature: tau > 0.

    Returns:
        Scalar loss in fp32 (fp64 if ``features`` is fp64).

    Raises:
        ValueError: ``features`` not ``[B, V, d]`` floating / non-finite / not unit norm,
            ``labels`` not ``[B]`` real numbers
            (:func:`~contrastmix.losses._contracts.check_view_inputs`), or ``temperature <= 0``.
    """
    check_positive("temperature", temperature)
    z, y = flatten_views(features, labels, labels_required=False, unit_norm=True)
    n = z.shape[0]
    if y is None:
        y = torch.arange(features.shape[0], device=z.device).repeat(features.shape[1])
    dtype = torch.promote_types(z.dtype, torch.float32)
    with torch.autocast(device_type=z.device.type, enabled=False):
        zf = z.to(dtype)
        logits = zf @ zf.T / temperature
        eye = torch.eye(n, dtype=torch.bool, device=z.device)
        pos = (y[:, None] == y[None, :]) & ~eye
        lse = torch.logsumexp(logits.masked_fill(eye, _NEG), dim=1)
        n_pos = pos.sum(dim=1)
        pos_mean = (logits * pos).sum(dim=1) / n_pos.clamp_min(1)
        per_anchor = lse - pos_mean
        valid = n_pos > 0
        return torch.where(valid, per_anchor, 0.0).sum() / valid.sum().clamp_min(1)


class SupConLoss(nn.Module):
    """Module form of :func:`supcon_loss` (a view loss: ``(features, labels)``).

    Args:
        temperature: tau (0.1 by default; Khosla et al. use 0.1 / 0.07).

    Shapes:
        ``forward(features [B, V, d], labels [B] | None) -> scalar``.
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        check_positive("temperature", temperature)
        self.temperature = float(temperature)

    def forward(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
        return supcon_loss(features, labels, self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
