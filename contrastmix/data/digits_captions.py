"""digits-captions: scikit-learn's 8x8 digits paired with short captions, offline.

A tiny image-text set for CLIP-style training (:func:`contrastmix.losses.clip.clip_loss`,
:class:`contrastmix.losses.m2mix.M2MixLoss`), image<->text retrieval and zero-shot
classification with :func:`class_prompts`. Each image gets one caption drawn (seeded) from
several templates of its class, e.g. "a handwritten seven", "the digit 7". Images and the
train/test split are those of :func:`contrastmix.data.digits.load_digits_images`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor
from torch.utils.data import Dataset

from contrastmix.data.digits import load_digits_images

__all__ = [
    "NUMBER_WORDS",
    "CAPTION_TEMPLATES",
    "ZERO_SHOT_TEMPLATE",
    "caption_for",
    "class_prompts",
    "load_digits_captions",
    "DigitsCaptions",
]

NUMBER_WORDS: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
)  # fmt: skip

#: Caption templates; ``{word}`` is the number word, ``{digit}`` the numeral.
CAPTION_TEMPLATES: tuple[str, ...] = (
    "a handwritten {word}",
    "the digit {digit}",
    "a photo of the number {word}",
    "an image of a handwritten {digit}",
    "the number {word}, written by hand",
    "a small scan of the digit {word}",
)

#: Default prompt for zero-shot classification.
ZERO_SHOT_TEMPLATE = "a handwritten {word}"

_SPLIT_CODE = {"train": 0, "test": 1}


def caption_for(label: int, template: str) -> str:
    """Fill ``template`` for class ``label`` (0..9)."""
    if not 0 <= int(label) <= 9:
        raise ValueError(f"`label` must lie in 0..9, got {label}")
    try:
        return template.format(word=NUMBER_WORDS[int(label)], digit=int(label))
    except (KeyError, IndexError) as err:
        raise ValueError(
            f"`template` {template!r} may only use the fields {{word}} and {{digit}}"
        ) from err


def class_prompts(template: str = ZERO_SHOT_TEMPLATE) -> list[str]:
    """One prompt per class, in class order, for zero-shot classification.

    Args:
        template: Prompt with ``{word}`` and/or ``{digit}`` fields.

    Returns:
        10 strings, e.g. ``["a handwritten zero", ..., "a handwritten nine"]``.
    """
    return [caption_for(c, template) for c in range(10)]


def load_digits_captions(
    split: str = "train",
    seed: int = 0,
    test_fraction: float = 0.25,
    *,
    templates: Sequence[str] = CAPTION_TEMPLATES,
) -> tuple[Tensor, list[str], Tensor]:
    """Digits images with one seeded caption each.

    Args:
        split: ``"train"`` or ``"test"``.
        seed: Seed of the stratified split and of the caption-template draws.
        test_fraction: Share of samples in the test split.
        templates: Caption templates drawn uniformly per image.

    Returns:
        ``(images [N, 1, 8, 8] float32 in [0, 1], captions: list of N str, labels [N] int64)``.
    """
    if split not in _SPLIT_CODE:
        raise ValueError(f"`split` must be 'train' or 'test', got {split!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"`test_fraction` must lie in (0, 1), got {test_fraction}")
    templates = list(templates)
    if not templates:
        raise ValueError("`templates` must hold at least one template")
    for t in templates:
        caption_for(0, t)
    images, labels = load_digits_images(split, seed=seed, test_fraction=test_fraction)
    rng = np.random.default_rng([int(seed), _SPLIT_CODE[split]])
    which = rng.integers(0, len(templates), size=len(labels))
    captions = [caption_for(int(y), templates[int(k)]) for y, k in zip(labels, which, strict=True)]
    return images, captions, labels


class DigitsCaptions(Dataset):
    """Map-style dataset of :func:`load_digits_captions`: items ``(image, caption, label)``.

    ``DataLoader``'s default collate turns the captions of a batch into a tuple of strings, which
    :class:`contrastmix.models.text.MiniLMTextEncoder` accepts as is.
    """

    def __init__(
        self,
        split: str = "train",
        seed: int = 0,
        test_fraction: float = 0.25,
        *,
        templates: Sequence[str] = CAPTION_TEMPLATES,
    ) -> None:
        self.images, self.captions, self.labels = load_digits_captions(
            split, seed, test_fraction, templates=templates
        )

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> tuple[Tensor, str, int]:
        return self.images[i], self.captions[i], int(self.labels[i])
