"""Tests for contrastmix.eval.calibration: ECE, reliability diagram, temperature scaling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from contrastmix.eval.calibration import (
    expected_calibration_error,
    fit_temperature,
    plot_reliability,
    reliability_diagram,
    to_probabilities,
)


def _ece_loop(probs: torch.Tensor, labels: torch.Tensor, n_bins: int) -> float:
    """Reference ECE with explicit loops, bins (lo, hi] and bin 0 closed at 0."""
    n = probs.shape[0]
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        members = []
        for i in range(n):
            conf = float(probs[i].max())
            if (lo < conf <= hi) or (b == 0 and conf == 0.0):
                members.append(i)
        if not members:
            continue
        acc = sum(int(probs[i].argmax()) == int(labels[i]) for i in members) / len(members)
        conf = sum(float(probs[i].max()) for i in members) / len(members)
        total += len(members) / n * abs(acc - conf)
    return total


def test_ece_matches_loop_reference() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 4, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(0, 4, (300,), generator=g)
    probs = torch.softmax(logits, dim=1)
    for n_bins in (1, 5, 15):
        ece = expected_calibration_error(probs, labels, n_bins)
        assert ece == pytest.approx(_ece_loop(probs, labels, n_bins), abs=1e-12)


def test_ece_hand_computed() -> None:
    # Confidences .9 (correct), .9 (wrong), .6 (correct), .8 (wrong: predicts class 1).
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.2, 0.8]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 0])
    # all four in bin (.5, 1]: acc = 2/4, conf = (0.9 + 0.9 + 0.6 + 0.8) / 4 = 0.8
    assert expected_calibration_error(probs, labels, 2) == pytest.approx(0.3, abs=1e-12)
    # 10 bins: (.8, .9] has two at .9 (acc .5, conf .9), (.5,.6] one correct at .6,
    # (.7,.8] one wrong at .8 -> (2 * .4 + .4 + .8) / 4 = 0.5
    assert expected_calibration_error(probs, labels, 10) == pytest.approx(0.5, abs=1e-12)


def test_perfect_and_worst_cases() -> None:
    onehot = torch.eye(3, dtype=torch.float64)[torch.tensor([0, 1, 2, 1])]
    assert expected_calibration_error(onehot, torch.tensor([0, 1, 2, 1])) == 0.0
    assert expected_calibration_error(onehot, torch.tensor([1, 2, 0, 0])) == pytest.approx(1.0)


def test_bin_edges_are_half_open_upper_closed() -> None:
    # confidence exactly 0.5 with 2 bins belongs to bin 0 = (0, 0.5]
    probs = torch.tensor([[0.5, 0.5], [0.75, 0.25]], dtype=torch.float64)
    diag = reliability_diagram(probs, torch.tensor([0, 0]), n_bins=2)
    assert diag["counts"].tolist() == [1, 1]
    assert np.allclose(diag["confidence"], [0.5, 0.75])
    assert np.allclose(diag["accuracy"], [1.0, 1.0])


def test_reliability_diagram_fields() -> None:
    g = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(50, 3, generator=g), dim=1)
    labels = torch.randint(0, 3, (50,), generator=g)
    diag = reliability_diagram(probs, labels, n_bins=15)
    assert diag["counts"].sum() == 50
    assert len(diag["bin_lower"]) == 15 and diag["bin_upper"][-1] == 1.0
    empty = diag["counts"] == 0
    assert np.isnan(diag["accuracy"][empty]).all()
    assert not np.isnan(diag["accuracy"][~empty]).any()
    # confidence of a 3-class max is >= 1/3: the first bins are empty
    assert empty[:4].all()
    w = diag["counts"][~empty] / 50
    ref = float((w * np.abs(diag["accuracy"][~empty] - diag["confidence"][~empty])).sum())
    assert diag["ece"] == pytest.approx(ref, abs=1e-12)


def test_logits_are_detected_and_explicit_flag() -> None:
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(40, 5, generator=g) * 3
    labels = torch.randint(0, 5, (40,), generator=g)
    probs = torch.softmax(logits.double(), dim=1)
    a = expected_calibration_error(logits, labels)
    b = expected_calibration_error(probs, labels)
    c = expected_calibration_error(logits, labels, logits=True)
    assert a == pytest.approx(b, abs=1e-12) and c == pytest.approx(b, abs=1e-12)
    assert torch.allclose(to_probabilities(probs), probs)
    with pytest.raises(ValueError, match="probs"):
        expected_calibration_error(logits, labels, logits=False)


def test_plot_reliability_writes_png(tmp_path) -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(100, 4, generator=g)
    labels = torch.randint(0, 4, (100,), generator=g)
    out = plot_reliability(logits, labels, tmp_path / "sub" / "rel.png", title="probe")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def _nll(logits: torch.Tensor, labels: torch.Tensor, t: float) -> float:
    return float(torch.nn.functional.cross_entropy(logits / t, labels))


def test_fit_temperature_recovers_overconfidence() -> None:
    g = torch.Generator().manual_seed(4)
    true_logits = torch.randn(8000, 5, generator=g, dtype=torch.float64) * 1.5
    labels = torch.multinomial(torch.softmax(true_logits, 1), 1, generator=g).squeeze(1)
    t = fit_temperature(3.0 * true_logits, labels)
    assert t == pytest.approx(3.0, rel=0.08)
    # it is the minimiser: NLL is not lower 2 % either side
    over = 3.0 * true_logits
    assert _nll(over, labels, t) <= _nll(over, labels, t * 1.02) + 1e-12
    assert _nll(over, labels, t) <= _nll(over, labels, t / 1.02) + 1e-12
    ece_before = expected_calibration_error(over, labels, logits=True)
    ece_after = expected_calibration_error(over / t, labels, logits=True)
    assert ece_after < ece_before


def test_fit_temperature_separable_is_bounded() -> None:
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0]] * 10)
    labels = torch.tensor([0, 1] * 10)
    t = fit_temperature(logits, labels)
    assert 0 < t < 1 and math.isfinite(t)


def test_bad_input() -> None:
    logits = torch.randn(10, 3)
    labels = torch.randint(0, 3, (10,))
    bad = logits.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="probs"):
        expected_calibration_error(bad, labels)
    with pytest.raises(ValueError, match="logits"):
        fit_temperature(bad, labels)
    with pytest.raises(ValueError, match="length mismatch"):
        expected_calibration_error(logits, labels[:5])
    with pytest.raises(ValueError, match="labels"):
        expected_calibration_error(logits, labels + 3)
    with pytest.raises(ValueError, match="labels"):
        fit_temperature(logits, labels.float())
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(logits, labels, 0)
    with pytest.raises(ValueError, match="probs"):
        expected_calibration_error(logits[:, 0], labels)
