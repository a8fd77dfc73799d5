"""contrastmix: contrastive and self-supervised representation learning with mixup.

Subpackages: :mod:`contrastmix.losses`, :mod:`contrastmix.mixing`, :mod:`contrastmix.banks`,
:mod:`contrastmix.models`, :mod:`contrastmix.data` (the core, free of Lightning) and
:mod:`contrastmix.train` (Lightning modules run by the recipes). Evaluation lives in the
top-level :mod:`eval` package.

``contrastmix.load_backbone(RUN_DIR)`` returns a finished run's trained backbone (an
``nn.Module`` in eval mode); it is imported on first use, so ``import contrastmix`` stays light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_backbone"]


def __getattr__(name: str) -> Any:
    if name == "load_backbone":
        from contrastmix.runs import load_backbone

        return load_backbone
    raise AttributeError(f"module 'contrastmix' has no attribute {name!r}")

