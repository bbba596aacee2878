"""Pieces shared by the primitive modules: batch shapes (the primitives take dense
operands `[*batch, *core]`, each batch dim 1 or one common size), the batching
helper, zero tangents, and the accumulation dtype."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.interpreters import ad


NUM_TOPOLOGY_ARRAYS = 1  # Topology.arrays: the packed `data`


def acc_dtype(dtype):
  """float32 for half types, else the dtype itself."""
  return jnp.float32 if np.dtype(dtype).itemsize < 4 else dtype


def batch_shape(*xs, core_ndims) -> tuple[int, ...]:
  """The common batch shape of operands `[*batch, *core]` whose batch dims are each
  1 or one common size, and have the same count; ValueError otherwise."""
  nbs = {x.ndim - c for x, c in zip(xs, core_ndims)}
  if len(nbs) != 1 or min(nbs) < 1:
    raise ValueError(f"jaxsparse: operands must have the same number (>= 1) of batch dims, "
                     f"got shapes {[x.shape for x in xs]}")
  nb = nbs.pop()
  out = []
  for i in range(nb):
    sizes = {x.shape[i] for x in xs}
    big = sizes - {1}
    if len(big) > 1:
      raise ValueError(f"jaxsparse: batch dim {i} sizes {sorted(sizes)} must be 1 or one "
                       "common B")
    out.append(big.pop() if big else 1)
  return tuple(out)


def check_topology_unbatched(dims, op: str):
  if any(d is not None for d in dims):
    raise NotImplementedError(
        f"jaxsparse: vmap of {op} over the topology (row_offsets / column_indices) is not "
        "supported: matrices in a batch must share one topology. vmap over the values and "
        "the dense operands instead (CSR.with_values), or build a block-diagonal CSR.")


def batch_front(x, d):
  """A vmapped operand with its mapped axis `d` moved to the front as a new batch dim
  (a size-1 dim when unmapped, `d` None): the primitives take several batch dims."""
  if d is None:
    return x[None]
  return jnp.moveaxis(x, d, 0)


def zero_tangent(primal_out):
  return ad.Zero(primal_out.aval.to_tangent_aval())


def add_tangents(a, b):
  if a is None:
    return b
  return a + b


def sum_to_shape(ct, shape):
  """Reduces a cotangent's batch dims to `shape`'s (summing where an operand broadcast)."""
  axes = tuple(i for i, (c, s) in enumerate(zip(ct.shape, shape)) if s == 1 and c != 1)
  if axes:
    ct = jnp.sum(ct, axis=axes, keepdims=True)
  return ct


def define_impl(prim):
  """Eager evaluation: compile the single primitive, as jax's own primitives do."""
  try:
    from jax._src import dispatch
    prim.def_impl(functools.partial(dispatch.apply_primitive, prim))
  except (ImportError, AttributeError):  # pragma: no cover - jax internals moved
    @functools.cache
    def jitted(**params):
      return jax.jit(lambda *args: prim.bind(*args, **params))

    prim.def_impl(lambda *args, **params: jitted(**params)(*args))


def bilinear_jvp(prim):
  """JVP of a primitive bilinear in its first two operands (the rest: topology)."""

  def jvp(primals, tangents, **params):
    x, y, *topo = primals
    tx, ty, *_ = tangents
    out = prim.bind(x, y, *topo, **params)
    t_out = None
    if type(tx) is not ad.Zero:
      t_out = prim.bind(tx, y, *topo, **params)
    if type(ty) is not ad.Zero:
      t_out = add_tangents(t_out, prim.bind(x, ty, *topo, **params))
    return out, (zero_tangent(out) if t_out is None else t_out)

  return jvp


def pair_batcher(prim, op: str):
  """Batching rule of a primitive with two dense operands and a topology: the
  vmapped axis becomes one more leading batch dim (one kernel launch)."""

  def batcher(args, dims, **params):
    x, y, *topo = args
    dx, dy, *dt = dims
    check_topology_unbatched(dt, op)
    return prim.bind(batch_front(x, dx), batch_front(y, dy), *topo, **params), 0

  return batcher

