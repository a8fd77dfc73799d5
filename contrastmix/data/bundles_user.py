"""Dataset builders for users' own files (listed in :data:`contrastmix.data.registry.DATASETS`).

* ``table`` — tabular regression from a CSV file: ``data.path=FILE.csv data.target=COLUMN``.
  The first row names the columns (a UTF-8 byte-order mark is accepted), fields are separated
  by commas; every column other than the target is a numeric feature. A non-numeric or missing
  value is an error naming the file, the column and the row. Features are standardised with
  the mean / standard deviation of the **training** split only (a constant feature keeps
  scale 1). ``data.options``: ``test_fraction`` (0.2), ``standardize_target`` (false: the
  target, and the probe's MAE / MSE, stay in the file's units; true: ``(y - mean) / std`` of
  the training targets), ``noise_std`` and ``dropout`` of the views
  (:class:`~contrastmix.data.tabular_augment.TabularAugment`). ``in_channels`` is the number of
  features, for the ``mlp`` backbone.
* ``arrays`` — 1-D signals from a NumPy ``.npz`` file: ``data.path=FILE.npz`` with ``x``
  ``[N, C, L]`` (real numbers, finite) and optionally ``y`` ``[N]`` non-negative integer class
  labels. Without ``y`` the data pretrains (label-free methods) but cannot be evaluated: the
  probe says so. Read with ``numpy.load(..., allow_pickle=False)`` (never unpickles).
  ``data.options``: ``test_fraction`` (0.2). Views:
  :class:`~contrastmix.data.augment1d.SignalAugment` from ``data.signal_aug``;
  ``in_channels = C``.

The train/test split is a random permutation seeded by ``data.seed``. Relative paths are
relative to the working directory (of ``pretrain`` and, later, of ``probe``).
"""

from __future__ import annotations

import contextlib
import csv
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from contrastmix.data.bundle import DataBundle, TensorIndexDataset, dataset_options, signal_augment
from contrastmix.errors import DatasetError

__all__ = ["build_table", "build_arrays", "load_table", "split_indices", "USER_DATASETS"]

#: Names registered by this module.
USER_DATASETS: tuple[str, ...] = ("table", "arrays")

#: Field values read as "missing" (compared case-insensitively, after stripping blanks).
_MISSING = {"", "na", "n/a", "nan", "null", "none", "-"}


@contextlib.contextmanager
def text_file_errors(path: Path) -> Iterator[None]:
    """Reading a user's text file: a non-UTF-8 byte, a malformed CSV or an OS error becomes one
    :class:`DatasetError` line naming the file."""
    try:
        yield
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise DatasetError(f"{path} is not a readable CSV file: {e}") from None
    except OSError as e:
        raise DatasetError(f"{path} cannot be read: {e.strerror or e}") from None


def _require_file(cfg: Any, kind: str) -> Path:
    """``data.path`` as an existing file, else a :class:`DatasetError`."""
    raw = getattr(cfg, "path", None)
    if raw is None or str(raw).strip() == "":
        raise DatasetError(
            f"data.path is required for dataset '{cfg.name}' (a {kind} file; e.g. "
            f"--set data.path=FILE)"
        )
    path = Path(str(raw)).expanduser()
    if not path.exists():
        where = "" if path.is_absolute() else f" (relative to the working directory {Path.cwd()})"
        raise DatasetError(f"data.path: {path} does not exist{where}")
    if not path.is_file():
        raise DatasetError(f"data.path: {path} is not a file")
    return path


def split_indices(n: int, test_fraction: float, seed: int, path: Path) -> tuple[Tensor, Tensor]:
    """Seeded random ``(train_idx, test_idx)`` of ``n`` rows; at least 2 train and 1 test row.

    Raises:
        DatasetError: too few rows for a split.
    """
    n_test = max(1, int(round(n * test_fraction)))
    if n - n_test < 2:
        raise DatasetError(
            f"{path} has {n} rows: too few for a train/test split with test_fraction "
            f"{test_fraction} (need at least 2 training rows and 1 test row)"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return perm[n_test:].sort().values, perm[:n_test].sort().values


# ------------------------------------------------------------------------------ table
def load_table(path: Path, target: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read a numeric CSV file.

    Args:
        path: The CSV file (header row of column names; UTF-8, optional byte-order mark).
        target: Name of the target column.

    Returns:
        ``x [N, F]`` float64 features, ``y [N]`` float64 targets and the ``F`` feature names
        (file order, target removed).

    Raises:
        DatasetError: unreadable or empty file, no such target column, a row of the wrong
            length, a missing / non-numeric / non-finite value (naming column and row).
    """
    with text_file_errors(path), path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise DatasetError(f"{path} is empty (expected a header row of column names)")
        names = [h.strip() for h in header]
        rows: list[tuple[int, list[str]]] = []
        for fields in reader:
            if not fields or all(f.strip() == "" for f in fields):
                continue  # blank line
            rows.append((reader.line_num, fields))

    if len(names) == 1 and any(sep in names[0] for sep in (";", "\t", "|")):
        raise DatasetError(
            f"{path}: the header has a single column '{names[0]}'; fields must be separated "
            "by commas"
        )
    blank = [i + 1 for i, n in enumerate(names) if n == ""]
    if blank:
        raise DatasetError(f"{path}: column {blank[0]} of the header has no name")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DatasetError(f"{path}: column name '{dup[0]}' appears more than once in the header")
    if target not in names:
        raise DatasetError(
            f"{path} has no column '{target}' (data.target); columns: {', '.join(names)}"
        )
    if len(names) < 2:
        raise DatasetError(f"{path} has only the target column '{target}'; no features")
    if not rows:
        raise DatasetError(f"{path} has a header but no data rows")

    values = np.empty((len(rows), len(names)), dtype=np.float64)
    for r, (line, fields) in enumerate(rows):
        row = r + 1
        if len(fields) != len(names):
            col = (f"column '{names[len(fields)]}' is missing" if len(fields) < len(names)
                   else f"extra field {fields[len(names)].strip()[:40]!r} after column "
                        f"'{names[-1]}'")
            raise DatasetError(
                f"{path}: row {row} (line {line}) has {len(fields)} fields, the header has "
                f"{len(names)} ({col})"
            )
        for c, raw in enumerate(fields):
            s = raw.strip()
            if s.lower() in _MISSING:
                raise DatasetError(
                    f"{path}: column '{names[c]}' has a missing value in row {row} "
                    f"(line {line}); fill or drop it"
                )
            try:
                v = float(s)
            except ValueError:
                raise DatasetError(
                    f"{path}: column '{names[c]}' is not numeric (row {row}, line {line}: "
                    f"{s[:40]!r}); every column must hold numbers (encode categories first)"
                ) from None
            if not math.isfinite(v):
                raise DatasetError(
                    f"{path}: column '{names[c]}' has a non-finite value {s!r} in row {row} "
                    f"(line {line})"
                )
            values[r, c] = v
    t = names.index(target)
    feats = [n for i, n in enumerate(names) if i != t]
    return np.delete(values, t, axis=1), values[:, t], feats


def build_table(cfg: Any) -> DataBundle:
    """``table``: numeric CSV, target column ``data.target``; regression."""
    from contrastmix.data.tabular_augment import TabularAugment

    o = dataset_options(cfg, {"test_fraction": 0.2, "standardize_target": False,
                              "noise_std": 0.1, "dropout": 0.1})
    path = _require_file(cfg, "CSV")
    target = getattr(cfg, "target", None)
    if target is None or str(target).strip() == "":
        raise DatasetError(
            f"data.target is required for dataset 'table' (the name of the target column of "
            f"{path}; e.g. --set data.target=price)"
        )
    x, y, _ = load_table(path, str(target).strip())
    tr, te = split_indices(len(y), float(o["test_fraction"]), int(cfg.seed), path)
    tr_np = tr.numpy()  # mean / std of the training rows only
    mean, std = x[tr_np].mean(axis=0), x[tr_np].std(axis=0)
    xs = (x - mean) / np.where(std > 0, std, 1.0)
    ys = y
    if o["standardize_target"]:
        ys_std = y[tr_np].std()
        ys = (y - y[tr_np].mean()) / (ys_std if ys_std > 0 else 1.0)
    xt = torch.from_numpy(xs.astype(np.float32))
    yt = torch.from_numpy(ys.astype(np.float32))
    try:
        aug = TabularAugment(noise_std=float(o["noise_std"]), dropout=float(o["dropout"]))
    except ValueError as e:
        raise DatasetError(f"table: {e}") from None
    train = TensorIndexDataset(xt[tr], yt[tr])
    return DataBundle(
        pretrain=train, train=train, test=TensorIndexDataset(xt[te], yt[te]),
        batch_augment=aug, in_channels=x.shape[1], num_classes=0, task="regression",
    )


# ------------------------------------------------------------------------------ arrays
def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """``x`` and ``y`` (or ``None``) of an ``.npz`` file, read without pickles."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DatasetError(f"{path} is not a readable .npz file: {first}") from None
    if isinstance(loaded, np.ndarray):
        raise DatasetError(
            f"{path} holds a single array (.npy); expected an .npz with arrays 'x' [N, C, L] "
            "and optionally 'y' [N] (numpy.savez(path, x=..., y=...))"
        )
    with loaded as npz:
        keys = list(npz.files)
        if "x" not in keys:
            raise DatasetError(
                f"{path} has no array 'x' (signals [N, C, L]); arrays: "
                f"{', '.join(keys) or 'none'}"
            )
        try:
            x = npz["x"]
            y = npz["y"] if "y" in keys else None
        except (ValueError, OSError) as e:  # object arrays need pickles: refused
            first = str(e).splitlines()[0]
            raise DatasetError(f"{path}: an array cannot be read without pickles: {first}") \
                from None
    return x, y


def load_arrays(path: Path) -> tuple[Tensor, Tensor | None]:
    """Validated ``x [N, C, L]`` float32 and ``y [N]`` int64 (or ``None``) of an ``.npz``.

    Raises:
        DatasetError: unreadable file, no ``x``, wrong shapes or dtypes, non-finite values,
            negative labels.
    """
    x, y = _load_npz(path)
    if x.dtype.kind not in "fiub":
        raise DatasetError(f"{path}: array 'x' must hold real numbers, got dtype {x.dtype}")
    if x.ndim != 3:
        hint = " (one channel: x[:, None, :])" if x.ndim == 2 else ""
        raise DatasetError(
            f"{path}: array 'x' must be 3-D [N, C, L] (samples, channels, length), got shape "
            f"{tuple(x.shape)}{hint}"
        )
    if min(x.shape) == 0:
        raise DatasetError(f"{path}: array 'x' is empty (shape {tuple(x.shape)})")
    xf = x.astype(np.float32)
    bad = ~np.isfinite(xf)
    if bad.any():
        i = int(np.argwhere(bad)[0][0])
        raise DatasetError(f"{path}: array 'x' has NaN or inf values (first in sample {i})")
    if y is None:
        return torch.from_numpy(xf), None
    if y.ndim != 1 or len(y) != len(x):
        raise DatasetError(
            f"{path}: array 'y' must be 1-D [N] with N = {len(x)} (the samples of 'x'), got "
            f"shape {tuple(y.shape)}"
        )
    if y.dtype.kind not in "iu":
        raise DatasetError(
            f"{path}: array 'y' must hold integer class labels, got dtype {y.dtype}"
        )
    if (y < 0).any():
        i = int(np.argwhere(y < 0)[0][0])
        raise DatasetError(f"{path}: array 'y' has a negative label {int(y[i])} (sample {i})")
    return torch.from_numpy(xf), torch.from_numpy(y.astype(np.int64))


def build_arrays(cfg: Any) -> DataBundle:
    """``arrays``: 1-D signals ``x [N, C, L]`` (+ optional labels ``y [N]``) from an ``.npz``."""
    o = dataset_options(cfg, {"test_fraction": 0.2})
    path = _require_file(cfg, ".npz")
    if getattr(cfg, "target", None) is not None:
        raise DatasetError(
            f"data.target is not used by dataset 'arrays' (the labels are the array 'y' of "
            f"{path}); remove it"
        )
    x, y = load_arrays(path)
    tr, te = split_indices(len(x), float(o["test_fraction"]), int(cfg.seed), path)
    extras: dict[str, Any] | None = None
    if y is None:
        y = torch.full((len(x),), -1, dtype=torch.long)
        num_classes = 0
        extras = {"unlabelled": f"{path} has no array 'y' (labels [N]): pretraining works "
                                "without labels, evaluation needs them; add integer class "
                                "labels as 'y' to the .npz, or evaluate on a labelled file "
                                "with --set data.path=LABELLED.npz"}
    else:
        num_classes = int(y.max()) + 1
    train = TensorIndexDataset(x[tr], y[tr])
    return DataBundle(
        pretrain=train, train=train, test=TensorIndexDataset(x[te], y[te]),
        batch_augment=signal_augment(cfg), in_channels=int(x.shape[1]),
        num_classes=num_classes, task="classification", extras=extras,
    )
