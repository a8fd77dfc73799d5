"""Every precision mode the README names works for every method's recipe, with loss maths in fp32.

``trainer.precision=bf16-mixed`` runs the forward pass under CPU autocast to bfloat16: the
embeddings reaching the losses are bf16 rows that are unit norm only to a few 1e-3. The unit-norm
checks must use a tolerance that fits the dtype they are given (and check before upcasting),
while fp32 / fp64 rows keep the tight one.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from contrastmix._validation import (
    UNIT_NORM_ATOL,
    UNIT_NORM_ATOL_LOW_PRECISION,
    check_unit_norm,
    unit_norm_atol,
)
from contrastmix.losses.clip import clip_loss
from contrastmix.losses.m2mix import m2mix_term
from contrastmix.losses.mochi import mochi_loss
from contrastmix.mixing.slerp import slerp

# one bundled recipe per method (13: the two text-free tri-modal fusions included)
RECIPES = [
    "moco_mnist1d", "mochi_mnist1d", "supremix_diabetes", "rnc_diabetes", "supcon_diabetes",
    "l1_diabetes", "l1_cmixup_diabetes", "erm_mnist1d", "mixup_mnist1d", "clip_digits",
    "m2mix_digits", "concat_digits_tri", "m3col_digits_tri",
]
SHORT = [
    "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.precision=bf16-mixed",
    "eval.knn_every_n_epochs=0", "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1", "trainer.num_threads=1", "data.batch_size=32",
]
# a queue that is non-empty at step 2 and (MoCHi) large enough to mix from then: the queue
# rows are fp32 copies of bf16 keys, the case that failed
EXTRA = {
    "moco_mnist1d": ["method.queue_size=256"],
    "mochi_mnist1d": ["method.queue_size=256", "method.num_hard=16", "method.num_mix=16",
                      "method.num_query_mix=8", "method.warmup_epochs=0"],
}



def _unit(n: int, d: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=-1).to(dtype)


# ---------------------------------------------------------------- the check itself


def test_tolerance_fits_the_dtype() -> None:
    assert unit_norm_atol(torch.float32) == unit_norm_atol(torch.float64) == UNIT_NORM_ATOL
    assert unit_norm_atol(torch.bfloat16) == unit_norm_atol(torch.float16)
    assert unit_norm_atol(torch.bfloat16) == UNIT_NORM_ATOL_LOW_PRECISION
    assert UNIT_NORM_ATOL == 1e-3  # fp32 / fp64 not weakened


def test_bf16_unit_rows_pass_and_non_unit_rows_fail() -> None:
    # rounded to bf16 and normalised in bf16: both move norms by a few 1e-3
    for x in (_unit(512, 16, 0, torch.bfloat16),
              F.normalize(torch.randn(512, 128).bfloat16(), dim=-1)):
        worst = float((x.float().norm(dim=-1) - 1).abs().max())
        assert worst > UNIT_NORM_ATOL  # the fp32 tolerance would reject them
        norms = check_unit_norm("x", x)
        assert norms is not None and norms.dtype == torch.float32
    base = _unit(8, 64, 1)
    for scale in (1.1, 0.9, 0.5, 2.0):
        with pytest.raises(ValueError, match=r"`x` must be L2-normalised.*bfloat16"):
            check_unit_norm("x", (base * scale).bfloat16())
    with pytest.raises(ValueError, match="`x` must be L2-normalised"):
        check_unit_norm("x", torch.randn(8, 64).bfloat16())  # never normalised
    with pytest.raises(ValueError, match="`x` must be L2-normalised"):
        check_unit_norm("x", (base * 1.05).half())


def test_fp32_and_fp64_keep_the_tight_tolerance() -> None:
    base = _unit(8, 64, 2, torch.float64)
    for dtype in (torch.float32, torch.float64):
        assert check_unit_norm("x", (base * (1 + 5e-4)).to(dtype)) is not None
        with pytest.raises(ValueError, match="L2-normalised"):
            check_unit_norm("x", (base * (1 + 3e-3)).to(dtype))
    # an explicit tolerance is honoured as given, for any dtype
    with pytest.raises(ValueError, match="L2-normalised"):
        check_unit_norm("x", (base * 1.005).bfloat16(), atol=1e-3)


def test_losses_take_bf16_embeddings_and_compute_in_fp32() -> None:
    img, txt = _unit(16, 32, 3, torch.bfloat16), _unit(16, 32, 4, torch.bfloat16)
    ref_img, ref_txt = img.float(), txt.float()
    out = clip_loss(img, txt, 0.1)
    assert out.dtype == torch.float32 and torch.isfinite(out)
    torch.testing.assert_close(out, clip_loss(ref_img, ref_txt, 0.1, normalize=True),
                               atol=5e-2, rtol=0)
    # m2mix: the pair is checked at bf16, the slerp runs on the fp32 copies (failed before)
    m = m2mix_term(img, txt, 0.3, 0.1)
    assert m.dtype == torch.float32 and torch.isfinite(m)
    ref = m2mix_term(F.normalize(ref_img, dim=-1), F.normalize(ref_txt, dim=-1), 0.3, 0.1)
    torch.testing.assert_close(m, ref, atol=5e-2, rtol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert m2mix_term(img, txt, 0.3, 0.1).dtype == torch.float32
    assert slerp(img, txt, 0.5).dtype == torch.float32
    # a bf16 query / key against an fp32 queue (MoCHi failed on the bf16 query)
    q, k = _unit(8, 16, 5, torch.bfloat16), _unit(8, 16, 6, torch.bfloat16)
    queue = _unit(64, 16, 7)
    g = torch.Generator().manual_seed(0)
    loss = mochi_loss(q, k, queue, 0.2, num_hard=8, num_mix=8, num_query_mix=4, generator=g)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    # non-unit bf16 inputs are still refused
    with pytest.raises(ValueError, match="`image` must be L2-normalised"):
        clip_loss((img.float() * 1.2).bfloat16(), txt)
    with pytest.raises(ValueError, match="`query` must be L2-normalised"):
        mochi_loss((q.float() * 0.8).bfloat16(), k, queue, num_hard=8, num_mix=8,
                   num_query_mix=4)


# ---------------------------------------------------------------- every recipe, bf16-mixed


def _train_losses(run: Path) -> list[float]:
    with (run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    cols = [c for c in (rows[0] if rows else {}) if c.startswith("train_loss")]
    assert cols, f"no train_loss column in {run / 'metrics.csv'}"
    return [float(r[c]) for r in rows for c in cols if r.get(c) not in (None, "")]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_bf16_mixed_two_steps(tmp_path: Path, recipe: str) -> None:
    from contrastmix.recipe import load_recipe
    from contrastmix.train.pretrain import pretrain

    run = pretrain(load_recipe(recipe, SHORT + EXTRA.get(recipe, [])), tmp_path / recipe)
    summary = json.loads((run / "run.json").read_text())
    assert summary["global_step"] == 2
    losses = _train_losses(run)
    assert losses and all(math.isfinite(v) for v in losses), losses
    state = torch.load(run / "backbone.pt", weights_only=True)
    assert state
    for name, t in state.items():
        if t.is_floating_point():
            assert torch.isfinite(t).all(), name
