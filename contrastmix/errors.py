"""User-facing errors: the CLI prints their message as one line and exits non-zero."""

from __future__ import annotations

__all__ = [
    "ContrastmixError", "RecipeError", "DatasetError", "RunDirError", "CheckpointError",
    "EmbeddingError",
]


class ContrastmixError(ValueError):
    """Base class of errors caused by the user's input (config, paths, files)."""


class RecipeError(ContrastmixError):
    """A recipe is missing, malformed, or has an unknown / mistyped key."""


class DatasetError(ContrastmixError):
    """A dataset cannot be built (unknown name, path that does not exist, ...)."""


class RunDirError(ContrastmixError):
    """A run directory lacks what a command needs (config, checkpoint, backbone)."""


class CheckpointError(ContrastmixError):
    """A checkpoint is unreadable or belongs to another method / architecture."""


class EmbeddingError(ContrastmixError):
    """A run's embeddings are unusable (NaN or inf): it diverged, or its weights are corrupt."""
