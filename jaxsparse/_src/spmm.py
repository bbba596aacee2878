"""SpMM: a sparse matrix times a dense matrix, `[m, k] x [k, n] -> [m, n]`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from jaxsparse._src import common
from jaxsparse._src.csr import CSR, Topology, batch_shape_of, broadcast_batch, \
    result_float_dtype, row_ids
from jaxsparse._src.ffi import ShardingSpec, register_lowerings


# -- public function -------------------------------------------------------------
def spmm(a: CSR, b) -> jax.Array:
  """`a @ b` for a sparse `a` and a dense `b`.

  Args:
    a: CSR of shape `[m, k]`, values `[*batch_a, nnz]`.
    b: dense `[*batch_b, k, n]` or `[k]`; float32, float64, float16 or
      bfloat16 (promoted with `a.dtype`). `batch_a` and `batch_b` broadcast.

  Returns:
    `[*batch, m, n]` (`[*batch_a, m]` for a vector `b`), in the promoted dtype.
    float16 and bfloat16 accumulate in float32.
  """
  if not isinstance(a, CSR):
    raise TypeError(f"jaxsparse.spmm: a must be a jaxsparse.CSR, got {type(a).__name__}")
  b = jnp.asarray(b)
  dtype = result_float_dtype(("a.values", a.dtype), ("b", b.dtype))
  m, k = a.shape
  vector = b.ndim == 1
  if vector:
    b = b[:, None]
  if b.ndim < 2 or b.shape[-2] != k:
    raise ValueError(f"jaxsparse.spmm: inner dimensions differ: a is {a.shape} and b is "
                     f"{b.shape if not vector else b.shape[:1]}; b must be [..., {k}, n]")
  batch = batch_shape_of([("a.values", a.batch_shape), ("b", b.shape[:-2])])
  values = broadcast_batch(a.values.astype(dtype), batch, 1)
  bb = broadcast_batch(b.astype(dtype), batch, 2)
  out = spmm_p.bind(values, bb, *a.topology.arrays, **a.topology.params)
  out = out.reshape(batch + (m, b.shape[-1]))  # drops the size-1 batch dim when batch == ()
  return out[..., 0] if vector else out


def spmm_nt(a: CSR, x) -> jax.Array:
  """`x @ a.T` for a sparse `a` `[m, k]` and a dense `x` `[*batch_x, n, k]`: `[*batch, n, m]`.

  The same product as `jnp.swapaxes(spmm(a, jnp.swapaxes(x, -1, -2)), -1, -2)`, in
  the layout of a linear layer's activations (tokens major): the CPU kernel
  transposes tiles of `x` and of the result in cache instead of XLA transposing
  the whole arrays around the call. `x @ a` for a CSR `a` and the sparse linear
  layers go through it.
  """
  if not isinstance(a, CSR):
    raise TypeError(f"jaxsparse.spmm_nt: a must be a jaxsparse.CSR, got {type(a).__name__}")
  x = jnp.asarray(x)
  dtype = result_float_dtype(("a.values", a.dtype), ("x", x.dtype))
  m, k = a.shape
  if x.ndim < 2 or x.shape[-1] != k:
    raise ValueError(f"jaxsparse.spmm_nt: x must be [..., n, {k}] for a of shape {a.shape}, "
                     f"got {x.shape}")
  batch = batch_shape_of([("a.values", a.batch_shape), ("x", x.shape[:-2])])
  values = broadcast_batch(a.values.astype(dtype), batch, 1)
  xb = broadcast_batch(x.astype(dtype), batch, 2)
  out = spmm_nt_p.bind(values, xb, *a.topology.arrays, **a.topology.params)
  return out.reshape(batch + (x.shape[-2], m))


# -- primitive --------------------------------------------------------------------
spmm_p = Primitive("jaxsparse_spmm")
_SHARDING = ShardingSpec(core=[("nnz",), ("k", "n")], out_core=("m", "n"), shardable=("n",),
                         num_topology=common.NUM_TOPOLOGY_ARRAYS)


# -- abstract eval ----------------------------------------------------------------
def _spmm_abstract_eval(values, b, *topo, shape, transposed):
  m, k = shape
  if values.ndim < 2 or b.ndim != values.ndim + 1 or b.shape[-2] != k:
    raise ValueError(f"jaxsparse_spmm: expected values [*B, nnz] and b [*B, {k}, n], got "
                     f"{values.shape} and {b.shape}")
  batch = common.batch_shape(values, b, core_ndims=(1, 2))
  return _SHARDING.results((values, b, *topo), [batch + (m, b.shape[-1])], [b.dtype])[0]


# -- reference implementation -----------------------------------------------------
def _spmm_reference(values, b, *topo, shape, transposed):
  m, _ = shape
  t = Topology(*topo, shape=shape, transposed=transposed)
  acc = common.acc_dtype(b.dtype)
  gathered = jnp.take(b, t.column_indices, axis=1).astype(acc)        # [Bb, nnz, n]
  prod = values.astype(acc)[:, :, None] * gathered                     # [B, nnz, n]
  out = jax.ops.segment_sum(jnp.moveaxis(prod, 1, 0), row_ids(t), num_segments=m,
                            mode="drop")                               # [m, B, n]
  return jnp.moveaxis(out, 0, 1).astype(b.dtype)


# -- lowerings ----------------------------------------------------------------------
def _spmm_ffi(values, b, *topo, shape, transposed, platform):
  t = Topology(*topo, shape=shape, transposed=transposed)
  batch = max(values.shape[0], b.shape[0])
  out = jax.ShapeDtypeStruct((batch, shape[0], b.shape[2]), b.dtype)
  return jax.ffi.ffi_call(f"jaxsparse_spmm_{platform}", out)(
      values, t.data, b, segments=t.segments("row_offsets", "column_indices", "row_indices"))


# -- AD rules -----------------------------------------------------------------------
def _spmm_transpose(ct, values, b, *topo, shape, transposed):
  from jaxsparse._src.sddmm import sddmm_p
  from jaxsparse._src.transpose import permute_p
  ct = ad.instantiate_zeros(ct)
  t = Topology(*topo, shape=shape, transposed=transposed)
  ct_values = ct_b = None
  if ad.is_undefined_primal(values):
    # d values[j] = <ct[row_j, :], b[col_j, :]>: an SDDMM on a's topology.
    ct_values = sddmm_p.bind(ct, b, *topo, shape=shape, transposed=transposed)
    ct_values = common.sum_to_shape(ct_values, values.aval.shape)
  if ad.is_undefined_primal(b):
    # d b = a.T @ ct, with a.T's values a gather by the stored permutation.
    vt = permute_p.bind(values, *topo, **t.params)
    ct_b = spmm_p.bind(vt, ct, *t.T.arrays, **t.T.params)
    ct_b = common.sum_to_shape(ct_b, b.aval.shape)
  return [ct_values, ct_b] + [None] * len(topo)


# -- registration -------------------------------------------------------------------
common.define_impl(spmm_p)
spmm_p.def_abstract_eval(_spmm_abstract_eval)
ad.primitive_jvps[spmm_p] = common.bilinear_jvp(spmm_p)
ad.primitive_transposes[spmm_p] = _spmm_transpose
batching.primitive_batchers[spmm_p] = common.pair_batcher(spmm_p, "spmm")
register_lowerings(spmm_p, _spmm_reference, _spmm_ffi, "spmm", _SHARDING)


# -- the tokens-major form: x @ a.T ---------------------------------------------------
spmm_nt_p = Primitive("jaxsparse_spmm_nt")
_NT_SHARDING = ShardingSpec(core=[("nnz",), ("n", "k")], out_core=("n", "m"), shardable=("n",),
                            num_topology=common.NUM_TOPOLOGY_ARRAYS)


def _spmm_nt_abstract_eval(values, x, *topo, shape, transposed):
  m, k = shape
  if values.ndim < 2 or x.ndim != values.ndim + 1 or x.shape[-1] != k:
    raise ValueError(f"jaxsparse_spmm_nt: expected values [*B, nnz] and x [*B, n, {k}], got "
                     f"{values.shape} and {x.shape}")
  batch = common.batch_shape(values, x, core_ndims=(1, 2))
  return _NT_SHARDING.results((values, x, *topo), [batch + (x.shape[-2], m)], [x.dtype])[0]


def _spmm_nt_reference(values, x, *topo, shape, transposed):
  return jnp.swapaxes(
      _spmm_reference(values, jnp.swapaxes(x, 1, 2), *topo, shape=shape, transposed=transposed),
      1, 2)


def _spmm_nt_ffi(values, x, *topo, shape, transposed, platform):
  t = Topology(*topo, shape=shape, transposed=transposed)
  batch = max(values.shape[0], x.shape[0])
  out = jax.ShapeDtypeStruct((batch, x.shape[1], shape[0]), x.dtype)
  return jax.ffi.ffi_call(f"jaxsparse_spmm_nt_{platform}", out)(
      values, t.data, x, segments=t.segments("row_offsets", "column_indices", "row_indices"))


def _spmm_nt_composed(values, x, *topo, shape, transposed):
  """Where there is no tokens-major kernel (CUDA): spmm between two transposes."""
  return jnp.swapaxes(
      spmm_p.bind(values, jnp.swapaxes(x, -1, -2), *topo, shape=shape, transposed=transposed),
      -1, -2)


def _spmm_nt_transpose(ct, values, x, *topo, shape, transposed):
  from jaxsparse._src.sddmm import sddmm_tn_p
  from jaxsparse._src.transpose import permute_p
  ct = ad.instantiate_zeros(ct)                                   # [*B, n, m]
  t = Topology(*topo, shape=shape, transposed=transposed)
  ct_values = ct_x = None
  if ad.is_undefined_primal(values):
    # d values[j] = sum_i ct[i, row_j] x[i, col_j]: the tokens-major SDDMM.
    ct_values = sddmm_tn_p.bind(ct, x, *topo, shape=shape, transposed=transposed)
    ct_values = common.sum_to_shape(ct_values, values.aval.shape)
  if ad.is_undefined_primal(x):
    # d x = ct @ a = ct @ (a.T).T: the same product on the transpose.
    vt = permute_p.bind(values, *topo, **t.params)
    ct_x = spmm_nt_p.bind(vt, ct, *t.T.arrays, **t.T.params)
    ct_x = common.sum_to_shape(ct_x, x.aval.shape)
  return [ct_values, ct_x] + [None] * len(topo)


common.define_impl(spmm_nt_p)
spmm_nt_p.def_abstract_eval(_spmm_nt_abstract_eval)
ad.primitive_jvps[spmm_nt_p] = common.bilinear_jvp(spmm_nt_p)
ad.primitive_transposes[spmm_nt_p] = _spmm_nt_transpose
batching.primitive_batchers[spmm_nt_p] = common.pair_batcher(spmm_nt_p, "spmm_nt")
register_lowerings(spmm_nt_p, _spmm_nt_reference, _spmm_nt_ffi, "spmm_nt", _NT_SHARDING,
                   platforms=("cpu",))
mlir.register_lowering(spmm_nt_p, mlir.lower_fun(_spmm_nt_composed, multiple_results=False),
                       platform="cuda")
