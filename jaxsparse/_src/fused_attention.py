"""Fused sparse attention: `softmax(q k^T at the pattern) v` without storing the
probabilities (flash-attention style).

Three primitives, each over dense operands `[*batch, rows, dim]` (every batch
dim 1 or one common size), the topology (its packed data) and `parts` (below):

- `attention_fwd_p(q, k, v, keep, drop) -> (out, lse)`: the output and the
  per-row log-sum-exp of the logits (`-inf` for a row with no key). `keep` is a
  uint8 mask over the stored entries `[*batch, nnz]` (0: left out of the
  softmax), `drop` a uint8 dropout mask (after the softmax, kept entries times
  the param `drop_scale`); `[*1, 0]` for none.
- `attention_tangent_p(q, k, v, keep, drop, out, lse, tq, tk, tv) -> (t_out,
  t_lse)`: the JVP, linear in `(tq, tk, tv)`. Reverse mode never evaluates it:
  its transpose is
- `attention_bwd_p(q, k, v, keep, drop, lse, delta, dout) -> (dq, dk, dv)` with
  `delta = rowsum(dout * out) - dlse`, which recomputes the logits instead of
  reading stored probabilities. So `grad` keeps only `q, k, v, out, lse` as
  residuals: memory O(rows x head dim), never O(nnz).

Each also takes the param `inner_batch`, a layout hint that changes no value: the
last `inner_batch` batch dims (the heads) came from `[..., rows, heads, dim]`, and
the CPU kernels read and write that layout in place (benchmarks/NOTES.md, change 43).
After the topology each takes `parts`, an int32 operand, and the param `split`:
None (and `parts` empty), or a `BandSplit` (band_split.py) of `parts`, a band part
and the rest of the topology, on which the CPU kernels run apart (the band on the
band kernels), combined in the lowering; every other rule reads the topology. It
changes no value beyond rounding.

On the CPU the forward and the backward are C++ kernels
(csrc/attention/). Everywhere else (CUDA, float64 on CUDA, or
`JAXSPARSE_DISABLE_FFI=1`) they lower to the same math written with the
`sddmm`, `spmm` and `permute` primitives (which have CUDA kernels); there the
intermediates are nnz-sized but live only inside one primitive. The JVPs of the
tangent and backward primitives are the JVPs of those compositions, so
derivatives of any order work.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import ad, batching

from jaxsparse._src import common
from jaxsparse._src.csr import Topology, row_ids
from jaxsparse._src.band_split import band_split
from jaxsparse._src.ffi import ShardingSpec, cpu_instruction_set, flat_batch, register_lowerings
from jaxsparse._src.sddmm import sddmm_p
from jaxsparse._src.spmm import spmm_p
from jaxsparse._src.transpose import permute_p

NT = common.NUM_TOPOLOGY_ARRAYS


def _mask_operand(x, nb):
  if x is None:
    return jnp.zeros((1,) * nb + (0,), jnp.uint8)
  return jnp.asarray(x).astype(jnp.uint8)


def fused_attention(q, k, v, topology: Topology, *, causal: bool = False, keep=None, drop=None,
                    drop_scale: float = 1.0, inner_batch: int = 0):
  """`out[..., i, :] = sum_j softmax_j(q_i . k_j) v_j` over the stored `j` of row `i`.

  q `[*batch, m, d]`, k `[*batch, n, d]`, v `[*batch, n, dv]` with the same
  number of batch dims, each 1 or one common size (no scale applied; callers
  scale q). `causal` also drops stored entries with `j > i`; `keep` (bool or
  uint8 `[*batch, nnz]`, same batch rule) drops the entries where it is 0.
  `drop` (same form) is a dropout mask applied after the softmax: kept entries
  are multiplied by `drop_scale`, the others by 0.
  Returns `[*batch, m, dv]`; a row with no key gives zeros.

  `inner_batch` (a layout hint, no change to the math): the last `inner_batch`
  batch dims (the heads) were moved in front of the rows from a `[..., rows,
  heads, d]` array, as the attention API does; the CPU kernels then read and
  write that layout in place, so XLA's transposes around the call cancel.
  """
  nb = q.ndim - 2
  if not 0 <= inner_batch <= nb:
    raise ValueError(f"fused_attention: inner_batch must be in [0, {nb}] (the batch dims), "
                     f"got {inner_batch}")
  split, parts = band_split(topology, q.dtype, _band_lanes())
  if split is None:
    parts = jnp.zeros((0,), jnp.int32)
  out, _ = attention_fwd_p.bind(q, k, v, _mask_operand(keep, nb), _mask_operand(drop, nb),
                                *topology.arrays, parts, **topology.params, causal=bool(causal),
                                drop_scale=float(drop_scale), inner_batch=int(inner_batch),
                                split=split)
  return out


def _band_lanes() -> int:
  """The CPU band kernels' block height (0: none in this process)."""
  return {"avx512": 16, "avx2": 8}.get(cpu_instruction_set(), 0)


# -- primitives -------------------------------------------------------------------
attention_fwd_p = Primitive("jaxsparse_attention_fwd")
attention_fwd_p.multiple_results = True
attention_tangent_p = Primitive("jaxsparse_attention_tangent")
attention_tangent_p.multiple_results = True
attention_bwd_p = Primitive("jaxsparse_attention_bwd")
attention_bwd_p.multiple_results = True


# How each partitions (sharding.py); keep and drop get their own factors: either may
# be [*1, 0] (none).
_QKV = [("m", "d"), ("n", "d"), ("n", "dv"), ("nnz_keep",), ("nnz_drop",)]
_FWD_SHARDING = ShardingSpec(core=_QKV, out_core=[("m", "dv"), ("m",)], num_topology=NT + 1)
_TANGENT_SHARDING = ShardingSpec(core=_QKV + [("m", "dv"), ("m",)] + _QKV[:3],
                                 out_core=[("m", "dv"), ("m",)], num_topology=NT + 1)
_BWD_SHARDING = ShardingSpec(core=_QKV + [("m",), ("m",), ("m", "dv")],
                             out_core=[("m", "d"), ("n", "d"), ("n", "dv")], num_topology=NT + 1)


def _topology(topo):
  """The topology operands among the primitives' last two (the topology, `parts`)."""
  return topo[:NT]


# -- abstract eval ----------------------------------------------------------------
def _check(name, shape, q, k, v):
  m, n = shape
  if q.ndim < 3 or k.ndim != q.ndim or v.ndim != q.ndim:
    raise ValueError(f"{name}: expected q [*B, m, d], k [*B, n, d], v [*B, n, dv] with the "
                     f"same rank >= 3, got {q.shape}, {k.shape}, {v.shape}")
  if q.shape[-2] != m or k.shape[-2] != n or v.shape[-2] != n or k.shape[-1] != q.shape[-1]:
    raise ValueError(f"{name}: shapes {q.shape}, {k.shape}, {v.shape} do not fit the "
                     f"topology {shape}")


def _check_entry_masks(name, cap, **masks):
  for what, x in masks.items():
    if x.dtype != np.uint8 or x.ndim < 2 or x.shape[-1] not in (0, cap):
      raise ValueError(f"{name}: {what} must be uint8 [*B, nnz={cap}] (or [*1, 0] for none), "
                       f"got {x.dtype} {x.shape}")


def _fwd_abstract_eval(q, k, v, keep, drop, *topo, shape, transposed, causal, drop_scale,
                       inner_batch=0, split=None):
  _check("jaxsparse_attention_fwd", shape, q, k, v)
  cap = Topology(*_topology(topo), shape=shape, transposed=transposed).cap
  _check_entry_masks("jaxsparse_attention_fwd", cap, keep=keep, drop=drop)
  batch = common.batch_shape(q, k, v, keep, drop, core_ndims=(2, 2, 2, 1, 1))
  m = shape[0]
  return tuple(_FWD_SHARDING.results((q, k, v, keep, drop, *topo),
                                     [batch + (m, v.shape[-1]), batch + (m,)],
                                     [q.dtype, common.acc_dtype(q.dtype)]))


def _tangent_abstract_eval(q, k, v, keep, drop, out, lse, tq, tk, tv, *topo, **params):
  avals = _fwd_abstract_eval(q, k, v, keep, drop, *topo, **params)
  return tuple(_TANGENT_SHARDING.results((q, k, v, keep, drop, out, lse, tq, tk, tv, *topo),
                                         [a.shape for a in avals], [a.dtype for a in avals]))


def _bwd_abstract_eval(q, k, v, keep, drop, lse, delta, dout, *topo, shape, transposed, causal,
                       drop_scale, inner_batch=0, split=None):
  _check("jaxsparse_attention_bwd", shape, q, k, v)
  cap = Topology(*_topology(topo), shape=shape, transposed=transposed).cap
  _check_entry_masks("jaxsparse_attention_bwd", cap, keep=keep, drop=drop)
  batch = common.batch_shape(q, k, v, keep, drop, lse, delta, dout,
                             core_ndims=(2, 2, 2, 1, 1, 1, 1, 2))
  m, n = shape
  return tuple(_BWD_SHARDING.results(
      (q, k, v, keep, drop, lse, delta, dout, *topo),
      [batch + (m, q.shape[-1]), batch + (n, k.shape[-1]), batch + (n, v.shape[-1])],
      [q.dtype] * 3))


# -- the math with the other primitives (reference lowering and higher derivatives) --
def _segment(x, rows, m, op):
  """`op` (a jax.ops.segment_*) over the last axis of `x` `[*B, cap]` -> `[*B, m]`."""
  y = op(jnp.moveaxis(x, -1, 0), rows, num_segments=m, mode="drop")
  return jnp.moveaxis(y, 0, -1)


def _entries(t: Topology, causal, keep):
  """Each entry's row (clamped for gathers) and whether it takes part (`[*B, cap]`
  with a mask, else `[cap]`)."""
  shape = t.shape
  rows = row_ids(t)
  valid = rows < shape[0]
  if causal:
    valid = valid & (t.column_indices <= rows)
  if keep.shape[-1]:
    valid = valid & (keep != 0)
  return jnp.minimum(rows, shape[0] - 1), rows, valid


def _full(x, batch):
  return jnp.broadcast_to(x, batch + x.shape[len(batch):])


def _drop_mul(drop, scale, dtype):
  """The dropout multipliers `[*B, cap]` (scale or 0), or None without dropout."""
  if not drop.shape[-1]:
    return None
  return jnp.where(drop != 0, jnp.asarray(scale, dtype), jnp.zeros((), dtype))


def _probs(q, k, lse, rows_c, valid, t: Topology):
  """Probabilities `[*B, cap]` at the entries (0 at dropped and padding ones), with
  `rows_c` and `valid` from `_entries`."""
  s = sddmm_p.bind(q, k, *t.arrays, **t.params).astype(lse.dtype)
  lse_e = jnp.take(lse, rows_c, axis=-1)
  return jnp.exp(jnp.where(valid, s - lse_e, -jnp.inf))


def _fwd_composite(q, k, v, keep, drop, *topo, shape, transposed, causal, drop_scale,
                   inner_batch=0, split=None):
  topo = _topology(topo)
  m, _ = shape
  acc = common.acc_dtype(q.dtype)
  rows_c, rows, valid = _entries(Topology(*topo, shape=shape, transposed=transposed), causal, keep)
  s = sddmm_p.bind(q, k, *topo, shape=shape, transposed=transposed).astype(acc)
  s = jnp.where(valid, s, -jnp.inf)
  mx = _segment(s, rows, m, jax.ops.segment_max)
  mx = jnp.where(jnp.isfinite(mx), mx, 0)
  e = jnp.exp(s - jnp.take(mx, rows_c, axis=-1))
  total = _segment(e, rows, m, jax.ops.segment_sum)
  lse = jnp.where(total > 0, mx + jnp.log(jnp.where(total > 0, total, 1)), -jnp.inf)
  p = e / jnp.take(jnp.where(total > 0, total, 1), rows_c, axis=-1)
  mul = _drop_mul(drop, drop_scale, acc)
  if mul is not None:
    p = p * mul
  out = spmm_p.bind(p.astype(v.dtype), v, *topo, shape=shape, transposed=transposed)
  return out, lse.astype(acc)


def _tangent_composite(q, k, v, keep, drop, out, lse, tq, tk, tv, *topo, shape, transposed, causal,
                       drop_scale, inner_batch=0, split=None):
  del out
  topo = _topology(topo)
  m, _ = shape
  t = Topology(*topo, shape=shape, transposed=transposed)
  rows_c, rows, valid = _entries(t, causal, keep)
  p = _probs(q, k, lse, rows_c, valid, t)
  ts = (sddmm_p.bind(tq, k, *topo, shape=shape, transposed=transposed).astype(lse.dtype)
        + sddmm_p.bind(q, tk, *topo, shape=shape, transposed=transposed).astype(lse.dtype))
  t_lse = _segment(p * ts, rows, m, jax.ops.segment_sum)
  tp = p * (ts - jnp.take(t_lse, rows_c, axis=-1))
  mul = _drop_mul(drop, drop_scale, lse.dtype)
  if mul is not None:  # dropout after the softmax: lse and its tangent do not see it
    tp, p = tp * mul, p * mul
  t_out = (spmm_p.bind(tp.astype(v.dtype), v, *topo, shape=shape, transposed=transposed)
           + spmm_p.bind(p.astype(v.dtype), tv, *topo, shape=shape, transposed=transposed))
  batch = t_out.shape[:-2]
  return _full(t_out, batch), _full(t_lse, batch).astype(lse.dtype)


def _bwd_composite(q, k, v, keep, drop, lse, delta, dout, *topo, shape, transposed, causal,
                   drop_scale, inner_batch=0, split=None):
  topo = _topology(topo)
  t = Topology(*topo, shape=shape, transposed=transposed)
  rows_c, _, valid = _entries(t, causal, keep)
  p = _probs(q, k, lse, rows_c, valid, t)
  dp = sddmm_p.bind(dout, v, *topo, shape=shape, transposed=transposed).astype(lse.dtype)
  mul = _drop_mul(drop, drop_scale, lse.dtype)
  if mul is not None:
    dp = dp * mul
  ds = p * (dp - jnp.take(delta, rows_c, axis=-1))
  if mul is not None:
    p = p * mul  # what multiplies v
  dt = q.dtype
  dq = spmm_p.bind(ds.astype(dt), k, *topo, shape=shape, transposed=transposed)
  ds_t = permute_p.bind(ds.astype(dt), *topo, **t.params)
  p_t = permute_p.bind(p.astype(dt), *topo, **t.params)
  dk = spmm_p.bind(ds_t, q, *t.T.arrays, **t.T.params)
  dv = spmm_p.bind(p_t, dout, *t.T.arrays, **t.T.params)
  batch = tuple(np.broadcast_shapes(dq.shape[:-2], dk.shape[:-2], dv.shape[:-2]))
  return _full(dq, batch), _full(dk, batch), _full(dv, batch)


def _reference(prim, composite):
  """The composition, or for m == 0 or n == 0 (no entry can exist) zeros, with
  lse = -inf from the forward."""

  def impl(*args, shape, transposed, causal, drop_scale, inner_batch=0, split=None):
    params = dict(shape=shape, transposed=transposed, causal=causal, drop_scale=drop_scale,
                  split=split)
    if shape[0] > 0 and shape[1] > 0:
      return composite(*args, **params)
    outs = jax.eval_shape(functools.partial(prim.bind, **params), *args)
    fill = [-jnp.inf if (prim is attention_fwd_p and i == 1) else 0 for i in range(len(outs))]
    return tuple(jnp.full(o.shape, f, o.dtype) for o, f in zip(outs, fill))

  return impl


# -- kernels ------------------------------------------------------------------------
def _rows_layout(nb, inner_batch):
  """The CPU kernels' operands `[*outer, rows, *inner, cols]` (rows at dimension
  `rows_dim`) to and from the primitives' `[*batch, rows, cols]`: under the
  attention API these transposes cancel against its own."""
  rows_dim = nb - inner_batch

  def shape(batch, rows, cols):
    return batch[:rows_dim] + (rows,) + batch[rows_dim:] + (cols,)

  return (rows_dim, lambda x: jnp.moveaxis(x, -2, rows_dim),
          lambda x: jnp.moveaxis(x, rows_dim, -2), shape)


# The kernels take the operands with all their batch dims (register_lowerings with
# flatten_ffi=False): q, k, v, dout and the results through _rows_layout, the others
# flattened to one batch dim. With a `split` (band_split.py) each kernel runs twice,
# on the band and on the rest, and the two are combined here.
def _entry_masks(keep, drop, batch, pos=None):
  """keep and drop flattened to one batch dim, at the entries `pos` of a split part
  (all of them for None)."""
  def one(x):
    x = flat_batch(x, batch)
    return x if pos is None or not x.shape[-1] else jnp.take(x, pos, axis=-1)
  return one(keep), one(drop)


def _split_calls(call, split, parts, keep, drop, batch, names):
  """`call(data, masks, segments)` on the band and on the rest of a split."""
  return [call(parts, _entry_masks(keep, drop, batch, split.take(parts, part + "_pos")),
               split.segments(part, *names)) for part in ("band", "rest")]


def _fwd_ffi(q, k, v, keep, drop, *topo, shape, transposed, causal, drop_scale, inner_batch=0,
             split=None, platform):
  nb = q.ndim - 2
  batch = tuple(max(x.shape[i] for x in (q, k, v, keep, drop)) for i in range(nb))
  m = shape[0]
  rows_dim, to, back, rows_shape = _rows_layout(nb, inner_batch)
  outs = (jax.ShapeDtypeStruct(rows_shape(batch, m, v.shape[-1]), q.dtype),
          jax.ShapeDtypeStruct((math.prod(batch), m), common.acc_dtype(q.dtype)))

  names = ("row_offsets", "column_indices", "row_indices")

  def call(data, masks, segments):  # out in the kernels' layout, lse [prod(batch), m]
    return jax.ffi.ffi_call(f"jaxsparse_attention_fwd_{platform}", outs)(
        to(q), to(k), to(v), *masks, data,
        causal=bool(causal), drop_scale=np.float64(drop_scale), rows_dim=np.int64(rows_dim),
        segments=segments)

  if split is None:
    t = Topology(*_topology(topo), shape=shape, transposed=transposed)
    out, lse = call(t.data, _entry_masks(keep, drop, batch), t.segments(*names))
    return back(out), lse.reshape(batch + (m,))
  (out1, lse1), (out2, lse2) = _split_calls(call, split, topo[NT], keep, drop, batch, names)
  # lse = logaddexp(lse1, lse2) and the weights exp(lse_i - lse); -inf for a row
  # with no entry in either part (then both weights are 0).
  mx = jnp.maximum(lse1, lse2)
  mx = jnp.where(jnp.isfinite(mx), mx, 0)
  e1, e2 = jnp.exp(lse1 - mx), jnp.exp(lse2 - mx)
  total = e1 + e2
  safe = jnp.where(total > 0, total, 1)
  lse = jnp.where(total > 0, mx + jnp.log(safe), -jnp.inf)

  def weight(e):  # [prod(batch), m] -> broadcastable against out in the kernels' layout
    w = (e / safe).reshape(batch + (m,))
    return jnp.moveaxis(w, -1, rows_dim)[..., None]

  acc = lse.dtype
  out = out1.astype(acc) * weight(e1) + out2.astype(acc) * weight(e2)
  return back(out.astype(q.dtype)), lse.reshape(batch + (m,))


def _bwd_ffi(q, k, v, keep, drop, lse, delta, dout, *topo, shape, transposed, causal, drop_scale,
             inner_batch=0, split=None, platform):
  nb = q.ndim - 2
  batch = tuple(max(x.shape[i] for x in (q, k, v, keep, drop, lse, delta, dout))
                for i in range(nb))
  m, n = shape
  rows_dim, to, back, rows_shape = _rows_layout(nb, inner_batch)
  outs = (jax.ShapeDtypeStruct(rows_shape(batch, m, q.shape[-1]), q.dtype),
          jax.ShapeDtypeStruct(rows_shape(batch, n, k.shape[-1]), q.dtype),
          jax.ShapeDtypeStruct(rows_shape(batch, n, v.shape[-1]), q.dtype))

  names = ("row_offsets", "column_indices", "row_indices", "t_row_offsets",
           "t_column_indices", "t_row_indices", "t_perm")

  def call(data, masks, segments):
    return jax.ffi.ffi_call(f"jaxsparse_attention_bwd_{platform}", outs)(
        to(q), to(k), to(v), *masks, flat_batch(lse, batch), flat_batch(delta, batch),
        to(dout), data,
        causal=bool(causal), drop_scale=np.float64(drop_scale), rows_dim=np.int64(rows_dim),
        segments=segments)

  if split is None:
    t = Topology(*_topology(topo), shape=shape, transposed=transposed)
    grads = call(t.data, _entry_masks(keep, drop, batch), t.segments(*names))
  else:
    # The whole topology's lse and delta: each entry's terms are the same in either
    # part, so the gradients are the sums of the parts'.
    band, rest = _split_calls(call, split, topo[NT], keep, drop, batch, names)
    grads = [a + b for a, b in zip(band, rest)]
  return tuple(back(g) for g in grads)


# -- AD rules -----------------------------------------------------------------------
def _instantiate(tangents, primals):
  return [ad.instantiate_zeros(t) if type(t) is ad.Zero else t for t in tangents]


def _fwd_jvp(primals, tangents, **params):
  q, k, v, keep, drop, *topo = primals
  out, lse = attention_fwd_p.bind(q, k, v, keep, drop, *topo, **params)
  if all(type(t) is ad.Zero for t in tangents[:3]):
    return (out, lse), (common.zero_tangent(out), common.zero_tangent(lse))
  tq, tk, tv = _instantiate(tangents[:3], primals[:3])
  t_out, t_lse = attention_tangent_p.bind(q, k, v, keep, drop, out, lse, tq, tk, tv, *topo,
                                          **params)
  return (out, lse), (t_out, t_lse)


def _tangent_transpose(cts, q, k, v, keep, drop, out, lse, tq, tk, tv, *topo, **params):
  ct_out, ct_lse = cts
  if type(ct_out) is ad.Zero:
    ct_out = jnp.zeros(out.shape, out.dtype)
  acc = lse.dtype
  # rowsum(ct_out * out) as a contraction: XLA's CPU backend (jax 0.10) runs the
  # reduce-of-multiply form ~40x slower at [8, 4096, 64] (benchmarks/NOTES.md, change 42).
  # With inner_batch, in the layout the kernels wrote (a transposed copy of out otherwise).
  rows_dim, to, _, _ = _rows_layout(out.ndim - 2, params.get("inner_batch", 0))
  delta = jnp.moveaxis(jnp.einsum("...d,...d->...", to(ct_out).astype(acc), to(out).astype(acc)),
                       rows_dim, -1)
  if type(ct_lse) is not ad.Zero:
    delta = delta - ct_lse.astype(acc)
  dq, dk, dv = attention_bwd_p.bind(q, k, v, keep, drop, lse, delta, ct_out.astype(q.dtype),
                                    *topo, **params)
  res = [None] * 7
  for ct, x in ((dq, tq), (dk, tk), (dv, tv)):
    res.append(common.sum_to_shape(ct, x.aval.shape) if ad.is_undefined_primal(x) else None)
  return res + [None] * len(topo)


def _composite_jvp(prim, composite, n_dense, int_pos=(3, 4)):
  """The JVP of a primitive as the JVP of its composition with other primitives
  (the uint8 `keep` and `drop` operands at `int_pos` and the topology held fixed)."""

  def jvp(primals, tangents, **params):
    dense, topo = list(primals[:n_dense]), primals[n_dense:]
    outs = prim.bind(*primals, **params)
    if all(type(t) is ad.Zero for i, t in enumerate(tangents[:n_dense]) if i not in int_pos):
      return outs, [common.zero_tangent(o) for o in outs]
    fixed = {i: dense[i] for i in int_pos}
    dense = [x for i, x in enumerate(dense) if i not in int_pos]
    ts = _instantiate([t for i, t in enumerate(tangents[:n_dense]) if i not in int_pos], dense)

    def f(*xs):
      xs = list(xs)
      for i in sorted(fixed):
        xs.insert(i, fixed[i])
      return composite(*xs, *topo, **params)

    _, t_outs = jax.jvp(f, tuple(dense), tuple(ts))
    return outs, list(t_outs)

  return jvp


def _batcher(prim, n_dense):
  def batcher(args, dims, **params):
    dense, topo = args[:n_dense], args[n_dense:]
    common.check_topology_unbatched(dims[n_dense:], "sparse attention")
    dense = [common.batch_front(x, d) for x, d in zip(dense, dims[:n_dense])]
    outs = prim.bind(*dense, *topo, **params)
    return outs, [0] * len(outs)

  return batcher


# -- registration -------------------------------------------------------------------
for _p in (attention_fwd_p, attention_tangent_p, attention_bwd_p):
  common.define_impl(_p)
attention_fwd_p.def_abstract_eval(_fwd_abstract_eval)
attention_tangent_p.def_abstract_eval(_tangent_abstract_eval)
attention_bwd_p.def_abstract_eval(_bwd_abstract_eval)

ad.primitive_jvps[attention_fwd_p] = _fwd_jvp
ad.primitive_jvps[attention_tangent_p] = _composite_jvp(attention_tangent_p,
                                                        _tangent_composite, 10)
ad.primitive_transposes[attention_tangent_p] = _tangent_transpose
ad.primitive_jvps[attention_bwd_p] = _composite_jvp(attention_bwd_p, _bwd_composite, 8)

batching.primitive_batchers[attention_fwd_p] = _batcher(attention_fwd_p, 5)
batching.primitive_batchers[attention_tangent_p] = _batcher(attention_tangent_p, 10)
batching.primitive_batchers[attention_bwd_p] = _batcher(attention_bwd_p, 8)

register_lowerings(attention_fwd_p, _reference(attention_fwd_p, _fwd_composite), _fwd_ffi,
                   "attention_fwd", _FWD_SHARDING, platforms=("cpu",), flatten_ffi=False)
register_lowerings(attention_tangent_p, _reference(attention_tangent_p, _tangent_composite),
                   None, "attention_tangent", _TANGENT_SHARDING, platforms=())
register_lowerings(attention_bwd_p, _reference(attention_bwd_p, _bwd_composite), _bwd_ffi,
                   "attention_bwd", _BWD_SHARDING, platforms=("cpu",), flatten_ffi=False)
