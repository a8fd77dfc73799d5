"""Where generated datasets are cached (``$CONTRASTMIX_CACHE`` or ``~/.cache/contrastmix``)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """Return (and create) the cache directory for generated data."""
    root = os.environ.get("CONTRASTMIX_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "contrastmix"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
