"""Users' image-caption data from a CSV / TSV / JSONL file.

Each record has the fields ``image_path`` and ``caption`` and optionally ``label`` (an integer
class). Relative image paths are resolved against ``root`` (default: the folder of the file).
Every record is checked when the dataset is built, so a missing image, an empty caption or a bad
label fails at once with a :class:`~contrastmix.errors.DatasetError` (a ``ValueError``) naming the
record, instead of in the middle of an epoch.

Record numbers in messages are 1-based data records; for CSV/TSV the file line is given too
(the header is line 1). For JSONL the line number is the record's line in the file.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from contrastmix.errors import DatasetError

__all__ = ["ImageTextCSV", "read_image_text_records", "REQUIRED_COLUMNS"]

REQUIRED_COLUMNS: tuple[str, str] = ("image_path", "caption")
_MAX_LISTED = 5


def _read_rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """``[(where, record)]`` from a CSV/TSV (header row) or JSONL file."""
    suffix = path.suffix.lower()
    rows: list[tuple[str, dict[str, Any]]] = []
    if suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            fields = [c.strip() for c in (reader.fieldnames or [])]
            missing = [c for c in REQUIRED_COLUMNS if c not in fields]
            if missing:
                raise DatasetError(
                    f"{path}: missing column(s) {missing}; the header must name "
                    f"{list(REQUIRED_COLUMNS)} (and optionally 'label'), got {fields}"
                )
            for k, rec in enumerate(reader, start=1):
                clean = {(key or "").strip(): v for key, v in rec.items()}
                rows.append((f"row {k} (line {reader.line_num})", clean))
        return rows
    if suffix in (".jsonl", ".ndjson"):
        with path.open(encoding="utf-8") as f:
            k = 0
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                k += 1
                where = f"row {k} (line {line_no})"
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DatasetError(f"{path}: {where} is not valid JSON: {err.msg}") from err
                if not isinstance(rec, dict):
                    raise DatasetError(f"{path}: {where} must be a JSON object")
                rows.append((where, rec))
        return rows
    raise DatasetError(
        f"{path}: unsupported file type {suffix!r}; use .csv, .tsv or .jsonl with the fields "
        f"{list(REQUIRED_COLUMNS)} (and optionally 'label')"
    )


def read_image_text_records(
    path: str | Path, root: str | Path | None = None
) -> tuple[list[Path], list[str], list[int] | None]:
    """Read and validate the records of an image-caption file.

    Args:
        path: CSV/TSV (with a header) or JSONL file.
        root: Folder that relative ``image_path`` values are resolved against (default: the
            file's folder).

    Returns:
        ``(image_paths, captions, labels or None)``.

    Raises:
        DatasetError: (a ``ValueError``) when the file is missing, empty, lacks a column, or a
            record has a missing image file, an empty caption or a bad / missing label; the
            message names the record and the path.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"caption file {str(path)!r} does not exist")
    base = Path(root) if root is not None else path.parent
    if root is not None and not base.is_dir():
        raise DatasetError(f"`root` {str(base)!r} is not a directory")
    rows = _read_rows(path)
    if not rows:
        raise DatasetError(f"{path}: no records")
    has_label = any(rec.get("label") not in (None, "") for _, rec in rows)
    images: list[Path] = []
    captions: list[str] = []
    labels: list[int] = []
    missing_files: list[str] = []
    for where, rec in rows:
        for col in REQUIRED_COLUMNS:
            if col not in rec:
                raise DatasetError(f"{path}: {where} has no field {col!r}")
        raw = rec["image_path"]
        if not isinstance(raw, str) or not raw.strip():
            raise DatasetError(f"{path}: {where} has an empty image_path")
        img = Path(raw.strip())
        img = img if img.is_absolute() else base / img
        if not img.is_file():
            missing_files.append(f"{where}: {img}")
        cap = rec["caption"]
        if not isinstance(cap, str) or not cap.strip():
            raise DatasetError(f"{path}: {where} has an empty or non-text caption")
        if has_label:
            lab = rec.get("label")
            try:
                value = float(lab) if isinstance(lab, str) else lab
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise TypeError
                if value != int(value) or value < 0:
                    raise ValueError
            except (TypeError, ValueError) as err:
                raise DatasetError(
                    f"{path}: {where} has label {lab!r}; labels must be non-negative integers "
                    "on every record (or absent on all)"
                ) from err
            labels.append(int(value))
        images.append(img)
        captions.append(cap)
    if missing_files:
        listed = "; ".join(missing_files[:_MAX_LISTED])
        more = len(missing_files) - _MAX_LISTED
        extra = f" (and {more} more)" if more > 0 else ""
        raise DatasetError(f"{path}: {len(missing_files)} image file(s) not found: {listed}{extra}")
    return images, captions, (labels if has_label else None)


def _default_transform(img: Any) -> Tensor:
    from torchvision.transforms.functional import pil_to_tensor

    return pil_to_tensor(img).float().div_(255.0)


class ImageTextCSV(Dataset):
    """Image-caption pairs listed in a CSV / TSV / JSONL file.

    Args:
        path: File with the fields ``image_path``, ``caption`` and optionally ``label``.
        root: Folder for relative image paths (default: the file's folder).
        transform: Callable applied to the PIL image (default: ``[C, H, W]`` float in
            ``[0, 1]``).
        image_mode: PIL mode the images are converted to (``"RGB"``; ``None`` keeps the file's).

    Items:
        ``(image, caption)`` or ``(image, caption, label)`` when the file has labels.

    Raises:
        DatasetError: (``ValueError``) at construction, naming the record, for a missing image
            file, a missing column, an empty caption or a bad label.
    """

    def __init__(
        self,
        path: str | Path,
        root: str | Path | None = None,
        transform: Callable[[Any], Any] | None = None,
        *,
        image_mode: str | None = "RGB",
    ) -> None:
        self.path = Path(path)
        self.image_paths, self.captions, labels = read_image_text_records(self.path, root)
        self.labels: Tensor | None = (
            torch.tensor(labels, dtype=torch.long) if labels is not None else None
        )
        self.transform = transform
        self.image_mode = image_mode

    def __len__(self) -> int:
        return len(self.captions)

    def load_image(self, i: int) -> Any:
        """The ``i``-th image as a PIL image (converted to :attr:`image_mode`)."""
        from PIL import Image

        with Image.open(self.image_paths[i]) as im:
            return im.convert(self.image_mode) if self.image_mode else im.copy()

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        img = self.load_image(i)
        x = self.transform(img) if self.transform is not None else _default_transform(img)
        if self.labels is None:
            return x, self.captions[i]
        return x, self.captions[i], int(self.labels[i])
