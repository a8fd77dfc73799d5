"""Build backbones and projector heads by name (used by recipes; any ``nn.Module`` works too)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch.nn as nn

from contrastmix._state import load_strict
from contrastmix._validation import check_positive
from contrastmix.models.cnn1d import SignalCNN1d
from contrastmix.models.cnn2d import SmallCNN2d
from contrastmix.models.external import FAMILIES
from contrastmix.models.mlp import MLPEncoder
from contrastmix.models.resnet import ResNetBackbone

__all__ = ["build_backbone", "build_projector", "register_backbone", "backbones", "BACKBONES"]

#: ``builder(*, in_channels, width, cifar_stem) -> nn.Module`` (with an ``output_dim``).
BackboneBuilder = Callable[..., nn.Module]


def _cnn1d(*, in_channels: int, width: int, cifar_stem: bool) -> nn.Module:
    return SignalCNN1d(in_channels, width)


def _cnn2d(*, in_channels: int, width: int, cifar_stem: bool) -> nn.Module:
    return SmallCNN2d(in_channels, width)


def _resnet(depth: str) -> BackboneBuilder:
    def build(*, in_channels: int, width: int, cifar_stem: bool) -> nn.Module:
        return ResNetBackbone(depth, cifar_stem=cifar_stem, in_channels=in_channels)

    return build


def _mlp(*, in_channels: int, width: int, cifar_stem: bool) -> nn.Module:
    # tabular data: DataBundle.in_channels is the number of input features
    return MLPEncoder(in_channels, hidden=(width, width))


#: The backbones a recipe's ``model.backbone`` may name, built-in and registered.
BACKBONES: dict[str, BackboneBuilder] = {
    "cnn1d": _cnn1d,
    "cnn2d": _cnn2d,
    "resnet18": _resnet("resnet18"),
    "resnet50": _resnet("resnet50"),
    "mlp": _mlp,
}


def register_backbone(name: str, builder: BackboneBuilder) -> None:
    """Make ``model.backbone: NAME`` build ``builder(in_channels=..., width=...,
    cifar_stem=...)``, an ``nn.Module`` mapping ``[B, ...]`` to ``[B, output_dim]`` with an
    ``output_dim`` attribute (from user code loaded with ``contrastmix pretrain --import``)."""
    if not name or not callable(builder):
        raise ValueError(f"register_backbone needs a name and a callable, got {name!r}")
    BACKBONES[name] = builder


def backbones() -> list[str]:
    """Names of the registered backbones, then the library families (``timm:<name>``,
    ``torchvision:<name>``)."""
    return sorted(BACKBONES) + [f"{f}:<name>" for f in FAMILIES]


def build_backbone(
    name: str, *, in_channels: int = 1, width: int = 32, cifar_stem: bool = False,
    in_features: int | None = None, weights: str | Path | None = None,
) -> nn.Module:
    """Return a backbone with an ``output_dim`` attribute.

    Args:
        name: A key of :data:`BACKBONES` (``cnn1d``, ``cnn2d``, ``resnet18``, ``resnet50``,
            ``mlp``, or one registered with :func:`register_backbone`), or ``timm:<model>`` /
            ``torchvision:<model>``: the library's own model without its classifier and never
            pretrained (:mod:`contrastmix.models.external`).
        in_channels: Input channels.
        width: Base width of the small CNNs / hidden width of the MLP (not used by timm and
            torchvision models).
        cifar_stem: CIFAR stem for ResNets (3x3 stride-1 ``conv1``, no max-pool).
        in_features: Input features of the tabular MLP (default ``in_channels``).
        weights: A ``state_dict`` file to start from, loaded weights-only and strictly (for a
            library model: the ``state_dict`` of that model without its classifier).

    Raises:
        ValueError: an unknown ``name`` or library model, ``width`` / ``in_channels`` < 1, or
            a builder that returns a module without ``output_dim``.
        CheckpointError: ``weights`` cannot be read or does not fit the backbone.
    """
    check_positive("width", width)
    check_positive("in_channels", in_channels)
    family, _, model = name.partition(":")
    if name in BACKBONES:
        channels = in_features if (name == "mlp" and in_features) else in_channels
        net = BACKBONES[name](in_channels=channels, width=width, cifar_stem=cifar_stem)
    elif model and family in FAMILIES:
        net = FAMILIES[family](model, in_channels=in_channels, cifar_stem=cifar_stem)
    else:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(backbones())}")
    if not isinstance(getattr(net, "output_dim", None), int):
        raise ValueError(f"backbone {name!r} has no integer `output_dim` attribute")
    if weights is not None:
        load_strict(net, weights, f"backbone {name!r} (model.weights)")
    return net


def build_projector(
    input_dim: int, hidden_dim: int = 512, output_dim: int = 128, num_layers: int = 2,
    batch_norm: bool = False,
) -> nn.Module:
    """lightly's ``MoCoProjectionHead`` (MoCo v2 MLP head)."""
    from lightly.models.modules.heads import MoCoProjectionHead

    return MoCoProjectionHead(input_dim, hidden_dim, output_dim, num_layers, batch_norm)
