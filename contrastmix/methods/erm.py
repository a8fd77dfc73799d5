"""ERM: supervised cross-entropy into the terminal phase, tracking neural collapse
(docs/methods.md §8).

Papyan, Han & Donoho, "Prevalence of neural collapse during the terminal phase of deep learning
training", PNAS 2020 (NC1-NC4); Fisher, Meng & Papyan, "Pushing Boundaries: Mixup's Influence on
Neural Collapse", ICLR 2024 (the geometry of features of mixed inputs, measured at the end).

Trains ``backbone -> Linear(output_dim, num_classes)`` with cross-entropy on clean inputs
(:func:`contrastmix.losses.mixed_ce.mixed_cross_entropy` with ``lam = 1``).
:class:`~contrastmix.methods.mixup.Mixup` is the same method with mixed inputs: it overrides
the one hook :meth:`ERM.mix`.

Run-directory files (besides what :func:`contrastmix.train.pretrain.pretrain` writes), all
listed in ``artifacts.json``:

* ``features/epoch_XXX.pt`` every ``method.save_features_every`` epochs (``XXX`` = completed
  epochs): ``{"features": Tensor[N, d] float32, "labels": Tensor[N] int64, "epoch": int}``
  for a fixed seeded subset of ``method.feature_samples`` clean train samples (the format
  :func:`contrastmix.eval.report.load_epoch_features` reads);
* ``classifier.pt``: the last layer's ``state_dict`` (``weight [C, d]``, ``bias [C]``);
* ``mixup_geometry.json``: :func:`contrastmix.eval.collapse.mixup_geometry` of same-class and
  different-class input mixes ``lam x_a + (1 - lam) x_b`` of train samples, ``lam`` on the
  centres of ``method.geometry_bins`` bins;
* ``mixup_projection.png``: different-class mixes of three classes projected on the plane of
  their centred classifier rows, coloured by ``lam``
  (:func:`contrastmix.eval.collapse.plot_mixup_projection`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from contrastmix._atomic import torch_save, write_json
from contrastmix._json import to_jsonable
from contrastmix.data.labels import dataset_labels
from contrastmix.data.registry import DataBundle
from contrastmix.eval.collapse import (
    mixed_pair_features,
    mixup_geometry,
    neural_collapse,
    plot_mixup_projection,
    three_class_projection,
)
from contrastmix.eval.probe import extract_features
from contrastmix.losses.mixed_ce import mixed_cross_entropy
from contrastmix.methods.base import Method, MethodConfig, require, save_state
from contrastmix.mixing.pairs import sample_pairs
from contrastmix.rundir import RunArtifacts

__all__ = ["ERMConfig", "ERM", "NC_METRICS"]

#: What collapse tracking logs (``test_acc`` too when the dataset has a test split).
NC_METRICS: tuple[str, ...] = (
    "nc1", "nc2_equinorm", "nc2_equiangular", "nc2_max_angle", "nc3", "nc4",
    "nc2_equinorm_weight", "nc2_equiangular_weight", "nc2_max_angle_weight", "train_acc",
)


@dataclass
class ERMConfig(MethodConfig):
    """ERM settings (the recipe's ``method`` section).

    Attributes:
        label_smoothing: Label smoothing of the cross-entropy (0 = none; in ``[0, 1)``).
        augment: Apply the dataset's ``batch_augment`` (once) to training inputs. Off by
            default: the collapse recipes train on clean inputs (plus mixup).
        save_features_every: Every this many epochs (and after the last one), compute NC1-NC4
            of the clean train split, train/test accuracy, and write
            ``features/epoch_XXX.pt``; 0 = off.
        feature_samples: Train samples (a fixed seeded subset) saved in each
            ``features/epoch_XXX.pt``; NC metrics use the whole train split.
        geometry_pairs: Same-class and different-class input pairs (each) mixed at every
            ``lam`` of the grid for ``mixup_geometry.json`` at the end (0 = skip).
        geometry_bins: ``lam`` bins of the mixup geometry; the grid is their centres.
    """

    name: str = "erm"
    label_smoothing: float = 0.0
    augment: bool = False
    save_features_every: int = 0
    feature_samples: int = 1000
    geometry_pairs: int = 500
    geometry_bins: int = 10

    def check(self) -> None:
        require(0 <= self.label_smoothing < 1, "label_smoothing", self.label_smoothing,
                "in [0, 1)")
        require(self.save_features_every >= 0, "save_features_every", self.save_features_every,
                ">= 0")
        require(self.feature_samples >= 1, "feature_samples", self.feature_samples, ">= 1")
        require(self.geometry_pairs >= 0, "geometry_pairs", self.geometry_pairs, ">= 0")
        require(self.geometry_bins >= 1, "geometry_bins", self.geometry_bins, ">= 1")


class ERM(Method):
    """Supervised classification with cross-entropy, tracking neural collapse.

    Logs ``train_loss`` and ``train_batch_acc`` (accuracy on the training inputs, weighted
    ``lam`` / ``1 - lam`` under mixing); with ``method.save_features_every`` also the NC
    metrics of :data:`NC_METRICS` and ``test_acc``.

    Shapes:
        ``training_step((x [B, ...], y [B], idx [B]))``; ``forward(x) -> [B, output_dim]``
        backbone features; ``logits(x) -> [B, C]``.
    """

    name = "erm"
    Config = ERMConfig
    tasks = ("classification",)

    def __init__(self, cfg: dict[str, Any], data: DataBundle) -> None:
        super().__init__(cfg, data)
        if data.num_classes < 2:
            raise ValueError(f"`num_classes` must be >= 2, got {data.num_classes}")
        self.classifier = nn.Linear(int(self.backbone.output_dim), data.num_classes)  # type: ignore[arg-type]
        self.num_classes = data.num_classes
        self.use_augment = bool(self.config.augment) and data.batch_augment is not None
        # clean labelled splits: collapse tracking and the mixup geometry
        self.train_set: Dataset = data.train
        self.test_set: Dataset | None = data.test
        self.eval_batch_size = int(cfg.get("data", {}).get("eval_batch_size", 1024))
        self.last_collapse: dict[str, float] = {}

    def learnable_modules(self) -> list[nn.Module]:
        return [self.backbone, self.classifier]

    def logits(self, x: Tensor) -> Tensor:
        """Class logits ``[B, C]``."""
        return self.classifier(self.backbone(x))

    # ------------------------------------------------------------------ training
    def mix(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, float]:
        """The training inputs and their two label sets: ``(x [B, ...], y_a [B], y_b [B], lam)``
        with loss ``lam CE(f(x), y_a) + (1 - lam) CE(f(x), y_b)``. ERM: the batch unchanged,
        ``lam = 1``."""
        return x, y, y, 1.0

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y, _ = batch
        x = self.first_view(x)
        if self.use_augment:
            x = self.augment(x)
        x, y_a, y_b, lam = self.mix(x, y)
        logits = self.logits(x)
        loss = mixed_cross_entropy(logits, y_a, y_b, lam, self.config.label_smoothing)
        with torch.no_grad():
            pred = logits.argmax(dim=1)
            acc = lam * (pred == y_a).float().mean() + (1 - lam) * (pred == y_b).float().mean()
        b = y.shape[0]
        self.log_train_loss(loss, b)
        self.log("train_batch_acc", acc, on_step=False, on_epoch=True, sync_dist=True, batch_size=b)
        return loss

    # ------------------------------------------------------------------ collapse tracking
    def _loader(self, ds: Dataset) -> DataLoader:
        return DataLoader(ds, batch_size=self.eval_batch_size, shuffle=False)

    def _classifier_cpu(self) -> tuple[Tensor, Tensor]:
        return (self.classifier.weight.detach().float().cpu(),
                self.classifier.bias.detach().float().cpu())

    def feature_subset(self, n: int) -> Tensor:
        """Sorted indices of the fixed seeded subset of ``min(feature_samples, n)`` samples
        (the same samples every epoch, so their features can be followed)."""
        g = torch.Generator().manual_seed(self.seed + 12345)
        k = min(self.config.feature_samples, n)
        return torch.randperm(n, generator=g)[:k].sort().values

    def collapse_snapshot(self, epoch: int, save_dir: Path | None = None) -> dict[str, float]:
        """NC1-NC4 of the clean train split and train/test accuracy; optionally save features.

        Args:
            epoch: Completed epochs (the file name and the ``"epoch"`` key).
            save_dir: Where ``epoch_XXX.pt`` goes (``None``: nothing is written).

        Returns:
            The values of :data:`NC_METRICS`, plus ``"test_acc"`` with a test split.
        """
        h, y = extract_features(self.backbone, self._loader(self.train_set), self.device)
        y = y.long()
        w, bias = self._classifier_cpu()
        nc = neural_collapse(h, y, w, bias)
        out = {k: float(nc[k]) for k in NC_METRICS if k != "train_acc"}
        out["train_acc"] = float(((h @ w.T + bias).argmax(1) == y).float().mean())
        if self.test_set is not None:
            ht, yt = extract_features(self.backbone, self._loader(self.test_set), self.device)
            out["test_acc"] = float(((ht @ w.T + bias).argmax(1) == yt.long()).float().mean())
        if save_dir is not None:
            sub = self.feature_subset(len(y))
            save_dir.mkdir(parents=True, exist_ok=True)
            torch_save(
                {"features": h[sub].float().contiguous(), "labels": y[sub].contiguous(),
                 "epoch": int(epoch)},
                save_dir / f"epoch_{epoch:03d}.pt",
            )
        return out

    def on_train_epoch_end(self) -> None:
        every = self.config.save_features_every
        if every <= 0:
            return
        epoch = self.current_epoch + 1
        last = self.trainer.max_epochs is not None and epoch >= self.trainer.max_epochs
        if epoch % every and not last:
            return
        save_dir = None
        if self.trainer.is_global_zero and self.trainer.default_root_dir:
            save_dir = Path(self.trainer.default_root_dir) / "features"
        metrics = self.collapse_snapshot(epoch, save_dir)
        self.last_collapse = metrics
        for k, v in metrics.items():
            self.log(k, v, on_step=False, on_epoch=True, sync_dist=False)

    # ------------------------------------------------------------------ final artefacts
    def mixup_geometry_report(self, png: Path | None = None) -> dict[str, Any]:
        """:func:`contrastmix.eval.collapse.mixup_geometry` of input mixes of train samples.

        ``method.geometry_pairs`` same-class and as many different-class pairs are mixed at
        every ``lam`` of the grid (the centres of ``method.geometry_bins`` bins); ``mu_G`` is
        the mean clean train feature. With ``png``, different-class mixes of the first three
        classes are projected on the plane of their centred classifier rows and plotted,
        coloured by ``lam`` (the weight of the lower class index of each pair; ``lam`` on
        ``linspace(0, 1, 21)``). The pairs come from a fixed seeded generator.

        Returns:
            The JSON-ready geometry dict plus ``"lam_grid"``, ``"num_pairs"`` and
            ``"projection_classes"``.
        """
        ds = self.train_set
        h, _ = extract_features(self.backbone, self._loader(ds), self.device)
        mu_g = h.double().mean(dim=0)
        labels = dataset_labels(ds).long()
        g = torch.Generator().manual_seed(self.seed + 54321)
        p = self.config.geometry_pairs
        bins = self.config.geometry_bins
        ia, ja = sample_pairs(labels, p, same_class=True, generator=g)
        ib, jb = sample_pairs(labels, p, same_class=False, generator=g)
        i, j = torch.cat([ia, ib]), torch.cat([ja, jb])

        def inputs(idx: Tensor) -> Tensor:
            x = getattr(ds, "x", None)
            if isinstance(x, Tensor) and len(x) == len(labels):
                return x[idx].to(self.device)
            return torch.stack([ds[int(k)][0] for k in idx]).to(self.device)

        lams = (torch.arange(bins, dtype=torch.float32) + 0.5) / bins
        feats, lam = mixed_pair_features(self.backbone, inputs(i), inputs(j), lams,
                                         batch_size=self.eval_batch_size)
        la, lb = labels[i].repeat(len(lams)), labels[j].repeat(len(lams))
        w, bias = self._classifier_cpu()
        geo = mixup_geometry(feats, lam, la, lb, w, bias, mu_g.float(), bins=bins)
        out: dict[str, Any] = {k: to_jsonable(v) for k, v in geo.items()}
        out["lam_grid"] = lams.tolist()
        out["num_pairs"] = {"same_class": p, "different_class": p}
        classes = sorted(set(labels.tolist()))[:3]
        out["projection_classes"] = classes
        if png is not None and len(classes) == 3:
            keep = torch.isin(labels, torch.tensor(classes))
            sub_idx = torch.nonzero(keep).flatten()
            ic, jc = sample_pairs(labels[sub_idx], max(p // 2, 30), same_class=False,
                                  generator=g)
            ic, jc = sub_idx[ic], sub_idx[jc]
            swap = labels[ic] > labels[jc]  # lam weights the lower class of each pair
            ic, jc = torch.where(swap, jc, ic), torch.where(swap, ic, jc)
            grid = torch.linspace(0.0, 1.0, 21)
            fc, lc = mixed_pair_features(self.backbone, inputs(ic), inputs(jc), grid,
                                         batch_size=self.eval_batch_size)
            coords = three_class_projection(fc, w, (classes[0], classes[1], classes[2]),
                                            mu_g.float())
            plot_mixup_projection(
                coords, lc, png,
                title=f"{self.name}: mixes of classes {classes[0]}, {classes[1]}, {classes[2]}",
            )
        return out

    def export_artifacts(self, run_dir: Path) -> RunArtifacts:
        """Save ``classifier.pt``, ``mixup_geometry.json`` and ``mixup_projection.png``; list
        them (and the ``features/`` of collapse tracking) in ``files``."""
        art = super().export_artifacts(run_dir)
        save_state(self.classifier, run_dir / "classifier.pt")
        art.files["classifier.pt"] = "last layer state_dict: weight [C, d], bias [C]"
        if self.config.save_features_every > 0:
            art.files["features"] = ("features/epoch_XXX.pt: clean train features of a fixed "
                                     "subset every method.save_features_every epochs")
            art.expected_metrics = [*NC_METRICS, "test_acc"]
        if self.config.geometry_pairs > 0:
            png = run_dir / "mixup_projection.png"
            geo = self.mixup_geometry_report(png)
            write_json(run_dir / "mixup_geometry.json", geo)
            art.files["mixup_geometry.json"] = ("geometry of features of mixed train inputs "
                                                "(contrastmix.eval.collapse.mixup_geometry)")
            if png.is_file():
                art.files["mixup_projection.png"] = ("mixes of three classes on the plane of "
                                                     "their classifier rows, coloured by lambda")
        return art
