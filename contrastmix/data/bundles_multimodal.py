"""Dataset builders for the multimodal recipes: ``digits-captions`` and ``digits-tri``.

Both bundles have ``task="multimodal"``. Their datasets yield ``(inputs, label, index)`` with
``inputs`` a dict ``{modality: value}`` (``image [1, 8, 8]``, ``signal [1, 40]``, ``text`` str);
:func:`collate_multimodal` stacks tensors and keeps captions as a list of strings. ``pretrain``
and ``train`` are the train split (raw inputs; the multimodal methods,
:mod:`contrastmix.methods._multimodal`, apply ``batch_augment`` to images and
``extras["signal_augment"]`` to signals on the device, with seeded generators), ``test``
is the test split. ``extras`` holds what
:func:`contrastmix.eval.multimodal.probe_multimodal_run` needs: ``modalities``,
``class_prompts``, ``prompt_template``, ``class_names`` (and ``signal_channels`` /
``signal_augment`` for digits-tri).

``data.options`` (free keys, validated here):

- ``test_fraction`` (0.25): share of the digits in the test split;
- ``prompt_template`` (``"a handwritten {word}"``): zero-shot class prompt;
- ``augment`` (true): on-device augmentation of images (``data.image_aug``) and signals
  (``data.signal_aug``) during training;
- ``mnist1d_seed`` (42, digits-tri only): generator seed of the MNIST-1D signals;
- ``caption_noise`` (0.0, digits-tri only): share of the captions (train and test, drawn per
  sample with ``data.seed``) replaced by a class-free caption from :data:`NEUTRAL_CAPTIONS`, so
  that the text modality is only partially informative;
- ``image_noise`` (0.0, digits-tri only): standard deviation of a fixed Gaussian noise added
  to every image once at load time (train and test, seeded), a weaker image modality;
- ``train_per_class`` (null, digits-tri only): keep this many training samples per class
  (seeded), a low-label regime; null keeps the whole train split;
- ``instance_shared`` (0.0, digits-tri only): when > 0, the image, signal and caption of each
  sample share a per-instance code (:func:`contrastmix.data.digits_tri.add_instance_code`:
  patterns of this size relative to each modality's spread, tag words in the caption), so that
  the modalities share instance-level information and not only the class.

``data.seed`` is the split / caption / pairing seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from contrastmix.data.bundle import (
    DataBundle,
    dataset_options,
    image_augment,
    signal_augment,
)
from contrastmix.errors import DatasetError

__all__ = [
    "MultimodalDataset",
    "collate_multimodal",
    "build_digits_captions",
    "build_digits_tri",
    "NEUTRAL_CAPTIONS",
    "corrupt_captions",
    "subsample_per_class",
]

#: Class-free captions used by ``data.options.caption_noise``.
NEUTRAL_CAPTIONS: tuple[str, ...] = (
    "a handwritten digit",
    "a small scan of a number",
    "an image of a handwritten character",
    "a grey picture of a digit",
)

Batch = tuple[dict[str, Tensor | list[str]], Tensor, Tensor]


class MultimodalDataset(Dataset):
    """In-memory paired modalities: items ``({modality: value_i}, label_i, offset + i)``.

    Args:
        modalities: ``{name: [N, ...] tensor or N strings}``; every entry has ``N`` rows.
        labels: ``[N]`` int64 class labels.
        offset: Added to the returned index.

    Raises:
        ValueError: if a modality has a different number of rows than ``labels``.
    """

    def __init__(
        self, modalities: Mapping[str, Tensor | Sequence[str]], labels: Tensor, offset: int = 0
    ) -> None:
        if not modalities:
            raise ValueError("`modalities` must hold at least one modality")
        for name, v in modalities.items():
            if len(v) != len(labels):
                raise ValueError(
                    f"`modalities[{name!r}]` has {len(v)} rows but `labels` has {len(labels)}"
                )
        self.modalities = {k: (v if isinstance(v, Tensor) else list(v)) for k, v in
                           modalities.items()}
        self.labels = labels
        self.offset = int(offset)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[dict[str, Any], int, int]:
        return {k: v[i] for k, v in self.modalities.items()}, int(self.labels[i]), self.offset + i


def collate_multimodal(items: Sequence[tuple[Mapping[str, Any], int, int]]) -> Batch:
    """Collate :class:`MultimodalDataset` items.

    Returns:
        ``({modality: [B, ...] tensor or list of B str}, labels [B] int64, index [B] int64)``.
    """
    if not items:
        raise ValueError("`items` must not be empty")
    keys = list(items[0][0])
    inputs: dict[str, Tensor | list[str]] = {}
    for k in keys:
        vals = [it[0][k] for it in items]
        inputs[k] = torch.stack(vals) if isinstance(vals[0], Tensor) else [str(v) for v in vals]
    labels = torch.tensor([int(it[1]) for it in items], dtype=torch.long)
    index = torch.tensor([int(it[2]) for it in items], dtype=torch.long)
    return inputs, labels, index


def corrupt_captions(
    captions: Sequence[str], noise: float, generator: torch.Generator
) -> tuple[list[str], Tensor]:
    """Replace a random share ``noise`` of ``captions`` by class-free captions.

    Args:
        captions: ``N`` captions.
        noise: Probability in ``[0, 1]`` that a caption is replaced (independently per sample).
        generator: Random generator (draw order: the ``N`` Bernoulli draws, then the ``N``
            neutral-caption choices).

    Returns:
        ``(captions, replaced [N] bool)``.
    """
    if not 0.0 <= float(noise) <= 1.0:
        raise ValueError(f"`noise` must lie in [0, 1], got {noise}")
    n = len(captions)
    replaced = torch.rand(n, generator=generator) < float(noise)
    which = torch.randint(0, len(NEUTRAL_CAPTIONS), (n,), generator=generator)
    out = [NEUTRAL_CAPTIONS[int(w)] if bool(r) else c
           for c, r, w in zip(captions, replaced, which, strict=True)]
    return out, replaced


def subsample_per_class(labels: Tensor, per_class: int, generator: torch.Generator) -> Tensor:
    """Sorted indices of ``per_class`` random samples of every class (all if fewer).

    Args:
        labels: ``[N]`` int64 classes.
        per_class: Samples kept per class, ``>= 1``.
        generator: Random generator.

    Returns:
        ``[M]`` int64 indices into ``labels``.
    """
    if int(per_class) < 1:
        raise ValueError(f"`per_class` must be >= 1, got {per_class}")
    keep = []
    for c in torch.unique(labels).tolist():
        rows = torch.nonzero(labels == c).reshape(-1)
        perm = torch.randperm(len(rows), generator=generator)
        keep.append(rows[perm[: int(per_class)]])
    return torch.sort(torch.cat(keep)).values


_COMMON = {"test_fraction": 0.25, "prompt_template": None, "augment": True}


def _prompts(template: str | None) -> tuple[str, list[str]]:
    from contrastmix.data.digits_captions import ZERO_SHOT_TEMPLATE, class_prompts

    t = template or ZERO_SHOT_TEMPLATE
    try:
        return t, class_prompts(t)
    except ValueError as err:
        raise DatasetError(f"data.options.prompt_template: {err}") from None


def build_digits_captions(cfg: Any) -> DataBundle:
    """``digits-captions``: 8x8 digits images paired with one seeded caption each."""
    from contrastmix.data.digits_captions import (
        CAPTION_TEMPLATES,
        NUMBER_WORDS,
        load_digits_captions,
    )

    opt = dataset_options(cfg, _COMMON)
    tf = float(opt["test_fraction"])
    xtr, ctr, ytr = load_digits_captions("train", seed=cfg.seed, test_fraction=tf)
    xte, cte, yte = load_digits_captions("test", seed=cfg.seed, test_fraction=tf)
    template, prompts = _prompts(opt["prompt_template"])
    train = MultimodalDataset({"image": xtr, "text": ctr}, ytr)
    test = MultimodalDataset({"image": xte, "text": cte}, yte)
    return DataBundle(
        pretrain=train, train=train, test=test,
        batch_augment=image_augment(cfg) if opt["augment"] else None,
        in_channels=1, num_classes=10, task="multimodal", collate_fn=collate_multimodal,
        extras={
            "modalities": ("image", "text"),
            "class_prompts": prompts,
            "prompt_template": template,
            "class_names": list(NUMBER_WORDS),
            "caption_templates": list(CAPTION_TEMPLATES),
            "augment": bool(opt["augment"]),
        },
    )


def build_digits_tri(cfg: Any) -> DataBundle:
    """``digits-tri``: image, MNIST-1D signal and caption of the same class per sample."""
    from contrastmix.data.digits_captions import CAPTION_TEMPLATES, NUMBER_WORDS
    from contrastmix.data.digits_tri import (
        DIGITS_TRI_MODALITIES,
        add_instance_code,
        load_digits_tri,
    )

    opt = dataset_options(
        cfg, {**_COMMON, "mnist1d_seed": 42, "caption_noise": 0.0, "image_noise": 0.0,
              "train_per_class": None, "instance_shared": 0.0}
    )
    tf = float(opt["test_fraction"])
    ms = int(opt["mnist1d_seed"])
    noise = opt["caption_noise"]
    if not isinstance(noise, (int, float)) or not 0.0 <= float(noise) <= 1.0:
        raise DatasetError(f"data.options.caption_noise must lie in [0, 1], got {noise!r}")
    img_noise = opt["image_noise"]
    if not isinstance(img_noise, (int, float)) or float(img_noise) < 0:
        raise DatasetError(f"data.options.image_noise must be >= 0, got {img_noise!r}")
    per_class = opt["train_per_class"]
    if per_class is not None and (not isinstance(per_class, int) or per_class < 1):
        raise DatasetError(
            f"data.options.train_per_class must be a positive integer or null, got {per_class!r}"
        )
    shared = opt["instance_shared"]
    if (isinstance(shared, bool) or not isinstance(shared, (int, float))
            or not 0.0 <= float(shared) < float("inf")):
        raise DatasetError(
            f"data.options.instance_shared must be a finite number >= 0, got {shared!r}")
    tr = load_digits_tri("train", seed=cfg.seed, test_fraction=tf, mnist1d_seed=ms)
    te = load_digits_tri("test", seed=cfg.seed, test_fraction=tf, mnist1d_seed=ms)
    template, prompts = _prompts(opt["prompt_template"])

    def ds(d: Any, split: int) -> MultimodalDataset:
        caps, images, signals, labels = list(d.captions), d.images, d.signals, d.labels
        if split == 0 and per_class is not None:
            g = torch.Generator().manual_seed(int(cfg.seed) * 1000 + 17)
            keep = subsample_per_class(labels, per_class, g)
            caps = [caps[int(i)] for i in keep]
            images, signals, labels = images[keep], signals[keep], labels[keep]
        if float(noise) > 0:
            g = torch.Generator().manual_seed(int(cfg.seed) * 1000 + 29 + split)
            caps, _ = corrupt_captions(caps, float(noise), g)
        if float(img_noise) > 0:
            g = torch.Generator().manual_seed(int(cfg.seed) * 1000 + 43 + split)
            images = images + float(img_noise) * torch.randn(images.shape, generator=g)
        if float(shared) > 0:
            images, signals, caps = add_instance_code(
                images, signals, caps, float(shared), projection_seed=int(cfg.seed) * 1000 + 61,
                code_seed=int(cfg.seed) * 1000 + 67 + split)
        return MultimodalDataset({"image": images, "signal": signals, "text": caps}, labels)

    train = ds(tr, 0)
    return DataBundle(
        pretrain=train, train=train, test=ds(te, 1),
        batch_augment=image_augment(cfg) if opt["augment"] else None,
        in_channels=1, num_classes=10, task="multimodal", collate_fn=collate_multimodal,
        extras={
            "modalities": DIGITS_TRI_MODALITIES,
            "signal_channels": int(tr.signals.shape[1]),
            "signal_augment": signal_augment(cfg) if opt["augment"] else None,
            "class_prompts": prompts,
            "prompt_template": template,
            "class_names": list(NUMBER_WORDS),
            "caption_templates": list(CAPTION_TEMPLATES),
            "augment": bool(opt["augment"]),
            "caption_noise": float(noise),
            "neutral_captions": list(NEUTRAL_CAPTIONS),
            "train_per_class": per_class,
            "image_noise": float(img_noise),
            "instance_shared": float(shared),
        },
    )
