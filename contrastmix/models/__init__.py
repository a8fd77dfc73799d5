"""Backbones, projector heads, the momentum encoder, text tower and multimodal models."""

from contrastmix.models.build import (
    build_backbone,
    build_projector,
    register_backbone,
)
from contrastmix.models.cnn1d import SignalCNN1d
from contrastmix.models.cnn2d import SmallCNN2d
from contrastmix.models.external import apply_cifar_stem
from contrastmix.models.mlp import MLPEncoder
from contrastmix.models.momentum import MomentumEncoder
from contrastmix.models.multimodal import M3CoLModel, TwoTower
from contrastmix.models.resnet import ResNetBackbone
from contrastmix.models.text import MiniLMTextEncoder

__all__ = [
    "build_backbone", "build_projector", "register_backbone", "apply_cifar_stem",
    "SignalCNN1d", "SmallCNN2d", "ResNetBackbone",
    "MLPEncoder", "MomentumEncoder", "MiniLMTextEncoder", "TwoTower", "M3CoLModel",
]
