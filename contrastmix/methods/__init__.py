"""Recipe schemas of the method families beyond MoCo/MoCHi.

Each submodule defines structured-config dataclasses for its ``method`` section and registers
them with :func:`contrastmix.config.register_method` at import. Imported by
:mod:`contrastmix.config`, so every registered method validates.
"""

from contrastmix.methods import multimodal, regression, supervised  # noqa: F401
