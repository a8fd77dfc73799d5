"""The value-check rule of contrastmix._validation: NaN / unit-norm checks run on CPU tensors,
are skipped on other devices unless debug checks are on, and can be switched off."""

from __future__ import annotations

import math

import pytest
import torch

from contrastmix import _validation as val


@pytest.fixture(autouse=True)
def _default_rule():
    before = val.debug_checks()
    val.set_debug_checks(None)
    yield
    val.set_debug_checks(before)


def test_default_rule_checks_cpu_values_only() -> None:
    bad = torch.tensor([[math.nan, 1.0]])
    with pytest.raises(ValueError, match="`x` contains 1 non-finite"):
        val.check_finite("x", bad)
    with pytest.raises(ValueError, match="L2-normalised"):
        val.check_unit_norm("x", torch.ones(2, 3))
    norms = val.check_unit_norm("x", torch.eye(3))
    assert norms is not None and torch.equal(norms, torch.ones(3))
    # a tensor on another device (meta: no values at all, any read would raise) is not read
    meta = torch.empty(4, 3, device="meta")
    assert val.value_checks(torch.ones(1)) and not val.value_checks(meta)
    assert val.check_finite("x", meta) is meta
    assert val.check_unit_norm("x", meta) is None
    # structural checks always run
    with pytest.raises(ValueError, match="2-D"):
        val.check_tensor("x", meta[0], ndim=2)


def test_set_debug_checks() -> None:
    meta = torch.empty(4, 3, device="meta")
    val.set_debug_checks(True)
    assert val.debug_checks() is True and val.value_checks(meta)
    with pytest.raises((RuntimeError, NotImplementedError)):  # it now tries to read the values
        val.check_unit_norm("x", meta)
    val.set_debug_checks(False)
    assert not val.value_checks(torch.ones(1))
    val.check_finite("x", torch.tensor([math.nan]))  # skipped, also on the CPU
    assert val.check_unit_norm("x", torch.ones(2, 3)) is None
    with pytest.raises(ValueError, match="floating"):
        val.check_tensor("x", torch.ones(2, dtype=torch.long), floating=True)
    with pytest.raises(ValueError, match="True, False or None"):
        val.set_debug_checks("yes")  # type: ignore[arg-type]


@pytest.mark.parametrize(("env", "want"), [("1", True), ("true", True), ("0", False),
                                         ("off", False), ("", None)])
def test_environment_variable(env: str, want: bool | None, monkeypatch) -> None:
    """``CONTRASTMIX_DEBUG_CHECKS`` (read at import by ``_debug_from_env``)."""
    monkeypatch.setenv("CONTRASTMIX_DEBUG_CHECKS", env)
    assert val._debug_from_env() is want
