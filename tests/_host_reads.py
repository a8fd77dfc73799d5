"""A context that fails on any read of a tensor's values back to Python (CPU tests of the
"no host synchronisation per step" rule: on a GPU each such read waits for the device).

Caught: ``item``/``bool``/``int``/``float``/``tolist``/``numpy`` (torch-function level), and
at the dispatch level ops whose output size depends on values (``nonzero``,
``masked_select``, indexing with a bool mask) or that return a Python value
(``_local_scalar_dense``, ``is_nonzero``, ``equal``).

Two modes:

* ``forbid_host_reads()``: every tensor counts as one that lives on the accelerator.
* ``forbid_host_reads(device_side=[module, batch, ...], device_generators=[...])``: a CPU
  stand-in for a GPU run of a whole training step. Only the given tensors (module parameters
  and buffers, the batch) and everything computed from them, and the draws of the given
  generators, count as device tensors ("tainted"; propagated through every aten op, forward and
  backward). Values that a GPU run keeps on the host (draws of a CPU generator, Python-side
  constants) may be read. Besides the reads above it catches the two copies that synchronise:
  ``.cpu()`` of a device tensor (device to host) and a *blocking* host-to-device copy
  (``.to(device)``, ``.cuda()``, ``copy_`` or ``as_tensor(..., device=)`` of a host tensor
  without ``non_blocking=True``: CUDA waits for the stream before a pageable blocking copy).
  Limits: a tensor created from nothing on the accelerator (``torch.arange(n, device=dev)``)
  is not tracked until it meets a tracked one, and on the CPU ``x.to("cpu")`` cannot be told
  from ``x.to(other.device)``, so only ``.cpu()`` counts as a device-to-host copy.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = ["HostReadError", "forbid_host_reads"]

_aten = torch.ops.aten
_DISPATCH = {_aten._local_scalar_dense, _aten.nonzero, _aten.masked_select, _aten.is_nonzero,
             _aten.equal}
# indexing with a bool mask: the result's size depends on the values (nonzero inside)
_MASK_INDEXING = {_aten.index, _aten.index_put, _aten.index_put_, _aten._index_put_impl_}
_FUNCTIONS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.__bool__,
              torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__index__,
              torch.Tensor.__array__}
# host-to-device moves (blocking unless non_blocking=True)
_MOVES = {torch.Tensor.to, torch.Tensor.cuda, torch.as_tensor}


class HostReadError(AssertionError):
    """A tensor value was read back to the host inside :class:`forbid_host_reads`."""


class _Taint:
    """Identity set of the tensors that live on the device (``None``: all of them)."""

    def __init__(self, tensors: Iterable[Tensor] | None, generators: Iterable[Any]) -> None:
        self.all = tensors is None
        self._refs: dict[int, weakref.ref] = {}
        self.generators = {id(g): g for g in generators}
        for t in tensors or ():
            self.add(t)

    def add(self, t: Tensor) -> None:
        key = id(t)
        self._refs[key] = weakref.ref(t, lambda _r, k=key: self._refs.pop(k, None))

    def __contains__(self, t: object) -> bool:
        if not isinstance(t, Tensor):
            return False
        if self.all:
            return True
        ref = self._refs.get(id(t))
        return ref is not None and ref() is t

    def any(self, objs: Iterable[Any]) -> bool:
        return any(o in self for o in objs)


def _device_tensors(objs: Iterable[Any]) -> list[Tensor]:
    out: list[Tensor] = []
    for o in objs:
        if isinstance(o, nn.Module):
            out += list(o.parameters()) + list(o.buffers())
        else:
            out += [t for t in tree_leaves(o) if isinstance(t, Tensor)]
    return out


def _moves_to_device(func: Any, args: tuple, kwargs: dict) -> bool:
    """Whether a ``to`` / ``cuda`` / ``as_tensor`` call names a device."""
    if func is torch.Tensor.cuda:
        return True
    if "device" in kwargs and kwargs["device"] is not None:
        return True
    return func is torch.Tensor.to and any(
        isinstance(a, (torch.device, str, Tensor)) for a in args[1:]
    )


class _Functions(TorchFunctionMode):
    def __init__(self, taint: _Taint) -> None:
        super().__init__()
        self.taint = taint

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None
                           ) -> Any:
        kwargs = kwargs or {}
        taint = self.taint
        if func in _FUNCTIONS and args and args[0] in taint:
            raise HostReadError(f"host read: Tensor.{func.__name__}")
        if not taint.all:
            if func is torch.Tensor.cpu and args[0] in taint:
                raise HostReadError("host read: Tensor.cpu of a device tensor")
            src = args[0] if args else kwargs.get("data")
            moves = (func in _MOVES and isinstance(src, Tensor) and src not in taint
                     and _moves_to_device(func, args, kwargs))
            if moves and not kwargs.get("non_blocking", False):
                raise HostReadError(
                    f"blocking host-to-device copy: {getattr(func, '__name__', func)} of a host "
                    "tensor without non_blocking=True (waits for the device)"
                )
            if (func is torch.Tensor.copy_ and args[0] in taint and args[1] not in taint
                    and not (kwargs.get("non_blocking") or (len(args) > 2 and args[2]))):
                raise HostReadError("blocking host-to-device copy: copy_ of a host tensor into "
                                    "a device tensor without non_blocking=True")
            out = func(*args, **kwargs)
            # a draw of a device generator (dispatch sees other generator objects), or a copy
            # to the device: device tensors (an in-place draw fills its tensor)
            drawn = id(kwargs.get("generator")) in taint.generators
            if moves or drawn:
                for t in tree_leaves((out, args[:1] if drawn else ())):
                    if isinstance(t, Tensor):
                        taint.add(t)
            return out
        return func(*args, **kwargs)


class _Dispatch(TorchDispatchMode):
    def __init__(self, taint: _Taint) -> None:
        super().__init__()
        self.taint = taint

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None
                           ) -> Any:
        kwargs = kwargs or {}
        taint = self.taint
        device = taint.any(tree_leaves((args, kwargs)))
        packet = func.overloadpacket
        if packet in _DISPATCH and device:
            raise HostReadError(f"host read: {func}")
        if packet in _MASK_INDEXING and device and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] or ()
        ):
            raise HostReadError(f"host read: {func} with a bool mask")
        out = func(*args, **kwargs)
        if device and not taint.all:
            for t in tree_leaves(out):
                if isinstance(t, Tensor):
                    taint.add(t)
            # in-place and out= ops: the written tensors now hold device values
            for a, v in zip(func._schema.arguments, args, strict=False):
                if isinstance(v, Tensor) and a.alias_info is not None and a.alias_info.is_write:
                    taint.add(v)
            for a in func._schema.arguments:
                v = kwargs.get(a.name)
                if isinstance(v, Tensor) and a.alias_info is not None and a.alias_info.is_write:
                    taint.add(v)
        return out


class forbid_host_reads:  # noqa: N801 - used like a function
    """``with forbid_host_reads(): ...`` raises :class:`HostReadError` on a host read.

    Args:
        device_side: Modules (their parameters and buffers) and tensors (or nested lists,
            tuples, dicts of them) that a GPU run holds on the device; ``None`` (default): every
            tensor. See the module docstring.
        device_generators: Generators that a GPU run creates on the device (their draws are
            device tensors); only with ``device_side``.
    """

    def __init__(self, device_side: Iterable[Any] | None = None,
                 device_generators: Iterable[Any] = ()) -> None:
        tensors = None if device_side is None else _device_tensors(device_side)
        self.taint = _Taint(tensors, device_generators)

    def mark_device(self, objs: Any) -> Any:
        """Count the tensors of ``objs`` (nested lists, tuples, dicts) as device tensors from
        now on (e.g. a batch after the move to the device); returns ``objs``."""
        for t in _device_tensors([objs]):
            self.taint.add(t)
        return objs

    def __enter__(self) -> forbid_host_reads:
        self._modes = [_Functions(self.taint), _Dispatch(self.taint)]
        for m in self._modes:
            m.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        for m in reversed(self._modes):
            m.__exit__(*exc)
