"""contrastmix: contrastive and self-supervised representation learning with mixup.

Subpackages: :mod:`contrastmix.losses`, :mod:`contrastmix.mixing`, :mod:`contrastmix.banks`,
:mod:`contrastmix.models`, :mod:`contrastmix.data` (the core, free of Lightning) and
:mod:`contrastmix.train` (Lightning modules run by the recipes). Evaluation lives in the
top-level :mod:`eval` package.
"""

__version__ = "0.1.0"
