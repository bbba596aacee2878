"""The attention composition spmm(softmax(sddmm(q, k))) v: values, jit, vmap, grads."""

import jax
import jax.numpy as jnp
import numpy as np

import jaxsparse as js
from jaxsparse import testing as jst
from jaxsparse.testing import check_grads


def _attention(topology, q, k, v):
  s = js.sddmm(q, k, topology)
  return js.spmm(js.sparse_softmax(s.with_values(s.values / np.sqrt(q.shape[-1]))), v)


def _dense_attention(mask, q, k, v):
  s = np.einsum("...md,...nd->...mn", q, k) / np.sqrt(q.shape[-1])
  s = np.where(mask, s, -np.inf)
  mx = np.max(s, -1, keepdims=True)
  p = np.where(mask, np.exp(s - np.where(np.isfinite(mx), mx, 0)), 0)
  den = p.sum(-1, keepdims=True)
  p = np.where(den > 0, p / np.where(den > 0, den, 1), 0)
  return p @ v


def test_attention_matches_dense_masked(rng):
  T, d, heads = 24, 8, 3
  mask = jst.random_topology(rng, T, T, 0.3, empty_rows=0.1)
  topo = js.CSR.from_mask(mask)
  q, k, v = (rng.standard_normal((heads, T, d)) for _ in range(3))
  out = jax.jit(_attention)(topo, q, k, v)
  np.testing.assert_allclose(out, _dense_attention(mask, q, k, v), rtol=1e-10, atol=1e-12)
  # Per head under vmap gives the same numbers as the native batch.
  out_v = jax.jit(jax.vmap(_attention, in_axes=(None, 0, 0, 0)))(topo, q, k, v)
  np.testing.assert_allclose(out_v, out, rtol=1e-12, atol=1e-13)


def test_attention_grads_order2(rng):
  T, d = 10, 3
  mask = jst.random_topology(rng, T, T, 0.4, empty_rows=0.2)
  topo = js.CSR.from_mask(mask)
  q, k, v = (rng.standard_normal((2, T, d)) for _ in range(3))
  check_grads(lambda q, k, v: _attention(topo, q, k, v), (q, k, v), order=2, modes=["fwd", "rev"])


def test_attention_grad_matches_dense(rng):
  T, d = 16, 4
  mask = jst.random_topology(rng, T, T, 0.5)
  mask[np.arange(T), np.arange(T)] = True
  topo = js.CSR.from_mask(mask)
  q, k, v = (rng.standard_normal((T, d)) for _ in range(3))

  def dense(q, k, v):
    s = jnp.where(mask, q @ k.T / np.sqrt(d), -jnp.inf)
    return jax.nn.softmax(s, -1) @ v

  gs = jax.grad(lambda *a: jnp.sum(jnp.sin(_attention(topo, *a))), argnums=(0, 1, 2))(q, k, v)
  gd = jax.grad(lambda *a: jnp.sum(jnp.sin(dense(*a))), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(gs, gd):
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11)
