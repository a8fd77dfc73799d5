"""Recipe schemas of the multimodal methods and the model each one trains.

Methods (``method.name``):

- ``clip`` — CLIP's symmetric image-text InfoNCE (Radford et al., ICML 2021; METHODS.md §5)
  on a :class:`~contrastmix.models.multimodal.TwoTower` (image CNN + MiniLM text tower).
- ``m2mix`` — CLIP plus geodesic multimodal mixup (Oh et al., "Geodesic Multi-Modal Mixup for
  Robust Fine-Tuning", NeurIPS 2023; METHODS.md §5), same model.
- ``m3col`` — M3CoL (Kumar, Singhal et al., 2024; METHODS.md §6): per-modality encoders, fusion
  and unimodal heads, ``CE(fusion) + sum_m CE(unimodal_m) + 0.1 * L_contrast``.
- ``concat`` — the same fusion model and heads trained without the contrastive term (M3CoL's
  baseline): ``CE(fusion) + sum_m CE(unimodal_m)``.

:func:`build_multimodal_model` turns a recipe into the ``nn.Module`` (no Lightning here), so the
training module and the probe (:mod:`contrastmix.eval.multimodal`) build exactly the same network.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from contrastmix.config import register_method

__all__ = [
    "ClipConfig",
    "M2MixConfig",
    "FusionConfig",
    "ConcatConfig",
    "M3CoLConfig",
    "TWO_TOWER_METHODS",
    "FUSION_METHODS",
    "MODALITIES",
    "build_multimodal_model",
    "image_encoder_of",
]

#: Methods trained on image-caption pairs with a two-tower model.
TWO_TOWER_METHODS: tuple[str, ...] = ("clip", "m2mix")
#: Methods trained as multimodal classifiers (fusion head + unimodal heads).
FUSION_METHODS: tuple[str, ...] = ("m3col", "concat")
#: Modalities a fusion recipe may name.
MODALITIES: tuple[str, ...] = ("image", "signal", "text")


@dataclass
class ClipConfig:
    """CLIP (METHODS.md §5 base loss) on a two-tower model.

    Attributes:
        proj_dim: Width of the shared embedding space (linear projection of each tower).
        temperature: CLIP τ (initial value when learnt).
        learn_temperature: Learn τ (log-parametrised, clamped to >= 0.01 as in CLIP).
        text_frozen: Keep MiniLM frozen (only its projection is trained; embeddings cached).
        text_cache: Cache the frozen MiniLM sentence embeddings per caption.
        zero_shot_temperature: τ of the zero-shot probabilities ``softmax(cos / τ)`` used for
            calibration; ``None`` = the model's (trained) CLIP temperature.
        gather_distributed: Use every rank's negatives under DDP.
    """

    name: str = "clip"
    proj_dim: int = 64
    temperature: float = 0.07
    learn_temperature: bool = False
    text_frozen: bool = True
    text_cache: bool = True
    zero_shot_temperature: float | None = None
    gather_distributed: bool = True


@dataclass
class M2MixConfig(ClipConfig):
    """CLIP plus the scheduled m2-mix term (:class:`contrastmix.losses.m2mix.M2MixLoss`).

    Attributes:
        mix_temperature: τ_m of the mixed terms (0.07).
        alpha: ``lam ~ Beta(alpha, alpha)`` (0.5).
        weight: w_m of the m2-mix term (paper range [0.001, 0.05]).
        schedule: Multiply the mixed terms by ``1 / (epoch + 1)``.
        detach_mix: Detach the mixtures.
        reduction: ``"sum"`` or ``"mean"`` of the two anchor terms.
        vmix_weight: Weight of the optional image-only (V-mix) term.
        lmix_weight: Weight of the optional text-only (L-mix) term.
    """

    name: str = "m2mix"
    mix_temperature: float = 0.07
    alpha: float = 0.5
    weight: float = 0.01
    schedule: bool = True
    detach_mix: bool = False
    reduction: str = "sum"
    vmix_weight: float = 0.0
    lmix_weight: float = 0.0


@dataclass
class FusionConfig:
    """A multimodal classifier: encoders, projections, fusion head and unimodal heads.

    Attributes:
        modalities: Modalities used, in concatenation order (must include ``image``, whose
            encoder is the recipe's ``model.backbone``).
        proj_dim: Width of each modality's projected embedding ``z_m``.
        hidden_dim: Hidden width of the MLP heads.
        dropout: Dropout of the heads.
        signal_backbone: Backbone of the ``signal`` modality (``cnn1d`` or ``mlp``).
        signal_width: Width of the signal backbone.
        text_frozen: Keep MiniLM frozen (embeddings cached; only projections are trained).
        text_cache: Cache the frozen MiniLM sentence embeddings per caption.
    """

    name: str = "concat"
    modalities: list[str] = field(default_factory=lambda: list(MODALITIES))
    proj_dim: int = 64
    hidden_dim: int = 128
    dropout: float = 0.1
    signal_backbone: str = "cnn1d"
    signal_width: int = 16
    text_frozen: bool = True
    text_cache: bool = True


@dataclass
class ConcatConfig(FusionConfig):
    """Concatenation fusion without the contrastive term (M3CoL's baseline)."""

    name: str = "concat"


@dataclass
class M3CoLConfig(FusionConfig):
    """M3CoL (:class:`contrastmix.losses.m3col.M3CoLLoss` + :class:`M3CoLObjective`).

    Attributes:
        temperature: τ of M3Co (0.1).
        beta_param: ``beta ~ Beta(beta_param, beta_param)`` (0.15).
        mix_prob: Probability that a sample is mixed (0.5).
        mixup_pct: Share of the epochs trained with M3Co before SoftCLIP (0.33).
        soft_temperature: τ of SoftCLIP (0.125).
        contrast_weight: Weight of the contrastive term (0.1).
        detach_soft_targets: Stop the gradient through SoftCLIP's targets.
        gather_distributed: Use every rank's embeddings as candidates under DDP.
    """

    name: str = "m3col"
    temperature: float = 0.1
    beta_param: float = 0.15
    mix_prob: float = 0.5
    mixup_pct: float = 0.33
    soft_temperature: float = 0.125
    contrast_weight: float = 0.1
    detach_soft_targets: bool = False
    gather_distributed: bool = True


register_method("clip", ClipConfig)
register_method("m2mix", M2MixConfig)
register_method("concat", ConcatConfig)
register_method("m3col", M3CoLConfig)


def _text_encoder(method: Mapping[str, Any]) -> nn.Module:
    from contrastmix.models.text import MiniLMTextEncoder

    # proj_dim=None: the 384-d sentence embedding; the model adds its own trainable projection.
    return MiniLMTextEncoder(
        frozen=bool(method["text_frozen"]), proj_dim=None, cache=bool(method["text_cache"])
    )


def build_multimodal_model(
    cfg: Mapping[str, Any], in_channels: int, num_classes: int, *, signal_channels: int = 1
) -> nn.Module:
    """Build the network a multimodal recipe trains.

    Args:
        cfg: The recipe (a plain dict or a ``DictConfig``) with ``method`` and ``model``.
        in_channels: Image channels (the image encoder is
            ``build_backbone(cfg.model.backbone, in_channels=..., width=cfg.model.width)``).
        num_classes: Number of classes (fusion methods).
        signal_channels: Channels of the ``signal`` modality (fusion methods).

    Returns:
        A :class:`~contrastmix.models.multimodal.TwoTower` (``clip``, ``m2mix``) or a
        :class:`~contrastmix.models.multimodal.M3CoLModel` (``m3col``, ``concat``).

    Raises:
        ValueError: unknown method or modality, or a fusion recipe without ``image``.
    """
    from contrastmix.models.build import build_backbone
    from contrastmix.models.multimodal import M3CoLModel, TwoTower

    m, mc = cfg["method"], cfg["model"]
    name = m["name"]
    image = build_backbone(
        mc["backbone"], in_channels=in_channels, width=mc["width"], cifar_stem=mc["cifar_stem"]
    )
    if name in TWO_TOWER_METHODS:
        return TwoTower(
            image,
            _text_encoder(m),
            proj_dim=int(m["proj_dim"]),
            project_text=True,
            temperature=float(m["temperature"]),
            learn_temperature=bool(m["learn_temperature"]),
        )
    if name in FUSION_METHODS:
        mods = list(m["modalities"])
        unknown = [x for x in mods if x not in MODALITIES]
        if unknown or len(set(mods)) != len(mods):
            raise ValueError(
                f"`method.modalities` must be distinct names from {list(MODALITIES)}, got {mods}"
            )
        if "image" not in mods:
            raise ValueError(
                "`method.modalities` must include 'image' (its encoder is the run's backbone)"
            )
        encoders: dict[str, nn.Module] = {}
        for mod in mods:
            if mod == "image":
                encoders[mod] = image
            elif mod == "signal":
                encoders[mod] = build_backbone(
                    m["signal_backbone"], in_channels=signal_channels, width=m["signal_width"]
                )
            else:
                encoders[mod] = _text_encoder(m)
        return M3CoLModel(
            encoders,
            num_classes=num_classes,
            proj_dim=int(m["proj_dim"]),
            hidden_dim=int(m["hidden_dim"]),
            dropout=float(m["dropout"]),
        )
    raise ValueError(
        f"`method.name` {name!r} is not a multimodal method; choose one of "
        f"{list(TWO_TOWER_METHODS + FUSION_METHODS)}"
    )


def image_encoder_of(model: nn.Module) -> tuple[nn.Module, str]:
    """The image encoder of a multimodal model and its ``state_dict`` key prefix.

    Returns:
        ``(encoder, prefix)``: ``(model.image_encoder, "image_encoder.")`` for a two-tower model,
        ``(model.encoders["image"], "encoders.image.")`` for a fusion model.
    """
    from contrastmix.models.multimodal import M3CoLModel, TwoTower

    if isinstance(model, TwoTower):
        return model.image_encoder, "image_encoder."
    if isinstance(model, M3CoLModel):
        return model.encoders["image"], "encoders.image."
    raise ValueError(f"`model` must be a TwoTower or an M3CoLModel, got {type(model).__name__}")
