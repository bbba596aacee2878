"""SPMD partitioning of the primitives: each lowering is wrapped in
`jax.experimental.custom_partitioning` with a Shardy sharding rule built from
the primitive's `ShardingSpec` (see "Sharding" in DESIGN.md).

- Batch dims of the dense operands and the result are free (shardable) factors.
- Core dims are free only where the spec says so (SpMM's `n`); the others
  (nnz, m, k) must be whole on each device.
- A reduced factor (SDDMM's contraction `d`: the tokens of a sparse linear
  layer's weight gradient under data parallelism) may be sharded when its size
  divides evenly: each device computes the partial values of its slice and they
  are summed over its mesh axes, one all-reduce of the nnz values (half types
  summed in float32).
- The topology arrays are always replicated.
- A batch dim of size 1 in an operand (broadcast against B) is its own,
  replicated, factor.

The per-device computation is the primitive's own lowering (kernel or
reference) on the local shards; the only collective inserted inside is the
all-reduce of a sharded reduced factor. When a
user shards a dim that must be whole (say the nnz of `values`), the
partitioner reshards that operand (an all-gather): the fallback, never an
error.

Single-device compilations and bodies of a fully manual `jax.shard_map`
lower the primitive directly, exactly as without this module.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.experimental.custom_partitioning import custom_partitioning
from jax.interpreters import mlir
from jax.sharding import NamedSharding, PartitionSpec

try:  # jax internals: the axis contexts of a lowering
  from jax._src import sharding_impls as _si
except ImportError:  # pragma: no cover
  _si = None


def _is_single_or_manual(ctx) -> bool:
  """Whether there is nothing to partition: one device, or inside a fully manual region."""
  axis_context = ctx.module_context.axis_context
  if _si is None:  # pragma: no cover
    return False
  if isinstance(axis_context, _si.ShardingContext):
    return axis_context.num_devices <= 1
  if isinstance(axis_context, _si.SPMDAxisContext):
    return set(axis_context.manual_axes) == set(axis_context.mesh.axis_names)
  return True  # ReplicaAxisContext and others: no SPMD partitioner involved


def factors(spec, avals_in, avals_out):
  """The factor names of every operand's dims and of each result's dims.

  Returns (operand_factors, result_factors, shardable_factors); result_factors
  has one entry per result.
  """
  n_dense = len(avals_in) - spec.num_topology
  nb = avals_out[0].ndim - len(spec.out_cores[0])
  batch = avals_out[0].shape[:nb]
  ops = []
  for i, (aval, core) in enumerate(zip(avals_in[:n_dense], spec.core)):
    fs = []
    for j in range(nb):
      if aval.shape[j] == batch[j]:
        fs.append(f"b{j}")
      else:  # broadcast (size 1) against the batch: its own factor, replicated
        fs.append(f"u{i}_{j}")
    fs.extend(f"c_{c}" for c in core)
    ops.append(tuple(fs))
  for i in range(spec.num_topology):
    ops.append((f"t{i}",))
  outs = [tuple(f"b{j}" for j in range(nb)) + tuple(f"c_{c}" for c in oc)
          for oc in spec.out_cores]
  shardable = ({f"b{j}" for j in range(nb)} | {f"c_{c}" for c in spec.shardable}
               | reduced_factors(spec))
  return ops, outs, shardable


def reduced_factors(spec) -> frozenset:
  return frozenset(f"c_{c}" for c in spec.reduced)


def factor_sizes(ops, avals) -> dict:
  return {f: d for fs, a in zip(ops, avals) for f, d in zip(fs, a.shape)}


def _rule_string(ops, outs):
  return (", ".join(" ".join(fs) for fs in ops) + " -> "
          + ", ".join(" ".join(fs) for fs in outs))


def _axes(entry):
  if entry is None:
    return ()
  return tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)


def choose_shardings(mesh, ops, outs, shardable, arg_shardings, result_shardings,
                     reduced=frozenset(), sizes=None):
  """Per-operand and per-result PartitionSpecs: each free factor takes the mesh
  axes it has in the first operand (then result) that shards it; no mesh axis is
  used twice; every other factor is replicated. A reduced factor is sharded only
  where its size (`sizes`) divides evenly over its axes: a padded slice would add
  the padding into the sum."""
  chosen: dict[str, tuple] = {}
  used: set = set()
  if not isinstance(result_shardings, (tuple, list)):
    result_shardings = [result_shardings] * len(outs)
  for fs, sh in list(zip(ops, arg_shardings)) + list(zip(outs, result_shardings)):
    spec = getattr(sh, "spec", None)
    if spec is None:
      continue
    for f, entry in zip(fs, tuple(spec) + (None,) * (len(fs) - len(spec))):
      axes = _axes(entry)
      if f not in shardable or f in chosen or not axes or used & set(axes):
        continue
      if f in reduced and (sizes is None or sizes[f] % math.prod(mesh.shape[x] for x in axes)):
        continue
      chosen[f] = axes
      used |= set(axes)

  def pspec(fs):
    entries = []
    for f in fs:
      axes = chosen.get(f, ())
      entries.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*entries)

  return [pspec(fs) for fs in ops], [pspec(fs) for fs in outs]


def reduction_axes(ops, in_specs, reduced) -> tuple:
  """The mesh axes the chosen operand specs give the reduced factors, in order."""
  axes: dict = {}
  for fs, ps in zip(ops, in_specs):
    for f, entry in zip(fs, tuple(ps)):
      if f in reduced:
        axes.update(dict.fromkeys(_axes(entry)))
  return tuple(axes)


def summed(fun, axes):
  """`fun` whose results are summed over the mesh `axes` (the partial results of a
  sharded contraction); half types are summed in float32 and rounded once."""
  if not axes:
    return fun

  def psum(y):
    if jnp.dtype(y.dtype).itemsize < 4 and jnp.issubdtype(y.dtype, jnp.floating):
      return jax.lax.psum(y.astype(jnp.float32), axes).astype(y.dtype)
    return jax.lax.psum(y, axes)

  def reduced_fun(*xs):
    return jax.tree.map(psum, fun(*xs))

  return reduced_fun


def result_avals(spec, operands, shapes, dtypes):
  """See `ShardingSpec.results`: the results' specs are those `choose_shardings`
  picks from the operands' specs, as the partitioner does when it lowers."""
  like = operands[0]
  plain = [jax.ShapeDtypeStruct(tuple(s), d) for s, d in zip(shapes, dtypes)]
  sh = getattr(like, "sharding", None)
  if not isinstance(sh, NamedSharding):  # no sharding types here: nothing to carry
    return [like.update(shape=a.shape, dtype=a.dtype) for a in plain]
  ops, outs, shardable = factors(spec, operands, plain)
  _, out_specs = choose_shardings(sh.mesh, ops, outs, shardable,
                                  [getattr(x, "sharding", None) for x in operands], None,
                                  reduced_factors(spec), factor_sizes(ops, operands))
  return [like.update(shape=a.shape, dtype=a.dtype, sharding=NamedSharding(sh.mesh, ps))
          for a, ps in zip(plain, out_specs)]


# jax 0.11's custom_partitioning does not compile under a mesh with explicit axes;
# 0.10's does, and for a mesh of explicit and auto axes it partitions the auto ones
# too (no collective), where the shard_map below leaves them gathered.
_CUSTOM_PARTITIONING_TAKES_EXPLICIT = tuple(jax.__version_info__[:2]) < (0, 11)


def _explicit_mesh(avals):
  """The mesh the operands' types carry when the lowering takes the shard_map path:
  every axis explicit (`AxisType.Explicit`, as under `jax.set_mesh`), or on jax >=
  0.11 any axis explicit. None otherwise."""
  for a in avals:
    sh = getattr(a, "sharding", None)
    mesh = getattr(sh, "mesh", None)
    if mesh is None or not mesh.axis_names or not getattr(mesh, "explicit_axes", ()):
      continue
    if mesh.are_all_axes_explicit or not _CUSTOM_PARTITIONING_TAKES_EXPLICIT:
      return mesh
  return None


def _explicit_shard_map(fun, mesh, ops, outs, shardable, ctx, multiple, reduced):
  """Under explicit sharding the shardings are in the operands' types when the
  primitive lowers, so the per-device computation is a `jax.shard_map` over them:
  the specs `choose_shardings` gives, an operand resharded first where its type
  shards a factor that must be whole (the fallback: an all-gather, as with
  custom_partitioning). jax 0.11's custom_partitioning does not compile under
  explicit axes (its partitioned body keeps a `Sharding` custom call: jax-ml/jax
  issue 34811 and kin), and this path needs no compiler callback."""
  in_specs, out_specs = choose_shardings(
      mesh, ops, outs, shardable, [getattr(a, "sharding", None) for a in ctx.avals_in], None,
      reduced, factor_sizes(ops, ctx.avals_in))
  fun = summed(fun, reduction_axes(ops, in_specs, reduced))

  # Zero-size operands (attention's absent masks, [*1, 0]) are made inside the body:
  # XLA 0.11 crashes compiling a manual computation with a zero-size operand.
  empty = [math.prod(a.shape) == 0 and all(e is None for e in ps)
           for a, ps in zip(ctx.avals_in, in_specs)]
  avals = ctx.avals_in

  def sharded(*xs):
    xs = [x if getattr(x.aval, "sharding", None) is not None
          and tuple(x.aval.sharding.spec) == tuple(ps)
          else jax.sharding.reshard(x, ps) for x, ps in zip(xs, in_specs)]
    passed = [x for x, e in zip(xs, empty) if not e]

    def body(*ys):
      it = iter(ys)
      return fun(*[jnp.zeros(a.shape, a.dtype) if e else next(it)
                   for a, e in zip(avals, empty)])

    out_spec = tuple(out_specs) if multiple else out_specs[0]
    # Manual over the explicit axes only; the operands' types name no auto axis, and
    # inside, the primitive lowers again with those left to custom_partitioning.
    axis_names = (frozenset() if mesh.are_all_axes_explicit
                  else frozenset(mesh.explicit_axes))
    return jax.shard_map(body, mesh=mesh, axis_names=axis_names,
                         in_specs=tuple(ps for ps, e in zip(in_specs, empty) if not e),
                         out_specs=out_spec, check_vma=False)(*passed)

  return sharded


def requires_devices(prim):
  """`custom_partitioning` needs the device assignment when it lowers: jax hands it
  to the lowering only for jaxprs holding a primitive in this registry (as its
  own cuDNN attention primitives do)."""
  try:
    from jax._src import dispatch
    dispatch.prim_requires_devices_during_lowering.add(prim)
  except (ImportError, AttributeError):  # pragma: no cover - jax internals moved
    pass


def partitioned_lowering(impl, spec):
  """A lowering rule for a primitive whose per-device computation is `impl`."""
  multiple = spec.multiple_results

  def rule(ctx, *args, **params):
    def fun(*xs):
      return impl(*xs, **params)

    if _is_single_or_manual(ctx):
      return mlir.lower_fun(fun, multiple_results=multiple)(ctx, *args)

    ops, outs, shardable = factors(spec, ctx.avals_in, ctx.avals_out)
    reduced = reduced_factors(spec)
    sizes = factor_sizes(ops, ctx.avals_in)
    mesh = _explicit_mesh(ctx.avals_in)
    if mesh is not None:
      return mlir.lower_fun(
          _explicit_shard_map(fun, mesh, ops, outs, shardable, ctx, multiple, reduced),
          multiple_results=multiple)(ctx, *args)
    # In order of first appearance: Shardy wants the special factors sorted by index.
    need_replication = tuple(dict.fromkeys(
        f for fs in ops + outs for f in fs if f not in shardable))

    def result_shardings(mesh, specs):
      shs = tuple(NamedSharding(mesh, s) for s in specs)
      return shs if multiple else shs[0]

    def shardings_of(result_shape):
      if result_shape is None:
        return None
      if isinstance(result_shape, (tuple, list)):
        return [r.sharding for r in result_shape]
      return result_shape.sharding

    def partition(mesh, arg_shapes, result_shape):
      in_specs, out_specs = choose_shardings(
          mesh, ops, outs, shardable, [a.sharding for a in arg_shapes],
          shardings_of(result_shape), reduced, sizes)
      return (mesh, summed(fun, reduction_axes(ops, in_specs, reduced)),
              result_shardings(mesh, out_specs),
              tuple(NamedSharding(mesh, s) for s in in_specs))

    def infer_sharding_from_operands(mesh, arg_shapes, result_shape):  # GSPMD (no Shardy)
      _, out_specs = choose_shardings(
          mesh, ops, outs, shardable, [a.sharding for a in arg_shapes], None, reduced, sizes)
      return result_shardings(mesh, out_specs)

    def propagate_user_sharding(mesh, user_shape):
      return shardings_of(user_shape)

    out_avals = ctx.avals_out

    def global_fun(*xs):
      # custom_partitioning traces the global body only for its result type: it is
      # lowered only on one device or in a fully manual region, both handled above.
      # Under explicit sharding some reference bodies do not type-check globally
      # (a merge of sharded batch dims): then a stand-in of the right type.
      try:
        return fun(*xs)
      except Exception:  # jax's ShardingTypeError and kin
        fulls = tuple(jax.lax.full(a.shape, 0, a.dtype) for a in out_avals)
        return fulls if multiple else fulls[0]

    cp = custom_partitioning(global_fun)
    cp.def_partition(partition=partition,
                     infer_sharding_from_operands=infer_sharding_from_operands,
                     propagate_user_sharding=propagate_user_sharding,
                     sharding_rule=_rule_string(ops, outs),
                     need_replication_factors=need_replication,
                     reduction_factors=tuple(f for f in dict.fromkeys(
                         f for fs in ops for f in fs) if f in reduced))
    return mlir.lower_fun(cp, multiple_results=multiple)(ctx, *args)

  return rule
