"""Evaluation of multimodal runs (``contrastmix probe RUN --json`` for ``task == "multimodal"``).

The run's network is rebuilt from its ``multimodal.json`` (the network by kind and the arguments
that build it, :func:`contrastmix.models.multimodal.build_multimodal`) and the recipe's ``model``
section, with the weights of ``backbone.pt`` and ``model.pt``; what is measured depends on the
kind, never on the method that trained it.

Two-tower networks (``architecture: two_tower``, e.g. CLIP and m2-mix; docs/methods.md §5) on the
test split:

- image->text and text->image **retrieval**: hit rate@k (``i2t_hit_rate@k``,
  ``t2i_hit_rate@k``; torchmetrics' ``RetrievalHitRate``, what CLIP papers call recall@k when one
  item is relevant; the former keys ``*_recall@k`` are kept as aliases, :func:`metric_aliases`)
  and mean average precision (``RetrievalMAP``), ties ranked pessimistically. Relevance is the
  dataset's ``extras["retrieval"]``: the digits captions describe only the class (one of six
  templates per class, so ~60 distinct strings), hence *class-level* there (a retrieved caption
  is relevant when its class is the query's; instance-level recall would be meaningless, the
  image carries no information about which template its caption used), k = 1, 5; users' pairs
  (``image-text-csv``) are *instance-level* (the paired caption is the one relevant item),
  k = 1, 5, 10.
- **zero-shot** classification (only when the data has labels) from one prompt per class
  (``argmax_c cos(I, P_c)``), and the expected calibration error (Guo et al., 2017; 15
  equal-width bins) and NLL of the zero-shot probabilities ``softmax(cos / τ_zs)`` with
  ``τ_zs`` = the ``zero_shot_temperature`` of ``multimodal.json`` (the recipe's
  ``method.zero_shot_temperature``) or the model's CLIP temperature.
- **geometry** (Wang & Isola, ICML 2020; Liang et al., NeurIPS 2022): alignment of the test pairs,
  uniformity (t = 2) of the image embeddings, of the caption embeddings and of their union, and
  the modality gap ``||mean(I) - mean(T)||``
  (:func:`contrastmix.eval.geometry.multimodal_geometry`).

Fusion networks (``architecture: fusion``, e.g. M3CoL and its concat baseline; docs/methods.md
§6): fusion-head accuracy (the inference path),
each unimodal head's accuracy, the fusion head's ECE, and the geometry of every cyclic pair of
projected modality embeddings.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from contrastmix._validation import check_same_length, check_tensor
from contrastmix.data.registry import build_data
from contrastmix.errors import CheckpointError, RunDirError
from contrastmix.eval.calibration import expected_calibration_error
from contrastmix.eval.geometry import multimodal_geometry
from contrastmix.models.multimodal import SPEC_FILE, build_multimodal, image_encoder_of
from contrastmix.runs import load_backbone, load_run, load_state_file, resolve_device

__all__ = [
    "RECALL_KS",
    "ECE_BINS",
    "retrieval_hit_rate",
    "retrieval_recall",
    "metric_aliases",
    "mean_average_precision",
    "read_multimodal_spec",
    "load_multimodal_model",
    "two_tower_metrics",
    "fusion_metrics",
    "probe_multimodal_run",
]

#: k values of the hit rate@k (class-level retrieval of the built-in captions).
RECALL_KS: tuple[int, ...] = (1, 5)
#: Equal-width confidence bins of the ECE.
ECE_BINS = 15


def _check_retrieval(sim: Tensor, query_labels: Tensor, gallery_labels: Tensor) -> None:
    check_tensor("sim", sim, ndim=2, floating=True)
    check_tensor("query_labels", query_labels, ndim=1)
    check_tensor("gallery_labels", gallery_labels, ndim=1)
    if sim.shape[0] != query_labels.shape[0] or sim.shape[1] != gallery_labels.shape[0]:
        raise ValueError(
            f"`sim` must be [len(query_labels), len(gallery_labels)] = "
            f"[{query_labels.shape[0]}, {gallery_labels.shape[0]}], got {tuple(sim.shape)}"
        )
    if sim.shape[1] == 0:
        raise ValueError("the gallery is empty (`sim` has no columns)")


def _ranked_relevance(sim: Tensor, query_labels: Tensor, gallery_labels: Tensor) -> Tensor:
    """``[Q, G]`` float64 relevance of the gallery in ranked order: similarity descending, and
    among equal similarities the non-relevant items first (pessimistic ties)."""
    rel = gallery_labels.to(sim.device)[None, :] == query_labels.to(sim.device)[:, None]
    # stable sorts: first by relevance (False first), then by similarity -> lexicographic order
    by_rel = rel.to(torch.int8).argsort(dim=1, stable=True)
    s = sim.double().gather(1, by_rel)
    by_sim = s.argsort(dim=1, descending=True, stable=True)
    return rel.gather(1, by_rel.gather(1, by_sim)).double()


def retrieval_hit_rate(
    sim: Tensor, query_labels: Tensor, gallery_labels: Tensor, ks: Sequence[int] = RECALL_KS
) -> dict[int, float]:
    """Hit rate@k: share of queries with a relevant item among their top ``k``.

    torchmetrics' ``RetrievalHitRate(top_k=k)`` (``empty_target_action="neg"``: a query without
    relevant item counts as a miss), averaged over the queries; what CLIP papers call
    "recall@k" when every query has one relevant item. An item is relevant when its label equals
    the query's (class-level; pass ``arange`` labels for instance-level retrieval). Ties are
    pessimistic: an item with the same similarity as a relevant one ranks before it, so
    duplicate embeddings never help.

    Args:
        sim: ``[Q, G]`` query-gallery similarities.
        query_labels: ``[Q]`` label of each query.
        gallery_labels: ``[G]`` label of each gallery item.
        ks: ``k`` values (each clamped to ``G``).

    Returns:
        ``{k: hit rate}`` with values in ``[0, 1]``.

    Raises:
        ValueError: on shape mismatch, NaN, an empty gallery or ``k < 1``.
    """
    _check_retrieval(sim, query_labels, gallery_labels)
    if any(int(k) < 1 for k in ks):
        raise ValueError(f"`ks` must be >= 1, got {list(ks)}")
    rel = _ranked_relevance(sim, query_labels, gallery_labels)
    first = rel.cumsum(dim=1) > 0  # [Q, G]: a relevant item at rank <= r
    g = sim.shape[1]
    return {int(k): float(first[:, min(int(k), g) - 1].double().mean()) for k in ks}


#: Former name of :func:`retrieval_hit_rate` (same values), kept for callers of older releases.
retrieval_recall = retrieval_hit_rate


def mean_average_precision(sim: Tensor, query_labels: Tensor, gallery_labels: Tensor) -> float:
    """Mean average precision over the queries (queries without relevant item skip).

    torchmetrics' ``RetrievalMAP`` with ``empty_target_action="skip"``: ``AP_q = mean over
    relevant ranks r of precision@r``, the gallery sorted by decreasing similarity with
    pessimistic ties (as :func:`retrieval_hit_rate`). One difference: torchmetrics (1.9) counts
    an item whose score is ``<= 0`` as not relevant, which cosine similarities often are; this
    is the standard AP, equal to torchmetrics' on scores shifted to be positive (the ranking,
    hence our value, unchanged; pinned by ``tests/test_image_text_csv.py``).

    Args:
        sim: ``[Q, G]`` similarities; query_labels: ``[Q]``; gallery_labels: ``[G]``.

    Returns:
        mAP in ``[0, 1]`` (NaN when no query has a relevant item).
    """
    _check_retrieval(sim, query_labels, gallery_labels)
    rel = _ranked_relevance(sim, query_labels, gallery_labels)
    hits = rel.cumsum(dim=1)
    ranks = torch.arange(1, sim.shape[1] + 1, device=sim.device, dtype=torch.float64)
    n_rel = rel.sum(dim=1)
    ap = (rel * hits / ranks).sum(dim=1) / n_rel.clamp_min(1)
    valid = n_rel > 0
    return float(ap[valid].mean()) if bool(valid.any()) else float("nan")


def read_multimodal_spec(run_dir: str | Path) -> dict[str, Any]:
    """The run's ``multimodal.json``: the network by kind (``architecture``: ``two_tower`` or
    ``fusion``), the arguments that rebuild it and the names of its files.

    Raises:
        RunDirError: no such file, not JSON, or a file name outside the run directory.
    """
    path = Path(run_dir) / SPEC_FILE
    if not path.is_file():
        raise RunDirError(
            f"{run_dir} has no {SPEC_FILE} (the description of a multimodal run's network); was "
            "it trained to the end?"
        )
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RunDirError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(spec, dict):
        raise RunDirError(f"{path} does not hold a JSON object")
    root = Path(run_dir).resolve()
    for key in ("model_file", "backbone_file"):
        name = spec.get(key)
        if not isinstance(name, str) or not (root / name).resolve().is_relative_to(root):
            raise RunDirError(f"{path}: `{key}` must name a file inside the run, got {name!r}")
    return spec


def load_multimodal_model(
    run_dir: str | Path, cfg: Any = None, spec: dict[str, Any] | None = None
) -> nn.Module:
    """Rebuild a run's multimodal network and load ``backbone.pt`` and ``model.pt``.

    The network is built from ``multimodal.json`` (its kind and arguments) and the recipe's
    ``model`` section (the image encoder), by
    :func:`contrastmix.models.multimodal.build_multimodal`; the weights are read with
    ``torch.load(..., weights_only=True)``.

    Args:
        run_dir: The run directory.
        cfg: Its recipe (default: read from ``config.yaml``).
        spec: Its ``multimodal.json`` (default: read from the run).

    Returns:
        The model in eval mode on the CPU.

    Raises:
        RunDirError: ``multimodal.json`` or ``model.pt`` is missing.
        CheckpointError: the description cannot be built, or a weights file is unreadable or
            does not match it.
    """

    cfg = load_run(run_dir) if cfg is None else cfg
    spec = read_multimodal_spec(run_dir) if spec is None else spec
    meta = Path(run_dir) / SPEC_FILE
    try:
        model = build_multimodal(spec, cfg.model)
        in_channels = int(spec["arguments"]["in_channels"])
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{meta} does not describe a network that builds: {e}") from None
    encoder, prefix = image_encoder_of(model)
    encoder.load_state_dict(load_backbone(run_dir, cfg, in_channels).state_dict())
    path = Path(run_dir) / spec["model_file"]
    if not path.is_file():
        raise RunDirError(
            f"{run_dir} has no {spec['model_file']} (the text tower / heads of a multimodal "
            "run); was it trained to the end?"
        )
    state = load_state_file(path)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise CheckpointError(f"{path} does not match the run's network: {first}") from None
    missing = [k for k in missing if not k.startswith(prefix)]
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not match the run's network: missing keys {missing[:5]}, "
            f"unexpected keys {list(unexpected)[:5]}"
        )
    return model.eval()


def _batches(
    dataset: Any, collate: Any, batch_size: int
) -> Iterator[tuple[dict[str, Any], Tensor]]:
    for inputs, y, _ in DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                   collate_fn=collate):
        yield inputs, y


def _to(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in inputs.items()}


def _calibration(logits: Tensor, labels: Tensor) -> dict[str, float]:
    logp = torch.log_softmax(logits.double(), dim=1)
    conf = logp.exp().max(dim=1).values
    return {
        "ece": expected_calibration_error(logp.exp(), labels, ECE_BINS, logits=False),
        "nll": float(-logp.gather(1, labels[:, None]).mean()),
        "mean_confidence": float(conf.mean()),
    }


def metric_aliases(ks: Sequence[int] = RECALL_KS) -> dict[str, str]:
    """Former result keys -> current ones: ``i2t_recall@k`` / ``t2i_recall@k`` were renamed
    ``i2t_hit_rate@k`` / ``t2i_hit_rate@k`` (torchmetrics' name of the same number); results
    carry both until readers of the old names are gone."""
    return {f"{d}_recall@{int(k)}": f"{d}_hit_rate@{int(k)}" for d in ("i2t", "t2i") for k in ks}


@torch.no_grad()
def two_tower_metrics(
    model: nn.Module,
    images: Tensor,
    captions: Sequence[str],
    labels: Tensor | None = None,
    prompts: Sequence[str] | None = None,
    *,
    relevance: str = "class",
    ks: Sequence[int] = RECALL_KS,
    zero_shot_temperature: float | None = None,
    batch_size: int = 1024,
) -> dict[str, Any]:
    """Retrieval, zero-shot, calibration and geometry of a two-tower model on paired data.

    Args:
        model: A :class:`~contrastmix.models.multimodal.TwoTower` (any device).
        images: ``[N, C, H, W]`` test images.
        captions: ``N`` captions, caption ``i`` paired with image ``i``.
        labels: ``[N]`` classes, or ``None`` (unlabelled pairs: no zero-shot, no ECE).
        prompts: One prompt per class, in class order (``None``: no zero-shot).
        relevance: ``"class"`` (a retrieved item is relevant when its class is the query's;
            needs ``labels``) or ``"instance"`` (only the query's own pair is relevant).
        ks: ``k`` values of the hit rate.
        zero_shot_temperature: τ of the zero-shot probabilities (default: the model's).
        batch_size: Embedding batch size.

    Returns:
        Flat dict of floats (see the module docstring): ``i2t_hit_rate@k``, ``t2i_hit_rate@k``
        (and their former names, :func:`metric_aliases`), ``i2t_map``, ``t2i_map``, geometry,
        and with labels and prompts the zero-shot accuracy / ECE / NLL / confidence and
        ``zero_shot_temperature``.
    """

    check_tensor("images", images, floating=True)
    if len(captions) != len(images):
        raise ValueError(f"`captions` has {len(captions)} entries but `images` has {len(images)}")
    if labels is not None:
        check_tensor("labels", labels, ndim=1)
        check_same_length(images=images, labels=labels)
    if relevance not in ("class", "instance"):
        raise ValueError(f"`relevance` must be 'class' or 'instance', got {relevance!r}")
    if relevance == "class" and labels is None:
        raise ValueError("class-level retrieval needs `labels`; use relevance='instance'")
    device = next(model.parameters()).device
    model.eval()
    img = torch.cat([model.encode_image(images[i:i + batch_size].to(device))
                     for i in range(0, len(images), batch_size)]).double().cpu()
    caps = list(captions)
    txt = torch.cat([model.encode_text(caps[i:i + batch_size])
                     for i in range(0, len(caps), batch_size)]).double().cpu()
    out: dict[str, Any] = {}
    sim = img @ txt.T
    rel = labels.cpu().long() if relevance == "class" else torch.arange(len(caps))
    for k, v in retrieval_hit_rate(sim, rel, rel, ks).items():
        out[f"i2t_hit_rate@{k}"] = v
    for k, v in retrieval_hit_rate(sim.T, rel, rel, ks).items():
        out[f"t2i_hit_rate@{k}"] = v
    for old, new in metric_aliases(ks).items():
        out[old] = out[new]
    out["i2t_map"] = mean_average_precision(sim, rel, rel)
    out["t2i_map"] = mean_average_precision(sim.T, rel, rel)
    if labels is not None and prompts is not None:
        y = labels.cpu().long()
        pro = model.encode_text(list(prompts)).double().cpu()
        cos = img @ pro.T
        tau = float(zero_shot_temperature) if zero_shot_temperature is not None else float(
            model.temperature  # type: ignore[arg-type]
        )
        if not tau > 0:
            raise ValueError(f"`zero_shot_temperature` must be > 0, got {tau}")
        out["zero_shot_accuracy"] = float((cos.argmax(dim=1) == y).float().mean())
        cal = _calibration(cos / tau, y)
        out["zero_shot_ece"] = cal["ece"]
        out["zero_shot_nll"] = cal["nll"]
        out["zero_shot_confidence"] = cal["mean_confidence"]
        out["zero_shot_temperature"] = tau
    g = multimodal_geometry(img, txt)
    out["alignment"] = g["alignment"]
    out["uniformity_image"] = g["uniformity_a"]
    out["uniformity_text"] = g["uniformity_b"]
    out["uniformity_union"] = g["uniformity_union"]
    out["modality_gap"] = g["modality_gap"]
    return out


@torch.no_grad()
def fusion_metrics(
    model: nn.Module, batches: Iterator[tuple[dict[str, Any], Tensor]]
) -> dict[str, Any]:
    """Fusion / unimodal accuracies, fusion ECE and embedding geometry of an M3CoL model.

    Args:
        model: A :class:`~contrastmix.models.multimodal.M3CoLModel`.
        batches: ``({modality: batch}, labels)`` pairs of the test split.

    Returns:
        ``fusion_accuracy``, ``unimodal_accuracy`` (per modality), ``fusion_ece``,
        ``fusion_nll``, ``embedding_geometry`` (per cyclic modality pair ``"a|b"``).
    """

    device = next(model.parameters()).device
    mods: list[str] = list(model.modalities)  # type: ignore[arg-type]
    model.eval()
    fusion, ys = [], []
    uni: dict[str, list[Tensor]] = {m: [] for m in mods}
    emb: dict[str, list[Tensor]] = {m: [] for m in mods}
    for inputs, y in batches:
        out = model(_to({m: inputs[m] for m in mods}, device))
        fusion.append(out.fusion_logits.double().cpu())
        for m in mods:
            uni[m].append(out.unimodal_logits[m].double().cpu())
            emb[m].append(out.embeddings[m].double().cpu())
        ys.append(y.cpu().long())
    if not ys:
        raise ValueError("`batches` is empty")
    y = torch.cat(ys)
    f = torch.cat(fusion)
    res: dict[str, Any] = {"fusion_accuracy": float((f.argmax(1) == y).float().mean())}
    res["unimodal_accuracy"] = {
        m: float((torch.cat(uni[m]).argmax(1) == y).float().mean()) for m in mods
    }
    cal = _calibration(f, y)
    res["fusion_ece"] = cal["ece"]
    res["fusion_nll"] = cal["nll"]
    z = {m: torch.cat(emb[m]) for m in mods}
    geo: dict[str, dict[str, float]] = {}
    for i, a in enumerate(mods):
        b = mods[(i + 1) % len(mods)]
        if f"{b}|{a}" in geo:  # two modalities: one pair
            continue
        geo[f"{a}|{b}"] = multimodal_geometry(z[a], z[b])
    res["embedding_geometry"] = geo
    return res


def probe_multimodal_run(
    run_dir: str | Path, cfg: Any, device: str | torch.device | None = None
) -> dict[str, Any]:
    """Evaluate a finished multimodal run on its test split.

    Args:
        run_dir: The run directory (``config.yaml``, ``backbone.pt``, ``model.pt``).
        cfg: Its validated recipe.
        device: Evaluation device (default: CUDA when available, else CPU).

    Returns:
        A JSON-serialisable dict with ``task: "multimodal"``, the metrics and a ``protocol``
        entry naming every evaluation choice.
    """

    data = build_data(cfg.data)
    dev = resolve_device(device)
    spec = read_multimodal_spec(run_dir)
    kind = spec.get("architecture")
    model = load_multimodal_model(run_dir, cfg, spec).to(dev)
    extras = dict(data.extras or {})
    bs = int(cfg.data.eval_batch_size)
    out: dict[str, Any] = {
        "run": str(run_dir), "method": str(cfg.method.name), "dataset": str(cfg.data.name),
        "task": "multimodal", "architecture": kind, "n_test": len(data.test),
    }
    common = {
        "split": "test split of the recipe's dataset (data.seed fixes split, captions, pairing)",
        "inputs": "test-time inputs, no augmentation; model in eval mode; embeddings computed "
        "once in float32, metrics in float64",
        "text_tower": "all-MiniLM-L6-v2 sentence embeddings (frozen unless "
        "method.text_frozen=false) + the run's trained projection",
        "model": f"rebuilt from {SPEC_FILE} (architecture {kind!r}) and the recipe's model "
        "section; weights from backbone.pt and model.pt",
    }
    if kind == "two_tower":
        images, captions, labels = [], [], []
        for inputs, y in _batches(data.test, data.collate_fn, bs):
            images.append(inputs["image"])
            captions += list(inputs["text"])
            labels.append(y)
        zs_t = spec.get("zero_shot_temperature")
        relevance = str(extras.get("retrieval", "class"))
        ks = tuple(int(k) for k in extras.get("retrieval_ks", RECALL_KS))
        labelled = bool(extras.get("labelled", True)) and "class_prompts" in extras
        prompts = list(extras["class_prompts"]) if labelled else None
        metrics = two_tower_metrics(
            model, torch.cat(images), captions, torch.cat(labels) if labelled else None,
            prompts, relevance=relevance, ks=ks, zero_shot_temperature=zs_t, batch_size=bs,
        )
        out.update(metrics)
        why = ("class-level (captions describe only the class): a retrieved item is relevant "
               "when its class is the query's" if relevance == "class" else
               "instance-level: the query's own pair is the one relevant item")
        out["protocol"] = {
            **common,
            "embeddings": "L2-normalised outputs of each tower's projection",
            "retrieval": "image->text: every test image queries all test captions; text->image: "
            f"every test caption queries all test images; similarity = cosine; relevance is "
            f"{why}; ties ranked pessimistically (an equally similar non-relevant item ranks "
            "first); hit_rate@k = share of queries with a relevant item in the top k "
            "(torchmetrics RetrievalHitRate; 'recall@k' in CLIP papers when one item is "
            "relevant); map = mean average precision (torchmetrics RetrievalMAP, queries "
            "without relevant item skipped)",
            "retrieval_relevance": relevance,
            "retrieval_k": list(ks),
            "aliases": metric_aliases(ks),
            "geometry": "alignment = mean ||I_i - T_i||^2 over test pairs; uniformity = "
            "log mean_{i<j} exp(-2 ||x_i - x_j||^2) of the images, the captions and their union "
            "(float64); modality_gap = ||mean(I) - mean(T)||",
        }
        if prompts is None:
            out["protocol"]["zero_shot"] = ("not measured: the data has no labels (zero-shot "
                                            "accuracy and ECE need them)")
            return out
        out["protocol"].update({
            "zero_shot": "predict argmax_c cos(image, prompt_c), one prompt per class",
            "prompts": prompts,
            "prompt_template": extras.get("prompt_template"),
            "zero_shot_temperature": metrics["zero_shot_temperature"],
            "zero_shot_temperature_source": f"zero_shot_temperature of {SPEC_FILE} (the "
            "recipe's method.zero_shot_temperature)" if zs_t is not None
            else "the model's CLIP temperature",
            "calibration": f"ECE with {ECE_BINS} equal-width confidence bins (Guo et al. 2017; "
            "equals torchmetrics MulticlassCalibrationError (n_bins=15, L1 norm) unless a "
            "confidence lies exactly on a bin edge) and NLL of softmax(cos / "
            "zero_shot_temperature)",
        })
        return out
    if kind == "fusion":
        res = fusion_metrics(model, ((_to(x, dev), y) for x, y in
                                     _batches(data.test, data.collate_fn, bs)))
        out.update(res)
        out["protocol"] = {
            **common,
            "modalities": list(model.modalities),  # type: ignore[arg-type]
            "fusion": "fusion head on the concatenated projections (the inference path); "
            "accuracy = argmax of its logits",
            "unimodal": "each modality's own head on its projection",
            "calibration": f"ECE ({ECE_BINS} equal-width bins) and NLL of softmax(fusion logits)",
            "geometry": "per cyclic modality pair: alignment, uniformity (t = 2) of each and of "
            "the union, modality gap, on L2-normalised projected embeddings z_m",
        }
        return out
    raise CheckpointError(
        f"{Path(run_dir) / SPEC_FILE}: unknown architecture {kind!r} (known: two_tower, fusion)"
    )
