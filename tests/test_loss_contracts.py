"""Loss contracts (the table in :mod:`contrastmix.losses`): one call shape per family, each loss
as a function and as a module that agree, the same one-line errors for the same wrong shapes,
finite values and gradients, and no training schedule in any loss signature."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from contrastmix import losses
from contrastmix.losses import (
    CLIPLoss,
    M2MixLoss,
    M3CoLLoss,
    M3CoLObjective,
    MoCHiLoss,
    MoCoLoss,
    RnCLoss,
    SupConLoss,
    SupReMixLoss,
    clip_loss,
    m2mix_loss,
    m3col_loss,
    mochi_loss,
    moco_infonce,
    rnc_loss,
    supcon_loss,
    supremix_loss,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _unit(*shape: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=_gen(seed), dtype=torch.float64), dim=-1)


@dataclass(frozen=True)
class Member:
    """One loss of a family: ``function(*inputs, generator)`` and ``module()(*inputs, ...)``
    with the same hyper-parameters (``generator`` is None for losses without draws)."""

    name: str
    function: Callable[..., torch.Tensor]
    module: Callable[..., torch.Tensor]
    draws: bool
    func_obj: Callable[..., Any]
    module_cls: type


# ------------------------------------------------------------------------------ the families
MOCHI_H = {"num_hard": 16, "num_mix": 8, "num_query_mix": 4}
QUEUE = [
    Member(
        "moco",
        lambda q, k, n, g: moco_infonce(q, k, n, 0.2),
        lambda q, k, n, g: MoCoLoss(0.2)(q, k, n),
        False, moco_infonce, MoCoLoss,
    ),
    Member(
        "mochi",
        lambda q, k, n, g: mochi_loss(q, k, n, 0.2, **MOCHI_H, generator=g),
        lambda q, k, n, g: MoCHiLoss(0.2, **MOCHI_H)(q, k, n, generator=g),
        True, mochi_loss, MoCHiLoss,
    ),
]
SUPREMIX_H = {"temperature": 0.3, "window": 2.5}
VIEW = [
    Member(
        "supcon",
        lambda f, y, g: supcon_loss(f, y, 0.2),
        lambda f, y, g: SupConLoss(0.2)(f, y),
        False, supcon_loss, SupConLoss,
    ),
    Member(
        "rnc",
        lambda f, y, g: rnc_loss(f, y, 2.0),
        lambda f, y, g: RnCLoss(2.0)(f, y),
        False, rnc_loss, RnCLoss,
    ),
    Member(
        "supremix",
        lambda f, y, g: supremix_loss(f, y, **SUPREMIX_H, generator=g),
        lambda f, y, g: SupReMixLoss(**SUPREMIX_H)(f, y, generator=g),
        True, supremix_loss, SupReMixLoss,
    ),
]
M2MIX_H = {"mix_temperature": 0.1, "alpha": 0.5, "weight": 0.05, "vmix_weight": 0.1,
           "lmix_weight": 0.2}
M3COL_H = {"temperature": 0.1, "beta_param": 0.15, "mix_prob": 0.5}
PAIRED = [
    Member(
        "clip",
        lambda a, b, g: clip_loss(a, b, 0.07),
        lambda a, b, g: CLIPLoss(0.07)(a, b),
        False, clip_loss, CLIPLoss,
    ),
    Member(
        "m2mix",
        lambda a, b, g: m2mix_loss(a, b, 0.05, **M2MIX_H, coef=0.5, generator=g),
        lambda a, b, g: M2MixLoss(0.05, **M2MIX_H)(a, b, coef=0.5, generator=g),
        True, m2mix_loss, M2MixLoss,
    ),
    Member(
        "m3col",
        lambda a, b, g: m3col_loss(a, b, **M3COL_H, generator=g),
        lambda a, b, g: M3CoLLoss(**M3COL_H)(a, b, generator=g),
        True, m3col_loss, M3CoLLoss,
    ),
    Member(
        "m3col_softclip",
        lambda a, b, g: m3col_loss(a, b, soft_temperature=0.2, mixup=False),
        lambda a, b, g: M3CoLLoss(soft_temperature=0.2)(a, b, mixup=False),
        False, m3col_loss, M3CoLLoss,
    ),
]
FAMILIES = {"queue": QUEUE, "view": VIEW, "paired": PAIRED}
ALL = [(fam, m) for fam, members in FAMILIES.items() for m in members]
IDS = [f"{fam}-{m.name}" for fam, m in ALL]


def _queue_inputs(seed: int = 0) -> list[torch.Tensor]:
    return [_unit(8, 16, seed=seed), _unit(8, 16, seed=seed + 1), _unit(32, 16, seed=seed + 2)]


def _view_inputs(seed: int = 0) -> list[torch.Tensor]:
    labels = torch.tensor([0.0, 1.0, 1.0, 2.5, 4.0, 4.0, 5.0, 7.0], dtype=torch.float64)
    return [_unit(8, 2, 12, seed=seed), labels]


def _paired_inputs(seed: int = 0) -> list[torch.Tensor]:
    return [_unit(8, 12, seed=seed), _unit(8, 12, seed=seed + 1)]


INPUTS = {"queue": _queue_inputs, "view": _view_inputs, "paired": _paired_inputs}


# ------------------------------------------------------------------------- call shapes
LEADING = {"queue": ["query", "key", "queue"], "view": ["features", "labels"]}


def _leading(fn: Callable[..., Any], n: int) -> list[str]:
    params = [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]
    return [p.name for p in params[:n]]


@pytest.mark.parametrize(("family", "member"), ALL, ids=IDS)
def test_family_call_shape(family: str, member: Member) -> None:
    n = len(LEADING.get(family, ["a", "b"]))
    fn_names = _leading(member.func_obj, n)
    mod_names = _leading(member.module_cls.forward, n)
    assert fn_names == mod_names, (fn_names, mod_names)
    if family in LEADING:
        assert fn_names == LEADING[family]
    # the leading arguments are positional; everything random is a `generator=` keyword
    for fn in (member.func_obj, member.module_cls.forward):
        params = inspect.signature(fn).parameters
        lead = [params[name] for name in fn_names]
        assert all(p.kind is p.POSITIONAL_OR_KEYWORD for p in lead), fn
        if member.draws:
            assert params["generator"].kind is inspect.Parameter.KEYWORD_ONLY, fn


def test_family_table_documents_every_member() -> None:
    doc = losses.__doc__ or ""
    for _, m in ALL:
        assert f":func:`{m.func_obj.__name__}`" in doc, m.func_obj.__name__
        assert f":class:`{m.module_cls.__name__}`" in doc, m.module_cls.__name__
    for family in ("Queue losses", "View losses", "Paired losses"):
        assert family in doc


# ------------------------------------------------------------- function == module
@pytest.mark.parametrize(("family", "member"), ALL, ids=IDS)
def test_function_and_module_agree(family: str, member: Member) -> None:
    inputs = INPUTS[family]()
    for seed in (0, 1):
        f = member.function(*inputs, _gen(seed))
        m = member.module(*inputs, _gen(seed))
        assert f.shape == m.shape == ()
        torch.testing.assert_close(f, m, rtol=0, atol=0)
    if member.draws:  # the draws follow the generator
        a = member.function(*inputs, _gen(0))
        b = member.function(*inputs, _gen(1))
        assert not torch.equal(a, b)


# ------------------------------------------------------------------- wrong shapes
# (name of the case, transform of the valid inputs, the argument the message must name)
Case = tuple[str, Callable[[list[Any]], list[Any]], str]
QUEUE_CASES: list[Case] = [
    ("query 1-D", lambda x: [x[0][0], x[1], x[2]], "query"),
    ("query 3-D", lambda x: [x[0][None], x[1], x[2]], "query"),
    ("query integer", lambda x: [x[0].long(), x[1], x[2]], "query"),
    ("query not a tensor", lambda x: [x[0].tolist(), x[1], x[2]], "query"),
    ("key width", lambda x: [x[0], F.normalize(x[1][:, :8], dim=-1), x[2]], "key"),
    ("key length", lambda x: [x[0], x[1][:7], x[2]], "key"),
    ("key 1-D", lambda x: [x[0], x[1][0], x[2]], "key"),
    ("queue width", lambda x: [x[0], x[1], F.normalize(x[2][:, :8], dim=-1)], "queue"),
    ("queue 1-D", lambda x: [x[0], x[1], x[2][0]], "queue"),
    ("query NaN", lambda x: [x[0].clone().fill_(float("nan")), x[1], x[2]], "query"),
    ("empty batch", lambda x: [x[0][:0], x[1][:0], x[2]], "query"),
    ("query not unit", lambda x: [3 * x[0], x[1], x[2]], "query"),
    ("key not unit", lambda x: [x[0], 3 * x[1], x[2]], "key"),
    ("queue not unit", lambda x: [x[0], x[1], 3 * x[2]], "queue"),
]
VIEW_CASES: list[Case] = [
    ("features 2-D", lambda x: [x[0][:, 0], x[1]], "features"),
    ("features 4-D", lambda x: [x[0][None], x[1]], "features"),
    ("features no view", lambda x: [x[0][:, :0], x[1]], "features"),
    ("features no sample", lambda x: [x[0][:0], x[1][:0]], "features"),
    ("features integer", lambda x: [x[0].long(), x[1]], "features"),
    ("features NaN", lambda x: [x[0].clone().fill_(float("nan")), x[1]], "features"),
    ("labels 2-D", lambda x: [x[0], x[1][:, None]], "labels"),
    ("labels length", lambda x: [x[0], x[1][:5]], "labels"),
    ("labels bool", lambda x: [x[0], x[1] > 2], "labels"),
    ("labels not a tensor", lambda x: [x[0], x[1].tolist()], "labels"),
]
PAIRED_CASES: list[Case] = [
    ("a 1-D", lambda x: [x[0][0], x[1]], "a"),
    ("a 3-D", lambda x: [x[0][None], x[1]], "a"),
    ("a integer", lambda x: [x[0].long(), x[1]], "a"),
    ("a not a tensor", lambda x: [x[0].tolist(), x[1]], "a"),
    ("b 1-D", lambda x: [x[0], x[1][0]], "b"),
    ("b width", lambda x: [x[0], F.normalize(x[1][:, :6], dim=-1)], "b"),
    ("b length", lambda x: [x[0], x[1][:5]], "b"),
    ("empty batch", lambda x: [x[0][:0], x[1][:0]], "a"),
    ("b NaN", lambda x: [x[0], x[1].clone().fill_(float("nan"))], "b"),
]
CASES = {"queue": QUEUE_CASES, "view": VIEW_CASES, "paired": PAIRED_CASES}
FAMILY_CASES = [(fam, case) for fam, cases in CASES.items() for case in cases]


def _arg_names(family: str, member: Member) -> dict[str, str]:
    """Generic argument name of the family -> the member's own name."""
    if family != "paired":
        return {}
    a, b = _leading(member.func_obj, 2)
    return {"a": a, "b": b}


def _generic(message: str, names: dict[str, str]) -> str:
    for generic, own in names.items():
        message = message.replace(f"`{own}`", f"`{generic}`")
    return message


@pytest.mark.parametrize(("family", "case"), FAMILY_CASES,
                         ids=[f"{fam}-{case[0]}" for fam, case in FAMILY_CASES])
def test_every_member_rejects_the_same_wrong_shape(family: str, case: Case) -> None:
    _, transform, argument = case
    messages = {}
    for member in FAMILIES[family]:
        names = _arg_names(family, member)
        own = names.get(argument, argument)
        for form, call in (("function", member.function), ("module", member.module)):
            bad = transform(INPUTS[family]())
            with pytest.raises(ValueError) as info:
                call(*bad, _gen(0))
            msg = str(info.value)
            assert "\n" not in msg, (member.name, form, msg)
            assert re.search(rf"`{re.escape(own)}`", msg), (member.name, form, msg)
            messages[(member.name, form)] = _generic(msg, names)
    assert len(set(messages.values())) == 1, messages


@pytest.mark.parametrize("member", [m for m in VIEW if m.name != "supcon"],
                         ids=lambda m: m.name)
def test_view_losses_with_required_labels_reject_none_alike(member: Member) -> None:
    feats = _view_inputs()[0]
    for call in (member.function, member.module):
        with pytest.raises(ValueError, match=r"^`labels` is required[^\n]*$"):
            call(feats, None, _gen(0))
    # SupCon's self-supervised case (labels=None) stays valid
    assert torch.isfinite(supcon_loss(feats, None))


# ----------------------------------------------------------- finite with gradients
@pytest.mark.parametrize(("family", "member"), ALL, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_with_finite_gradients(family: str, member: Member, dtype: torch.dtype) -> None:
    for seed in range(3):
        for form, call in (("function", member.function), ("module", member.module)):
            inputs = [x.to(dtype) if x.is_floating_point() else x
                      for x in INPUTS[family](seed=10 * seed)]
            if family == "view":
                inputs[1] = inputs[1].to(torch.float64)
            leaf = inputs[0].detach().requires_grad_(True)
            others = [x.detach().requires_grad_(True) if family == "paired" else x
                      for x in inputs[1:]]
            loss = call(leaf, *others, _gen(seed))
            assert loss.ndim == 0 and torch.isfinite(loss), (member.name, form, loss)
            loss.backward()
            assert leaf.grad is not None and torch.isfinite(leaf.grad).all(), (member.name, form)
            assert bool(leaf.grad.abs().sum() > 0), (member.name, form)
            if family == "paired":
                grad = others[0].grad
                assert grad is not None and torch.isfinite(grad).all(), (member.name, form)


# -------------------------------------------------------- no schedule in any loss
SCHEDULE_WORDS = ("epoch", "progress", "step", "warmup", "warm_up", "schedule", "max_epochs")


def _callables() -> list[tuple[str, Callable[..., Any]]]:
    out: list[tuple[str, Callable[..., Any]]] = []
    for name in losses.__all__:
        obj = getattr(losses, name)
        if inspect.isclass(obj):
            for meth in ("__init__", "forward", "compute"):
                if meth in vars(obj):
                    out.append((f"{name}.{meth}", getattr(obj, meth)))
        elif callable(obj):
            out.append((name, obj))
    return out


def test_no_training_schedule_in_any_loss_signature() -> None:
    found = []
    for qualname, fn in _callables():
        for p in inspect.signature(fn).parameters:
            if any(w in p.lower() for w in SCHEDULE_WORDS):
                found.append(f"{qualname}({p})")
    assert not found, found
    # and no schedule state on the modules either (MoCHi's warm-up is the method's `mix=`)
    for cls in (MoCHiLoss, M2MixLoss, M3CoLLoss, M3CoLObjective):
        attrs = vars(cls(**({"num_hard": 4} if cls is MoCHiLoss else {})))
        assert not [a for a in attrs if any(w in a.lower() for w in SCHEDULE_WORDS)], cls
        assert "mix_enabled" not in attrs
