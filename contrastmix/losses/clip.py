"""Symmetric image-text InfoNCE (the CLIP loss).

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision",
ICML 2021. See docs/methods.md §5 ("Base CLIP loss")::

    S = I T^T / tau,   L_clip = 1/2 [ CE(S, diag) + CE(S^T, diag) ]

Distributed training: with ``gather_distributed=True`` (default) and an initialised process group,
each rank scores its local rows against the candidates of *all* ranks, gathered with gradient
(:func:`contrastmix.distributed.gather_with_grad`); targets are offset by ``rank * B_local``.
Each rank returns the mean over its local rows, so the mean of the per-rank losses equals the
single-process loss on the concatenated global batch. Gradient scaling: the gather's backward
all-reduces (sums) the gradients of the gathered copies, so the gradient that reaches a rank's
local embeddings is ``d(sum_r L_r)/dx_local = world_size * dL_global/dx_local``; DDP then
*averages* parameter gradients over ranks, which divides by ``world_size`` again, so the update
equals the one of single-process training on the global batch (tested in
``tests/test_clip_ddp.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastmix._numerics import unit_rows
from contrastmix._validation import check_unit_norm, value_checks
from contrastmix.distributed import gather_with_grad, is_distributed, rank
from contrastmix.losses._contracts import check_pair_inputs

__all__ = ["clip_logits", "clip_loss", "CLIPLoss"]


def check_temperature(name: str, temperature: float | Tensor) -> None:
    """Raise ``ValueError`` unless ``temperature`` is a positive finite float or 0-d tensor.

    A tensor's value is a value check (:func:`~contrastmix._validation.value_checks`: read on
    the CPU, or everywhere with debug checks on), so a learnable temperature on an accelerator
    is not read back every step; its shape is always checked.
    """
    if isinstance(temperature, Tensor):
        if temperature.numel() != 1:
            raise ValueError(
                f"`{name}` must be a scalar, got a tensor of shape {tuple(temperature.shape)}"
            )
        if not value_checks(temperature):
            return
        value = float(temperature.detach())
    elif isinstance(temperature, (int, float)):
        value = float(temperature)
    else:
        raise ValueError(f"`{name}` must be a float or a 0-d tensor, got {type(temperature)}")
    if not (value > 0 and value < float("inf")):
        raise ValueError(f"`{name}` must be > 0 and finite, got {value}")


def prepare_pair(
    image: Tensor,
    text: Tensor,
    *,
    normalize: bool,
    names: tuple[str, str] = ("image", "text"),
    checked: bool = False,
) -> tuple[Tensor, Tensor]:
    """Validate a pair of ``[B, d]`` embeddings and return them upcast to fp32 (or wider).

    Args:
        image: ``[B, d]`` embeddings of the first modality.
        text: ``[B, d]`` embeddings of the second modality.
        normalize: L2-normalise here; when False the inputs must already be unit norm.
        names: Argument names used in error messages.
        checked: The shapes were checked already
            (:func:`~contrastmix.losses._contracts.check_pair_inputs`, called before the
            caller reads ``image.device``).

    Returns:
        ``(image, text)`` in ``promote_types(dtype, float32)``, unit norm.

    Raises:
        ValueError: on different batch sizes or dimensions, NaN/inf
            (:func:`~contrastmix.losses._contracts.check_pair_inputs`), or (``normalize=False``)
            rows that are not L2-normalised.
    """
    n1, n2 = names
    if not checked:
        check_pair_inputs(image, text, names)
    if not normalize:
        # before the upcast: each tensor gets the tolerance of its own dtype (bf16 rounding
        # moves a unit row's norm by a few 1e-3, which an fp32 copy would be blamed for)
        check_unit_norm(n1, image)
        check_unit_norm(n2, text)
    dtype = torch.promote_types(torch.promote_types(image.dtype, text.dtype), torch.float32)
    image, text = image.to(dtype), text.to(dtype)
    if normalize:
        return unit_rows(image, dim=-1), unit_rows(text, dim=-1)
    return image, text


def _temperature_tensor(temperature: float | Tensor, like: Tensor) -> float | Tensor:
    if isinstance(temperature, Tensor):
        return temperature.to(dtype=like.dtype, device=like.device).reshape(())
    return float(temperature)


def clip_logits(
    image: Tensor,
    text: Tensor,
    temperature: float | Tensor = 0.07,
    *,
    gather_distributed: bool = True,
    normalize: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Image->text and text->image logits of the local rows against all (gathered) candidates.

    Args:
        image: ``[B, d]`` L2-normalised image embeddings (local rows).
        text: ``[B, d]`` L2-normalised text embeddings, row ``i`` paired with ``image[i]``.
        temperature: τ > 0, a float or a 0-d tensor (e.g. a learnable temperature).
        gather_distributed: Gather candidates from all ranks (with gradient) when a process
            group with more than one process is initialised.
        normalize: L2-normalise the inputs here instead of requiring unit norm.

    Returns:
        ``(logits_i2t [B, N], logits_t2i [B, N], targets [B])`` in fp32 (or wider), where
        ``N = world_size * B`` when gathering (else ``B``) and ``targets = rank * B + arange(B)``.
    """
    check_temperature("temperature", temperature)
    check_pair_inputs(image, text, ("image", "text"))
    with torch.autocast(device_type=image.device.type, enabled=False):
        img, txt = prepare_pair(image, text, normalize=normalize, checked=True)
        offset = 0
        if gather_distributed and is_distributed():
            img_all, txt_all = gather_with_grad(img), gather_with_grad(txt)
            offset = rank() * img.shape[0]
        else:
            img_all, txt_all = img, txt
        tau = _temperature_tensor(temperature, img)
        logits_i2t = img @ txt_all.T / tau
        logits_t2i = txt @ img_all.T / tau
        targets = torch.arange(img.shape[0], device=img.device) + offset
    return logits_i2t, logits_t2i, targets


def clip_loss(
    image: Tensor,
    text: Tensor,
    temperature: float | Tensor = 0.07,
    *,
    gather_distributed: bool = True,
    normalize: bool = False,
) -> Tensor:
    """Symmetric InfoNCE ``1/2 [CE(I T^T / τ, diag) + CE(T I^T / τ, diag)]`` (docs/methods.md §5).

    Args:
        image: ``[B, d]`` L2-normalised image embeddings.
        text: ``[B, d]`` L2-normalised text embeddings, row ``i`` paired with ``image[i]``.
        temperature: τ > 0, a float or a 0-d tensor (learnable temperature).
        gather_distributed: Score the local rows against all ranks' candidates (see module
            docstring for the gradient scaling).
        normalize: If True, L2-normalise the inputs here; if False (default) unnormalised
            embeddings raise a ``ValueError`` (a silent normalisation would hide a missing
            ``F.normalize`` in the model).

    Returns:
        Scalar loss (fp32 or wider), the mean over the local rows of both directions.

    Raises:
        ValueError: on mismatched batch sizes or dimensions, NaN, non-unit-norm inputs (unless
            ``normalize``) or a non-positive temperature.
    """
    logits_i2t, logits_t2i, targets = clip_logits(
        image, text, temperature, gather_distributed=gather_distributed, normalize=normalize
    )
    with torch.autocast(device_type=logits_i2t.device.type, enabled=False):
        return 0.5 * (F.cross_entropy(logits_i2t, targets) + F.cross_entropy(logits_t2i, targets))


class CLIPLoss(nn.Module):
    """Module form of :func:`clip_loss` (a paired loss: ``(image, text, ...)``).

    Args:
        temperature: τ > 0 (0.07).
        gather_distributed: Score the local rows against all ranks' candidates.
        normalize: L2-normalise the inputs here instead of requiring unit norm.

    Shapes:
        ``forward(image [B, d], text [B, d], *, temperature=None) -> scalar``; ``temperature``
        overrides τ for one call (e.g. a learnable 0-d tensor).
    """

    def __init__(
        self,
        temperature: float = 0.07,
        *,
        gather_distributed: bool = True,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        check_temperature("temperature", temperature)
        self.temperature = float(temperature)
        self.gather_distributed = bool(gather_distributed)
        self.normalize = bool(normalize)

    def forward(
        self, image: Tensor, text: Tensor, *, temperature: float | Tensor | None = None
    ) -> Tensor:
        tau = self.temperature if temperature is None else temperature
        return clip_loss(image, text, tau, gather_distributed=self.gather_distributed,
                         normalize=self.normalize)

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, gather_distributed={self.gather_distributed}, "
            f"normalize={self.normalize}"
        )
