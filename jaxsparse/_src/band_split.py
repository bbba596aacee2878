"""The band split of a fused attention topology: most of its entries as a band the
CPU band kernels take, the rest as a second topology (for the gather kernels where
they take it, else the row kernels).

The band kernels (csrc/attention, float32 under AVX2 and AVX-512) take topologies
whose rows are contiguous column ranges with non-decreasing ends, dense in blocks
of 8 or 16 rows; as the gather kernels they also take topologies whose rows, in each
block, are contiguous runs of the block's union of columns (BigBird's blocks, which
then run whole, unsplit). Any other topology runs the row kernels, which cost
several times more per entry. The patterns of sparse-attention models are mostly a band plus a
few scattered entries per row: local + strided (Child et al. 2019), Longformer's
window + global tokens, BigBird's sliding blocks + random + global ones. Split in
two, the band runs on the band kernels and only the rest on the gather or row kernels:

- forward: each part gives its output and log-sum-exp; with `w_i = exp(lse_i -
  lse)`, `lse = logaddexp(lse_1, lse_2)`, the output is `w_1 out_1 + w_2 out_2`
  (dropout scales entries after the softmax, so it splits the same way);
- backward: given the whole topology's `lse` and `delta`, the backward kernels'
  terms are per entry, so `dq, dk, dv` are the sums of the two parts' backward
  passes with those `lse` and `delta` (no extra pass over the parts' outputs).

Both happen inside the CPU lowering of the attention primitives (fused_attention.py).
The primitives take, after the topology, a second int32 operand `parts` (empty
without a split) holding the two parts, which shards like the topology (replicated);
the static param `split` (a `BandSplit`, or None) says where each piece lies. The
primitives' other rules and lowerings read only the topology, so the math and its
derivatives are the whole topology's. Only a concrete topology (built outside the trace, as
`jaxsparse.patterns` builds them) can be split: a traced one keeps one call.
JAXSPARSE_ATTN_BAND_SPLIT=0 turns the split off for functions traced after it is set
(for A/B runs and tests).
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from jaxsparse._src.csr import Topology, _derive, pack_host

# The band kernels take a band whose blocks of rows hold at most this many tile
# positions per stored entry (kAttnBandMaxArea in csrc/attention/attention_cpu.cc).
_MAX_AREA = 1.5
# Split only when the band holds at least this share of the entries: the rest costs
# what it costs now, plus a second call and the merge (O(rows x head dim)).
_MIN_BAND_SHARE = 0.25


@dataclasses.dataclass(frozen=True)
class BandSplit:
  """The layout of the attention primitives' `parts` operand (a static param): the
  band's and the rest's packed topology data (`Topology(data, shape=shape)` each),
  then each part's entry positions in the whole topology's storage order (to gather
  per-entry masks). Each of `band`, `rest`, `band_pos`, `rest_pos` is (offset,
  length) in that operand."""
  shape: tuple
  band: tuple
  rest: tuple
  band_pos: tuple
  rest_pos: tuple

  @property
  def band_nnz(self) -> int:
    return self.band_pos[1]

  @property
  def rest_nnz(self) -> int:
    return self.rest_pos[1]

  def segments(self, part: str, *names) -> np.ndarray:
    """`Topology.segments` of the band or the rest, as offsets into the operand."""
    offset, length = getattr(self, part)
    segs = Topology(_Length(length), shape=self.shape).segments(*names).reshape(-1, 2)
    segs[:, 0] += offset
    return segs.reshape(-1)

  def take(self, parts, what: str):
    """The piece `what` (a field) of the operand `parts` (numpy or traced)."""
    offset, length = getattr(self, what)
    return parts[offset:offset + length]


class _Length:
  """A stand-in with the shape of a packed array (for Topology's segment offsets)."""

  def __init__(self, length):
    self.shape, self.ndim = (length,), 1


def gathers_whole(row_offsets: np.ndarray, column_indices: np.ndarray, shape,
                  lanes: int) -> bool:
  """Whether the CPU gather kernels take the whole topology (AttnGatherBuild in
  csrc/attention/attention_cpu.cc): in each block of `lanes` rows every row's columns
  are a contiguous run of the block's sorted union of columns, and the blocks' lanes x
  union hold at most `_MAX_AREA` positions per entry (BigBird's blocks of a multiple of
  `lanes`). Such a topology runs faster in one call than split."""
  m, n = shape
  ro = np.asarray(row_offsets, np.int64)
  nnz = int(ro[m]) if m > 0 else 0
  if (m <= 0 or n <= 0 or nnz <= 0 or lanes <= 0
      or os.environ.get("JAXSPARSE_CPU_ATTN_GATHER", "") == "0"):
    return False
  row = np.repeat(np.arange(m), np.diff(ro))
  block = row // lanes
  keys = block * n + np.asarray(column_indices[:nnz], np.int64)
  union, index = np.unique(keys, return_inverse=True)
  if lanes * union.shape[0] > _MAX_AREA * nnz:
    return False
  index = index.reshape(-1) - np.searchsorted(union, block * n)  # within the block's union
  same_row = row[1:] == row[:-1]
  return bool(np.all(index[1:][same_row] == index[:-1][same_row] + 1))


def split_host(row_offsets: np.ndarray, column_indices: np.ndarray, shape, lanes: int):
  """The band split of the topology (`row_offsets` [m + 1], `column_indices` [>= nnz],
  host arrays) as numpy (band data, rest data, band positions, rest positions), or
  None where it gains nothing: a row without entries, no band of blocks of `lanes`
  rows dense enough, a band of under a quarter of the entries, no rest, or a topology
  the gather kernels take whole (`gathers_whole`).

  Each row's band is its run of consecutive columns through the diagonal (`row * n /
  m`; else its longest run, the nearest the diagonal of equal ones), then cut so that
  the first columns (a running max) and the last ones (a running min from the end) do
  not decrease from row to row.
  """
  m, n = shape
  ro = np.asarray(row_offsets, np.int64)
  nnz = int(ro[m]) if m > 0 else 0
  if m <= 0 or n <= 0 or nnz <= 0 or lanes <= 0:
    return None
  counts = np.diff(ro)
  if (counts <= 0).any():
    return None
  ci = np.asarray(column_indices[:nnz], np.int64)
  row = np.repeat(np.arange(m), counts)
  starts = np.ones(nnz, bool)
  starts[1:] = (ci[1:] != ci[:-1] + 1) | (row[1:] != row[:-1])
  run_start = np.flatnonzero(starts)
  run_len = np.diff(np.append(run_start, nnz))
  run_row = row[run_start]
  # Each row's run through its diagonal column (row * n / m), else its longest; ties
  # go to the run nearest the diagonal.
  diag = (2 * run_row + 1) * n // (2 * m)
  run_end = ci[run_start] + run_len - 1
  on_diag = (ci[run_start] <= diag) & (diag <= run_end)
  dist = np.maximum(ci[run_start] - diag, diag - run_end).clip(0)
  order = np.lexsort((-dist, run_len, on_diag, run_row))  # each row's last is its best
  last_of_row = np.append(run_row[order][1:] != run_row[order][:-1], True)
  best = order[last_of_row]               # one run per row, rows in order
  lo = np.maximum.accumulate(ci[run_start[best]])
  hi = np.minimum.accumulate((ci[run_start[best]] + run_len[best] - 1)[::-1])[::-1]
  if (lo > hi).any():
    return None
  in_band = (ci >= lo[row]) & (ci <= hi[row])
  band_nnz = int(in_band.sum())
  if band_nnz == nnz or band_nnz < _MIN_BAND_SHARE * nnz:
    return None
  first = np.arange(0, m, lanes)
  block_last = np.minimum(first + lanes, m) - 1
  area = float(np.sum(lanes * (hi[block_last] - lo[first] + 1)))
  if area > _MAX_AREA * band_nnz:
    return None

  def part(sel):
    c = np.bincount(row[sel], minlength=m)
    part_ro = np.concatenate([[0], np.cumsum(c)])
    return (pack_host(_derive(np, part_ro, ci[sel], m, n)),
            np.flatnonzero(sel).astype(np.int32))

  if gathers_whole(row_offsets, column_indices, shape, lanes):
    return None
  band, band_pos = part(in_band)
  rest, rest_pos = part(~in_band)
  return band, rest, band_pos, rest_pos


_cache: dict = {}
_CACHE_SIZE = 16


def band_split(topology: Topology, dtype, lanes: int):
  """`(split, parts)`: the `BandSplit` of a concrete `topology` and the operand it
  lays out (a jax array), cached by the topology's data; or `(None, None)`: traced,
  not float32, no band kernels (`lanes` 0), JAXSPARSE_ATTN_BAND_SPLIT=0, or nothing
  to gain (`split_host`)."""
  if (os.environ.get("JAXSPARSE_ATTN_BAND_SPLIT", "") == "0" or lanes <= 0
      or np.dtype(dtype) != np.float32 or isinstance(topology.data, jax.core.Tracer)):
    return None, None
  key = (id(topology.data), topology.shape, topology.transposed, lanes)
  hit = _cache.get(key)
  if hit is not None and hit[0] is topology.data:
    return hit[1]
  parts = split_host(topology.host("row_offsets"), topology.host("column_indices"),
                     topology.shape, lanes)
  result = (None, None)
  if parts is not None:
    pieces, fields, offset = [], {}, 0
    for name, a in zip(("band", "rest", "band_pos", "rest_pos"), parts):
      fields[name] = (offset, int(a.shape[0]))
      pieces.append(a)
      offset += a.shape[0]
    split = BandSplit(shape=tuple(topology.shape), **fields)
    with jax.ensure_compile_time_eval():  # a concrete array even under a trace (cached)
      result = (split, jax.numpy.asarray(np.concatenate(pieces)))
  if len(_cache) >= _CACHE_SIZE:
    _cache.pop(next(iter(_cache)))
  _cache[key] = (topology.data, result)  # holds data, so its id is not reused
  return result
