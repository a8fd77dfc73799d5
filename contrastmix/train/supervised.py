"""Lightning module of the supervised recipes: ERM and mixup into the terminal phase (METHODS §8).

:class:`SupervisedModule` trains ``backbone -> Linear(output_dim, num_classes)`` with
cross-entropy, either on clean inputs (``method.name: erm``) or with input mixup / CutMix
(``method.name: mixup``), and tracks neural collapse (Papyan, Han & Donoho, PNAS 2020) over
the epochs. At the end it measures the geometry of features of mixed inputs ("Pushing
Boundaries: Mixup's Influence on Neural Collapse", Fisher, Meng & Papyan, ICLR 2024).

Run-directory files written by this module (besides what
:func:`contrastmix.train.pretrain.pretrain` writes):

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

The mixing maths is in plain functions (:func:`mixup_batch`, :func:`cutmix_batch`,
:func:`mixed_cross_entropy`, :func:`sample_pairs`) that work with any model and loop. Every
random draw comes from a seeded ``torch.Generator`` whose state is saved in the checkpoint.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from contrastmix._validation import check_same_length, check_tensor
from contrastmix.data.registry import DataBundle
from contrastmix.mixing.cmixup import sample_beta
from contrastmix.models.build import build_backbone
from contrastmix.train.optim import build_optimizer
from contrastmix.train.pretrain import register_module

__all__ = [
    "SupervisedModule",
    "mixup_batch",
    "cutmix_batch",
    "mixed_cross_entropy",
    "sample_pairs",
    "mixed_pair_features",
]


# --------------------------------------------------------------------------------------------
# Plain functions: mixing and the loss.
# --------------------------------------------------------------------------------------------
def _check_batch(x: object, y: object) -> tuple[Tensor, Tensor]:
    check_tensor("x", x, ndim=(2, 3, 4, 5), floating=True)
    check_tensor("y", y, ndim=1)
    assert isinstance(x, Tensor) and isinstance(y, Tensor)
    check_same_length(x=x, y=y)
    if x.shape[0] == 0:
        raise ValueError("`x` is an empty batch")
    return x, y


def _permutation(n: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
    dev = generator.device if generator is not None else torch.device("cpu")
    return torch.randperm(n, generator=generator, device=dev).to(device)


def mixup_batch(
    x: Tensor, y: Tensor, alpha: float = 1.0, *, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor, float]:
    """Input mixup of a batch with a permutation of itself (Zhang et al., ICLR 2018).

    Args:
        x: ``[B, ...]`` floating inputs.
        y: ``[B]`` integer labels.
        alpha: Beta concentration (> 0); ``lam ~ Beta(alpha, alpha)``, one draw per batch.
        generator: Optional generator for ``lam`` and the permutation (CPU or ``x``'s device).

    Returns:
        ``(x_mix [B, ...], y_a [B], y_b [B], lam)`` with
        ``x_mix = lam * x + (1 - lam) * x[perm]``, ``y_a = y``, ``y_b = y[perm]``.

    Raises:
        ValueError: bad shapes, mismatched lengths or ``alpha <= 0`` (naming the argument).
    """
    x, y = _check_batch(x, y)
    lam = float(sample_beta(1, alpha, alpha, generator=generator)[0])
    perm = _permutation(x.shape[0], x.device, generator)
    return lam * x + (1.0 - lam) * x[perm], y, y[perm], lam


def cutmix_batch(
    x: Tensor, y: Tensor, alpha: float = 1.0, *, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor, float]:
    """CutMix of a batch with a permutation of itself (Yun et al., ICCV 2019).

    A box of every spatial dimension (a segment for ``[B, C, L]`` signals, a rectangle for
    ``[B, C, H, W]`` images) with volume share ``~ 1 - lam0``, ``lam0 ~ Beta(alpha, alpha)``,
    and a uniformly drawn centre (clipped at the borders) is replaced by the same box of
    ``x[perm]``; ``lam`` is then corrected to the share of ``x`` actually kept.

    Args:
        x: ``[B, C, *spatial]`` floating inputs (1 to 3 spatial dimensions).
        y: ``[B]`` integer labels.
        alpha: Beta concentration (> 0).
        generator: Optional generator.

    Returns:
        ``(x_mix, y_a = y, y_b = y[perm], lam)`` with ``lam`` = share of entries from ``x``.

    Raises:
        ValueError: ``x`` without spatial dimensions (tabular ``[B, F]``), mismatched lengths,
            ``alpha <= 0``.
    """
    x, y = _check_batch(x, y)
    if x.ndim < 3:
        raise ValueError(
            f"`x` must be [B, C, *spatial] for CutMix, got shape {tuple(x.shape)} "
            "(use input mixup for tabular data)"
        )
    lam0 = float(sample_beta(1, alpha, alpha, generator=generator)[0])
    perm = _permutation(x.shape[0], x.device, generator)
    spatial = x.shape[2:]
    side = (1.0 - lam0) ** (1.0 / len(spatial))  # share of each side covered by the box
    gdev = generator.device if generator is not None else torch.device("cpu")
    centres = torch.rand(len(spatial), generator=generator, device=gdev).tolist()
    slices: list[slice] = [slice(None), slice(None)]
    kept = 1.0
    for size, c in zip(spatial, centres, strict=True):
        half = side * size / 2.0
        mid = c * size
        lo, hi = int(round(max(0.0, mid - half))), int(round(min(float(size), mid + half)))
        slices.append(slice(lo, hi))
        kept *= (hi - lo) / size
    out = x.clone()
    idx = tuple(slices)
    out[idx] = x[perm][idx]
    return out, y, y[perm], 1.0 - kept


def mixed_cross_entropy(
    logits: Tensor, y_a: Tensor, y_b: Tensor, lam: float, label_smoothing: float = 0.0
) -> Tensor:
    """Mixup loss ``lam CE(logits, y_a) + (1 - lam) CE(logits, y_b)`` (mean over the batch).

    Computed in float32 (or wider) even under autocast. ``lam = 1`` is plain cross-entropy.

    Args:
        logits: ``[B, C]``.
        y_a: ``[B]`` labels weighted ``lam``; y_b: ``[B]`` labels weighted ``1 - lam``.
        lam: Mixing weight in ``[0, 1]``.
        label_smoothing: In ``[0, 1)``.

    Returns:
        Scalar loss.
    """
    check_tensor("logits", logits, ndim=2, floating=True)
    check_tensor("y_a", y_a, ndim=1)
    check_tensor("y_b", y_b, ndim=1)
    check_same_length(logits=logits, y_a=y_a, y_b=y_b)
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"`lam` must lie in [0, 1], got {lam}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"`label_smoothing` must lie in [0, 1), got {label_smoothing}")
    with torch.autocast(device_type=logits.device.type, enabled=False):
        z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
        loss = lam * F.cross_entropy(z, y_a, label_smoothing=label_smoothing)
        if lam < 1.0:
            loss = loss + (1.0 - lam) * F.cross_entropy(z, y_b, label_smoothing=label_smoothing)
    return loss


def sample_pairs(
    labels: Tensor, num_pairs: int, *, same_class: bool,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Random index pairs ``(i, j)``, ``i != j``, of the same or of different classes.

    ``i`` is uniform over samples whose class admits a partner; ``j`` is uniform over the
    admissible partners of ``i``.

    Args:
        labels: ``[N]`` integer labels.
        num_pairs: Number of pairs (> 0).
        same_class: Pairs with ``labels[i] == labels[j]`` (else ``!=``).
        generator: Optional CPU generator.

    Returns:
        ``(i [num_pairs], j [num_pairs])`` int64 indices.

    Raises:
        ValueError: no admissible pair exists, or bad arguments.
    """
    check_tensor("labels", labels, ndim=1)
    if labels.is_floating_point():
        raise ValueError(f"`labels` must be integer class indices, got {labels.dtype}")
    if not isinstance(num_pairs, int) or num_pairs < 1:
        raise ValueError(f"`num_pairs` must be a positive int, got {num_pairs!r}")
    y = labels.detach().cpu().long()
    classes, counts = torch.unique(y, return_counts=True)
    count_of = dict(zip(classes.tolist(), counts.tolist(), strict=True))
    n = y.numel()
    partners = torch.tensor(
        [count_of[c] - 1 if same_class else n - count_of[c] for c in y.tolist()],
        dtype=torch.float64,
    )
    if n == 0 or float(partners.sum()) == 0:
        kind = "same-class" if same_class else "different-class"
        raise ValueError(f"`labels` admit no {kind} pair")
    i = torch.multinomial((partners > 0).double(), num_pairs, replacement=True,
                          generator=generator)
    order = torch.argsort(y, stable=True)  # sample ids grouped by class
    starts = {c: int(s) for c, s in zip(classes.tolist(),
                                        (torch.cumsum(counts, 0) - counts).tolist(),
                                        strict=True)}
    u = torch.rand(num_pairs, generator=generator, dtype=torch.float64)
    j = torch.empty(num_pairs, dtype=torch.long)
    for k, (ii, uu) in enumerate(zip(i.tolist(), u.tolist(), strict=True)):
        c = int(y[ii])
        r = min(int(uu * partners[ii]), int(partners[ii]) - 1)  # rank among the partners
        if same_class:
            block = order[starts[c]: starts[c] + count_of[c]]
            block = block[block != ii]
            j[k] = block[r]
        else:
            # skip class c's block in the class-sorted order
            s = starts[c]
            j[k] = order[r] if r < s else order[r + count_of[c]]
    return i, j


@torch.no_grad()
def mixed_pair_features(
    backbone: nn.Module, x_a: Tensor, x_b: Tensor, lams: Tensor, *, batch_size: int = 1024,
) -> tuple[Tensor, Tensor]:
    """Features of ``lam x_a + (1 - lam) x_b`` for every pair and every ``lam`` of a grid.

    The backbone runs in eval mode (BatchNorm running statistics; train/eval flags restored).

    Args:
        backbone: Any module mapping ``[B, ...]`` to ``[B, d]``.
        x_a, x_b: ``[P, ...]`` paired inputs (on the backbone's device).
        lams: ``[L]`` mixing weights of ``x_a``.
        batch_size: Forward batch size.

    Returns:
        ``(features [L * P, d] float32 on CPU, lam [L * P])``, ``lam``-major.
    """
    check_tensor("x_a", x_a, floating=True)
    check_tensor("x_b", x_b, floating=True)
    check_tensor("lams", lams, ndim=1, floating=True)
    if x_a.shape != x_b.shape:
        raise ValueError(f"`x_a` {tuple(x_a.shape)} and `x_b` {tuple(x_b.shape)} differ")
    modes = [(m, m.training) for m in backbone.modules()]
    backbone.eval()
    try:
        feats: list[Tensor] = []
        lam_out: list[Tensor] = []
        for lam in lams.tolist():
            mixed = lam * x_a + (1.0 - lam) * x_b
            for s in range(0, mixed.shape[0], batch_size):
                feats.append(backbone(mixed[s: s + batch_size]).float().cpu())
            lam_out.append(torch.full((x_a.shape[0],), lam, dtype=torch.float32))
    finally:
        for m, t in modes:
            m.train(t)
    return torch.cat(feats).flatten(1), torch.cat(lam_out)


# --------------------------------------------------------------------------------------------
# The Lightning module.
# --------------------------------------------------------------------------------------------
def _dataset_labels(ds: Dataset) -> Tensor:
    y = getattr(ds, "y", None)
    if isinstance(y, Tensor):
        return y.detach().long().reshape(-1).cpu()
    return torch.tensor([int(ds[i][1]) for i in range(len(ds))])  # type: ignore[arg-type]


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if hasattr(v, "tolist"):
        v = v.tolist()
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class SupervisedModule(pl.LightningModule):
    """ERM (``method.name: erm``) or mixup/CutMix (``method.name: mixup``) classification.

    Args:
        cfg: The recipe as a plain dict (saved as hyper-parameters, so a checkpoint names its
            method).
        in_channels: Input channels of the data.
        num_classes: Number of classes ``C`` (>= 2).
        batch_augment: ``aug(x, generator=None)`` applied once to training inputs when
            ``method.augment`` (``None`` = none).
        steps_per_epoch: Optimiser steps per epoch (schedule).
        train_set: Clean labelled train split yielding ``(x, y, idx)`` (collapse tracking and
            the mixup geometry; ``None`` disables both).
        test_set: Test split (test accuracy at the tracked epochs).

    Shapes:
        ``training_step((x [B, ...], y [B], idx [B]))``; ``forward(x) -> [B, output_dim]``
        backbone features; ``logits(x) -> [B, C]``.
    """

    def __init__(
        self,
        cfg: dict[str, Any],
        in_channels: int,
        num_classes: int,
        batch_augment: Any = None,
        steps_per_epoch: int = 1,
        train_set: Dataset | None = None,
        test_set: Dataset | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters({"cfg": cfg, "in_channels": in_channels,
                                   "num_classes": num_classes,
                                   "steps_per_epoch": steps_per_epoch})
        self.cfg = cfg
        m, mc = cfg["method"], cfg["model"]
        self.method_name = str(m["name"])
        if self.method_name not in ("erm", "mixup"):
            raise ValueError(f"`method.name` must be 'erm' or 'mixup', got {self.method_name!r}")
        if num_classes < 2:
            raise ValueError(f"`num_classes` must be >= 2, got {num_classes}")
        self.label_smoothing = float(m["label_smoothing"])
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(
                f"`method.label_smoothing` must lie in [0, 1), got {self.label_smoothing}"
            )
        self.alpha = float(m.get("mixup_alpha", 1.0))
        self.cutmix_prob = float(m.get("cutmix_prob", 0.0))
        if self.method_name == "mixup" and not self.alpha > 0:
            raise ValueError(f"`method.mixup_alpha` must be > 0, got {self.alpha}")
        if not 0.0 <= self.cutmix_prob <= 1.0:
            raise ValueError(f"`method.cutmix_prob` must lie in [0, 1], got {self.cutmix_prob}")
        self.save_every = int(m["save_features_every"])
        if self.save_every < 0:
            raise ValueError(f"`method.save_features_every` must be >= 0, got {self.save_every}")
        self.feature_samples = int(m["feature_samples"])
        self.geometry_pairs = int(m["geometry_pairs"])
        self.geometry_bins = int(m["geometry_bins"])
        if self.feature_samples < 1:
            raise ValueError(f"`method.feature_samples` must be >= 1, got {self.feature_samples}")
        if self.geometry_pairs < 0 or self.geometry_bins < 1:
            raise ValueError("`method.geometry_pairs` must be >= 0 and `method.geometry_bins` >= 1")

        self.backbone = build_backbone(
            mc["backbone"], in_channels=in_channels, width=mc["width"],
            cifar_stem=mc["cifar_stem"],
        )
        self.classifier = nn.Linear(self.backbone.output_dim, num_classes)
        self.num_classes = num_classes
        self.batch_augment = batch_augment
        self.use_augment = bool(m["augment"]) and batch_augment is not None
        self.steps_per_epoch = steps_per_epoch
        self.train_set, self.test_set = train_set, test_set
        self.eval_batch_size = int(cfg.get("data", {}).get("eval_batch_size", 1024))
        self.seed = int(cfg.get("seed", 0))
        self._gen: torch.Generator | None = None
        self._gen_state: Tensor | None = None
        self.last_collapse: dict[str, float] = {}

    # ------------------------------------------------------------------ helpers
    def generator(self) -> torch.Generator:
        """The CPU generator of every training-time draw (seeded from ``seed`` and the rank)."""
        if self._gen is None:
            self._gen = torch.Generator()
            self._gen.manual_seed(self.seed * 1_000_003 + 7919 * self.global_rank + 17)
            if self._gen_state is not None:
                self._gen.set_state(self._gen_state)
                self._gen_state = None
        return self._gen

    def forward(self, x: Tensor) -> Tensor:
        """Backbone features ``[B, output_dim]`` (what probes and kNN use)."""
        return self.backbone(x)

    def logits(self, x: Tensor) -> Tensor:
        """Class logits ``[B, C]``."""
        return self.classifier(self.backbone(x))

    def _loader(self, ds: Dataset) -> DataLoader:
        return DataLoader(ds, batch_size=self.eval_batch_size, shuffle=False)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y, _ = batch
        if isinstance(x, (list, tuple)):  # loaders that yield views: use the first
            x = x[0]
        g = self.generator()
        if self.use_augment:
            x = self.batch_augment(x, generator=g)
        b = y.shape[0]
        if self.method_name == "mixup":
            draw = float(torch.rand(1, generator=g)) if self.cutmix_prob > 0 else 1.0
            use_cutmix = draw < self.cutmix_prob
            mix = cutmix_batch if use_cutmix else mixup_batch
            x, y_a, y_b, lam = mix(x, y, self.alpha, generator=g)
        else:
            y_a, y_b, lam = y, y, 1.0
        logits = self.logits(x)
        loss = mixed_cross_entropy(logits, y_a, y_b, lam, self.label_smoothing)
        with torch.no_grad():
            pred = logits.argmax(dim=1)
            acc = lam * (pred == y_a).float().mean() + (1 - lam) * (pred == y_b).float().mean()
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=b)
        self.log("train_batch_acc", acc, on_step=False, on_epoch=True, batch_size=b)
        return loss

    def configure_optimizers(self) -> Any:
        return build_optimizer(
            _Obj(self.cfg["optim"]), [self.backbone, self.classifier], self.steps_per_epoch,
            self.trainer.max_epochs or 1,
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["generator_state"] = self.generator().get_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("generator_state")
        if state is not None:
            if self._gen is not None:
                self._gen.set_state(state)
            else:
                self._gen_state = state

    # ------------------------------------------------------------------ collapse tracking
    def feature_subset(self, n: int) -> Tensor:
        """Sorted indices of the fixed seeded subset of ``min(feature_samples, n)`` samples."""
        g = torch.Generator().manual_seed(self.seed + 12345)
        k = min(self.feature_samples, n)
        return torch.randperm(n, generator=g)[:k].sort().values

    def collapse_snapshot(self, epoch: int, save_dir: Path | None = None) -> dict[str, float]:
        """NC1-NC4 of the clean train split and train/test accuracy; optionally save features.

        Args:
            epoch: Completed epochs (the file name and the ``"epoch"`` key).
            save_dir: Where ``epoch_XXX.pt`` goes (``None``: nothing is written).

        Returns:
            ``{"nc1", "nc2_equinorm", "nc2_equiangular", "nc2_max_angle", "nc3", "nc4",
            "nc2_equinorm_weight", "nc2_equiangular_weight", "nc2_max_angle_weight",
            "train_acc", "test_acc"}`` (``test_acc`` only with a test set).
        """
        from contrastmix.eval.collapse import neural_collapse
        from contrastmix.eval.probe import extract_features

        if self.train_set is None:
            raise ValueError("collapse tracking needs `train_set`")
        h, y = extract_features(self.backbone, self._loader(self.train_set), self.device)
        y = y.long()
        w = self.classifier.weight.detach().float().cpu()
        bias = self.classifier.bias.detach().float().cpu()
        nc = neural_collapse(h, y, w, bias)
        keys = ("nc1", "nc2_equinorm", "nc2_equiangular", "nc2_max_angle", "nc3", "nc4",
                "nc2_equinorm_weight", "nc2_equiangular_weight", "nc2_max_angle_weight")
        out = {k: float(nc[k]) for k in keys}
        out["train_acc"] = float(((h @ w.T + bias).argmax(1) == y).float().mean())
        if self.test_set is not None:
            ht, yt = extract_features(self.backbone, self._loader(self.test_set), self.device)
            out["test_acc"] = float(((ht @ w.T + bias).argmax(1) == yt.long()).float().mean())
        if save_dir is not None:
            sub = self.feature_subset(len(y))
            save_dir.mkdir(parents=True, exist_ok=True)
            torch.save(
                {"features": h[sub].float().contiguous(), "labels": y[sub].contiguous(),
                 "epoch": int(epoch)},
                save_dir / f"epoch_{epoch:03d}.pt",
            )
        return out

    def on_train_epoch_end(self) -> None:
        if self.save_every <= 0 or self.train_set is None:
            return
        epoch = self.current_epoch + 1
        last = self.trainer.max_epochs is not None and epoch >= self.trainer.max_epochs
        if epoch % self.save_every and not last:
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
        ``linspace(0, 1, 21)``).

        Returns:
            The JSON-ready geometry dict plus ``"lam_grid"``, ``"num_pairs"`` and
            ``"projection_classes"``.
        """
        from contrastmix.eval.collapse import mixup_geometry, plot_mixup_projection, three_class_projection
        from contrastmix.eval.probe import extract_features

        if self.train_set is None:
            raise ValueError("the mixup geometry needs `train_set`")
        ds = self.train_set
        h, _ = extract_features(self.backbone, self._loader(ds), self.device)
        mu_g = h.double().mean(dim=0)
        labels = _dataset_labels(ds)
        g = torch.Generator().manual_seed(self.seed + 54321)
        p = self.geometry_pairs
        ia, ja = sample_pairs(labels, p, same_class=True, generator=g)
        ib, jb = sample_pairs(labels, p, same_class=False, generator=g)
        i, j = torch.cat([ia, ib]), torch.cat([ja, jb])

        def inputs(idx: Tensor) -> Tensor:
            x = getattr(ds, "x", None)
            if isinstance(x, Tensor) and len(x) == len(labels):
                return x[idx].to(self.device)
            return torch.stack([ds[int(k)][0] for k in idx]).to(self.device)

        lams = (torch.arange(self.geometry_bins, dtype=torch.float32) + 0.5) / self.geometry_bins
        feats, lam = mixed_pair_features(self.backbone, inputs(i), inputs(j), lams,
                                         batch_size=self.eval_batch_size)
        la, lb = labels[i].repeat(len(lams)), labels[j].repeat(len(lams))
        w = self.classifier.weight.detach().float().cpu()
        bias = self.classifier.bias.detach().float().cpu()
        geo = mixup_geometry(feats, lam, la, lb, w, bias, mu_g.float(),
                             bins=self.geometry_bins)
        out: dict[str, Any] = {k: _jsonable(v) for k, v in geo.items()}
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
                title=f"{self.method_name}: mixes of classes {classes[0]}, {classes[1]}, "
                f"{classes[2]}",
            )
        return out

    def export_artifacts(self, run_dir: Path) -> None:
        """Write ``classifier.pt``, ``mixup_geometry.json`` and ``mixup_projection.png``."""
        run_dir = Path(run_dir)
        torch.save({k: v.detach().cpu() for k, v in self.classifier.state_dict().items()},
                   run_dir / "classifier.pt")
        if self.geometry_pairs > 0 and self.train_set is not None:
            geo = self.mixup_geometry_report(run_dir / "mixup_projection.png")
            (run_dir / "mixup_geometry.json").write_text(json.dumps(geo, indent=2))


class _Obj:
    """Attribute access to a plain dict (for the optimiser builder)."""

    def __init__(self, d: dict[str, Any]) -> None:
        self.__dict__.update(d)


def _supervised_factory(cfg: dict[str, Any], data: DataBundle, steps: int) -> pl.LightningModule:
    if data.task != "classification":
        raise ValueError(
            f"method '{cfg['method']['name']}' needs a classification dataset, got a "
            f"'{data.task}' dataset"
        )
    return SupervisedModule(
        cfg, data.in_channels, data.num_classes, data.batch_augment, steps,
        train_set=data.train, test_set=data.test,
    )


register_module("erm", _supervised_factory)
register_module("mixup", _supervised_factory)
