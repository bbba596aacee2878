"""Transpose: the transposed topology is stored, so `a.T` is a gather of the
values by a stored permutation (`permute_p`), whose transpose is the gather by
the inverse permutation: no sort and no scatter at trace or run time."""

from __future__ import annotations


import jax
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import ad, batching

from jaxsparse._src import common
from jaxsparse._src.csr import CSR, Topology
from jaxsparse._src.ffi import ShardingSpec, register_lowerings


# -- public function -------------------------------------------------------------
def transpose(a: CSR) -> CSR:
  """The transpose of `a` (`[m, k] -> [k, m]`), the same as `a.T`.

  Args:
    a: CSR with values `[*batch, nnz]`.

  Returns:
    A CSR of shape `[k, m]` with the stored transposed topology and values
    `a.values[..., t_perm]`.
  """
  if not isinstance(a, CSR):
    raise TypeError(f"jaxsparse.transpose: a must be a jaxsparse.CSR, got {type(a).__name__}")
  t = a.topology
  v = a.values if a.values.ndim > 1 else a.values[None]
  vt = permute_p.bind(v, *t.arrays, **t.params)
  return CSR._from_parts(vt.reshape(a.values.shape), t.T)


# -- primitive --------------------------------------------------------------------
# permute_p(values [B, nnz], *topology) = values[:, t_perm]: the values of a matrix
# on the topology, reordered as the values of its transpose (on topology.T).
permute_p = Primitive("jaxsparse_permute")
_SHARDING = ShardingSpec(core=[("nnz",)], out_core=("nnz",),
                         num_topology=common.NUM_TOPOLOGY_ARRAYS)


# -- abstract eval ----------------------------------------------------------------
def _permute_abstract_eval(values, *topo, shape, transposed):
  cap = Topology(*topo, shape=shape, transposed=transposed).cap
  if values.ndim < 2 or values.shape[-1] != cap:
    raise ValueError(f"jaxsparse_permute: expected values [*B, nnz = {cap}], got "
                     f"{values.shape}")
  return _SHARDING.results((values, *topo), [values.shape], [values.dtype])[0]


# -- reference implementation -----------------------------------------------------
def _permute_reference(values, *topo, shape, transposed):
  t = Topology(*topo, shape=shape, transposed=transposed)
  return jnp.take(values, t.t_perm, axis=1, mode="clip")


# -- lowerings ----------------------------------------------------------------------
def _permute_ffi(values, *topo, shape, transposed, platform):
  t = Topology(*topo, shape=shape, transposed=transposed)
  out = jax.ShapeDtypeStruct(values.shape, values.dtype)
  return jax.ffi.ffi_call(f"jaxsparse_permute_{platform}", out)(
      values, t.data, segments=t.segments("t_perm"))


# -- AD rules -----------------------------------------------------------------------
def _permute_jvp(primals, tangents, **params):
  values, *topo = primals
  out = permute_p.bind(values, *topo, **params)
  if type(tangents[0]) is ad.Zero:
    return out, common.zero_tangent(out)
  return out, permute_p.bind(tangents[0], *topo, **params)


def _permute_transpose(ct, values, *topo, shape, transposed):
  # The transpose of the gather by t_perm is the gather by t_perm_inv: the permute
  # of the transposed view (its t_perm is this view's t_perm_inv).
  ct = ad.instantiate_zeros(ct)
  t = Topology(*topo, shape=shape, transposed=transposed).T
  return [permute_p.bind(ct, *topo, **t.params)] + [None] * len(topo)


# -- batching -----------------------------------------------------------------------
def _permute_batch(args, dims, **params):
  values, *topo = args
  dv, *dp = dims
  common.check_topology_unbatched(dp, "transpose")
  return permute_p.bind(common.batch_front(values, dv), *topo, **params), 0


# -- registration -------------------------------------------------------------------
common.define_impl(permute_p)
permute_p.def_abstract_eval(_permute_abstract_eval)
ad.primitive_jvps[permute_p] = _permute_jvp
ad.primitive_transposes[permute_p] = _permute_transpose
batching.primitive_batchers[permute_p] = _permute_batch
register_lowerings(permute_p, _permute_reference, _permute_ffi, "permute", _SHARDING)
