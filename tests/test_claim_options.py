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

from contrastmix.data.registry import DataBundle, TensorIndexDataset
from contrastmix.losses.rnc import rnc_loss
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
