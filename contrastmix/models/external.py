"""Backbones from timm and torchvision: ``model.backbone: timm:<name>`` / ``torchvision:<name>``.

The module returned is the library's own model (nothing wraps it), so a run's ``backbone.pt``
loads with ``strict=True`` straight into

* ``timm.create_model(name, num_classes=0)`` (timm's classifier-free model), or
* ``torchvision.models.get_model(name, weights=None)`` with its last classifier layer replaced by
  ``nn.Identity()``: ``fc`` of the ResNets, RegNets, ShuffleNets; ``classifier`` of DenseNets;
  the last ``nn.Linear`` of a ``classifier`` / ``heads`` sequence (``classifier[-1]`` of VGG,
  ConvNeXt, MobileNet, EfficientNet; ``heads.head`` of ViT); ``head`` of Swin.

The model carries an ``output_dim`` attribute (an int, not in its ``state_dict``). Nothing is
ever downloaded: timm builds with ``pretrained=False``, torchvision with ``weights=None``; start
from trained weights with ``model.weights: PATH`` (see
:func:`contrastmix.models.build.build_backbone`).

Stem changes (they change the shape of ``conv1.weight``, so loading ``backbone.pt`` into the
library model needs the same change; :func:`contrastmix.load_backbone` makes it itself):

* ``cifar_stem=True`` on a ResNet-style model (a ``conv1`` ``nn.Conv2d`` and a ``maxpool``):
  ``conv1`` becomes a 3x3 stride-1 convolution and ``maxpool`` ``nn.Identity()``. Other models
  refuse it (set ``model.cifar_stem=false``).
* ``in_channels != 3``: timm adapts its stem (``in_chans``); a torchvision ResNet-style model
  gets a ``conv1`` with ``in_channels`` inputs; other torchvision models refuse it.

``model.width`` does not apply (the library's name fixes the architecture).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

import torch.nn as nn

__all__ = ["build_timm", "build_torchvision", "apply_cifar_stem"]

#: Head attributes of torchvision classification models, in the order they are looked for.
_HEADS = ("fc", "classifier", "heads", "head")


def _did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def _resnet_stem(net: nn.Module) -> nn.Conv2d | None:
    conv = getattr(net, "conv1", None)
    return conv if isinstance(conv, nn.Conv2d) and hasattr(net, "maxpool") else None


def _new_conv1(old: nn.Conv2d, in_channels: int, cifar_stem: bool) -> nn.Conv2d:
    conv = nn.Conv2d(
        in_channels, old.out_channels,
        kernel_size=3 if cifar_stem else old.kernel_size,  # type: ignore[arg-type]
        stride=1 if cifar_stem else old.stride,  # type: ignore[arg-type]
        padding=1 if cifar_stem else old.padding,  # type: ignore[arg-type]
        bias=old.bias is not None,
    )
    # the ResNets' own initialisation of their convolutions
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def apply_cifar_stem(net: nn.Module, in_channels: int | None = None) -> nn.Module:
    """Give a ResNet-style model (``conv1`` + ``maxpool``) the CIFAR stem, in place.

    ``conv1`` becomes a 3x3 stride-1 convolution with ``in_channels`` inputs (default: as
    before) and ``maxpool`` an ``nn.Identity()``. Apply it to the library model before loading
    the ``backbone.pt`` of a run with ``model.cifar_stem: true``.

    Raises:
        ValueError: the model has no ``conv1`` convolution and ``maxpool``.
    """
    conv = _resnet_stem(net)
    if conv is None:
        raise ValueError(f"{type(net).__name__} has no ResNet stem (conv1 + maxpool)")
    net.conv1 = _new_conv1(conv, conv.in_channels if in_channels is None else in_channels, True)
    net.maxpool = nn.Identity()
    return net


def _check_cifar_stem(net: nn.Module, what: str) -> None:
    if _resnet_stem(net) is None:
        raise ValueError(
            f"model.cifar_stem=true applies to ResNet-style models (conv1 + maxpool), not "
            f"{what}; set model.cifar_stem=false")


def build_timm(name: str, *, in_channels: int, cifar_stem: bool) -> nn.Module:
    """``timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_channels)``.

    Returns:
        The timm model, mapping ``[B, in_channels, H, W]`` to ``[B, num_features]``, with
        ``output_dim = num_features``.

    Raises:
        ValueError: timm is not installed, an unknown model name, or ``cifar_stem`` on a model
            without a ResNet stem.
    """
    try:
        import timm
    except ImportError:
        raise ValueError(
            f"model.backbone 'timm:{name}' needs timm: pip install 'contrastmix[timm]'"
        ) from None
    # is_model knows the local registry only: names like hf-hub:... (downloads) are unknown
    if not name or not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r}{_did_you_mean(name, timm.list_models())}")
    net = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_channels)
    if cifar_stem:
        _check_cifar_stem(net, f"timm model {name!r}")
        apply_cifar_stem(net)
    net.output_dim = int(net.num_features)  # type: ignore[assignment,arg-type]
    return net


def _drop_head(net: nn.Module, name: str) -> int:
    """Replace the model's last classifier layer by ``nn.Identity()``; its input width."""
    for attr in _HEADS:
        head = getattr(net, attr, None)
        if isinstance(head, nn.Linear):
            setattr(net, attr, nn.Identity())
            return int(head.in_features)
        if isinstance(head, nn.Sequential) and len(head) and isinstance(head[-1], nn.Linear):
            last = head[-1]
            head[-1] = nn.Identity()  # keeps the key of every other layer of the head
            return int(last.in_features)
        if head is not None:
            break
    raise ValueError(
        f"torchvision model {name!r} has no classifier ending in a linear layer (fc, "
        "classifier, heads or head) to remove; use another model or a timm one")


def build_torchvision(name: str, *, in_channels: int, cifar_stem: bool) -> nn.Module:
    """``torchvision.models.get_model(name, weights=None)`` without its last classifier layer.

    Returns:
        The torchvision model, mapping ``[B, in_channels, H, W]`` to ``[B, output_dim]``, with
        ``output_dim`` the input width of the removed layer.

    Raises:
        ValueError: an unknown classification model, a model with auxiliary classifiers
            (GoogLeNet, Inception v3) or without a linear classifier (SqueezeNet),
            ``in_channels != 3`` or ``cifar_stem`` on a model without a ResNet stem.
    """
    import torchvision.models as tvm

    known = tvm.list_models(module=tvm)  # classification models only
    if name not in known:
        raise ValueError(
            f"unknown torchvision model {name!r}{_did_you_mean(name, known)}")
    if name in ("googlenet", "inception_v3"):
        raise ValueError(
            f"torchvision model {name!r} has auxiliary classifiers (its training forward is "
            "not a feature tensor); use another model or a timm one")
    net = tvm.get_model(name, weights=None)
    stem = _resnet_stem(net)
    if cifar_stem:
        _check_cifar_stem(net, f"torchvision model {name!r}")
    if in_channels != 3 and stem is None:
        raise ValueError(
            f"torchvision model {name!r} takes 3-channel images, the data has {in_channels} "
            "channel(s) (only ResNet-style models get a new conv1; timm models adapt any stem)")
    if stem is not None and (cifar_stem or in_channels != stem.in_channels):
        net.conv1 = _new_conv1(stem, in_channels, cifar_stem)
        if cifar_stem:
            net.maxpool = nn.Identity()
    net.output_dim = _drop_head(net, name)
    return net


#: ``prefix -> builder(name, *, in_channels, cifar_stem)`` for ``model.backbone: PREFIX:NAME``.
FAMILIES: dict[str, Callable[..., nn.Module]] = {
    "timm": build_timm,
    "torchvision": build_torchvision,
}
