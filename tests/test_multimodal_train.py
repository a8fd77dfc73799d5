"""End to end tests of the multimodal recipes: clip, m2mix, m3col and concat.

One short run per method through :func:`contrastmix.train.pretrain.pretrain`, then
:func:`contrastmix.eval.evaluate.probe_run`; plus the retrieval metrics against brute-force
loops, the data bundles, the artifact round trip and the error paths.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from contrastmix.data.bundles_multimodal import MultimodalDataset, collate_multimodal
from contrastmix.data.registry import build_data
from contrastmix.errors import CheckpointError, DatasetError, RecipeError, RunDirError
from contrastmix.eval.multimodal import mean_average_precision, retrieval_hit_rate
from contrastmix.recipe import load_recipe

TINY = [
    "trainer.max_epochs=1", "trainer.limit_train_batches=2", "data.batch_size=32",
    "model.width=8", "trainer.enable_progress_bar=false", "eval.knn_every_n_epochs=1",
]
RECIPES = {
    "clip": "clip_digits", "m2mix": "m2mix_digits", "m3col": "m3col_digits_tri",
    "concat": "concat_digits_tri",
}
TWO_TOWER_KEYS = [
    "i2t_hit_rate@1", "i2t_hit_rate@5", "t2i_hit_rate@1", "t2i_hit_rate@5", "i2t_map", "t2i_map",
    "zero_shot_accuracy", "zero_shot_ece", "zero_shot_nll", "zero_shot_confidence",
    "alignment", "uniformity_image", "uniformity_text", "uniformity_union", "modality_gap",
]


# ------------------------------------------------------------------------ retrieval metrics


def _recall_loop(sim: torch.Tensor, qy: torch.Tensor, gy: torch.Tensor, k: int) -> float:
    hits = 0
    for i in range(sim.shape[0]):
        order = sorted(range(sim.shape[1]), key=lambda j: -float(sim[i, j]))
        hits += any(int(gy[j]) == int(qy[i]) for j in order[:k])
    return hits / sim.shape[0]


def _ap_loop(sim: torch.Tensor, qy: torch.Tensor, gy: torch.Tensor) -> float:
    aps = []
    for i in range(sim.shape[0]):
        order = sorted(range(sim.shape[1]), key=lambda j: -float(sim[i, j]))
        found, precs = 0, []
        for r, j in enumerate(order, start=1):
            if int(gy[j]) == int(qy[i]):
                found += 1
                precs.append(found / r)
        if precs:
            aps.append(sum(precs) / len(precs))
    return sum(aps) / len(aps)


def test_retrieval_metrics_match_brute_force_loops() -> None:
    g = torch.Generator().manual_seed(1)
    sim = torch.randn(13, 17, generator=g)
    qy = torch.randint(0, 3, (13,), generator=g)
    gy = torch.randint(0, 3, (17,), generator=g)
    rec = retrieval_hit_rate(sim, qy, gy, ks=(1, 3, 5, 40))
    for k in (1, 3, 5):
        assert rec[k] == pytest.approx(_recall_loop(sim, qy, gy, k))
    assert rec[40] == pytest.approx(_recall_loop(sim, qy, gy, 17))  # k clamped to G
    assert mean_average_precision(sim, qy, gy) == pytest.approx(_ap_loop(sim, qy, gy))


def test_retrieval_metrics_extremes_and_errors() -> None:
    y = torch.arange(5).repeat(2)
    perfect = (y[:, None] == y[None, :]).double()
    assert retrieval_hit_rate(perfect, y, y) == {1: 1.0, 5: 1.0}
    assert mean_average_precision(perfect, y, y) == 1.0
    worst = -perfect
    assert retrieval_hit_rate(worst, y, y, ks=(1,))[1] == 0.0
    # relevant items last: AP = mean(1/9, 2/10)
    assert mean_average_precision(worst, y, y) == pytest.approx((1 / 9 + 2 / 10) / 2)
    with pytest.raises(ValueError, match="sim"):
        retrieval_hit_rate(torch.zeros(3, 4), torch.zeros(3), torch.zeros(5))
    with pytest.raises(ValueError, match="ks"):
        retrieval_hit_rate(torch.zeros(3, 4), torch.zeros(3), torch.zeros(4), ks=(0,))
    with pytest.raises(ValueError, match="sim"):
        mean_average_precision(torch.full((2, 2), float("nan")), torch.zeros(2), torch.zeros(2))


# ------------------------------------------------------------------------ data bundles


def test_bundles_yield_what_the_modules_expect() -> None:
    from contrastmix.data.bundles_multimodal import NEUTRAL_CAPTIONS
    from contrastmix.data.digits_captions import NUMBER_WORDS

    cfg = load_recipe("m3col_digits_tri")  # 10 triples per class, half the captions class-free
    data = build_data(cfg.data)
    assert data.task == "multimodal" and data.in_channels == 1 and data.num_classes == 10
    assert list(data.extras["modalities"]) == ["image", "signal", "text"]
    assert data.extras["class_prompts"][7] == "a handwritten seven"
    inputs, y, idx = data.collate_fn([data.pretrain[i] for i in range(len(data.pretrain))])
    assert inputs["image"].shape == (100, 1, 8, 8) and inputs["signal"].shape == (100, 1, 40)
    assert torch.equal(torch.bincount(y), torch.full((10,), 10))
    assert isinstance(inputs["text"], list) and all(isinstance(t, str) for t in inputs["text"])
    assert torch.equal(idx, torch.arange(100)) and y.dtype == torch.long
    _, yt, _ = data.collate_fn([data.test[i] for i in range(len(data.test))])
    assert len(data.test) > 400  # the test split is never subsampled
    tt = [data.test[i][0]["text"] for i in range(len(data.test))]
    neutral = [t in NEUTRAL_CAPTIONS for t in tt]
    assert 0.4 < sum(neutral) / len(tt) < 0.6  # caption_noise 0.5, binomial over ~450
    for t, c, n in zip(tt, yt.tolist(), neutral, strict=True):  # the rest name their class
        assert n or NUMBER_WORDS[c] in t or str(c) in t
    clean = build_data(load_recipe("m3col_digits_tri", ["data.options.caption_noise=0.0"]).data)
    for i in range(len(clean.test)):
        x, c, _ = clean.test[i]
        assert NUMBER_WORDS[c] in x["text"] or str(c) in x["text"]
        assert torch.equal(x["signal"], data.test[i][0]["signal"])  # only captions change
    cap = build_data(load_recipe("clip_digits").data)
    assert list(cap.extras["modalities"]) == ["image", "text"] and len(cap.test) > 400


def test_caption_noise_and_per_class_subsampling() -> None:
    from contrastmix.data.bundles_multimodal import (
        NEUTRAL_CAPTIONS,
        corrupt_captions,
        subsample_per_class,
    )

    caps = [f"c{i}" for i in range(200)]
    same, rep = corrupt_captions(caps, 0.0, torch.Generator().manual_seed(0))
    assert same == caps and not bool(rep.any())
    allr, rep = corrupt_captions(caps, 1.0, torch.Generator().manual_seed(0))
    assert bool(rep.all()) and all(c in NEUTRAL_CAPTIONS for c in allr)
    half, rep = corrupt_captions(caps, 0.5, torch.Generator().manual_seed(3))
    for c, o, r in zip(half, caps, rep.tolist(), strict=True):  # replaced exactly where flagged
        assert (c in NEUTRAL_CAPTIONS) if r else (c == o)
    assert half == corrupt_captions(caps, 0.5, torch.Generator().manual_seed(3))[0]
    with pytest.raises(ValueError, match="noise"):
        corrupt_captions(caps, 1.5, torch.Generator())
    labels = torch.tensor([0] * 7 + [1] * 3 + [2] * 9)
    keep = subsample_per_class(labels, 4, torch.Generator().manual_seed(0))
    assert torch.equal(torch.bincount(labels[keep]), torch.tensor([4, 3, 4]))
    assert len(set(keep.tolist())) == len(keep)
    with pytest.raises(ValueError, match="per_class"):
        subsample_per_class(labels, 0, torch.Generator())


def test_bad_options_and_bad_datasets_raise() -> None:
    cfg = load_recipe("clip_digits", ["data.options.colour=1"])
    with pytest.raises(DatasetError, match="colour"):
        build_data(cfg.data)
    cfg = load_recipe("clip_digits", ["data.options.test_fraction=1.5"])
    with pytest.raises(DatasetError, match="test_fraction"):
        build_data(cfg.data)
    with pytest.raises(RecipeError, match="method.proj_dimm"):
        load_recipe("clip_digits", ["method.proj_dimm=3"])
    with pytest.raises(ValueError, match="labels"):
        MultimodalDataset({"image": torch.zeros(3, 1, 8, 8)}, torch.zeros(2))
    with pytest.raises(ValueError, match="items"):
        collate_multimodal([])


def test_clip_on_a_non_multimodal_dataset_raises(tmp_path: Path) -> None:
    from contrastmix.train.pretrain import pretrain

    cfg = load_recipe("clip_digits", [*TINY, "data.name=digits", "data.options={}"])
    with pytest.raises(RecipeError, match="trains on multimodal data; dataset 'digits'"):
        pretrain(cfg, tmp_path / "bad")


def test_fusion_without_image_modality_raises() -> None:
    from contrastmix.models.multimodal import build_fusion

    with pytest.raises(RecipeError, match=r"`method.modalities` must be a list including 'image'"):
        load_recipe("m3col_digits_tri", ["method.modalities=[signal, text]"])
    model_cfg = load_recipe("m3col_digits_tri").model
    with pytest.raises(ValueError, match="image"):
        build_fusion(model_cfg, modalities=["signal", "text"], in_channels=1, num_classes=10,
                     proj_dim=8, hidden_dim=8, dropout=0.0)


@pytest.mark.parametrize(
    ("recipe", "override", "key"),
    [
        ("clip_digits", "method.temperature=0", "temperature"),
        ("clip_digits", "method.proj_dim=0", "proj_dim"),
        ("clip_digits", "method.zero_shot_temperature=-1", "zero_shot_temperature"),
        ("m2mix_digits", "method.alpha=0", "alpha"),
        ("m2mix_digits", "method.mix_temperature=0", "mix_temperature"),
        ("m2mix_digits", "method.weight=-0.1", "weight"),
        ("m2mix_digits", "method.vmix_weight=-1", "vmix_weight"),
        ("m2mix_digits", "method.reduction=max", "reduction"),
        ("concat_digits_tri", "method.dropout=1.0", "dropout"),
        ("concat_digits_tri", "method.modalities=[image, image]", "modalities"),
        ("concat_digits_tri", "method.modalities=[image, audio]", "modalities"),
        ("concat_digits_tri", "method.modalities=[image]", "modalities"),
        ("concat_digits_tri", "method.signal_backbone=resnet18", "signal_backbone"),
        ("concat_digits_tri", "method.hidden_dim=0", "hidden_dim"),
        ("m3col_digits_tri", "method.mix_prob=1.5", "mix_prob"),
        ("m3col_digits_tri", "method.mixup_pct=-0.1", "mixup_pct"),
        ("m3col_digits_tri", "method.temperature=0", "temperature"),
        ("m3col_digits_tri", "method.soft_temperature=0", "soft_temperature"),
        ("m3col_digits_tri", "method.beta_param=0", "beta_param"),
        ("m3col_digits_tri", "method.contrast_weight=-1", "contrast_weight"),
        ("m3col_digits_tri", "method.dropout=-0.1", "dropout"),
    ],
)
def test_method_configs_reject_bad_values_at_load(recipe: str, override: str, key: str) -> None:
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe, [override])
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("invalid method setting:"), msg
    assert f"`method.{key}` must be" in msg, msg


def test_method_configs_accept_edge_values() -> None:
    cfg = load_recipe("m2mix_digits", ["method.weight=0", "method.reduction=mean"])
    assert cfg.method.weight == 0 and cfg.method.reduction == "mean"
    cfg = load_recipe("m3col_digits_tri", ["method.mix_prob=0", "method.mixup_pct=1",
                                           "method.dropout=0", "method.modalities=[text, image]"])
    assert list(cfg.method.modalities) == ["text", "image"]


# ------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from contrastmix.train.pretrain import pretrain

    root = tmp_path_factory.mktemp("mm")
    out = {}
    for method, recipe in RECIPES.items():
        torch.manual_seed(0)
        out[method] = pretrain(load_recipe(recipe, TINY), root / method)
    return out


def _finite(d: dict[str, Any], keys: list[str]) -> None:
    for k in keys:
        assert isinstance(d[k], float) and math.isfinite(d[k]), (k, d[k])


@pytest.mark.parametrize("method", ["clip", "m2mix"])
def test_two_tower_probe(runs: dict[str, Path], method: str) -> None:
    from contrastmix.eval.evaluate import probe_run

    res = probe_run(runs[method])
    json.dumps(res)  # JSON-serialisable
    assert res["task"] == "multimodal" and res["method"] == method
    _finite(res, TWO_TOWER_KEYS)
    bounded = [k for k in TWO_TOWER_KEYS if "hit_rate" in k or k.endswith("map")]
    bounded += ["zero_shot_accuracy", "zero_shot_ece", "zero_shot_confidence"]
    for k in bounded:
        assert 0.0 <= res[k] <= 1.0, k
    assert 0.0 <= res["alignment"] <= 4.0 and res["uniformity_image"] <= 0.0
    assert res["i2t_hit_rate@5"] >= res["i2t_hit_rate@1"]
    p = res["protocol"]
    assert p["retrieval_k"] == [1, 5] and len(p["prompts"]) == 10
    assert p["retrieval_relevance"] == "class"
    for old, new in p["aliases"].items():  # the former names stay readable
        assert res[old] == res[new]
    assert p["zero_shot_temperature"] == pytest.approx(0.07)
    metrics = (runs[method] / "metrics.csv").read_text().splitlines()[0]
    assert "clip_loss" in metrics and "zs_acc" in metrics
    if method == "m2mix":
        assert "m2_loss" in metrics


@pytest.mark.parametrize("method", ["m3col", "concat"])
def test_fusion_probe(runs: dict[str, Path], method: str) -> None:
    from contrastmix.eval.evaluate import probe_run

    res = probe_run(runs[method])
    json.dumps(res)
    assert res["task"] == "multimodal" and res["n_test"] > 400
    _finite(res, ["fusion_accuracy", "fusion_ece", "fusion_nll"])
    assert set(res["unimodal_accuracy"]) == {"image", "signal", "text"}
    assert all(0.0 <= v <= 1.0 for v in res["unimodal_accuracy"].values())
    assert set(res["embedding_geometry"]) == {"image|signal", "signal|text", "text|image"}
    header = (runs[method] / "metrics.csv").read_text().splitlines()[0]
    assert "fusion_acc" in header and "contrast" in header


def test_artifacts_restore_the_trained_model(runs: dict[str, Path]) -> None:
    """backbone.pt + model.pt rebuild exactly the model of the last checkpoint."""
    from contrastmix.eval.multimodal import load_multimodal_model
    from contrastmix.rundir import read_artifacts
    from contrastmix.runs import load_run

    kinds = {"clip": "two_tower", "m2mix": "two_tower", "m3col": "fusion", "concat": "fusion"}
    for method, run in runs.items():
        state = torch.load(run / "model.pt", weights_only=True)
        assert not any(k.startswith(("image_encoder.", "encoders.image.")) for k in state)
        assert not any("auto_model" in k or "sentence" in k for k in state)  # MiniLM not saved
        spec = json.loads((run / "multimodal.json").read_text())
        assert spec["architecture"] == kinds[method] and spec["method"] == method
        assert spec["arguments"]["in_channels"] == 1
        assert {"model.pt", "multimodal.json"} <= set(read_artifacts(run).files)
        cfg = load_run(run)
        model = load_multimodal_model(run, cfg)
        ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
        assert ckpt["hyper_parameters"]["cfg"]["method"]["name"] == method
        ref = {k[len("model."):]: v for k, v in ckpt["state_dict"].items()
               if k.startswith("model.")}
        got = model.state_dict()
        assert set(got) == set(ref), method
        for k in ref:
            assert torch.equal(got[k], ref[k]), (method, k)


def test_probe_zero_shot_matches_a_direct_computation(runs: dict[str, Path]) -> None:
    from contrastmix.eval.calibration import expected_calibration_error
    from contrastmix.eval.evaluate import probe_run
    from contrastmix.eval.multimodal import load_multimodal_model
    from contrastmix.runs import load_run

    run = runs["clip"]
    cfg = load_run(run)
    data = build_data(cfg.data)
    model = load_multimodal_model(run, cfg)
    x = torch.stack([data.test[i][0]["image"] for i in range(len(data.test))])
    y = torch.tensor([data.test[i][1] for i in range(len(data.test))])
    with torch.no_grad():
        cos = model.encode_image(x) @ model.encode_text(data.extras["class_prompts"]).T
    res = probe_run(run)
    assert res["zero_shot_accuracy"] == pytest.approx(float((cos.argmax(1) == y).float().mean()))
    ece = expected_calibration_error(torch.softmax(cos.double() / 0.07, 1), y, 15)
    assert res["zero_shot_ece"] == pytest.approx(ece, abs=1e-6)


def test_missing_or_foreign_artifacts_raise(runs: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    from contrastmix.eval.evaluate import probe_run

    run = tmp_path / "copy"
    shutil.copytree(runs["clip"], run)
    (run / "model.pt").unlink()
    with pytest.raises(RunDirError, match="model.pt"):
        probe_run(run)
    shutil.copy(runs["m3col"] / "model.pt", run / "model.pt")  # another model's heads
    with pytest.raises(CheckpointError, match="model.pt"):
        probe_run(run)
    shutil.copy(runs["clip"] / "model.pt", run / "model.pt")
    spec = json.loads((run / "multimodal.json").read_text())
    (run / "multimodal.json").write_text(json.dumps({**spec, "architecture": "three_tower"}))
    with pytest.raises(CheckpointError, match="three_tower"):
        probe_run(run)
    (run / "multimodal.json").write_text(json.dumps({**spec, "model_file": "../x.pt"}))
    with pytest.raises(RunDirError, match="model_file"):
        probe_run(run)
    (run / "multimodal.json").unlink()
    with pytest.raises(RunDirError, match="multimodal.json"):
        probe_run(run)


def test_resume_refuses_another_method(runs: dict[str, Path]) -> None:
    from contrastmix.train.pretrain import pretrain

    cfg = load_recipe("m2mix_digits", TINY)
    with pytest.raises(CheckpointError, match="clip"):
        pretrain(cfg, runs["clip"], resume=True)


_PROBE_WITHOUT_LIGHTNING = """
import json, sys

class _NoLightning:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("pytorch_lightning", "lightning", "lightning_fabric"):
            raise ImportError(f"blocked in this test: {name}")
        return None

sys.meta_path.insert(0, _NoLightning())
from contrastmix.cli import main

rc = main(["probe", sys.argv[1], "--json"])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in (
    "pytorch_lightning", "lightning", "lightning_fabric")
    or m.startswith(("contrastmix.methods", "contrastmix.train")))
print(json.dumps({"rc": rc, "loaded": loaded}))
"""


@pytest.mark.parametrize("method", ["clip", "concat"])
def test_probe_needs_neither_lightning_nor_training_code(runs: dict[str, Path],
                                                         method: str) -> None:
    """``contrastmix probe`` of a multimodal run works where Lightning cannot be imported, and
    loads neither ``contrastmix.methods`` nor ``contrastmix.train``."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", _PROBE_WITHOUT_LIGHTNING, str(runs[method])],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.strip().splitlines()
    status = json.loads(lines[-1])
    assert status == {"rc": 0, "loaded": []}, res.stderr[-3000:]
    probe = json.loads("\n".join(lines[:-1]))
    assert probe["task"] == "multimodal" and probe["method"] == method
    if method == "clip":
        assert probe["architecture"] == "two_tower" and "zero_shot_accuracy" in probe
    else:
        assert probe["architecture"] == "fusion" and "fusion_accuracy" in probe
