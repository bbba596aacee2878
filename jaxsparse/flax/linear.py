"""`SparseLinear`: a Flax NNX linear layer whose kernel is a fixed-topology CSR.

The layer computes `y = x @ W + b` for a sparse kernel `W` of shape
`[in_features, out_features]`, like `flax.nnx.Linear`, but stores only the
kept entries of `W`:

- `kernel`: an `nnx.Param` of shape `[nnz]`, the trainable values;
- `topology_t`: a `SparseTopology` (an `nnx.Variable` subclass, *not* an
  `nnx.Param`) holding the integer `jaxsparse.Topology` of `W^T`, shape
  `[out_features, in_features]`. Optimizers built with `wrt=nnx.Param` and
  `nnx.grad` (which differentiates `nnx.Param` by default) never see it, so
  training updates the values and leaves the topology unchanged.

Storage layout: the layer keeps `W^T` (shape `[out, in]`) in CSR and computes
`y = x @ (W^T)^T`, so the forward pass is ONE `spmm_nt` on the stored topology with
no transposition of the topology per call (the CPU kernel reads `x` and writes `y`
in their own `[tokens, features]` layout, transposing tiles in cache). `kernel` therefore holds the values of `W^T` in CSR (row-major
`[out, in]`) order: `kernel[j]` is `W[topology_t.column_indices[j], row_j]`.
Use `dense_kernel()` for the dense `[in, out]` equivalent, `mask()` for the
boolean pattern, `sparse_kernel_t()` for the CSR of `W^T`.

Initialization: a dense `[in, out]` kernel is drawn with `kernel_init` (the
same initializer and statistics as `nnx.Linear`) and the kept entries are
gathered. With `rescale_init=True` (the default) they are multiplied by
`1 / sqrt(density)`, `density = nnz / (in * out)`: `lecun_normal` gives each
weight variance `1 / fan_in` so that a unit's output variance matches its
input's when all `fan_in` weights are present; keeping a fraction `density`
of them leaves `density * fan_in` terms on average, so the output variance
shrinks by `density` (by 50x at 98% sparsity, compounding across layers)
unless each weight's variance is scaled up by `1 / density`. The density is
the layer's global density, which equals every unit's expected density for
the uniform random topology. Pass `rescale_init=False` to get the dense
layer's entries unchanged (e.g. to compare with a masked dense layer).
Drawing the dense kernel costs `in * out` memory once, at initialization.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.nnx.nn import dtypes as nnx_dtypes

from jaxsparse._src.csr import CSR, Topology, row_ids
from jaxsparse._src.spmm import spmm_nt
from jaxsparse.pruning import check_sparsity, kept_count

default_kernel_init = nnx.initializers.lecun_normal()
default_bias_init = nnx.initializers.zeros_init()

__all__ = ["SparseLinear", "SparseTopology", "random_topology"]


class SparseTopology(nnx.Variable):
  """Non-trainable state holding a `jaxsparse.Topology` (integer arrays).

  Not an `nnx.Param`: `nnx.grad`, `nnx.Optimizer(..., wrt=nnx.Param)` and
  optax leave it alone. It is still part of the module's state (`nnx.state`,
  `nnx.split`, checkpoints) and is passed through `nnx.jit` as arrays.
  """


# -- shared helpers (also used by the linen twin and jaxsparse.pruning) ----------
def check_features(in_features, out_features):
  for name, v in (("in_features", in_features), ("out_features", out_features)):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
      raise ValueError(f"jaxsparse: {name} must be a positive int, got {v!r}")
  return int(in_features), int(out_features)


def random_topology(key, shape, sparsity) -> Topology:
  """A uniformly random topology of `shape = (m, k)` at exactly `sparsity`.

  Exactly `kept_count(m * k, sparsity)` positions are drawn without
  replacement, uniformly among the `m * k`. Concrete keys give a validated
  host-built topology; a traced key (inside `jit`/`nnx.eval_shape`) works too,
  the count being static.
  """
  m, k = (int(s) for s in shape)
  s = check_sparsity(sparsity)
  size = m * k
  nnz = kept_count(size, s)
  if nnz == 0:
    raise ValueError(f"jaxsparse: sparsity={sparsity!r} keeps no entry of a {m}x{k} matrix")
  if size > np.iinfo(np.int32).max:
    raise ValueError(f"jaxsparse: a {m}x{k} matrix overflows int32 flat indices")
  flat = jnp.sort(jax.random.permutation(key, size)[:nnz]).astype(jnp.int32)
  rows = flat // k
  cols = flat % k
  counts = jnp.zeros((m,), jnp.int32).at[rows].add(1)
  row_offsets = jnp.concatenate([jnp.zeros((1,), jnp.int32), jnp.cumsum(counts, dtype=jnp.int32)])
  return Topology.build(row_offsets, cols, (m, k))


def resolve_kernel_topology(topology, in_features: int, out_features: int) -> Topology:
  """The topology of `W^T` (`[out, in]`) from a CSR/Topology of `W` (`[in, out]`)."""
  if isinstance(topology, CSR):
    topology = topology.topology
  if not isinstance(topology, Topology):
    raise TypeError(f"jaxsparse: topology must be a jaxsparse.CSR or jaxsparse.Topology, got "
                    f"{type(topology).__name__}")
  if tuple(topology.shape) != (in_features, out_features):
    raise ValueError(
        f"jaxsparse: topology has shape {tuple(topology.shape)} but the kernel is "
        f"(in_features, out_features) = ({in_features}, {out_features})")
  return topology.T  # no computation: the stored transpose arrays swap roles


def resolve_topology_t(key_fn, in_features, out_features, sparsity, topology) -> Topology:
  """`W^T`'s topology from exactly one of `sparsity` (random, key from `key_fn()`)
  or `topology` (`[in, out]`); ValueError naming the argument otherwise."""
  if (sparsity is None) == (topology is None):
    raise ValueError("jaxsparse: give exactly one of sparsity= (random topology) or "
                     "topology= (a CSR/Topology of shape [in_features, out_features])")
  if sparsity is not None:
    check_sparsity(sparsity)
    return random_topology(key_fn(), (out_features, in_features), sparsity)
  return resolve_kernel_topology(topology, in_features, out_features)


def gather_kernel_values(dense_kernel, topology_t: Topology):
  """Values of `W^T` in CSR order from a dense `[in, out]` kernel (0 at padding)."""
  out_features = topology_t.shape[0]
  rows = row_ids(topology_t)                   # output unit of each entry; out for padding
  valid = rows < out_features
  vals = dense_kernel[topology_t.column_indices, jnp.minimum(rows, out_features - 1)]
  return jnp.where(valid, vals, jnp.zeros((), vals.dtype))


def init_kernel_values(key, kernel_init, topology_t: Topology, param_dtype, rescale: bool):
  """Draws the dense `[in, out]` kernel with `kernel_init`, gathers the kept
  entries and (if `rescale`) scales them by `1 / sqrt(density)`."""
  out_features, in_features = topology_t.shape
  dense = kernel_init(key, (in_features, out_features), param_dtype)
  vals = gather_kernel_values(dense, topology_t)
  if rescale:
    nnz = topology_t.row_offsets[-1].astype(jnp.float32)
    density = jnp.maximum(nnz, 1.0) / float(in_features * out_features)
    vals = (vals * jax.lax.rsqrt(density)).astype(param_dtype)
  return vals


def sparse_linear_apply(x, values, bias, topology_t: Topology, dtype):
  """`x @ W + b` for `W^T = CSR(values, topology_t)`: one spmm_nt, `x @ (W^T)^T`."""
  out_features, in_features = topology_t.shape
  x = jnp.asarray(x)
  if x.ndim < 1 or x.shape[-1] != in_features:
    raise ValueError(f"jaxsparse: SparseLinear expects inputs [..., {in_features}], got "
                     f"shape {x.shape}")
  x, values, bias = nnx_dtypes.promote_dtype((x, values, bias), dtype=dtype)
  lead = x.shape[:-1]
  x2 = x.reshape((math.prod(lead), in_features))
  y = spmm_nt(CSR._from_parts(values, topology_t), x2)           # [n, out]
  y = y.reshape(lead + (out_features,))
  if bias is not None:
    y = y + bias
  return y


# -- the module ----------------------------------------------------------------------
class SparseLinear(nnx.Module):
  """A linear layer `y = x @ W + b` with a sparse kernel of fixed topology.

  Args:
    in_features, out_features: the kernel is `[in_features, out_features]`.
    sparsity: fraction of zero weights in [0, 1): a uniformly random topology
      with exactly `in*out - round(sparsity*in*out)` entries is drawn from
      `rngs.params()`.
    topology: instead of `sparsity`, a `jaxsparse.CSR` or `jaxsparse.Topology`
      of shape `[in_features, out_features]` (only its pattern is used; its
      values, if any, are ignored: use `SparseLinear.from_dense` to keep them).
    use_bias: add a bias of shape `[out_features]`.
    kernel_init: initializer of the equivalent dense kernel (see module doc).
    bias_init: bias initializer.
    dtype: computation dtype (None: promote inputs and parameters).
    param_dtype: dtype of the values and bias.
    rescale_init: multiply the initial values by `1 / sqrt(density)` (default
      True; see the module doc for why).
    rngs: `nnx.Rngs`; `rngs.params()` is drawn for the topology (when random),
      the kernel and the bias, in that order.

  Raises ValueError (naming the argument) for a sparsity outside [0, 1), a
  topology whose shape is not `(in_features, out_features)`, or neither/both
  of `sparsity` and `topology`.

  Inputs are `[..., in_features]`; leading dims are flattened into one for a
  single spmm_nt and restored.
  """

  def __init__(self, in_features: int, out_features: int, *, sparsity: float | None = None,
               topology: CSR | Topology | None = None, use_bias: bool = True,
               kernel_init=default_kernel_init, bias_init=default_bias_init,
               dtype: Any = None, param_dtype: Any = jnp.float32, rescale_init: bool = True,
               rngs: nnx.Rngs):
    in_features, out_features = check_features(in_features, out_features)
    topology_t = resolve_topology_t(rngs.params, in_features, out_features, sparsity, topology)
    self.topology_t = SparseTopology(topology_t)
    self.kernel = nnx.Param(
        init_kernel_values(rngs.params(), kernel_init, topology_t, param_dtype, rescale_init))
    if use_bias:
      self.bias = nnx.Param(bias_init(rngs.params(), (out_features,), param_dtype))
    else:
      self.bias = nnx.data(None)
    self.in_features = in_features
    self.out_features = out_features
    self.use_bias = use_bias
    self.dtype = dtype
    self.param_dtype = param_dtype

  # -- construction from a dense kernel -------------------------------------------------
  @classmethod
  def from_dense(cls, kernel, bias=None, *, mask=None, dtype: Any = None,
                 param_dtype: Any = None) -> "SparseLinear":
    """A `SparseLinear` holding the entries of a dense `[in, out]` `kernel`.

    Args:
      kernel: dense `[in_features, out_features]` (concrete).
      bias: `[out_features]` or None (no bias).
      mask: bool `[in, out]` of the entries to keep (concrete); None keeps the
        nonzeros of `kernel`.
      dtype: computation dtype of the layer.
      param_dtype: dtype of values/bias (default: `kernel.dtype`).
    """
    kernel = jnp.asarray(kernel)
    if kernel.ndim != 2:
      raise ValueError(f"jaxsparse: kernel must be [in_features, out_features], got "
                       f"{kernel.shape}")
    in_features, out_features = kernel.shape
    mask = np.asarray(kernel != 0) if mask is None else np.asarray(mask, bool)
    if mask.shape != kernel.shape:
      raise ValueError(f"jaxsparse: mask has shape {mask.shape}, kernel has {kernel.shape}")
    param_dtype = kernel.dtype if param_dtype is None else param_dtype
    csr_t = CSR.from_mask(mask.T, values=kernel.T.astype(param_dtype))  # W^T, [out, in]
    layer = cls(in_features, out_features, topology=csr_t.topology.T, use_bias=bias is not None,
                kernel_init=nnx.initializers.zeros_init(), dtype=dtype, param_dtype=param_dtype,
                rescale_init=False, rngs=nnx.Rngs(0))
    layer.kernel[...] = csr_t.values
    if bias is not None:
      bias = jnp.asarray(bias, param_dtype)
      if bias.shape != (out_features,):
        raise ValueError(f"jaxsparse: bias must have shape ({out_features},), got {bias.shape}")
      layer.bias[...] = bias
    return layer

  # -- views ------------------------------------------------------------------------------
  @property
  def nnz(self) -> int:
    """Stored entries (the length of `kernel`)."""
    return self.topology_t.get_value().cap

  def sparse_kernel_t(self) -> CSR:
    """`W^T` as a CSR of shape `[out_features, in_features]` (the stored form)."""
    return CSR._from_parts(self.kernel[...], self.topology_t.get_value())

  def dense_kernel(self):
    """The dense `[in_features, out_features]` kernel `W` (zeros off the topology)."""
    return self.sparse_kernel_t().todense().T

  def mask(self):
    """bool `[in_features, out_features]`: where `W` has stored entries."""
    t = self.topology_t.get_value()
    ones = jnp.ones((t.cap,), jnp.float32)
    return CSR._from_parts(ones, t).todense().T != 0

  def __call__(self, inputs):
    bias = self.bias[...] if self.bias is not None else None
    return sparse_linear_apply(inputs, self.kernel[...], bias, self.topology_t.get_value(),
                               self.dtype)
