"""User-facing errors: the CLI prints their message as one line and exits non-zero."""

from __future__ import annotations

__all__ = [
    "ContrastmixError", "RecipeError", "DatasetError", "RunDirError", "CheckpointError",
    "EmbeddingError", "RunInterrupted",
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


class RunInterrupted(Exception):
    """Training stopped on SIGINT (Ctrl-C) or SIGTERM; not a user error.

    The CLI prints one line saying how to resume and exits with ``128 + signum`` (130 for
    SIGINT, 143 for SIGTERM), so that ``pretrain && probe`` stops there.

    Attributes:
        signum: The signal that stopped the run.
        run_dir: The run directory.
        step: The global step of the checkpoint the run resumes from, or ``None`` when there
            is none (a fresh run stopped before it saved one: its directory is left empty).
        finished: The signal came after the last step: the run directory is complete.
    """

    def __init__(self, signum: int, run_dir: str, step: int | None, finished: bool = False
                 ) -> None:
        self.signum, self.run_dir, self.step, self.finished = signum, run_dir, step, finished
        import signal

        name = signal.Signals(signum).name
        if finished:
            what = f"{name} after training finished (step {step}); the run directory is complete"
        elif step is None:
            what = f"{name} before a checkpoint was saved; nothing to resume, start it again"
        else:
            what = f"{name} at step {step}; checkpoints/last.ckpt resumes it"
        super().__init__(f"interrupted by {what}")

    @property
    def exit_code(self) -> int:
        """The shell's status for death by this signal: ``128 + signum``."""
        return 128 + self.signum
