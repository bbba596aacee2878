"""`SparseLinear` for Flax linen: the twin of `jaxsparse.flax.SparseLinear` (NNX).

Same computation, storage and initialization as the NNX layer (see
`jaxsparse.flax.linear`): the kernel `W` (`[in_features, out_features]`) is
stored as `W^T` in CSR; the trainable values are the param `"kernel"` of shape
`[nnz]` (CSR order of `W^T`), the optional bias is the param `"bias"`, and the
forward pass is one spmm_nt, `y = x @ (W^T)^T`.

The topology is not a variable: it is fixed when the module is constructed,
either given (`topology=`, a CSR/Topology of shape `[in, out]`) or drawn
uniformly at `sparsity` from the fixed integer `seed` (computed eagerly, on
the host, and cached per `(in, out, sparsity, seed)`, so re-constructions and
clones do not redraw it and `jit` sees it as a constant). Only `params` are
trained, so optax works unchanged.

    layer = SparseLinear(784, 300, sparsity=0.9, seed=0)
    params = layer.init(jax.random.key(0), x)["params"]   # {"kernel": [nnz], "bias": [300]}
    y = layer.apply({"params": params}, x)

Limit: the topology's arrays live in a dataclass field, which lifted linen
transforms that hash module fields (`nn.jit`) treat by identity.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxsparse._src.csr import CSR, Topology
from jaxsparse.flax.linear import (check_features, init_kernel_values, random_topology,
                                   resolve_kernel_topology, sparse_linear_apply)
from jaxsparse.pruning import check_sparsity

__all__ = ["SparseLinear"]


@functools.lru_cache(maxsize=256)
def _seeded_topology_t(in_features: int, out_features: int, sparsity: float,
                       seed: int) -> Topology:
  with jax.ensure_compile_time_eval():
    return random_topology(jax.random.key(seed), (out_features, in_features), sparsity)


class SparseLinear(nn.Module):
  """A linen linear layer `y = x @ W + b` with a sparse kernel of fixed topology.

  Attributes:
    in_features, out_features: the kernel is `[in_features, out_features]`.
    sparsity: fraction of zeros in [0, 1) of a uniformly random topology drawn
      from `seed` (exactly `in*out - round(sparsity*in*out)` entries).
    topology: instead of `sparsity`, a `jaxsparse.CSR`/`Topology` of shape
      `[in_features, out_features]` (pattern only).
    seed: integer seed of the random topology.
    use_bias, kernel_init, bias_init, dtype, param_dtype, rescale_init: as in
      the NNX `jaxsparse.flax.SparseLinear`.

  Bad arguments raise ValueError naming them at construction.
  """
  in_features: int
  out_features: int
  sparsity: float | None = None
  topology: Any = None
  seed: int = 0
  use_bias: bool = True
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros_init()
  dtype: Any = None
  param_dtype: Any = jnp.float32
  rescale_init: bool = True

  def __post_init__(self):
    super().__post_init__()
    self.topology_t()  # validates the arguments and draws (or fetches) the topology now

  def topology_t(self) -> Topology:
    """The topology of `W^T`, shape `[out_features, in_features]`."""
    in_f, out_f = check_features(self.in_features, self.out_features)
    if (self.sparsity is None) == (self.topology is None):
      raise ValueError("jaxsparse: give exactly one of sparsity= (random topology) or "
                       "topology= (a CSR/Topology of shape [in_features, out_features])")
    if self.topology is not None:
      return resolve_kernel_topology(self.topology, in_f, out_f)
    return _seeded_topology_t(in_f, out_f, check_sparsity(self.sparsity), int(self.seed))

  @nn.compact
  def __call__(self, inputs):
    topology_t = self.topology_t()
    values = self.param(
        "kernel",
        lambda key: init_kernel_values(key, self.kernel_init, topology_t, self.param_dtype,
                                       self.rescale_init))
    bias = (self.param("bias", self.bias_init, (self.out_features,), self.param_dtype)
            if self.use_bias else None)
    return sparse_linear_apply(inputs, values, bias, topology_t, self.dtype)

  # -- views given params ------------------------------------------------------------
  def dense_kernel(self, params) -> jax.Array:
    """The dense `[in, out]` kernel from this layer's `params` (`{"kernel": ...}`)."""
    return CSR._from_parts(params["kernel"], self.topology_t()).todense().T
