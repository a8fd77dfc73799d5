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
    fit_lad,
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
    assert res["penalty"] in res["penalty_grid"]
    assert len(res["val_scores"]) == len(res["penalty_grid"]) >= 6
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


# -------------------------------------------------------------------------- convergence (issue 16)
# Reference accuracies: scikit-learn LogisticRegression(C=1/(penalty n), tol=1e-10) at every
# penalty of the default grid (10 .. 1e-6, strongest first), as correct test predictions.
# test_references_are_sklearns (slow) recomputes them; the fast tests compare against them.
GRID_STRONG_FIRST = (10.0, 1.0, 0.1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
DIGITS_SK_CORRECT = (443, 488, 511, 524, 526, 523, 521, 520)  # of 540
MNIST1D_SK_CORRECT = (102, 152, 172, 177, 172, 168, 164, 161)  # of 500
DIGITS_SK_DEFAULT_CORRECT = 524  # LogisticRegression(max_iter=5000) on pixels / 16


@pytest.fixture(scope="module")
def digits_issue() -> tuple[torch.Tensor, ...]:
    """The issue's split: digits pixels / 16, stratified 70/30, seed 0 (float64)."""
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x / 16, y, test_size=0.3, stratify=y, random_state=0)
    return tuple(torch.tensor(a) for a in (xtr, ytr, xte, yte))


@pytest.fixture(scope="module")
def mnist1d_features() -> tuple[torch.Tensor, ...]:
    """Fixed random ReLU features (64) of MNIST-1D signals: 800 train, 500 test (float64)."""
    from contrastmix.data.mnist1d import load_mnist1d

    xtr, ytr = load_mnist1d("train")
    xte, yte = load_mnist1d("test")
    proj = torch.randn(40, 64, generator=torch.Generator().manual_seed(0),
                       dtype=torch.float64) / 40**0.5
    feats = [torch.relu(x[:, 0].double() @ proj) for x in (xtr[:800], xte[:500])]
    return feats[0], ytr[:800], feats[1], yte[:500]


def _grid_correct(data, fit_fn) -> list[int]:
    """Correct test predictions of ``fit_fn(x, y, penalty, init)`` along the default grid."""
    xtr, ytr, xte, yte = data
    s_tr, s_te = _standardise(xtr, xte)
    out, init = [], None
    for lam in GRID_STRONG_FIRST:
        w, b = fit_fn(s_tr, ytr, lam, init)
        init = (w, b)
        out.append(int(((s_te @ w.T + b).argmax(1) == yte).sum()))
    return out


def _ours(s_tr, ytr, lam, init):
    fit = fit_logistic(s_tr, ytr, lam, init=init)
    assert fit.converged and fit.grad_max <= 1e-6, (lam, fit)
    return fit.weight, fit.bias


@pytest.mark.parametrize("name", ["digits_issue", "mnist1d_features"])
def test_fit_logistic_matches_sklearn_at_every_grid_penalty(name, request) -> None:
    data = request.getfixturevalue(name)
    ref = DIGITS_SK_CORRECT if name == "digits_issue" else MNIST1D_SK_CORRECT
    m = data[2].shape[0]
    ours = _grid_correct(data, _ours)
    for lam, a, r in zip(GRID_STRONG_FIRST, ours, ref, strict=True):
        assert abs(a - r) / m <= 0.003, (lam, a, r)  # within 0.3 points


@pytest.mark.slow
@pytest.mark.parametrize("name", ["digits_issue", "mnist1d_features"])
def test_references_are_sklearns(name, request) -> None:
    data = request.getfixturevalue(name)
    n = data[0].shape[0]

    def sk(s_tr, ytr, lam, init):
        clf = LogisticRegression(C=1.0 / (lam * n), tol=1e-10, max_iter=100_000)
        clf.fit(s_tr.numpy(), ytr.numpy())
        return torch.tensor(clf.coef_), torch.tensor(clf.intercept_)

    ref = DIGITS_SK_CORRECT if name == "digits_issue" else MNIST1D_SK_CORRECT
    assert tuple(_grid_correct(data, sk)) == ref
    if name == "digits_issue":
        xtr, ytr, xte, yte = data
        clf = LogisticRegression(max_iter=5000).fit(xtr.numpy(), ytr.numpy())
        assert int((clf.predict(xte.numpy()) == yte.numpy()).sum()) == DIGITS_SK_DEFAULT_CORRECT


def test_default_probe_within_half_a_point_of_sklearn_default(digits_issue) -> None:
    xtr, ytr, xte, yte = digits_issue
    res = linear_probe(xtr.float(), ytr, xte.float(), yte)
    assert res["accuracy"] >= DIGITS_SK_DEFAULT_CORRECT / 540 - 0.005
    assert res["converged"] and all(res["val_converged"]) and res["warnings"] == []
    assert len(res["val_n_iter"]) == len(res["penalty_grid"]) == len(res["val_scores"])
    # ties: the strongest penalty with the best validation accuracy
    tol = 1e-12
    best = max(res["val_scores"])
    tied = [p for p, s in zip(res["penalty_grid"], res["val_scores"], strict=True)
            if s >= best - tol]
    assert res["penalty"] == max(tied)


def test_unconverged_fits_are_reported() -> None:
    g = torch.Generator().manual_seed(11)
    x = torch.randn(200, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (200,), generator=g)
    cut = fit_logistic(x, y, 1e-3, max_iter=2, solver="lbfgs")
    assert not cut.converged and cut.stop == "max_iter" and cut.grad_max > 1e-6
    newton = fit_logistic(x, y, 1e-3, max_iter=1, solver="newton")
    assert not newton.converged and newton.stop == "max_iter"
    full = fit_logistic(x, y, 1e-3, solver="newton")
    assert full.converged and full.stop == "gradient" and full.n_iter < 20
    ref = fit_logistic(x, y, 1e-3, solver="lbfgs", tol=1e-9)
    assert full.loss == pytest.approx(ref.loss, rel=1e-10)
    # float32 stalls before the gradient tolerance at a weak penalty: flagged, not hidden
    f32 = fit_logistic(x, y, 1e-6, tol=1e-9, dtype=torch.float32, solver="lbfgs")
    assert not f32.converged and f32.stop in ("stalled", "max_iter")
    res = linear_probe(x[:150], y[:150], x[150:], y[150:], max_iter=2, solver="lbfgs",
                       extend_grid=0)
    assert not all(res["val_converged"]) and not res["converged"]
    assert any("unconverged" in w and "penalty" in w for w in res["warnings"])
    with pytest.raises(ValueError, match="solver"):
        fit_logistic(x, y, 1.0, solver="sgd")


def test_select_ties_go_to_the_stronger_penalty() -> None:
    from contrastmix.eval.probe import _select

    grid = [1e-3, 1e-2, 1e-1, 1.0]
    assert _select(grid, [0.90, 0.95, 0.95, 0.80], True, 0.0) == 2  # exact tie
    assert _select(grid, [0.90, 0.955, 0.95, 0.80], True, 0.0) == 1
    assert _select(grid, [0.90, 0.955, 0.95, 0.80], True, 0.006) == 2  # within one sample
    assert _select(grid, [3.0, 2.0, 2.001, 5.0], False, 0.01) == 2  # MAE: lower is better


def test_grid_is_extended_at_its_edge() -> None:
    g = torch.Generator().manual_seed(12)
    # noise-free targets: the weakest ridge penalty always wins, the grid grows downwards
    x = torch.randn(120, 4, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    res = linear_probe(x[:90], y[:90], x[90:], y[90:], task="regression",
                       penalties=[10.0, 100.0], l1_loss=False)
    assert res["penalty_grid"] == pytest.approx([1e-2, 1e-1, 1.0, 10.0, 100.0])
    assert res["grid_extensions"] == 3 and res["penalty"] == pytest.approx(1e-2)
    assert res["penalty_grid_start"] == [10.0, 100.0]
    assert any("edge of the grid" in w for w in res["warnings"])
    fixed = linear_probe(x[:90], y[:90], x[90:], y[90:], task="regression",
                         penalties=[10.0, 100.0], l1_loss=False, extend_grid=0)
    assert fixed["penalty_grid"] == [10.0, 100.0] and fixed["grid_extensions"] == 0
    # classification with a clear signal: too strong a grid grows downwards until it peaks
    centers = torch.randn(3, 8, generator=g, dtype=torch.float64)
    # imbalanced classes: under a huge penalty the (unpenalised) bias predicts the majority
    yc = torch.multinomial(torch.tensor([0.6, 0.25, 0.15]), 300, replacement=True,
                           generator=g)
    xc = centers[yc] + 0.8 * torch.randn(300, 8, generator=g, dtype=torch.float64)
    res = linear_probe(xc[:200], yc[:200], xc[200:], yc[200:], penalties=[1.0, 10.0])
    assert res["penalty_grid"] == pytest.approx([1e-2, 1e-1, 1.0, 10.0])
    assert res["penalty"] == pytest.approx(0.1) and res["grid_extensions"] == 2
    assert res["warnings"] == [] and all(res["val_converged"])
    # ... and a flat top (every strong penalty ties) makes it grow upwards, then warn
    flat = linear_probe(xc[:200], yc[:200], xc[200:], yc[200:], penalties=[100.0, 1e3])
    assert flat["penalty_grid"][-1] == pytest.approx(1e6) and flat["grid_extensions"] == 3
    assert any("edge of the grid" in w for w in flat["warnings"])


# -------------------------------------------------------------------------- L1-loss probe


def _lad_objective(x, y2, w, b, lam):
    return float((x @ w.T + b - y2).abs().mean() + lam * w.pow(2).sum())


def test_fit_lad_matches_a_linear_program() -> None:
    from scipy.optimize import linprog

    g = torch.Generator().manual_seed(13)
    x = torch.randn(80, 3, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + 1.0
    y = y + torch.distributions.Laplace(0.0, 0.5).sample((80,)).double()
    y[:5] += 20.0  # outliers: L1 and L2 fits differ
    fit = fit_lad(x, y, 0.0)
    # LP: min sum(u + v) s.t. x w + b + u - v = y, u, v >= 0
    n, d = x.shape
    a_eq = np.hstack([x.numpy(), np.ones((n, 1)), np.eye(n), -np.eye(n)])
    cost = np.concatenate([np.zeros(d + 1), np.ones(2 * n)]) / n
    bounds = [(None, None)] * (d + 1) + [(0, None)] * (2 * n)
    lp = linprog(cost, A_eq=a_eq, b_eq=y.numpy(), bounds=bounds, method="highs")
    assert lp.status == 0 and fit.converged
    assert fit.loss == pytest.approx(lp.fun, rel=1e-6)
    assert torch.allclose(fit.weight[0], torch.tensor(lp.x[:d]), atol=1e-3)
    ridge_w, _ = fit_ridge(x, y, 0.0)
    assert (ridge_w[0] - fit.weight[0]).abs().max() > 0.05  # the outliers pull ridge


def test_fit_lad_with_penalty_is_optimal() -> None:
    from scipy.optimize import minimize

    g = torch.Generator().manual_seed(14)
    x = torch.randn(60, 3, generator=g, dtype=torch.float64)
    y = torch.stack([x @ torch.tensor([1.0, -1.0, 2.0], dtype=torch.float64),
                     x[:, 0] - 3.0], 1) + 0.3 * torch.randn(60, 2, generator=g).double()
    lam = 0.05
    fit = fit_lad(x, y, lam)
    ours = _lad_objective(x, y, fit.weight, fit.bias, lam)
    assert ours == pytest.approx(fit.loss, rel=1e-12)

    def f(theta):
        t = torch.tensor(theta).reshape(2, 4)
        return _lad_objective(x, y, t[:, :3], t[:, 3], lam)

    start = torch.cat([fit.weight, fit.bias[:, None]], 1).reshape(-1).numpy()
    for s0 in (start, np.zeros(8)):
        ref = minimize(f, s0, method="Powell", options={"xtol": 1e-10, "ftol": 1e-12})
        assert ours <= ref.fun + 1e-7


def test_regression_probe_reports_l1_beside_ridge() -> None:
    g = torch.Generator().manual_seed(15)
    x = torch.randn(300, 5, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0]) + 0.3 * torch.randn(300, generator=g)
    y[:20] += 30.0  # outliers in train only
    res = linear_probe(x[:200], y[:200], x[200:], y[200:], task="regression",
                       groups=(y[200:] > 0).long())
    l1 = res["l1_loss"]
    assert l1["mae"] < res["mae"] and l1["val_metric"] == "mae" and l1["converged"]
    assert l1["penalty"] in l1["penalty_grid"] and len(l1["val_scores"]) == len(l1["penalty_grid"])
    assert set(l1["groups"]) == set(res["groups"])
    s_tr, s_te = _standardise(x[:200], x[200:])
    fit = fit_lad(s_tr, y[:200].double(), l1["penalty"])
    err = ((s_te @ fit.weight.T + fit.bias).reshape(-1) - y[200:].double()).abs()
    assert l1["mae"] == pytest.approx(float(err.mean()), rel=1e-4)  # IRLS tolerance
    assert "l1_loss" not in linear_probe(x[:200], y[:200], x[200:], y[200:], task="regression",
                                    l1_loss=False)
    with pytest.raises(ValueError, match="penalty"):
        fit_lad(x, y, -1.0)
