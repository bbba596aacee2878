"""Attention sparsity patterns as `CSR` topologies.

Each function returns a `jaxsparse.CSR` of shape `[T, T]` (query position `i`
by key position `j`) with all values 1.0 (float32), built on the host with
numpy index arithmetic: the `T x T` mask is never materialized (except by
`from_mask`, which takes one), so building costs O(nnz). Each docstring gives
the exact boolean mask the pattern equals; pass the result as `topology` to
`jaxsparse.sparse_dot_product_attention` or the Flax modules.

Row `i` holds the keys query `i` attends, sorted. A row can be empty only where
stated (e.g. `strided` never, `from_mask` when the mask row is all False).
"""

from __future__ import annotations

import operator
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from jaxsparse._src.csr import CSR, INT32_MAX, Topology

__all__ = ["bigbird", "bigbird_block_mask", "causal", "from_mask", "local", "longformer", "strided", "union"]


# -- helpers ------------------------------------------------------------------------
def _int(x, what: str, fn: str, minimum: int) -> int:
  try:
    v = operator.index(x)
  except TypeError:
    raise TypeError(f"jaxsparse.patterns.{fn}: {what} must be an int, got "
                    f"{type(x).__name__}") from None
  if v < minimum:
    raise ValueError(f"jaxsparse.patterns.{fn}: {what} must be >= {minimum}, got {v}")
  return v


def _build(counts: np.ndarray, cols: np.ndarray, shape) -> CSR:
  """A CSR of ones from per-row counts and row-major sorted column indices."""
  counts = np.asarray(counts, np.int64)
  row_offsets = np.zeros(counts.shape[0] + 1, np.int64)
  np.cumsum(counts, out=row_offsets[1:])
  if row_offsets[-1] > INT32_MAX:
    raise ValueError(f"jaxsparse.patterns: {row_offsets[-1]} nonzeros overflow int32 indices")
  topo = Topology.build(row_offsets.astype(np.int32), np.asarray(cols, np.int32), shape,
                        validate=False)
  return CSR._from_parts(jnp.ones((topo.cap,), jnp.float32), topo)


def _row_positions(counts: np.ndarray):
  """For entries laid out row by row: (row of each entry, position within its row)."""
  counts = np.asarray(counts, np.int64)
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  rows = np.repeat(np.arange(counts.shape[0], dtype=np.int64), counts)
  pos = np.arange(int(counts.sum()), dtype=np.int64) - starts[rows]
  return rows, pos


def _intervals(lo: np.ndarray, hi: np.ndarray, shape) -> CSR:
  """Row i holds columns lo[i] <= j <= hi[i] (empty when hi < lo)."""
  counts = np.maximum(hi - lo + 1, 0)
  rows, pos = _row_positions(counts)
  return _build(counts, lo[rows] + pos, shape)


# -- patterns -------------------------------------------------------------------------
def local(T: int, window: int, causal: bool = False) -> CSR:
  """Sliding-window attention.

  Mask: `M[i, j] = (i - window <= j <= i + window)`, and `j <= i` too when
  `causal`; i.e. `|i - j| <= window` (`2 * window + 1` keys away from the
  edges) or `0 <= i - j <= window` (`window + 1` keys). The same as
  `jax.nn.dot_product_attention(..., local_window_size=window,
  is_causal=causal)`. `window=0` is the diagonal.
  """
  T = _int(T, "T", "local", 1)
  window = _int(window, "window", "local", 0)
  i = np.arange(T, dtype=np.int64)
  lo = np.maximum(i - window, 0)
  hi = i if causal else np.minimum(i + window, T - 1)
  return _intervals(lo, hi, (T, T))


def causal(T: int) -> CSR:
  """Causal (lower-triangular) attention. Mask: `M[i, j] = (j <= i)`."""
  T = _int(T, "T", "causal", 1)
  i = np.arange(T, dtype=np.int64)
  return _intervals(np.zeros_like(i), i, (T, T))


def strided(T: int, stride: int, causal: bool = False) -> CSR:
  """Strided attention (Child et al. 2019, the "strided" head).

  Mask: `M[i, j] = ((i - j) % stride == 0)`, and `j <= i` too when `causal`.
  Every row holds at least the diagonal. The full strided pattern of the paper
  combines it with a local one:
  `union(local(T, stride - 1, causal=True), strided(T, stride, causal=True))`.
  """
  T = _int(T, "T", "strided", 1)
  stride = _int(stride, "stride", "strided", 1)
  i = np.arange(T, dtype=np.int64)
  first = i % stride                              # smallest j with j == i (mod stride)
  last = i if causal else first + ((T - 1 - first) // stride) * stride
  counts = (last - first) // stride + 1
  rows, pos = _row_positions(counts)
  return _build(counts, first[rows] + pos * stride, (T, T))


def longformer(T: int, window: int, global_tokens: int | Sequence[int] = ()) -> CSR:
  """Longformer attention (Beltagy et al. 2020): sliding window plus global tokens.

  With `G` the set of global positions (`global_tokens` is a sequence of
  positions, or an int `n` meaning the first `n` positions):
  `M[i, j] = (|i - j| <= window) or (i in G) or (j in G)`, i.e. every query
  attends its window and the global keys, and a global query attends every key.
  """
  T = _int(T, "T", "longformer", 1)
  window = _int(window, "window", "longformer", 0)
  if isinstance(global_tokens, (int, np.integer)):
    n = _int(global_tokens, "global_tokens", "longformer", 0)
    if n > T:
      raise ValueError(f"jaxsparse.patterns.longformer: global_tokens = {n} exceeds T = {T}")
    g = np.arange(n, dtype=np.int64)
  else:
    g = np.asarray(global_tokens, dtype=np.int64).reshape(-1) if len(global_tokens) else \
        np.zeros((0,), np.int64)
    if g.size and (g.min() < 0 or g.max() >= T):
      raise ValueError(f"jaxsparse.patterns.longformer: global_tokens must be positions in "
                       f"[0, {T}), got {sorted(set(g.tolist()))}")
    g = np.unique(g)
  i = np.arange(T, dtype=np.int64)
  is_global = np.zeros(T, bool)
  is_global[g] = True
  lo = np.where(is_global, 0, np.maximum(i - window, 0))
  hi = np.where(is_global, T - 1, np.minimum(i + window, T - 1))
  # Row i: g[:a] (globals left of the window), lo..hi, g[b:] (globals right of it).
  a = np.searchsorted(g, lo, side="left")
  b = np.searchsorted(g, hi, side="right")
  width = hi - lo + 1
  counts = a + width + (g.size - b)
  rows, pos = _row_positions(counts)
  ar, wr, br, lr = a[rows], width[rows], b[rows], lo[rows]
  gp = np.concatenate([g, [0]])                  # guard so the gathers below stay in range
  left = gp[np.minimum(pos, g.size)]
  mid = lr + (pos - ar)
  right = gp[np.clip(br + pos - ar - wr, 0, g.size)]
  cols = np.where(pos < ar, left, np.where(pos < ar + wr, mid, right))
  return _build(counts, cols, (T, T))


def bigbird_block_mask(T: int, block: int, num_random: int, num_global: int,
                       seed: int = 0) -> np.ndarray:
  """The `[nb, nb]` block-level mask of `bigbird` (`nb = ceil(T / block)`)."""
  T = _int(T, "T", "bigbird", 1)
  block = _int(block, "block", "bigbird", 1)
  num_random = _int(num_random, "num_random", "bigbird", 0)
  num_global = _int(num_global, "num_global", "bigbird", 0)
  nb = -(-T // block)
  if num_global > nb:
    raise ValueError(f"jaxsparse.patterns.bigbird: num_global = {num_global} exceeds the "
                     f"number of blocks ceil(T / block) = {nb}")
  bi = np.arange(nb)
  bm = np.abs(bi[:, None] - bi[None, :]) <= 1
  bm[:num_global, :] = True
  bm[:, :num_global] = True
  rng = np.random.default_rng(seed)
  for r in range(num_global, nb):
    candidates = np.flatnonzero(~bm[r])
    if num_random and candidates.size:
      pick = rng.choice(candidates, size=min(num_random, candidates.size), replace=False)
      bm[r, pick] = True
  return bm


def bigbird(T: int, block: int, num_random: int, num_global: int, seed: int = 0) -> CSR:
  """BigBird block-sparse attention (Zaheer et al. 2020, ITC variant).

  Positions are grouped in blocks of `block` (`nb = ceil(T / block)`, the last
  block may be shorter). The block mask `BM [nb, nb]` is:
  - window: `|bi - bj| <= 1`;
  - global: `bi < num_global` or `bj < num_global` (the first `num_global`
    blocks attend, and are attended by, everything);
  - random: with `rng = np.random.default_rng(seed)`, for each block row
    `bi = num_global, ..., nb - 1` in order, the blocks not yet set in that row
    are `candidates = np.flatnonzero(~BM[bi])` and, when `num_random > 0` and
    candidates remain, `rng.choice(candidates, size=min(num_random,
    len(candidates)), replace=False)` are set.
  Mask: `M[i, j] = BM[i // block, j // block]` (`bigbird_block_mask` returns
  `BM`). Deterministic in `seed`.
  """
  bm = bigbird_block_mask(T, block, num_random, num_global, seed)
  T, block = int(T), int(block)
  nb = bm.shape[0]
  counts_parts, cols_parts = [], []
  for r in range(nb):
    blocks = np.flatnonzero(bm[r])
    starts = blocks * block
    lens = np.minimum(starts + block, T) - starts
    rr, pos = _row_positions(lens)
    row_cols = starts[rr] + pos
    nrows = min((r + 1) * block, T) - r * block
    counts_parts.append(np.full(nrows, row_cols.size, np.int64))
    cols_parts.append(np.tile(row_cols, nrows))
  return _build(np.concatenate(counts_parts), np.concatenate(cols_parts), (T, T))


def from_mask(mask) -> CSR:
  """The pattern of a concrete boolean `[q_len, kv_len]` mask: `M = mask`."""
  mask = np.asarray(mask)
  if mask.ndim != 2:
    raise ValueError(f"jaxsparse.patterns.from_mask: mask must be 2-D [q_len, kv_len], got "
                     f"shape {mask.shape}")
  return CSR.from_mask(mask.astype(bool))


def _entries(t, i: int):
  topo = t.topology if isinstance(t, CSR) else t
  if not isinstance(topo, Topology):
    raise TypeError(f"jaxsparse.patterns.union: topologies[{i}] must be a CSR or Topology, "
                    f"got {type(t).__name__}")
  ro = topo.host("row_offsets").astype(np.int64)
  ci = topo.host("column_indices").astype(np.int64)[:ro[-1]]
  rows = np.repeat(np.arange(ro.shape[0] - 1, dtype=np.int64), np.diff(ro))
  return topo.shape, rows, ci


def union(*topologies) -> CSR:
  """The union of patterns of one shape: `M = M_1 | M_2 | ...`.

  Takes `CSR`s or `Topology`s (values are ignored), at least one.
  """
  if not topologies:
    raise ValueError("jaxsparse.patterns.union: needs at least one topology")
  parts = [_entries(t, i) for i, t in enumerate(topologies)]
  shape = parts[0][0]
  for i, (s, _, _) in enumerate(parts):
    if s != shape:
      raise ValueError(f"jaxsparse.patterns.union: topologies[{i}] has shape {s}, "
                       f"topologies[0] has {shape}; all must have one shape")
  m, k = shape
  keys = np.sort(np.concatenate([r * k + c for _, r, c in parts]))
  if keys.size:
    keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])]
  rows, cols = keys // max(k, 1), keys % max(k, 1)
  counts = np.bincount(rows, minlength=m)
  return _build(counts, cols, shape)
