"""SDDMM: `(lhs @ rhs.T)` sampled at a topology's nonzeros."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from jaxsparse._src import common
from jaxsparse._src.csr import CSR, Topology, as_topology, batch_shape_of, broadcast_batch, \
    result_float_dtype, row_ids
from jaxsparse._src.ffi import ShardingSpec, register_lowerings


# -- public function -------------------------------------------------------------
def sddmm(lhs, rhs, topology) -> CSR:
  """The entries of `lhs @ rhs.T` at the nonzeros of `topology`.

  Args:
    lhs: dense `[*batch_l, m, d]`, float32, float64, float16 or bfloat16.
    rhs: dense `[*batch_r, n, d]` (promoted with lhs); the batches broadcast.
    topology: a `CSR` (its values are ignored) or `Topology` of shape `[m, n]`.

  Returns:
    A `CSR` with `topology`'s structure and values `[*batch, nnz]`:
    `values[..., j] = lhs[..., row_j, :] . rhs[..., col_j, :]`. float16 and
    bfloat16 accumulate in float32.
  """
  topo = as_topology(topology, "sddmm")
  lhs, rhs = jnp.asarray(lhs), jnp.asarray(rhs)
  dtype = result_float_dtype(("lhs", lhs.dtype), ("rhs", rhs.dtype))
  m, n = topo.shape
  if lhs.ndim < 2 or lhs.shape[-2] != m:
    raise ValueError(f"jaxsparse.sddmm: lhs must be [..., m={m}, d] for a topology of shape "
                     f"{topo.shape}, got {lhs.shape}")
  if rhs.ndim < 2 or rhs.shape[-2] != n:
    raise ValueError(f"jaxsparse.sddmm: rhs must be [..., n={n}, d] for a topology of shape "
                     f"{topo.shape}, got {rhs.shape}")
  if lhs.shape[-1] != rhs.shape[-1]:
    raise ValueError(f"jaxsparse.sddmm: feature dims differ: lhs {lhs.shape} and rhs "
                     f"{rhs.shape} must share the last dim d")
  batch = batch_shape_of([("lhs", lhs.shape[:-2]), ("rhs", rhs.shape[:-2])])
  l3 = broadcast_batch(lhs.astype(dtype), batch, 2)
  r3 = broadcast_batch(rhs.astype(dtype), batch, 2)
  out = sddmm_p.bind(l3, r3, *topo.arrays, **topo.params)
  return CSR._from_parts(out.reshape(batch + (topo.cap,)), topo)  # batch () drops the 1


def sddmm_tn(lhs, rhs, topology) -> CSR:
  """The entries of `lhs.T @ rhs` at the nonzeros of `topology` (tokens-major operands).

  The same values as `sddmm(swapaxes(lhs, -1, -2), swapaxes(rhs, -1, -2), topology)`
  for `lhs` `[*batch_l, n, m]` and `rhs` `[*batch_r, n, k]` with `topology` of shape
  `[m, k]`: `values[..., j] = sum_i lhs[..., i, row_j] * rhs[..., i, col_j]`, the
  weight gradient of a sparse linear layer from its output cotangent and inputs.
  The CPU kernel transposes tiles of `n` in cache instead of XLA transposing the
  operands.
  """
  topo = as_topology(topology, "sddmm_tn")
  lhs, rhs = jnp.asarray(lhs), jnp.asarray(rhs)
  dtype = result_float_dtype(("lhs", lhs.dtype), ("rhs", rhs.dtype))
  m, k = topo.shape
  if lhs.ndim < 2 or lhs.shape[-1] != m:
    raise ValueError(f"jaxsparse.sddmm_tn: lhs must be [..., n, m={m}] for a topology of shape "
                     f"{topo.shape}, got {lhs.shape}")
  if rhs.ndim < 2 or rhs.shape[-1] != k:
    raise ValueError(f"jaxsparse.sddmm_tn: rhs must be [..., n, k={k}] for a topology of shape "
                     f"{topo.shape}, got {rhs.shape}")
  if lhs.shape[-2] != rhs.shape[-2]:
    raise ValueError(f"jaxsparse.sddmm_tn: token dims differ: lhs {lhs.shape} and rhs "
                     f"{rhs.shape} must share dim -2 (n)")
  batch = batch_shape_of([("lhs", lhs.shape[:-2]), ("rhs", rhs.shape[:-2])])
  l3 = broadcast_batch(lhs.astype(dtype), batch, 2)
  r3 = broadcast_batch(rhs.astype(dtype), batch, 2)
  out = sddmm_tn_p.bind(l3, r3, *topo.arrays, **topo.params)
  return CSR._from_parts(out.reshape(batch + (topo.cap,)), topo)


# -- primitive --------------------------------------------------------------------
sddmm_p = Primitive("jaxsparse_sddmm")
# d, the contraction, may be sharded: each device's partial values, then one all-reduce.
_SHARDING = ShardingSpec(core=[("m", "d"), ("n", "d")], out_core=("nnz",),
                         num_topology=common.NUM_TOPOLOGY_ARRAYS, reduced=("d",))


# -- abstract eval ----------------------------------------------------------------
def _sddmm_abstract_eval(lhs, rhs, *topo, shape, transposed):
  m, n = shape
  if lhs.ndim < 3 or rhs.ndim != lhs.ndim or lhs.shape[-2] != m or rhs.shape[-2] != n or \
      lhs.shape[-1] != rhs.shape[-1]:
    raise ValueError(f"jaxsparse_sddmm: expected lhs [*B, {m}, d] and rhs [*B, {n}, d], got "
                     f"{lhs.shape} and {rhs.shape}")
  batch = common.batch_shape(lhs, rhs, core_ndims=(2, 2))
  cap = Topology(*topo, shape=shape, transposed=transposed).cap
  return _SHARDING.results((lhs, rhs, *topo), [batch + (cap,)], [lhs.dtype])[0]


# -- reference implementation -----------------------------------------------------
def _sddmm_reference(lhs, rhs, *topo, shape, transposed):
  t = Topology(*topo, shape=shape, transposed=transposed)
  acc = common.acc_dtype(lhs.dtype)
  rows = row_ids(t)
  valid = rows < shape[0]
  lg = jnp.take(lhs, jnp.where(valid, rows, 0), axis=1, mode="clip").astype(acc)
  rg = jnp.take(rhs, t.column_indices, axis=1, mode="clip").astype(acc)
  out = jnp.sum(lg * rg, axis=-1)
  return jnp.where(valid, out, 0).astype(lhs.dtype)


# -- lowerings ----------------------------------------------------------------------
def _sddmm_ffi(lhs, rhs, *topo, shape, transposed, platform):
  t = Topology(*topo, shape=shape, transposed=transposed)
  batch = max(lhs.shape[0], rhs.shape[0])
  out = jax.ShapeDtypeStruct((batch, t.cap), lhs.dtype)
  return jax.ffi.ffi_call(f"jaxsparse_sddmm_{platform}", out)(
      lhs, rhs, t.data, segments=t.segments("row_offsets", "column_indices", "row_indices"))


# -- AD rules -----------------------------------------------------------------------
def _transpose_rule(spmm_name):
  """The transpose rule of an SDDMM whose two cotangents are the SpMMs `spmm_name`
  (in jaxsparse._src.spmm) of the sparse cotangent S and of S.T: sddmm's d lhs = S @ rhs
  and d rhs = S.T @ lhs (spmm_p); sddmm_tn's d lhs = rhs @ S.T and d rhs = lhs @ S
  (spmm_nt_p)."""

  def rule(ct, lhs, rhs, *topo, shape, transposed):
    from jaxsparse._src import spmm
    from jaxsparse._src.transpose import permute_p
    spmm_prim = getattr(spmm, spmm_name)
    ct = ad.instantiate_zeros(ct)
    t = Topology(*topo, shape=shape, transposed=transposed)
    ct_lhs = ct_rhs = None
    if ad.is_undefined_primal(lhs):
      ct_lhs = spmm_prim.bind(ct, rhs, *topo, shape=shape, transposed=transposed)
      ct_lhs = common.sum_to_shape(ct_lhs, lhs.aval.shape)
    if ad.is_undefined_primal(rhs):
      ct_t = permute_p.bind(ct, *topo, **t.params)
      ct_rhs = spmm_prim.bind(ct_t, lhs, *t.T.arrays, **t.T.params)
      ct_rhs = common.sum_to_shape(ct_rhs, rhs.aval.shape)
    return [ct_lhs, ct_rhs] + [None] * len(topo)

  return rule


# -- registration -------------------------------------------------------------------
common.define_impl(sddmm_p)
sddmm_p.def_abstract_eval(_sddmm_abstract_eval)
ad.primitive_jvps[sddmm_p] = common.bilinear_jvp(sddmm_p)
ad.primitive_transposes[sddmm_p] = _transpose_rule("spmm_p")
batching.primitive_batchers[sddmm_p] = common.pair_batcher(sddmm_p, "sddmm")
register_lowerings(sddmm_p, _sddmm_reference, _sddmm_ffi, "sddmm", _SHARDING)


# -- the tokens-major form: the SDDMM of lhs^T and rhs^T --------------------------------
# sddmm_tn(lhs [*B, n, m], rhs [*B, n, k]) -> values [*B, nnz], values[j] =
# sum_i lhs[i, row_j] rhs[i, col_j]: a sparse linear layer's weight gradient from its
# activations and output cotangent, without XLA transposing them first.
sddmm_tn_p = Primitive("jaxsparse_sddmm_tn")
# The tokens (d here) may be sharded (data parallel): each device's partial weight
# gradient, then one all-reduce of the nnz values.
_TN_SHARDING = ShardingSpec(core=[("d", "m"), ("d", "n")], out_core=("nnz",),
                            num_topology=common.NUM_TOPOLOGY_ARRAYS, reduced=("d",))


def _sddmm_tn_abstract_eval(lhs, rhs, *topo, shape, transposed):
  m, k = shape
  if lhs.ndim < 3 or rhs.ndim != lhs.ndim or lhs.shape[-1] != m or rhs.shape[-1] != k or \
      lhs.shape[-2] != rhs.shape[-2]:
    raise ValueError(f"jaxsparse_sddmm_tn: expected lhs [*B, n, {m}] and rhs [*B, n, {k}], got "
                     f"{lhs.shape} and {rhs.shape}")
  batch = common.batch_shape(lhs, rhs, core_ndims=(2, 2))
  cap = Topology(*topo, shape=shape, transposed=transposed).cap
  return _TN_SHARDING.results((lhs, rhs, *topo), [batch + (cap,)], [lhs.dtype])[0]


def _sddmm_tn_reference(lhs, rhs, *topo, shape, transposed):
  return _sddmm_reference(jnp.swapaxes(lhs, 1, 2), jnp.swapaxes(rhs, 1, 2), *topo, shape=shape,
                          transposed=transposed)


def _sddmm_tn_ffi(lhs, rhs, *topo, shape, transposed, platform):
  t = Topology(*topo, shape=shape, transposed=transposed)
  batch = max(lhs.shape[0], rhs.shape[0])
  out = jax.ShapeDtypeStruct((batch, t.cap), lhs.dtype)
  return jax.ffi.ffi_call(f"jaxsparse_sddmm_tn_{platform}", out)(
      lhs, rhs, t.data, segments=t.segments("row_offsets", "column_indices", "row_indices"))


def _sddmm_tn_composed(lhs, rhs, *topo, shape, transposed):
  """Where there is no tokens-major kernel (CUDA): sddmm of the transposes."""
  return sddmm_p.bind(jnp.swapaxes(lhs, -1, -2), jnp.swapaxes(rhs, -1, -2), *topo, shape=shape,
                      transposed=transposed)


common.define_impl(sddmm_tn_p)
sddmm_tn_p.def_abstract_eval(_sddmm_tn_abstract_eval)
ad.primitive_jvps[sddmm_tn_p] = common.bilinear_jvp(sddmm_tn_p)
ad.primitive_transposes[sddmm_tn_p] = _transpose_rule("spmm_nt_p")
batching.primitive_batchers[sddmm_tn_p] = common.pair_batcher(sddmm_tn_p, "sddmm_tn")
register_lowerings(sddmm_tn_p, _sddmm_tn_reference, _sddmm_tn_ffi, "sddmm_tn", _TN_SHARDING,
                   platforms=("cpu",))
mlir.register_lowering(sddmm_tn_p, mlir.lower_fun(_sddmm_tn_composed, multiple_results=False),
                       platform="cuda")
