"""Loading the compiled extensions, registering their FFI targets, and the
lowering registration shared by every primitive.

Each primitive has a pure `jax.numpy` reference implementation: it is the
default lowering on every platform. Where the extension for a platform is
built, the FFI custom call overrides it on that platform.
"""

from __future__ import annotations

import functools
import math
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax.interpreters import mlir

_PLATFORM_SPELLING = {"cpu": "cpu", "cuda": "CUDA"}


def _load(platform: str):
  try:
    if platform == "cpu":
      from jaxsparse import _jaxsparse_cpu as mod
    else:
      from jaxsparse import _jaxsparse_cuda as mod
  except ImportError as e:
    return None, str(e)
  return mod, None


@functools.cache
def _registered(platform: str) -> frozenset[str]:
  """Registers the platform's FFI targets once; returns the registered names."""
  mod, err = _load(platform)
  if mod is None:
    return frozenset()
  names = []
  for name, capsule in mod.registrations().items():
    jax.ffi.register_ffi_target(name, capsule, platform=_PLATFORM_SPELLING[platform])
    names.append(name)
  return frozenset(names)


def has_kernels(platform: str) -> bool:
  """Whether jaxsparse was built with kernels for `platform` ("cpu" or "cuda")."""
  if os.environ.get("JAXSPARSE_DISABLE_FFI", "") == "1":
    return False
  return bool(_registered(platform))


def cpu_instruction_set() -> str | None:
  """The instruction set of the CPU kernels in this process: "avx512", "avx2" or
  "generic" (the best this CPU supports, capped by JAXSPARSE_CPU_ISA), or None
  when there are no CPU kernels."""
  mod, _ = _load("cpu")
  if mod is None or not has_kernels("cpu"):
    return None
  return mod.instruction_set()


class ShardingSpec:
  """How a primitive partitions: the factors of its operands' and result's core dims.

  Every operand but the last `num_topology` ones is dense: `[*batch, *core]`,
  its batch dims each 1 or the result's. The result is `[*batch, *out_core]`.
  The topology operands (integer arrays, no batch dims) are always replicated.
  `core` names one factor per core dim; a factor in `shardable` may be sharded
  (the same factor name in two places means the same index, as in an einsum),
  every other core factor is kept whole on each device. Batch dims are always
  shardable. `out_core` is one tuple of factors, or a list of them for a
  primitive with several results (each `[*batch, *out_core[i]]`). A factor in
  `reduced` is a contraction (in the operands, not the results) that may be
  sharded too: each device computes the partial result of its slice and the
  partial results are summed over the factor's mesh axes (one all-reduce of the
  result). See "Sharding" in DESIGN.md.
  """

  def __init__(self, core, out_core, shardable=(), num_topology=0, reduced=()):
    self.core = tuple(tuple(c) for c in core)
    self.multiple_results = bool(out_core) and isinstance(out_core[0], (tuple, list))
    if self.multiple_results:
      self.out_cores = tuple(tuple(c) for c in out_core)
    else:
      self.out_cores = (tuple(out_core),)
    self.shardable = frozenset(shardable)
    self.reduced = tuple(reduced)
    self.num_topology = num_topology

  def results(self, operands, shapes, dtypes):
    """The ShapedArrays an abstract eval returns for results of these shapes and
    dtypes (a list, one per result), each with the sharding the partitioner gives
    it: under explicit sharding (`jax.sharding.AxisType.Explicit`) a result's type
    carries a spec, and `operand.update(shape=...)` would carry the operand's spec
    over to a result of another rank or meaning (jax >= 0.11 rejects the rank
    mismatch; 0.10 truncated the spec). Outside explicit sharding every spec is
    all None, and so is each result's."""
    from jaxsparse._src import sharding

    return sharding.result_avals(self, operands, shapes, dtypes)


def register_lowerings(prim, reference, ffi_impl, op: str, spec: ShardingSpec,
                       platforms=("cpu", "cuda"), flatten_ffi=True):
  """Lowers `prim` with `reference` by default and `ffi_impl` on the built
  `platforms` (an op without a kernel on a platform uses `reference` there).

  `reference(*operands, **params)` and `ffi_impl(*operands, platform=..., **params)`
  take dense operands with one leading batch dim (1 or B); the primitive's may
  have several (see `ShardingSpec`): they are flattened around the call. Under
  SPMD partitioning the call is wrapped in `custom_partitioning` (see
  `jaxsparse._src.sharding`), so each device runs it on its own shard. With
  `flatten_ffi=False`, `ffi_impl` gets the operands with all their batch dims.
  """
  from jaxsparse._src import sharding

  sharding.requires_devices(prim)
  def lowering(impl, flatten=True):
    return sharding.partitioned_lowering(_flattening(impl, spec) if flatten else impl, spec)

  mlir.register_lowering(prim, lowering(reference))
  for platform in platforms:
    if has_kernels(platform):
      target = f"jaxsparse_{op}_{platform}"
      if target not in _registered(platform):
        raise RuntimeError(f"jaxsparse: the {platform} extension lacks the target {target}")
      fallback = _flattening(reference, spec) if not flatten_ffi else reference
      mlir.register_lowering(
          prim, lowering(_with_float64_fallback(ffi_impl, fallback, platform), flatten_ffi),
          platform=platform)
    elif platform == "cuda":
      mlir.register_lowering(prim, _warn_then(lowering(reference), op), platform=platform)


def flat_batch(x, batch):
  """`[*batch (or 1s), *core]` as `[prod(batch) or 1, *core]` (1 when every batch dim
  of x is 1; otherwise broadcast to `batch` first)."""
  nb = len(batch)
  if math.prod(x.shape[:nb]) == 1:
    return x.reshape((1,) + x.shape[nb:])
  if x.shape[:nb] != batch:
    x = jnp.broadcast_to(x, batch + x.shape[nb:])
  return x.reshape((math.prod(batch),) + x.shape[nb:])


def _flattening(impl, spec: ShardingSpec):
  """`impl` on operands with several batch dims: flattened to one, then unflattened."""

  def flat(*args, **params):
    n_dense = len(args) - spec.num_topology
    dense, topo = args[:n_dense], args[n_dense:]
    nb = dense[0].ndim - len(spec.core[0])
    if nb == 1:
      return impl(*args, **params)
    batch = tuple(max(x.shape[i] for x in dense) for i in range(nb))
    out = impl(*(flat_batch(x, batch) for x in dense), *topo, **params)
    if spec.multiple_results:
      return tuple(o.reshape(batch + o.shape[1:]) for o in out)
    return out.reshape(batch + out.shape[1:])

  return flat



def _with_float64_fallback(ffi_impl, reference, platform):
  """The CUDA kernels have no float64: float64 operands use the reference there."""

  def impl(*args, **params):
    if platform == "cuda" and any(a.dtype == np.float64 for a in args):
      return reference(*args, **params)
    return ffi_impl(*args, platform=platform, **params)

  return impl


def _warn_then(reference, op):
  lowered = reference

  def rule(ctx, *args, **params):
    warnings.warn(
        f"jaxsparse was built without CUDA; {op} runs its jax.numpy reference "
        "implementation on the GPU. Rebuild with JAXSPARSE_CUDA=ON "
        "(pip install --no-build-isolation .) on a machine with nvcc.", stacklevel=2)
    return lowered(ctx, *args, **params)

  return rule
