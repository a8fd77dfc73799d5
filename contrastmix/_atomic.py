"""Write a file so that it is never seen half-written.

Every file a run writes goes through here: the content is written to a temporary file in the
target's own directory (same filesystem), flushed and ``fsync``-ed, then renamed over the target
with :func:`os.replace`. At every instant the target is either the previous complete file or the
new complete one; a kill, a full disk or an exception while writing leaves the old file (or none)
and removes the temporary one. (Lightning's own checkpoint writer stages the file under
``$TMPDIR`` and *moves* it: across filesystems that is a copy which truncates the target first.)
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from contrastmix._json import dumps

__all__ = ["atomic_open", "write_bytes", "write_text", "write_json", "torch_save",
           "png_bytes"]

#: Temporary files are named ``.<target name>.<pid>.<random>.tmp`` beside their target.
TMP_SUFFIX = ".tmp"


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (best effort: not every platform opens directories)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb", *,
                encoding: str | None = None, newline: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on a clean exit it replaces ``path``.

    The temporary file is created with the usual permissions (``0o666`` less the umask), so the
    final file has the permissions a plain ``open(path, "w")`` would have given it. On any
    exception (``KeyboardInterrupt`` included) the temporary file is removed and ``path`` is
    left as it was.

    Args:
        path: The file to write. Its directory must exist.
        mode: ``"wb"`` or ``"w"``.
        encoding: Text encoding (text mode; default UTF-8).
        newline: As for :func:`open` (text mode).

    Yields:
        The open temporary file.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', not {mode!r}")
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        text = mode == "w"
        with os.fdopen(fd, mode, encoding=(encoding or "utf-8") if text else None,
                       newline=newline if text else None) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns ``path``."""
    with atomic_open(path, "w", encoding=encoding) as fh:
        fh.write(text)
    return Path(path)


def write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = 2) -> Path:
    """Write ``obj`` as strict JSON to ``path`` atomically (non-finite numbers as ``null``,
    listed under ``non_finite``: see :func:`contrastmix._json.dumps`)."""
    return write_text(path, dumps(obj, indent=indent))


def torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """:func:`torch.save` ``obj`` to ``path`` atomically.

    ``torch.save`` streams into the temporary file; if it fails midway (a full disk, an object
    it cannot pickle, an interrupt) the previous ``path`` survives untouched.
    """
    import torch

    with atomic_open(path, "wb") as fh:
        torch.save(obj, fh)
    return Path(path)


def png_bytes(fig: Any, dpi: int = 100) -> bytes:
    """A Matplotlib figure rendered to PNG bytes (then written with :func:`write_bytes`)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
