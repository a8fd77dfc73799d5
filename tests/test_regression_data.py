"""Regression data: rotated digits (+ long-tailed, shot groups), MNIST-1D regression, diabetes,
the tabular MLP encoder and tabular augmentations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from contrastmix.data.diabetes import DIABETES_FEATURES, load_diabetes_reg
from contrastmix.data.mnist1d_reg import load_mnist1d_reg, render_mnist1d
from contrastmix.data.rotated_digits import (
    FEW_SHOT,
    MANY_SHOT,
    MEDIUM_SHOT,
    SHOT_SETTINGS,
    load_rotated_digits,
    rotate_images,
    shot_groups,
)
from contrastmix.data.tabular_augment import TabularAugment
from contrastmix.models.mlp import MLPEncoder


# ------------------------------------------------------------------------ rotated digits
@pytest.fixture(scope="module")
def digits():
    return {
        "train": load_rotated_digits("train", seed=0),
        "test": load_rotated_digits("test", seed=0),
        "lt_train": load_rotated_digits("train", seed=0, long_tailed=True),
        "lt_test": load_rotated_digits("test", seed=0, long_tailed=True),
    }


def test_rotated_digits_shapes_ranges_and_determinism(digits):
    x, y = digits["train"]
    xt, yt = digits["test"]
    assert x.shape == (1347, 1, 16, 16) and xt.shape == (450, 1, 16, 16)
    assert x.dtype == torch.float32 and y.dtype == torch.float32 and y.shape == (1347,)
    assert 0.0 <= x.min() and x.max() <= 1.0
    for yy in (y, yt):
        assert (yy >= 0).all() and (yy < 90).all()
    x2, y2 = load_rotated_digits("train", seed=0)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, y3 = load_rotated_digits("train", seed=1)
    assert not torch.equal(y, y3)


def test_rotated_digits_images_are_rotated_upsampled_digits(digits):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    tr, _ = train_test_split(np.arange(1797), test_size=0.25, random_state=0, stratify=d.target)
    x, y = digits["train"]
    for r in (0, 5, 100):
        img = torch.from_numpy(d.images[tr[r]].astype(np.float32) / 16)[None, None]
        up = F.interpolate(img, size=(16, 16), mode="bilinear", align_corners=False)
        ref = rotate_images(up, y[r : r + 1]).clamp(0, 1)
        torch.testing.assert_close(x[r : r + 1], ref)
        # Rotating back by -angle recovers the central part of the upsampled digit.
        back = rotate_images(x[r : r + 1], -y[r : r + 1])
        assert (back - up)[..., 5:11, 5:11].abs().mean() < 0.15


def test_rotate_images_convention():
    import torchvision.transforms.functional as TF

    img = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    angles = torch.tensor([0.0, 90.0, 33.0])
    out = rotate_images(img, angles)
    torch.testing.assert_close(out[0], img[0])
    torch.testing.assert_close(out[1], torch.rot90(img[1], 1, dims=(-2, -1)), atol=1e-5, rtol=0)
    ref = TF.rotate(img[2:], 33.0, interpolation=TF.InterpolationMode.BILINEAR)
    torch.testing.assert_close(out[2:], ref, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="angles"):
        rotate_images(img, torch.zeros(2))


def test_long_tailed_variant_is_skewed_and_keeps_a_balanced_test_split(digits):
    x, y = digits["train"]
    xl, yl = digits["lt_train"]
    # Same images (same split and order), different angles.
    assert xl.shape == x.shape and not torch.equal(yl, y)
    head, tail = (yl < 30).sum().item(), (yl >= 60).sum().item()
    assert head > 10 * tail
    # Balanced train: thirds roughly equal.
    assert abs((y < 30).sum().item() - (y >= 60).sum().item()) < 100
    # Test split identical to the balanced variant's and uniform.
    assert torch.equal(digits["lt_test"][1], digits["test"][1])
    assert torch.equal(digits["lt_test"][0], digits["test"][0])
    counts = torch.histc(digits["test"][1], bins=3, min=0, max=90)
    assert counts.min() > 100


def test_shot_groups_by_hand():
    train = torch.tensor([0.5] * 6 + [1.5] * 3 + [2.5])  # bins [0,1): 6, [1,2): 3, [2,3): 1
    test = torch.tensor([0.1, 1.9, 2.2, 3.0, -1.0, 1.0])
    g = shot_groups(train, test, 3, value_range=(0.0, 3.0), many=5, few=2)
    assert g.tolist() == [MANY_SHOT, MEDIUM_SHOT, FEW_SHOT, FEW_SHOT, MANY_SHOT, MEDIUM_SHOT]
    edges = torch.tensor([0.0, 1.0, 2.0, 3.0])
    assert torch.equal(shot_groups(train, test, edges, many=5, few=2), g)
    with pytest.raises(ValueError, match="bins"):
        shot_groups(train, test, torch.tensor([1.0, 0.0]))
    # unbounded unit bins (the probe's setting) differ outside [0, 3): 3.0 and -1.0 have no
    # training sample in their own bin
    by_width = shot_groups(train, test, bin_width=1.0, many=5, few=2)
    assert by_width.tolist() == [MANY_SHOT, MEDIUM_SHOT, FEW_SHOT, FEW_SHOT, FEW_SHOT,
                                 MEDIUM_SHOT]
    with pytest.raises(ValueError, match="value_range"):
        shot_groups(train, test, 3)
    with pytest.raises(ValueError, match="bin_width"):
        shot_groups(train, test, 3, value_range=(0.0, 3.0), bin_width=1.0)
    with pytest.raises(ValueError, match="few"):
        shot_groups(train, test, bin_width=1.0, many=5, few=7)


def _old_rotated_digits_groups(train: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
    """The rotated-digits grouping as it was defined before the one shot_groups: 30 bins over
    [0, 90) (outside values clamped), many > 50, few < 10."""
    inner = torch.linspace(0.0, 90.0, 31, dtype=torch.float64)[1:-1]
    counts = torch.bincount(torch.bucketize(train.double(), inner, right=True), minlength=30)
    c = counts[torch.bucketize(test.double(), inner, right=True)]
    out = torch.full_like(c, MEDIUM_SHOT)
    out[c > 50] = MANY_SHOT
    out[c < 10] = FEW_SHOT
    return out


@pytest.mark.parametrize("long_tailed", [False, True])
def test_rotated_digits_bundle_groups_unchanged(long_tailed):
    from contrastmix.data.registry import build_data
    from contrastmix.recipe import load_recipe

    cfg = load_recipe("supremix_rotated_digits",
                      [f"data.options.long_tailed={str(long_tailed).lower()}", "seed=0"])
    data = build_data(cfg.data)
    ytr = load_rotated_digits("train", seed=0, long_tailed=long_tailed)[1]
    yte = load_rotated_digits("test", seed=0, long_tailed=long_tailed)[1]
    g = data.test_groups
    assert torch.equal(g, _old_rotated_digits_groups(ytr, yte))
    # pinned before the move: group sizes of seed 0
    expect = [124, 184, 142] if long_tailed else [118, 332, 0]
    assert torch.bincount(g, minlength=3).tolist() == expect
    assert tuple(data.group_names) == ("many", "medium", "few")


def test_shot_groups_on_long_tailed_digits(digits):
    g = shot_groups(digits["lt_train"][1], digits["test"][1], **SHOT_SETTINGS)
    counts = torch.bincount(g, minlength=3)
    assert (counts > 50).all()  # all three groups populated
    yt = digits["test"][1]
    # Many-shot test samples have small angles, few-shot ones large angles.
    assert yt[g == MANY_SHOT].max() < yt[g == FEW_SHOT].min()


def test_rotated_digits_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        load_rotated_digits("val")
    with pytest.raises(ValueError, match="imbalance_ratio"):
        load_rotated_digits(long_tailed=True, imbalance_ratio=0.5)


# ------------------------------------------------------------------------ MNIST-1D regression
def test_render_matches_mnist1d_pipeline_without_noise():
    from mnist1d.data import get_templates
    from mnist1d.transform import interpolate

    templates = get_templates()["x"]
    cases = [(3, 36, 0, 1.1, 0.0), (7, 50, 20, 0.9, 0.2), (0, 60, 47, 1.0, -0.3)]
    for digit, pad, k, amp, sh in cases:
        x = np.concatenate([templates[digit] + 1e-8, np.zeros(pad)])  # mnist1d `pad`
        x = interpolate(x, 72) * amp  # dilate, scale
        x = np.concatenate([x[-k:], x[:-k]]) if k else x  # translate
        x = x - sh * np.linspace(-0.5, 0.5, 72)  # shear
        ref = interpolate(x, 40)
        ours = render_mnist1d(
            np.array([digit]), np.array([71 / (11 + pad)]), np.array([float(k)]),
            np.array([amp]), np.array([sh]), None, corr_noise_scale=0.0, iid_noise_scale=0.0,
        )[0]
        np.testing.assert_allclose(ours, ref, atol=1e-7)


@pytest.mark.parametrize("target,low,high", [("time_scale", 1.0, 2.0), ("shift", 0.0, 48.0)])
def test_mnist1d_reg_shapes_targets_and_determinism(target, low, high):
    x, y = load_mnist1d_reg("train", target=target, num_samples=600, seed=3)
    xt, yt = load_mnist1d_reg("test", target=target, num_samples=600, seed=3)
    assert x.shape == (480, 1, 40) and xt.shape == (120, 1, 40)
    assert x.dtype == torch.float32 and y.shape == (480,)
    assert (y >= low).all() and (y < high).all() and y.std() > 0.2 * (high - low)
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-3  # train statistics
    x2, y2 = load_mnist1d_reg("train", target=target, num_samples=600, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(load_mnist1d_reg("train", target=target, num_samples=600, seed=4)[1], y)


def test_mnist1d_time_scale_stretches_the_template():
    # Without noise or shear, the template's support grows linearly with the time scale.
    scales = np.array([1.0, 1.5, 2.0])
    x = render_mnist1d(
        np.array([8, 8, 8]), scales, np.zeros(3), np.ones(3), np.zeros(3), None,
        corr_noise_scale=0.0, iid_noise_scale=0.0, final_length=72,
    )
    support = (x != 0).sum(1)  # templates carry mnist1d's +1e-8, padding is exactly 0
    np.testing.assert_array_equal(support, np.floor(11 * scales) + 1)
    # And the shift moves it.
    xs = render_mnist1d(
        np.array([8]), np.array([1.0]), np.array([10.0]), np.ones(1), np.zeros(1), None,
        corr_noise_scale=0.0, iid_noise_scale=0.0, final_length=72,
    )
    np.testing.assert_allclose(np.roll(x[0], 10), xs[0], atol=1e-12)


def test_mnist1d_reg_target_is_learnable_for_shift():
    from sklearn.ensemble import RandomForestRegressor

    x, y = load_mnist1d_reg("train", target="shift", num_samples=1000, seed=0)
    xt, yt = load_mnist1d_reg("test", target="shift", num_samples=1000, seed=0)
    rf = RandomForestRegressor(50, random_state=0, n_jobs=1).fit(x[:, 0].numpy(), y.numpy())
    mae = np.abs(rf.predict(xt[:, 0].numpy()) - yt.numpy()).mean()
    assert mae < 0.6 * np.abs(yt.numpy() - y.numpy().mean()).mean()


def test_mnist1d_reg_bad_arguments():
    with pytest.raises(ValueError, match="target"):
        load_mnist1d_reg(target="digit")
    with pytest.raises(ValueError, match="split"):
        load_mnist1d_reg("val")
    with pytest.raises(ValueError, match="target_range"):
        load_mnist1d_reg(target_range=(2.0, 1.0))


# ------------------------------------------------------------------------ diabetes + tabular
def test_diabetes_split_standardisation_and_determinism():
    x, y = load_diabetes_reg("train", seed=0)
    xt, yt = load_diabetes_reg("test", seed=0)
    assert x.shape == (331, DIABETES_FEATURES) and xt.shape == (111, DIABETES_FEATURES)
    torch.testing.assert_close(x.double().mean(0), torch.zeros(10, dtype=torch.float64),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(x.double().std(0, unbiased=False),
                               torch.ones(10, dtype=torch.float64), atol=1e-5, rtol=0)
    assert xt.mean(0).abs().max() > 1e-3  # test split uses the train scaler
    assert 25 <= y.min() and y.max() <= 346
    from sklearn.datasets import load_diabetes

    raw_y = load_diabetes().target
    all_y = np.sort(np.concatenate([y.numpy(), yt.numpy()]))
    np.testing.assert_allclose(all_y, np.sort(raw_y), rtol=0, atol=1e-4)
    x2, _ = load_diabetes_reg("train", seed=0)
    assert torch.equal(x, x2)
    assert not torch.equal(load_diabetes_reg("train", seed=1)[1], y)
    _, ys = load_diabetes_reg("train", seed=0, standardize_target=True)
    assert abs(ys.mean().item()) < 1e-5 and abs(ys.std(unbiased=False).item() - 1) < 1e-5


def test_mlp_encoder_shapes_and_gradients():
    enc = MLPEncoder(10, hidden=(32, 16), out_dim=8)
    assert enc.output_dim == 8
    x = torch.randn(6, 10)
    out = enc(x)
    assert out.shape == (6, 8) and (out >= 0).all()
    out.sum().backward()
    assert all(p.grad is not None for p in enc.parameters())
    plain = MLPEncoder(10, hidden=(), out_dim=4, batchnorm=False, dropout=0.2)
    assert plain(x).shape == (6, 4)
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in plain.modules())
    with pytest.raises(ValueError, match="x"):
        enc(torch.randn(6, 9))
    with pytest.raises(ValueError, match="hidden"):
        MLPEncoder(10, hidden=(0,))


def test_tabular_augment():
    x = torch.randn(400, 10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(TabularAugment(0.0, 0.0)(x), x)
    aug = TabularAugment(noise_std=0.0, dropout=0.3)
    out = aug(x, generator=torch.Generator().manual_seed(1))
    dropped = (out == 0) & (x != 0)
    assert abs(dropped.float().mean().item() - 0.3) < 0.03
    assert torch.equal(out[~dropped], x[~dropped])  # no rescaling
    noisy = TabularAugment(noise_std=0.5, dropout=0.0)(x, torch.Generator().manual_seed(2))
    assert abs((noisy - x).std().item() - 0.5) < 0.02
    a = TabularAugment()(x, generator=torch.Generator().manual_seed(3))
    b = TabularAugment()(x, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="x"):
        TabularAugment()(x[0])
    with pytest.raises(ValueError, match="dropout"):
        TabularAugment(dropout=1.0)
    with pytest.raises(ValueError, match="noise_std"):
        TabularAugment(noise_std=-0.1)
