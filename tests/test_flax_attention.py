"""Flax integration: SparseMultiHeadAttention (NNX), SparseMultiHeadDotProductAttention
(Linen) and sparse_attention_fn equal Flax's dense attention with the equivalent mask,
share its parameter tree, and load a dense model's weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

import jaxsparse.flax as jsf
from jaxsparse import patterns
from jaxsparse.flax.linen import SparseMultiHeadDotProductAttention

T, F, H = 8, 12, 3


def _dense_mask(topo):
  return jnp.asarray(np.asarray(topo.todense()) != 0)


def _x(rng, dtype=np.float32, batch=2):
  return jnp.asarray(rng.standard_normal((batch, T, F)), dtype)


def _max_rel(a, b):
  """Largest |a - b| over all leaves, relative to the largest |b| over all leaves."""
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  scale = max(float(jnp.max(jnp.abs(v))) for v in lb)
  return max(float(jnp.max(jnp.abs(u - v))) for u, v in zip(la, lb)) / scale


TOPOLOGIES = {
    "local": lambda: patterns.local(T, 2),
    "causal": lambda: patterns.causal(T),
    "bigbird": lambda: patterns.bigbird(T, 2, 1, 1, 0),
}


# -- NNX -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(TOPOLOGIES))
def test_nnx_load_dense_weights_same_outputs(rng, name):
  topo = TOPOLOGIES[name]()
  mask = _dense_mask(topo)
  dense = nnx.MultiHeadAttention(H, F, decode=False, rngs=nnx.Rngs(0))
  sparse = jsf.SparseMultiHeadAttention(H, F, topology=topo, rngs=nnx.Rngs(1))
  # Same parameter tree: paths, shapes and dtypes.
  shapes = lambda m: jax.tree.map(lambda p: (p.shape, p.dtype), nnx.state(m, nnx.Param))
  assert shapes(dense) == shapes(sparse)
  nnx.update(sparse, nnx.state(dense))
  x = _x(rng)
  np.testing.assert_allclose(sparse(x), dense(x, mask=mask), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(sparse, x), dense(x, mask=mask),
                             rtol=1e-5, atol=1e-5)


def test_nnx_grads_float64(rng):
  topo = patterns.local(T, 1)
  mask = _dense_mask(topo)
  kw = dict(dtype=jnp.float64, param_dtype=jnp.float64)
  dense = nnx.MultiHeadAttention(H, F, decode=False, rngs=nnx.Rngs(0), **kw)
  sparse = jsf.SparseMultiHeadAttention(H, F, topology=topo, rngs=nnx.Rngs(1), **kw)
  nnx.update(sparse, nnx.state(dense))
  x = _x(rng, np.float64)

  def loss(m, x, mask):
    return jnp.sum(jnp.sin(m(x, mask=mask)))

  gd, gxd = nnx.grad(loss, argnums=(0, 1))(dense, x, mask)
  gs, gxs = nnx.grad(loss, argnums=(0, 1))(sparse, x, None)
  # jax.nn.dot_product_attention (Flax's path without dropout) is only ~1e-7
  # accurate in float64 on CPU; the float64-exact check is in test_attention.py.
  assert _max_rel(nnx.state(gs), nnx.state(gd)) < 1e-6
  assert _max_rel(gxs, gxd) < 1e-6


def test_nnx_gqa_and_extra_mask_and_is_causal(rng):
  topo = patterns.local(T, 3)
  tmask = np.asarray(topo.todense()) != 0
  dense = nnx.MultiHeadAttention(4, F, qkv_features=8, num_kv_heads=2, decode=False,
                                 rngs=nnx.Rngs(0))
  sparse = jsf.SparseMultiHeadAttention(4, F, qkv_features=8, num_kv_heads=2, topology=topo,
                                        rngs=nnx.Rngs(1))
  nnx.update(sparse, nnx.state(dense))
  x = _x(rng)
  np.testing.assert_allclose(sparse(x), dense(x, mask=jnp.asarray(tmask)), rtol=1e-5,
                             atol=1e-5)
  # A key-padding mask on top of the topology (key 0 kept so no row is empty).
  pad = np.ones((2, 1, 1, T), bool)
  pad[1, ..., 6:] = False
  np.testing.assert_allclose(sparse(x, mask=jnp.asarray(pad)),
                             dense(x, mask=jnp.asarray(tmask & pad)), rtol=1e-5, atol=1e-5)
  causal = np.tril(np.ones((T, T), bool))
  np.testing.assert_allclose(sparse(x, is_causal=True), dense(x, mask=jnp.asarray(tmask & causal)),
                             rtol=1e-5, atol=1e-5)


def test_attention_fn_in_dense_nnx_module(rng):
  topo = patterns.strided(T, 3)
  dense = nnx.MultiHeadAttention(H, F, decode=False, rngs=nnx.Rngs(0))
  with_fn = nnx.MultiHeadAttention(H, F, decode=False, rngs=nnx.Rngs(0),
                                   attention_fn=jsf.sparse_attention_fn(topo))
  x = _x(rng)
  np.testing.assert_allclose(with_fn(x), dense(x, mask=_dense_mask(topo)), rtol=1e-5, atol=1e-5)


def test_nnx_sow_weights(rng):
  topo = patterns.local(T, 1)
  dense = nnx.MultiHeadAttention(H, F, decode=False, rngs=nnx.Rngs(0))
  sparse = jsf.SparseMultiHeadAttention(H, F, topology=topo, rngs=nnx.Rngs(0))
  x = _x(rng)
  # Read back through nnx.capture (flax >= 0.12.12 deprecates sow outside it).
  _, sd = nnx.capture(dense, nnx.Intermediate)(x, mask=_dense_mask(topo), sow_weights=True)
  _, ss = nnx.capture(sparse, nnx.Intermediate)(x, sow_weights=True)
  (wd,) = sd["attention_weights"].get_value()
  (ws,) = ss["attention_weights"].get_value()
  assert ws.values.shape == (2, H, topo.nnz)
  np.testing.assert_allclose(ws.todense(), wd, rtol=1e-5, atol=1e-6)


def test_nnx_dropout(rng):
  topo = patterns.local(T, 2)
  sparse = jsf.SparseMultiHeadAttention(H, F, topology=topo, dropout_rate=0.5,
                                        rngs=nnx.Rngs(0, dropout=1))
  x = _x(rng)
  det = sparse(x, deterministic=True)
  a = sparse(x, deterministic=False)
  b = sparse(x, deterministic=False)
  assert a.shape == det.shape and np.all(np.isfinite(a))
  assert not np.allclose(a, det) and not np.allclose(a, b)        # rng stream advances


DECODE_TOPOLOGIES = {
    "causal": lambda: patterns.causal(T),
    "local_causal": lambda: patterns.local(T, 2, causal=True),
    "strided_causal": lambda: patterns.union(patterns.local(T, 1, causal=True),
                                             patterns.strided(T, 3, causal=True)),
}


@pytest.mark.parametrize("name", list(DECODE_TOPOLOGIES))
def test_nnx_decode_matches_full_forward(rng, name):
  """Token-by-token decoding with the cache equals the full causal forward."""
  topo = DECODE_TOPOLOGIES[name]()
  sparse = jsf.SparseMultiHeadAttention(H, F, topology=topo, num_kv_heads=1, rngs=nnx.Rngs(0))
  x = _x(rng)
  full = sparse(x)
  sparse.init_cache(x.shape)
  step = nnx.jit(lambda m, x: m(x, decode=True))
  outs = [sparse(x[:, :1], decode=True)] + [step(sparse, x[:, t:t + 1]) for t in range(1, T)]
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, rtol=1e-5, atol=1e-5)
  # And equals the dense module decoding with the same weights and the pattern as mask.
  dense = nnx.MultiHeadAttention(H, F, num_kv_heads=1, decode=False, rngs=nnx.Rngs(1))
  nnx.update(dense, nnx.state(sparse, nnx.Param))
  np.testing.assert_allclose(full, dense(x, mask=_dense_mask(topo)), rtol=1e-5, atol=1e-5)


def test_nnx_decode_sows_weights(rng):
  """Each decoding step sows its weights as a [1, T] CSR: the full forward's row."""
  topo = DECODE_TOPOLOGIES["strided_causal"]()
  sparse = jsf.SparseMultiHeadAttention(H, F, topology=topo, rngs=nnx.Rngs(0))
  x = _x(rng)
  _, full = nnx.capture(sparse, nnx.Intermediate)(x, sow_weights=True)
  (w_full,) = full["attention_weights"].get_value()
  dense_full = np.asarray(w_full.todense())  # [batch, heads, T, T]
  sparse.init_cache(x.shape)
  step = nnx.jit(lambda m, x: nnx.capture(m, nnx.Intermediate)(x, decode=True,
                                                                sow_weights=True))
  for t in range(T):
    _, sown = step(sparse, x[:, t:t + 1])
    (w,) = sown["attention_weights"].get_value()
    assert w.shape == (1, T) and w.values.shape[:2] == (2, H)
    got = np.asarray(w.todense())
    assert got.shape == (2, H, 1, T)
    np.testing.assert_allclose(got[:, :, 0], dense_full[:, :, t], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(w.topology.t_row_offsets)[-1], int(w.row_offsets[1]))


def test_nnx_attention_fn_rejected(rng):
  topo = patterns.causal(T)
  sparse = jsf.SparseMultiHeadAttention(H, F, topology=topo, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="cache"):
    sparse(_x(rng)[:, :1], decode=True)  # decoding before init_cache
  with pytest.raises(TypeError, match="attention_fn"):
    jsf.SparseMultiHeadAttention(H, F, topology=topo, rngs=nnx.Rngs(0),
                                 attention_fn=nnx.dot_product_attention)
  with pytest.raises(TypeError, match="topology"):
    jsf.SparseMultiHeadAttention(H, F, topology=np.ones((T, T)), rngs=nnx.Rngs(0))
  assert sparse.topology.shape == (T, T)


def test_nnx_decode_cache_must_match_topology(rng):
  x = _x(rng)
  # Fewer rows (and keys) than the cache holds, then more keys than it.
  for topo in (patterns.causal(T - 2), patterns.causal(T + 2)):
    sparse = jsf.SparseMultiHeadAttention(H, F, topology=topo, rngs=nnx.Rngs(0))
    sparse.init_cache(x.shape)
    with pytest.raises(ValueError, match="cache of"):
      sparse(x[:, :1], decode=True)


def test_nnx_seq_len_mismatch(rng):
  sparse = jsf.SparseMultiHeadAttention(H, F, topology=patterns.causal(T + 1), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="query"):
    sparse(_x(rng))


# -- Linen -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(TOPOLOGIES))
def test_linen_same_params_outputs(rng, name):
  topo = TOPOLOGIES[name]()
  mask = _dense_mask(topo)
  dense = nn.MultiHeadDotProductAttention(num_heads=H, qkv_features=F)
  sparse = SparseMultiHeadDotProductAttention(num_heads=H, qkv_features=F, topology=topo)
  x = _x(rng)
  params = dense.init(jax.random.key(0), x)
  sparse_params = sparse.init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, sparse_params)
  np.testing.assert_allclose(sparse.apply(params, x), dense.apply(params, x, mask=mask),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(jax.jit(sparse.apply)(params, x), dense.apply(params, x, mask=mask),
                             rtol=1e-5, atol=1e-5)


def test_linen_grads_float64(rng):
  topo = patterns.bigbird(T, 2, 1, 1, 3)
  mask = _dense_mask(topo)
  kw = dict(num_heads=H, qkv_features=F, dtype=jnp.float64, param_dtype=jnp.float64)
  dense = nn.MultiHeadDotProductAttention(**kw)
  sparse = SparseMultiHeadDotProductAttention(topology=topo, **kw)
  x = _x(rng, np.float64)
  params = dense.init(jax.random.key(0), x)
  gd = jax.grad(lambda p, x: jnp.sum(jnp.sin(dense.apply(p, x, mask=mask))), argnums=(0, 1))(
      params, x)
  gs = jax.grad(lambda p, x: jnp.sum(jnp.sin(sparse.apply(p, x))), argnums=(0, 1))(params, x)
  assert _max_rel(gs, gd) < 1e-6


def test_linen_attention_fn_sow_dropout_and_errors(rng):
  topo = patterns.local(T, 2)
  mask = _dense_mask(topo)
  x = _x(rng)
  dense = nn.MultiHeadDotProductAttention(num_heads=H, qkv_features=F)
  params = dense.init(jax.random.key(0), x)
  with_fn = nn.MultiHeadDotProductAttention(num_heads=H, qkv_features=F,
                                            attention_fn=jsf.sparse_attention_fn(topo))
  np.testing.assert_allclose(with_fn.apply(params, x), dense.apply(params, x, mask=mask),
                             rtol=1e-5, atol=1e-5)
  sparse = SparseMultiHeadDotProductAttention(num_heads=H, qkv_features=F, topology=topo)
  _, state = sparse.apply(params, x, sow_weights=True, mutable=["intermediates"])
  (w,) = state["intermediates"]["attention_weights"]
  assert w.values.shape == (2, H, topo.nnz)
  drop = SparseMultiHeadDotProductAttention(num_heads=H, qkv_features=F, topology=topo,
                                            dropout_rate=0.5)
  np.testing.assert_allclose(drop.apply(params, x, deterministic=True), sparse.apply(params, x),
                             rtol=1e-6, atol=1e-6)
  out = drop.apply(params, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
  assert out.shape == (2, T, F) and not np.allclose(out, sparse.apply(params, x))
  with pytest.raises(TypeError, match="topology"):
    SparseMultiHeadDotProductAttention(num_heads=H)
  with pytest.raises(TypeError, match="attention_fn"):
    SparseMultiHeadDotProductAttention(num_heads=H, topology=topo,
                                       attention_fn=lambda *a, **k: None)


@pytest.mark.parametrize("name", list(DECODE_TOPOLOGIES))
def test_linen_decode_matches_full_forward(rng, name):
  topo = DECODE_TOPOLOGIES[name]()
  x = _x(rng)
  full_mod = SparseMultiHeadDotProductAttention(num_heads=H, qkv_features=F, topology=topo)
  dec_mod = SparseMultiHeadDotProductAttention(num_heads=H, qkv_features=F, topology=topo,
                                               decode=True)
  variables = dec_mod.init(jax.random.key(0), x)       # creates the cache for [2, T, F]
  params, cache = variables["params"], variables["cache"]
  full = full_mod.apply({"params": params}, x)
  step = jax.jit(lambda p, c, x: dec_mod.apply({"params": p, "cache": c}, x, mutable=["cache"]))
  outs = []
  for t in range(T):
    out, mutated = step(params, cache, x[:, t:t + 1])
    cache = mutated["cache"]
    outs.append(out)
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, rtol=1e-5, atol=1e-5)


def test_linen_decode_sows_weights(rng):
  topo = DECODE_TOPOLOGIES["local_causal"]()
  x = _x(rng)
  mod = SparseMultiHeadDotProductAttention(num_heads=H, qkv_features=F, topology=topo)
  dec_mod = SparseMultiHeadDotProductAttention(num_heads=H, qkv_features=F, topology=topo,
                                               decode=True)
  variables = dec_mod.init(jax.random.key(0), x)
  params, cache = variables["params"], variables["cache"]
  _, state = mod.apply({"params": params}, x, sow_weights=True, mutable=["intermediates"])
  (w_full,) = state["intermediates"]["attention_weights"]
  dense_full = np.asarray(w_full.todense())
  step = jax.jit(lambda p, c, x: dec_mod.apply({"params": p, "cache": c}, x, sow_weights=True,
                                               mutable=["cache", "intermediates"]))
  for t in range(T):
    _, mutated = step(params, cache, x[:, t:t + 1])
    cache = mutated["cache"]
    (w,) = mutated["intermediates"]["attention_weights"]
    np.testing.assert_allclose(np.asarray(w.todense())[:, :, 0], dense_full[:, :, t],
                               rtol=1e-5, atol=1e-6)


def test_linen_inside_parent_module(rng):
  topo = patterns.causal(T)

  class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
      return SparseMultiHeadDotProductAttention(num_heads=H, qkv_features=F, topology=topo)(x)

  class DenseBlock(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.MultiHeadDotProductAttention(num_heads=H, qkv_features=F,
                                             name="SparseMultiHeadDotProductAttention_0")(
          x, mask=_dense_mask(topo))

  x = _x(rng)
  params = DenseBlock().init(jax.random.key(0), x)
  np.testing.assert_allclose(Block().apply(params, x), DenseBlock().apply(params, x),
                             rtol=1e-5, atol=1e-5)
