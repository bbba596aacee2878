"""The fused attention path (implementation="fused", the default without bias, mask,
dropout or returned weights) against a float64 numpy oracle and against the
unfused path: head dims on the register-blocked, wide and generic kernels, causal,
empty rows, nnz = 0, grouped-query heads, broadcast batch dims, every dtype,
gradients (first order against the oracle, check_grads order 2 in float64, forward
and reverse mode), jit/vmap, residual memory (no nnz-sized float array in the
gradient), the kernels really called, option errors, and kernel-side validation."""

import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsparse as js
from jaxsparse import patterns
from jaxsparse._src import fused_attention as fa
from jaxsparse.attention import sparse_dot_product_attention as sdpa
from jaxsparse.testing import check_grads, tolerance

HERE = os.path.dirname(os.path.abspath(__file__))


def _oracle(q, k, v, mask, causal=False, scale=None):
  """float64 numpy attention over `mask` (q [..., m, H, d], k/v [..., n, Hkv, d]);
  a row with no key gives zeros."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  heads, kv_heads = q.shape[-2], k.shape[-2]
  k = np.repeat(k, heads // kv_heads, axis=-2)
  v = np.repeat(v, heads // kv_heads, axis=-2)
  scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
  s = np.einsum("...qhd,...khd->...hqk", q * scale, k)
  mask = np.asarray(mask, bool)
  if causal:
    mask = mask & np.tril(np.ones(mask.shape, bool))
  s = np.where(mask, s, -np.inf)
  mx = s.max(-1, keepdims=True)
  mx = np.where(np.isfinite(mx), mx, 0)
  e = np.exp(s - mx)
  tot = e.sum(-1, keepdims=True)
  p = e / np.where(tot > 0, tot, 1)
  return np.einsum("...hqk,...khd->...qhd", p, v)


def _mask(rng, m, n, density, empty_rows=()):
  mask = rng.random((m, n)) < density
  mask[list(empty_rows)] = False
  return mask


def _qkv(rng, batch, m, n, heads, d, dv, dtype, kv_heads=None):
  kv_heads = kv_heads or heads
  q = jnp.asarray(rng.standard_normal(batch + (m, heads, d)), dtype)
  k = jnp.asarray(rng.standard_normal(batch + (n, kv_heads, d)), dtype)
  v = jnp.asarray(rng.standard_normal(batch + (n, kv_heads, dv)), dtype)
  return q, k, v


def _check(out, ref, dtype, q, k, v):
  # Each output is a convex combination of value rows: error bounded by tol * max|v|
  # times the length of the dot products feeding the softmax.
  tol = tolerance(dtype) * (1 + q.shape[-1]) * 4
  scale = max(1.0, float(np.abs(np.asarray(v, np.float64)).max()))
  np.testing.assert_allclose(np.asarray(out, np.float64), ref, rtol=tol, atol=tol * scale)


# head dims (AVX-512 float, 16 lanes): 16/48/64/80/96/112/128 take the register-
# blocked kernels with 1, 3, 4, 5, 6, 7, 8 whole vectors; 24/40/72 the same with a
# partial last vector (2, 3, 5 vectors); 5 and (64, 32) the wide ones. Under AVX2
# (8 lanes) 72-128 are 9-16 vectors, on the wide kernels, as are 5 and (64, 32).
@pytest.mark.parametrize("d,dv", [(16, 16), (48, 48), (64, 64), (80, 80), (96, 96), (112, 112),
                                  (128, 128), (24, 24), (40, 40), (72, 72), (5, 5), (64, 32)],
                         ids=str)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_matches_oracle(rng, d, dv, causal):
  m, n, heads = 19, 23, 2
  mask = _mask(rng, m, n, 0.35, empty_rows=(0, 7))
  q, k, v = _qkv(rng, (2,), m, n, heads, d, dv, np.float32)
  out = jax.jit(lambda q, k, v: sdpa(q, k, v, js.CSR.from_mask(mask), is_causal=causal,
                                     implementation="fused"))(q, k, v)
  _check(out, _oracle(q, k, v, mask, causal), np.float32, q, k, v)
  assert np.all(np.asarray(out)[:, 0] == 0) and np.all(np.asarray(out)[:, 7] == 0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16, jnp.bfloat16],
                         ids=lambda d: np.dtype(d).name)
def test_dtypes(rng, dtype):
  m, n, heads, d = 33, 33, 3, 32
  topo = patterns.local(m, 4)
  mask = np.asarray(topo.todense()) != 0
  q, k, v = _qkv(rng, (), m, n, heads, d, d, dtype)
  out = sdpa(q, k, v, topo)
  assert out.dtype == np.dtype(dtype)
  _check(out, _oracle(q, k, v, mask), dtype, q, k, v)


def test_nnz_zero_and_degenerate(rng):
  q, k, v = _qkv(rng, (2,), 5, 6, 2, 16, 16, np.float32)
  empty = js.CSR.from_mask(np.zeros((5, 6), bool))
  assert np.all(np.asarray(sdpa(q, k, v, empty)) == 0)
  g = jax.grad(lambda q, k, v: jnp.sum(sdpa(q, k, v, empty)), argnums=(0, 1, 2))(q, k, v)
  assert all(np.all(np.asarray(x) == 0) for x in g)
  # Padding past the stored entries (fromdense with nnz under jit) is ignored.
  mask = _mask(rng, 5, 6, 0.5)
  dense = jnp.asarray(mask, jnp.float32)
  padded = jax.jit(lambda x: js.CSR.fromdense(x, nnz=int(mask.sum()) + 7))(dense)
  _check(sdpa(q, k, v, padded), _oracle(q, k, v, mask), np.float32, q, k, v)


def test_grouped_query_and_broadcast_batch(rng):
  m, n, d = 12, 15, 16
  mask = _mask(rng, m, n, 0.4, empty_rows=(3,))
  topo = js.CSR.from_mask(mask)
  q = jnp.asarray(rng.standard_normal((2, 3, m, 4, d)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((3, n, 2, d)), jnp.float32)      # batch dims broadcast
  v = jnp.asarray(rng.standard_normal((1, 1, n, 2, d)), jnp.float32)
  out = sdpa(q, k, v, topo)
  assert out.shape == (2, 3, m, 4, d)
  kb, vb = (jnp.broadcast_to(x, (2, 3) + x.shape[-3:]) for x in (k, v))
  _check(out, _oracle(q, kb, vb, mask), np.float32, q, k, v)
  # Gradients reduce over the broadcast dims, equal to the unfused path's.
  loss = lambda impl: lambda q, k, v: jnp.sum(jnp.sin(sdpa(q, k, v, topo, implementation=impl)))
  gf = jax.jit(jax.grad(loss("fused"), argnums=(0, 1, 2)))(q, k, v)
  gu = jax.jit(jax.grad(loss("unfused"), argnums=(0, 1, 2)))(q, k, v)
  for a, b, x in zip(gf, gu, (q, k, v)):
    assert a.shape == x.shape
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)


# The register-blocked kernels are compiled for the AVX2 and AVX-512 structs
# (float32 and the half types); float64 and the baseline ISA run the generic ones.
# In float32 under AVX2 (8 lanes) 16, 24, 40, 48, 56 are 2, 3, 5, 6, 7 whole
# vectors, 20 and 60 are 3 and 8 with the last partial, 6, 80 and 100 (1, 10 and
# 13 vectors) take the wide kernels; under AVX-512 (16 lanes) 16, 48 and 80 are 1, 3
# and 5 vectors, 24, 40, 56, 20, 60, 100 have a partial last vector, 6 is wide.
# float64 checks the generic kernels to 1e-11.
@pytest.mark.parametrize("dtype,d,causal",
                         [(np.float32, 16, False), (np.float32, 24, True),
                          (np.float32, 40, False), (np.float32, 48, True),
                          (np.float32, 56, False), (np.float32, 20, True),
                          (np.float32, 60, False), (np.float32, 6, True),
                          (np.float32, 80, True), (np.float32, 100, False),
                          (np.float64, 20, True), (np.float64, 6, False)],
                         ids=lambda x: np.dtype(x).name if isinstance(x, type) else str(x))
def test_grads_match_oracle(rng, dtype, d, causal):
  m, n, heads = 11, 11, 2
  mask = _mask(rng, m, n, 0.4, empty_rows=(4,))
  topo = js.CSR.from_mask(mask)
  q, k, v = _qkv(rng, (2,), m, n, heads, d, d, dtype)
  w = jnp.asarray(rng.standard_normal((2, m, heads, d)), dtype)

  def loss(q, k, v):
    return jnp.sum(sdpa(q, k, v, topo, is_causal=causal) * w)

  def loss_ref(q, k, v):  # dense float64 in jnp over the same mask (empty rows -> 0)
    full = mask & (np.tril(np.ones((m, n), bool)) if causal else True)
    s = jnp.einsum("bqhd,bkhd->bhqk", q / math.sqrt(d), k)
    s = jnp.where(full, s, -jnp.inf)
    mx = jax.lax.stop_gradient(jnp.where(full.any(-1), s.max(-1), 0))[..., None]
    e = jnp.where(full, jnp.exp(s - mx), 0)
    p = e / jnp.maximum(e.sum(-1, keepdims=True), 1e-300)
    return jnp.sum(jnp.einsum("bhqk,bkhd->bqhd", p, v) * w.astype(np.float64))

  g = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
  ref = jax.jit(jax.grad(loss_ref, argnums=(0, 1, 2)))(
      *(x.astype(np.float64) for x in (q, k, v)))
  # float32: errors measured at 3e-7 to 1.2e-6 (gradients of magnitude 3-4).
  tol = 1e-11 if dtype == np.float64 else 2e-5
  for a, b in zip(g, ref):
    assert a.dtype == np.dtype(dtype)
    np.testing.assert_allclose(np.asarray(a, np.float64), b, rtol=tol, atol=tol)


def test_check_grads_order2_float64(rng):
  m, n, heads, d = 7, 9, 2, 16
  topo = js.CSR.from_mask(_mask(rng, m, n, 0.5, empty_rows=(2,)))
  q, k, v = _qkv(rng, (2,), m, n, heads, d, d, np.float64)
  f = lambda q, k, v: sdpa(q, k, v, topo, is_causal=True, implementation="fused")  # noqa: E731
  check_grads(f, (q, k, v), order=2, modes=("fwd", "rev"))


def _check_grads_fused_default(f, q, k, v):
  """`f(impl)` is attention with the given implementation: the fused gradient of
  sum(sin(out)) (jitted) equals the unfused one, and the default (None) lowers to
  the fused backward kernel."""
  loss = lambda impl: lambda q, k, v: jnp.sum(jnp.sin(f(impl)(q, k, v)))  # noqa: E731
  gf = jax.jit(jax.grad(loss("fused"), argnums=(0, 1, 2)))(q, k, v)
  gu = jax.jit(jax.grad(loss("unfused"), argnums=(0, 1, 2)))(q, k, v)
  for a, b in zip(gf, gu):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)
  hlo = jax.jit(jax.grad(loss(None), argnums=(0, 1, 2))).lower(q, k, v).as_text()
  assert "jaxsparse_attention_bwd_cpu" in hlo   # the default takes the fused path


MASKS = {
    # name: mask shape for q [B=2, m, H=4, d] (broadcastable to [B, H, m, n])
    "shared": lambda m, n: (m, n),
    "key_padding": lambda m, n: (2, 1, 1, n),
    "per_head": lambda m, n: (1, 4, m, n),
    "full": lambda m, n: (2, 4, m, n),
}


@pytest.mark.parametrize("mask_kind", list(MASKS))
@pytest.mark.parametrize("d,kv_heads", [(16, 4), (24, 2), (6, 2)],
                         ids=["regs-mha", "regs-partial-gqa", "wide-gqa"])
def test_mask_matches_unfused(rng, mask_kind, kv_heads, d):
  """A mask runs on the fused path (one byte per stored entry), equal to the unfused
  path forward and backward; rows left with no key give zeros."""
  m, n = 13, 11
  topo = js.CSR.from_mask(_mask(rng, m, n, 0.5))
  q, k, v = _qkv(rng, (2,), m, n, 4, d, d, np.float32, kv_heads=kv_heads)
  mask = jnp.asarray(rng.random(MASKS[mask_kind](m, n)) < 0.6)
  f = lambda impl: lambda q, k, v: sdpa(q, k, v, topo, mask=mask, is_causal=True,  # noqa: E731
                                        implementation=impl)
  np.testing.assert_allclose(jax.jit(f("fused"))(q, k, v), jax.jit(f("unfused"))(q, k, v),
                             rtol=1e-5, atol=1e-5)
  _check_grads_fused_default(f, q, k, v)


def test_mask_check_grads_order2_and_vmap(rng):
  m, n, d = 7, 9, 4
  topo = js.CSR.from_mask(_mask(rng, m, n, 0.6))
  q, k, v = _qkv(rng, (2,), m, n, 2, d, d, np.float64)
  mask = jnp.asarray(rng.random((2, 1, m, n)) < 0.7)
  f = lambda q, k, v: sdpa(q, k, v, topo, mask=mask, implementation="fused")  # noqa: E731
  check_grads(f, (q, k, v), order=2, modes=("rev",))
  # Forward mode (the tangent primitive with a mask) against the unfused path.
  u = lambda q, k, v: sdpa(q, k, v, topo, mask=mask, implementation="unfused")  # noqa: E731
  ts = tuple(jnp.asarray(rng.standard_normal(x.shape)) for x in (q, k, v))
  np.testing.assert_allclose(jax.jvp(f, (q, k, v), ts)[1], jax.jvp(u, (q, k, v), ts)[1],
                             rtol=1e-11, atol=1e-11)
  # vmap over the mask (a batch of masks through the primitive's batching rule).
  masks = jnp.asarray(rng.random((3, 2, 1, m, n)) < 0.7)
  g = lambda mk: sdpa(q, k, v, topo, mask=mk, implementation="fused")  # noqa: E731
  np.testing.assert_allclose(jax.vmap(g)(masks), jnp.stack([g(x) for x in masks]),
                             rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("d,kv_heads,broadcast",
                         [(16, 4, True), (16, 2, False), (6, 4, False), (6, 2, True)],
                         ids=["regs-mha-shared", "regs-gqa-per_head", "wide-mha-per_head",
                              "wide-gqa-shared"])
def test_dropout_matches_unfused(rng, broadcast, kv_heads, d):
  """Dropout runs on the fused path with the unfused path's random draw: equal
  outputs and gradients (with a mask too)."""
  m, n = 12, 10
  topo = js.CSR.from_mask(_mask(rng, m, n, 0.6))
  q, k, v = _qkv(rng, (2,), m, n, 4, d, d, np.float32, kv_heads=kv_heads)
  mask = jnp.asarray(rng.random((2, 1, 1, n)) < 0.8)
  key = jax.random.key(3)

  def f(impl):
    return lambda q, k, v: sdpa(q, k, v, topo, mask=mask, dropout_rate=0.3, dropout_rng=key,
                                broadcast_dropout=broadcast, implementation=impl)

  out = jax.jit(f(None))(q, k, v)
  np.testing.assert_allclose(out, jax.jit(f("unfused"))(q, k, v), rtol=1e-5, atol=1e-5)
  no_dropout = jax.jit(lambda q, k, v: sdpa(q, k, v, topo, mask=mask))(q, k, v)
  assert not np.allclose(out, no_dropout)   # dropout did something
  _check_grads_fused_default(f, q, k, v)


# The wide kernels: d == dv of more than 8 vectors (AVX2 float32: 72 and 136 are 9 and
# 17 vectors, summed in chunks of 5 + 4 and 6 + 6 + 5; AVX-512: 136 and 264 are 9 and
# 17 vectors, the last partial), d != dv (both sets), and a half type in whole
# vectors. Forward against the float64 oracle; float32 gradients, with a mask and
# dropout, against the unfused path.
@pytest.mark.parametrize("d,dv,dtype", [(72, 72, np.float32), (136, 136, np.float32),
                                        (264, 264, np.float32), (40, 24, np.float32),
                                        (20, 100, np.float32), (80, 80, jnp.bfloat16)],
                         ids=lambda x: np.dtype(x).name if isinstance(x, type) else str(x))
def test_wide_head_dims(rng, d, dv, dtype):
  m, n = 14, 12
  mask = _mask(rng, m, n, 0.5, empty_rows=(2,))
  topo = js.CSR.from_mask(mask)
  q, k, v = _qkv(rng, (2,), m, n, 2, d, dv, dtype)
  out = jax.jit(lambda q, k, v: sdpa(q, k, v, topo, is_causal=True,
                                     implementation="fused"))(q, k, v)
  assert out.shape == (2, m, 2, dv) and out.dtype == np.dtype(dtype)
  _check(out, _oracle(q, k, v, mask, causal=True), dtype, q, k, v)
  if dtype == np.float32:
    keep = jnp.asarray(rng.random((2, 1, m, n)) < 0.7)
    f = lambda impl: lambda q, k, v: sdpa(q, k, v, topo, mask=keep, is_causal=True,  # noqa: E731
                                          dropout_rate=0.25, dropout_rng=jax.random.key(5),
                                          implementation=impl)
    np.testing.assert_allclose(jax.jit(f("fused"))(q, k, v), jax.jit(f("unfused"))(q, k, v),
                               rtol=1e-5, atol=1e-5)
    _check_grads_fused_default(f, q, k, v)


def test_dropout_check_grads_order2(rng):
  m, n, d = 6, 8, 4
  topo = js.CSR.from_mask(_mask(rng, m, n, 0.6))
  q, k, v = _qkv(rng, (2,), m, n, 2, d, d, np.float64)
  f = lambda q, k, v: sdpa(q, k, v, topo, dropout_rate=0.25,  # noqa: E731
                           dropout_rng=jax.random.key(1), implementation="fused")
  check_grads(f, (q, k, v), order=2, modes=("rev",))
  u = lambda q, k, v: sdpa(q, k, v, topo, dropout_rate=0.25,  # noqa: E731
                           dropout_rng=jax.random.key(1), implementation="unfused")
  ts = tuple(jnp.asarray(rng.standard_normal(x.shape)) for x in (q, k, v))
  np.testing.assert_allclose(jax.jvp(f, (q, k, v), ts)[1], jax.jvp(u, (q, k, v), ts)[1],
                             rtol=1e-11, atol=1e-11)


def test_jit_vmap_and_primitive_batching(rng):
  m, n, heads, d = 10, 12, 2, 16
  topo = js.CSR.from_mask(_mask(rng, m, n, 0.4))
  q, k, v = _qkv(rng, (3,), m, n, heads, d, d, np.float32)
  f = lambda q, k, v: sdpa(q, k, v, topo)  # noqa: E731
  want = f(q, k, v)
  np.testing.assert_allclose(jax.jit(jax.vmap(f))(q, k, v), want, rtol=1e-6, atol=1e-6)
  # vmap over key only (query shared), and vmap of the gradient.
  np.testing.assert_allclose(jax.vmap(f, in_axes=(None, 0, 0))(q[0], k, v),
                             jnp.stack([f(q[0], k[i], v[i]) for i in range(3)]),
                             rtol=1e-6, atol=1e-6)
  gl = jax.grad(lambda q, k, v: jnp.sum(f(q, k, v) ** 2), argnums=(0, 1, 2))
  gv = jax.vmap(gl)(q, k, v)
  for i in range(3):
    for a, b in zip(gv, gl(q[i], k[i], v[i])):
      np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-5)
  # Forward-mode through vmap.
  tq = jnp.ones_like(q)
  _, t1 = jax.vmap(lambda q, t: jax.jvp(lambda x: f(x, k[0], v[0]), (q,), (t,)))(q, tq)
  _, t2 = jax.jvp(lambda x: jax.vmap(f, in_axes=(0, None, None))(x, k[0], v[0]), (q,), (tq,))
  np.testing.assert_allclose(t1, t2, rtol=1e-5, atol=1e-5)


def test_gradient_keeps_no_nnz_sized_residual(rng):
  # Rows of 17 keys and head dim 4: an nnz-sized array [batch, heads, nnz] is
  # 4x larger than q, k or v.
  t, heads, d = 64, 4, 4
  topo = patterns.local(t, 8)
  q, k, v = _qkv(rng, (2,), t, t, heads, d, d, np.float32)
  cap = 2 * heads * topo.nnz
  for impl, expect_big in (("fused", False), ("unfused", True)):
    loss = lambda q, k, v: jnp.sum(sdpa(q, k, v, topo, implementation=impl))  # noqa: E731
    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
    sizes = [math.prod(var.aval.shape) for eqn in jaxpr.jaxpr.eqns for var in eqn.outvars
             if jnp.issubdtype(var.aval.dtype, jnp.floating)]
    assert (max(sizes) >= cap) == expect_big, (impl, max(sizes), cap)


def test_cpu_lowering_calls_the_fused_kernels(rng):
  if not js.has_kernels("cpu"):
    pytest.fail("jaxsparse was built without the CPU kernels")
  topo = patterns.local(16, 2)
  q, k, v = _qkv(rng, (1,), 16, 16, 2, 16, 16, np.float32)
  loss = lambda q, k, v: jnp.sum(sdpa(q, k, v, topo))  # noqa: E731
  hlo = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, k, v).as_text()
  assert "jaxsparse_attention_fwd_cpu" in hlo and "jaxsparse_attention_bwd_cpu" in hlo
  assert "jaxsparse_sddmm" not in hlo and "jaxsparse_spmm" not in hlo


def test_cuda_lowering_uses_the_unfused_kernels(rng):
  topo = patterns.local(16, 2)
  q, k, v = _qkv(rng, (1,), 16, 16, 2, 16, 16, np.float32)
  loss = lambda q, k, v: jnp.sum(sdpa(q, k, v, topo))  # noqa: E731
  hlo = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(q, k, v).lower(
      lowering_platforms=("cuda",)).as_text()
  if js.has_kernels("cuda"):
    assert "jaxsparse_sddmm_cuda" in hlo and "jaxsparse_spmm_cuda" in hlo


def test_implementation_option(rng):
  topo = patterns.local(8, 2)
  q, k, v = _qkv(rng, (1,), 8, 8, 2, 4, 4, np.float32)
  with pytest.raises(ValueError, match="does not support bias"):
    sdpa(q, k, v, topo, bias=jnp.zeros((8, 8)), implementation="fused")
  with pytest.raises(ValueError, match="does not support bias, return_weights"):
    sdpa(q, k, v, topo, bias=jnp.zeros((8, 8)), return_weights=True, implementation="fused")
  with pytest.raises(ValueError, match="implementation must be"):
    sdpa(q, k, v, topo, implementation="flash")
  np.testing.assert_allclose(sdpa(q, k, v, topo, implementation="fused"),
                             sdpa(q, k, v, topo, implementation="unfused"), rtol=1e-6, atol=1e-6)


def test_kernel_rejects_bad_traced_topology(rng):
  if not js.has_kernels("cpu"):
    pytest.fail("jaxsparse was built without the CPU kernels")
  topo = patterns.local(6, 1).topology
  q, k, v = (jnp.ones((1, 6, 4), jnp.float32) for _ in range(3))

  @jax.jit
  def f(data):
    none = jnp.zeros((1, 0), jnp.uint8)  # no mask, no dropout
    return fa.attention_fwd_p.bind(q, k, v, none, none, data, jnp.zeros((0,), jnp.int32),
                                   shape=(6, 6), transposed=False, causal=False,
                                   drop_scale=1.0, split=None)[0]

  bad = topo.data.at[6 + 1 + 3].set(9)  # column_indices[3]: after the m + 1 row offsets
  with pytest.raises(Exception, match="column_indices\\[3\\] = 9 is out of range"):
    jax.block_until_ready(f(bad))


def test_kernel_rejects_bad_rows_layout():
  """The CPU handler's rows_dim checks: operands that do not fit the layout it names
  give an error naming the operand, not a crash or a wrong read."""
  if not js.has_kernels("cpu"):
    pytest.fail("jaxsparse was built without the CPU kernels")
  t = patterns.local(6, 1).topology
  none = jnp.zeros((1, 0), jnp.uint8)

  def call(q, k, v, rows_dim, out_shape):
    outs = (jax.ShapeDtypeStruct(out_shape, jnp.float32),
            jax.ShapeDtypeStruct((int(np.prod(out_shape[:-1])) // 6, 6), jnp.float32))
    f = jax.ffi.ffi_call("jaxsparse_attention_fwd_cpu", outs)
    return jax.block_until_ready(f(
        q, k, v, none, none, t.data, causal=False, drop_scale=np.float64(1.0),
        rows_dim=np.int64(rows_dim), segments=t.segments("row_offsets", "column_indices",
                                                         "row_indices")))

  x = jnp.ones((2, 6, 3, 4), jnp.float32)           # [batch, seq, heads, d]
  out = call(x, x, x, 1, (2, 6, 3, 4))              # fits: rows at dimension 1
  np.testing.assert_allclose(out[0], 1.0)
  with pytest.raises(Exception, match="query has rank 4; expected >= 3 with rows_dim = 3"):
    call(x, x, x, 3, (2, 6, 3, 4))
  with pytest.raises(Exception, match="key batch dim 1 is 2; expected 1 or 3"):
    call(x, jnp.ones((2, 6, 2, 4), jnp.float32), x, 1, (2, 6, 3, 4))
  with pytest.raises(Exception, match="value rows \\(dimension 1\\) is 5, expected 6"):
    call(x, x, jnp.ones((2, 5, 3, 4), jnp.float32), 1, (2, 6, 3, 4))
  with pytest.raises(Exception, match="key has rank 3, query 4"):
    call(x, jnp.ones((2, 6, 4), jnp.float32), x, 1, (2, 6, 3, 4))


def test_other_instruction_sets():
  """The kernels of every instruction set below the best this CPU has (the rest of
  the suite runs that one): AVX2 on an AVX-512 CPU, and the generic ones."""
  native = js.cpu_instruction_set()
  if native is None:
    pytest.skip("built without CPU kernels")
  lower = {"avx512": ("avx2", "generic"), "avx2": ("generic",), "generic": ()}[native]
  if not lower:
    pytest.skip("this CPU runs the generic kernels: the rest of the suite covers them")
  # The subprocess imports the same jaxsparse as this process (installed or not).
  pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(js.__file__)))
  path = os.pathsep.join([pkg_parent] + ([os.environ["PYTHONPATH"]]
                                         if os.environ.get("PYTHONPATH") else []))
  procs = {}
  for isa in lower:  # all at once (each is mostly compilation)
    env = dict(os.environ, JAXSPARSE_CPU_ISA=isa, PYTHONPATH=path)
    procs[isa] = subprocess.Popen([sys.executable, os.path.join(HERE, "isa_checks.py")],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=env)
  for isa, proc in procs.items():
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"{isa}:\n{out}\n{err}"
    assert f"all ok {isa}" in out, out


# The band kernels (float32 under AVX2 and AVX-512) take topologies whose rows are
# contiguous column ranges with non-decreasing ends, dense enough in blocks of 8/16
# rows: local windows, their causal halves, full causal. JAXSPARSE_CPU_ATTN_BAND=0
# (read per call) sends the same call to the row kernels.
def _needs_band_kernels():
  if js.cpu_instruction_set() not in ("avx2", "avx512"):
    pytest.skip("the band kernels need AVX2 or AVX-512")


def _band_case(rng, d, dv, topo, **kw):
  """Inputs, the jitted fused forward, and its jitted gradient of sum(out * ct)."""
  m, n = topo.shape
  q, k, v = _qkv(rng, (2,), m, n, 2, d, dv, np.float32)
  ct = jnp.asarray(rng.standard_normal((2, m, 2, dv)), np.float32)
  attn = lambda q, k, v: sdpa(q, k, v, topo, implementation="fused", **kw)  # noqa: E731
  f = jax.jit(attn)
  g = jax.jit(jax.grad(lambda q, k, v: jnp.sum(attn(q, k, v) * ct), argnums=(0, 1, 2)))
  return (q, k, v), ct, f, g


def _band_and_rows(monkeypatch, f, g, args):
  """[out, dq, dk, dv] from the band kernels and from the row kernels."""
  res = {}
  for band in ("1", "0"):
    monkeypatch.setenv("JAXSPARSE_CPU_ATTN_BAND", band)
    res[band] = [np.asarray(f(*args))] + [np.asarray(x) for x in g(*args)]
  return res["1"], res["0"]


def _check_band(rng, monkeypatch, topo, d, dv, kw, passes):
  """The band kernels against float64 (the unfused path, the same mask and dropout
  draw) and against the row kernels, forward and gradients; the band backward in
  `passes` passes (one: dq, dk and dv from each block of rows, in two phases of
  chunks; two: dq by blocks of rows, then dk and dv by blocks of keys)."""
  monkeypatch.setenv("JAXSPARSE_CPU_ATTN_BAND_BWD", passes)
  args, ct, f, g = _band_case(rng, d, dv, topo, **kw)
  band, rows = _band_and_rows(monkeypatch, f, g, args)
  with jax.enable_x64(True):
    args64 = tuple(x.astype(np.float64) for x in args)
    ct64 = ct.astype(np.float64)
    u = lambda q, k, v: sdpa(q, k, v, topo, implementation="unfused", **kw)  # noqa: E731
    ref = [np.asarray(u(*args64))] + [
        np.asarray(x) for x in jax.grad(lambda q, k, v: jnp.sum(u(q, k, v) * ct64),
                                        argnums=(0, 1, 2))(*args64)]
  _check(band[0], ref[0], np.float32, *args)
  tol = tolerance(np.float32) * (1 + d) * 8
  for a, b in zip(band[1:], ref[1:]):
    scale = max(1.0, float(np.abs(b).max()))
    np.testing.assert_allclose(a.astype(np.float64), b, rtol=tol, atol=tol * scale)
  for a, b in zip(band, rows):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)
  # The two paths sum in different orders, so some result differs in its last bits:
  # the band kernels did run here.
  assert any(not np.array_equal(a, b) for a, b in zip(band, rows))


def _band_opts(rng, opts, m, n, seed):
  """The attention keywords of a band or gather kernel case: "plain", "is_causal", "mask"
  (a random keep mask per batch entry) or "dropout" (a key mask and dropout)."""
  if opts == "is_causal":
    return dict(is_causal=True)
  if opts == "mask":
    return dict(mask=jnp.asarray(rng.random((2, 1, m, n)) < 0.7))
  if opts == "dropout":
    return dict(mask=jnp.asarray(rng.random((2, 1, 1, n)) < 0.8), dropout_rate=0.25,
                dropout_rng=jax.random.key(seed))
  return {}


@pytest.mark.parametrize("t,window,d,dv,causal_topology,opts", [
    (200, 24, 64, 64, False, "plain"),        # whole blocks, constant-stride products
    (75, 20, 40, 40, False, "plain"),         # a partial last block, run-time stride
    (75, 40, 7, 7, True, "plain"),            # causal window, tiny d (chunk tails)
    (90, 30, 64, 32, False, "is_causal"),     # d != dv, the causal flag clips ranges
    (61, 60, 128, 128, False, "mask"),        # every key (dense), a keep mask
    (80, 40, 24, 24, True, "dropout"),        # dropout and a mask
    (300, 20, 32, 32, False, "dropout"),      # and 5 chunks in the one-pass backward
])
@pytest.mark.parametrize("passes", ["1", "2"])
def test_band_kernels(rng, monkeypatch, t, window, d, dv, causal_topology, opts, passes):
  """Band kernels forward and backward against float64 (the unfused path, the same
  mask and dropout draw) and against the row kernels."""
  _needs_band_kernels()
  topo = patterns.local(t, window, causal=causal_topology)
  _check_band(rng, monkeypatch, topo, d, dv, _band_opts(rng, opts, t, t, 5), passes)


@pytest.mark.parametrize("passes", ["1", "2"])
def test_band_kernels_rectangular(rng, monkeypatch, passes):
  """A band that moves half a column per row through more keys than queries: the
  first keys and the last ones have no query (empty rows of the transpose, inside a
  block and as whole blocks)."""
  _needs_band_kernels()
  m, n, w = 70, 100, 40
  mask = np.zeros((m, n), bool)
  for i in range(m):
    mask[i, i // 2 + 3:i // 2 + 3 + w] = True
  _check_band(rng, monkeypatch, js.CSR.from_mask(mask), 32, 32, {}, passes)


@pytest.mark.parametrize("lead,trail,opts", [
    (21, 0, "plain"),      # rows before the first stored row (inside and whole blocks)
    (0, 19, "plain"),      # rows after the last stored row (the nnz bound)
    (40, 7, "dropout"),    # both, with a keep mask and dropout (the position loops)
    (33, 5, "is_causal"),  # both, causal clipping
])
@pytest.mark.parametrize("passes", ["1", "2"])
def test_band_kernels_empty_leading_and_trailing_rows(rng, monkeypatch, lead, trail, opts,
                                                      passes):
  """Rows that store nothing before the first stored row and after the last (a padded
  band) still run the band kernels, which match float64 and the row kernels (zeros
  in those rows)."""
  _needs_band_kernels()
  m, n, w = 200, 130, 24
  mask = np.zeros((m, n), bool)
  for i in range(lead, m - trail):
    lo = min(max(0, (i - lead) // 2 - 4), n - w)
    mask[i, lo:lo + w] = True
  kw = {}
  if opts == "dropout":
    kw = dict(mask=jnp.asarray(rng.random((2, 1, 1, n)) < 0.8), dropout_rate=0.25,
              dropout_rng=jax.random.key(3))
  elif opts == "is_causal":
    kw = dict(is_causal=True)
  _check_band(rng, monkeypatch, js.CSR.from_mask(mask), 32, 32, kw, passes)


def test_band_kernels_not_taken_off_band(rng, monkeypatch):
  """Topologies neither the band nor the gather kernels take run the row kernels either
  way: a random mask, a window too narrow for its blocks, and rows of one block that
  interleave their columns (a strided pattern)."""
  _needs_band_kernels()
  t = 64
  for topo in (js.CSR.from_mask(_mask(rng, t, t, 0.5)), patterns.local(t, 2),
               patterns.strided(t, 8)):
    args, _, f, g = _band_case(rng, 16, 16, topo)
    band, rows = _band_and_rows(monkeypatch, f, g, args)
    for a, b in zip(band, rows):
      assert np.array_equal(a, b)


def _blocks_mask(rng, m, n, block_rows, block_cols, per_row, empty_blocks=()):
  """Each block of `block_rows` rows stores the same `per_row` random blocks of
  `block_cols` columns (BigBird's random blocks); none in `empty_blocks`."""
  mask = np.zeros((m, n), bool)
  for i in range(0, m, block_rows):
    if i // block_rows in empty_blocks:
      continue
    for j in rng.choice(n // block_cols, per_row, replace=False):
      mask[i:i + block_rows, j * block_cols:(j + 1) * block_cols] = True
  return mask


def _gather_topology(rng, name):
  if name == "bigbird":  # whole (no band split): blocks of 16 rows
    return patterns.bigbird(128, 16, 2, 1)
  if name == "holed_window":  # a window with an empty row inside: not a band
    holed = np.array(patterns.local(90, 20).todense() != 0)
    holed[30] = False
    return js.CSR.from_mask(holed)
  if name == "blocks_rectangular":  # [80, 112], an empty block of rows, a partial last
    return js.CSR.from_mask(_blocks_mask(rng, 80, 112, 16, 8, 3, empty_blocks=(2,)))
  if name == "scattered_columns":  # each 16 rows the same 12 random columns: the
    mask = np.zeros((96, 96), bool)  # transpose's keys do not share rows (pass 2 runs
    for i in range(0, 96, 16):       # on the row kernels)
      mask[i:i + 16, rng.choice(96, 12, replace=False)] = True
    return js.CSR.from_mask(mask)
  raise ValueError(name)


# The gather kernels (the band kernels with each block's columns gathered) take
# topologies whose rows, in each block of 8/16, are contiguous runs of the block's
# sorted union of columns: BigBird's blocks, block-sparse random patterns, a window
# with holes. JAXSPARSE_CPU_ATTN_GATHER=0 sends them to the row kernels.
@pytest.mark.parametrize("name,opts", [
    ("bigbird", "plain"), ("bigbird", "is_causal"), ("bigbird", "dropout"),
    ("holed_window", "plain"), ("holed_window", "mask"),
    ("blocks_rectangular", "plain"), ("blocks_rectangular", "dropout"),
    ("scattered_columns", "plain"), ("scattered_columns", "mask")])
@pytest.mark.parametrize("passes", ["1", "2"])
def test_gather_kernels(rng, monkeypatch, name, opts, passes):
  """Gather kernels forward and backward against float64 (the unfused path, the same
  mask and dropout draw) and against the row kernels; that they ran (their results
  differ in some last bit from the row kernels', and JAXSPARSE_CPU_ATTN_GATHER=0 gives
  the row kernels' bits). The backward in one pass (dk, dv from each block of rows,
  one batch entry per item) and in two."""
  _needs_band_kernels()
  topo = _gather_topology(rng, name)
  kw = _band_opts(rng, opts, *topo.shape, 7)
  _check_band(rng, monkeypatch, topo, 32, 24, kw, passes)
  args, _, f, g = _band_case(np.random.default_rng(1), 32, 24, topo, **kw)
  band, rows = _band_and_rows(monkeypatch, f, g, args)
  monkeypatch.setenv("JAXSPARSE_CPU_ATTN_BAND", "1")
  monkeypatch.setenv("JAXSPARSE_CPU_ATTN_GATHER", "0")
  off = [np.asarray(f(*args))] + [np.asarray(x) for x in g(*args)]
  monkeypatch.delenv("JAXSPARSE_CPU_ATTN_GATHER")
  for a, b in zip(off, rows):
    assert np.array_equal(a, b)
  assert any(not np.array_equal(a, b) for a, b in zip(band, rows))


# inner_batch is a layout hint: the CPU kernels read [..., rows, heads, d] in place
# (row stride heads * d) instead of a transposed copy. Same math, same order of
# operations: the results must be bitwise equal to inner_batch = 0, forward and
# backward, on the row kernels (random mask, empty rows, keep mask, dropout), the band
# kernels (local window) and the wide ones (d = 5), with broadcast batch dims.
# "band_long": 19 blocks of rows, so the band backward's contiguous copies of the
# strided rows (AttnBandWindow) are extended and shifted many times; the band cases
# run the band backward in one pass and in two.
@pytest.mark.parametrize("case,passes", [
    ("random", "1"), ("wide", "1"), ("masks", "1"), ("gqa", "1"),
    ("band", "1"), ("band", "2"), ("band_long", "1"), ("band_long", "2")])
def test_inner_batch_layout_is_bitwise_equal(rng, monkeypatch, case, passes):
  monkeypatch.setenv("JAXSPARSE_CPU_ATTN_BAND_BWD", passes)
  band = case.startswith("band")
  if band:
    _needs_band_kernels()
  m = n = 300 if case == "band_long" else 75 if case == "band" else 40
  d = dv = 5 if case == "wide" else 16
  heads, kv_heads = (4, 2) if case == "gqa" else (3, 3)
  topo = (patterns.local(m, 20) if band
          else js.CSR.from_mask(_mask(rng, m, n, 0.3, empty_rows=(2, 9))))
  topo = getattr(topo, "topology", topo)
  q, k, v = _qkv(rng, (2,), m, n, heads, d, dv, np.float32, kv_heads)
  k = k[:1]  # a broadcast batch dim
  keep = drop = None
  if case == "masks":
    keep = jnp.asarray(rng.random((1, heads, topo.cap)) < 0.8, jnp.uint8)
    drop = jnp.asarray(rng.random((2, heads, topo.cap)) < 0.7, jnp.uint8)
  group = heads // kv_heads

  def heads_major(x, h):  # [b, seq, h, d] -> [b, (kv_heads, group | h), seq, d]
    x = jnp.moveaxis(x, -2, -3)
    if group == 1:
      return x
    return (x.reshape(x.shape[:-3] + (kv_heads, group) + x.shape[-2:]) if h == heads
            else x[:, :, None])

  def f(inner):
    def run(q, k, v):
      qh, kh, vh = heads_major(q, heads), heads_major(k, kv_heads), heads_major(v, kv_heads)
      kk, dd = keep, drop
      if group > 1 and kk is not None:
        kk, dd = (x.reshape(x.shape[:-2] + (kv_heads, group, x.shape[-1])) for x in (kk, dd))
      out = fa.fused_attention(qh, kh, vh, topo, keep=kk, drop=dd, drop_scale=1.5,
                               inner_batch=inner * (2 if group > 1 else 1))
      return jnp.sum(jnp.sin(out)), out
    return jax.jit(jax.value_and_grad(run, argnums=(0, 1, 2), has_aux=True))

  (_, out0), g0 = f(0)(q, k, v)
  (_, out1), g1 = f(1)(q, k, v)
  np.testing.assert_array_equal(out1, out0)
  for a, b in zip(g1, g0):
    np.testing.assert_array_equal(a, b)
  assert np.abs(np.asarray(out0)).max() > 0
  if band:  # the band kernels ran: the row kernels sum in another order
    monkeypatch.setenv("JAXSPARSE_CPU_ATTN_BAND", "0")
    (_, out_rows), g_rows = f(1)(q, k, v)
    assert any(not np.array_equal(a, b) for a, b in zip((out1,) + g1, (out_rows,) + g_rows))
