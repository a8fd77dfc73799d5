"""Tests of the multimodal datasets: digits-captions, digits-tri and users' image-caption files."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from contrastmix.data.digits_captions import (
    CAPTION_TEMPLATES,
    NUMBER_WORDS,
    DigitsCaptions,
    caption_for,
    class_prompts,
    load_digits_captions,
)
from contrastmix.data.image_text_csv import ImageTextCSV
from contrastmix.errors import DatasetError


def _mentions(caption: str, label: int) -> bool:
    words = re.findall(r"[a-z]+|\d", caption)
    return NUMBER_WORDS[label] in words or str(label) in words


# ---------------------------------------------------------------------------- digits-captions


def test_digits_captions_shapes_and_consistency() -> None:
    x, caps, y = load_digits_captions("train", seed=0)
    xt, capt, yt = load_digits_captions("test", seed=0)
    assert x.shape == (len(caps), 1, 8, 8) and x.dtype == torch.float32
    assert len(caps) + len(capt) == 1797
    assert len(capt) == pytest.approx(0.25 * 1797, abs=2)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert y.dtype == torch.int64 and set(y.tolist()) == set(range(10))
    for c, label in zip(caps + capt, torch.cat([y, yt]).tolist(), strict=True):
        assert _mentions(c, label), (c, label)
        assert not any(_mentions(c, other) for other in range(10) if other != label), c
    used = {
        next(t for t in CAPTION_TEMPLATES if caption_for(lab, t) == c)
        for c, lab in zip(caps, y.tolist(), strict=True)
    }
    assert used == set(CAPTION_TEMPLATES)  # every template is drawn


def test_digits_captions_deterministic_per_seed() -> None:
    a = load_digits_captions("train", seed=3)
    b = load_digits_captions("train", seed=3)
    c = load_digits_captions("train", seed=4)
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and torch.equal(a[2], b[2])
    assert a[1] != c[1] or not torch.equal(a[2], c[2])


def test_class_prompts_and_templates() -> None:
    prompts = class_prompts()
    assert len(prompts) == 10 and len(set(prompts)) == 10
    assert all(_mentions(p, k) for k, p in enumerate(prompts))
    assert class_prompts("the digit {digit}")[7] == "the digit 7"
    with pytest.raises(ValueError, match="template"):
        class_prompts("a {colour} digit")
    with pytest.raises(ValueError, match="split"):
        load_digits_captions("val")
    with pytest.raises(ValueError, match="templates"):
        load_digits_captions(templates=[])


def test_digits_captions_dataset_collates_captions_to_list() -> None:
    ds = DigitsCaptions("test", seed=0)
    x, caps, y = next(iter(DataLoader(ds, batch_size=5)))
    assert x.shape == (5, 1, 8, 8)
    assert isinstance(caps, (list, tuple)) and all(isinstance(c, str) for c in caps)
    assert list(caps) == ds.captions[:5] and torch.equal(y, ds.labels[:5])


# ---------------------------------------------------------------------------------- digits-tri


@pytest.fixture(scope="module")
def tri_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CONTRASTMIX_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def test_digits_tri_pairs_within_class(tri_cache: None) -> None:
    from contrastmix.data.digits_tri import load_digits_tri
    from contrastmix.data.mnist1d import load_mnist1d

    for split in ("train", "test"):
        d = load_digits_tri(split, seed=0)
        n = len(d.captions)
        assert d.images.shape == (n, 1, 8, 8) and d.signals.shape == (n, 1, 40)
        sig, sig_y = load_mnist1d(split)
        assert torch.equal(sig_y[d.signal_index], d.labels)  # signal of the same class
        assert torch.equal(sig[d.signal_index], d.signals)
        assert d.signal_index.unique().numel() == n  # no signal reused
        x, caps, y = load_digits_captions(split, seed=0)
        assert torch.equal(x, d.images) and caps == d.captions and torch.equal(y, d.labels)
        assert all(_mentions(c, k) for c, k in zip(d.captions, d.labels.tolist(), strict=True))


def test_digits_tri_deterministic_and_seeded(tri_cache: None) -> None:
    from contrastmix.data.digits_tri import DigitsTri, load_digits_tri

    a, b = load_digits_tri("test", seed=1), load_digits_tri("test", seed=1)
    assert torch.equal(a.signal_index, b.signal_index) and a.captions == b.captions
    c = load_digits_tri("test", seed=2)
    assert not torch.equal(a.signal_index, c.signal_index)
    batch = next(iter(DataLoader(DigitsTri("test", seed=1), batch_size=4)))
    assert batch["image"].shape == (4, 1, 8, 8) and batch["signal"].shape == (4, 1, 40)
    assert batch["text"] == a.captions[:4] and torch.equal(batch["label"], a.labels[:4])


# --------------------------------------------------------------------------- image-text files


def _images(root: Path, n: int) -> list[str]:
    from PIL import Image

    names = []
    for i in range(n):
        name = f"img{i}.png"
        Image.new("RGB", (5, 4), color=(10 * i, 0, 255)).save(root / name)
        names.append(name)
    return names


def test_csv_with_labels(tmp_path: Path) -> None:
    names = _images(tmp_path, 3)
    f = tmp_path / "pairs.csv"
    f.write_text(
        "image_path,caption,label\n"
        f"{names[0]},a red square,0\n"
        f'{names[1]},"a square, blue",1\n'
        f"./{names[2]},dot path,2\n"
    )
    ds = ImageTextCSV(f)
    assert len(ds) == 3 and ds.captions[1] == "a square, blue"
    x, cap, lab = ds[1]
    assert x.shape == (3, 4, 5) and x.dtype == torch.float32 and float(x.max()) <= 1.0
    assert float(x[2].mean()) == pytest.approx(1.0)  # blue channel 255
    assert cap == "a square, blue" and lab == 1
    assert ds.labels is not None and ds.labels.tolist() == [0, 1, 2]
    grey = ImageTextCSV(f, image_mode="L", transform=lambda im: im.size)
    assert grey[0][0] == (5, 4)


def test_jsonl_without_labels_and_root(tmp_path: Path) -> None:
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    names = _images(imgs, 2)
    f = tmp_path / "pairs.jsonl"
    lines = [json.dumps({"image_path": n, "caption": f"caption {i}"}) for i, n in enumerate(names)]
    f.write_text(lines[0] + "\n\n" + lines[1] + "\n")
    ds = ImageTextCSV(f, root=imgs)
    assert ds.labels is None and len(ds) == 2
    item = ds[1]
    assert len(item) == 2 and item[1] == "caption 1"


def test_missing_image_names_the_row(tmp_path: Path) -> None:
    names = _images(tmp_path, 2)
    f = tmp_path / "pairs.csv"
    f.write_text(f"image_path,caption\n{names[0]},ok\nnope.png,gone\n{names[1]},ok\n")
    with pytest.raises(ValueError, match=r"row 2 \(line 3\).*nope\.png"):
        ImageTextCSV(f)
    j = tmp_path / "pairs.jsonl"
    j.write_text(json.dumps({"image_path": "nope.png", "caption": "x"}) + "\n")
    with pytest.raises(DatasetError, match=r"row 1 \(line 1\).*nope\.png"):
        ImageTextCSV(j)


def test_bad_caption_files(tmp_path: Path) -> None:
    names = _images(tmp_path, 1)
    cases = {
        "cols.csv": (
            f"path,text\n{names[0]},x\n",
            r"missing column\(s\) \['image', 'caption'\]",
        ),
        "empty.csv": (f"image_path,caption\n{names[0]}, \n", r"row 1 .*empty"),
        "nolabel.csv": (
            f"image_path,caption,label\n{names[0]},x,1\n{names[0]},y,\n",
            r"row 2 .*label",
        ),
        "norows.csv": ("image_path,caption\n", "no records"),
        "bad.jsonl": ('{"image_path": "a.png", "caption": \n', r"row 1 \(line 1\) is not valid"),
        "field.jsonl": (json.dumps({"image_path": names[0]}) + "\n", r"row 1 .*'caption'"),
        "pairs.txt": ("whatever", "unsupported file type"),
    }
    for name, (text, match) in cases.items():
        f = tmp_path / name
        f.write_text(text)
        with pytest.raises(ValueError, match=match):
            ImageTextCSV(f)
    with pytest.raises(ValueError, match="does not exist"):
        ImageTextCSV(tmp_path / "absent.csv")
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text(f"image_path\tcaption\n{names[0]}\ta, tab separated\n")
    assert ImageTextCSV(tsv).captions == ["a, tab separated"]
