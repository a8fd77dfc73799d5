"""Built-in data (regenerated offline) and backbones."""

from __future__ import annotations

import pytest
import torch

from contrastmix.data.digits import load_digits_images
from contrastmix.data.mnist1d import load_mnist1d, load_mnist1d_pool
from contrastmix.data.registry import build_data
from contrastmix.errors import DatasetError
from contrastmix.models.build import build_backbone
from contrastmix.models.momentum import MomentumEncoder


def test_mnist1d_regenerated_at_defaults() -> None:
    x, y = load_mnist1d("train")
    xt, yt = load_mnist1d("test")
    assert x.shape == (4000, 1, 40) and xt.shape == (1000, 1, 40)
    assert set(y.tolist()) == set(range(10)) and y.dtype == torch.long
    # the generator standardises the whole dataset
    allx = torch.cat([x, xt])
    assert abs(allx.mean().item()) < 1e-3 and abs(allx.std().item() - 1) < 1e-2
    x2, _ = load_mnist1d("train")  # cached copy is identical
    torch.testing.assert_close(x, x2)


def test_mnist1d_pool_refuses_the_labelled_seed() -> None:
    with pytest.raises(ValueError, match="leak"):
        load_mnist1d_pool([1, 42])


def test_digits_split() -> None:
    x, y = load_digits_images("train")
    xt, _ = load_digits_images("test")
    assert x.shape[1:] == (1, 8, 8) and len(x) + len(xt) == 1797
    assert 0.0 <= x.min() and x.max() <= 1.0 and len(set(y.tolist())) == 10


def test_missing_dataset_path_is_a_clear_error(tmp_path) -> None:
    from contrastmix.recipe import load_recipe

    cfg = load_recipe("moco_mnist1d", ["data.name=imagefolder", f"data.root={tmp_path}/nope"])
    with pytest.raises(DatasetError, match="does not exist"):
        build_data(cfg.data)
    cfg = load_recipe("moco_mnist1d", ["data.name=cifar10", f"data.root={tmp_path}"])
    with pytest.raises(DatasetError, match="download"):
        build_data(cfg.data)


def test_imagefolder_two_views(tmp_path) -> None:
    from PIL import Image

    from contrastmix.recipe import load_recipe

    for split in ("train", "test"):
        for c in ("a", "b"):
            d = tmp_path / split / c
            d.mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (40, 40), (i * 100, 50, 0)).save(d / f"{i}.png")
    cfg = load_recipe("moco_mnist1d", ["data.name=imagefolder", f"data.root={tmp_path}",
                                       "data.image_size=32"])
    data = build_data(cfg.data)
    views, y, idx = data.pretrain[0]
    assert len(views) == 2 and views[0].shape == (3, 32, 32)
    x, _, _ = data.test[1]
    assert x.shape == (3, 32, 32) and data.num_classes == 2


@pytest.mark.parametrize(
    ("name", "shape", "dim"),
    [("cnn1d", (2, 1, 40), 256), ("cnn2d", (2, 1, 8, 8), 128), ("cnn2d", (2, 1, 32, 32), 128),
     ("resnet18", (2, 3, 32, 32), 512)],
)
def test_backbones(name: str, shape: tuple[int, ...], dim: int) -> None:
    net = build_backbone(name, in_channels=shape[1], width=32, cifar_stem=True)
    out = net(torch.randn(*shape))
    assert out.shape == (2, dim) == (2, net.output_dim)


def test_momentum_encoder_ema() -> None:
    online = torch.nn.Linear(3, 2)
    ema = MomentumEncoder(online, momentum=0.9)
    assert all(not p.requires_grad for p in ema.parameters())
    before = ema.module.weight.clone()
    with torch.no_grad():
        online.weight.add_(1.0)
    ema.update(online)
    torch.testing.assert_close(ema.module.weight, 0.9 * before + 0.1 * online.weight)
    ramp = MomentumEncoder(online, 0.99, end_momentum=1.0)
    assert ramp.current_momentum(0, 100) == pytest.approx(0.99)
    assert ramp.current_momentum(100, 100) == pytest.approx(1.0)


def test_backbone_width_must_be_positive() -> None:
    with pytest.raises(ValueError, match="`width` must be > 0, got 0"):
        build_backbone("cnn1d", in_channels=1, width=0)
