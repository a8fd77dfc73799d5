"""Strict JSON for everything contrastmix writes (files and ``--json`` output).

JSON has no NaN or infinity; Python's ``json`` writes the tokens ``NaN`` / ``Infinity``, which
strict parsers (``jq``, JavaScript's ``JSON.parse``, Python's with ``parse_constant``) reject.
The convention here, one for every file:

* a number that is not finite is written as ``null``;
* the top-level object then also holds ``"non_finite"``: a map from the JSON Pointer
  (RFC 6901, e.g. ``"/geometry/neural_collapse/nc1"``) of each such ``null`` to what it stands
  for, ``"inf"``, ``"-inf"`` or ``"nan"`` (absent when every number is finite). NC1 of a
  collapsed model (all class means equal) is the usual case: ``"nc1": null`` and
  ``"non_finite": {"/geometry/neural_collapse/nc1": "inf"}``.

:func:`dumps` writes that (``allow_nan=False``: nothing else can slip through) and
:func:`loads` reads it back with the original floats restored. Tensors, NumPy arrays and
scalars become lists and numbers (:func:`to_jsonable`).
"""

from __future__ import annotations

import json
import math
from pathlib import PurePath
from typing import Any

__all__ = ["to_jsonable", "dumps", "loads", "NON_FINITE_KEY"]

#: Top-level key listing the values written as ``null`` because they were not finite.
NON_FINITE_KEY = "non_finite"


def to_jsonable(x: Any) -> Any:
    """Plain Python containers and numbers: tensors / arrays as (nested) lists, 0-d ones and
    NumPy scalars as numbers, tuples as lists, dict keys as strings, paths as strings.
    Non-finite floats are kept (:func:`dumps` handles them)."""
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, PurePath):
        return str(x)
    if isinstance(x, (str, bool, int, float)) or x is None:
        return x
    tolist = getattr(x, "tolist", None)  # torch.Tensor, numpy arrays and scalars
    if callable(tolist):
        return to_jsonable(tolist())
    return x


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _strip(x: Any, pointer: str, found: dict[str, str]) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        found[pointer] = "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
        return None
    if isinstance(x, dict):
        return {k: _strip(v, f"{pointer}/{_escape(k)}", found) for k, v in x.items()}
    if isinstance(x, list):
        return [_strip(v, f"{pointer}/{i}", found) for i, v in enumerate(x)]
    return x


def dumps(obj: Any, **kwargs: Any) -> str:
    """Strict JSON text of ``obj`` (see the module docstring for non-finite numbers).

    Args:
        obj: Usually a dict (the ``non_finite`` record needs a top-level object; elsewhere
            non-finite numbers are still written as ``null``).
        **kwargs: ``json.dumps`` options (``indent``, ``sort_keys``, ``default``, ...).

    Raises:
        ValueError: ``obj`` is a dict that already has a ``non_finite`` key while holding
            non-finite numbers.
    """
    found: dict[str, str] = {}
    data = _strip(to_jsonable(obj), "", found)
    if found and isinstance(data, dict):
        if NON_FINITE_KEY in data:
            raise ValueError(f"cannot record non-finite values: `{NON_FINITE_KEY}` is taken")
        data[NON_FINITE_KEY] = found
    return json.dumps(data, allow_nan=False, **kwargs)


def loads(text: str | bytes) -> Any:
    """Parse JSON written by :func:`dumps`: the ``non_finite`` record is removed and its
    values put back as floats. Also reads ordinary JSON (``NaN`` / ``Infinity`` tokens of
    older files included)."""
    data = json.loads(text)
    if not isinstance(data, dict) or not isinstance(data.get(NON_FINITE_KEY), dict):
        return data
    record = data.pop(NON_FINITE_KEY)
    values = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}
    for pointer, what in record.items():
        tokens = [_unescape(t) for t in str(pointer).split("/")[1:]]
        if not tokens or what not in values:
            continue
        parent: Any = data
        try:
            for t in tokens[:-1]:
                parent = parent[int(t)] if isinstance(parent, list) else parent[t]
            last = tokens[-1]
            if isinstance(parent, list):
                if parent[int(last)] is None:
                    parent[int(last)] = values[what]
            elif isinstance(parent, dict) and last in parent and parent[last] is None:
                parent[last] = values[what]
        except (KeyError, IndexError, ValueError, TypeError):
            continue  # a record that does not match the data: leave the null
    return data
