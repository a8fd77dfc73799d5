"""Memory banks: FIFO ring buffers of features with exact / faiss top-k search."""

from contrastmix.banks.memory_bank import BACKENDS, MemoryBank

__all__ = ["MemoryBank", "BACKENDS"]
