"""No host synchronisation in any method's per-step training path (the GPU-first rule).

Every bundled method (:data:`contrastmix.methods.METHODS`) is built from its bundled recipe on
tiny in-memory data and runs ``training_step`` and the backward of its loss with value checks
off (the accelerator rule, :func:`contrastmix._validation.set_debug_checks`) inside
:class:`tests._host_reads.forbid_host_reads` in its "device stand-in" mode: the module's
parameters and buffers, the batch and the draws of the generators a GPU run creates on the
device count as device tensors; reading one of them back to Python, ``.cpu()`` of one, or a
blocking host-to-device copy fails the test. The step runs after warm-up steps that fill the
queues (MoCo, MoCHi) and the text caches, at an epoch where the mixing path runs.
"""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils._pytree import tree_map
from torch.utils.data import DataLoader

from contrastmix import _validation
from contrastmix.data.registry import build_data
from contrastmix.losses import supremix as supremix_loss_module
from contrastmix.methods import METHODS, Method
from contrastmix.methods.m3col import uses_mixup
from contrastmix.mixing import mochi as mochi_mixing
from contrastmix.models import text as text_models
from contrastmix.models.text import MiniLMTextEncoder
from contrastmix.recipe import load_recipe
from tests._host_reads import HostReadError, forbid_host_reads

TINY = ["model.width=4", "model.proj_hidden_dim=16", "model.proj_output_dim=8"]
MULTIMODAL = ["method.proj_dim=8"]
FUSION = [*MULTIMODAL, "method.hidden_dim=8", "method.signal_width=4"]
MOCHI = ["method.queue_size=8", "method.num_hard=8", "method.num_mix=4",
         "method.num_query_mix=2"]

# case: (recipe, overrides, epoch of the checked step)
CASES: dict[str, tuple[str, list[str], int]] = {
    "moco": ("moco_mnist1d", ["method.queue_size=8", "method.symmetric=true"], 0),
    "mochi": ("mochi_mnist1d", MOCHI, 5),  # recipe warm-up: 5 epochs, mixing from epoch 5
    "mochi-oracle": ("mochi_oracle_mnist1d", MOCHI, 5),
    "supremix": ("supremix_rotated_digits", [], 0),
    "rnc": ("rnc_rotated_digits", [], 0),
    "supcon": ("supcon_rotated_digits", [], 0),
    "l1": ("l1_rotated_digits", [], 0),
    "l1-cmixup": ("l1_cmixup_rotated_digits", [], 0),
    "l1-cmixup-window": ("l1_cmixup_rotated_digits", ["method.cmixup_window=16"], 0),
    "l1-cmixup-batch": ("l1_cmixup_rotated_digits", ["method.cmixup_scope=batch",
                                                     "method.mixup_per_sample=true"], 0),
    "erm": ("erm_mnist1d", [], 0),
    "mixup": ("mixup_mnist1d", [], 0),
    "mixup-cutmix": ("mixup_mnist1d", ["method.cutmix_prob=1.0"], 0),
    "clip": ("clip_digits", MULTIMODAL, 0),
    "clip-learned-temperature": ("clip_digits", [*MULTIMODAL, "method.learn_temperature=true"], 0),
    "m2mix": ("m2mix_digits", MULTIMODAL, 0),
    "concat": ("concat_digits_tri", FUSION, 0),
    "m3col-m3co": ("m3col_digits_tri", FUSION, 0),  # M3Co phase: epoch < 0.33 * 60
    "m3col-softclip": ("m3col_digits_tri", FUSION, 30),
}
#: Methods whose step must read a device value once (method: reason). Target: empty.
ALLOWLIST: dict[str, str] = {}
BATCH = 8
WARMUP_STEPS = 1  # fills an 8-row queue with a batch of 8; creates the generators


def _method_class(cls: type[Method], stub: SimpleNamespace) -> type[Method]:
    """``cls`` with a stand-in trainer (epoch, max_epochs, steps) and a record of the
    generators it asks for on the device (``"cpu"`` ones stay on the host in a GPU run)."""

    def generator(self: Method, name: str, device: Any = None, *, per_rank: bool = True
                  ) -> torch.Generator:
        g = cls.generator(self, name, device, per_rank=per_rank)
        if not (isinstance(device, str) and device == "cpu"):
            stub.device_generators[id(g)] = g
        return g

    return type(cls.__name__, (cls,), {
        "trainer": property(lambda self: stub),
        "current_epoch": property(lambda self: stub.current_epoch),
        "global_step": property(lambda self: stub.global_step),
        "generator": generator,
    })


_MINILM: dict[Any, Any] = {}
_DATA: dict[str, Any] = {}  # recipe -> its DataBundle (the overrides leave `data` alone)
_CAPTIONS: dict[str, torch.Tensor] = {}


@pytest.fixture(autouse=True)
def _one_minilm(monkeypatch: pytest.MonkeyPatch) -> None:
    """One frozen MiniLM and one caption cache for every case (loading and encoding dominate
    the multimodal cases; the step under test reads the cache)."""
    load = text_models.load_minilm

    def shared(model_path: Any = None, device: Any = None) -> Any:
        key = (model_path, str(device))
        if key not in _MINILM:
            _MINILM[key] = load(model_path, device)
        return _MINILM[key]

    monkeypatch.setattr(text_models, "load_minilm", shared)


def _build(case: str) -> tuple[Method, list[Any], SimpleNamespace]:
    recipe, overrides, epoch = CASES[case]
    cfg = load_recipe(recipe, [*TINY, *overrides])
    if recipe not in _DATA:
        _DATA[recipe] = build_data(cfg.data)
    data = _DATA[recipe]
    stub = SimpleNamespace(current_epoch=epoch, global_step=0, max_epochs=cfg.trainer.max_epochs,
                           estimated_stepping_batches=100, device_generators={})
    cls = _method_class(METHODS[cfg.method.name], stub)
    module = cls(OmegaConf.to_container(cfg, resolve=True), data)  # type: ignore[arg-type]
    for m in module.modules():
        if isinstance(m, MiniLMTextEncoder):
            m._cache = _CAPTIONS
    loader = DataLoader(data.pretrain, batch_size=BATCH, shuffle=False,
                        collate_fn=data.collate_fn)
    batches = []
    for b in loader:
        batches.append(b)
        if len(batches) > WARMUP_STEPS:
            break
    return module, batches, stub


def _to_device(module: Method, batch: Any) -> Any:
    """Lightning's batch transfer: the host hook, a copy (the "device" batch), the device hook."""
    batch = module.on_before_batch_transfer(batch, 0)
    batch = tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, batch)
    return module.on_after_batch_transfer(batch, 0)


def _step(module: Method, batch: Any, i: int) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a trainer
        loss = module.training_step(batch, i)
    loss.backward()
    return loss


@pytest.fixture
def _accelerator_rules(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Value checks off (as on a GPU by default), MoCHi on its torch path and SupReMix on its
    fixed hard-positive chunks (the paths a GPU runs; the CPU's own read values freely)."""
    monkeypatch.setattr(mochi_mixing, "USE_NUMBA", False)
    # tiny tensors: one thread (two threads on busy cores spend ~100x longer in barriers;
    # conftest restores the count)
    torch.set_num_threads(1)
    monkeypatch.setattr(supremix_loss_module, "HOST_CHUNKS", False)
    before = _validation.debug_checks()
    _validation.set_debug_checks(False)
    yield
    _validation.set_debug_checks(before)


@pytest.mark.usefixtures("_accelerator_rules")
@pytest.mark.parametrize("case", list(CASES))
def test_training_step_reads_no_device_value(case: str) -> None:
    module, batches, stub = _build(case)
    for i, batch in enumerate(batches[:-1]):  # warm-up: queues, caches, generators
        _step(module, _to_device(module, batch), i)
    module.zero_grad()
    stub.global_step = len(batches) - 1
    if module.name in ("moco", "mochi"):
        assert len(module.queue) == module.config.queue_size  # type: ignore[attr-defined]
    host = batches[-1]
    if isinstance(host[0], dict) and "text" in host[0]:
        # the caption cache holds them (a caption is encoded, and copied to the host, once)
        for m in module.modules():
            if isinstance(m, MiniLMTextEncoder):
                m.encode_sentences(host[0]["text"])
    method = module.name
    try:
        with forbid_host_reads(device_side=[module],
                               device_generators=stub.device_generators.values()) as guard:
            batch = guard.mark_device(_to_device(module, host))  # what Lightning moved
            loss = _step(module, batch, len(batches) - 1)
    except HostReadError:
        if method in ALLOWLIST:
            pytest.xfail(ALLOWLIST[method])
        raise
    assert method not in ALLOWLIST, f"{method} no longer reads the host: drop it from ALLOWLIST"
    assert math.isfinite(float(loss.detach()))
    if method == "mochi":
        assert module.mochi.last_mixed  # type: ignore[attr-defined]
    if method == "m3col":  # the phase the case names
        c = module.config
        assert uses_mixup(stub.current_epoch, stub.max_epochs, c.mixup_pct) is case.endswith(
            "m3co")
    if method == "l1" and module.config.cmixup:  # partners drawn from the host copy
        assert module._host_labels is None  # type: ignore[attr-defined]
    grads = [p.grad for p in module.parameters() if p.requires_grad]
    assert any(g is not None and bool(g.abs().sum() > 0) for g in grads)


def test_every_method_is_covered() -> None:
    covered = {load_recipe(recipe).method.name for recipe, _, _ in CASES.values()}
    assert covered == set(METHODS)


# ------------------------------------------------------------------------------ the detector
def test_device_stand_in_mode_catches_device_reads_only() -> None:
    """The stand-in mode fails on reads of device tensors (and values computed from them),
    draws of device generators, ``.cpu()`` of them and blocking host-to-device copies; it lets
    host-side values (CPU generator draws) be read and non-blocking copies through."""
    w = torch.nn.Parameter(torch.randn(3))
    x = torch.randn(3)
    host_g, dev_g = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)

    def check(fn: Any) -> None:
        with forbid_host_reads(device_side=[w], device_generators=[dev_g]):
            fn()

    check(lambda: float(torch.rand(1, generator=host_g)))  # host draw: fine
    check(lambda: torch.rand(2, generator=host_g).to(w.device, non_blocking=True))
    check(lambda: (w * x).sum().backward())
    check(lambda: x.tolist())  # a host tensor that never met a device one
    for bad in (lambda: float((w * x).sum()), lambda: (w + 1).cpu(),
                lambda: float(torch.rand(1, generator=dev_g)),
                lambda: torch.rand(2, generator=host_g).to(w.device),
                lambda: w.detach()[w.detach() > 0], lambda: torch.nonzero(w),
                lambda: bool((w > 0).any())):
        with pytest.raises(HostReadError):
            check(bad)
    y = torch.zeros(3)
    with pytest.raises(HostReadError):  # written in place with device values
        with forbid_host_reads(device_side=[w]):
            y.add_(w.detach())
            y.tolist()
