"""Options and recipes for the claim-checking sweeps (issue 16, items 2-4).

RnC as its paper runs it and SupReMix without projector / without mixtures (regression), and
their bundled recipes: each builds, and one training step's loss acts on what the recipe says
(backbone features or projections, normalised or not).
"""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from contrastmix._counter_rng import draw_seed, reference_uniform
from contrastmix.data.registry import DataBundle, TensorIndexDataset
from contrastmix.losses.mochi import mochi_loss
from contrastmix.losses.moco import moco_infonce
from contrastmix.losses.rnc import rnc_loss
from contrastmix.mixing import mochi as mochi_mod
from contrastmix.recipe import load_recipe
from contrastmix.train.pretrain import build_method

TINY = ["model.width=4", "model.proj_hidden_dim=16", "model.proj_output_dim=8"]
REGRESSION_RECIPES = {
    # recipe: (projector built, features normalised)
    "rnc_paper_rotated_digits": (False, False),
    "supremix_noproj_rotated_digits": (False, True),
    "supremix_nomix_rotated_digits": (True, True),
    "supremix_nomix_nodw_rotated_digits": (True, True),
}



def _plain(cfg: object) -> dict:
    out = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[arg-type]
    assert isinstance(out, dict)
    return out


def _regression_bundle(n: int = 12) -> DataBundle:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 16, 16, generator=g)
    y = torch.linspace(0.0, 89.0, n)
    ds = TensorIndexDataset(x, y)
    return DataBundle(ds, ds, ds, None, 1, 0, task="regression")


# ------------------------------------------------------------------------------ regression
def test_regression_recipes_say_what_they_claim() -> None:
    rnc = load_recipe("rnc_paper_rotated_digits").method
    assert (rnc.name, rnc.temperature, rnc.normalize, rnc.projector) == ("rnc", 2.0, False, False)
    assert load_recipe("supremix_noproj_rotated_digits").method.projector is False
    for name, dw in (("supremix_nomix_rotated_digits", True),
                     ("supremix_nomix_nodw_rotated_digits", False)):
        m = load_recipe(name).method
        assert not m.hard_negatives and not m.hard_positives and m.distance_weighting is dw
    base = _plain(load_recipe("supremix_rotated_digits"))
    for name in REGRESSION_RECIPES:  # same data, encoder and budget as the recipe they ablate
        other = _plain(load_recipe(name))
        for section in ("data", "optim", "trainer"):
            assert other[section] == base[section], (name, section)
        assert other["model"]["backbone"] == base["model"]["backbone"]
        assert other["model"]["width"] == base["model"]["width"]


@pytest.mark.parametrize("recipe", list(REGRESSION_RECIPES))
def test_regression_recipe_step_acts_on_the_right_features(recipe: str) -> None:
    has_proj, normalised = REGRESSION_RECIPES[recipe]
    cfg = _plain(load_recipe(recipe, TINY))
    data = _regression_bundle()
    module = build_method(cfg, data)
    assert (module.projector is not None) is has_proj
    x, y = data.pretrain.x, data.pretrain.y  # type: ignore[attr-defined]
    g = torch.Generator().manual_seed(1)
    x2 = x + 0.05 * torch.randn(x.shape, generator=g)
    feats = module.project_views([x, x2])  # type: ignore[attr-defined]
    h = module.backbone(torch.cat([x, x2]))
    want = h if module.projector is None else module.projector(h)
    want = F.normalize(want, dim=1) if normalised else want
    want = torch.stack([want[: len(x)], want[len(x):]], dim=1)
    assert feats.shape == want.shape
    torch.testing.assert_close(feats, want)
    if not normalised:  # the paper's RnC: raw features, whose norms are not 1
        assert float((feats.detach().norm(dim=2) - 1).abs().max()) > 1e-2
    loss = module.compute_loss(feats, module.loss_labels(y))  # type: ignore[attr-defined]
    c = module.config
    if c.name == "rnc":
        torch.testing.assert_close(loss, rnc_loss(want, y, 2.0))
    elif not (c.hard_negatives or c.hard_positives):  # no mixtures: no random draw
        ref = _weighted_supcon(want, y, c.temperature, c.distance_weighting)
        torch.testing.assert_close(loss, ref)
    loss.backward()
    assert all(p.grad is not None for p in module.backbone.parameters() if p.requires_grad)


def _weighted_supcon(feats: torch.Tensor, y: torch.Tensor, tau: float, weighted: bool
                     ) -> torch.Tensor:
    """Brute-force SupReMix without mixtures: SupCon on exact labels whose denominator terms
    are weighted by ``1 + |y_i - y_c|`` when ``weighted`` (docs/methods.md §2)."""
    z = torch.cat([feats[:, 0], feats[:, 1]]).double()
    lab = torch.cat([y, y]).double()
    losses = []
    for i in range(len(z)):
        others = [c for c in range(len(z)) if c != i]
        pos = [c for c in others if lab[c] == lab[i]]
        if not pos:
            continue
        w = [1 + abs(float(lab[i] - lab[c])) if weighted else 1.0 for c in others]
        log_den = torch.logsumexp(torch.stack([
            torch.log(torch.tensor(wc, dtype=torch.float64)) + z[i] @ z[c] / tau
            for wc, c in zip(w, others, strict=True)]), dim=0)
        losses.append(-torch.stack([z[i] @ z[p] / tau - log_den for p in pos]).mean())
    return torch.stack(losses).mean().float()


def test_projector_option_is_checked() -> None:
    from contrastmix.errors import RecipeError

    with pytest.raises(RecipeError, match="method.projector"):
        load_recipe("rnc_rotated_digits", ["method.projector=maybe"])


# ------------------------------------------------------------------------------ MoCHi oracle
def _oracle_reference(q, key, queue, qids, kids, qlab, klab, n_hard, s, s2, tau, seed,
                      exclude_same_instance):
    """Brute force of MoCHi with the class oracle, from the spec (docs/methods.md §1): per
    query, sort the queue rows that are neither its sample nor its class by similarity, keep
    the top ``n_hard``, map the documented counter-based uniforms to ranks, materialise the
    mixtures, and take InfoNCE over [key, every real negative, synthetic] / tau."""
    b_size, k = q.shape[0], queue.shape[0]
    width = 3 * s + 2 * s2
    qd = q.detach()
    losses = []
    for b in range(b_size):
        u = [reference_uniform(seed, b * width + t) for t in range(width)]
        eligible = [r for r in range(k)
                    if int(klab[r]) != int(qlab[b]) and int(kids[r]) != int(qids[b])]
        eligible.sort(key=lambda r: -float(qd[b] @ queue[r]))
        hard = eligible[:n_hard]
        syn = []
        if hard:
            rank = [hard[min(int(v * len(hard)), len(hard) - 1)] for v in u[: 2 * s + s2]]
            for t in range(s):
                a = u[2 * s + s2 + t]
                syn.append(F.normalize(a * queue[rank[t]] + (1 - a) * queue[rank[s + t]], dim=0))
            for t in range(s2):
                bt = 0.5 * u[3 * s + s2 + t]
                syn.append(F.normalize(bt * qd[b] + (1 - bt) * queue[rank[2 * s + t]], dim=0))
        denom = [r for r in range(k)
                 if not (exclude_same_instance and int(kids[r]) == int(qids[b]))]
        logits = torch.stack([q[b] @ key[b], *[q[b] @ queue[r] for r in denom],
                              *[q[b] @ h for h in syn]]) / tau
        losses.append(torch.logsumexp(logits, dim=0) - logits[0])
    return torch.stack(losses).mean()


@pytest.mark.parametrize("numba_on", [True, False])
@pytest.mark.parametrize("exclude_same_instance", [True, False])
def test_class_oracle_matches_brute_force(numba_on: bool, exclude_same_instance: bool,
                                          monkeypatch) -> None:
    monkeypatch.setattr(mochi_mod, "USE_NUMBA", numba_on)
    g = torch.Generator().manual_seed(3)
    b, k, d, tau, n_hard, s, s2 = 6, 48, 8, 0.2, 5, 7, 3
    q0 = F.normalize(torch.randn(b, d, generator=g), dim=1)
    key = F.normalize(torch.randn(b, d, generator=g), dim=1)
    queue = F.normalize(torch.randn(k, d, generator=g), dim=1)
    qids, kids = torch.arange(b), torch.randint(0, 12, (k,), generator=g)
    qlab, klab = torch.randint(0, 3, (b,), generator=g), torch.randint(-1, 3, (k,), generator=g)
    qlab[-1] = 0
    klab[klab == 0] = 1  # query b-1's class has no queue row; -1 (unknown) matches no class
    seed = int(draw_seed(torch.Generator().manual_seed(9), torch.device("cpu")))
    q = q0.clone().requires_grad_()
    loss = mochi_loss(q, key, queue, tau, num_hard=n_hard, num_mix=s, num_query_mix=s2,
                      exclude_same_instance=exclude_same_instance, queue_ids=kids,
                      query_ids=qids, queue_labels=klab, query_labels=qlab,
                      generator=torch.Generator().manual_seed(9))
    loss.backward()
    q_ref = q0.clone().requires_grad_()
    ref = _oracle_reference(q_ref, key, queue, qids, kids, qlab, klab, n_hard, s, s2, tau, seed,
                            exclude_same_instance)
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(q.grad, q_ref.grad, rtol=1e-4, atol=1e-5)
    # not vacuous: without the oracle, same-class rows are among the hard sets
    sims = q0 @ queue.T
    sims[qids[:, None] == kids[None, :]] = float("-inf")
    top = sims.topk(n_hard, dim=1).indices
    assert bool((klab[top] == qlab[:, None]).any())
    plain = mochi_loss(q0, key, queue, tau, num_hard=n_hard, num_mix=s, num_query_mix=s2,
                       exclude_same_instance=exclude_same_instance, queue_ids=kids,
                       query_ids=qids, generator=torch.Generator().manual_seed(9))
    assert not torch.allclose(plain, loss.detach())


def test_class_oracle_without_eligible_rows_is_moco_and_bad_labels_are_refused() -> None:
    g = torch.Generator().manual_seed(4)
    q = F.normalize(torch.randn(4, 8, generator=g), dim=1)
    key = F.normalize(torch.randn(4, 8, generator=g), dim=1)
    queue = F.normalize(torch.randn(16, 8, generator=g), dim=1)
    same = torch.zeros(16, dtype=torch.long)  # every row is of the queries' class
    loss = mochi_loss(q, key, queue, 0.2, num_hard=4, num_mix=4, num_query_mix=2,
                      queue_labels=same, query_labels=torch.zeros(4, dtype=torch.long),
                      generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loss, moco_infonce(q, key, queue, 0.2))
    kw = {"num_hard": 4, "num_mix": 4, "num_query_mix": 2}
    with pytest.raises(ValueError, match="`queue_labels` and `query_labels` must be given"):
        mochi_loss(q, key, queue, queue_labels=same, **kw)
    with pytest.raises(ValueError, match=r"`query_labels` must be a \[4\] tensor"):
        mochi_loss(q, key, queue, queue_labels=same, query_labels=torch.zeros(3).long(), **kw)
    with pytest.raises(ValueError, match="`queue_labels` must hold integer class labels"):
        mochi_loss(q, key, queue, queue_labels=same.float(),
                   query_labels=torch.zeros(4, dtype=torch.long), **kw)


# ------------------------------------------------------------------------------ paired seeds
class _RecordBatches(pl.Callback):
    """Records, per training step, the sample ids and both augmented views, and whether
    MoCHi appended synthetic negatives."""

    def __init__(self) -> None:
        self.steps: list[tuple[torch.Tensor, list[torch.Tensor]]] = []
        self.mixed: list[bool] = []

    def on_train_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        augment = pl_module.augment

        def recording_augment(x):  # noqa: ANN001, ANN202
            out = augment(x)
            self.steps[-1][1].append(out.detach().clone())
            return out

        pl_module.augment = recording_augment

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        self.steps.append((batch[2].clone(), []))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        mochi = getattr(pl_module, "mochi", None)
        self.mixed.append(bool(mochi.last_mixed) if mochi is not None else False)


PAIRED = [
    "trainer.max_epochs=3", "trainer.limit_train_batches=2", "eval.knn_every_n_epochs=0",
    "trainer.enable_progress_bar=false", "trainer.num_threads=1", "data.batch_size=32",
    "model.width=4", "model.proj_hidden_dim=16", "model.proj_output_dim=8",
    "method.queue_size=64",
]


@pytest.mark.slow
def test_moco_and_mochi_of_one_seed_see_the_same_batches(tmp_path) -> None:  # noqa: ANN001
    """Paired seeds pair: MoCHi's mixing draws come from its own generator, so the loader order
    (torch's global RNG at each epoch) and the augmentation stream equal MoCo's, also after
    the warm-up, when MoCHi mixes."""
    from contrastmix.train.pretrain import pretrain

    runs = {}
    for name, extra in (("moco_mnist1d", []),
                        ("mochi_mnist1d", ["method.warmup_epochs=1", "method.num_hard=8",
                                           "method.num_mix=8", "method.num_query_mix=4"])):
        rec = _RecordBatches()
        pretrain(load_recipe(name, PAIRED + extra), tmp_path / name, extra_callbacks=[rec])
        runs[name] = rec
    moco, mochi = runs["moco_mnist1d"], runs["mochi_mnist1d"]
    assert len(moco.steps) == len(mochi.steps) == 6
    assert mochi.mixed[2:] == [True] * 4 and not any(mochi.mixed[:2])  # mixing after warm-up
    for (ids_a, views_a), (ids_b, views_b) in zip(moco.steps, mochi.steps, strict=True):
        assert torch.equal(ids_a, ids_b)
        assert len(views_a) == len(views_b) == 2
        for va, vb in zip(views_a, views_b, strict=True):
            assert torch.equal(va, vb)


def test_mochi_steps_leave_the_global_rng_alone_and_draw_moco_views() -> None:
    """Fast twin of the test above: a mixing MoCHi step draws nothing from torch's global RNG
    (which orders the next epoch's batches), and its views equal MoCo's for one seed."""
    mods = {}
    for name, extra in (("moco_mnist1d", []),
                        ("mochi_mnist1d", ["method.warmup_epochs=0", "method.num_hard=8",
                                           "method.num_mix=8", "method.num_query_mix=4"])):
        cfg = _plain(load_recipe(name, PAIRED + extra))
        data = _mnist1d_like_bundle()
        mods[name] = build_method(cfg, data)
    torch.set_num_threads(1)  # restored by the autouse fixture
    x = _mnist1d_like_bundle().pretrain.x[:16]  # type: ignore[attr-defined]
    y, idx = torch.zeros(16, dtype=torch.long), torch.arange(16)
    views: dict[str, list[torch.Tensor]] = {n: [] for n in mods}
    for name, m in mods.items():
        augment = m.augment
        m.augment = lambda t, _a=augment, _n=name: views[_n].append(_a(t)) or views[_n][-1]
    for step in range(2):  # step 1 mixes: the queue holds 16 >= num_hard keys
        for name, m in mods.items():
            before = torch.get_rng_state()
            loss, _ = m.contrastive_step(x, y, idx + 16 * step, step=step, total_steps=10,
                                         epoch=1)
            assert torch.equal(torch.get_rng_state(), before), name
            loss.backward()
    assert mods["mochi_mnist1d"].mochi.last_mixed
    assert len(views["moco_mnist1d"]) == len(views["mochi_mnist1d"]) == 4
    for va, vb in zip(views["moco_mnist1d"], views["mochi_mnist1d"], strict=True):
        assert torch.equal(va, vb)


def _mnist1d_like_bundle(n: int = 64) -> DataBundle:
    from contrastmix.data.augment1d import SignalAugment

    g = torch.Generator().manual_seed(0)
    ds = TensorIndexDataset(torch.randn(n, 1, 40, generator=g), torch.randint(0, 10, (n,),
                                                                            generator=g))
    return DataBundle(ds, ds, ds, SignalAugment(), 1, 10)


# ------------------------------------------------------------------------------ Shuffle-BN
# (the definition and the plan are tested in tests/test_shuffle_bn_ddp.py)
def test_shuffle_bn_is_a_moco_option() -> None:
    cfg = _plain(load_recipe("moco_mnist1d", [*PAIRED, "method.shuffle_bn=true"]))
    m = build_method(cfg, _mnist1d_like_bundle())
    x1 = _mnist1d_like_bundle().pretrain.x[:16]  # type: ignore[attr-defined]
    assert m.config.shuffle_bn is True
    assert torch.equal(m.keys(x1), m.key_encoder(x1))  # type: ignore[operator]
    loss, _ = m.contrastive_step(x1, torch.zeros(16, dtype=torch.long), torch.arange(16),
                                 step=0, total_steps=2, epoch=0)
    assert torch.isfinite(loss)


def test_oracle_recipe_passes_the_queue_labels_and_needs_classes() -> None:
    cfg = _plain(load_recipe("mochi_oracle_mnist1d", [*PAIRED, "method.warmup_epochs=0",
                                                      "method.num_hard=8", "method.num_mix=8",
                                                      "method.num_query_mix=4"]))
    m = build_method(cfg, _mnist1d_like_bundle())
    seen: list[dict] = []
    forward = m.mochi.forward

    def spy(*a, **kw):  # noqa: ANN002, ANN003, ANN202
        seen.append({k: kw.get(k) for k in ("queue_labels", "query_labels")})
        return forward(*a, **kw)

    m.mochi.forward = spy
    x = _mnist1d_like_bundle().pretrain.x  # type: ignore[attr-defined]
    y = torch.arange(16) % 3
    for step in range(2):
        m.contrastive_step(x[16 * step:16 * (step + 1)], y, torch.arange(16) + 16 * step,
                           step=step, total_steps=2, epoch=0)
    assert torch.equal(seen[0]["query_labels"], y) and len(seen[0]["queue_labels"]) == 0
    assert torch.equal(seen[1]["queue_labels"], y)  # the labels of the keys enqueued at step 0
    assert m.mochi.last_mixed
    with pytest.raises(ValueError, match="hard_set_oracle.*regression dataset"):
        build_method(cfg, _regression_bundle())


# ------------------------------------------------------------------------------ digits-tri
@pytest.fixture(scope="module")
def tri_bundles() -> dict[float, DataBundle]:
    from contrastmix.data.registry import build_data

    out = {}
    for s in (0.0, 0.5):
        cfg = load_recipe("m3col_digits_tri_instance", [
            f"data.options.instance_shared={s}", "data.options.train_per_class=null"]).data
        out[s] = build_data(cfg)
    return out


def _within_class_retrieval(bundle: DataBundle) -> float:
    """Raw-feature check of shared instance information: a ridge map image -> signal fitted on
    the train split; on the test split each image's predicted signal retrieves the nearest
    (cosine, class-centred) signal among its class's; the share that finds its own."""
    def arrays(ds):  # noqa: ANN001, ANN202
        return (ds.modalities["image"].flatten(1).double(),
                ds.modalities["signal"].flatten(1).double(), ds.labels)

    xi, xs, _ = arrays(bundle.train)
    ti, ts, ty = arrays(bundle.test)
    a = torch.cat([xi, torch.ones(len(xi), 1, dtype=torch.float64)], 1)
    w = torch.linalg.solve(a.T @ a + torch.eye(a.shape[1], dtype=torch.float64), a.T @ xs)
    pred = torch.cat([ti, torch.ones(len(ti), 1, dtype=torch.float64)], 1) @ w
    hits = 0
    for c in range(10):
        rows = (ty == c).nonzero().flatten()
        p = F.normalize(pred[rows] - pred[rows].mean(0), dim=1)
        s = F.normalize(ts[rows] - ts[rows].mean(0), dim=1)
        hits += int(((p @ s.T).argmax(1) == torch.arange(len(rows))).sum())
    return hits / len(ty)


def test_digits_tri_instance_option_shares_instance_information(tri_bundles) -> None:  # noqa: ANN001
    plain, shared = tri_bundles[0.0], tri_bundles[0.5]
    n_test = len(shared.test)
    chance = 10 / n_test  # ~45 test samples per class
    assert _within_class_retrieval(plain) < 4 * chance  # the class only: about chance
    assert _within_class_retrieval(shared) > 0.3  # measured 0.53 (chance 0.022)
    assert shared.extras["instance_shared"] == 0.5 and plain.extras["instance_shared"] == 0.0
    assert torch.equal(shared.train.labels, plain.train.labels)
    tags = [c[c.rindex("(") + 1:-1] for c in shared.train.modalities["text"]]
    assert all(len(t.split()) == 3 for t in tags) and len(set(tags)) > 30
    assert not any(c.endswith(")") for c in plain.train.modalities["text"])
    assert len({t.split()[0] for t in tags}) == 4  # the quartiles of the code's 1st coordinate


@pytest.mark.parametrize("bad", ["-0.5", "abc", "true", ".inf"])
def test_digits_tri_instance_option_is_checked(bad: str) -> None:
    from contrastmix.data.registry import build_data
    from contrastmix.errors import ContrastmixError

    with pytest.raises(ContrastmixError, match="instance_shared"):
        build_data(load_recipe("m3col_digits_tri", [f"data.options.instance_shared={bad}"]).data)


# ------------------------------------------------------------------------------ 2 steps each
NEW_RECIPES = {
    "rnc_paper_rotated_digits": [], "supremix_noproj_rotated_digits": [],
    "supremix_nomix_rotated_digits": [], "supremix_nomix_nodw_rotated_digits": [],
    "mochi_oracle_mnist1d": ["method.queue_size=256", "method.num_hard=64", "method.num_mix=16",
                             "method.num_query_mix=8", "method.warmup_epochs=0"],
    "m3col_digits_tri_instance": ["method.contrast_weight=0.0"],
    "concat_digits_tri_instance": [],
    "moco_mnist1d": ["method.queue_size=256", "method.shuffle_bn=true"],
}
SHORT = [
    "trainer.max_epochs=1", "trainer.limit_train_batches=2", "eval.knn_every_n_epochs=0",
    "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "trainer.num_threads=1",
    "data.batch_size=32",
]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", list(NEW_RECIPES))
def test_new_recipes_train_two_steps(tmp_path, recipe: str) -> None:  # noqa: ANN001
    """What `contrastmix pretrain RECIPE --set trainer.limit_train_batches=2 ...` runs."""
    import json
    import math

    from contrastmix.train.pretrain import pretrain

    run = pretrain(load_recipe(recipe, SHORT + NEW_RECIPES[recipe]), tmp_path / recipe)
    assert json.loads((run / "run.json").read_text())["global_step"] == 2
    state = torch.load(run / "backbone.pt", weights_only=True)
    assert state and all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())
    text = (run / "metrics.csv").read_text()
    assert "train_loss" in text and not any(math.isnan(float(v)) for v in
                                            _column(run / "metrics.csv", "train_loss"))


def _column(path, prefix: str) -> list[float]:  # noqa: ANN001
    import csv

    with open(path) as f:
        rows = list(csv.DictReader(f))
    cols = [c for c in rows[0] if c.startswith(prefix)]
    return [float(r[c]) for r in rows for c in cols if r.get(c) not in (None, "")]
