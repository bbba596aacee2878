"""Sharding checks on 8 simulated CPU devices, run by tests/test_sharding.py in a
subprocess (the device count must be set before jax starts its backend, and
the other test modules share the pytest process).

`python tests/sharding_checks.py [name ...]` prints one JSON object: for each
check, the collectives in its compiled HLO and the largest difference from
the single-device result.
"""

import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8")

import json  # noqa: E402
import re  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

import jaxsparse as js  # noqa: E402
from jaxsparse import testing as jst  # noqa: E402

COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "reduce-scatter", "collective-permute")
_RE = re.compile(r"\s(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")


def collectives(hlo: str) -> list[str]:
  return sorted(_RE.findall(hlo))


def mesh(shape, names):
  return jax.make_mesh(shape, names, devices=jax.devices()[:int(np.prod(shape))],
                       axis_types=(jax.sharding.AxisType.Auto,) * len(shape))


def run(f, args, in_specs, out_specs, m):
  """Compiles `f` on mesh `m`; returns (collectives, result, single-device result)."""
  shard = lambda spec: jax.tree.map(lambda s: NamedSharding(m, s), spec,
                                    is_leaf=lambda x: isinstance(x, P))
  jf = jax.jit(f, in_shardings=shard(in_specs), out_shardings=shard(out_specs))
  placed = jax.device_put(args, shard(in_specs))
  hlo = jf.lower(*placed).compile().as_text()
  out = jf(*placed)
  ref = jax.jit(f)(*args)
  return collectives(hlo), out, ref


def run_explicit(f, args, in_specs, m):
  """`run` in explicit-sharding mode (sharded types): the arguments placed under
  `jax.set_mesh` of an all-Explicit mesh `m`, the result's sharding from the types."""
  shard = lambda spec: jax.tree.map(lambda s: NamedSharding(m, s), spec,
                                    is_leaf=lambda x: isinstance(x, P))
  jf = jax.jit(f)
  ref = jf(*args)
  with jax.set_mesh(m):
    placed = jax.device_put(args, shard(in_specs))
    hlo = jf.lower(*placed).compile().as_text()
    out = jf(*placed)
  return collectives(hlo), out, ref


def explicit_mesh(shape, names):
  return jax.make_mesh(shape, names, devices=jax.devices()[:int(np.prod(shape))],
                       axis_types=(jax.sharding.AxisType.Explicit,) * len(shape))


def max_err(a, b):
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def csr_spec_tree(a, values_spec):
  leaves, tree = jax.tree.flatten(a)
  specs = [values_spec] + [P()] * (len(leaves) - 1)
  return jax.tree.unflatten(tree, specs)


RNG = np.random.default_rng(0)
B, M, K, N, D = 8, 32, 24, 16, 8
A = jst.random_csr(RNG, M, K, 0.3, np.float32)


def _f32(*shape):
  return jnp.asarray(RNG.standard_normal(shape), jnp.float32)


CHECKS = {}


def check(fn):
  CHECKS[fn.__name__] = fn
  return fn


@check
def spmm_data_parallel():
  a = A.with_values(_f32(B, A.nnz))
  b = _f32(B, K, N)
  m = mesh((8,), ("data",))
  return run(js.spmm, (a, b), (csr_spec_tree(a, P("data")), P("data")), P("data"), m)


@check
def spmm_shared_values_data_parallel():
  # One weight matrix (values [nnz], replicated) times a batch-sharded b.
  b = _f32(B, K, N)
  m = mesh((8,), ("data",))
  return run(js.spmm, (A, b), (csr_spec_tree(A, P()), P("data")), P("data"), m)


@check
def spmm_nt_token_split():
  # x @ a.T (a sparse linear layer) with the tokens sharded and the weights
  # replicated: each device computes its tokens.
  from jaxsparse._src.spmm import spmm_nt
  x = _f32(64, K)
  m = mesh((8,), ("data",))
  return run(spmm_nt, (A, x), (csr_spec_tree(A, P()), P("data")), P("data"), m)


@check
def spmm_nt_grad_token_split():
  # The weight gradient of x @ a.T with the tokens sharded contracts the tokens:
  # each device's partial sddmm_tn, then one all-reduce of the nnz values.
  from jaxsparse._src.spmm import spmm_nt
  x = _f32(64, K)
  m = mesh((8,), ("data",))
  g = jax.grad(lambda v, x: jnp.sum(jnp.sin(spmm_nt(A.with_values(v), x))))
  return run(g, (A.values, x), (P(), P("data")), P(), m)


@check
def spmm_nt_grad_token_split_bfloat16():
  # The same in bfloat16: the partial values are summed in float32 and rounded once
  # more, so the result is within the dtype's tolerance of one device's (not equal).
  from jaxsparse._src.spmm import spmm_nt
  x = _f32(64, K).astype(jnp.bfloat16)
  m = mesh((8,), ("data",))
  g = jax.grad(lambda v, x: jnp.sum(jnp.sin(spmm_nt(A.with_values(v), x)).astype(jnp.float32)))
  coll, out, ref = run(g, (A.values.astype(jnp.bfloat16), x), (P(), P("data")), P(), m)
  return coll, out, ref, jst.tolerance(jnp.bfloat16) * float(jnp.max(jnp.abs(
      ref.astype(jnp.float32))))


@check
def spmm_nt_grad_uneven_tokens():
  # 60 tokens over 8 devices do not split evenly: a padded slice would add its padding
  # into the sum, so the tokens are gathered instead (the fallback).
  from jaxsparse._src.spmm import spmm_nt
  x = _f32(60, K)
  m = mesh((8,), ("data",))

  def g(v, x):
    x = jax.lax.with_sharding_constraint(x, NamedSharding(m, P("data")))
    return jax.grad(lambda v: jnp.sum(jnp.sin(spmm_nt(A.with_values(v), x))))(v)

  return run(g, (A.values, x), (P(), P()), P(), m)


@check
def sddmm_contraction_split():
  # SDDMM with its contraction d sharded (lhs and rhs split on their last dim):
  # partial values per device, one all-reduce.
  lhs, rhs = _f32(M, 64), _f32(K, 64)
  m = mesh((8,), ("model",))
  f = lambda l, r: js.sddmm(l, r, A).values
  return run(f, (lhs, rhs), (P(None, "model"), P(None, "model")), P(), m)


@check
def spmm_column_split():
  # b's n dim sharded (column split): each device computes its columns.
  b = _f32(K, 64)
  m = mesh((8,), ("model",))
  return run(js.spmm, (A, b), (csr_spec_tree(A, P()), P(None, "model")), P(None, "model"), m)


@check
def spmm_data_and_column_split():
  a = A.with_values(_f32(4, A.nnz))
  b = _f32(4, K, 32)
  m = mesh((4, 2), ("data", "model"))
  return run(js.spmm, (a, b), (csr_spec_tree(a, P("data")), P("data", None, "model")),
             P("data", None, "model"), m)


@check
def spmm_fallback_k_sharded():
  # b sharded on k (the contraction): not partitionable, so b is all-gathered
  # (the fallback: correct values, one gather).
  b = _f32(K, N)
  m = mesh((8,), ("model",))
  return run(js.spmm, (A, b), (csr_spec_tree(A, P()), P("model", None)), P(), m)


@check
def sddmm_data_parallel():
  lhs, rhs = _f32(B, M, D), _f32(B, K, D)
  m = mesh((8,), ("data",))
  f = lambda l, r: js.sddmm(l, r, A).values
  return run(f, (lhs, rhs), (P("data"), P("data")), P("data"), m)


@check
def softmax_data_parallel():
  a = A.with_values(_f32(B, A.nnz))
  m = mesh((8,), ("data",))
  f = lambda a: js.sparse_softmax(a).values
  return run(f, (a,), (csr_spec_tree(a, P("data")),), P("data"), m)


@check
def transpose_data_parallel():
  a = A.with_values(_f32(B, A.nnz))
  m = mesh((8,), ("data",))
  f = lambda a: js.transpose(a).values
  return run(f, (a,), (csr_spec_tree(a, P("data")),), P("data"), m)


def _attn_topology():
  mask = np.zeros((32, 32), bool)
  for i in range(32):
    mask[i, max(0, i - 5):i + 1] = True
    mask[i, ::8] = True
  return js.CSR.fromdense(mask.astype(np.float32)).topology


TOPO = _attn_topology()


def _qkv(batch, heads, kv_heads=None, d=8):
  kv_heads = kv_heads or heads
  return (_f32(batch, 32, heads, d), _f32(batch, 32, kv_heads, d), _f32(batch, 32, kv_heads, d))


@check
def attention_data_parallel():
  q, k, v = _qkv(8, 2)
  m = mesh((8,), ("data",))
  f = lambda q, k, v: js.sparse_dot_product_attention(q, k, v, TOPO)
  return run(f, (q, k, v), (P("data"),) * 3, P("data"), m)


@check
def attention_heads_sharded():
  q, k, v = _qkv(2, 8)
  m = mesh((8,), ("model",))
  spec = P(None, None, "model", None)
  f = lambda q, k, v: js.sparse_dot_product_attention(q, k, v, TOPO)
  return run(f, (q, k, v), (spec,) * 3, spec, m)


@check
def attention_data_and_heads_sharded():
  q, k, v = _qkv(4, 4)
  m = mesh((4, 2), ("data", "model"))
  spec = P("data", None, "model", None)
  f = lambda q, k, v: js.sparse_dot_product_attention(q, k, v, TOPO)
  return run(f, (q, k, v), (spec,) * 3, spec, m)


@check
def attention_grad_data_parallel():
  # The gradient w.r.t. the activations: no communication at all.
  q, k, v = _qkv(8, 2)
  m = mesh((8,), ("data",))
  f = jax.grad(lambda q, k, v: jnp.sum(jnp.sin(js.sparse_dot_product_attention(q, k, v, TOPO))),
               argnums=(0, 1, 2))
  return run(f, (q, k, v), (P("data"),) * 3, (P("data"),) * 3, m)


@check
def attention_grad_heads_sharded():
  q, k, v = _qkv(2, 8)
  m = mesh((8,), ("model",))
  spec = P(None, None, "model", None)
  f = jax.grad(lambda q, k, v: jnp.sum(jnp.sin(js.sparse_dot_product_attention(q, k, v, TOPO))),
               argnums=(0, 1, 2))
  return run(f, (q, k, v), (spec,) * 3, (spec,) * 3, m)


# A causal window of 40 plus every 12th key: the fused path runs the band split (two
# kernel calls per pass, band_split.py) on each device's shard.
SPLIT_TOPO = js.patterns.union(js.patterns.local(96, 40, causal=True),
                               js.patterns.strided(96, 12, causal=True)).topology


@check
def attention_band_split_data_and_heads_sharded():
  q, k, v = (_f32(4, 96, 4, 16) for _ in range(3))
  m = mesh((4, 2), ("data", "model"))
  spec = P("data", None, "model", None)
  f = jax.grad(lambda q, k, v: jnp.sum(jnp.sin(js.sparse_dot_product_attention(
      q, k, v, SPLIT_TOPO))), argnums=(0, 1, 2))
  return run(f, (q, k, v), (spec,) * 3, (spec,) * 3, m)


@check
def attention_unfused_data_and_heads_sharded():
  # The checks above run the default (fused) attention; the unfused path too.
  q, k, v = _qkv(4, 4)
  m = mesh((4, 2), ("data", "model"))
  spec = P("data", None, "model", None)
  f = lambda q, k, v: js.sparse_dot_product_attention(q, k, v, TOPO, implementation="unfused")
  return run(f, (q, k, v), (spec,) * 3, spec, m)


@check
def attention_unfused_grad_heads_sharded():
  q, k, v = _qkv(2, 8)
  m = mesh((8,), ("model",))
  spec = P(None, None, "model", None)
  f = jax.grad(lambda q, k, v: jnp.sum(jnp.sin(js.sparse_dot_product_attention(
      q, k, v, TOPO, implementation="unfused"))), argnums=(0, 1, 2))
  return run(f, (q, k, v), (spec,) * 3, (spec,) * 3, m)


DENSE_MM = js.CSR.fromdense(np.ones((M, M), np.float32)).topology


@check
def grad_shared_values_data_parallel():
  # A data-parallel loss through a shared sparse weight: the gradient w.r.t. the
  # replicated values needs exactly one all-reduce (the sum over the batch);
  # the activations are never gathered.
  x = _f32(B, K, N)
  m = mesh((8,), ("data",))

  def loss(values, x):
    y = js.spmm(A.with_values(values), x)                       # [B, M, N]
    s = js.sparse_softmax(js.sddmm(y, y, DENSE_MM))
    return jnp.mean(jnp.tanh(s.values))

  f = jax.grad(loss)
  return run(f, (A.values, x), (P(), P("data")), P(), m)


@check
def shard_map_user():
  # jaxsparse ops inside a user's shard_map: each device runs its shard.
  a = A.with_values(_f32(B, A.nnz))
  b = _f32(B, K, N)
  m = mesh((8,), ("data",))
  spec = csr_spec_tree(a, P("data"))

  def body(a, b):
    s = js.sparse_softmax(a)
    return js.spmm(s, b) + js.spmm(js.sddmm(js.spmm(s, b), b, a), b)

  f = jax.shard_map(body, mesh=m, in_specs=(spec, P("data")), out_specs=P("data"))
  return run(f, (a, b), (spec, P("data")), P("data"), m)


@check
def shard_map_grad():
  a = A.with_values(_f32(B, A.nnz))
  b = _f32(B, K, N)
  m = mesh((8,), ("data",))

  def body(values, b):
    return jnp.sum(jnp.sin(js.spmm(js.sparse_softmax(a.with_values(values)), b)))

  f = jax.grad(lambda v, b: jax.shard_map(
      lambda v, b: jax.lax.psum(body(v, b), "data"), mesh=m, in_specs=(P("data"), P("data")),
      out_specs=P())(v, b), argnums=(0, 1))
  return run(f, (a.values, b), (P("data"), P("data")), (P("data"), P("data")), m)


def _attention_fwd_and_grad_on(axis_types):
  """Fused attention and its gradient, data x heads, on a (4, 2) mesh of these axis types."""
  q, k, v = _qkv(4, 4)
  m = jax.make_mesh((4, 2), ("data", "model"), devices=jax.devices()[:8], axis_types=axis_types)
  f = lambda q, k, v: js.sparse_dot_product_attention(q, k, v, TOPO)
  fg = lambda q, k, v: (f(q, k, v), jax.grad(lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v))),
                                             argnums=(0, 1, 2))(q, k, v))
  return run_explicit(fg, (q, k, v), (P("data", None, "model", None),) * 3, m)


@check
def attention_explicit_sharding():
  # Explicit-sharding mode (jax.set_mesh, sharded types): data x heads.
  return _attention_fwd_and_grad_on((jax.sharding.AxisType.Explicit,) * 2)


@check
def attention_mixed_explicit_auto():
  # A mesh with one explicit axis (data) and one auto axis (model, the heads):
  # manual over data, the heads left to the partitioner inside. Forward and gradient.
  return _attention_fwd_and_grad_on((jax.sharding.AxisType.Explicit, jax.sharding.AxisType.Auto))


@check
def spmm_explicit_data_and_column_split():
  # Explicit-sharding mode: batch over data, SpMM's columns over model.
  a = A.with_values(_f32(4, A.nnz))
  b = _f32(4, K, 32)
  return run_explicit(js.spmm, (a, b), (csr_spec_tree(a, P("data")), P("data", None, "model")),
                      explicit_mesh((4, 2), ("data", "model")))


@check
def spmm_explicit_fallback_k_sharded():
  # Explicit mode, b's k sharded: resharded (one all-gather), as in the fallback above.
  return run_explicit(js.spmm, (A, _f32(K, N)), (csr_spec_tree(A, P()), P("model", None)),
                      explicit_mesh((8,), ("model",)))


@check
def spmm_nt_grad_explicit_token_split():
  # Explicit mode, data parallel: the weight gradient's one all-reduce.
  from jaxsparse._src.spmm import spmm_nt
  x = _f32(64, K)
  g = jax.grad(lambda v, x: jnp.sum(jnp.sin(spmm_nt(A.with_values(v), x))))
  return run_explicit(g, (A.values, x), (P(), P("data")), explicit_mesh((8,), ("data",)))


@check
def sddmm_explicit_grad():
  # Explicit mode, data parallel: forward and both gradients.
  lhs, rhs = _f32(B, M, D), _f32(B, K, D)
  f = lambda l, r: js.sddmm(l, r, A).values
  g = lambda l, r: (f(l, r), jax.grad(lambda l, r: jnp.sum(jnp.sin(f(l, r))), (0, 1))(l, r))
  return run_explicit(g, (lhs, rhs), (P("data"), P("data")), explicit_mesh((8,), ("data",)))


def main(names):
  out = {}
  for name in names or CHECKS:
    try:
      coll, res, ref, *tol = CHECKS[name]()
      out[name] = {"collectives": coll, "max_err": max_err(res, ref)}
      if tol:  # a check's own bound on max_err (a half type); else the test's 1e-5
        out[name]["tol"] = tol[0]
    except Exception as e:  # reported, the test fails on it
      out[name] = {"error": f"{type(e).__name__}: {e}"[:2000]}
  print(json.dumps(out))


if __name__ == "__main__":
  main(sys.argv[1:])
