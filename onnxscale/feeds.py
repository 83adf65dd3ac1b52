"""Random model inputs, one rule for every caller (``scale --verify`` feeds both models the
same tensors; ``bench`` times on them): floats ~N(0, 1) in the input's dtype, uint8 over its
whole range (images), bool 50/50, other integers 0..3 (safe as indices into small tables)."""

from __future__ import annotations

from typing import Iterable

import numpy as np


def random_feeds(inputs: Iterable[tuple[str, list[int], np.dtype]], seed: int = 0
                 ) -> dict[str, np.ndarray]:
    """``{name: array}`` for (name, dims, numpy dtype) triples, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for name, dims, dtype in inputs:
        dtype = np.dtype(dtype)
        if np.issubdtype(dtype, np.floating):
            array = rng.standard_normal(dims).astype(dtype)
        elif dtype == np.bool_:
            array = rng.integers(0, 2, dims).astype(dtype)
        elif dtype == np.uint8:
            array = rng.integers(0, 256, size=dims, dtype=np.uint8)
        else:
            array = rng.integers(0, 4, dims).astype(dtype)
        feeds[name] = np.ascontiguousarray(array)
    return feeds
