"""Options and recipes for the claim-checking sweeps (issue 16, items 2-4).

RnC as its paper runs it and SupReMix without projector / without mixtures (regression), and
their bundled recipes: each builds, and one training step's loss acts on what the recipe says
(backbone features or projections, normalised or not).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
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


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


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
