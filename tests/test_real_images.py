"""Real images end to end on the CPU (issue 15, item 6).

* The CIFAR-10 code path (``data.name: cifar10``: torchvision's ``CIFAR10`` reading
  ``cifar-10-batches-py``, lightly's MoCo v2 views, training, the probe) on a tiny fake
  CIFAR-10 written in torchvision's on-disk format, ``download`` off: nothing is fetched.
  torchvision checks each batch file against the real file's MD5 before it reads it; the test
  points the class's expected checksums at the fake files (``monkeypatch`` on
  ``CIFAR10.train_list`` / ``test_list`` / ``meta``), so that the production code and
  torchvision's own reader, integrity check included, run unchanged.
* A ResNet-18 (``torchvision:resnet18``) MoCo epoch on a generated image folder, then its probe.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from contrastmix.errors import DatasetError
from contrastmix.recipe import load_recipe

torchvision = pytest.importorskip("torchvision")

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck"]
PER_TRAIN_BATCH, N_TEST = 8, 20  # 5 x 8 = 40 train images, 20 test images


def _images(n: int, offset: int, rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    """``n`` images ``[n, 3072]`` uint8 (CIFAR's row layout: 1024 R, then G, then B) whose
    mean colour depends on the class, and their labels (every class present)."""
    labels = [(offset + i) % 10 for i in range(n)]
    base = np.array([[(c * 25) % 256, (c * 70) % 256, 255 - c * 25] for c in labels], np.float64)
    px = base[:, :, None] * 0.6 + rng.uniform(0, 100, size=(n, 3, 1024))
    return px.clip(0, 255).astype(np.uint8).reshape(n, 3072), labels


def write_fake_cifar10(root: Path, seed: int = 0) -> dict[str, str]:
    """Write ``root/cifar-10-batches-py`` as torchvision reads it; returns ``{file: md5}``."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    files: dict[str, dict] = {}
    for b in range(1, 6):
        data, labels = _images(PER_TRAIN_BATCH, b, rng)
        files[f"data_batch_{b}"] = {"batch_label": f"training batch {b} of 5", "data": data,
                                    "labels": labels, "filenames": [f"{b}_{i}.png"
                                                                    for i in range(len(labels))]}
    data, labels = _images(N_TEST, 0, rng)
    files["test_batch"] = {"batch_label": "testing batch 1 of 1", "data": data, "labels": labels,
                           "filenames": [f"t_{i}.png" for i in range(N_TEST)]}
    files["batches.meta"] = {"label_names": CLASSES, "num_cases_per_batch": PER_TRAIN_BATCH,
                             "num_vis": 3072}
    md5 = {}
    for name, content in files.items():
        blob = pickle.dumps(content, protocol=2)
        (folder / name).write_bytes(blob)
        md5[name] = hashlib.md5(blob).hexdigest()
    return md5


@pytest.fixture(scope="module")
def fake_cifar10(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fake CIFAR-10 under a temporary ``data.root``, with torchvision told its checksums."""
    from torchvision.datasets import CIFAR10

    root = tmp_path_factory.mktemp("cifar")
    md5 = write_fake_cifar10(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(CIFAR10, "train_list", [[f"data_batch_{b}", md5[f"data_batch_{b}"]]
                                           for b in range(1, 6)])
        mp.setattr(CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
        mp.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5["batches.meta"]})
        yield root


CIFAR = ["data.batch_size=16", "data.num_workers=0", "data.eval_batch_size=64",
         "model.backbone=cnn2d", "model.width=4", "model.cifar_stem=false",
         "model.proj_hidden_dim=32", "model.proj_output_dim=16", "method.queue_size=64",
         "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.precision=32-true",
         "trainer.accelerator=cpu", "trainer.devices=1", "trainer.num_threads=2",
         "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
         "eval.knn_every_n_epochs=0", "eval.probe_max_iter=30"]


def test_fake_cifar10_is_read_by_torchvision_as_cifar10(fake_cifar10: Path) -> None:
    from contrastmix.data.registry import build_data

    cfg = load_recipe("moco_cifar10", [f"data.root={fake_cifar10}", *CIFAR])
    assert cfg.data.name == "cifar10" and cfg.data.download is False
    data = build_data(cfg.data)
    base = data.train.base
    assert type(base).__name__ == "CIFAR10" and base.classes == CLASSES
    assert (len(data.train), len(data.test), data.num_classes) == (40, 20, 10)
    x, y, i = data.train[3]
    assert x.shape == (3, 32, 32) and y == 4 and i == 3  # batch 1 starts at class 1
    views, y, _ = data.pretrain[0]
    assert [v.shape for v in views] == [(3, 32, 32)] * 2 and not torch.equal(*views)


def test_cifar10_trains_and_probes_offline(
    fake_cifar10: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from contrastmix.eval.evaluate import probe_run
    from contrastmix.train.pretrain import pretrain

    cfg = load_recipe("moco_cifar10", [f"data.root={fake_cifar10}", *CIFAR])
    run = pretrain(cfg, tmp_path / "run")
    summary = json.loads((run / "run.json").read_text())
    assert summary["global_step"] == 2
    assert math.isfinite(summary["metrics"]["train_loss_epoch"])
    assert json.loads((run / "artifacts.json").read_text())["backbone"]["in_channels"] == 3
    capsys.readouterr()
    res = probe_run(run, device="cpu", progress_bar=True)  # forced on: tqdm bars on stderr
    assert res["dataset"] == "cifar10" and 0 <= res["accuracy"] <= 1
    err = capsys.readouterr().err
    assert "train features" in err and "test features" in err


def test_cifar10_missing_is_one_line_without_download(tmp_path: Path) -> None:
    from contrastmix.data.registry import build_data

    cfg = load_recipe("moco_cifar10", [f"data.root={tmp_path}"])
    with pytest.raises(DatasetError, match="cifar10 not found under .*set data.download=true"):
        build_data(cfg.data)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 train and 8 test PNGs (32 x 32 RGB), 2 classes that differ in brightness."""
    from PIL import Image

    root = tmp_path_factory.mktemp("folder")
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 16), ("test", 4)):
        for c, name in enumerate(("dark", "light")):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                px = (torch.rand(32, 32, 3, generator=g) * 128 + 100 * c).clamp(0, 255)
                Image.fromarray(px.to(torch.uint8).numpy()).save(d / f"{i}.png")
    return root


@pytest.mark.slow
def test_resnet18_moco_epoch_on_an_image_folder(image_folder: Path, tmp_path: Path) -> None:
    pytest.importorskip("torchvision.models")
    from contrastmix.eval.evaluate import probe_run
    from contrastmix.runs import load_backbone
    from contrastmix.train.pretrain import pretrain

    cfg = load_recipe("moco_cifar10", [
        "data.name=imagefolder", f"data.root={image_folder}", "data.image_size=32",
        "data.batch_size=16", "data.num_workers=0", "model.backbone=torchvision:resnet18",
        "model.cifar_stem=false", "model.proj_hidden_dim=64", "model.proj_output_dim=32",
        "method.queue_size=64", "trainer.max_epochs=1", "trainer.precision=32-true",
        "trainer.accelerator=cpu", "trainer.devices=1", "trainer.num_threads=2",
        "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
        "eval.knn_every_n_epochs=0", "eval.probe_max_iter=30"])
    run = pretrain(cfg, tmp_path / "run")
    summary = json.loads((run / "run.json").read_text())
    assert (summary["epochs"], summary["global_step"]) == (1, 2)  # one whole epoch: 32 / 16
    assert math.isfinite(summary["metrics"]["train_loss_epoch"])
    net = load_backbone(run)
    assert type(net).__name__ == "ResNet"  # torchvision's own model
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 512)
    res = probe_run(run, device="cpu", progress_bar=False)
    assert res["dataset"] == "imagefolder" and 0 <= res["accuracy"] <= 1
