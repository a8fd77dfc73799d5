"""Backbones from timm and torchvision (``model.backbone: timm:<name>`` / ``torchvision:<name>``),
``model.weights``, and ``contrastmix.load_backbone``: a run's ``backbone.pt`` loads strictly into
the library's own model (random init only, nothing is downloaded)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import contrastmix
from contrastmix.errors import CheckpointError, RecipeError
from contrastmix.models import apply_cifar_stem, build_backbone
from contrastmix.recipe import load_recipe

timm = pytest.importorskip("timm")
tvm = pytest.importorskip("torchvision.models")


def _timm_resnet18() -> nn.Module:
    return timm.create_model("resnet18", pretrained=False, num_classes=0)


def _tv_resnet18() -> nn.Module:
    net = tvm.resnet18(weights=None)
    net.fc = nn.Identity()
    return net


LIBRARY = {"timm:resnet18": _timm_resnet18, "torchvision:resnet18": _tv_resnet18}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An image folder: ``train/`` and ``test/`` with 2 classes of 10 tiny PNGs each."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    g = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for c, name in enumerate(("cat", "dog")):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(10):
                px = (torch.rand(32, 32, 3, generator=g) * 128 + 100 * c).clamp(0, 255)
                Image.fromarray(px.to(torch.uint8).numpy()).save(d / f"{i}.png")
    return root


def _recipe(images: Path, *extra: str):  # noqa: ANN202
    return load_recipe("moco_mnist1d", [
        "data.name=imagefolder", f"data.root={images}", "data.image_size=32",
        "data.batch_size=8", "method.queue_size=16", "eval.knn_every_n_epochs=0",
        "trainer.max_epochs=1", "trainer.limit_train_batches=2",
        "trainer.enable_progress_bar=false", "trainer.num_threads=2", *extra])


@pytest.mark.parametrize("backbone", sorted(LIBRARY))
def test_a_run_exports_the_library_model(images: Path, tmp_path: Path, backbone: str) -> None:
    """backbone.pt loads with strict=True into the library's model; contrastmix.load_backbone
    gives the same network; model.weights is where training starts."""
    from contrastmix.train.pretrain import pretrain

    torch.manual_seed(1)
    start = LIBRARY[backbone]().state_dict()
    torch.save(start, tmp_path / "start.pt")
    # a learning rate that leaves the weights where model.weights put them
    cfg = _recipe(images, f"model.backbone={backbone}", f"model.weights={tmp_path}/start.pt",
                  "optim.lr=1e-12", "optim.weight_decay=0")
    run = pretrain(cfg, tmp_path / "run")
    state = torch.load(run / "backbone.pt", weights_only=True)
    lib = LIBRARY[backbone]()
    lib.load_state_dict(state, strict=True)  # no wrapper prefix, no extra keys
    assert torch.allclose(state["conv1.weight"], start["conv1.weight"], atol=1e-6)
    assert not torch.allclose(lib.state_dict()["conv1.weight"],
                              LIBRARY[backbone]().state_dict()["conv1.weight"])

    net = contrastmix.load_backbone(run)
    assert not net.training and net.output_dim == 512
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(x), lib.eval()(x), atol=1e-5)
    assert json.loads((run / "artifacts.json").read_text())["backbone"] == {"in_channels": 3}

    # a run written before artifacts.json recorded in_channels: the data bundle says
    art = json.loads((run / "artifacts.json").read_text())
    del art["backbone"]
    (run / "artifacts.json").write_text(json.dumps(art))
    with torch.no_grad():
        assert torch.allclose(contrastmix.load_backbone(run)(x), lib(x), atol=1e-5)


def test_weights_start_the_backbone(tmp_path: Path) -> None:
    torch.manual_seed(2)
    lib = _tv_resnet18()
    torch.save(lib.state_dict(), tmp_path / "w.pt")
    net = build_backbone("torchvision:resnet18", in_channels=3, weights=tmp_path / "w.pt")
    for k, v in lib.state_dict().items():
        assert torch.equal(net.state_dict()[k], v), k

    # timm's resnet18 has the same keys: the file fits, whichever library wrote it
    build_backbone("timm:resnet18", in_channels=3, weights=tmp_path / "w.pt")
    # a file that does not fit names itself and what differs, in one line
    with pytest.raises(CheckpointError, match=r"w\.pt does not match the backbone "
                       r"'timm:resnet18' \(model.weights\): shapes .*conv1.weight") as e:
        build_backbone("timm:resnet18", in_channels=1, weights=tmp_path / "w.pt")
    assert "\n" not in str(e.value)
    full = tvm.resnet18(weights=None).state_dict()  # with its classifier
    torch.save(full, tmp_path / "full.pt")
    with pytest.raises(CheckpointError, match="unexpected keys fc.weight, fc.bias"):
        build_backbone("torchvision:resnet18", in_channels=3, weights=tmp_path / "full.pt")
    with pytest.raises(CheckpointError, match=r"cannot read .*nope\.pt: no such file"):
        build_backbone("timm:resnet18", in_channels=3, weights=tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_text("not a torch file")
    with pytest.raises(CheckpointError, match=r"cannot read .*junk\.pt"):
        build_backbone("cnn2d", in_channels=3, weights=tmp_path / "junk.pt")


def test_cifar_stem_is_the_resnet_cifar_stem() -> None:
    for name, make in LIBRARY.items():
        net = build_backbone(name, in_channels=1, cifar_stem=True)
        assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
        assert isinstance(net.maxpool, nn.Identity)
        assert net(torch.randn(2, 1, 8, 8)).shape == (2, 512)  # no downsampling stem
        apply_cifar_stem(make(), in_channels=1).load_state_dict(net.state_dict(), strict=True)
    with pytest.raises(ValueError, match="cifar_stem=true applies to ResNet-style models"):
        build_backbone("torchvision:mobilenet_v3_small", in_channels=3, cifar_stem=True)


@pytest.mark.parametrize(("name", "match"), [
    ("timm:resnet19", "unknown timm model 'resnet19' \\(did you mean resnet18"),
    ("torchvision:resnet19", "unknown torchvision model 'resnet19'"),
    ("torchvision:fcn_resnet50", "unknown torchvision model 'fcn_resnet50'"),  # not a classifier
    ("timm:hf-hub:someone/model", "unknown timm model 'hf-hub:someone/model'"),  # no downloads
    ("torchvision:squeezenet1_0", "no classifier ending in a linear layer"),
    ("torchvision:googlenet", "auxiliary classifiers"),
    ("keras:resnet18", "unknown backbone 'keras:resnet18'; choose one of .*timm:<name>"),
])
def test_bad_names_are_one_line(name: str, match: str) -> None:
    with pytest.raises(ValueError, match=match) as e:
        build_backbone(name, in_channels=3)
    assert "\n" not in str(e.value)


def test_torchvision_models_other_than_resnets() -> None:
    for name, dim in (("mobilenet_v3_small", 1024), ("shufflenet_v2_x0_5", 1024)):
        net = build_backbone(f"torchvision:{name}", in_channels=3).eval()
        assert net.output_dim == dim and net(torch.randn(1, 3, 64, 64)).shape == (1, dim)
    with pytest.raises(ValueError, match="takes 3-channel images, the data has 1 channel"):
        build_backbone("torchvision:mobilenet_v3_small", in_channels=1)


def test_pretrain_reports_bad_backbones_before_training(images: Path, tmp_path: Path) -> None:
    from contrastmix.train.pretrain import pretrain

    with pytest.raises(RecipeError, match="unknown timm model 'resnet19'"):
        pretrain(_recipe(images, "model.backbone=timm:resnet19"), tmp_path / "a")
    with pytest.raises(CheckpointError, match=r"cannot read .*missing\.pt: no such file"):
        pretrain(_recipe(images, "model.backbone=timm:resnet18",
                         f"model.weights={tmp_path}/missing.pt"), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_import_contrastmix_stays_light() -> None:
    """``contrastmix.load_backbone`` is imported on first use, not by ``import contrastmix``."""
    code = ("import sys, contrastmix\n"
            "print(','.join(m for m in ('torch', 'contrastmix.runs') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""
    from contrastmix.runs import load_backbone

    assert contrastmix.load_backbone is load_backbone and "load_backbone" in contrastmix.__all__
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        contrastmix.nope  # noqa: B018
