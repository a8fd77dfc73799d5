"""Build backbones and projector heads by name (used by recipes; any ``nn.Module`` works too)."""

from __future__ import annotations

import torch.nn as nn

from contrastmix._validation import check_positive

__all__ = ["build_backbone", "build_projector", "BACKBONES"]

BACKBONES = ("cnn1d", "cnn2d", "resnet18", "resnet50", "mlp")


def build_backbone(
    name: str, *, in_channels: int = 1, width: int = 32, cifar_stem: bool = False,
    in_features: int | None = None,
) -> nn.Module:
    """Return a backbone with an ``output_dim`` attribute.

    Args:
        name: One of ``cnn1d``, ``cnn2d``, ``resnet18``, ``resnet50``, ``mlp``.
        in_channels: Input channels.
        width: Base width of the small CNNs / hidden width of the MLP.
        cifar_stem: CIFAR stem for ResNets.
        in_features: Input features of the tabular MLP.

    Raises:
        ValueError: an unknown ``name``, or ``width`` / ``in_channels`` < 1.
    """
    check_positive("width", width)
    check_positive("in_channels", in_channels)
    if name == "cnn1d":
        from contrastmix.models.cnn1d import SignalCNN1d

        return SignalCNN1d(in_channels, width)
    if name == "cnn2d":
        from contrastmix.models.cnn2d import SmallCNN2d

        return SmallCNN2d(in_channels, width)
    if name in ("resnet18", "resnet50"):
        from contrastmix.models.resnet import ResNetBackbone

        return ResNetBackbone(name, cifar_stem=cifar_stem, in_channels=in_channels)
    if name == "mlp":
        from contrastmix.models.mlp import MLPEncoder

        # tabular data: DataBundle.in_channels is the number of input features
        return MLPEncoder(in_features or in_channels, hidden=(width, width))
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")


def build_projector(
    input_dim: int, hidden_dim: int = 512, output_dim: int = 128, num_layers: int = 2,
    batch_norm: bool = False,
) -> nn.Module:
    """lightly's ``MoCoProjectionHead`` (MoCo v2 MLP head)."""
    from lightly.models.modules.heads import MoCoProjectionHead

    return MoCoProjectionHead(input_dim, hidden_dim, output_dim, num_layers, batch_norm)
