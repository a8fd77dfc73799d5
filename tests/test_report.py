"""``contrastmix report``: the similarity maths, and a real MoCHi run rendered end to end.

The module-scoped fixture trains a tiny MoCHi run (2 epochs x 3 steps, mixing from epoch 2)
so that every section has content, adds per-epoch feature files, writes the report once and
(when Debian's ``chromium`` is installed) renders it headless: every <img> must load.

The report reads what the run lists in ``artifacts.json`` (projector, key encoder, queue,
synthetic negatives, curve markers, expected metrics), never ``checkpoints/last.ckpt``, and
``probe`` / ``report`` work in a process where Lightning and the training code cannot be
imported.
"""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import contrastmix.eval.report as report_mod
from contrastmix.errors import RunDirError
from contrastmix.eval.collapse import neural_collapse
from contrastmix.eval.report import (
    SIMILARITY_BINS,
    SimilarityHistogram,
    batch_similarities,
    load_epoch_features,
    read_metrics_csv,
    write_report,
)
from contrastmix.mixing.mochi import mochi_negatives

SHORT = [
    "trainer.max_epochs=2", "trainer.limit_train_batches=3", "trainer.enable_progress_bar=false",
    "method.queue_size=512", "method.warmup_epochs=1", "method.num_hard=64",
    "method.num_mix=48", "method.num_query_mix=16", "eval.knn_every_n_epochs=1",
    "eval.probe_max_iter=10", "data.eval_batch_size=2048",
]
FIGURES = ("training_curves", "umap", "similarities", "epoch_geometry", "reliability")
MAX_POINTS = 300


# ------------------------------------------------------------------------------ unit level
def _unit(*shape: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, dtype=torch.float64), dim=-1)


def test_batch_similarities_against_loops(monkeypatch: pytest.MonkeyPatch) -> None:
    q, k, queue = _unit(6, 5), _unit(6, 5), _unit(9, 5)
    # tiny chunks: the queue similarities are computed 1 query row at a time
    monkeypatch.setattr(report_mod, "_NEG_CHUNK_ELEMENTS", 4)
    out = batch_similarities(3.0 * q, k, 2.0 * queue)  # normalised inside
    pos = [float(q[i] @ k[i]) for i in range(6)]
    neg = [float(q[i] @ queue[j]) for i in range(6) for j in range(9)]
    torch.testing.assert_close(out["positive"], torch.tensor(pos, dtype=torch.float64))
    torch.testing.assert_close(out["negative"], torch.tensor(neg, dtype=torch.float64))
    hard = [max(float(q[i] @ queue[j]) for j in range(9)) for i in range(6)]
    torch.testing.assert_close(out["hardest_negative"], torch.tensor(hard, dtype=torch.float64))

    # no queue: the other keys of the batch, never the sample's own key
    inb = batch_similarities(q, k)
    ref = sorted(float(q[i] @ k[j]) for i in range(6) for j in range(6) if i != j)
    torch.testing.assert_close(inb["negative"].sort().values,
                               torch.tensor(ref, dtype=torch.float64))
    hard_inb = [max(float(q[i] @ k[j]) for j in range(6) if j != i) for i in range(6)]
    torch.testing.assert_close(inb["hardest_negative"],
                               torch.tensor(hard_inb, dtype=torch.float64))


def test_batch_similarities_mochi_matches_materialised_negatives() -> None:
    q, k, queue = _unit(4, 8).float(), _unit(4, 8).float(), _unit(20, 8).float()
    out = batch_similarities(q, k, queue, mochi=(5, 7, 3),
                             generator=torch.Generator().manual_seed(3))
    h = mochi_negatives(q, queue, 5, 7, 3, generator=torch.Generator().manual_seed(3))
    ref = torch.stack([h[b] @ q[b] for b in range(4)])  # [B, s + s']
    torch.testing.assert_close(out["synthetic_type1"], ref[:, :7].reshape(-1))
    torch.testing.assert_close(out["synthetic_type2"], ref[:, 7:].reshape(-1))
    # N = 1: every type-1 mixture is the query's hardest queue entry itself
    one = batch_similarities(q, k, queue, mochi=(1, 4, 0))
    hardest = (q @ queue.T).amax(dim=1)
    torch.testing.assert_close(one["synthetic_type1"].reshape(4, 4),
                               hardest[:, None].expand(4, 4), rtol=1e-5, atol=1e-5)
    assert one["synthetic_type2"].numel() == 0
    with pytest.raises(ValueError, match="queue"):
        batch_similarities(q, k, None, mochi=(5, 7, 3))
    with pytest.raises(ValueError, match="k"):
        batch_similarities(q, k[:3])
    with pytest.raises(ValueError, match="q"):
        batch_similarities(torch.full((4, 8), float("nan")), k)


def test_similarity_histogram_matches_numpy() -> None:
    # values strictly inside bins (away from the edges) and two out-of-range values
    centres = -1 + (torch.randint(0, SIMILARITY_BINS, (500,)).double() + 0.5) * (2 / 200)
    h = SimilarityHistogram()
    h.add(centres[:300])
    h.add(centres[300:])
    h.add(torch.tensor([float("nan"), float("inf")]))  # ignored (not finite)
    ref, edges = np.histogram(centres.numpy(), bins=SIMILARITY_BINS, range=(-1.0, 1.0))
    np.testing.assert_array_equal(h.counts, ref)
    np.testing.assert_allclose(h.edges, edges)
    assert h.total == 500 and h.mean == pytest.approx(float(centres.mean()))
    dens, e = h.density()
    assert float((dens * np.diff(e)).sum()) == pytest.approx(1.0)
    dens5, e5 = h.density(5)
    assert len(dens5) == 40 and len(e5) == 41
    np.testing.assert_allclose(dens5 * 5, dens.reshape(-1, 5).sum(1) * 1.0)
    assert SIMILARITY_BINS % h.auto_merge() == 0
    with pytest.raises(ValueError, match="merge"):
        h.density(3)
    clipped = SimilarityHistogram()
    clipped.add(torch.tensor([-3.0, 1.0, 2.0]))  # clamped into the first / last bin
    assert clipped.counts[0] == 1 and clipped.counts[-1] == 2


def test_read_metrics_csv_skips_empty_cells(tmp_path: Path) -> None:
    p = tmp_path / "metrics.csv"
    p.write_text("epoch,step,knn_acc,train_loss_step\n,0,,\n0,9,,6.5\n0,14,0.61,\n")
    rows = read_metrics_csv(p)
    assert rows == [{"step": 0.0}, {"epoch": 0.0, "step": 9.0, "train_loss_step": 6.5},
                    {"epoch": 0.0, "step": 14.0, "knn_acc": 0.61}]
    assert report_mod._steps_per_epoch(rows) == 15.0


# ------------------------------------------------------------------------------ a real run
def _write_epoch_features(run: Path) -> dict[int, float]:
    """Three epochs of features whose classes tighten; returns the expected NC1 per epoch."""
    g = torch.Generator().manual_seed(0)
    means = 3.0 * torch.randn(5, 12, generator=g)
    labels = torch.arange(100) % 5
    folder = run / "features"
    folder.mkdir()
    expected = {}
    for epoch in (1, 2, 3):
        x = means[labels] + torch.randn(100, 12, generator=g) / epoch
        torch.save({"features": x, "labels": labels}, folder / f"epoch_{epoch:04d}.pt")
        expected[epoch] = float(neural_collapse(x.double(), labels)["nc1"])
    torch.save({"features": torch.zeros(3)}, folder / "epoch_0009.pt")  # malformed: skipped
    (folder / "epoch_last.pt").write_bytes(b"x")  # not epoch_<int>: skipped
    return expected


@pytest.fixture(scope="module")
def mochi_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, float]]:
    from contrastmix.recipe import load_recipe
    from contrastmix.train.pretrain import pretrain

    run = tmp_path_factory.mktemp("report") / "mochi"
    pretrain(load_recipe("mochi_mnist1d", SHORT), run)
    return run, _write_epoch_features(run)


@pytest.fixture(scope="module")
def report(mochi_run: tuple[Path, dict[int, float]]) -> tuple[Path, list[str]]:
    run, _ = mochi_run
    lines: list[str] = []
    path = write_report(run, run / "out", max_points=MAX_POINTS, log=lines.append)
    return path, lines


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", data[16:24])
    return w, h


def test_every_section_has_an_embedded_figure(report: tuple[Path, list[str]]) -> None:
    path, _ = report
    page = path.read_text()
    assert path.name == "report.html"
    for name in FIGURES:
        m = re.search(rf'<img id="fig-{name}" src="data:image/png;base64,([A-Za-z0-9+/=]+)"',
                      page)
        assert m is not None, f"no embedded figure {name}"
        data = base64.b64decode(m.group(1))
        assert data == (path.parent / f"{name}.png").read_bytes()  # same PNG saved next to it
        w, h = _png_size(data)
        assert w > 200 and h > 200
    assert page.count("<img ") == len(FIGURES)
    # self-contained: nothing fetched from elsewhere
    assert not re.search(r'src="(?!data:)', page) and "<link" not in page
    assert "<script" not in page
    assert 'class="note error"' not in page, "a section failed"


def test_metrics_and_similarity_tables(report: tuple[Path, list[str]]) -> None:
    page = report[0].read_text()
    for row in ("linear probe accuracy", "kNN accuracy", "uniformity (backbone)",
                "alignment (positive pairs)", "effective rank (backbone)", "NC1",
                "NC2 equinorm", "NC2 equiangular", "uniformity (embedding)",
                "synthetic type 1 (two hard negatives)",
                "synthetic type 2 (query + hard negative)", "negative: queue (512 keys)"):
        assert html.escape(row) in page, row
    acc = re.search(r"<td>linear probe accuracy</td><td>([0-9.]+)</td>", page)
    assert acc is not None and 0.2 < float(acc.group(1)) <= 1.0
    # the progress lines name each long step
    _, lines = report
    text = "\n".join(lines)
    for needle in ("extracting backbone features", "linear probe on 4000 train / 1000 test",
                   f"umap of {MAX_POINTS} test embeddings",
                   f"similarities of {MAX_POINTS} augmented test pairs",
                   "MoCHi N=64 s=48 s'=16", "geometry of 3 per-epoch feature files",
                   "done in", "wrote "):
        assert needle in text, needle


def test_per_epoch_curves_from_feature_files(
    mochi_run: tuple[Path, dict[int, float]], report: tuple[Path, list[str]]
) -> None:
    run, expected = mochi_run
    entries, problems = load_epoch_features(run)
    assert [e for e, _, _ in entries] == [1, 2, 3]
    assert len(problems) == 2 and any("epoch_last.pt" in p for p in problems)
    assert any("epoch_0009.pt" in p for p in problems)
    assert expected[3] < expected[2] < expected[1]  # the classes tighten
    page = report[0].read_text()
    for epoch, nc1 in expected.items():
        assert f"<td>{epoch}</td>" in page and report_mod._fmt(nc1) in page
    assert "skipped epoch_0009.pt" in page


def test_report_renders_in_headless_chromium(
    report: tuple[Path, list[str]], tmp_path: Path
) -> None:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("chromium is not installed (Debian package `chromium`, installed by .ci/run)")
    page = report[0].read_text()
    check = (
        "<script>window.addEventListener('load', function () {"
        "var out = document.createElement('pre'); out.id = 'img-check';"
        "out.textContent = JSON.stringify(Array.prototype.map.call(document.images,"
        " function (i) { return {id: i.id, ok: i.complete && i.naturalWidth > 0,"
        " w: i.naturalWidth}; }));"
        "document.body.appendChild(out); });</script>"
    )
    copy = tmp_path / "report_check.html"
    copy.write_text(page.replace("</body>", check + "</body>"))
    base = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=5000"]
    res = subprocess.run([*base, "--dump-dom", copy.as_uri()], capture_output=True,
                         text=True, timeout=180)
    m = re.search(r'<pre id="img-check">(.*?)</pre>', res.stdout, re.S)
    assert m is not None, res.stderr[-2000:]
    images = json.loads(html.unescape(m.group(1)))
    assert sorted(i["id"] for i in images) == sorted(f"fig-{n}" for n in FIGURES)
    assert all(i["ok"] for i in images), images
    for i in images:  # decoded at the size of the saved PNG
        png = (report[0].parent / f"{i['id'][4:]}.png").read_bytes()
        assert i["w"] == _png_size(png)[0]

    shot = tmp_path / "report.png"
    subprocess.run([*base, "--hide-scrollbars", "--window-size=1200,3000",
                    f"--screenshot={shot}", report[0].as_uri()], capture_output=True,
                   timeout=180)
    assert _png_size(shot.read_bytes()) == (1200, 3000)
    from matplotlib.image import imread

    pixels = imread(str(shot))
    assert float(pixels.std()) > 0.05  # not a blank page


def test_missing_pieces_become_notes_and_a_failure_an_error_note(
    mochi_run: tuple[Path, dict[int, float]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, _ = mochi_run
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.yaml", "backbone.pt"):
        shutil.copy(run / name, bare / name)

    def boom(ctx: object) -> None:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(report_mod, "_section_umap", boom)
    lines: list[str] = []
    path = write_report(bare, max_points=64, log=lines.append)
    assert path == bare / "report" / "report.html"
    page = path.read_text()
    for note in ("no metrics.csv", "no artifacts.json in the run directory", "no run.json",
                 "saved no per-epoch features"):
        assert note in page, note
    # the failing section is an error note (first line only); the others are all there
    assert page.count('class="note error"') == 1
    assert "Failed: RuntimeError: boom</p>" in page
    assert "section 'UMAP of test embeddings' failed: RuntimeError: boom" in lines
    assert 'id="fig-umap"' not in page and 'id="fig-reliability"' in page
    # the similarities fall back to online backbone features and in-batch negatives
    assert 'id="fig-similarities"' in page and "other keys of the batch" in page
    assert "backbone features" in page and 'id="fig-training_curves"' not in page


def test_regression_run(tmp_path: Path) -> None:
    """A regression run: UMAP coloured by the target, ridge probe, no kNN / NC / reliability."""
    from contrastmix.recipe import load_recipe
    from contrastmix.train.pretrain import pretrain

    run = tmp_path / "rnc"
    pretrain(load_recipe("rnc_diabetes", ["trainer.max_epochs=1", "eval.probe_max_iter=10"]),
             run)
    page = write_report(run, max_points=64, log=lambda m: None).read_text()
    assert 'class="note error"' not in page
    for fig in ("training_curves", "umap", "similarities"):
        assert f'<img id="fig-{fig}" src="data:image/png;base64,' in page, fig
    assert "coloured by the regression target" in page
    for row in ("linear probe MAE", "linear probe MSE", "distance Spearman rho",
                "alignment (positive pairs)", "effective rank (backbone)"):
        assert row in page, row
    for row in ("kNN accuracy", "NC1", 'id="fig-reliability"'):
        assert row not in page, row
    assert "calibration applies to classification runs only" in page
    assert "other keys of the batch" in page  # no queue: in-batch negatives


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="max_points"):
        write_report("/nonexistent", max_points=2)
    with pytest.raises(RunDirError, match="does not exist"):
        write_report("/nonexistent/run")


# ------------------------------------------------------------------------------ artefacts
def _copy_run(run: Path, dest: Path, names: tuple[str, ...]) -> Path:
    dest.mkdir()
    for name in names:
        shutil.copy(run / name, dest / name)
    return dest


def test_report_reads_the_listed_artifacts_never_the_checkpoint(
    mochi_run: tuple[Path, dict[int, float]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without checkpoints/ the similarities still use the projector, key encoder, queue and
    synthetic negatives listed in artifacts.json; curve markers and expected metrics too."""
    from matplotlib.axes import Axes

    run, _ = mochi_run
    art = json.loads((run / "artifacts.json").read_text())
    assert art["projector"] == "projector.pt" and art["queue"] == "queue.pt"
    files = ("config.yaml", "backbone.pt", "run.json", "metrics.csv", "projector.pt",
             "key_encoder.pt", "queue.pt")
    copy = _copy_run(run, tmp_path / "nockpt", files)
    art["synthetic_negatives"]["from_epoch"] = 5  # later than the 2 epochs trained
    art["expected_metrics"] = [*art["expected_metrics"], "made_up_metric"]
    art["curve_markers"].append({"epoch": 1, "label": "second marker"})  # every panel
    (copy / "artifacts.json").write_text(json.dumps(art))
    lines: list[str] = []
    seen: list[str] = []
    load = torch.load
    monkeypatch.setattr(torch, "load", lambda f, *a, **k: seen.append(str(f)) or load(f, *a, **k))
    markers: list[tuple[float, str]] = []
    axvline = Axes.axvline
    monkeypatch.setattr(Axes, "axvline", lambda ax, x=0, *a, **k: markers.append(
        (x, k.get("label"))) or axvline(ax, x, *a, **k))
    page = write_report(copy, max_points=128, log=lines.append).read_text()
    assert 'class="note error"' not in page
    assert not any("last.ckpt" in p for p in seen)
    for name in ("projector.pt", "key_encoder.pt", "queue.pt", "backbone.pt"):
        assert any(p.endswith(name) for p in seen), name
    for needle in ("negative: queue (512 keys)", "momentum (key) encoder",
                   "projector embeddings", "synthetic type 1 (two hard negatives)",
                   "mixing never started in this run (2 epochs trained, mixing from epoch 5)",
                   "no made_up_metric was logged", "projector.pt, key_encoder.pt, queue.pt"):
        assert html.escape(needle) in page, needle
    assert "no proxy-task accuracy was logged" not in page  # it was
    # MoCHi's marker on the loss and proxy-accuracy panels, the extra one on every panel
    assert markers.count((1, "MoCHi mixing starts")) == 2
    assert markers.count((1, "second marker")) >= 4
    assert "MoCHi N=64 s=48 s'=16" in "\n".join(lines)


def test_read_artifacts_refuses_names_outside_the_run(tmp_path: Path) -> None:
    from contrastmix.rundir import RunArtifacts, read_artifacts, write_artifacts

    assert read_artifacts(tmp_path) == RunArtifacts()  # none written: empty
    for bad in ({"queue": "../x.pt"}, {"projector": "/etc/passwd"},
                {"files": {"sub/../../x.pt": "weights"}}):
        (tmp_path / "artifacts.json").write_text(json.dumps(bad))
        with pytest.raises(RunDirError, match="outside the run directory") as info:
            read_artifacts(tmp_path)
        assert "\n" not in str(info.value)
    (tmp_path / "artifacts.json").write_text('{"projector": "p.pt", "colour": 1}')
    with pytest.raises(RunDirError, match="not a valid artifacts file"):
        read_artifacts(tmp_path)
    write_artifacts(tmp_path, RunArtifacts(projector="sub/p.pt", queue="q.pt"))
    assert read_artifacts(tmp_path) == RunArtifacts(projector="sub/p.pt", queue="q.pt")


def test_report_of_a_run_that_lists_no_projector(
    mochi_run: tuple[Path, dict[int, float]], tmp_path: Path
) -> None:
    """A method without a projector: backbone features and in-batch negatives (a listed queue
    of projector embeddings, and synthetic negatives, are not used without a projector)."""
    run, _ = mochi_run
    files = ("config.yaml", "backbone.pt", "run.json", "metrics.csv", "queue.pt")
    copy = _copy_run(run, tmp_path / "noproj", files)
    (copy / "artifacts.json").write_text(json.dumps({
        "projector": None, "queue": "queue.pt", "expected_metrics": [],
        "synthetic_negatives": {"num_hard": 8, "num_mix": 4, "num_query_mix": 2}}))
    page = write_report(copy, max_points=64, log=lambda m: None).read_text()
    assert 'class="note error"' not in page
    assert "artifacts.json lists no projector" in page
    assert 'id="fig-similarities"' in page and "other keys of the batch" in page
    assert "backbone features" in page and "synthetic type 1" not in page
    assert "projector embeddings" not in page


def test_report_with_an_unusable_artifacts_file(
    mochi_run: tuple[Path, dict[int, float]], tmp_path: Path
) -> None:
    """An artifacts.json naming a file outside the run, or a listed file that is missing or
    does not match: a note, backbone features, and the report is still written."""
    run, _ = mochi_run
    files = ("config.yaml", "backbone.pt", "run.json")
    outside = _copy_run(run, tmp_path / "outside", files)
    (outside / "artifacts.json").write_text(json.dumps({"projector": "../projector.pt"}))
    page = write_report(outside, max_points=64, log=lambda m: None).read_text()
    assert "names a file outside the run directory" in page
    assert "other keys of the batch" in page and 'class="note error"' not in page

    wrong = _copy_run(run, tmp_path / "wrong", files)
    torch.save({"weight": torch.zeros(3)}, wrong / "projector.pt")  # not the recipe's head
    (wrong / "artifacts.json").write_text(json.dumps(
        {"projector": "projector.pt", "key_encoder": "gone.pt", "queue": "gone.pt"}))
    page = write_report(wrong, max_points=64, log=lambda m: None).read_text()
    assert "the projector (projector.pt) does not match the recipe" in page
    assert "other keys of the batch" in page and 'class="note error"' not in page

    missing = _copy_run(run, tmp_path / "missing", files)
    (missing / "artifacts.json").write_text(json.dumps({"projector": "projector.pt"}))
    page = write_report(missing, max_points=64, log=lambda m: None).read_text()
    assert "lists the projector projector.pt, but the file is missing" in page
    assert "other keys of the batch" in page and 'class="note error"' not in page


_BLOCKED_CHILD = r"""
import importlib.abc, json, sys

BLOCKED = ("pytorch_lightning", "lightning", "lightning_fabric", "contrastmix.methods",
           "contrastmix.train")


def blocked(name):
    return any(name == b or name.startswith(b + ".") for b in BLOCKED)


class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if blocked(name):
            raise ImportError(f"blocked in this test: {name}")
        return None


sys.meta_path.insert(0, Block())
import torch

seen = []
_load = torch.load
def spy(f, *a, **k):
    seen.append(str(f))
    return _load(f, *a, **k)
torch.load = spy

from contrastmix.cli import main

run, out = sys.argv[1], sys.argv[2]
rc_probe = main(["probe", run, "--json"])
rc_report = main(["report", run, "--out", out])
print("RESULT " + json.dumps({"probe": rc_probe, "report": rc_report, "loaded": seen,
                              "imported": sorted(m for m in sys.modules if blocked(m))}))
"""


def test_probe_and_report_work_with_lightning_blocked(tmp_path: Path) -> None:
    """``probe`` and ``report`` read the run directory's own files: in a process where
    Lightning and the training code cannot be imported they still work, synthetic negatives
    included, and never load the Lightning checkpoint."""
    import os
    import sys

    from contrastmix.recipe import load_recipe
    from contrastmix.train.pretrain import pretrain

    run = tmp_path / "mochi"
    pretrain(load_recipe("mochi_mnist1d", [
        "trainer.max_epochs=1", "trainer.limit_train_batches=2",
        "trainer.enable_progress_bar=false", "data.batch_size=128", "method.queue_size=256",
        "method.num_hard=32", "method.num_mix=16", "method.num_query_mix=8",
        "method.warmup_epochs=0", "eval.knn_every_n_epochs=0", "eval.probe_max_iter=10",
        "data.eval_batch_size=2048",
    ]), run)
    assert (run / "checkpoints" / "last.ckpt").is_file()
    out = tmp_path / "report"
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="2")
    res = subprocess.run([sys.executable, "-c", _BLOCKED_CHILD, str(run), str(out)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    result_line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    assert result_line, res.stdout[-2000:] + res.stderr[-2000:]
    result = json.loads(result_line[-1][len("RESULT "):])
    assert result["probe"] == 0 and result["report"] == 0, res.stderr[-3000:]
    assert result["imported"] == []
    assert not any("last.ckpt" in p for p in result["loaded"])
    probe = json.loads(next(ln for ln in res.stdout.splitlines() if ln.startswith("{")))
    assert 0.0 <= probe["accuracy"] <= 1.0
    page = (out / "report.html").read_text()
    assert 'class="note error"' not in page
    assert re.search(r'<img id="fig-similarities" src="data:image/png;base64,', page)
    for needle in ("synthetic type 1 (two hard negatives)",
                   "synthetic type 2 (query + hard negative)", "negative: queue (256 keys)",
                   "momentum (key) encoder"):
        assert html.escape(needle) in page, needle
    assert "mixing never started" not in page
