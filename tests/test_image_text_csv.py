"""Users' image-caption pairs (``image-text-csv``): the file checks, the bundle, the CLI route
(``contrastmix pretrain clip_csv|m2mix_csv --set data.path=...`` then ``contrastmix probe``), and
the retrieval / calibration metrics against torchmetrics as the oracle."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from contrastmix.cli import main
from contrastmix.data.image_text_csv import ImageTextCSV, build_image_text_csv, encode_labels
from contrastmix.errors import DatasetError

COLOURS = {"red": (230, 20, 20), "blue": (20, 20, 230), "green": (20, 230, 20)}
TINY = [
    "trainer.num_threads=1", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
    "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "model.width=8",
    "data.batch_size=8", "data.image_size=16", "eval.knn_every_n_epochs=1",
]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    """One thread here (small tensors on 2 shared cores); conftest restores the count."""
    torch.set_num_threads(1)


def write_pairs(folder: Path, n: int = 20, *, labels: bool = True, bom: bool = True,
                sub: str = "img") -> Path:
    """``n`` tiny distinct PNGs of three colours (different sizes, resized by the bundle) in
    ``folder/sub`` and ``folder/pairs.csv`` with image, caption (and label) columns."""
    from PIL import Image

    (folder / sub).mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    rows = ["image,caption" + (",label" if labels else "")]
    for i in range(n):
        c = names[i % 3]
        im = Image.new("RGB", (10 + i % 4, 8 + i % 3), color=COLOURS[c])
        im.putpixel((i % 7, i % 5), (10 * i, 255 - 10 * i, 128))  # no two images alike
        im.save(folder / sub / f"{i}.png")
        cap = f'"a {c} patch, number {i}"'
        rows.append(f"{sub}/{i}.png,{cap}" + (f",{c}" if labels else ""))
    path = folder / "pairs.csv"
    path.write_text(("\ufeff" if bom else "") + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def _cfg(path: Path, **options: Any) -> SimpleNamespace:
    from contrastmix.config import ImageAugConfig

    return SimpleNamespace(name="image-text-csv", path=str(path), seed=0, image_size=16,
                           options=options, image_aug=ImageAugConfig())


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("contrastmix: error: "), err
    return err


# ------------------------------------------------------------------------------ the bundle
def test_bundle_resizes_encodes_label_names_and_splits(tmp_path: Path) -> None:
    path = write_pairs(tmp_path)
    data = build_image_text_csv(_cfg(path))
    assert data.task == "multimodal" and data.in_channels == 3 and data.num_classes == 3
    assert len(data.train) == 16 and len(data.test) == 4  # test_fraction 0.2, seeded
    ex = data.extras
    assert ex["retrieval"] == "instance" and tuple(ex["retrieval_ks"]) == (1, 5, 10)
    assert ex["class_names"] == ["blue", "green", "red"]  # names, sorted
    assert ex["class_prompts"] == ["a photo of a blue", "a photo of a green", "a photo of a red"]
    inputs, y, idx = data.collate_fn([data.test[i] for i in range(len(data.test))])
    assert inputs["image"].shape == (4, 3, 16, 16) and inputs["image"].dtype == torch.float32
    assert float(inputs["image"].min()) >= 0 and float(inputs["image"].max()) <= 1
    for img, cap, c in zip(inputs["image"], inputs["text"], y.tolist(), strict=True):
        name = ex["class_names"][c]
        assert f"a {name} patch" in cap  # caption, label and pixels of the same row
        rgb = img.mean(dim=(1, 2))
        assert int(rgb.argmax()) == {"red": 0, "green": 1, "blue": 2}[name]
    assert torch.equal(idx, torch.arange(4))
    train_caps = {data.train[i][0]["text"] for i in range(len(data.train))}
    assert not train_caps & set(inputs["text"])  # disjoint split
    u = build_image_text_csv(_cfg(write_pairs(tmp_path / "u", labels=False)))
    assert u.num_classes == 0 and not u.extras["labelled"] and "class_prompts" not in u.extras
    assert u.test[0][1] == -1
    assert encode_labels(["3", "0", "3"]) == ([3, 0, 3], ["0", "1", "2", "3"])
    j = tmp_path / "u" / "pairs.jsonl"  # JSONL: numbers as labels, the former column name
    j.write_text("\n".join(json.dumps({"image_path": f"img/{i}.png", "caption": f"c{i}",
                                       "label": float(i % 2)}) for i in range(3)) + "\n")
    assert ImageTextCSV(j).labels.tolist() == [0, 1, 0]
    with pytest.raises(DatasetError, match="prompt_template"):
        build_image_text_csv(_cfg(path, prompt_template="a photo"))
    with pytest.raises(DatasetError, match="unknown data.options"):
        build_image_text_csv(_cfg(path, colour=1))


def _bad_file(tmp_path: Path, case: str) -> tuple[Path, list[str]]:
    """A pairs file with one problem, and what the one-line message must say."""
    path = write_pairs(tmp_path, n=6)
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    if case == "escape":
        (tmp_path.parent / "outside.png").write_bytes((tmp_path / "img" / "0.png").read_bytes())
        lines[3] = "../outside.png,x,red"
        expect = ["row 3 (line 4)", "column 'image'", "'../outside.png' leads out of"]
    elif case == "absolute":
        lines[2] = f"{tmp_path / 'img' / '1.png'},x,red"
        expect = ["row 2 (line 3)", "column 'image'", "absolute path"]
    elif case == "symlink":
        os.symlink(tmp_path.parent, tmp_path / "img" / "up")
        lines[2] = "img/up/x.png,x,red"
        expect = ["row 2 (line 3)", "'img/up/x.png' leads out of"]
    elif case == "missing":
        lines[4] = "img/nope.png,x,red"
        expect = ["1 image file(s) not found", "row 4 (line 5): img/nope.png"]
    elif case == "unreadable":
        (tmp_path / "img" / "2.png").write_bytes(b"not a png")
        expect = ["row 3, column 'image'", "cannot read image", "2.png"]
    elif case == "caption":
        lines[5] = "img/4.png,  ,red"
        expect = ["row 5 (line 6), column 'caption'", "empty"]
    elif case == "label":
        lines[1] = "img/0.png,x,"
        expect = ["row 1 (line 2), column 'label'", "every record"]
    elif case == "fields":
        lines[2] = "img/1.png,a, b,red"
        expect = ["row 2 (line 3) has 4 fields, the header has 3", "quote"]
    elif case == "column":
        lines[0] = "picture,caption,label"
        expect = ["missing column(s) ['image']"]
    else:
        assert case == "encoding"
        path.write_bytes(b"image,caption\nimg/0.png,caf\xe9\n")
        return path, ["not UTF-8"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, expect


BAD = ["escape", "absolute", "symlink", "missing", "unreadable", "caption", "label", "fields",
       "column", "encoding"]


@pytest.mark.parametrize("case", BAD)
def test_bad_pairs_files_fail_in_one_line_naming_file_and_row(tmp_path: Path, case: str) -> None:
    path, expect = _bad_file(tmp_path / "d", case)
    with pytest.raises(DatasetError) as info:
        build_image_text_csv(_cfg(path))
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(str(path)), msg
    for e in expect:
        assert e in msg, msg


def test_bad_pairs_file_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    path, expect = _bad_file(tmp_path / "d", "escape")
    run = tmp_path / "run"
    line = _error(capsys, ["pretrain", "clip_csv", "--out", str(run), "--set",
                           f"data.path={path}", *TINY])
    assert str(path) in line and all(e in line for e in expect), line
    assert not (run / "config.yaml").exists()
    line = _error(capsys, ["pretrain", "m2mix_csv", "--out", str(run)])
    assert "data.path is required for dataset 'image-text-csv'" in line


def test_images_failing_after_the_check_name_the_row(tmp_path: Path) -> None:
    path = write_pairs(tmp_path, n=4, bom=False)
    ds = ImageTextCSV(path)
    (tmp_path / "img" / "1.png").write_bytes(b"truncated")
    with pytest.raises(DatasetError, match=r"pairs\.csv: row 2, column 'image': cannot read"):
        ds[1]


# ------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def csv_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """clip_csv on labelled pairs and m2mix_csv on unlabelled ones, through the CLI, and their
    ``contrastmix probe RUN --json`` results."""
    import contextlib
    import io

    root = tmp_path_factory.mktemp("pairs")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    out: dict[str, Any] = {}
    try:
        for recipe, labels in (("clip_csv", True), ("m2mix_csv", False)):
            path = write_pairs(root / recipe, labels=labels)
            run = root / f"run_{recipe}"
            assert main(["pretrain", recipe, "--out", str(run), "--set", f"data.path={path}",
                         *TINY]) == 0
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                assert main(["probe", str(run), "--json"]) == 0
            out[recipe] = (run, json.loads(buf.getvalue().strip().splitlines()[-1]))
    finally:
        torch.set_num_threads(n)
    return out


def test_clip_csv_probe_reports_instance_retrieval_and_zero_shot(
    csv_runs: dict[str, Any]
) -> None:
    from contrastmix.cli import _probe_lines

    run, res = csv_runs["clip_csv"]
    assert res["dataset"] == "image-text-csv" and res["method"] == "clip" and res["n_test"] == 4
    keys = [f"{d}_hit_rate@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)]
    keys += ["i2t_map", "t2i_map", "zero_shot_accuracy", "zero_shot_ece", "zero_shot_nll"]
    for k in keys:
        assert isinstance(res[k], float) and math.isfinite(res[k]), k
        assert 0.0 <= res[k] <= 1.0 or k == "zero_shot_nll", k
    assert res["i2t_hit_rate@5"] == 1.0  # 4 test pairs: k clamped to the gallery
    p = res["protocol"]
    assert p["retrieval_relevance"] == "instance" and p["retrieval_k"] == [1, 5, 10]
    assert p["prompts"] == ["a photo of a blue", "a photo of a green", "a photo of a red"]
    assert res["i2t_recall@1"] == res["i2t_hit_rate@1"]  # the former name, an alias
    header = (run / "metrics.csv").read_text().splitlines()[0]
    assert "zs_acc" in header and "clip_loss" in header
    text = "\n".join(_probe_lines(res))
    assert "(instance-level) hit rate image->text @1" in text and "@10" in text
    assert "zero-shot accuracy:" in text


def test_m2mix_csv_without_labels_reports_retrieval_only(csv_runs: dict[str, Any]) -> None:
    from contrastmix.cli import _probe_lines

    run, res = csv_runs["m2mix_csv"]
    assert res["method"] == "m2mix" and res["protocol"]["retrieval_relevance"] == "instance"
    assert not any(k.startswith("zero_shot") for k in res)
    assert "not measured" in res["protocol"]["zero_shot"]
    assert all(0.0 <= res[f"t2i_hit_rate@{k}"] <= 1.0 for k in (1, 5, 10))
    header = (run / "metrics.csv").read_text().splitlines()[0]
    assert "i2t_hit_rate@1" in header and "m2_loss" in header  # the unlabelled monitor
    assert "not measured (the data has no labels)" in "\n".join(_probe_lines(res))


def test_probe_matches_torchmetrics_on_the_runs_embeddings(csv_runs: dict[str, Any]) -> None:
    from torchmetrics.retrieval import RetrievalHitRate

    from contrastmix.data.registry import build_data
    from contrastmix.eval.multimodal import load_multimodal_model
    from contrastmix.runs import load_run

    run, res = csv_runs["clip_csv"]
    cfg = load_run(run)
    data = build_data(cfg.data)
    inputs, _, _ = data.collate_fn([data.test[i] for i in range(len(data.test))])
    model = load_multimodal_model(run, cfg)
    with torch.no_grad():
        sim = model.encode_image(inputs["image"]).double() @ model.encode_text(
            inputs["text"]).double().T
    n = sim.shape[0]
    target = torch.eye(n, dtype=torch.bool)
    idx = torch.arange(n)[:, None].expand(n, n)
    for k in (1, 5, 10):
        for d, s in (("i2t", sim), ("t2i", sim.T)):
            hit = RetrievalHitRate(top_k=k)(s.reshape(-1), target.reshape(-1), idx.reshape(-1))
            assert res[f"{d}_hit_rate@{k}"] == pytest.approx(float(hit), abs=1e-6)


# ------------------------------------------------------------------ metrics vs torchmetrics
def _tm_retrieval(sim: torch.Tensor, rel: torch.Tensor, k: int | None) -> tuple[float, float]:
    """torchmetrics hit rate@k (empty queries count as misses) and mAP (empty queries skip)."""
    from torchmetrics.retrieval import RetrievalHitRate, RetrievalMAP

    q, g = sim.shape
    idx = torch.arange(q)[:, None].expand(q, g).reshape(-1)
    hit = RetrievalHitRate(top_k=k, empty_target_action="neg")(sim.reshape(-1), rel.reshape(-1),
                                                               idx)
    rel_any = rel.any(dim=1)
    keep = rel_any[:, None].expand(q, g).reshape(-1)
    m = RetrievalMAP(empty_target_action="skip")(sim.reshape(-1)[keep], rel.reshape(-1)[keep],
                                                 idx[keep])
    return float(hit), float(m)


@pytest.mark.parametrize("ties", [False, True])
def test_retrieval_matches_torchmetrics(ties: bool) -> None:
    """Continuous scores: equal to torchmetrics (shifted positive, see below). Tied scores
    (integers 0..3, many duplicates): our ranking puts non-relevant items first among equals,
    which torchmetrics (whose order among ties is unspecified) computes when every relevant
    score is lowered by less than the gap between distinct scores."""
    from contrastmix.eval.multimodal import mean_average_precision, retrieval_hit_rate

    g = torch.Generator().manual_seed(3)
    for trial in range(4):
        q, n = 11 + trial, 9 + 2 * trial
        sim = (torch.randint(0, 4, (q, n), generator=g).double() if ties
               else torch.randn(q, n, generator=g, dtype=torch.float64))
        qy = torch.randint(0, 4, (q,), generator=g)
        gy = torch.randint(0, 4, (n,), generator=g)
        rel = qy[:, None] == gy[None, :]
        oracle_sim = sim - 0.5 * rel.double() if ties else sim
        # torchmetrics 1.9's average precision treats an item with score <= 0 as non-relevant;
        # a shift keeps every ranking (ours is invariant) and makes all scores positive
        oracle_sim = oracle_sim - oracle_sim.min() + 1.0
        ours = retrieval_hit_rate(sim, qy, gy, ks=(1, 3, 5, 100))
        for k in (1, 3, 5, 100):
            hit, _ = _tm_retrieval(oracle_sim, rel, k)
            assert ours[k] == pytest.approx(hit, abs=1e-6), (trial, k)  # theirs: float32
        _, m = _tm_retrieval(oracle_sim, rel, None)
        assert mean_average_precision(sim, qy, gy) == pytest.approx(m, abs=1e-6)
    # instance level with a duplicated caption: the tie is a miss for both images
    sim = torch.tensor([[0.9, 0.9, 0.1], [0.9, 0.9, 0.1], [0.0, 0.2, 0.8]])
    inst = torch.arange(3)
    assert retrieval_hit_rate(sim, inst, inst, ks=(1, 2))[1] == pytest.approx(1 / 3)
    assert retrieval_hit_rate(sim, inst, inst, ks=(1, 2))[2] == 1.0


def _ece_left_closed(conf: torch.Tensor, correct: torch.Tensor, n_bins: int) -> float:
    """torchmetrics' binning, written out: bins [b/n, (b+1)/n) and a bin of its own for 1.0."""
    total = 0.0
    for b in range(n_bins + 1):
        lo, hi = b / n_bins, (b + 1) / n_bins
        m = (conf >= lo) & (conf < hi) if b < n_bins else conf == 1.0
        if m.any():
            total += float(m.double().mean() * (correct[m].double().mean() - conf[m].mean()).abs())
    return total


def test_ece_matches_torchmetrics_and_the_binning_difference_is_exact() -> None:
    """Softmax outputs (no confidence on a bin edge): our ECE equals torchmetrics'
    MulticlassCalibrationError(norm='l1'). Confidences exactly on edges: we bin (lo, hi]
    (Guo et al.), torchmetrics [lo, hi) with 1.0 alone; its value is the left-closed sum."""
    from torchmetrics.classification import MulticlassCalibrationError

    from contrastmix.eval.calibration import expected_calibration_error

    g = torch.Generator().manual_seed(0)
    for n_bins in (1, 5, 15):
        logits = torch.randn(400, 5, generator=g, dtype=torch.float64) * 3
        y = torch.randint(0, 5, (400,), generator=g)
        tm = MulticlassCalibrationError(num_classes=5, n_bins=n_bins, norm="l1")(
            torch.softmax(logits, 1), y)
        assert expected_calibration_error(logits, y, n_bins, logits=True) == pytest.approx(
            float(tm), abs=1e-6)  # theirs: float32
    # confidences 0.5 and 0.75 sit on edges of 4 bins (exact in binary), 1.0 on the last one
    probs = torch.tensor([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25], [0.75, 0.25, 0.0],
                          [0.9, 0.1, 0.0], [1.0, 0.0, 0.0], [0.6, 0.4, 0.0]], dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 0, 1, 0])
    ours = expected_calibration_error(probs, y, 4)
    tm = float(MulticlassCalibrationError(num_classes=3, n_bins=4, norm="l1")(probs, y))
    conf, pred = probs.max(dim=1)
    assert tm == pytest.approx(_ece_left_closed(conf, pred == y, 4), abs=1e-6)
    # ours: (.25,.5] {.5 ok, .5 wrong}, (.5,.75] {.75 ok, .6 ok}, (.75,1] {.9 ok, 1.0 wrong}
    expect = (2 * abs(0.5 - 0.5) + 2 * abs(1 - 0.675) + 2 * abs(0.5 - 0.95)) / 6
    assert ours == pytest.approx(expect, abs=1e-12) and abs(ours - tm) > 1e-3
