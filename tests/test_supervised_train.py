"""Supervised ERM / mixup (docs/methods.md §8, §10): mixing maths, recipes, end-to-end runs +
probe."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from contrastmix.errors import RecipeError
from contrastmix.eval.collapse import mixed_pair_features
from contrastmix.eval.evaluate import probe_run
from contrastmix.losses import mixed_cross_entropy
from contrastmix.mixing import cutmix_batch, mixup_batch, sample_pairs
from contrastmix.recipe import RECIPES_DIR, load_recipe
from contrastmix.train.pretrain import pretrain

TINY = [
    "trainer.num_threads=1", "trainer.max_epochs=2", "trainer.limit_train_batches=3",
    "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "model.width=4",
    "data.batch_size=64", "method.save_features_every=1", "method.feature_samples=300",
    "method.geometry_pairs=20", "method.geometry_bins=5", "eval.knn_every_n_epochs=0",
    "eval.probe_max_iter=100",
]
NC_KEYS = ("nc1", "nc2_equinorm", "nc2_equiangular", "nc2_max_angle", "nc3", "nc4",
           "train_acc", "test_acc")


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    """One thread here (small tensors on 2 shared cores); conftest restores the count."""
    torch.set_num_threads(1)


# ------------------------------------------------------------------------------ the loss
def test_mixed_cross_entropy_matches_brute_force_and_reduces_to_ce() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    ya = torch.tensor([0, 1, 2, 3, 0, 1])
    yb = torch.tensor([3, 3, 0, 1, 2, 2])
    # lam = 1: plain cross-entropy (y_b is ignored)
    assert torch.allclose(mixed_cross_entropy(logits, ya, yb, 1.0), F.cross_entropy(logits, ya))
    lam = 0.3
    ref = 0.0
    for i in range(6):  # explicit loop: -lam log p_a - (1 - lam) log p_b
        logp = logits[i] - torch.logsumexp(logits[i], dim=0)
        ref = ref - lam * logp[ya[i]] - (1 - lam) * logp[yb[i]]
    ref = ref / 6
    loss = mixed_cross_entropy(logits, ya, yb, lam)
    assert torch.allclose(loss, ref)
    (grad,) = torch.autograd.grad(loss, logits)
    # d/dz of the mixed CE = softmax - (lam onehot_a + (1 - lam) onehot_b), over B
    target = lam * F.one_hot(ya, 4) + (1 - lam) * F.one_hot(yb, 4)
    assert torch.allclose(grad, (logits.softmax(1) - target).detach() / 6)
    # label smoothing matches torch's on both terms
    ls = mixed_cross_entropy(logits, ya, yb, lam, label_smoothing=0.1)
    want = lam * F.cross_entropy(logits, ya, label_smoothing=0.1) + (1 - lam) * F.cross_entropy(
        logits, yb, label_smoothing=0.1)
    assert torch.allclose(ls, want)
    # half-precision logits: the loss is computed in float32
    assert mixed_cross_entropy(logits.detach().bfloat16(), ya, yb, lam).dtype == torch.float32


def test_mixed_cross_entropy_rejects_bad_input() -> None:
    z, y = torch.randn(3, 2), torch.tensor([0, 1, 0])
    with pytest.raises(ValueError, match="lam"):
        mixed_cross_entropy(z, y, y, 1.5)
    with pytest.raises(ValueError, match="label_smoothing"):
        mixed_cross_entropy(z, y, y, 0.5, label_smoothing=1.0)
    with pytest.raises(ValueError, match="y_b"):
        mixed_cross_entropy(z, y, y[:2], 0.5)
    with pytest.raises(ValueError, match="logits"):
        mixed_cross_entropy(torch.full((3, 2), float("nan")), y, y, 0.5)


# ------------------------------------------------------------------------------ mixing
def test_mixup_batch_is_a_convex_mix_with_a_permutation() -> None:
    b = 16
    x = torch.randn(b, 1, 40)
    y = torch.arange(b)  # distinct labels reveal the permutation
    xm, ya, yb, lam = mixup_batch(x, y, 0.7, generator=torch.Generator().manual_seed(3))
    assert 0.0 <= lam <= 1.0 and torch.equal(ya, y)
    assert sorted(yb.tolist()) == list(range(b))
    assert torch.allclose(xm, lam * x + (1 - lam) * x[yb])
    again = mixup_batch(x, y, 0.7, generator=torch.Generator().manual_seed(3))
    assert torch.equal(again[0], xm) and again[3] == lam  # reproducible from the generator
    lams = [mixup_batch(x, y, 1.0, generator=torch.Generator().manual_seed(s))[3]
            for s in range(200)]
    assert abs(sum(lams) / len(lams) - 0.5) < 0.06  # Beta(1, 1) has mean 1/2
    with pytest.raises(ValueError, match="alpha"):
        mixup_batch(x, y, 0.0)
    with pytest.raises(ValueError, match="y"):
        mixup_batch(x, y[:3], 1.0)


@pytest.mark.parametrize("shape", [(12, 1, 40), (12, 1, 8, 8)])
def test_cutmix_keeps_a_box_and_lam_is_the_kept_share(shape: tuple[int, ...]) -> None:
    b = shape[0]
    y = torch.arange(b)
    x = y.float().reshape(-1, *([1] * (len(shape) - 1))).expand(shape).clone()  # x[i] == i
    for seed in range(10):
        xm, ya, yb, lam = cutmix_batch(x, y, 1.0, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(ya, y) and sorted(yb.tolist()) == list(range(b))
        for i in range(b):
            from_b = xm[i] == yb[i]
            from_a = xm[i] == i
            assert bool((from_a | from_b).all())
            if yb[i] != i:
                # every sample keeps the same share 'lam' of its own entries
                assert math.isclose(float(from_a.float().mean()), lam, abs_tol=1e-6)
                # ... and the pasted region is a box: its extent per axis multiplies to its size
                idx = torch.nonzero(from_b[0])
                if idx.numel():
                    extent = (idx.max(0).values - idx.min(0).values + 1).prod()
                    assert int(extent) == idx.shape[0]
    with pytest.raises(ValueError, match="x"):
        cutmix_batch(torch.randn(4, 10), torch.arange(4))


def test_sample_pairs_respects_classes_and_covers_partners() -> None:
    y = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3, 3, 3])
    g = torch.Generator().manual_seed(0)
    i, j = sample_pairs(y, 4000, same_class=True, generator=g)
    assert bool((y[i] == y[j]).all()) and bool((i != j).all())
    assert 5 not in i.tolist()  # class 2 has a single sample: no same-class partner
    pairs = set(zip(i.tolist(), j.tolist(), strict=True))
    brute = {(a, c) for a in range(10) for c in range(10) if a != c and y[a] == y[c]}
    assert pairs == brute  # every admissible ordered pair appears
    i, j = sample_pairs(y, 4000, same_class=False, generator=g)
    assert bool((y[i] != y[j]).all())
    brute = {(a, c) for a in range(10) for c in range(10) if y[a] != y[c]}
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == brute
    with pytest.raises(ValueError, match="different-class"):
        sample_pairs(torch.zeros(5, dtype=torch.long), 3, same_class=False)
    with pytest.raises(ValueError, match="num_pairs"):
        sample_pairs(y, 0, same_class=True)


def _sample_pairs_loop(y: torch.Tensor, num_pairs: int, same_class: bool,
                       g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-sample loop sample_pairs replaced (same draws: multinomial, then rand)."""
    n = len(y)
    count = {c: int((y == c).sum()) for c in y.tolist()}
    partners = torch.tensor([count[c] - 1 if same_class else n - count[c] for c in y.tolist()],
                            dtype=torch.float64)
    i = torch.multinomial((partners > 0).double(), num_pairs, replacement=True, generator=g)
    u = torch.rand(num_pairs, generator=g, dtype=torch.float64)
    order = sorted(range(n), key=lambda s: (int(y[s]), s))
    j = []
    for ii, uu in zip(i.tolist(), u.tolist(), strict=True):
        r = min(int(uu * partners[ii]), int(partners[ii]) - 1)
        cands = [s for s in order if (y[s] == y[ii] and s != ii) == same_class
                 and (same_class or y[s] != y[ii])]
        j.append(cands[r])
    return i, torch.tensor(j)


def test_sample_pairs_vectorised_draws_equal_the_loop() -> None:
    """Same pairs as the per-sample loop for a fixed generator (the random stream is kept)."""
    g0 = torch.Generator().manual_seed(3)
    for _ in range(20):
        y = torch.randint(0, 4, (int(torch.randint(3, 30, (1,), generator=g0)),),
                          generator=g0) * 3 - 2
        for same in (True, False):
            if (same and len(set(y.tolist())) == len(y)) or (not same and len(set(y.tolist())) < 2):
                continue
            seed = int(torch.randint(0, 10**6, (1,), generator=g0))
            gen = torch.Generator().manual_seed(seed)
            got = sample_pairs(y, 40, same_class=same, generator=gen)
            want = _sample_pairs_loop(y, 40, same, torch.Generator().manual_seed(seed))
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_mixed_pair_features_mixes_inputs_and_restores_train_mode() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    net.train()
    xa, xb = torch.randn(5, 3), torch.randn(5, 3)
    lams = torch.tensor([0.0, 0.25, 1.0])
    feats, lam = mixed_pair_features(net, xa, xb, lams, batch_size=2)
    assert feats.shape == (15, 2) and torch.equal(lam, lams.repeat_interleave(5))
    net.eval()
    with torch.no_grad():
        assert torch.allclose(feats[5:10], net(0.25 * xa + 0.75 * xb))
        assert torch.allclose(feats[10:], net(xa))
    net.train()
    mixed_pair_features(net, xa, xb, lams)
    assert net.training and net[1].training


# ------------------------------------------------------------------------------ recipes
def test_recipes_load_and_differ_only_in_the_method() -> None:
    erm = load_recipe(RECIPES_DIR / "erm_mnist1d.yaml")
    mix = load_recipe(RECIPES_DIR / "mixup_mnist1d.yaml")
    assert erm.method.name == "erm" and mix.method.name == "mixup"
    assert mix.method.mixup_alpha == 1.0 and mix.method.cutmix_prob == 0.0
    assert erm.optim.weight_decay == 5e-4 and erm.optim.name == "sgd"
    for section in ("data", "model", "optim", "trainer"):
        assert erm[section] == mix[section], section
    with pytest.raises(RecipeError, match="mixup_alpha"):  # ERM has no mixup knobs
        load_recipe(RECIPES_DIR / "erm_mnist1d.yaml", ["method.mixup_alpha=0.2"])


# ------------------------------------------------------------------------------ end to end
@pytest.mark.parametrize("method", ["erm", "mixup"])
def test_tiny_run_logs_collapse_saves_features_and_probes(method: str, tmp_path: Path) -> None:
    cfg = load_recipe(RECIPES_DIR / f"{method}_mnist1d.yaml", TINY)
    run = pretrain(cfg, tmp_path / method)

    # NC metrics and accuracies at both epochs, finite
    import csv

    with (run / "metrics.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("nc1")]
    assert len(rows) == 2
    for r in rows:
        for k in NC_KEYS:
            assert math.isfinite(float(r[k])), (k, r[k])
        assert 0.0 <= float(r["nc4"]) <= 1.0 and 0.0 <= float(r["test_acc"]) <= 1.0
    summary = json.loads((run / "run.json").read_text())
    assert summary["method"] == method and "nc3" in summary["metrics"]

    # per-epoch feature files in the report's format
    from contrastmix.eval.report import load_epoch_features

    files = sorted((run / "features").glob("epoch_*.pt"))
    assert [f.name for f in files] == ["epoch_001.pt", "epoch_002.pt"]
    for e, f in enumerate(files, start=1):
        obj = torch.load(f, weights_only=True)
        assert {"features", "labels", "epoch"} <= set(obj) and obj["epoch"] == e
        assert obj["features"].shape == (300, 32) and obj["labels"].shape == (300,)
        assert f.stat().st_size < 2_000_000
    entries, problems = load_epoch_features(run)
    assert problems == [] and [e for e, _, _ in entries] == [1, 2]
    assert torch.equal(entries[0][2], entries[1][2])  # the same samples every epoch

    # classifier, mixup geometry, projection plot
    clf = torch.load(run / "classifier.pt", weights_only=True)
    assert clf["weight"].shape == (10, 32) and clf["bias"].shape == (10,)
    geo = json.loads((run / "mixup_geometry.json").read_text())
    assert geo["num_same_class"] == geo["num_different_class"] == 20 * 5
    assert len(geo["margin_mean"]) == 5 and geo["same_class_count"] == [20] * 5
    assert all(0.0 <= v <= 1.0 for v in geo["off_plane_share"])
    assert (run / "mixup_projection.png").stat().st_size > 1000

    # artifacts.json lists what evaluation may read (read without the training code)
    from contrastmix.rundir import read_artifacts

    art = read_artifacts(run)
    assert {"classifier.pt", "features", "mixup_geometry.json",
            "mixup_projection.png"} <= set(art.files)
    assert art.projector is None and "nc1" in art.expected_metrics

    # the checkpoint names its method (resume check) and carries the generator states
    # (mixup's mixing stream; ERM draws nothing at random)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["cfg"]["method"]["name"] == method
    assert "generator_states" in ckpt
    if method == "mixup":
        assert "mix" in ckpt["generator_states"]

    # `contrastmix probe` still works on the run (it probes `.backbone`)
    res = probe_run(run)
    assert res["method"] == method and 0.1 < res["accuracy"] <= 1.0


def test_cutmix_training_step_on_images_gives_finite_gradients() -> None:
    import warnings

    from omegaconf import OmegaConf

    from contrastmix.data.registry import build_data
    from contrastmix.methods import get_method

    cfg = load_recipe(RECIPES_DIR / "mixup_mnist1d.yaml", [
        "data.name=digits", "data.seed=0", "model.backbone=cnn2d", "model.width=4",
        "method.cutmix_prob=1.0",
    ])
    data = build_data(cfg.data)
    module = get_method("mixup")(OmegaConf.to_container(cfg, resolve=True), data)  # type: ignore[arg-type]
    x = torch.stack([data.train[i][0] for i in range(16)])
    y = torch.stack([torch.as_tensor(data.train[i][1]) for i in range(16)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a trainer
        loss = module.training_step((x, y, torch.arange(16)), 0)
    loss.backward()
    assert math.isfinite(float(loss.detach()))
    grads = [p.grad for p in module.parameters() if p.requires_grad]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)


# ------------------------------------------------------------------------------ the methods
@pytest.mark.parametrize(
    ("recipe", "override"),
    [
        ("erm_mnist1d", "method.label_smoothing=1.0"),
        ("erm_mnist1d", "method.label_smoothing=-0.1"),
        ("erm_mnist1d", "method.save_features_every=-1"),
        ("erm_mnist1d", "method.feature_samples=0"),
        ("erm_mnist1d", "method.geometry_pairs=-1"),
        ("erm_mnist1d", "method.geometry_bins=0"),
        ("mixup_mnist1d", "method.mixup_alpha=0"),
        ("mixup_mnist1d", "method.cutmix_prob=1.5"),
        ("mixup_mnist1d", "method.feature_samples=0"),  # ERM's checks apply to mixup too
    ],
)
def test_method_values_rejected_when_the_recipe_loads(recipe: str, override: str) -> None:
    key = override.split("=")[0]
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe, [override])
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("invalid method setting:")
    assert f"`{key}` must be" in msg


def _module(method: str, overrides: list[str] | None = None):  # noqa: ANN202
    from omegaconf import OmegaConf

    from contrastmix.data.registry import build_data
    from contrastmix.methods import get_method

    cfg = load_recipe(RECIPES_DIR / f"{method}_mnist1d.yaml", ["model.width=4", *(overrides or [])])
    plain = OmegaConf.to_container(cfg, resolve=True)
    return get_method(method)(plain, build_data(cfg.data)), plain  # type: ignore[arg-type]


def test_erm_leaves_the_batch_unchanged_and_mixup_mixes_it() -> None:
    erm, _ = _module("erm")
    mixup, _ = _module("mixup")
    x, y = torch.randn(8, 1, 40), torch.arange(8)
    xe, ya, yb, lam = erm.mix(x, y)
    assert xe is x and ya is y and yb is y and lam == 1.0
    xm, ya, yb, lam = mixup.mix(x, y)
    assert 0.0 <= lam <= 1.0 and torch.equal(ya, y)
    assert torch.allclose(xm, lam * x + (1 - lam) * x[yb])
    assert isinstance(mixup.classifier, torch.nn.Linear) and mixup.classifier.out_features == 10


def test_mixing_stream_resumes_from_the_checkpoint() -> None:
    # the base saves every seeded generator in the checkpoint: a resumed run draws what the
    # uninterrupted one would have drawn next
    a, _ = _module("mixup", ["method.cutmix_prob=0.5"])
    x, y = torch.randn(8, 1, 40), torch.arange(8)
    for _ in range(3):
        a.mix(x, y)
    ckpt: dict = {}
    a.on_save_checkpoint(ckpt)
    assert set(ckpt["generator_states"]) == {"mix"}
    b, _ = _module("mixup", ["method.cutmix_prob=0.5"])
    b.on_load_checkpoint(ckpt)
    for _ in range(4):
        xa, _, yba, la = a.mix(x, y)
        xb, _, ybb, lb = b.mix(x, y)
        assert la == lb and torch.equal(yba, ybb) and torch.equal(xa, xb)
    fresh, _ = _module("mixup", ["method.cutmix_prob=0.5"])
    assert fresh.mix(x, y)[3] != a.mix(x, y)[3]  # a fresh module starts the stream over


def test_supervised_methods_need_a_classification_dataset() -> None:
    from contrastmix.data.registry import DataBundle
    from contrastmix.methods import get_method

    _, plain = _module("erm")
    reg = DataBundle(pretrain=[], train=[], test=[], batch_augment=None, in_channels=1,
                     num_classes=0, task="regression")
    for method in ("erm", "mixup"):
        with pytest.raises(ValueError, match="trains on classification data"):
            get_method(method)(plain, reg)
    one = DataBundle(pretrain=[], train=[], test=[], batch_augment=None, in_channels=1,
                     num_classes=1)
    with pytest.raises(ValueError, match="num_classes"):
        get_method("erm")(plain, one)
