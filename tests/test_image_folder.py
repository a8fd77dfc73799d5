"""Image folders: unlabelled pretraining, evaluation on a labelled folder with ``--set``, and
hostile folders (truncated and fake images, link loops, links leaving the root, empty folders,
class folders without images). Everything runs on a few dozen tiny PNGs written here."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from contrastmix.cli import _one_line, main
from contrastmix.data._files import SafeLister
from contrastmix.data.images import IndexedDataset, scan_image_folder
from contrastmix.errors import DatasetError

pytestmark = pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")

TINY = [
    "trainer.num_threads=1", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
    "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "data.batch_size=8",
    "data.num_workers=0", "data.image_size=32", "method.queue_size=16",
    "model.proj_hidden_dim=16", "model.proj_output_dim=8",
    "model.backbone=cnn2d", "model.width=8",  # the recipe's resnet18 costs seconds on a CPU
]
LOGGER = "contrastmix.data.images"


def _png(path: Path, seed: int, colour: int = 0, size: int = 16) -> Path:
    rng = np.random.default_rng(seed)
    px = rng.integers(0, 60, size=(size, size, 3)) + colour
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(px.clip(0, 255).astype(np.uint8)).save(path)
    return path


def _truncated_png(path: Path) -> Path:
    """A PNG whose header is intact and whose pixel data stops half way."""
    _png(path, 99, size=48)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def warnings_of_scan() -> Iterator[list[str]]:
    """The warnings the image folder scan logs (one list per test)."""
    h = _Records()
    logging.getLogger(LOGGER).addHandler(h)
    yield h.messages
    logging.getLogger(LOGGER).removeHandler(h)


def _hostile_flat(root: Path) -> Path:
    """``root/flat``: 20 good PNGs (16 flat, 4 nested) and every kind of bad entry."""
    flat, outside = root / "flat", root / "outside"
    for i in range(16):
        _png(flat / f"{i:02d}.png", i)
    for i in range(4):
        _png(flat / "nested" / "deeper" / f"n{i}.png", 100 + i)
    _png(outside / "o.png", 7)
    _truncated_png(flat / "truncated.png")
    (flat / "fake.jpg").write_text("not an image at all\n")
    (flat / "notes.txt").write_text("a note\n")
    (flat / ".DS_Store").write_bytes(b"\0\1")  # hidden: ignored, not counted
    os.symlink("..", flat / "nested" / "loop")  # a folder loop
    os.symlink(outside, flat / "outdir")  # a folder outside the root
    os.symlink(outside / "o.png", flat / "out.png")  # a file outside the root
    os.symlink("00.png", flat / "zz_same.png")  # a second path to a listed file
    os.symlink("missing.png", flat / "broken.png")
    return flat


def _labelled(root: Path, n_train: int = 6, n_test: int = 3) -> Path:
    """``root/labelled``: classes ``a`` (dark) and ``b`` (bright), train and test."""
    lab = root / "labelled"
    for split, n in (("train", n_train), ("test", n_test)):
        for c, colour in (("a", 0), ("b", 190)):
            for i in range(n):
                _png(lab / split / c / f"{i}.png", hash((split, c, i)) % 1000, colour)
    return lab


@pytest.fixture(scope="module")
def unlabelled_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """One 2-step pretraining of the bundled recipe on the hostile unlabelled folder."""
    root = tmp_path_factory.mktemp("images")
    flat, lab = _hostile_flat(root), _labelled(root)
    h = _Records()
    logging.getLogger(LOGGER).addHandler(h)
    threads = torch.get_num_threads()
    try:
        rc = main(["pretrain", "moco_imagefolder", "--out", str(root / "run"), "--set",
                   f"data.root={flat}", *TINY])
    finally:
        logging.getLogger(LOGGER).removeHandler(h)
        torch.set_num_threads(threads)
    yield {"rc": rc, "run": root / "run", "flat": flat, "labelled": lab,
           "warnings": h.messages}


@pytest.fixture
def one_thread() -> Iterator[None]:
    """The tiny linear probes run on one thread (two threads on two busy cores wait for each
    other far longer than the maths takes)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("contrastmix: error: ")
    return err[-1]


# ------------------------------------------------------------------------------ end to end
def test_unlabelled_folder_pretrains_then_probes_on_a_labelled_folder(
    unlabelled_run: dict, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    run, lab = unlabelled_run["run"], unlabelled_run["labelled"]
    assert unlabelled_run["rc"] == 0 and (run / "backbone.pt").is_file()
    # ONE warning for the whole build, counting what was left out and naming it
    (msg,) = unlabelled_run["warnings"]
    assert "kept 20 images, left out 8" in msg
    for needle in ("unreadable images: 2 (fake.jpg", "truncated.png", "files that are not "
                   "images: 1 (notes.txt)", "links leaving the data root: 2", "out.png",
                   "outdir", "broken or looping links: 1 (broken.png)",
                   "folder already listed (a loop or a duplicate): 1 (nested/loop)",
                   "files reached twice through links: 1 (zz_same.png)"):
        assert needle in msg, needle
    # no labels: one line saying so and how to pass a labelled folder
    line = _error(capsys, ["probe", str(run)])
    assert "has no labels" in line and "evaluation needs them" in line
    assert "--set data.root=LABELLED_DIR" in line
    # evaluation on another, labelled folder (a greedy --set before RUN gives RUN back)
    assert main(["probe", "--set", f"data.root={lab}", "eval.probe_max_iter=50", str(run),
                 "--json", "--knn"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["overrides"] == [f"data.root={lab}", "eval.probe_max_iter=50"]
    assert res["dataset"] == "imagefolder" and res["max_iter"] == 50
    assert res["n_test"] == 6 and res["num_classes"] == 2
    assert math.isfinite(res["accuracy"]) and math.isfinite(res["knn_accuracy"])
    # the run's config.yaml is unchanged
    assert str(unlabelled_run["flat"]) in (run / "config.yaml").read_text()
    # evaluation cannot change the model
    line = _error(capsys, ["probe", str(run), "--set", "model.width=4"])
    assert "may change only data.*, eval.* keys" in line
    line = _error(capsys, ["probe", str(run), "--set", f"data.root={lab}/nope"])
    assert "dataset path does not exist" in line


def test_report_of_an_unlabelled_run(unlabelled_run: dict, tmp_path: Path,
                                     one_thread: None) -> None:
    from contrastmix.eval.report import write_report

    said: list[str] = []
    # --set reaches the report's data (here: the same unlabelled folder)
    write_report(unlabelled_run["run"], tmp_path / "r", log=said.append,
                 overrides=[f"data.root={unlabelled_run['flat']}"])
    assert any("has no labels" in s and "--set data.root=" in s for s in said)
    page = (tmp_path / "r" / "report.html").read_text()
    assert "has no labels" in page and "evaluated with --set" in page


# ------------------------------------------------------------------------------ hostile folders
def test_flat_folder_listing(tmp_path: Path, warnings_of_scan: list[str]) -> None:
    flat = _hostile_flat(tmp_path)
    train, test = scan_image_folder(flat)
    names = [str(p.relative_to(flat)) for p in train.files]
    assert names == [f"{i:02d}.png" for i in range(16)] + [
        f"nested/deeper/n{i}.png" for i in range(4)]
    assert test is train and set(train.targets) == {-1} and train.classes == []
    assert len(warnings_of_scan) == 1
    img, y = train[0]
    assert img.mode == "RGB" and img.size == (16, 16) and y == -1


def test_empty_and_junk_folders_are_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no readable images under .*empty") as e:
        scan_image_folder(tmp_path / "empty")
    assert "\n" not in str(e.value)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.jpg").write_text("text")
    os.symlink(tmp_path / "empty", junk / "out")  # outside junk/
    with pytest.raises(DatasetError) as e:
        scan_image_folder(junk)
    msg = str(e.value)
    assert "no readable images under" in msg and "a.jpg: not an image" in msg
    assert "links leaving the data root: 1 (out" in msg and "\n" not in msg
    (tmp_path / "file.png").write_text("x")
    with pytest.raises(DatasetError, match="is not a folder"):
        scan_image_folder(tmp_path / "file.png")


def test_labelled_folder_links_never_mislabel(tmp_path: Path,
                                             warnings_of_scan: list[str]) -> None:
    lab = _labelled(tmp_path)
    os.symlink("../b", lab / "train" / "a" / "into_b")  # would label b's images as a
    os.symlink("../../train/b/0.png", lab / "test" / "b" / "leak.png")  # train image in test
    os.symlink("..", lab / "train" / "b" / "loop")  # would list train/ again
    _truncated_png(lab / "train" / "a" / "bad.png")
    (lab / "train" / "stray.png").write_bytes((lab / "train" / "a" / "0.png").read_bytes())
    train, test = scan_image_folder(lab)
    assert train.classes == ["a", "b"] and test.classes == ["a", "b"]
    assert train.targets == [0] * 6 + [1] * 6 and test.targets == [0] * 3 + [1] * 3
    assert all(p.parent.name == c for p, c in
               zip(train.files, ["a"] * 6 + ["b"] * 6, strict=True))
    (msg,) = warnings_of_scan
    assert "links into another class or split folder: 3 (train/a/into_b, " in msg
    assert "test/b/leak.png" in msg and "train/b/loop" in msg
    assert "unreadable images: 1 (train/a/bad.png" in msg
    assert "files outside a class folder: 1 (train/stray.png)" in msg


def test_labelled_folder_errors(tmp_path: Path) -> None:
    lab = _labelled(tmp_path, n_train=2, n_test=1)
    (lab / "train" / "c").mkdir()
    (lab / "train" / "c" / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetError, match=r"class folder .*train/c has no readable images; "
                       r"left out: files that are not images: 1 \(train/c/readme.txt\)"):
        scan_image_folder(lab)
    (lab / "train" / "c" / "readme.txt").unlink()
    (lab / "train" / "c").rmdir()
    _png(lab / "test" / "d" / "0.png", 0)
    with pytest.raises(DatasetError, match="class folder 'd', which .*train lacks"):
        scan_image_folder(lab)
    bare = tmp_path / "bare"
    _png(bare / "train" / "0.png", 0)
    _png(bare / "test" / "0.png", 0)
    with pytest.raises(DatasetError, match="has no class folders .*no train/ sub-folder"):
        scan_image_folder(bare)
    nosplit = tmp_path / "nosplit"
    _png(nosplit / "train" / "a" / "0.png", 0)
    with pytest.raises(DatasetError, match="split not found: .*nosplit/test"):
        scan_image_folder(nosplit)


def test_a_file_that_fails_when_loaded_is_named(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    flat = tmp_path / "flat"
    for i in range(3):
        _png(flat / f"{i}.png", i)
    train, _ = scan_image_folder(flat)
    ds = IndexedDataset(train)
    _truncated_png(flat / "1.png")  # damaged after the scan
    with pytest.raises(DatasetError, match=r"cannot read image .*flat/1.png: OSError"):
        ds[1]
    (flat / "2.png").unlink()
    with pytest.raises(DatasetError, match=r"cannot read image .*flat/2.png"):
        ds[2]
    # with verification off the truncated file is kept, and loading it names it
    train, _ = scan_image_folder(flat, verify=False)
    assert [p.name for p in train.files] == ["0.png", "1.png"]
    # an error re-raised from a DataLoader worker prints as the worker's own line
    wrapped = DatasetError("Caught DatasetError in DataLoader worker process 0.\nOriginal "
                           "Traceback (most recent call last):\n  File \"x.py\", line 1\n"
                           "contrastmix.errors.DatasetError: cannot read image /d/1.png: bad")
    assert _one_line(wrapped) == "cannot read image /d/1.png: bad"


def test_labels_without_loading_images(tmp_path: Path) -> None:
    lab = _labelled(tmp_path, n_train=2, n_test=1)
    train, _ = scan_image_folder(lab)
    assert IndexedDataset(train).y.tolist() == [0, 0, 1, 1]


def test_lister_stays_inside_the_root(tmp_path: Path) -> None:
    (tmp_path / "root" / "a").mkdir(parents=True)
    (tmp_path / "root" / "a" / "f.txt").write_text("x")
    (tmp_path / "secret.txt").write_text("x")
    os.symlink(tmp_path / "secret.txt", tmp_path / "root" / "a" / "s.txt")
    os.symlink(tmp_path, tmp_path / "root" / "up")
    os.symlink("l2", tmp_path / "root" / "l1")
    os.symlink("l1", tmp_path / "root" / "l2")
    lister = SafeLister(tmp_path / "root")
    assert lister.files(tmp_path / "root") == [tmp_path / "root" / "a" / "f.txt"]
    assert len(lister.skipped) == 4
    assert set(lister.skipped.reasons) == {"links leaving the data root",
                                           "broken or looping links"}
