"""Weights of widened layers: function-preserving copies (Net2Net) or fresh random values.

Every widened tensor is described by *positions*: for each new channel, the old channel it
copies (``np.arange(new) % old`` per group, see `width/widen.py`).  A layer then

- gathers its output side: new output channel j gets the weights, bias and BN statistics of
  old channel ``out_pos[j]``, so it computes an exact copy of that channel;
- gathers its input side and divides by the replica counts: old input channel c now arrives
  ``count[c]`` times, each copy carrying weight ``w[c] / count[c]``, so the sum is unchanged.

This is Net2Net's widening (Chen et al., 2016).  It is exact whenever every old input channel
is still visible to the outputs that read it, which fails only when channels are removed
(shrinking) or a grouped conv's groups no longer line up with the copies.

``--init random`` draws He-normal weights (std = sqrt(2 / fan_in)) for every rewritten layer and
copies per-channel tensors, for runtime studies where the function does not matter.
"""

from __future__ import annotations

import os

import numpy as np

from ..hollow import Hollow


class Preserve:
    """Net2Net copies: the widened network computes what the base network computes."""

    name = "preserve"

    def layer(self, w: np.ndarray, out_axis: int, out_pos: np.ndarray | None, in_axis: int,
              in_pos: np.ndarray | None) -> tuple[np.ndarray, bool]:
        """A dense layer's weight: gather outputs, gather inputs divided by their counts."""
        exact = True
        if out_pos is not None:
            w = np.take(w, out_pos, axis=out_axis)
        if in_pos is not None:
            counts = np.bincount(in_pos, minlength=w.shape[in_axis])
            exact = bool(counts.all())
            shape = [1] * w.ndim
            shape[in_axis] = len(in_pos)
            w = np.take(w, in_pos, axis=in_axis)
            w *= (1.0 / counts[in_pos]).astype(w.dtype).reshape(shape)
        return w, exact

    def grouped(self, w: np.ndarray, out_pos: np.ndarray, in_pos: np.ndarray, groups: int,
                new_groups: int) -> tuple[np.ndarray, bool]:
        """A grouped (or depthwise) conv weight ``[C_out, C_in / groups, k...]``.

        New output o (in new group K) copies old output ``out_pos[o]`` (in old group G).  It may
        only read old inputs of G: a new input of K that copies an old input of G gets that
        input's weight divided by the number of copies of it *inside K*; other inputs of K get
        zero.  Exact if every output finds all inputs of its old group inside its new group.
        """
        gw_in, gw_out = w.shape[1], w.shape[0] // groups
        new_gw_in, new_gw_out = len(in_pos) // new_groups, len(out_pos) // new_groups
        if isinstance(w, Hollow):  # planning: the shape is all that matters
            return Hollow((len(out_pos), new_gw_in, *w.shape[2:]), w.dtype), True
        group_of = np.arange(len(out_pos)) // new_gw_out                 # K for every output
        block = in_pos.reshape(new_groups, new_gw_in)                     # old input per slot
        old_in = block[group_of]                                          # [C_out', gw_in']
        old_group = out_pos // gw_out                                     # G for every output
        valid = old_in // gw_in == old_group[:, None]
        copies = _row_counts(block)[group_of]
        gathered = w[out_pos[:, None], old_in % gw_in]                    # [C_out', gw_in', k...]
        scale = np.where(valid, 1.0 / copies, 0.0).astype(w.dtype)
        gathered *= scale.reshape(scale.shape + (1,) * (w.ndim - 2))
        return gathered, _all_visible(block, group_of, old_group, gw_in, groups)

    def param(self, p: np.ndarray, axis: int, pos: np.ndarray) -> np.ndarray:
        """A per-channel tensor (bias, BN scale or statistics, layer scale) follows its channel."""
        return np.take(p, pos, axis=axis)


class Random(Preserve):
    """Fresh He-normal weights for every rewritten layer (per-channel tensors are copied)."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)

    def layer(self, w, out_axis, out_pos, in_axis, in_pos):
        shape = list(w.shape)
        if out_pos is not None:
            shape[out_axis] = len(out_pos)
        if in_pos is not None:
            shape[in_axis] = len(in_pos)
        return self._normal(shape, out_axis, w), False

    def grouped(self, w, out_pos, in_pos, groups, new_groups):
        shape = [len(out_pos), len(in_pos) // new_groups, *w.shape[2:]]
        return self._normal(shape, 0, w), False

    def _normal(self, shape: list[int], out_axis: int, like) -> np.ndarray | Hollow:
        """He-normal values of ``shape`` in ``like``'s dtype (a stand-in when planning)."""
        dtype = like.dtype
        if isinstance(like, Hollow):
            return Hollow(shape, dtype)
        fan_in = max(1, int(np.prod(shape)) // max(1, shape[out_axis]))
        return he_normal(self.rng, shape, fan_in, dtype)


# Drawing normals is the cost of --init random (53 M values for EfficientNet-B0 x16: 1.2 s on
# one core).  Generator methods release the GIL, so big tensors are filled in chunks by
# threads, each with its own generator spawned from the caller's (numpy's documented recipe
# for multithreaded generation); results depend only on the seed, not on timing.
PARALLEL_ELEMENTS = 1 << 20
_POOL = None


def he_normal(rng: np.random.Generator, shape, fan_in: int, dtype) -> np.ndarray:
    """He-normal values (std sqrt(2 / fan_in)) of ``shape``, as ``dtype``."""
    size = int(np.prod(shape))
    out = np.empty(size, dtype=np.float32)
    if size < PARALLEL_ELEMENTS:
        rng.standard_normal(out=out, dtype=np.float32)
    else:
        chunks = np.array_split(out, max(2, (os.cpu_count() or 1)))
        children = rng.spawn(len(chunks))
        list(_pool().map(lambda job: job[0].standard_normal(out=job[1], dtype=np.float32),
                         zip(children, chunks)))
    out *= np.float32(np.sqrt(2.0 / max(fan_in, 1)))
    return out.reshape(shape).astype(dtype, copy=False)


def _pool():
    global _POOL
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
    return _POOL


def policy(name: str, seed: int = 0) -> Preserve:
    return Random(seed) if name == "random" else Preserve()


def _row_counts(block: np.ndarray) -> np.ndarray:
    """For every entry of a 2-D array, how often its value occurs in its row."""
    rows = np.arange(block.shape[0])[:, None]
    keys = rows * (int(block.max()) + 1) + block
    _, inverse, counts = np.unique(keys.ravel(), return_inverse=True, return_counts=True)
    return counts[inverse].reshape(block.shape)


def _all_visible(block: np.ndarray, group_of: np.ndarray, old_group: np.ndarray,
                 gw_in: int, groups: int) -> bool:
    """Whether every new output's group holds all inputs of its old group."""
    size = groups * gw_in
    rows = np.arange(block.shape[0])[:, None]
    distinct = np.unique((rows * size + block).ravel())
    row, value = distinct // size, distinct % size
    pairs, counts = np.unique(row * groups + value // gw_in, return_counts=True)
    complete = pairs[counts == gw_in]
    return bool(np.isin(group_of * groups + old_group, complete).all())
