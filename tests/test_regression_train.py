"""Regression training end to end: recipes, data bundles, modules, pretrain -> probe_run."""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from contrastmix.data.labels import dataset_labels, label_bin_edges
from contrastmix.data.registry import DataBundle, TensorIndexDataset, build_data
from contrastmix.errors import DatasetError, RecipeError
from contrastmix.eval.evaluate import probe_run
from contrastmix.methods import get_method
from contrastmix.methods.base import SeededGenerators
from contrastmix.recipe import RECIPES_DIR, load_recipe
from contrastmix.rundir import read_artifacts
from contrastmix.train.pretrain import build_method, pretrain

TINY = [
    "trainer.num_threads=1", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
    "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "model.width=4",
    "model.proj_hidden_dim=16", "model.proj_output_dim=8", "data.batch_size=32",
]
DATASETS = {"rotated_digits": "rotated-digits", "mnist1d_reg": "mnist1d-reg",
            "diabetes": "diabetes"}
METHODS = {"supremix": "supremix", "rnc": "rnc", "supcon": "supcon", "l1": "l1",
           "l1_cmixup": "l1"}



def _plain(cfg: object) -> dict:
    out = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[arg-type]
    assert isinstance(out, dict)
    return out


def _check_probe(res: dict, *, groups: bool) -> None:
    assert res["task"] == "regression"
    for k in ("mae", "mse", "gmean", "spearman"):
        assert isinstance(res[k], float) and math.isfinite(res[k]), k
    assert 0 < res["gmean"] <= res["mae"] and res["mae"] ** 2 <= res["mse"] + 1e-9
    assert -1.0 <= res["spearman"] <= 1.0
    if groups:
        assert set(res["groups"]) <= {"many", "medium", "few"} and len(res["groups"]) >= 2
        n = 0
        for g in res["groups"].values():
            assert math.isfinite(g["mae"]) and math.isfinite(g["gmean"]) and g["n"] > 0
            n += g["n"]
        assert n == res["n_test"]
    else:
        assert "groups" not in res


# ------------------------------------------------------------------------------ recipes
def test_every_recipe_loads_and_matches_its_name() -> None:
    found = 0
    for stem, method in METHODS.items():
        for ds_stem, ds in DATASETS.items():
            path = RECIPES_DIR / f"{stem}_{ds_stem}.yaml"
            assert path.is_file(), path
            cfg = load_recipe(path)
            assert cfg.name == f"{stem}_{ds_stem}" and cfg.method.name == method
            assert cfg.data.name == ds
            assert cfg.method.get("cmixup", False) == (stem == "l1_cmixup")
            if ds == "rotated-digits":
                assert cfg.data.image_aug.rotation == 0 and cfg.data.image_aug.shear == 0
            if ds == "mnist1d-reg":
                assert list(cfg.data.signal_aug.crop_scale) == [1.0, 1.0]
            found += 1
    assert found == 15
    lt = load_recipe("supremix_rotated_digits", ["data.options.long_tailed=true"])
    assert lt.data.options.long_tailed is True


# ------------------------------------------------------------------------------ data
def test_regression_bundles() -> None:
    cfg = load_recipe("supremix_rotated_digits", ["data.image_aug.rotation=30"]).data
    data = build_data(cfg)
    assert data.task == "regression" and data.num_classes == 0 and data.in_channels == 1
    assert data.batch_augment is not None
    assert data.batch_augment.rotation == 0 and data.batch_augment.shear == 0  # type: ignore
    assert data.test_groups is not None and data.group_names == ("many", "medium", "few")
    assert len(data.test_groups) == len(data.test)  # type: ignore[arg-type]
    x, y, i = data.pretrain[3]
    assert x.shape == (1, 16, 16) and y.dtype == torch.float32 and 0 <= float(y) < 90 and i == 3

    mcfg = load_recipe("rnc_mnist1d_reg", ["data.signal_aug.crop_scale=[0.5,1.0]",
                                           "data.options.num_samples=200"]).data
    aug = build_data(mcfg).batch_augment
    assert tuple(aug.crop_scale) == (1.0, 1.0) and aug.max_shift == 1.0  # type: ignore
    mcfg = load_recipe("rnc_mnist1d_reg", ["data.options.target=shift",
                                           "data.options.num_samples=200"]).data
    aug = build_data(mcfg).batch_augment
    assert tuple(aug.crop_scale) == (1.0, 1.0) and aug.max_shift == 0.0  # type: ignore

    d = build_data(load_recipe("l1_diabetes").data)
    assert d.in_channels == 10 and d.test_groups is None
    xb = torch.randn(5, 10)
    g = torch.Generator().manual_seed(0)
    assert d.batch_augment(xb, generator=g).shape == (5, 10)  # type: ignore[misc]

    with pytest.raises(DatasetError, match="long_tailled"):
        build_data(load_recipe("l1_rotated_digits", ["data.options.long_tailled=true"]).data)
    with pytest.raises(DatasetError, match="target"):
        build_data(load_recipe("l1_mnist1d_reg", ["data.options.target=amplitude"]).data)


# ------------------------------------------------------------------------------ helpers
def _bundle(x: Tensor, y: Tensor, *, task: str = "regression", pretrain: Dataset | None = None
            ) -> DataBundle:
    """A tiny in-memory bundle (no augmentation) over ``x [N, ...]`` and ``y [N]``."""
    ds = TensorIndexDataset(x, y)
    return DataBundle(pretrain if pretrain is not None else ds, ds, ds, None,
                      int(x.shape[1]), 0 if task == "regression" else 2, task=task)


class _NotInMemory(Dataset):
    """A dataset without in-memory ``x`` / ``y`` tensors (samples built on access)."""

    def __init__(self, n: int, d: int) -> None:
        self.n, self.d = n, d

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, int]:
        return torch.full((self.d,), float(i)), torch.tensor(float(i)), i


def test_label_bins_and_supcon_labels() -> None:
    edges = label_bin_edges(torch.tensor([0.0, 90.0]), 10, None)
    assert torch.allclose(edges, torch.arange(9, 90, 9, dtype=torch.float64))
    cfg = _plain(load_recipe("supcon_rotated_digits", TINY))  # bin_range [0, 90]
    m = get_method("supcon")(cfg, _bundle(torch.zeros(2, 1, 16, 16), torch.tensor([0.0, 89.0])))
    bins = m.loss_labels(torch.tensor([0.0, 8.9, 9.0, 45.0, 89.99, 90.0, -1.0, 100.0]))
    assert bins.tolist() == [0, 0, 1, 5, 9, 9, 0, 9]
    # no bin_range: the training labels' min and max span the bins
    cfg["method"]["bin_range"] = []
    cfg["method"]["num_bins"] = 4
    m = get_method("supcon")(cfg, _bundle(torch.zeros(3, 1, 16, 16),
                                          torch.tensor([10.0, 30.0, 50.0])))
    assert torch.allclose(m.bin_edges, torch.tensor([20.0, 30.0, 40.0], dtype=torch.float64))
    assert m.loss_labels(torch.tensor([10.0, 25.0, 49.0])).tolist() == [0, 1, 3]
    with pytest.raises(ValueError, match="num_bins"):
        label_bin_edges(torch.tensor([0.0, 1.0]), 0, None)
    with pytest.raises(ValueError, match="bin_range"):
        label_bin_edges(torch.tensor([0.0, 1.0]), 3, [2.0, 1.0])


def test_dataset_labels_in_memory_and_by_index() -> None:
    y = torch.tensor([3, 1, 2])
    assert torch.equal(dataset_labels(TensorIndexDataset(torch.zeros(3, 2), y)),
                       torch.tensor([3.0, 1.0, 2.0]))
    assert torch.equal(dataset_labels(_NotInMemory(4, 2)), torch.tensor([0.0, 1.0, 2.0, 3.0]))


def test_seeded_generators_round_trip() -> None:
    gens = SeededGenerators(5)
    a = torch.rand(3, generator=gens.get("views", "cpu"))
    state = gens.state_dict()
    b = torch.rand(3, generator=gens.get("views", "cpu"))
    restored = SeededGenerators(5)
    restored.load_state_dict(state)  # pending until first use
    assert torch.equal(torch.rand(3, generator=restored.get("views", "cpu")), b)
    assert not torch.equal(a, b)
    other = SeededGenerators(6)
    assert not torch.equal(torch.rand(3, generator=other.get("views", "cpu")), a)


def test_cmixup_partners_are_label_close_and_mixing_is_consistent() -> None:
    cfg = _plain(load_recipe("l1_cmixup_rotated_digits",
                             [*TINY, "method.augment=false", "method.cmixup_sigma=1.0",
                              "method.mixup_per_sample=true"]))
    data = build_data(load_recipe("l1_cmixup_rotated_digits").data)
    module = build_method(cfg, data)
    assert isinstance(module, get_method("l1"))
    tx, ty = data.pretrain.x, data.pretrain.y  # type: ignore[attr-defined]
    idx = torch.arange(64)
    xm, ym, lam, yp = module.mixed_batch(tx[idx], ty[idx], idx)  # type: ignore[operator]
    assert lam.unique().numel() > 1 and bool(((lam >= 0) & (lam <= 1)).all())
    torch.testing.assert_close(ym, lam * ty[idx] + (1 - lam) * yp)
    # sigma = 1 degree: every partner lies within a few sigma of its anchor's label
    assert float((ty[idx] - yp).abs().max()) < 6.0
    # the partner's *input* is the one of the partner's label (labels are distinct floats)
    j = (ty[None, :] == yp[:, None]).float().argmax(dim=1)
    assert torch.equal(ty[j], yp)
    lx = lam.view(-1, 1, 1, 1)
    torch.testing.assert_close(xm, lx * tx[idx] + (1 - lx) * tx[j])
    # a vanishing bandwidth mixes every sample with itself
    cfg["method"]["cmixup_sigma"] = 1e-4
    same = build_method(cfg, data)
    xs, ys, _, yps = same.mixed_batch(tx[idx], ty[idx], idx)  # type: ignore[operator]
    assert torch.equal(yps, ty[idx])
    torch.testing.assert_close(xs, tx[idx])
    torch.testing.assert_close(ys, ty[idx])
    # batch scope: partners are rows of the batch, label-close too
    cfg["method"].update(cmixup_scope="batch", cmixup_sigma=1.0)
    batch = build_method(cfg, data)
    xb, yb, lamb, ypb = batch.mixed_batch(tx[idx], ty[idx], idx)  # type: ignore[operator]
    jb = (ty[idx][None, :] == ypb[:, None]).float().argmax(dim=1)
    assert torch.equal(ty[idx][jb], ypb) and float((ty[idx] - ypb).abs().max()) < 6.0
    torch.testing.assert_close(xb, lamb.view(-1, 1, 1, 1) * tx[idx]
                               + (1 - lamb.view(-1, 1, 1, 1)) * tx[idx][jb])


@pytest.mark.parametrize("scope", ["dataset", "batch"])
def test_cmixup_step_uses_the_host_copy_of_labels_and_indices(scope: str) -> None:
    """A training step draws the partners from the loader's host labels and indices (kept by
    ``on_before_batch_transfer``; no read back from the device): the same draws and mixes as
    from the batch itself, and the copy is used once."""
    cfg = _plain(load_recipe("l1_cmixup_diabetes", [*TINY, "method.augment=false",
                                                    f"method.cmixup_scope={scope}"]))
    data = build_data(load_recipe("l1_cmixup_diabetes").data)
    tx, ty = data.pretrain.x, data.pretrain.y  # type: ignore[attr-defined]
    idx = torch.arange(3, 19)
    a, b = build_method(cfg, data), build_method(cfg, data)
    want = a.mixed_batch(tx[idx], ty[idx], idx)  # type: ignore[operator]
    host = (ty[idx].clone(), idx.clone())
    assert b.on_before_batch_transfer((tx[idx], *host), 0)[2] is host[1]
    assert b._host_labels[1] is host[1]  # type: ignore[index]
    got = b.mixed_batch(tx[idx], ty[idx], idx, b._host_labels)  # type: ignore[operator]
    for w, g in zip(want, got, strict=True):
        assert torch.equal(w, g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a trainer
        b.training_step((tx[idx], ty[idx], idx), 0)
    assert b._host_labels is None


def test_cmixup_draws_follow_the_seeded_generator() -> None:
    """The C-Mixup draws come from the module's ``cmixup`` generator: its saved state replays
    them (what a resumed run continues from), and another seed draws others."""
    cfg = _plain(load_recipe("l1_cmixup_diabetes", [*TINY, "method.augment=false"]))
    data = build_data(load_recipe("l1_cmixup_diabetes").data)
    tx, ty = data.pretrain.x, data.pretrain.y  # type: ignore[attr-defined]
    idx = torch.arange(32)
    a = build_method(cfg, data)
    a.mixed_batch(tx[idx], ty[idx], idx)  # type: ignore[operator]
    state = a.generators.state_dict()
    assert set(state) == {"cmixup"}
    _, y1, lam1, p1 = a.mixed_batch(tx[idx], ty[idx], idx)  # type: ignore[operator]
    b = build_method(cfg, data)
    b.generators.load_state_dict(state)
    _, y2, lam2, p2 = b.mixed_batch(tx[idx], ty[idx], idx)  # type: ignore[operator]
    assert torch.equal(lam1, lam2) and torch.equal(p1, p2) and torch.equal(y1, y2)
    cfg["seed"] = int(cfg.get("seed", 0)) + 1
    c = build_method(cfg, data)
    _, _, lam3, _ = c.mixed_batch(tx[idx], ty[idx], idx)  # type: ignore[operator]
    assert not torch.equal(lam3, a.mixed_batch(tx[idx], ty[idx], idx)[2])  # type: ignore


# ------------------------------------------------------------------------------ config checks
@pytest.mark.parametrize(
    ("recipe", "override", "needle"),
    [
        ("supremix_diabetes", "method.label_scale=0", "`method.label_scale` must be > 0"),
        ("supremix_diabetes", "method.negative_alpha=[2.0]", "`method.negative_alpha` must be"),
        ("supremix_diabetes", "method.window=0", "`method.window` must be > 0"),
        ("rnc_diabetes", "method.temperature=0", "`method.temperature` must be > 0"),
        ("supcon_diabetes", "method.num_bins=0", "`method.num_bins` must be >= 1"),
        ("supcon_diabetes", "method.bin_range=[2.0,1.0]", "`method.bin_range` must be [low"),
        ("l1_cmixup_diabetes", "method.cmixup_sigma=0", "`method.cmixup_sigma` must be > 0"),
        ("l1_diabetes", "method.mixup_alpha=-1", "`method.mixup_alpha` must be > 0"),
        ("l1_cmixup_diabetes", "method.cmixup_scope=everywhere",
         "`method.cmixup_scope` must be one of dataset, batch"),
        ("l1_diabetes", "method.cmixup_window=-1", "`method.cmixup_window` must be >= 0"),
    ],
)
def test_method_values_rejected_when_the_recipe_loads(
    recipe: str, override: str, needle: str
) -> None:
    with pytest.raises(RecipeError, match=re.escape(needle)) as e:
        load_recipe(recipe, [override])
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("invalid method setting")


def test_module_errors() -> None:
    # C-Mixup over the dataset needs the training set in memory
    cfg = _plain(load_recipe("l1_cmixup_diabetes", TINY))
    assert cfg["method"]["cmixup_scope"] == "dataset"
    x, y = torch.zeros(8, 10), torch.rand(8)
    streamed = _bundle(x, y, pretrain=_NotInMemory(8, 10))
    with pytest.raises(ValueError, match="in-memory"):
        get_method("l1")(cfg, streamed)
    cfg["method"]["cmixup_scope"] = "batch"  # batch scope does not
    get_method("l1")(cfg, streamed)
    # regression methods need regression data
    for name in ("rnc_diabetes", "supremix_diabetes", "supcon_diabetes", "l1_diabetes"):
        clf = _bundle(torch.zeros(4, 10), torch.zeros(4), task="classification")
        with pytest.raises(ValueError, match="trains on regression data"):
            build_method(_plain(load_recipe(name, TINY)), clf)


# ------------------------------------------------------------------------------ training
@pytest.mark.parametrize("method", ["rnc", "supcon"])
def test_contrastive_step_trains(method: str) -> None:
    """One fast_dev_run step of RnC / SupCon(binned) on diabetes updates the backbone."""
    cfg = load_recipe(f"{method}_diabetes", TINY)
    data = build_data(cfg.data)
    module = build_method(_plain(cfg), data)
    before = {k: v.clone() for k, v in module.backbone.state_dict().items()}
    trainer = pl.Trainer(fast_dev_run=1, accelerator="cpu", enable_progress_bar=False,
                         enable_model_summary=False, logger=False)
    trainer.fit(module, DataLoader(data.pretrain, batch_size=32, shuffle=True, drop_last=True))
    loss = float(trainer.callback_metrics["train_loss_epoch"])
    assert math.isfinite(loss) and loss > 0
    after = module.backbone.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("weight"))


@pytest.mark.parametrize(
    ("recipe", "metric", "artifact"),
    [("rnc_diabetes", "view_cosine", "projector"), ("supcon_diabetes", "view_cosine", "projector"),
     ("l1_diabetes", "train_mae", "head.pt")],
)
def test_trains_one_epoch_through_pretrain(
    tmp_path: Path, recipe: str, metric: str, artifact: str
) -> None:
    """RnC, SupCon (binned) and plain L1 train one epoch on built-in data through ``pretrain``
    (SupReMix and L1 + C-Mixup: the end-to-end tests below)."""
    run = pretrain(load_recipe(recipe, TINY), tmp_path / recipe)
    header = (run / "metrics.csv").read_text().splitlines()[0]
    assert "train_loss_epoch" in header and metric in header
    summary = json.loads((run / "run.json").read_text())
    assert summary["epochs"] == 1 and math.isfinite(summary["metrics"]["train_loss_epoch"])
    art = read_artifacts(run)
    if artifact == "projector":
        assert art.projector == "projector.pt" and (run / "projector.pt").is_file()
    else:
        assert art.projector is None and artifact in art.files and (run / artifact).is_file()
    ckpt = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
    if recipe.startswith("supcon"):
        assert ckpt["state_dict"]["bin_edges"].shape == (9,)
    _check_probe(probe_run(run), groups=False)


def test_supremix_long_tailed_end_to_end(tmp_path: Path) -> None:
    cfg = load_recipe("supremix_rotated_digits", [*TINY, "data.options.long_tailed=true"])
    run = pretrain(cfg, tmp_path / "sm")
    for name in ("config.yaml", "backbone.pt", "checkpoints/last.ckpt", "metrics.csv", "run.json",
                 "artifacts.json", "projector.pt"):
        assert (run / name).is_file(), name
    ckpt = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["cfg"]["method"]["name"] == "supremix"
    assert {"views", "loss"} <= set(ckpt["generator_states"])
    assert "train_loss_epoch" in (run / "metrics.csv").read_text().splitlines()[0]
    res = probe_run(run)
    _check_probe(res, groups=True)
    assert res["method"] == "supremix" and res["dataset"] == "rotated-digits"
    assert res["n_test"] == 450


def test_l1_cmixup_end_to_end(tmp_path: Path) -> None:
    cfg = load_recipe("l1_cmixup_diabetes", [*TINY, "model.width=8"])
    run = pretrain(cfg, tmp_path / "l1")
    assert "cmixup_label_gap" in (run / "metrics.csv").read_text().splitlines()[0]
    ckpt = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
    assert "cmixup" in ckpt["generator_states"] and "head.weight" in ckpt["state_dict"]
    assert "head.pt" in read_artifacts(run).files
    res = probe_run(run)
    _check_probe(res, groups=False)
    assert res["n_test"] == 111 and res["num_features"] == 128
    # resume: the checkpoint (with its generator states) continues to a second epoch
    more = load_recipe("l1_cmixup_diabetes", [*TINY, "model.width=8", "trainer.max_epochs=2"])
    pretrain(more, run, resume=True)
    summary = json.loads((run / "run.json").read_text())
    assert summary["resumed"] is True and summary["epochs"] == 2
