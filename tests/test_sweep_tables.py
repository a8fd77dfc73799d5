"""The claim sweeps' tables (issue 16) compute the right paired differences from probe results.

``regression_claims.py`` and ``multimodal_results.py --contrast-weights`` are loaded from
``benchmarks/sweeps/`` and fed hand-made results; no model is trained here (their ``--quick``
runs train, see ``test_benchmarks_smoke.py``).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from contrastmix.sweeps import paired_difference

SWEEPS = Path(__file__).resolve().parents[1] / "benchmarks" / "sweeps"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"sweep_{name}", SWEEPS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(table: str, label: str) -> list[str]:
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells and cells[0] == label:
            return cells
    raise AssertionError(f"no row {label!r} in\n{table}")


def _numbers(cell: str) -> list[float]:
    return [float(x) for x in re.findall(r"[-+]?\d+\.\d+", cell.replace("−", "-"))]


def test_regression_claims_pairs_by_seed_and_probe() -> None:
    rc = _load("regression_claims")
    # MAE per seed: SupReMix's projections beat L1 by 0.5 at every seed but one, its backbone
    # loses by 0.3; seed 2 of RnC is missing (a run still training) and must drop out of pairs.
    l1 = [2.30, 2.20, 2.40, 2.35]
    sup_bb = [x + 0.3 for x in l1]
    sup_pn = [x - d for x, d in zip(l1, (0.5, 0.5, 0.5, 0.7), strict=True)]

    def run(bb: float, pn: float | None, few: float = 7.0) -> dict[str, Any]:
        r: dict[str, Any] = {"backbone/ridge": {"all": bb, "many": 1.0, "few": few},
                             "backbone/L1": {"all": bb + 0.1, "many": 1.1, "few": few}}
        if pn is not None:
            r["projector-normalised/ridge"] = {"all": pn, "many": 1.0, "few": few - 1}
        return r

    results = {"rotated_digits_lt": {
        "l1": [run(x, None) for x in l1],
        "supremix": [run(b, p) for b, p in zip(sup_bb, sup_pn, strict=True)],
        "rnc": [run(2.8, 2.0), run(2.7, 2.1), None, run(2.9, 2.2)],
    }}
    text = rc.report(results)
    row = _row(text, "SupReMix − L1, backbone (ridge)")
    assert _numbers(row[1])[:2] == pytest.approx([0.30, 0.0], abs=1e-9)
    row = _row(text, "SupReMix − L1, SupReMix on its normalised projections (ridge)")
    m, s, (lo, hi) = paired_difference(sup_pn, l1)
    assert _numbers(row[1]) == pytest.approx([m, s, lo, hi], abs=0.006)
    assert m < 0 and hi < 0  # lower error: the projections win
    assert _numbers(row[3]) == pytest.approx([-1.0, 0.0, -1.0, -1.0], abs=1e-9)  # few-shot
    row = _row(text, "RnC − L1, backbone (ridge)")
    m, _, _ = paired_difference([2.8, 2.7, 2.9], [l1[0], l1[1], l1[3]])
    assert _numbers(row[1])[0] == pytest.approx(m, abs=0.006)
    # the per-method table counts the seeds that exist, and lists only probes that ran
    assert "| RnC | backbone/ridge | 3 |" in text
    assert "| L1 | projector-normalised/ridge" not in text
    # comparisons of a method that was not run are left out
    assert "no mixtures" not in text


def test_contrast_weight_table_is_paired_by_seed() -> None:
    mm = _load("multimodal_results")
    base = [0.90, 0.92, 0.94]
    w01 = [0.91, 0.92, 0.96]

    def rows(values: list[float]) -> list[dict[str, Any]]:
        return [{"seed": s, "probe": {"fusion_accuracy": v}} for s, v in enumerate(values)]

    results = {mm.SWEPT_BASE: rows(base), mm._weight_key(0.0): rows(base),
               mm._weight_key(0.1): rows(w01)}
    text = mm.weight_table(results, [0.0, 0.1])
    assert _numbers(_row(text, "contrast_weight=0")[2]) == [0.0, 0.0, 0.0, 0.0]
    m, s, (lo, hi) = paired_difference(w01, base)
    assert _numbers(_row(text, "contrast_weight=0.1")[2]) == pytest.approx([m, s, lo, hi],
                                                                            abs=6e-5)
