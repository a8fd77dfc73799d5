"""Safe listing of a user's data folder: links never leave the data root, never loop, and
every file that is left out is counted and named.

Core code (no Lightning). :class:`SafeLister` walks a folder tree the way a dataset builder
needs it:

* a symbolic link (to a file or to a folder) is followed only when its target lies inside the
  data root (after resolving every link); links leaving the root and broken links are skipped;
* every folder is listed at most once (by its resolved path), so a link loop (``a/b -> ..``)
  or a second link to a folder already listed adds nothing; the same holds for files;
* names starting with ``.`` (``.DS_Store``, ``.ipynb_checkpoints``, ...) are ignored;
* files and folders are listed in sorted order, so indices are reproducible.

What is left out is collected in a :class:`Skipped` record, which a builder reports once
(:meth:`Skipped.summary`) after it has listed everything it needs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Skipped", "SafeLister", "IMAGE_EXTENSIONS", "check_image", "error_reason"]

#: File name endings read as images (torchvision's ImageFolder list, plus ``.gif``).
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif",
)

#: How many paths per reason a summary names.
_NAMED = 3


@dataclass
class Skipped:
    """Files and folders left out of a listing, by reason.

    Attributes:
        root: The data root; paths are named relative to it.
        reasons: ``reason -> [(path, detail)]`` in the order found.
    """

    root: Path
    reasons: dict[str, list[tuple[Path, str]]] = field(default_factory=dict)

    def add(self, reason: str, path: Path, detail: str = "") -> None:
        """Record that ``path`` was left out because of ``reason`` (``detail``: e.g. why a
        file could not be read)."""
        self.reasons.setdefault(reason, []).append((path, detail))

    def __len__(self) -> int:
        return sum(len(v) for v in self.reasons.values())

    def _name(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)

    def summary(self) -> str:
        """``"unreadable images: 2 (a.png: OSError: ..., b.jpg: ...); links leaving the data
        root: 1 (x: /elsewhere/x)"`` — counts per reason, naming the first few paths of each
        relative to the root."""
        parts = []
        for reason, items in self.reasons.items():
            named = [self._name(p) + (f": {d}" if d else "") for p, d in items[:_NAMED]]
            more = f", and {len(items) - _NAMED} more" if len(items) > _NAMED else ""
            parts.append(f"{reason}: {len(items)} ({', '.join(named)}{more})")
        return "; ".join(parts)


def check_image(path: Path) -> str:
    """Open ``path`` with PIL and verify it without decoding the pixels.

    ``Image.verify()`` reads the whole file: it finds truncated or corrupt PNGs and JPEGs and
    files that are not images, in about 0.1 ms for a small image.

    Returns:
        ``""`` when the image reads, else a one-line reason.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBomb...
        return error_reason(e)
    return ""


def error_reason(e: BaseException) -> str:
    """One line saying why a file did not read: ``"OSError: Truncated File Read"``, or
    ``"not an image (or its header is damaged)"`` for PIL's "cannot identify image file"."""
    msg = (str(e).strip().splitlines() or [""])[0]
    if "cannot identify image file" in msg:  # PIL's message repeats the path
        return "not an image (or its header is damaged)"
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


class SafeLister:
    """List files under a data root without leaving it and without visiting anything twice.

    One lister is meant for one dataset build: its memory of visited folders and files is
    shared by every :meth:`files` / :meth:`folders` call, and its :attr:`skipped` collects
    what was left out.

    Args:
        root: The data root (``data.root``); links may point anywhere inside it.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.real_root = root.resolve()
        self.skipped = Skipped(root)
        self._dirs: set[Path] = set()
        self._files: set[Path] = set()

    def inside(self, path: Path) -> Path | None:
        """The resolved ``path`` if it exists inside the root, else ``None`` (and the link is
        recorded in :attr:`skipped`)."""
        try:
            real = path.resolve(strict=True)
        except (OSError, RuntimeError):  # broken link, or a link loop (a -> b -> a)
            self.skipped.add("broken or looping links", path)
            return None
        if not real.is_relative_to(self.real_root):
            self.skipped.add("links leaving the data root", path, str(real))
            return None
        return real

    def _entries(self, folder: Path) -> list[os.DirEntry[str]]:
        try:
            with os.scandir(folder) as it:
                return sorted((e for e in it if not e.name.startswith(".")),
                              key=lambda e: e.name)
        except OSError as e:
            self.skipped.add("unreadable folders", folder, e.strerror or str(e))
            return []

    def _fenced(self, path: Path, real: Path, fence: Sequence[Path]) -> bool:
        """Whether ``real`` lies inside, or contains, a ``fence`` folder (recorded)."""
        if any(real.is_relative_to(f) or f.is_relative_to(real) for f in fence):
            self.skipped.add("links into another class or split folder", path)
            return True
        return False

    def _enter(self, folder: Path, top: Path, fence: Sequence[Path]) -> Path | None:
        """The resolved ``folder`` if it may be listed now (inside the root, neither inside
        nor around a ``fence`` folder unless it is ``top``, not listed before), else ``None``
        (recorded)."""
        real = self.inside(folder)
        if real is None or (folder != top and self._fenced(folder, real, fence)):
            return None
        if real in self._dirs:
            self.skipped.add("links to a folder already listed (a loop or a duplicate)",
                             folder)
            return None
        self._dirs.add(real)
        return real

    def folders(self, top: Path) -> tuple[list[Path], list[Path]]:
        """The sub-folders directly in ``top`` (sorted), and the files directly in it.

        Sub-folders are returned unvisited (list them with :meth:`files`); links are checked
        as in :meth:`files`.
        """
        subs: list[Path] = []
        loose: list[Path] = []
        for e in self._entries(top):
            p = Path(e.path)
            if _is_dir(e):
                if self.inside(p) is not None:
                    subs.append(p)
            elif _is_file(e):
                loose.append(p)
            elif e.is_symlink():
                self.skipped.add("broken or looping links", p)
        return subs, loose

    def files(self, top: Path,
              keep: Callable[[Path], tuple[str, str] | None] | None = None, *,
              fence: Sequence[Path] = ()) -> list[Path]:
        """Every regular file under ``top`` (recursively), sorted by path.

        Args:
            top: A folder inside the root.
            keep: ``path -> None`` to keep a file, or ``(reason, detail)`` to skip it and
                record it under ``reason`` (a plural noun phrase such as ``"unreadable
                images"``).
            fence: Resolved folders that links must neither lead into nor lead to a folder
                around (the other class folders of a labelled dataset).

        Returns:
            The kept files, each at most once (a file reached through several paths is kept
            under the first path found).
        """
        out: list[Path] = []
        stack = [top]
        while stack:
            folder = stack.pop()
            real_folder = self._enter(folder, top, fence)
            if real_folder is None:
                continue
            subs = []
            for e in self._entries(folder):
                p = Path(e.path)
                if _is_dir(e):
                    subs.append(p)
                elif _is_file(e):
                    real = self.inside(p) if e.is_symlink() else real_folder / e.name
                    if real is None or (e.is_symlink() and self._fenced(p, real, fence)):
                        continue
                    if real in self._files:
                        self.skipped.add("files reached twice through links", p)
                        continue
                    self._files.add(real)
                    why = keep(p) if keep is not None else None
                    if why is not None:
                        self.skipped.add(why[0], p, why[1])
                        continue
                    out.append(p)
                elif e.is_symlink():
                    self.skipped.add("broken or looping links", p)
                else:
                    self.skipped.add("special files (not regular files)", p)
            stack.extend(reversed(subs))
        return sorted(out)


def _is_dir(e: os.DirEntry[str]) -> bool:
    try:
        return e.is_dir(follow_symlinks=True)
    except OSError:  # a link loop
        return False


def _is_file(e: os.DirEntry[str]) -> bool:
    try:
        return e.is_file(follow_symlinks=True)
    except OSError:
        return False
