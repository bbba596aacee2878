"""Sparse softmax: a softmax over the stored entries of each row.

`sparse_softmax_p` and its derivative `sparse_softmax_grad_p`
(`y * (g - rowsum(g * y))`) are both primitives with kernels; the derivative's
own JVP is written with `rowsum` in `jax.numpy`, so derivatives of any order work.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import ad, batching

from jaxsparse._src import common
from jaxsparse._src.csr import CSR, Topology, check_value_dtype, row_ids
from jaxsparse._src.ffi import ShardingSpec, register_lowerings


# -- public function -------------------------------------------------------------
def sparse_softmax(a: CSR) -> CSR:
  """Row-wise softmax over the stored entries of `a`.

  Args:
    a: CSR `[m, k]` with values `[*batch, nnz]` (float32, float64, float16 or
      bfloat16; half types compute in float32).

  Returns:
    A CSR with the same topology. Entries not stored are treated as -inf, so an
    empty row stays empty (never NaN) and padding stays zero.
  """
  if not isinstance(a, CSR):
    raise TypeError(f"jaxsparse.sparse_softmax: a must be a jaxsparse.CSR, got "
                    f"{type(a).__name__}")
  check_value_dtype(a.dtype, "a.values")
  v = a.values if a.values.ndim > 1 else a.values[None]
  y = sparse_softmax_p.bind(v, *a.topology.arrays, **a.topology.params)
  return a.with_values(y.reshape(a.values.shape))


def rowsum(x, topology: Topology):
  """Per-entry sum over its row: `out[..., j] = sum of x[..., i] over row_j`; x `[*B, nnz]`."""
  rows = row_ids(topology)
  xt = jnp.moveaxis(x, -1, 0)                                                      # [nnz, *B]
  sums = jax.ops.segment_sum(xt, rows, num_segments=topology.shape[0], mode="drop")  # [m, *B]
  return jnp.moveaxis(jnp.take(sums, rows, axis=0, mode="fill", fill_value=0), 0, -1)


# -- primitives -------------------------------------------------------------------
sparse_softmax_p = Primitive("jaxsparse_sparse_softmax")
sparse_softmax_grad_p = Primitive("jaxsparse_sparse_softmax_grad")
_SHARDING = ShardingSpec(core=[("nnz",)], out_core=("nnz",),
                         num_topology=common.NUM_TOPOLOGY_ARRAYS)
_GRAD_SHARDING = ShardingSpec(core=[("nnz",), ("nnz",)], out_core=("nnz",),
                              num_topology=common.NUM_TOPOLOGY_ARRAYS)


# -- abstract eval ----------------------------------------------------------------
def _softmax_abstract_eval(values, *topo, shape, transposed):
  cap = Topology(*topo, shape=shape, transposed=transposed).cap
  if values.ndim < 2 or values.shape[-1] != cap:
    raise ValueError(f"jaxsparse_sparse_softmax: expected values [*B, nnz], got {values.shape}")
  return _SHARDING.results((values, *topo), [values.shape], [values.dtype])[0]


def _softmax_grad_abstract_eval(y, g, *topo, shape, transposed):
  if y.shape != g.shape or y.ndim < 2 or y.dtype != g.dtype:
    raise ValueError(f"jaxsparse_sparse_softmax_grad: y and g must both be [*B, nnz] of one "
                     f"dtype, got {y.shape} {y.dtype} and {g.shape} {g.dtype}")
  return _GRAD_SHARDING.results((y, g, *topo), [y.shape], [y.dtype])[0]


# -- reference implementations ----------------------------------------------------
def _softmax_reference(values, *topo, shape, transposed):
  t = Topology(*topo, shape=shape, transposed=transposed)
  m = shape[0]
  rows = row_ids(t)
  valid = rows < m
  x = values.astype(common.acc_dtype(values.dtype)).T                       # [nnz, B]
  mx = jax.ops.segment_max(x, rows, num_segments=m, mode="drop")
  mx = jnp.take(mx, rows, axis=0, mode="fill", fill_value=0)
  e = jnp.where(valid[:, None], jnp.exp(x - jax.lax.stop_gradient(mx)), 0)
  s = jnp.take(jax.ops.segment_sum(e, rows, num_segments=m, mode="drop"), rows, axis=0,
               mode="fill", fill_value=1)
  return (e / s).T.astype(values.dtype)


def _softmax_grad_reference(y, g, *topo, shape, transposed):
  t = Topology(*topo, shape=shape, transposed=transposed)
  acc = common.acc_dtype(y.dtype)
  y32, g32 = y.astype(acc), g.astype(acc)
  return (y32 * (g32 - rowsum(g32 * y32, t))).astype(y.dtype)


# -- lowerings ----------------------------------------------------------------------
def _softmax_ffi(values, *topo, shape, transposed, platform):
  t = Topology(*topo, shape=shape, transposed=transposed)
  out = jax.ShapeDtypeStruct(values.shape, values.dtype)
  return jax.ffi.ffi_call(f"jaxsparse_softmax_{platform}", out)(
      values, t.data, segments=t.segments("row_offsets", "row_indices"))


def _softmax_grad_ffi(y, g, *topo, shape, transposed, platform):
  t = Topology(*topo, shape=shape, transposed=transposed)
  out = jax.ShapeDtypeStruct(y.shape, y.dtype)
  return jax.ffi.ffi_call(f"jaxsparse_softmax_grad_{platform}", out)(
      y, g, t.data, segments=t.segments("row_offsets", "row_indices"))


# -- AD rules -----------------------------------------------------------------------
def _softmax_jvp(primals, tangents, *, shape, transposed):
  values, *topo = primals
  tv = tangents[0]
  y = sparse_softmax_p.bind(values, *topo, shape=shape, transposed=transposed)
  if type(tv) is ad.Zero:
    return y, common.zero_tangent(y)
  return y, sparse_softmax_grad_p.bind(y, tv, *topo, shape=shape, transposed=transposed)


def _softmax_grad_jvp(primals, tangents, *, shape, transposed):
  y, g, *topo = primals
  ty, tg, *_ = tangents
  out = sparse_softmax_grad_p.bind(y, g, *topo, shape=shape, transposed=transposed)
  t_out = None
  if type(tg) is not ad.Zero:
    t_out = sparse_softmax_grad_p.bind(y, tg, *topo, shape=shape, transposed=transposed)
  if type(ty) is not ad.Zero:
    t = Topology(*topo, shape=shape, transposed=transposed)
    t_y = ty * (g - rowsum(g * y, t)) - y * rowsum(g * ty, t)
    t_out = common.add_tangents(t_out, t_y)
  return out, (common.zero_tangent(out) if t_out is None else t_out)


def _softmax_grad_transpose(ct, y, g, *topo, shape, transposed):
  # g -> y * (g - rowsum(g * y)) is self-adjoint for a fixed y.
  if ad.is_undefined_primal(y):
    raise NotImplementedError("jaxsparse: sparse_softmax_grad is not linear in y")
  ct = ad.instantiate_zeros(ct)
  ct_g = sparse_softmax_grad_p.bind(y, ct, *topo, shape=shape, transposed=transposed)
  return [None, ct_g] + [None] * len(topo)


# -- batching -----------------------------------------------------------------------
def _softmax_batch(args, dims, *, shape, transposed):
  values, *topo = args
  dv, *dt = dims
  common.check_topology_unbatched(dt, "sparse_softmax")
  values = common.batch_front(values, dv)
  return sparse_softmax_p.bind(values, *topo, shape=shape, transposed=transposed), 0


def _softmax_grad_batch(args, dims, *, shape, transposed):
  y, g, *topo = args
  dy, dg, *dt = dims
  common.check_topology_unbatched(dt, "sparse_softmax_grad")
  y, g = common.batch_front(y, dy), common.batch_front(g, dg)
  full = jnp.broadcast_shapes(y.shape, g.shape)
  y, g = jnp.broadcast_to(y, full), jnp.broadcast_to(g, full)
  return sparse_softmax_grad_p.bind(y, g, *topo, shape=shape, transposed=transposed), 0


# -- registration -------------------------------------------------------------------
common.define_impl(sparse_softmax_p)
common.define_impl(sparse_softmax_grad_p)
sparse_softmax_p.def_abstract_eval(_softmax_abstract_eval)
sparse_softmax_grad_p.def_abstract_eval(_softmax_grad_abstract_eval)
ad.primitive_jvps[sparse_softmax_p] = _softmax_jvp
ad.primitive_jvps[sparse_softmax_grad_p] = _softmax_grad_jvp
ad.primitive_transposes[sparse_softmax_grad_p] = _softmax_grad_transpose
batching.primitive_batchers[sparse_softmax_p] = _softmax_batch
batching.primitive_batchers[sparse_softmax_grad_p] = _softmax_grad_batch
register_lowerings(sparse_softmax_p, _softmax_reference, _softmax_ffi, "softmax", _SHARDING)
register_lowerings(sparse_softmax_grad_p, _softmax_grad_reference, _softmax_grad_ffi,
                   "softmax_grad", _GRAD_SHARDING)
