"""Multimodal models: a CLIP-style two-tower model and the M3CoL n-modality classifier.

- :class:`TwoTower` (Radford et al., "Learning Transferable Visual Models From Natural Language
  Supervision", ICML 2021): an image (or signal) encoder and a text encoder, each followed by a
  linear projection to a shared space, returning L2-normalised embeddings for
  :func:`contrastmix.losses.clip.clip_loss` / :class:`contrastmix.losses.m2mix.M2MixLoss`.
- :class:`M3CoLModel` (Kumar, Singhal et al., "M3CoL: Harnessing Shared Relations via Multimodal
  Mixup Contrastive Learning for Multimodal Classification", 2024; docs/methods.md §6): one encoder
  and projection per modality, a fusion head (MLP on the concatenation) and one unimodal head per
  modality; inference uses the fusion head. Train with
  :class:`contrastmix.losses.m3col.M3CoLObjective`.

Encoders are passed in (any ``nn.Module`` mapping a batch to ``[B, feature_dim]``, e.g.
``SmallCNN2d``, ``SignalCNN1d`` or :class:`contrastmix.models.text.MiniLMTextEncoder`), so the
models work with any backbone.

:func:`build_two_tower` and :func:`build_fusion` build the networks the multimodal recipes train
from explicit arguments (the image encoder from the recipe's ``model`` section);
:func:`build_multimodal` builds either from a description ``{"architecture": KIND, "arguments":
{...}}``, the one a run leaves in ``multimodal.json`` (:data:`SPEC_FILE`), so that training and
evaluation build the same network without the training code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from contrastmix._numerics import unit_rows
from contrastmix._validation import check_same_length
from contrastmix.models.build import build_backbone

__all__ = [
    "TwoTower", "M3CoLModel", "M3CoLOutput", "MLPHead", "MODALITIES", "SIGNAL_BACKBONES",
    "ARCHITECTURES", "SPEC_FILE", "build_two_tower", "build_fusion", "build_multimodal",
    "image_encoder_of",
]

#: Modalities :func:`build_fusion` can encode (``image``: the recipe's backbone; ``signal``: a
#: 1-D CNN; ``text``: MiniLM).
MODALITIES: tuple[str, ...] = ("image", "signal", "text")
#: Backbones of the ``signal`` modality.
SIGNAL_BACKBONES: tuple[str, ...] = ("cnn1d",)
#: Kinds of multimodal network, the ``architecture`` of a description.
ARCHITECTURES: tuple[str, ...] = ("two_tower", "fusion")
#: The file of a run directory that describes its multimodal network.
SPEC_FILE = "multimodal.json"


def _feature_dim(name: str, encoder: nn.Module, given: int | None) -> int:
    dim = given if given is not None else getattr(encoder, "output_dim", None)
    if dim is None:
        raise ValueError(
            f"cannot infer the output width of encoder `{name}`: pass it explicitly "
            "(the encoder has no `output_dim` attribute)"
        )
    if int(dim) <= 0:
        raise ValueError(f"the feature dimension of `{name}` must be > 0, got {dim}")
    return int(dim)


def _features(name: str, encoder: nn.Module, x: Any, dim: int) -> Tensor:
    z = encoder(x)
    if not isinstance(z, Tensor) or z.ndim != 2 or z.shape[1] != dim:
        shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
        raise ValueError(f"encoder `{name}` must return [B, {dim}] features, got {shape}")
    return z


class TwoTower(nn.Module):
    """CLIP-style two-tower model returning L2-normalised embeddings.

    Args:
        image_encoder: Maps images (or signals) to ``[B, image_dim]`` features.
        text_encoder: Maps a list of captions (or token tensors) to ``[B, text_dim]`` features,
            e.g. :class:`~contrastmix.models.text.MiniLMTextEncoder` (frozen MiniLM plus its own
            trainable projection).
        image_dim: Width of the image features (default: ``image_encoder.output_dim``).
        proj_dim: Width of the shared embedding space.
        text_dim: Width of the text features (default: ``text_encoder.output_dim``).
        project_text: Add a linear text projection; ``None`` adds one only when
            ``text_dim != proj_dim`` (a :class:`MiniLMTextEncoder` built with
            ``proj_dim=proj_dim`` already is the trainable projection).
        temperature: Initial CLIP temperature exposed as :attr:`temperature`.
        learn_temperature: Make the temperature a parameter (log-parametrised, clamped to
            ``>= 0.01`` as in CLIP).

    Shapes:
        ``images [B, ...]``, ``texts`` (``B`` captions) -> ``([B, proj_dim], [B, proj_dim])``.
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        text_encoder: nn.Module,
        image_dim: int | None = None,
        proj_dim: int = 128,
        *,
        text_dim: int | None = None,
        project_text: bool | None = None,
        temperature: float = 0.07,
        learn_temperature: bool = False,
    ) -> None:
        super().__init__()
        if proj_dim <= 0:
            raise ValueError(f"`proj_dim` must be > 0, got {proj_dim}")
        if not temperature > 0:
            raise ValueError(f"`temperature` must be > 0, got {temperature}")
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.image_dim = _feature_dim("image_encoder", image_encoder, image_dim)
        self.text_dim = _feature_dim("text_encoder", text_encoder, text_dim)
        self.proj_dim = int(proj_dim)
        self.image_projection = nn.Linear(self.image_dim, self.proj_dim)
        if project_text is None:
            project_text = self.text_dim != self.proj_dim
        if not project_text and self.text_dim != self.proj_dim:
            raise ValueError(
                f"`project_text=False` needs text_dim == proj_dim, got {self.text_dim} and "
                f"{self.proj_dim}"
            )
        self.text_projection: nn.Module = (
            nn.Linear(self.text_dim, self.proj_dim) if project_text else nn.Identity()
        )
        self.learn_temperature = bool(learn_temperature)
        log_t = torch.tensor(math.log(temperature))
        if self.learn_temperature:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t)
        self.output_dim = self.proj_dim

    @property
    def temperature(self) -> Tensor:
        """Current temperature (0-d tensor; clamped to ``>= 0.01``)."""
        return self.log_temperature.exp().clamp(min=0.01)

    def encode_image(self, images: Any) -> Tensor:
        """``[B, proj_dim]`` L2-normalised image embeddings."""
        z = _features("image_encoder", self.image_encoder, images, self.image_dim)
        return unit_rows(self.image_projection(z), dim=-1)

    def encode_text(self, texts: Any) -> Tensor:
        """``[B, proj_dim]`` L2-normalised text embeddings."""
        z = _features("text_encoder", self.text_encoder, texts, self.text_dim)
        return unit_rows(self.text_projection(z), dim=-1)

    def forward(self, images: Any, texts: Any) -> tuple[Tensor, Tensor]:
        """Embed a batch of image/text pairs.

        Returns:
            ``(image_emb [B, proj_dim], text_emb [B, proj_dim])``, both unit norm.

        Raises:
            ValueError: if the two towers return different batch sizes.
        """
        img = self.encode_image(images)
        txt = self.encode_text(texts)
        check_same_length(images=img, texts=txt)
        return img, txt

    @torch.no_grad()
    def zero_shot_logits(self, images: Any, class_texts: Any) -> Tensor:
        """Cosine similarity of every image to every class prompt, ``[B, C]``.

        ``argmax`` over the last dimension is the zero-shot prediction.
        """
        return self.encode_image(images) @ self.encode_text(class_texts).T


class MLPHead(nn.Module):
    """Classifier ``Linear -> ReLU -> Dropout -> Linear -> ReLU -> Linear`` (M3CoL's heads).

    Shapes:
        ``[B, in_dim]`` -> ``[B, num_classes]``.
    """

    def __init__(
        self, in_dim: int, hidden_dim: int, num_classes: int, dropout: float = 0.1
    ) -> None:
        super().__init__()
        for name, v in (("in_dim", in_dim), ("hidden_dim", hidden_dim)):
            if v <= 0:
                raise ValueError(f"`{name}` must be > 0, got {v}")
        if num_classes < 2:
            raise ValueError(f"`num_classes` must be >= 2, got {num_classes}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must lie in [0, 1), got {dropout}")
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Class logits."""
        return self.net(x)


class M3CoLOutput(NamedTuple):
    """Outputs of :class:`M3CoLModel`.

    Attributes:
        fusion_logits: ``[B, C]`` logits of the fusion head (used at inference).
        unimodal_logits: ``[B, C]`` logits per modality.
        embeddings: ``[B, proj_dim]`` projected (unnormalised) features per modality, the input
            of the contrastive term.
    """

    fusion_logits: Tensor
    unimodal_logits: dict[str, Tensor]
    embeddings: dict[str, Tensor]


class M3CoLModel(nn.Module):
    """M3CoL classifier: per-modality encoders, projections, fusion and unimodal heads.

    ``z_m = proj_m(enc_m(x_m))``; fusion head on ``concat_m z_m``; unimodal head ``m`` on ``z_m``;
    the contrastive loss uses ``z_m`` (all modalities share ``proj_dim``).

    Args:
        encoders: ``{modality: encoder}``; the order fixes the concatenation order and the
            cyclic pairs of :class:`~contrastmix.losses.m3col.M3CoLLoss`.
        feature_dims: ``{modality: encoder output width}``; missing entries are read from the
            encoder's ``output_dim`` attribute.
        num_classes: Number of classes ``C``.
        proj_dim: Width of the shared per-modality embedding.
        hidden_dim: Hidden width of the heads.
        dropout: Dropout of the heads.

    Shapes:
        ``inputs``: ``{modality: batch}`` with ``B`` samples each -> :class:`M3CoLOutput`.
    """

    def __init__(
        self,
        encoders: Mapping[str, nn.Module],
        feature_dims: Mapping[str, int] | None = None,
        num_classes: int = 10,
        proj_dim: int = 128,
        *,
        hidden_dim: int = 256,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if len(encoders) < 2:
            raise ValueError(f"`encoders` must hold at least 2 modalities, got {len(encoders)}")
        if proj_dim <= 0:
            raise ValueError(f"`proj_dim` must be > 0, got {proj_dim}")
        dims = dict(feature_dims or {})
        unknown = sorted(set(dims) - set(encoders))
        if unknown:
            raise ValueError(f"`feature_dims` names unknown modalities {unknown}")
        self.modalities = list(encoders)
        self.feature_dims = {m: _feature_dim(m, encoders[m], dims.get(m)) for m in self.modalities}
        self.encoders = nn.ModuleDict(dict(encoders))
        self.projections = nn.ModuleDict(
            {m: nn.Linear(self.feature_dims[m], proj_dim) for m in self.modalities}
        )
        self.unimodal_heads = nn.ModuleDict(
            {m: MLPHead(proj_dim, hidden_dim, num_classes, dropout) for m in self.modalities}
        )
        fused_dim = proj_dim * len(self.modalities)
        self.fusion_head = MLPHead(fused_dim, hidden_dim, num_classes, dropout)
        self.num_classes = int(num_classes)
        self.proj_dim = int(proj_dim)

    def embed(self, inputs: Mapping[str, Any]) -> dict[str, Tensor]:
        """``{modality: [B, proj_dim]}`` projected features."""
        missing = [m for m in self.modalities if m not in inputs]
        if missing:
            raise ValueError(f"`inputs` lacks modalities {missing} (expected {self.modalities})")
        z = {}
        for m in self.modalities:
            feats = _features(m, self.encoders[m], inputs[m], self.feature_dims[m])
            z[m] = self.projections[m](feats)
        check_same_length(**{f"inputs[{m}]": v for m, v in z.items()})
        return z

    def forward(self, inputs: Mapping[str, Any]) -> M3CoLOutput:
        """Fusion logits, unimodal logits and per-modality embeddings of a batch."""
        z = self.embed(inputs)
        fusion = self.fusion_head(torch.cat([z[m] for m in self.modalities], dim=-1))
        uni = {m: self.unimodal_heads[m](z[m]) for m in self.modalities}
        return M3CoLOutput(fusion, uni, z)

    @torch.no_grad()
    def predict(self, inputs: Mapping[str, Any]) -> Tensor:
        """Fusion-head logits ``[B, C]`` (inference path)."""
        z = self.embed(inputs)
        return self.fusion_head(torch.cat([z[m] for m in self.modalities], dim=-1))


# ---------------------------------------------------------------------------------- builders


def _image_encoder(model_cfg: Mapping[str, Any], in_channels: int) -> nn.Module:
    return build_backbone(model_cfg["backbone"], in_channels=int(in_channels),
                          width=int(model_cfg["width"]),
                          cifar_stem=bool(model_cfg.get("cifar_stem", False)))


def _text_encoder(frozen: bool, cache: bool) -> nn.Module:
    from contrastmix.models.text import MiniLMTextEncoder

    # proj_dim=None: the 384-d sentence embedding; the model adds its own trainable projection.
    return MiniLMTextEncoder(frozen=bool(frozen), proj_dim=None, cache=bool(cache))


def build_two_tower(
    model_cfg: Mapping[str, Any],
    *,
    in_channels: int,
    proj_dim: int,
    temperature: float,
    learn_temperature: bool = False,
    text_frozen: bool = True,
    text_cache: bool = True,
) -> TwoTower:
    """A CLIP two-tower model: the recipe's image backbone and MiniLM, each projected.

    Args:
        model_cfg: The recipe's ``model`` section (``backbone``, ``width``, ``cifar_stem``): the
            image encoder.
        in_channels: Image channels.
        proj_dim: Width of the shared embedding space.
        temperature: CLIP τ (initial value when learnt).
        learn_temperature: Learn τ.
        text_frozen: Keep MiniLM frozen (it is then not part of the ``state_dict``).
        text_cache: Cache the frozen sentence embeddings per caption.

    Returns:
        A :class:`TwoTower` with a linear projection on each tower.
    """
    return TwoTower(
        _image_encoder(model_cfg, in_channels), _text_encoder(text_frozen, text_cache),
        proj_dim=int(proj_dim), project_text=True, temperature=float(temperature),
        learn_temperature=bool(learn_temperature),
    )


def build_fusion(
    model_cfg: Mapping[str, Any],
    *,
    modalities: Sequence[str],
    in_channels: int,
    num_classes: int,
    proj_dim: int,
    hidden_dim: int,
    dropout: float,
    signal_backbone: str = "cnn1d",
    signal_width: int = 16,
    signal_channels: int = 1,
    text_frozen: bool = True,
    text_cache: bool = True,
) -> M3CoLModel:
    """A fusion classifier (:class:`M3CoLModel`) over ``modalities``.

    Args:
        model_cfg: The recipe's ``model`` section: the ``image`` encoder.
        modalities: Distinct names from :data:`MODALITIES`, in concatenation order; must
            include ``image``.
        in_channels: Image channels.
        num_classes: Number of classes.
        proj_dim: Width of each modality's projection ``z_m``.
        hidden_dim: Hidden width of the heads.
        dropout: Dropout of the heads, in ``[0, 1)``.
        signal_backbone: Encoder of ``signal`` (one of :data:`SIGNAL_BACKBONES`).
        signal_width: Its width.
        signal_channels: Channels of the signal.
        text_frozen: Keep MiniLM frozen.
        text_cache: Cache the frozen sentence embeddings per caption.

    Raises:
        ValueError: unknown or repeated modalities, no ``image``, an unknown signal backbone.
    """

    mods = list(modalities)
    if any(m not in MODALITIES for m in mods) or len(set(mods)) != len(mods):
        raise ValueError(f"`modalities` must be distinct names from {list(MODALITIES)}, got {mods}")
    if "image" not in mods:
        raise ValueError(f"`modalities` must include 'image' (the run's backbone), got {mods}")
    if signal_backbone not in SIGNAL_BACKBONES:
        raise ValueError(f"`signal_backbone` must be one of {list(SIGNAL_BACKBONES)}, got "
                         f"{signal_backbone!r}")
    encoders: dict[str, nn.Module] = {}
    for m in mods:
        if m == "image":
            encoders[m] = _image_encoder(model_cfg, in_channels)
        elif m == "signal":
            encoders[m] = build_backbone(signal_backbone, in_channels=int(signal_channels),
                                         width=int(signal_width))
        else:
            encoders[m] = _text_encoder(text_frozen, text_cache)
    return M3CoLModel(encoders, num_classes=int(num_classes), proj_dim=int(proj_dim),
                      hidden_dim=int(hidden_dim), dropout=float(dropout))


_BUILDERS: dict[str, Any] = {"two_tower": build_two_tower, "fusion": build_fusion}


def build_multimodal(spec: Mapping[str, Any], model_cfg: Mapping[str, Any]) -> nn.Module:
    """Build the network a description names.

    Args:
        spec: ``{"architecture": "two_tower" | "fusion", "arguments": {...}}``: the keyword
            arguments of :func:`build_two_tower` / :func:`build_fusion` (other keys ignored).
        model_cfg: The recipe's ``model`` section (the image encoder).

    Raises:
        ValueError: an unknown architecture, or arguments its builder rejects.
    """
    kind = spec.get("architecture")
    if kind not in _BUILDERS:
        raise ValueError(f"unknown multimodal architecture {kind!r}; known: {list(ARCHITECTURES)}")
    args = spec.get("arguments")
    if not isinstance(args, Mapping):
        raise ValueError("a multimodal description needs an `arguments` mapping")
    try:
        return _BUILDERS[kind](model_cfg, **dict(args))
    except TypeError as e:  # a missing or unknown argument
        raise ValueError(f"bad arguments for architecture {kind!r}: {e}") from None


def image_encoder_of(model: nn.Module) -> tuple[nn.Module, str]:
    """The image encoder of a multimodal model and its ``state_dict`` key prefix.

    Returns:
        ``(model.image_encoder, "image_encoder.")`` for a :class:`TwoTower`,
        ``(model.encoders["image"], "encoders.image.")`` for an :class:`M3CoLModel`.
    """
    if isinstance(model, TwoTower):
        return model.image_encoder, "image_encoder."
    if isinstance(model, M3CoLModel) and "image" in model.encoders:
        return model.encoders["image"], "encoders.image."
    raise ValueError(f"`model` must be a TwoTower or an M3CoLModel with an image encoder, got "
                     f"{type(model).__name__}")
