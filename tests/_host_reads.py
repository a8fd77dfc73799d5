"""A context that fails on any read of a tensor's values back to Python (CPU tests of the
"no host synchronisation per step" rule: on a GPU each such read waits for the device).

Caught: ``item``/``bool``/``int``/``float``/``tolist``/``numpy`` (torch-function level), and
at the dispatch level ops whose output size depends on values (``nonzero``,
``masked_select``, indexing with a bool mask) or that return a Python value
(``_local_scalar_dense``, ``is_nonzero``, ``equal``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["HostReadError", "forbid_host_reads"]

_aten = torch.ops.aten
_DISPATCH = {_aten._local_scalar_dense, _aten.nonzero, _aten.masked_select, _aten.is_nonzero,
             _aten.equal}
# indexing with a bool mask: the result's size depends on the values (nonzero inside)
_MASK_INDEXING = {_aten.index, _aten.index_put, _aten.index_put_, _aten._index_put_impl_}
_FUNCTIONS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.__bool__,
              torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__index__,
              torch.Tensor.__array__}


class HostReadError(AssertionError):
    """A tensor value was read back to the host inside :class:`forbid_host_reads`."""


class _Functions(TorchFunctionMode):
    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None
                           ) -> Any:
        if func in _FUNCTIONS:
            raise HostReadError(f"host read: Tensor.{func.__name__}")
        return func(*args, **(kwargs or {}))


class _Dispatch(TorchDispatchMode):
    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None
                           ) -> Any:
        packet = func.overloadpacket
        if packet in _DISPATCH:
            raise HostReadError(f"host read: {func}")
        if packet in _MASK_INDEXING and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] or ()
        ):
            raise HostReadError(f"host read: {func} with a bool mask")
        return func(*args, **(kwargs or {}))


class forbid_host_reads:  # noqa: N801 - used like a function
    """``with forbid_host_reads(): ...`` raises :class:`HostReadError` on a host read."""

    def __enter__(self) -> forbid_host_reads:
        self._modes = [_Functions(), _Dispatch()]
        for m in self._modes:
            m.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        for m in reversed(self._modes):
            m.__exit__(*exc)
