"""Progress bars: on by default when the output is a terminal, off in logs and pipes.

``pretrain`` hands the decision to Lightning's progress bar (which writes to ``sys.stdout``);
feature extraction (``probe``, ``report``) wraps its loaders in ``tqdm`` (on ``sys.stderr``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TextIO, TypeVar

__all__ = ["progress_enabled", "progress"]

T = TypeVar("T")


def progress_enabled(setting: Any, stream: TextIO | None = None) -> bool:
    """Whether to show a progress bar.

    Args:
        setting: ``True`` / ``False`` force it; ``"auto"`` or ``None``: only when ``stream``
            is a terminal.
        stream: The stream the bar writes to (default ``sys.stderr``).

    Raises:
        ValueError: any other ``setting``.
    """
    if setting is True or setting is False:
        return setting
    if setting is None or setting == "auto":
        out = sys.stderr if stream is None else stream
        try:
            return bool(out.isatty())
        except (AttributeError, ValueError):  # no isatty, or a closed stream
            return False
    raise ValueError(f"progress bar setting must be true, false or 'auto', got {setting!r}")


def progress(iterable: Iterable[T], desc: str, setting: Any = "auto") -> Iterable[T]:
    """``iterable`` wrapped in a ``tqdm`` bar on ``sys.stderr`` when
    :func:`progress_enabled`, else ``iterable`` itself."""
    if not progress_enabled(setting, sys.stderr):
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True)
