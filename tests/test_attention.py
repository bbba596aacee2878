"""sparse_dot_product_attention against dense attention with the equivalent mask:
values, gradients (float64, second order), bias/mask/causal/GQA, empty rows,
dropout, half types, jit/vmap, memory (no q_len x kv_len intermediate), bad input."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsparse as js
from jaxsparse import patterns
from jaxsparse.attention import sparse_dot_product_attention as sdpa
from jaxsparse.testing import check_grads


def _qkv(rng, batch, q_len, kv_len, heads, d, dtype=np.float32, kv_heads=None, dv=None):
  kv_heads = kv_heads or heads
  q = jnp.asarray(rng.standard_normal(batch + (q_len, heads, d)), dtype)
  k = jnp.asarray(rng.standard_normal(batch + (kv_len, kv_heads, d)), dtype)
  v = jnp.asarray(rng.standard_normal(batch + (kv_len, kv_heads, dv or d)), dtype)
  return q, k, v


def _mask(rng, m, n, density=0.4, empty_rows=()):
  mask = rng.random((m, n)) < density
  mask[np.arange(m), rng.integers(0, n, m)] = True      # no empty row unless asked
  mask[list(empty_rows)] = False
  return mask


def _dense_reference(q, k, v, mask, bias=None, scale=None):
  """Dense masked attention in jnp; rows with no key give zeros (like the sparse op)."""
  heads, kv_heads = q.shape[-2], k.shape[-2]
  k = jnp.repeat(k, heads // kv_heads, axis=-2)
  v = jnp.repeat(v, heads // kv_heads, axis=-2)
  scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
  logits = jnp.einsum("...qhd,...khd->...hqk", q * scale, k)
  if bias is not None:
    logits = logits + bias
  mask = jnp.asarray(mask, bool)
  logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
  probs = jax.nn.softmax(logits, axis=-1) * mask
  return jnp.einsum("...hqk,...khd->...qhd", probs, v)


# -- values ---------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [(), (2,), (2, 3)], ids=str)
def test_matches_jax_dot_product_attention(rng, batch):
  q_len, kv_len, heads, d = 7, 9, 2, 8
  mask = _mask(rng, q_len, kv_len)
  q, k, v = _qkv(rng, batch, q_len, kv_len, heads, d)
  out = sdpa(q, k, v, js.CSR.from_mask(mask))
  assert out.shape == batch + (q_len, heads, d) and out.dtype == np.float32
  # jax.nn.dot_product_attention wants exactly [B, T, N, H].
  flat = lambda x: x.reshape((-1,) + x.shape[-3:])
  ref = jax.nn.dot_product_attention(flat(q), flat(k), flat(v), mask=mask[None, None])
  np.testing.assert_allclose(out, ref.reshape(out.shape), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make", [lambda t: patterns.causal(t),
                                  lambda t: patterns.local(t, 2),
                                  lambda t: patterns.local(t, 1, causal=True)],
                         ids=["causal", "local", "local_causal"])
def test_patterns_match_jax_flags(rng, make):
  t = 10
  topo = make(t)
  q, k, v = _qkv(rng, (2,), t, t, 3, 4)
  mask = np.asarray(topo.todense()) != 0
  ref = jax.nn.dot_product_attention(q, k, v, mask=mask[None, None])
  np.testing.assert_allclose(sdpa(q, k, v, topo), ref, rtol=1e-5, atol=1e-5)
  # Topology object, not only CSR.
  np.testing.assert_allclose(sdpa(q, k, v, topo.topology), ref, rtol=1e-5, atol=1e-5)


def test_bias_dense_values_and_csr(rng):
  q_len, kv_len, heads, d = 6, 8, 2, 4
  mask = _mask(rng, q_len, kv_len)
  topo = js.CSR.from_mask(mask)
  q, k, v = _qkv(rng, (3,), q_len, kv_len, heads, d)
  bias = jnp.asarray(rng.standard_normal((3, heads, q_len, kv_len)), jnp.float32)
  ref = _dense_reference(q, k, v, mask, bias)
  np.testing.assert_allclose(sdpa(q, k, v, topo, bias=bias), ref, rtol=1e-5, atol=1e-5)
  rows, cols = np.nonzero(mask)
  vals = bias[..., rows, cols]                                   # [3, heads, nnz]
  np.testing.assert_allclose(sdpa(q, k, v, topo, bias=vals), ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(sdpa(q, k, v, topo, bias=topo.with_values(vals)), ref,
                             rtol=1e-5, atol=1e-5)
  # Size-1 (broadcast) q and head dims: a key-padding style bias.
  kbias = jnp.asarray(rng.standard_normal((3, 1, 1, kv_len)), jnp.float32)
  np.testing.assert_allclose(sdpa(q, k, v, topo, bias=kbias),
                             _dense_reference(q, k, v, mask, kbias), rtol=1e-5, atol=1e-5)


def test_mask_and_is_causal_intersect_topology(rng):
  t, heads = 8, 2
  topo = patterns.local(t, 3)
  q, k, v = _qkv(rng, (2,), t, t, heads, 4)
  pad = np.ones((2, 1, 1, t), bool)
  pad[1, ..., 5:] = False                                       # key padding
  tmask = np.asarray(topo.todense()) != 0
  causal = np.tril(np.ones((t, t), bool))
  ref = _dense_reference(q, k, v, tmask & pad & causal)
  out = sdpa(q, k, v, topo, mask=pad, is_causal=True)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_grouped_query_attention(rng):
  t, heads, kv_heads = 7, 6, 2
  mask = _mask(rng, t, t)
  q, k, v = _qkv(rng, (2,), t, t, heads, 4, kv_heads=kv_heads, dv=5)
  out = sdpa(q, k, v, js.CSR.from_mask(mask))
  assert out.shape == (2, t, heads, 5)
  np.testing.assert_allclose(out, _dense_reference(q, k, v, mask), rtol=1e-5, atol=1e-5)
  # jax.nn.dot_product_attention needs v_head_dim == head_dim.
  ref = jax.nn.dot_product_attention(q, k, k, mask=mask[None, None])
  np.testing.assert_allclose(sdpa(q, k, k, js.CSR.from_mask(mask)), ref, rtol=1e-5, atol=1e-5)


def test_scale(rng):
  mask = _mask(rng, 5, 5)
  q, k, v = _qkv(rng, (), 5, 5, 2, 4)
  np.testing.assert_allclose(sdpa(q, k, v, js.CSR.from_mask(mask), scale=0.3),
                             _dense_reference(q, k, v, mask, scale=0.3), rtol=1e-5, atol=1e-5)


# -- gradients ------------------------------------------------------------------------
def test_grads_match_dense_float64(rng):
  q_len, kv_len, heads, d = 6, 7, 2, 3
  mask = _mask(rng, q_len, kv_len)
  topo = js.CSR.from_mask(mask)
  q, k, v = _qkv(rng, (2,), q_len, kv_len, heads, d, np.float64)
  bias = jnp.asarray(rng.standard_normal((2, heads, q_len, kv_len)))
  w = jnp.asarray(rng.standard_normal((2, q_len, heads, d)))
  f = lambda q, k, v, b: jnp.sum(w * sdpa(q, k, v, topo, bias=b))
  g = lambda q, k, v, b: jnp.sum(w * _dense_reference(q, k, v, mask, b))
  got = jax.grad(f, argnums=(0, 1, 2, 3))(q, k, v, bias)
  want = jax.grad(g, argnums=(0, 1, 2, 3))(q, k, v, bias)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_check_grads_order2_float64(rng):
  mask = _mask(rng, 4, 5, empty_rows=[2])
  topo = js.CSR.from_mask(mask)
  q, k, v = _qkv(rng, (2,), 4, 5, 2, 3, np.float64)
  bias = jnp.asarray(rng.standard_normal((2, 1, 4, 5)))
  f = lambda q, k, v, b: sdpa(q, k, v, topo, bias=b)
  check_grads(f, (q, k, v, bias), order=2, modes=("fwd", "rev"), atol=1e-6, rtol=1e-6)


# -- empty rows -------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_empty_rows_zero_output_finite_grads(rng, dtype):
  mask = _mask(rng, 6, 6, empty_rows=[0, 3])
  topo = js.CSR.from_mask(mask)
  q, k, v = _qkv(rng, (2,), 6, 6, 2, 4, dtype)
  out = sdpa(q, k, v, topo)
  np.testing.assert_array_equal(out[:, [0, 3]], 0)
  np.testing.assert_allclose(out, _dense_reference(q, k, v, mask),
                             rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)
  grads = jax.grad(lambda q, k, v: jnp.sum(sdpa(q, k, v, topo) ** 2), argnums=(0, 1, 2))(q, k, v)
  for g in grads:
    assert np.all(np.isfinite(g))
  np.testing.assert_array_equal(grads[0][:, [0, 3]], 0)
  # A mask that empties a row does the same.
  full = patterns.from_mask(np.ones((6, 6), bool))
  row_mask = np.ones((6, 6), bool)
  row_mask[1] = False
  out = sdpa(q, k, v, full, mask=row_mask)
  np.testing.assert_array_equal(out[:, 1], 0)
  grads = jax.grad(lambda q: jnp.sum(sdpa(q, k, v, full, mask=row_mask) ** 2))(q)
  assert np.all(np.isfinite(grads))


# -- dropout ----------------------------------------------------------------------------
def test_dropout(rng):
  t, heads = 6, 2
  topo = patterns.local(t, 2)
  q, k, v = _qkv(rng, (2,), t, t, heads, 4)
  key = jax.random.key(3)
  base = sdpa(q, k, v, topo)
  np.testing.assert_array_equal(
      sdpa(q, k, v, topo, dropout_rate=0.5, dropout_rng=key, deterministic=True), base)
  out = sdpa(q, k, v, topo, dropout_rate=0.5, dropout_rng=key)
  # Reproduce: one [nnz] keep pattern shared by batch and heads, kept entries / keep_prob.
  _, probs = sdpa(q, k, v, topo, return_weights=True)
  keep = jax.random.bernoulli(key, 0.5, (topo.nnz,))
  dropped = probs.with_values(probs.values * keep / 0.5)
  ref = jnp.moveaxis(js.spmm(dropped, jnp.moveaxis(v, -2, -3)), -3, -2)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
  assert not np.allclose(out, base)
  # Unbroadcast: each batch element and head draws its own pattern.
  out2 = sdpa(q, k, v, topo, dropout_rate=0.5, dropout_rng=key, broadcast_dropout=False)
  assert out2.shape == base.shape and not np.allclose(out2, out)
  with pytest.raises(ValueError, match="dropout_rng"):
    sdpa(q, k, v, topo, dropout_rate=0.5)


# -- dtypes -----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float16, jnp.bfloat16], ids=lambda d: np.dtype(d).name)
def test_half_types(rng, dtype):
  mask = _mask(rng, 8, 8)
  topo = js.CSR.from_mask(mask)
  q, k, v = _qkv(rng, (2,), 8, 8, 2, 8, dtype)
  out = sdpa(q, k, v, topo)
  assert out.dtype == np.dtype(dtype)
  ref = _dense_reference(*(x.astype(np.float32) for x in (q, k, v)), mask)
  tol = 2e-2 if dtype == jnp.bfloat16 else 5e-3
  np.testing.assert_allclose(out.astype(np.float32), ref, rtol=tol, atol=tol)
  g = jax.grad(lambda q: jnp.sum(sdpa(q, k, v, topo).astype(jnp.float32)))(q)
  assert g.dtype == np.dtype(dtype) and np.all(np.isfinite(g.astype(np.float32)))


# -- transformations --------------------------------------------------------------------
def test_jit_and_vmap(rng):
  topo = patterns.local(9, 2)
  q, k, v = _qkv(rng, (3,), 9, 9, 2, 4)
  ref = sdpa(q, k, v, topo)
  np.testing.assert_allclose(jax.jit(sdpa)(q, k, v, topo), ref, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(jax.jit(lambda q, k, v: sdpa(q, k, v, topo))(q, k, v), ref,
                             rtol=1e-6, atol=1e-6)
  # vmap over the batch of unbatched calls, topology shared.
  vm = jax.vmap(sdpa, in_axes=(0, 0, 0, None))(q, k, v, topo)
  np.testing.assert_allclose(vm, ref, rtol=1e-6, atol=1e-6)
  # vmap over a leading axis of batched calls, k/v shared.
  qq = jnp.stack([q, 2 * q])
  vm2 = jax.jit(jax.vmap(lambda q: sdpa(q, k, v, topo)))(qq)
  np.testing.assert_allclose(vm2[1], sdpa(2 * q, k, v, topo), rtol=1e-6, atol=1e-6)
  # grad of jit of vmap.
  g = jax.grad(lambda q: jnp.sum(jax.jit(jax.vmap(sdpa, in_axes=(0, 0, 0, None)))(
      q, k, v, topo) ** 2))(q)
  g_ref = jax.grad(lambda q: jnp.sum(sdpa(q, k, v, topo) ** 2))(q)
  np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-6)


def _max_intermediate_size(jaxpr) -> int:
  big = 0
  for eqn in jaxpr.eqns:
    for var in eqn.outvars:
      big = max(big, math.prod(getattr(var.aval, "shape", ())))
    for p in eqn.params.values():
      sub = getattr(p, "jaxpr", None)
      if sub is not None:
        big = max(big, _max_intermediate_size(getattr(sub, "jaxpr", sub)))
  return big


def test_memory_proportional_to_nnz(rng):
  # q_len x kv_len = 262144; batch x heads x nnz ~ 4 x 2552; no intermediate near T x T.
  t = 512
  topo = patterns.local(t, 2)
  q, k, v = _qkv(rng, (2,), t, t, 2, 4)
  f = lambda q, k, v: jnp.sum(sdpa(q, k, v, topo, mask=np.ones((1, t), bool)) ** 2)
  jaxpr = jax.make_jaxpr(jax.grad(f, argnums=(0, 1, 2)))(q, k, v).jaxpr
  assert _max_intermediate_size(jaxpr) < t * t // 8


# -- bad input --------------------------------------------------------------------------
def test_bad_input(rng):
  topo = patterns.local(6, 1)
  q, k, v = _qkv(rng, (2,), 6, 6, 2, 4)
  with pytest.raises(ValueError, match="query"):
    sdpa(q[:, :5], k, v, topo)
  with pytest.raises(ValueError, match="key"):
    sdpa(q, k[:, :5], v, topo)
  with pytest.raises(ValueError, match="value"):
    sdpa(q, k, v[:, :5], topo)
  with pytest.raises(ValueError, match="query"):
    sdpa(q[0, :, 0], k, v, topo)                                 # rank 2
  with pytest.raises(ValueError, match="key"):
    sdpa(q, k[0, :, 0], v, topo)
  with pytest.raises(ValueError, match="value"):
    sdpa(q, k, v[0, :, 0], topo)
  with pytest.raises(ValueError, match="head_dim"):
    sdpa(q, k[..., :3], v, topo)
  with pytest.raises(ValueError, match="heads"):
    sdpa(q, k[..., :1, :], v, topo)                              # key heads != value heads
  with pytest.raises(ValueError, match="multiple"):
    sdpa(q[..., :1, :].repeat(3, -2), k, v, topo)                # 3 heads vs 2 kv heads
  with pytest.raises(ValueError, match="bias"):
    sdpa(q, k, v, topo, bias=jnp.zeros((2, 2, 6, 5)))
  with pytest.raises(ValueError, match="mask"):
    sdpa(q, k, v, topo, mask=jnp.ones((6, 4), bool))
  with pytest.raises(ValueError, match="batch"):
    sdpa(q, k[:1].repeat(3, 0), v, topo)
  with pytest.raises(TypeError, match="topology"):
    sdpa(q, k, v, np.ones((6, 6)))
  with pytest.raises(TypeError):
    sdpa(q.astype(jnp.int32), k, v, topo)
