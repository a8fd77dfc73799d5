"""Tests for contrastmix.eval.probe: feature extraction, logistic / ridge probes
(docs/methods.md §9)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression, Ridge
from torch import nn

from contrastmix.eval.probe import (
    SHOT_NAMES,
    extract_features,
    fit_logistic,
    fit_ridge,
    linear_probe,
    shot_groups,
)


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    x, y = load_digits(return_X_y=True)
    perm = np.random.default_rng(0).permutation(len(y))
    x, y = torch.tensor(x[perm], dtype=torch.float32), torch.tensor(y[perm])
    return x[:1200], y[:1200], x[1200:], y[1200:]


def _standardise(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    mean = train.double().mean(0)
    std = train.double().std(0, unbiased=False)
    std = torch.where(std < 1e-12, torch.ones_like(std), std)
    return [((t.double() - mean) / std) for t in (train, *others)]


def _objective(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor, lam: float):
    return F.cross_entropy(x @ w.T + b, y) + 0.5 * lam * w.pow(2).sum()


# -------------------------------------------------------------------------- extraction


def _backbone() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 8)
    )
    model.train()
    with torch.no_grad():  # non-trivial running statistics
        for _ in range(3):
            model(torch.randn(32, 6) * 3 + 1)
    return model


def test_extract_features_leaves_backbone_and_bn_bit_identical() -> None:
    model = _backbone()
    model[3].eval()  # mixed modes must be restored exactly
    modes = [m.training for m in model.modules()]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(20, 6, generator=g) for _ in range(5)]
    ys = [torch.randint(0, 3, (20,), generator=g) for _ in range(5)]
    loader = [(x, y, torch.arange(20)) for x, y in zip(xs, ys, strict=True)]  # (x, y, *rest)

    feats, labels = extract_features(model, loader)
    feats2, _ = extract_features(model, loader)
    res = linear_probe(feats[:70], labels[:70], feats[70:], labels[70:], penalties=[1e-2, 1e-1])

    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert [m.training for m in model.modules()] == modes
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())
    # eval mode was used: BN running stats, no dropout -> deterministic and equal to eval()
    assert torch.equal(feats, feats2)
    model.eval()
    with torch.no_grad():
        ref = torch.cat([model(x) for x in xs])
    assert torch.equal(feats, ref)
    assert torch.equal(labels, torch.cat(ys))
    assert 0.0 <= res["accuracy"] <= 1.0


def test_extract_features_bad_input() -> None:
    model = _backbone()
    with pytest.raises(ValueError, match="loader"):
        extract_features(model, [torch.randn(4, 6)])
    with pytest.raises(ValueError, match="loader"):
        extract_features(model, [])
    with pytest.raises(ValueError, match="backbone"):
        extract_features(lambda x: x, [(torch.randn(4, 6), torch.zeros(4))])  # type: ignore[arg-type]
    assert model.training  # restored even after an error
    with pytest.raises(ValueError, match="length mismatch"):
        extract_features(model, [(torch.randn(4, 6), torch.zeros(3))])
    assert model.training


# -------------------------------------------------------------------------- logistic solver


def test_fit_logistic_reaches_the_optimum() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(300, 7, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (300,), generator=g)
    lam = 1e-2
    fit = fit_logistic(x, y, lam, max_iter=500, tol=1e-9, dtype=torch.float64)
    w = fit.weight.clone().requires_grad_(True)
    b = fit.bias.clone().requires_grad_(True)
    loss = _objective(x, y, w, b, lam)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(fit.loss, rel=1e-12)
    assert w.grad.abs().max() < 1e-7 and b.grad.abs().max() < 1e-7
    assert fit.n_iter > 0 and fit.n_evals >= fit.n_iter


def test_fit_logistic_value_exact_with_huge_logits() -> None:
    # far-apart classes: most probabilities underflow; the objective must stay exact
    x = torch.tensor([[50.0, 0.0], [0.0, 50.0], [-50.0, 0.0]]).repeat(10, 1)
    y = torch.tensor([0, 1, 2]).repeat(10)
    for dt in (torch.float32, torch.float64):
        fit = fit_logistic(x, y, 1e-4, max_iter=200, dtype=dt)
        ref = _objective(x.double(), y, fit.weight.double(), fit.bias.double(), 1e-4)
        assert fit.loss == pytest.approx(float(ref), rel=1e-4, abs=1e-7)
        assert ((x @ fit.weight.float().T + fit.bias.float()).argmax(1) == y).all()


def test_fit_logistic_matches_sklearn_on_digits(digits) -> None:
    xtr, ytr, xte, yte = digits
    xtr, xte = _standardise(xtr, xte)
    lam = 1e-2
    n = xtr.shape[0]
    fit = fit_logistic(xtr, ytr, lam, max_iter=1000, tol=1e-7, dtype=torch.float64)
    sk = LogisticRegression(C=1.0 / (lam * n), max_iter=2000, tol=1e-8).fit(
        xtr.numpy(), ytr.numpy()
    )
    ours = torch.softmax(xte @ fit.weight.T + fit.bias, dim=1).numpy()
    theirs = sk.predict_proba(xte.numpy())
    assert np.abs(ours - theirs).max() < 1e-3
    acc_ours = float((ours.argmax(1) == yte.numpy()).mean())
    acc_sk = float((theirs.argmax(1) == yte.numpy()).mean())
    assert abs(acc_ours - acc_sk) <= 0.01
    sk_obj = _objective(
        xtr, ytr, torch.tensor(sk.coef_), torch.tensor(sk.intercept_), lam
    )
    assert fit.loss <= float(sk_obj) + 1e-7


def test_fit_logistic_warm_start_and_bad_input() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(100, 5, generator=g)
    y = torch.randint(0, 3, (100,), generator=g)
    cold = fit_logistic(x, y, 1e-2, max_iter=300, tol=1e-6)
    warm = fit_logistic(x, y, 1e-2, max_iter=300, tol=1e-6, init=(cold.weight, cold.bias))
    assert warm.n_iter <= 2
    with pytest.raises(ValueError, match="penalty"):
        fit_logistic(x, y, -1.0)
    with pytest.raises(ValueError, match="`y`"):
        fit_logistic(x, y.float(), 1.0)
    with pytest.raises(ValueError, match="length mismatch"):
        fit_logistic(x, y[:10], 1.0)
    with pytest.raises(ValueError, match="init"):
        fit_logistic(x, y, 1.0, init=(torch.zeros(2, 5), torch.zeros(2)))


# -------------------------------------------------------------------------- linear probe


def test_separable_features_give_100_percent() -> None:
    g = torch.Generator().manual_seed(4)
    centers = torch.eye(10)[:4] * 4
    ytr, yte = torch.randint(0, 4, (200,), generator=g), torch.randint(0, 4, (100,), generator=g)
    xtr = centers[ytr] + 0.1 * torch.randn(200, 10, generator=g)
    xte = centers[yte] + 0.1 * torch.randn(100, 10, generator=g)
    res = linear_probe(xtr, ytr, xte, yte)
    assert res["accuracy"] == 1.0
    assert "top5" not in res
    # ties in validation accuracy go to the largest penalty
    best = max(res["val_scores"])
    tied = [p for p, s in zip(res["penalty_grid"], res["val_scores"], strict=True) if s == best]
    assert best == 1.0 and len(tied) > 1 and res["penalty"] == max(tied)


def test_linear_probe_agrees_with_sklearn_on_digits(digits, tmp_path) -> None:
    xtr, ytr, xte, yte = digits
    res = linear_probe(xtr, ytr, xte, yte, reliability_plot=tmp_path / "rel.png")
    assert res["penalty"] in res["penalty_grid"] and len(res["val_scores"]) == 8
    assert res["n_train"] == 1200 and res["n_val"] == 240 and res["n_test"] == xte.shape[0]
    assert res["sklearn_C"] == pytest.approx(1.0 / (res["penalty"] * 1200))
    s_tr, s_te = _standardise(xtr, xte)
    sk = LogisticRegression(C=res["sklearn_C"], max_iter=5000).fit(s_tr.numpy(), ytr.numpy())
    acc_sk = float((sk.predict(s_te.numpy()) == yte.numpy()).mean())
    assert abs(res["accuracy"] - acc_sk) <= 0.01
    assert res["accuracy"] > 0.9 and res["top5"] >= res["accuracy"]
    for key in ("task", "val_fraction", "max_iter", "tol", "seed", "standardize", "solver",
                "dtype", "temperature", "ece", "ece_temperature_scaled", "nll", "val_nll"):
        assert key in res, key
    assert res["temperature"] > 0 and 0 <= res["ece"] <= 1
    rel = res["reliability"]
    assert sum(rel["counts"]) == xte.shape[0] and len(rel["counts"]) == 15
    ece = sum(
        n / xte.shape[0] * abs(a - c)
        for n, a, c in zip(rel["counts"], rel["accuracy"], rel["confidence"], strict=True)
        if n > 0
    )
    assert res["ece"] == pytest.approx(ece, abs=1e-12)
    assert (tmp_path / "rel.png").read_bytes()[:4] == b"\x89PNG"


def test_stratified_validation_split() -> None:
    g = torch.Generator().manual_seed(5)
    y = torch.cat([torch.zeros(50), torch.ones(30), torch.full((20,), 2)]).long()
    x = torch.randn(100, 3, generator=g) + y[:, None].float()
    res = linear_probe(x, y, x[:10], y[:10], penalties=[1e-2, 1e-1], val_fraction=0.2)
    assert res["n_val"] == 10 + 6 + 4
    again = linear_probe(x, y, x[:10], y[:10], penalties=[1e-2, 1e-1], val_fraction=0.2)
    assert again == res  # deterministic given the seed
    other = linear_probe(x, y, x[:10], y[:10], penalties=[1e-2, 1e-1], seed=1)
    assert other["val_nll"] != res["val_nll"]
    # per-group accuracies recombine to the overall accuracy
    xt, yt = x[::3], y[::3]
    grp = torch.arange(xt.shape[0]) % 2
    res = linear_probe(x, y, xt, yt, penalties=[1e-2], groups=grp, group_names=["a", "b"])
    parts = res["groups"]
    assert parts["a"]["n"] + parts["b"]["n"] == xt.shape[0]
    recombined = sum(v["accuracy"] * v["n"] for v in parts.values()) / xt.shape[0]
    assert recombined == pytest.approx(res["accuracy"], abs=1e-12)
    with pytest.raises(ValueError, match="val_fraction"):
        linear_probe(x, y, x, y, val_fraction=1.0)


def test_linear_probe_bad_input() -> None:
    g = torch.Generator().manual_seed(6)
    x, y = torch.randn(40, 4, generator=g), torch.randint(0, 2, (40,), generator=g)
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="train_x"):
        linear_probe(bad, y, x, y)
    with pytest.raises(ValueError, match="length mismatch"):
        linear_probe(x, y[:30], x, y)
    with pytest.raises(ValueError, match="single class"):
        linear_probe(x, torch.zeros_like(y), x, y)
    with pytest.raises(ValueError, match="task"):
        linear_probe(x, y, x, y, task="ranking")
    with pytest.raises(ValueError, match="test_x"):
        linear_probe(x, y, torch.randn(5, 3), y[:5])
    with pytest.raises(ValueError, match="penalties"):
        linear_probe(x, y, x, y, penalties=[])
    with pytest.raises(ValueError, match="train_y"):
        linear_probe(x, y, x, y, task="regression")


# -------------------------------------------------------------------------- regression


def test_fit_ridge_matches_sklearn() -> None:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(80, 6, generator=g, dtype=torch.float64)
    y = torch.randn(80, 2, generator=g, dtype=torch.float64)
    lam = 0.3
    w, b = fit_ridge(x, y, lam)
    sk = Ridge(alpha=lam * 80).fit(x.numpy(), y.numpy())
    assert np.allclose(w.numpy(), sk.coef_, atol=1e-10)
    assert np.allclose(b.numpy(), sk.intercept_, atol=1e-10)


def _reproduce_regression(xtr, ytr, xte, lam):
    s_tr, s_te = _standardise(xtr, xte)
    w, b = fit_ridge(s_tr, ytr.double(), lam)
    return (s_te @ w.T + b).reshape(-1)


def test_regression_probe_metrics_and_groups() -> None:
    g = torch.Generator().manual_seed(8)
    x = torch.randn(300, 5, generator=g) * torch.tensor([1.0, 2.0, 0.5, 3.0, 1.0])
    w_true = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0])
    y = x @ w_true + 10 + 0.3 * torch.randn(300, generator=g)
    xtr, ytr, xte, yte = x[:200], y[:200], x[200:], y[200:]
    groups = (yte > 10).long()
    res = linear_probe(xtr, ytr, xte, yte, task="regression", groups=groups,
                       group_names=["low", "high"])
    pred = _reproduce_regression(xtr, ytr, xte, res["penalty"])
    err = (pred - yte.double()).abs()
    assert res["mae"] == pytest.approx(float(err.mean()), rel=1e-9)
    assert res["mse"] == pytest.approx(float((err**2).mean()), rel=1e-9)
    assert res["gmean"] == pytest.approx(float(np.exp(np.log(err.numpy() + 1e-8).mean())))
    assert res["mae"] < 0.4 and res["val_metric"] == "mae"
    for gid, name in enumerate(["low", "high"]):
        m = groups == gid
        assert res["groups"][name]["n"] == int(m.sum())
        assert res["groups"][name]["mae"] == pytest.approx(float(err[m].mean()), rel=1e-9)
    assert res["penalty"] == res["penalty_grid"][int(np.argmin(res["val_scores"]))]


def test_shot_groups() -> None:
    train = torch.tensor([0.0] * 120 + [1.5] * 50 + [2.2] * 5)
    test = torch.tensor([0.5, 1.0, 1.9, 2.9, 7.0])
    assert shot_groups(train, test).tolist() == [0, 1, 1, 2, 2]
    assert SHOT_NAMES[0] == "many"
    labels = torch.tensor([0] * 150 + [1] * 30 + [2] * 3)
    assert shot_groups(labels, torch.tensor([2, 1, 0])).tolist() == [2, 1, 0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_probe_on_gpu_matches_cpu(digits) -> None:
    xtr, ytr, xte, yte = digits
    cpu = linear_probe(xtr, ytr, xte, yte, dtype=torch.float64)
    gpu = linear_probe(xtr.cuda(), ytr.cuda(), xte.cuda(), yte.cuda(), dtype=torch.float64)
    assert gpu["device"].startswith("cuda")
    assert abs(gpu["accuracy"] - cpu["accuracy"]) <= 0.005
