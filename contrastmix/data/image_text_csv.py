"""Users' image-caption pairs from a CSV / TSV / JSONL file, and the ``image-text-csv`` dataset.

Each record has the fields ``image`` (``image_path`` is accepted as another name for it) and
``caption``, and optionally ``label``. Image paths are relative to ``root`` (default: the file's
folder) and must stay inside it: an absolute path, a path through ``..`` or a symbolic link that
leads out of the folder is refused. Every record is checked when the dataset is built — a missing
or unreadable image, an empty caption, a missing label — so a bad file fails at once with a
:class:`~contrastmix.errors.DatasetError` (a ``ValueError``) of one line naming the file, the
record and the field, never in the middle of an epoch. Bad records are never skipped silently:
a pair dropped without notice would change what retrieval measures.

Files are read as UTF-8; a byte-order mark (as written by spreadsheet programs) is accepted.
Record numbers in messages are 1-based data records; for CSV/TSV the file line is given too
(the header is line 1). For JSONL the line number is the record's line in the file.

Labels: when every ``label`` is a non-negative integer the classes are those integers; otherwise
each distinct label text is a class name (classes sorted by name). A label must be given on every
record or on none.

The ``image-text-csv`` dataset (``data.name=image-text-csv data.path=pairs.csv``,
:func:`build_image_text_csv`) splits the pairs with ``data.seed`` into train and test, loads
images lazily as RGB, resized (shorter side) and centre-cropped to ``data.image_size``, as
``[3, S, S]`` floats in ``[0, 1]``; the multimodal methods augment them on the device.
``data.options``: ``test_fraction`` (0.2), ``augment`` (true), ``prompt_template``
(``"a photo of a {label}"``, the zero-shot prompt of each class when the file has labels).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from contrastmix.data.bundle import DataBundle, dataset_options, image_augment
from contrastmix.data.bundles_multimodal import collate_multimodal
from contrastmix.data.bundles_user import _require_file, split_indices, text_file_errors
from contrastmix.errors import DatasetError

__all__ = [
    "ImageTextCSV",
    "ImageTextPairs",
    "read_image_text_records",
    "encode_labels",
    "build_image_text_csv",
    "REQUIRED_COLUMNS",
    "IMAGE_COLUMN_ALIASES",
    "DEFAULT_PROMPT_TEMPLATE",
]

#: The fields every record needs (``image`` may also be called ``image_path``).
REQUIRED_COLUMNS: tuple[str, str] = ("image", "caption")
#: Other accepted names of the ``image`` column.
IMAGE_COLUMN_ALIASES: tuple[str, ...] = ("image_path",)
#: Zero-shot prompt of a class; ``{label}`` is the class name (the file's label text).
DEFAULT_PROMPT_TEMPLATE = "a photo of a {label}"
_MAX_LISTED = 5
_INT = re.compile(r"\d+")


def _read_rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """``[(where, record)]`` from a CSV/TSV (header row) or JSONL file (UTF-8, optional BOM)."""
    suffix = path.suffix.lower()
    rows: list[tuple[str, dict[str, Any]]] = []
    with text_file_errors(path):
        if suffix in (".csv", ".tsv"):
            with path.open(newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
                fields = [(c or "").strip() for c in (reader.fieldnames or [])]
                if not fields:
                    raise DatasetError(f"{path} is empty (expected a header row: image,caption)")
                names = ["image" if c in IMAGE_COLUMN_ALIASES else c for c in fields]
                missing = [c for c in REQUIRED_COLUMNS if c not in names]
                if missing:
                    raise DatasetError(
                        f"{path}: missing column(s) {missing}; the header must name "
                        f"{list(REQUIRED_COLUMNS)} (and optionally 'label'), got {fields}"
                    )
                dup = sorted({c for c in names if c and names.count(c) > 1})
                if dup:
                    raise DatasetError(f"{path}: column '{dup[0]}' appears more than once in "
                                       "the header ('image_path' is another name for 'image')")
                for k, rec in enumerate(reader, start=1):
                    where = f"row {k} (line {reader.line_num})"
                    if None in rec:
                        raise DatasetError(
                            f"{path}: {where} has {len(fields) + len(rec[None])} fields, the "
                            f"header has {len(fields)} (quote a caption that holds the "
                            "delimiter)"
                        )
                    clean = {}
                    for key, v in rec.items():
                        if v is None:  # a short row: the field is missing
                            continue
                        name = (key or "").strip()
                        clean["image" if name in IMAGE_COLUMN_ALIASES else name] = v
                    rows.append((where, clean))
            return rows
        if suffix in (".jsonl", ".ndjson"):
            with path.open(encoding="utf-8-sig") as f:
                k = 0
                for line_no, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    k += 1
                    where = f"row {k} (line {line_no})"
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise DatasetError(
                            f"{path}: {where} is not valid JSON: {err.msg}") from None
                    if not isinstance(rec, dict):
                        raise DatasetError(f"{path}: {where} must be a JSON object")
                    if "image" not in rec:
                        for alias in IMAGE_COLUMN_ALIASES:
                            if alias in rec:
                                rec["image"] = rec.pop(alias)
                    rows.append((where, rec))
            return rows
    raise DatasetError(
        f"{path}: unsupported file type {suffix!r}; use .csv, .tsv or .jsonl with the fields "
        f"{list(REQUIRED_COLUMNS)} (and optionally 'label')"
    )


def _inside(base: Path, raw: str, path: Path, where: str) -> Path:
    """``base / raw`` when it stays inside ``base`` (symbolic links followed), else an error."""
    rel = Path(raw)
    if rel.is_absolute() or raw.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", raw):
        raise DatasetError(
            f"{path}: {where}, column 'image': absolute path {raw!r} refused; give the path "
            f"relative to {base}"
        )
    img = base / rel
    if not img.resolve().is_relative_to(base.resolve()):
        raise DatasetError(
            f"{path}: {where}, column 'image': {raw!r} leads out of {base} (through '..' or a "
            "symbolic link); image paths must stay inside the file's folder"
        )
    return img


def read_image_text_records(
    path: str | Path, root: str | Path | None = None
) -> tuple[list[Path], list[str], list[str] | None]:
    """Read and validate the records of an image-caption file.

    Args:
        path: CSV/TSV (with a header) or JSONL file.
        root: Folder that the ``image`` paths are relative to, and must stay inside (default:
            the file's folder).

    Returns:
        ``(image_paths, captions, label texts or None)``; see :func:`encode_labels`.

    Raises:
        DatasetError: (a ``ValueError``) when the file is missing, empty, not UTF-8, lacks a
            column, or a record has an empty / escaping image path, a missing image file, an
            empty caption or a missing label; the message names the file, the record and the
            field.
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

    def text(value: Any) -> str | None:
        if isinstance(value, bool) or value is None:
            return None
        if isinstance(value, float) and value.is_integer():  # JSON 3.0: the class 3
            return str(int(value)) if value >= 0 else str(value)
        if isinstance(value, (int, float, str)):
            return str(value).strip()
        return None

    has_label = any(text(rec.get("label")) for _, rec in rows)
    images: list[Path] = []
    captions: list[str] = []
    labels: list[str] = []
    missing_files: list[str] = []
    for where, rec in rows:
        for col in REQUIRED_COLUMNS:
            if col not in rec:
                raise DatasetError(f"{path}: {where} has no field {col!r}")
        raw = rec["image"]
        if not isinstance(raw, str) or not raw.strip():
            raise DatasetError(f"{path}: {where}, column 'image': empty image path")
        img = _inside(base, raw.strip(), path, where)
        if not img.is_file():
            missing_files.append(f"{where}: {raw.strip()}")
        cap = rec["caption"]
        if not isinstance(cap, str) or not cap.strip():
            raise DatasetError(f"{path}: {where}, column 'caption': empty or non-text caption")
        if has_label:
            lab = text(rec.get("label"))
            if not lab:
                raise DatasetError(
                    f"{path}: {where}, column 'label': {rec.get('label')!r}; a label must be "
                    "given on every record (or on none)"
                )
            labels.append(lab)
        images.append(img)
        captions.append(cap)
    if missing_files:
        listed = "; ".join(missing_files[:_MAX_LISTED])
        more = len(missing_files) - _MAX_LISTED
        extra = f" (and {more} more)" if more > 0 else ""
        raise DatasetError(f"{path}: {len(missing_files)} image file(s) not found under {base}: "
                           f"{listed}{extra}")
    return images, captions, (labels if has_label else None)


def encode_labels(labels: Sequence[str]) -> tuple[list[int], list[str]]:
    """Class indices and class names of label texts.

    All non-negative integers: the classes are the integers themselves (names ``"0"`` ..
    ``str(max)``). Otherwise every distinct text is a class, sorted by name.

    Returns:
        ``(indices, class_names)``.
    """
    if all(_INT.fullmatch(s) for s in labels):
        idx = [int(s) for s in labels]
        return idx, [str(i) for i in range(max(idx) + 1)]
    names = sorted(set(labels))
    pos = {n: i for i, n in enumerate(names)}
    return [pos[s] for s in labels], names


def _open_image(path: Path, mode: str | None, csv_path: Path, where: str) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.convert(mode) if mode else im.copy()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise DatasetError(
            f"{csv_path}: {where}, column 'image': cannot read image {path}: {first}"
        ) from None


def _check_readable(paths: Sequence[Path], csv_path: Path) -> None:
    """Open every image's header (cheap); the first unreadable one is an error naming it."""
    from PIL import Image, UnidentifiedImageError

    for k, p in enumerate(paths, start=1):
        try:
            with Image.open(p) as im:
                im.size  # noqa: B018 - the header parsed
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            first = (str(e).splitlines() or [type(e).__name__])[0]
            raise DatasetError(
                f"{csv_path}: row {k}, column 'image': cannot read image {p}: {first}"
            ) from None


def _default_transform(img: Any) -> Tensor:
    from torchvision.transforms.functional import pil_to_tensor

    return pil_to_tensor(img).float().div_(255.0)


class ImageTextCSV(Dataset):
    """Image-caption pairs listed in a CSV / TSV / JSONL file.

    Args:
        path: File with the fields ``image``, ``caption`` and optionally ``label``.
        root: Folder for the image paths (default: the file's folder).
        transform: Callable applied to the PIL image (default: ``[C, H, W]`` float in
            ``[0, 1]``).
        image_mode: PIL mode the images are converted to (``"RGB"``; ``None`` keeps the file's).

    Attributes:
        labels: ``[N]`` int64 class indices (:func:`encode_labels`) or ``None``.
        classes: The class names, or ``None`` without labels.

    Items:
        ``(image, caption)`` or ``(image, caption, label)`` when the file has labels.

    Raises:
        DatasetError: (``ValueError``) at construction, naming the record, for a missing or
            escaping image path, a missing column, an empty caption or a missing label; when an
            image cannot be decoded later, naming the record too.
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
        self.image_paths, self.captions, raw = read_image_text_records(self.path, root)
        self.labels: Tensor | None = None
        self.classes: list[str] | None = None
        if raw is not None:
            idx, self.classes = encode_labels(raw)
            self.labels = torch.tensor(idx, dtype=torch.long)
        self.transform = transform
        self.image_mode = image_mode

    def __len__(self) -> int:
        return len(self.captions)

    def load_image(self, i: int) -> Any:
        """The ``i``-th image as a PIL image (converted to :attr:`image_mode`)."""
        return _open_image(self.image_paths[i], self.image_mode, self.path, f"row {i + 1}")

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        img = self.load_image(i)
        x = self.transform(img) if self.transform is not None else _default_transform(img)
        if self.labels is None:
            return x, self.captions[i]
        return x, self.captions[i], int(self.labels[i])


class ImageTextPairs(Dataset):
    """Rows of an :class:`ImageTextCSV` as multimodal items
    ``({"image": [3, S, S], "text": caption}, label, offset + position)``.

    Args:
        pairs: The file's records (its ``transform`` makes ``[3, S, S]`` tensors).
        rows: ``[M]`` indices of the records of this split.
        offset: Added to the returned index.

    Label ``-1`` when the file has none.
    """

    def __init__(self, pairs: ImageTextCSV, rows: Tensor, offset: int = 0) -> None:
        self.pairs = pairs
        self.rows = [int(r) for r in rows]
        self.offset = int(offset)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[dict[str, Any], int, int]:
        item = self.pairs[self.rows[i]]
        label = int(item[2]) if len(item) == 3 else -1
        return {"image": item[0], "text": item[1]}, label, self.offset + i


def _prompts(template: Any, classes: Sequence[str]) -> list[str]:
    if not isinstance(template, str) or "{label}" not in template:
        raise DatasetError(
            f"data.options.prompt_template must be a text with '{{label}}', got {template!r}"
        )
    try:
        return [template.format(label=c) for c in classes]
    except (IndexError, KeyError, ValueError) as e:
        raise DatasetError(
            f"data.options.prompt_template {template!r} does not format: {e}; only "
            "'{label}' may appear in braces"
        ) from None


def build_image_text_csv(cfg: Any) -> DataBundle:
    """``image-text-csv``: users' image-caption pairs (``data.path``), task ``multimodal``.

    ``extras``: ``modalities``, ``retrieval`` (``"instance"``: the paired caption is the only
    relevant item), ``retrieval_ks`` ((1, 5, 10)), ``labelled``, and with labels
    ``class_names``, ``class_prompts``, ``prompt_template``.
    """
    import torchvision.transforms as T

    opt = dataset_options(cfg, {"test_fraction": 0.2, "augment": True,
                                "prompt_template": DEFAULT_PROMPT_TEMPLATE})
    path = _require_file(cfg, "CSV / TSV / JSONL")
    size = int(cfg.image_size)
    transform = T.Compose([T.Resize(size), T.CenterCrop(size), _default_transform])
    pairs = ImageTextCSV(path, transform=transform)
    _check_readable(pairs.image_paths, path)
    tr, te = split_indices(len(pairs), float(opt["test_fraction"]), int(cfg.seed), path)
    extras: dict[str, Any] = {
        "modalities": ("image", "text"), "retrieval": "instance", "retrieval_ks": (1, 5, 10),
        "labelled": pairs.classes is not None, "augment": bool(opt["augment"]),
    }
    num_classes = 0
    if pairs.classes is not None:
        num_classes = len(pairs.classes)
        extras.update(class_names=list(pairs.classes), prompt_template=opt["prompt_template"],
                      class_prompts=_prompts(opt["prompt_template"], pairs.classes))
    train = ImageTextPairs(pairs, tr)
    return DataBundle(
        pretrain=train, train=train, test=ImageTextPairs(pairs, te),
        batch_augment=image_augment(cfg) if opt["augment"] else None,
        in_channels=3, num_classes=num_classes, task="multimodal",
        collate_fn=collate_multimodal, extras=extras,
    )
