"""Everything contrastmix writes as JSON is strict JSON (issue 17, class 8): no ``NaN`` /
``Infinity`` tokens; a non-finite number is ``null`` and listed under ``non_finite``."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from contrastmix._json import dumps, loads, to_jsonable

ROOT = Path(__file__).resolve().parents[1]


def strict(text: str) -> Any:
    """Parse like a strict parser (jq, JSON.parse): NaN / Infinity tokens are errors."""

    def refuse(token: str) -> Any:
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def test_dumps_writes_null_and_a_pointer_record_and_loads_restores() -> None:
    obj = {"a": 1.0, "nc1": math.inf, "x": [1.0, -math.inf, float("nan")],
           "deep": {"s/l~ash": torch.tensor(float("nan")), "t": torch.tensor([1.0, 2.0])},
           "np": np.float64("inf"), "ok": np.int64(3), "p": Path("/tmp/x")}
    text = dumps(obj)
    data = strict(text)
    assert data["nc1"] is None and data["x"] == [1.0, None, None] and data["np"] is None
    assert data["deep"] == {"s/l~ash": None, "t": [1.0, 2.0]} and data["ok"] == 3
    assert data["p"] == "/tmp/x"
    assert data["non_finite"] == {"/nc1": "inf", "/x/1": "-inf", "/x/2": "nan",
                                  "/deep/s~1l~0ash": "nan", "/np": "inf"}
    back = loads(text)
    assert "non_finite" not in back and back["nc1"] == math.inf and back["np"] == math.inf
    assert back["x"][1] == -math.inf and math.isnan(back["x"][2])
    assert math.isnan(back["deep"]["s/l~ash"])
    # all finite: no record; ordinary JSON (and old NaN tokens) still read
    assert strict(dumps({"a": [1, 2.5]})) == {"a": [1, 2.5]}
    assert math.isnan(loads('{"a": NaN}')["a"])
    with pytest.raises(ValueError, match="non_finite"):
        dumps({"non_finite": 1, "b": math.nan})
    assert to_jsonable((torch.tensor(2), np.array([1, 2]))) == [2, [1, 2]]


def test_no_plain_json_dump_left_in_the_package() -> None:
    """Every JSON the package writes goes through contrastmix._json.dumps."""
    offenders = []
    for path in [*ROOT.joinpath("contrastmix").rglob("*.py"), *ROOT.joinpath("eval").rglob("*.py"),
                 *ROOT.joinpath("benchmarks").rglob("*.py")]:
        if path.name == "_json.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\bjson\.dumps?\(", line) and "sort_keys=True" not in line:
                offenders.append(f"{path.relative_to(ROOT)}:{n}")
    # json.dumps(..., sort_keys=True) of finite keyword arguments is a cache key, not output
    assert not offenders, offenders


@pytest.fixture(scope="module")
def collapsed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory whose backbone maps every input to the same point (all weights 0):
    every class mean coincides, so NC1 is infinite and the NC2 equinorm is 0/0."""
    from omegaconf import OmegaConf

    from contrastmix.models.build import build_backbone
    from contrastmix.recipe import load_recipe

    tmp = tmp_path_factory.mktemp("collapsed")
    rng = np.random.default_rng(0)
    np.savez(tmp / "sig.npz", x=rng.normal(size=(30, 1, 8)).astype("float32"),
             y=np.arange(30) % 3)
    cfg = load_recipe("moco_arrays", [f"data.path={tmp / 'sig.npz'}", "model.width=2",
                                      "data.batch_size=8"])
    run = tmp / "run"
    run.mkdir()
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    net = build_backbone(cfg.model.backbone, in_channels=1, width=2, cifar_stem=False)
    torch.save({k: torch.zeros_like(v) for k, v in net.state_dict().items()},
               run / "backbone.pt")
    return run


def test_probe_json_of_a_collapsed_model_is_strict(
    collapsed_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from contrastmix.cli import main

    with pytest.warns(UserWarning, match="NC1 is inf"):
        assert main(["probe", str(collapsed_run), "--json", "--geometry", "--device", "cpu"]) == 0
    out = capsys.readouterr().out.strip()
    data = strict(out)
    nc = data["geometry"]["neural_collapse"]
    assert nc["nc1"] is None
    assert data["non_finite"]["/geometry/neural_collapse/nc1"] == "inf"
    assert data["non_finite"]["/geometry/neural_collapse/nc2_equinorm"] == "nan"
    assert all(data["non_finite"][p] in ("inf", "-inf", "nan") for p in data["non_finite"])
    assert loads(out)["geometry"]["neural_collapse"]["nc1"] == math.inf
